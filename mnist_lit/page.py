"""The report pages of a sweep, a folder of runs or one run: report.html and report.md.

A Page is a list of blocks (headings, paragraphs, tables, figures) written twice: report.html,
one self-contained file (figures embedded as PNG data, a little CSS, no script), and report.md
with the same content and its figures as PNG files in report_files/ beside it, ready to paste
into a write-up. Everything on a page is read from what the runs wrote: the results table
(mnist_lit/report.py), the TensorBoard events (mnist_lit/events.py) and evaluate's
``evaluation/evaluation.json``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mnist_lit import figures
from mnist_lit.events import TEST_CONFUSION, TEST_WRONG_LABELS, TEST_WRONG_PIXELS, RunEvents
from mnist_lit.record import write_atomic
from mnist_lit.report import JobRow, Report, markdown_table

FILES = "report_files"  # report.md's pictures, beside it
CSS_PX_PER_INCH = 96  # a figure shown this many CSS pixels per inch is at its true size on paper
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 62rem;
       margin: 2rem auto; padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.45rem; }
h1, h2, p { overflow-wrap: anywhere; }
td { overflow-wrap: break-word; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; }
th, td { border: 1px solid #ccc; padding: .2rem .5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.2rem 0; }
img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .85rem; color: #444; margin-top: .3rem; }
@media print { body { max-width: none; margin: 0; } h2 { break-after: avoid; }
               figure, table { break-inside: avoid; } }
"""
# axis labels, and why a curve may have no points yet
ACC, LOSS = "accuracy (%)", "cross-entropy loss (nats)"
NO_EPOCH = "no validation has finished"
NO_STEPS = "per-step values are logged every trainer.log_every_n_steps steps (50 by default)"


@dataclass
class Picture:
    """One figure of a page: a matplotlib Figure, or a picture already drawn (PNG bytes)."""

    name: str
    caption: str
    figure: Any

    @cached_property
    def png(self) -> bytes:
        return self.figure if isinstance(self.figure, bytes) else figures.png(self.figure)

    @property
    def css_width(self) -> int | None:
        """A chart's true size on screen and paper; a picture of digits shows at its own pixels."""
        if isinstance(self.figure, bytes):
            return None
        return round(self.figure.get_figwidth() * CSS_PX_PER_INCH)


@dataclass
class Page:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(
        self, header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Set[int] = frozenset()
    ) -> None:
        self.blocks.append(("table", (list(header), [list(map(str, r)) for r in rows], numeric)))

    def figure(self, name: str, figure: Any, caption: str) -> None:
        self.blocks.append(("figure", Picture(name, caption, figure)))

    @property
    def pictures(self) -> dict[str, Picture]:
        return {b.name: b for kind, b in self.blocks if kind == "figure"}

    def html(self) -> str:
        out = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for kind, block in self.blocks:
            if kind == "heading":
                out.append(f"<h2>{html.escape(block)}</h2>")
            elif kind == "text":
                out.append(f"<p>{html.escape(block)}</p>")
            elif kind == "table":
                header, rows, numeric = block
                out.append("<table>")
                out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                for row in rows:
                    cells = (
                        f'<td class="n">{html.escape(c)}</td>'
                        if i in numeric
                        else f"<td>{html.escape(c)}</td>"
                        for i, c in enumerate(row)
                    )
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</table>")
            else:
                data = base64.b64encode(block.png).decode("ascii")
                width = f' width="{block.css_width}"' if block.css_width else ""
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.name)}"{width}>'
                    f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
                )
        out += ["</body>", "</html>", ""]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, block in self.blocks:
            if kind == "heading":
                out += [f"## {block}", ""]
            elif kind == "text":
                out += [block, ""]
            elif kind == "table":
                out.append(markdown_table(*block))
            else:
                out += [f"![{block.name}]({FILES}/{block.name}.png)", "", f"*{block.caption}*", ""]
        return "\n".join(out)

    def write(self, folder: Path) -> None:
        """report.html, report.md and report_files/*.png in ``folder``; each file replaced in one step,
        pictures of an earlier build that this one no longer draws removed."""
        files = folder / FILES
        files.mkdir(exist_ok=True)
        pictures = self.pictures
        for old in files.glob("*.png"):
            if old.stem not in pictures:
                old.unlink(missing_ok=True)
        for name, picture in pictures.items():
            write_atomic(files / f"{name}.png", picture.png)
        write_atomic(folder / "report.md", self.markdown())
        write_atomic(folder / "report.html", self.html())


def write_report(report: Report, folder: Path) -> None:
    page = run_page(report) if report.kind == "run" else sweep_page(report)
    page.write(folder)


# ---- what the pages show ---------------------------------------------------------------------
def percent(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, 100 * y) for x, y in points]


def smoothing_span(series: dict[str, list[tuple[int, float]]]) -> int:
    """A tenth of the longest series, at most 25 points: enough to see the trend, not to hide a rise."""
    return min(25, max(1, max((len(p) for p in series.values()), default=0) // 10))


def add_curves(
    page: Page,
    name: str,
    series: dict[str, Any],
    title: str,
    xlabel: str,
    ylabel: str,
    why_none: str,
    **opts: Any,
) -> None:
    """A figure of ``series`` (see figures.curves; a log y axis when the values span a wide range),
    or a sentence saying none was logged and why."""
    if not any(series.values()):
        page.text(f"No {title.split(' (')[0]} logged yet: {why_none}.")
        return
    opts.setdefault("logy", figures.wide_range(series))
    page.figure(
        name, figures.curves(series, title, xlabel, ylabel, **opts), f"{title[0].upper()}{title[1:]}."
    )


def shared_schedules(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """Jobs whose learning rate went the same way drawn as one line, named by what they share
    (``optim.lr=0.01 (3 jobs)``), so that no line hides another."""
    groups: dict[tuple, list[str]] = {}
    for label, pts in series.items():
        if pts:
            groups.setdefault(tuple(pts), []).append(label)
    out = {}
    for pts, labels in groups.items():
        if len(labels) == 1:
            out[labels[0]] = list(pts)
            continue
        shared = [t for t in labels[0].split() if all(t in label.split() for label in labels)]
        out[f"{' '.join(shared)} ({len(labels)} jobs)" if shared else " / ".join(labels)] = list(pts)
    return out


def sweep_curves(page: Page, named: list[tuple[str, RunEvents]]) -> None:
    page.heading("Curves")
    page.text("One line per job, named by what it changed; the legend lists them best first.")
    acc = {label: percent(ev.per_epoch("val/acc")) for label, ev in named}
    loss = {label: ev.per_epoch("val/loss") for label, ev in named}
    train = {label: ev.scalars("train/loss_step") for label, ev in named}
    span = smoothing_span(train)
    smooth = {label: figures.smoothed(pts, span) for label, pts in train.items()}
    lr = shared_schedules({label: ev.scalars("train/lr") for label, ev in named})
    add_curves(
        page,
        "val_acc",
        acc,
        "validation accuracy per epoch",
        "epoch",
        ACC,
        NO_EPOCH,
        whole_x=True,
        legend=True,
    )
    add_curves(
        page,
        "val_loss",
        loss,
        "validation loss per epoch",
        "epoch",
        LOSS,
        NO_EPOCH,
        whole_x=True,
        legend=True,
    )
    title = "training loss per step" + (f", smoothed over about {span} logged steps" if span > 1 else "")
    add_curves(page, "train_loss", smooth, title, "optimizer step", LOSS, NO_STEPS, legend=True)
    title = "learning rate per step (jobs with the same schedule share a line)"
    add_curves(page, "lr", lr, title, "optimizer step", "learning rate", NO_STEPS, legend=True)


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def ordered(values: list[str]) -> list[str]:
    """A key's values in numeric order when they are all numbers, else in the order the jobs ran."""
    unique = list(dict.fromkeys(values))
    if all(number(v) is not None for v in unique):
        return sorted(unique, key=lambda v: float(v))  # type: ignore[arg-type]
    return unique


def final(row: JobRow, metric: str) -> float:
    """A completed job's ``metric`` in %, NaN otherwise."""
    return 100 * row.value(metric) if row.status == "completed" else math.nan


def key_section(page: Page, report: Report, rows: list[JobRow]) -> None:
    """Final accuracy against the one swept key, or as a heatmap over the two swept keys."""
    keys = report.varying if len(report.rows) > 1 else []
    if not keys:
        return
    metric = "test/acc" if any(math.isfinite(final(r, "test/acc")) for r in rows) else "val/acc_best"
    what = "test accuracy of the tested checkpoint" if metric == "test/acc" else "best validation accuracy"
    if len(keys) > 2:
        page.text(
            f"The jobs differ in {len(keys)} keys ({', '.join(keys)}): no one- or two-key summary figure."
        )
        return
    page.heading(f"Accuracy by {' and '.join(k.lstrip('+') for k in keys)}")
    if len(keys) == 1:
        (key,) = keys
        numeric = all(number(r.overrides.get(key, "")) is not None for r in rows)

        def x(r: JobRow) -> Any:
            return number(r.overrides.get(key, "")) if numeric else r.overrides.get(key, "(unset)")

        series = {
            f"{what} (%)": [(x(r), final(r, metric)) for r in rows if math.isfinite(final(r, metric))],
            "best validation accuracy (%)": [
                (x(r), final(r, "val/acc_best")) for r in rows if math.isfinite(final(r, "val/acc_best"))
            ],
        }
        if metric == "val/acc_best":
            series.pop("best validation accuracy (%)")
        failed = [report.swept(r) for r in rows if not math.isfinite(final(r, metric))]
        caption = f"Final accuracy against {key.lstrip('+')}" + (
            f"; without a result: {', '.join(failed)}." if failed else "."
        )
        if any(series.values()):
            title = f"final accuracy against {key.lstrip('+')}"
            page.figure("by_key", figures.against(key, series, title=title, ylabel="accuracy (%)"), caption)
        return
    row_key, col_key = keys
    row_values = ordered([r.overrides.get(row_key, "") for r in report.rows])
    col_values = ordered([r.overrides.get(col_key, "") for r in report.rows])
    grid, notes = [], []
    for rv in row_values:
        grid.append([])
        notes.append([])
        for cv in col_values:
            cell = [
                r for r in rows if r.overrides.get(row_key, "") == rv and r.overrides.get(col_key, "") == cv
            ]
            values = [final(r, metric) for r in cell if math.isfinite(final(r, metric))]
            grid[-1].append(sum(values) / len(values) if values else math.nan)
            notes[-1].append(
                ""
                if not cell
                else "no result"
                if any(r.status == "completed" for r in cell)
                else cell[0].status
            )
    mean = " (mean over its jobs)" if len(rows) > len(row_values) * len(col_values) else ""
    title = f"{what} (%) by {row_key.lstrip('+')} and {col_key.lstrip('+')}"
    header = [f"{row_key.lstrip('+')} \\ {col_key.lstrip('+')}", *col_values]
    table = [
        [rv, *(f"{v:.2f}" if math.isfinite(v) else n or "-" for v, n in zip(vals, ns, strict=True))]
        for rv, vals, ns in zip(row_values, grid, notes, strict=True)
    ]
    page.text(f"{what[0].upper()}{what[1:]} in %, one cell per pair of values{mean}.")
    page.table(header, table, numeric=set(range(1, len(header))))
    if any(math.isfinite(v) for vals in grid for v in vals):
        fig = figures.heatmap(grid, row_values, col_values, row_key, col_key, title, "accuracy (%)", notes)
        page.figure("heatmap", fig, title[0].upper() + title[1:] + mean + ".")


def read_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """What ``python -m mnist_lit.evaluate ckpt=RUN`` wrote into RUN/evaluation/, if it ran."""
    try:
        data = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def add_test_views(page: Page, row: JobRow, ev: RunEvents) -> None:
    """Confusion matrix, per-digit accuracy and the misclassified digits of a run's test."""
    import numpy as np

    cm = ev.tensor(TEST_CONFUSION)
    source = "the run's own test of its tested checkpoint"
    evaluation = read_evaluation(row.path)
    if cm is None and evaluation:
        cm, source = np.array(evaluation["test"]["confusion_matrix"]), "python -m mnist_lit.evaluate"
    if cm is None:
        page.text(
            "No test-set views: the run has not been tested, or ran with inspect.enabled=false; "
            f"python -m mnist_lit.evaluate ckpt={row.path} adds the confusion matrix and per-digit accuracy."
        )
        return
    total, right = int(cm.sum()), int(np.trace(cm))
    title = f"test confusion matrix ({total} digits)"
    page.figure(
        "confusion_matrix",
        figures.confusion(cm, title),
        f"Confusion matrix from {source}: rows true digit, columns predicted.",
    )
    acc = figures.per_class_accuracy(cm)
    page.figure(
        "per_class",
        figures.per_class(cm, "accuracy per digit on the test set"),
        "Accuracy of each digit: the share of its test images predicted right.",
    )
    page.table(
        ["digit", *map(str, range(len(acc)))],
        [
            ["test images", *(str(int(n)) for n in cm.sum(axis=1))],
            ["accuracy (%)", *(f"{100 * a:.2f}" for a in acc)],
        ],
        numeric=set(range(1, len(acc) + 1)),
    )
    pixels, labels = ev.tensor(TEST_WRONG_PIXELS), ev.tensor(TEST_WRONG_LABELS)
    if pixels is not None and labels is not None:
        import torch

        from mnist_lit import render

        grid = render.misclassified_grid(
            torch.from_numpy(pixels), torch.from_numpy(labels), total - right, cell=84, caption=24
        )
        page.figure(
            "misclassified",
            render.png(grid),
            "Misclassified test digits, the most confident mistakes first: predicted/true and the "
            "network's confidence.",
        )
    elif total > right:
        page.text(
            "The misclassified digits are not recorded (inspect.max_misclassified=0, or a run from "
            "before they were)."
        )


def sweep_page(report: Report) -> Page:
    rows = report.sorted_rows()
    labels = report.labels()
    page = Page(f"{report.kind.capitalize()} {report.sweep_dir}")
    shared = " ".join(f"{k}={v}" for k, v in report.common.items())
    page.text(report.summary() + (f" Shared overrides: {shared}." if shared else ""))
    page.heading("Results")
    page.text(
        "Best first by val/acc_best (the best validation accuracy of any epoch); test/acc is the "
        "accuracy on the test set of the checkpoint the run tested: that best one, or its last "
        "under test_checkpoint=last."
    )
    page.table(Report.COLUMNS, [report.cells(r) for r in rows], Report.NUMERIC)
    logged = {r.path: RunEvents(r.path) for r in rows}
    sweep_curves(page, [(labels[r.path], logged[r.path]) for r in rows])
    key_section(page, report, rows)
    best = rows[0]
    if best.status == "completed":
        job = "job" if report.kind == "sweep" else "run"
        page.heading(f"Best {job}: {labels[best.path]}")
        page.text(
            f"{job.capitalize()} {best.num} ({best.path.relative_to(report.sweep_dir)}): val/acc_best "
            f"{best.value('val/acc_best'):.4f}, test/acc {best.value('test/acc'):.4f}."
        )
        add_test_views(page, best, logged[best.path])
    return page


def choices(run_dir: Path) -> str:
    """The run's model, optimizer and schedule as Hydra chose them (``model=twoconv optim=adam ...``)."""
    try:
        picked = OmegaConf.select(OmegaConf.load(run_dir / ".hydra" / "hydra.yaml"), "hydra.runtime.choices")
    except OSError:
        return ""
    return " ".join(f"{g}={picked[g]}" for g in ("model", "optim", "sched") if picked and picked.get(g))


def run_page(report: Report) -> Page:
    (row,) = report.rows
    ev = RunEvents(row.path)
    page = Page(f"Run {row.path}")
    status = row.status if row.status == "completed" else f"{row.status}: {row.reason}"
    facts = [
        ["configuration", choices(row.path)],
        ["overrides", " ".join(f"{k}={v}" for k, v in row.overrides.items()) or "(none)"],
        ["status", status],
        ["epochs", str(row.metrics.get("epochs", ""))],
        ["val/acc_best", f"{row.value('val/acc_best'):.4f}"],
        ["test/acc", f"{row.value('test/acc'):.4f}"],
        ["test/loss", f"{row.value('test/loss'):.4f}"],
        ["seconds", f"{row.value('wall_seconds'):.1f}"],
    ]
    page.table(["", "this run"], [f for f in facts if f[1] and f[1] != "nan"])
    page.heading("Curves")
    acc = {"validation": percent(ev.per_epoch("val/acc")), "training": percent(ev.per_epoch("train/acc"))}
    add_curves(page, "accuracy", acc, "accuracy per epoch", "epoch", ACC, NO_EPOCH, whole_x=True)
    train = ev.scalars("train/loss_step")
    span = smoothing_span({"": train})
    loss = {"training (smoothed)": figures.smoothed(train, span), "validation": ev.scalars("val/loss")}
    title = "training and validation loss" + (
        f" (training smoothed over about {span} logged steps)" if span > 1 else ""
    )
    faint = {"training (smoothed)": train}
    add_curves(page, "loss", loss, title, "optimizer step", LOSS, NO_EPOCH, faint=faint, legend=True)
    lr = {"learning rate": ev.scalars("train/lr")}
    add_curves(page, "lr", lr, "learning rate per step", "optimizer step", "learning rate", NO_STEPS)
    page.heading("Test set")
    add_test_views(page, row, ev)
    evaluation = read_evaluation(row.path)
    if evaluation and evaluation.get("robustness"):
        from mnist_lit.evaluate import amount

        rows = evaluation["robustness"]
        clean = rows[0]["acc"]
        page.heading("Robustness")
        page.text(
            f"From python -m mnist_lit.evaluate ({evaluation['test']['images']} test images): accuracy on "
            "the test digits shifted by whole pixels (what moves in is background) and rotated about the "
            "centre."
        )
        page.table(
            ["transform", "amount", "accuracy (%)", "change (points)"],
            [
                [r["transform"], amount(r), f"{100 * r['acc']:.2f}", f"{100 * (r['acc'] - clean):+.2f}"]
                for r in rows
            ],
            numeric={1, 2, 3},
        )
        page.figure("robustness", figures.robustness(rows), "Accuracy on shifted and on rotated test digits.")
    return page
