"""Report pages: the end of every sweep and ``python -m mnist_lit.report DIR`` on a sweep, a run or
a folder of runs; the files, their pictures, and what the figures show."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import TINY, read_metrics, run_cli, train_run
from PIL import Image

from mnist_lit import figures
from mnist_lit.events import RunEvents
from mnist_lit.page import run_page, sweep_page
from mnist_lit.report import build_report, find_jobs
from mnist_lit.report import main as report_main

# two short epochs, logging every other step so that the per-step curves have points
SHORT = [
    *TINY,
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=8",
    "trainer.log_every_n_steps=2",
    "inspect.max_misclassified=20",
    "threads=1",
]
FAILED = "failed: UserError: optim.lr=nan is not allowed"
FIRST, SECOND = "10-00-00-000000", "11-00-00-000000"  # the hand-started runs' folders in outputs/runs/DAY


@pytest.fixture(scope="module")
def swept(
    tmp_path_factory: pytest.TempPathFactory, mnist_root: Path
) -> tuple[subprocess.CompletedProcess, Path]:
    """A 3-job sweep: two jobs train, the third is refused (optim.lr=nan) and recorded as failed."""
    cwd = tmp_path_factory.mktemp("swept")
    out = cwd / "outputs" / "sweep"
    proc = run_cli(
        "-m", "optim.lr=0.001,0.01,nan", *SHORT, f"hydra.sweep.dir={out}", cwd=cwd, mnist_root=mnist_root,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """outputs/runs/DAY with two runs started by hand, as the reports' authors did (here side by
    side, to wait for them once); the first one evaluated (a short robustness table)."""
    cwd = tmp_path_factory.mktemp("by_hand")
    day = cwd / "outputs" / "runs" / "2026-11-30"

    def train(name: str, lr: str) -> subprocess.CompletedProcess:
        return run_cli(
            f"optim.lr={lr}", *SHORT, f"hydra.run.dir={day / name}", cwd=cwd, mnist_root=mnist_root
        )

    def train_and_evaluate(name: str, lr: str) -> subprocess.CompletedProcess:
        trained = train(name, lr)
        if trained.returncode:
            return trained
        return run_cli(
            f"ckpt={day / name}", "limit=200", "robustness.shifts=[2]", "robustness.angles=[10]", "threads=1",
            cwd=cwd, mnist_root=mnist_root, module="mnist_lit.evaluate",
        )  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(train_and_evaluate, FIRST, "0.001"), pool.submit(train, SECOND, "0.01")]
    for proc in (f.result() for f in started):
        assert proc.returncode == 0, proc.stderr[-3000:]
    return day


class Tags(HTMLParser):
    """A page's tags, checked to nest; its images' sources and its text."""

    VOID = {"meta", "img", "br", "hr", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: set[str] = set()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)
        if tag == "img":
            self.images.append(str(dict(attrs)["src"]))
        elif tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and img.width >= 400 and img.height >= 200
    assert sum(1 for n in img.convert("L").histogram() if n) > 20  # a picture, not a blank
    return img


def check_pages(folder: Path) -> tuple[str, str]:
    """report.html parses, nests and needs nothing else (pictures embedded, no script); report.md
    shows the same pictures from report_files/; every picture decodes. Returns both texts."""
    parser = Tags()
    parser.feed((folder / "report.html").read_text())
    parser.close()
    assert parser.open == [] and {"html", "body", "table", "img"} <= parser.seen
    assert "script" not in parser.seen and "link" not in parser.seen
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    md = (folder / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert linked and len(linked) == len(parser.images)
    for src, link in zip(parser.images, linked, strict=True):
        png = (folder / link).read_bytes()
        assert base64.b64decode(src.split(",", 1)[1]) == png
        decoded(png)
    assert sorted((folder / "report_files").iterdir()) == sorted(folder / link for link in linked)
    return "".join(parser.text), md


def test_a_sweep_ends_with_its_report(swept: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, out = swept
    text, md = check_pages(out)
    assert str(out / "report.html") in proc.stdout + proc.stderr
    for page in (text, md):
        for lr in ("0.001", "0.01", "nan"):  # every job named
            assert f"optim.lr={lr}" in page
        assert FAILED in page  # the failed job with its reason
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()


def test_the_sweep_figures_show_each_job(swept: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, out = swept
    report = build_report(out)
    labels = report.labels()
    done = [r for r in report.sorted_rows() if r.status == "completed"]
    assert len(done) == 2
    pictures = sweep_page(report).pictures
    assert {
        "val_acc",
        "val_loss",
        "train_loss",
        "lr",
        "by_key",
        "confusion_matrix",
        "per_class",
        "misclassified",
    } == set(pictures)

    fig = pictures["val_acc"].figure
    (ax,) = fig.axes
    lines = ax.get_lines()
    # one line per job that validated, best first, named by what it changed; the refused job has none
    assert [line.get_label() for line in lines] == [labels[r.path] for r in done]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [labels[r.path] for r in done]
    for line, row in zip(lines, done, strict=True):
        assert list(line.get_xdata()) == [1, 2]
        assert max(line.get_ydata()) == pytest.approx(100 * read_metrics(row.path)["val/acc_best"], abs=1e-4)

    (lr_ax,) = pictures["lr"].figure.axes
    assert len(lr_ax.get_lines()) == 2 and lr_ax.get_xlabel() == "optimizer step"
    steps = lr_ax.get_lines()[0].get_xdata()
    assert len(steps) == 8 and max(steps) == 15  # 2 epochs x 8 batches, logged every other step

    (key_ax,) = pictures["by_key"].figure.axes
    assert key_ax.get_xscale() == "log" and key_ax.get_xlabel() == "optim.lr"
    test_line = key_ax.get_lines()[0]
    by_lr = {float(r.overrides["optim.lr"]): 100 * r.value("test/acc") for r in done}
    assert list(test_line.get_xdata()) == sorted(by_lr)
    assert list(test_line.get_ydata()) == pytest.approx([by_lr[x] for x in sorted(by_lr)])

    # the best job's test set: 2 test batches of 1000 digits
    counts = [int(t.get_text()) for t in pictures["confusion_matrix"].figure.axes[0].texts]
    assert len(counts) == 100 and sum(counts) == 2000
    assert sum(counts[::11]) == round(2000 * done[0].value("test/acc"))


def test_two_swept_keys_give_a_heatmap_also_while_jobs_still_run(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    cells = [
        ("adam", "constant", 0.98),
        ("adam", "warmup", 0.985),
        ("sgd", "constant", 0.95),
        ("sgd", "warmup", None),
    ]
    for num, (optim, sched, acc) in enumerate(cells):
        job = sweep / f"{num}_optim={optim},sched={sched}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- optim={optim}\n- sched={sched}\n")
        (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        if acc is not None:  # the last job has not written metrics.json yet
            metrics = {"status": "completed", "val/acc_best": acc, "test/acc": acc - 0.001, "epochs": 3}
            (job / "metrics.json").write_text(json.dumps(metrics))
    assert report_main([str(sweep)]) == 0
    text, md = check_pages(sweep)
    page = sweep_page(build_report(sweep))
    (ax, _colorbar) = page.pictures["heatmap"].figure.axes
    assert [t.get_text() for t in ax.texts] == ["97.90", "98.40", "94.90", "missing"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["constant", "warmup"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["adam", "sgd"]
    assert "| adam | 97.90 | 98.40 |" in md and "| sgd | 94.90 | missing |" in md
    assert "No validation accuracy per epoch logged yet" in text  # no job has events


def test_runs_of_a_plain_folder_are_numbered_as_people_number_them(tmp_path: Path) -> None:
    for name in ("seed_10", "seed_9", "seed_2"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name[5:]}\n")
    assert [job.path.name for job in find_jobs(tmp_path)] == ["seed_2", "seed_9", "seed_10"]


def test_a_run_report_shows_its_curves_test_set_and_robustness(by_hand: Path) -> None:
    run = by_hand / FIRST
    assert report_main([str(run)]) == 0
    text, md = check_pages(run)
    assert not (run / "results.md").exists()  # a run's folder gets the pages only
    page = run_page(build_report(run))
    assert set(page.pictures) == {
        "accuracy",
        "loss",
        "lr",
        "confusion_matrix",
        "per_class",
        "misclassified",
        "robustness",
    }
    (ax,) = page.pictures["accuracy"].figure.axes
    validation, training = ax.get_lines()
    assert (validation.get_label(), training.get_label()) == ("validation", "training")
    assert max(validation.get_ydata()) == pytest.approx(100 * read_metrics(run)["val/acc_best"], abs=1e-4)
    robustness = json.loads((run / "evaluation" / "evaluation.json").read_text())["robustness"]
    assert len(robustness) == 7  # clean, 4 shifts by 2 px, +-10 degrees
    for row in robustness:
        assert f"{100 * row['acc']:.2f}" in md
    shifts, turns = page.pictures["robustness"].figure.axes
    assert len(shifts.get_lines()) == 4 and len(turns.get_lines()) == 1
    assert "optim.lr=0.001" in text


def test_report_on_a_folder_of_runs_started_by_hand(by_hand: Path) -> None:
    proc = run_cli(str(by_hand), cwd=by_hand, module="mnist_lit.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text, md = check_pages(by_hand)
    with open(by_hand / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["dir"] for r in rows) == [FIRST, SECOND]
    report = build_report(by_hand)
    assert report.kind == "runs" and report.varying == ["optim.lr"]
    (ax,) = sweep_page(report).pictures["val_acc"].figure.axes
    assert sorted(line.get_label() for line in ax.get_lines()) == ["optim.lr=0.001", "optim.lr=0.01"]
    assert "Best run: " in text and "Best run: " in md


def test_a_folder_without_runs_gets_one_line(tmp_path: Path) -> None:
    proc = run_cli(str(tmp_path), cwd=tmp_path, module="mnist_lit.report")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "holds no job directories or runs" in proc.stderr and "outputs/runs/DATE" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_confusion_figure_writes_every_count() -> None:
    cm = [[5, 1, 0], [0, 7, 2], [1, 0, 9]]
    (ax, _colorbar) = figures.confusion(cm, "three classes").axes
    assert [t.get_text() for t in ax.texts] == [str(v) for row in cm for v in row]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "predicted digit",
        "true digit",
        "three classes",
    )
    assert figures.per_class_accuracy(cm) == pytest.approx([5 / 6, 7 / 9, 9 / 10])
    # debiased as TensorBoard's smoothing: a flat curve stays flat from its first point
    assert [y for _, y in figures.smoothed([(0, 2.0), (1, 2.0), (2, 2.0)], span=5)] == pytest.approx(
        [2, 2, 2]
    )


def test_curves_are_placed_at_their_epochs_when_validation_skips_some(
    tmp_path: Path, mnist_root: Path
) -> None:
    """Validation every second epoch of four: its two points belong to epochs 2 and 4, not 1 and 2."""
    overrides = [o for o in TINY if not o.startswith(("trainer.max_epochs", "trainer.limit_train_batches"))]
    run = train_run(
        tmp_path,
        mnist_root,
        *overrides,
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=3",
        "trainer.check_val_every_n_epoch=2",
        "inspect.enabled=false",
    )
    events = RunEvents(run)
    assert [epoch for epoch, _ in events.per_epoch("val/acc")] == [2, 4]
    assert [epoch for epoch, _ in events.per_epoch("train/acc")] == [1, 2, 3, 4]
