"""A sweep's results table and report, rebuilt from its job directories: ``python -m mnist_lit.report DIR``.

Every job directory holds ``.hydra/overrides.yaml`` (what the job changed) and ``metrics.json``
(what it measured, or why it failed); the table is made from those files alone, so it can be
rebuilt at any time, for a finished sweep or one still running. DIR may be a sweep, one run, or
any folder of runs (``outputs/runs/DATE``); the report pages (report.html, report.md) add the
curves and pictures (mnist_lit/page.py). ``--seed-table DIR`` summarises a folder of per-preset
sweeps (see ``scripts/seed_table.sh``) against the numbers the seed reports quoted, averaging
over seeds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mnist_lit.cli import user_errors
from mnist_lit.errors import UserError
from mnist_lit.record import write_atomic
from mnist_lit.rundir import natural_key

# test accuracy (%) and epochs each seed report quotes for the recipe an experiment preset reproduces
SEED_REPORTED: dict[str, tuple[float | None, int, str]] = {
    "oneconv": (98.45, 30, "report 000, final epoch"),
    "twoconv_relu": (98.98, 30, "report 000, final epoch; peak 99.15"),
    "twoconv_leakyrelu": (99.26, 30, "report 000, final epoch; peak 99.29"),
    "resnet": (99.28, 10, "report 000"),
    "tutorialnet": (None, 3, "report 001 quotes no accuracy"),
    "convnet": (99.06, 20, "report 002, on the last 5,000 test images"),
    "sepconv": (98.33, 3, "report 003"),
    "bnconvnet": (98.9, 64, "report 004, up to 64 epochs, early stopping"),
    "examplesnet": (99.2, 14, "pytorch/examples, about"),
}


# overrides that change neither what is trained nor what it measures: left out of the seed table's commands
QUIET_KEYS = ("threads", "trainer.enable_progress_bar", "trainer.enable_model_summary", "progress_every")


@dataclass
class JobRow:
    """One job of a sweep: its number, overrides and metrics.json (status ``missing`` without one)."""

    num: int
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "missing"))

    @property
    def reason(self) -> str:
        if "metrics.json" not in {p.name for p in self.path.iterdir()}:
            return "no metrics.json (still running, or killed)"
        return str(self.metrics.get("reason", ""))

    def value(self, key: str) -> float:
        v = self.metrics.get(key)
        return float(v) if isinstance(v, (int, float)) else math.nan


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["optim.lr=0.01", "+x=1"]`` -> ``{"optim.lr": "0.01", "+x": "1"}``, in order."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else ""
    return out


def read_job(job_dir: Path, fallback_num: int, numbered: bool = True) -> JobRow:
    """One job or run; ``numbered``: by its sweep job number, else by ``fallback_num``."""
    hydra_dir = job_dir / ".hydra"
    overrides = parse_overrides(list(OmegaConf.load(hydra_dir / "overrides.yaml")))
    num = fallback_num
    if numbered and (hydra_dir / "hydra.yaml").exists():
        num = int(OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.job.num", default=num))
    metrics: dict[str, Any] = {}
    if (job_dir / "metrics.json").exists():
        try:
            metrics = json.loads((job_dir / "metrics.json").read_text())
        except json.JSONDecodeError as err:
            metrics = {"status": "failed", "reason": f"unreadable metrics.json: {err}"}
    return JobRow(num=num, path=job_dir, overrides=overrides, metrics=metrics)


def is_sweep(folder: Path) -> bool:
    return (folder / "multirun.yaml").is_file()


def find_jobs(sweep_dir: Path) -> list[JobRow]:
    """Every job or run directory at or below ``sweep_dir`` (one holding ``.hydra/overrides.yaml``):
    a sweep's by job number, any other folder's runs numbered in the order of their paths, numbers
    compared as numbers (for ``outputs/runs/DATE/TIME``, the order they were started in; ``seed_10``
    after ``seed_9``)."""
    dirs = sorted(
        (p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")),
        key=lambda d: natural_key(d.relative_to(sweep_dir).as_posix()),
    )
    numbered = is_sweep(sweep_dir)
    return sorted((read_job(d, i, numbered) for i, d in enumerate(dirs)), key=lambda r: r.num)


def _cut(text: str, limit: int = 120) -> str:
    """A table cell's share of a failure reason (results.csv and metrics.json keep all of it)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(x: float, digits: int = 4) -> str:
    return "" if math.isnan(x) else f"{x:.{digits}f}"


@dataclass
class Report:
    """The rows of one sweep, best first, and the overrides they share."""

    sweep_dir: Path
    rows: list[JobRow]

    @property
    def kind(self) -> str:
        """``run`` (DIR is one run), ``sweep`` (a multirun's folder) or ``runs`` (any folder of runs)."""
        if len(self.rows) == 1 and self.rows[0].path == self.sweep_dir:
            return "run"
        return "sweep" if is_sweep(self.sweep_dir) else "runs"

    @property
    def varying(self) -> list[str]:
        """Override keys whose values differ between jobs (what the sweep swept)."""
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row.overrides if k not in keys]
        if len(self.rows) < 2:
            return keys
        return [k for k in keys if len({r.overrides.get(k) for r in self.rows}) > 1]

    @property
    def common(self) -> dict[str, str]:
        varying = set(self.varying)
        first = self.rows[0].overrides if self.rows else {}
        return {k: v for k, v in first.items() if k not in varying}

    def sorted_rows(self) -> list[JobRow]:
        def key(r: JobRow) -> tuple:
            done = r.status == "completed"
            best, test = r.value("val/acc_best"), r.value("test/acc")
            return (
                not done,
                -(best if done and not math.isnan(best) else -1),
                -(test if not math.isnan(test) else -1),
                r.num,
            )

        return sorted(self.rows, key=key)

    def swept(self, row: JobRow) -> str:
        text = " ".join(f"{k}={row.overrides[k]}" for k in self.varying if k in row.overrides)
        return text or "(no overrides)"

    def labels(self) -> dict[Path, str]:
        """Each job's name in figures: what it changed (its job number added where two share one)."""
        names = {r.path: self.swept(r) for r in self.rows}
        twice = {n for n in names.values() if list(names.values()).count(n) > 1}
        return {
            r.path: f"{names[r.path]} (job {r.num})" if names[r.path] in twice else names[r.path]
            for r in self.rows
        }

    def summary(self) -> str:
        done = sum(r.status == "completed" for r in self.rows)
        jobs = f"{len(self.rows)} job" + ("s" if len(self.rows) != 1 else "")
        return f"{jobs}: {done} completed, {len(self.rows) - done} failed or missing."

    # the results table: its columns, which of them hold numbers, and one row's cells
    COLUMNS = ("job", "overrides", "val/acc_best", "test/acc", "epochs", "seconds", "status")
    NUMERIC = frozenset({0, 2, 3, 4, 5})

    def cells(self, r: JobRow) -> list[str]:
        status = r.status if r.status == "completed" else f"{r.status}: {_cut(r.reason)}"
        best, test = _fmt(r.value("val/acc_best")), _fmt(r.value("test/acc"))
        epochs, seconds = str(r.metrics.get("epochs", "")), _fmt(r.value("wall_seconds"), 1)
        return [str(r.num), self.swept(r), best, test, epochs, seconds, status]

    def markdown(self) -> str:
        lines = [f"# {self.kind.capitalize()} {self.sweep_dir}", "", self.summary()]
        if self.common:
            lines.append("Shared overrides: " + " ".join(f"{k}={v}" for k, v in self.common.items()))
        lines += ["", markdown_table(self.COLUMNS, [self.cells(r) for r in self.sorted_rows()], self.NUMERIC)]
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        metric_cols = ["val/acc_best", "test/acc", "test/loss"]
        writer.writerow(
            ["job", "overrides", *self.varying, *metric_cols, "epochs", "seconds", "status", "reason", "dir"]
        )
        for r in self.sorted_rows():
            writer.writerow(
                [
                    r.num,
                    " ".join(f"{k}={v}" for k, v in r.overrides.items()),
                    *(r.overrides.get(k, "") for k in self.varying),
                    *(_fmt(r.value(m), 6) for m in metric_cols),
                    r.metrics.get("epochs", ""),
                    _fmt(r.value("wall_seconds"), 2),
                    r.status,
                    r.reason,
                    r.path.relative_to(self.sweep_dir).as_posix(),
                ]
            )
        return buf.getvalue()

    def write(self, out_dir: Path) -> None:
        """results.md and results.csv, and the report pages (report.html, report.md) beside them;
        a single run's folder gets only the pages."""
        from mnist_lit.page import write_report

        if self.kind != "run":
            write_atomic(out_dir / "results.md", self.markdown())
            write_atomic(out_dir / "results.csv", self.csv())
        write_report(self, out_dir)


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Set[int] = frozenset()
) -> str:
    """A GitHub-flavoured table, numeric columns right-aligned; a ``|`` in a cell becomes ``/``."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def build_report(sweep_dir: Path) -> Report | None:
    """The report of one sweep directory, or None when it holds no job directories."""
    rows = find_jobs(sweep_dir)
    return Report(sweep_dir, rows) if rows else None


def seed_table(root: Path) -> str:
    """Markdown table: per preset, the seed's number vs our test accuracy (mean +/- std over seeds).

    Jobs that differ only in their seed (or in keys that change nothing measured) form one row,
    whichever sweep directory under ``root`` they ran in, so a later sweep can add seeds to a row.
    """
    lines = [
        "| preset | seed reports | seed epochs | measured here: test acc % (mean ± std) | seeds | epochs "
        "| command |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    groups: dict[tuple, list[JobRow]] = {}
    for sweep_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for r in find_jobs(sweep_dir):
            if r.status == "completed":
                kept = {k: v for k, v in r.overrides.items() if k != "seed" and k not in QUIET_KEYS}
                experiment = {k: v for k, v in kept.items() if k.lstrip("+") == "experiment"}
                key = (*experiment.items(), *sorted((k, v) for k, v in kept.items() if k not in experiment))
                groups.setdefault(key, []).append(r)
    if not groups:
        raise UserError(f"no completed jobs under {root}: expected one sweep directory per preset")
    for key, members in groups.items():
        overrides = dict(key)
        preset = overrides.get("experiment", overrides.get("+experiment", members[0].path.parent.name))
        reported, seed_epochs, note = SEED_REPORTED.get(preset, (None, 0, ""))
        members.sort(key=lambda r: str(r.overrides.get("seed", "")))
        accs = [100 * r.value("test/acc") for r in members]
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        seeds = ",".join(r.overrides.get("seed", "?") for r in members)
        epochs = sorted({str(r.metrics.get("epochs", "?")) for r in members})
        command = "python -m mnist_lit -m " + " ".join(f"{k}={v}" for k, v in overrides.items())
        command += f" seed={seeds}"
        seed_cell = f"{reported:.2f}" if reported is not None else "n/a"
        if note:
            seed_cell += f" ({note})"
        lines.append(
            f"| {preset} | {seed_cell} | {seed_epochs or ''} | {statistics.mean(accs):.2f}{spread} "
            f"| {len(members)} | {'/'.join(epochs)} | `{command}` |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rebuild the report of each folder given, a sweep, one run or any folder of runs: report.html
    and report.md (with its pictures in report_files/), and for several runs results.md and
    results.csv; print the results table."""
    parser = argparse.ArgumentParser(prog="python -m mnist_lit.report", description=main.__doc__)
    parser.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        help="a sweep (outputs/sweeps/DATE/TIME), a run (outputs/runs/DATE/TIME) or a folder of runs "
        "(outputs/runs/DATE)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave the directories unchanged")
    parser.add_argument(
        "--seed-table",
        action="store_true",
        help="treat each DIR as a folder of per-preset sweeps and print the seed comparison table",
    )
    args = parser.parse_args(argv)
    try:
        with user_errors():
            for d in args.dirs:
                if not d.is_dir():
                    raise UserError(f"directory {str(d)!r} does not exist")
                if args.seed_table:
                    table = seed_table(d)
                    if not args.no_write:
                        (d / "seed_table.md").write_text(table)
                    print(table)
                    continue
                report = build_report(d)
                if report is None:
                    raise UserError(
                        f"{str(d)!r} holds no job directories or runs (no folder with "
                        ".hydra/overrides.yaml): give a sweep (outputs/sweeps/DATE/TIME), a run "
                        "(outputs/runs/DATE/TIME) or a folder of runs (outputs/runs/DATE)"
                    )
                print(report.markdown(), flush=True)
                if not args.no_write:
                    report.write(d)
                    print(f"report: {d / 'report.html'} and {d / 'report.md'}", flush=True)
    except SystemExit as stop:  # the message is printed; the caller gets the exit code
        return int(stop.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
