"""Ensembles in evaluate and predict: ckpt= a sweep folder or a list, scored from mean probabilities."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_metrics, run_cli, train_run
from PIL import Image

from mnist_lit.checkpoint import load_for_inference
from mnist_lit.ensemble import Ensemble, draw_subsets, quote_ckpt_list, resolve_members, subset_groups

LIMIT = 500  # the test images the shared run's own test step saw
ONECONV_JOB, TWOCONV_JOB = "0_model=oneconv,seed=2", "1_model=twoconv"


@pytest.fixture(scope="module")
def oneconv_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny oneconv run: another architecture, far weaker than the shared twoconv run."""
    return train_run(tmp_path_factory.mktemp("oneconv"), mnist_root, *TINY, "model=oneconv", "threads=1")


@pytest.fixture(scope="module")
def sweep_dir(trained_run: Path, oneconv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder as Hydra leaves it: multirun.yaml, numbered job folders (names with = and ,),
    and a job that failed before writing any checkpoint."""
    sweep = tmp_path_factory.mktemp("sweep") / "12-00-00-000000"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    shutil.copytree(oneconv_run, sweep / ONECONV_JOB)
    shutil.copytree(trained_run, sweep / TWOCONV_JOB)
    (sweep / "2_seed=9" / "checkpoints").mkdir(parents=True)
    return sweep


@pytest.fixture(scope="module")
def test_digits(mnist_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from mnist_lit.data import load_mnist

    images, labels = load_mnist(mnist_root, train=False, download=False)
    return images[:LIMIT], labels[:LIMIT]


@pytest.fixture(scope="module")
def sweep_evaluation(sweep_dir: Path, mnist_root: Path):
    """``python -m mnist_lit.evaluate ckpt=SWEEP`` with its default out: the sweep's evaluation/."""
    result = run_cli(
        f"ckpt={sweep_dir}", f"limit={LIMIT}", "robustness.shifts=[2]", "robustness.angles=[10]", "threads=1",
        cwd=sweep_dir.parent, mnist_root=mnist_root, module="mnist_lit.evaluate",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((sweep_dir / "evaluation" / "evaluation.json").read_text()), result


def test_an_ensemble_of_one_is_that_checkpoint(
    trained_run: Path, mnist_root: Path, test_digits, tmp_path: Path
) -> None:
    from mnist_lit.evaluate import Evaluator

    images, labels = test_digits
    model = load_for_inference(trained_run)
    z = model.logits(images, torch.device("cpu"), LIMIT)
    assert torch.equal(Ensemble([model]).logits(images, torch.device("cpu"), LIMIT), z.log_softmax(1))
    alone = Evaluator(model, torch.device("cpu"), LIMIT).report(images, labels)
    as_one = Evaluator(Ensemble([model]), torch.device("cpu"), LIMIT).report(images, labels)
    assert as_one["acc"] == alone["acc"] and as_one["confusion_matrix"] == alone["confusion_matrix"]
    assert as_one["loss"] == pytest.approx(alone["loss"], rel=1e-6)
    # a list of one is the single-checkpoint command: its table and JSON, no ensemble keys
    (tmp_path / "robustness.png").write_bytes(b"an earlier evaluation's figure")
    result = run_cli(
        f"ckpt=[{trained_run}]", f"limit={LIMIT}", "robustness.enabled=false", f"out={tmp_path}", "threads=1",
        cwd=tmp_path, mnist_root=mnist_root, module="mnist_lit.evaluate",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert "members" not in report and "ensemble" not in report
    assert not (tmp_path / "robustness.png").exists()  # none measured: no earlier figure beside it
    assert (
        report["checkpoint"] == str(model.path)
        and report["test"]["acc"] == read_metrics(trained_run)["test/acc"]
    )
    assert result.stdout.startswith(f"checkpoint   {model.path}\n")


def test_an_ensemble_is_scored_from_its_members_mean_probabilities(
    sweep_evaluation, sweep_dir: Path, test_digits
) -> None:
    report, result = sweep_evaluation
    images, labels = test_digits
    members = [load_for_inference(sweep_dir / job) for job in (ONECONV_JOB, TWOCONV_JOB)]
    logits = [m.logits(images, torch.device("cpu"), LIMIT) for m in members]
    mean = torch.stack([z.softmax(1) for z in logits]).mean(0)
    own = [float((z.argmax(1) == labels).float().mean()) for z in logits]
    assert own[0] < own[1] - 0.2  # two really different members
    expected = float((mean.argmax(1) == labels).float().mean())
    assert report["ensemble"]["acc"] == pytest.approx(expected, abs=1e-6)
    assert report["ensemble"]["loss"] == pytest.approx(
        float(-mean[range(LIMIT), labels].log().mean()), rel=1e-4
    )
    assert report["ensemble"]["members"] == 2 and report["test"]["acc"] == report["ensemble"]["acc"]
    assert [m["checkpoint"] for m in report["members"]] == [str(m.path) for m in members]
    assert [m["architecture"].split()[0] for m in report["members"]] == ["oneconv", "twoconv"]
    assert [m["acc"] for m in report["members"]] == pytest.approx(own, abs=1e-6)
    # the other tables are the ensemble's
    assert int(torch.tensor(report["test"]["confusion_matrix"]).diag().sum()) == round(expected * LIMIT)
    assert report["robustness"][0]["acc"] == report["ensemble"]["acc"] and len(report["robustness"]) == 7
    lines = result.stdout.splitlines()
    assert lines[0] == "ensemble of 2 checkpoints: the mean of their softmax probabilities"
    row = next(ln for ln in lines if ln.startswith(f" {TWOCONV_JOB}/checkpoints/"))
    assert f"{report['members'][1]['acc']:.4f}" in row and "twoconv (mnist_lit.models.TwoConv)" in row
    assert next(ln for ln in lines if ln.startswith(" ensemble ")).split() == [
        "ensemble",
        f"{expected:.4f}",
        f"{report['ensemble']['loss']:.4f}",
    ]
    for heading in ("per-class accuracy", "confusion matrix", "robustness"):
        assert f"\n{heading} of the ensemble" in result.stdout
    assert f"{sweep_dir / '2_seed=9'} holds no checkpoint" in result.stderr  # the failed job, left out
    for png in ("robustness.png", "confusion_matrix.png"):
        with Image.open(sweep_dir / "evaluation" / png) as img:
            assert img.width > 300


def test_sweep_folders_and_lists_name_every_member(
    sweep_dir: Path, trained_run: Path, oneconv_run: Path, tmp_path: Path
) -> None:
    jobs = [sweep_dir / ONECONV_JOB, sweep_dir / TWOCONV_JOB]
    found = resolve_members(str(sweep_dir))
    assert [c.parent.parent for c in found.checkpoints] == jobs and found.home == sweep_dir.resolve()
    # the sweep's own evaluation/ folder (if written) and the failed job add nothing
    plain = tmp_path / "runs"
    plain.mkdir()
    for name, job in zip(["seed_9", "seed_10"], jobs, strict=True):
        (plain / name).symlink_to(job)
    assert resolve_members(str(plain)).home == plain.resolve()
    # numbers in the names compare as numbers, as a sweep's job numbers do
    assert [c.parent.parent.name for c in resolve_members(str(plain)).checkpoints] == ["seed_9", "seed_10"]
    # a list is flattened (nested lists, sweeps in it), a checkpoint named twice counts once
    best = load_for_inference(oneconv_run).path
    listed = resolve_members([str(oneconv_run), [str(best), str(sweep_dir)], str(trained_run)])
    assert listed.checkpoints[0] == best and len(listed.checkpoints) == 4 and listed.home is None
    # run directories of one sweep, listed one by one, still write beside the sweep
    assert resolve_members([str(j) for j in jobs]).home == sweep_dir.resolve()
    # but some of its jobs, or another checkpoint of one, make another ensemble: it must not
    # overwrite the sweep's evaluation/, so it goes to outputs/ensembles/
    assert resolve_members([str(jobs[0])]).home is None
    other = next(c for c in (jobs[1] / "checkpoints").glob("*.ckpt") if c != found.checkpoints[1])
    assert resolve_members([str(jobs[0]), str(other)]).home is None
    # as typed on a command line: paths with = and , are quoted for Hydra's list grammar
    typed = f"ckpt=[{jobs[0]},{best.parent}/{best.name},~/x]"
    assert quote_ckpt_list([typed, f"ckpt=[[{jobs[0]},{jobs[1]}],~/x]", "ckpt=[a,[b]]]"]) == [
        f"ckpt=['{jobs[0]}','{best}','~/x']",
        f"ckpt=[['{jobs[0]}','{jobs[1]}'],'~/x']",  # a list in the list: a group for subsets.size
        "ckpt=[a,[b]]]",  # unmatched brackets: Hydra's own message
    ]


def test_subsets_score_each_smaller_ensemble_as_that_ensemble(
    sweep_dir: Path, trained_run: Path, mnist_root: Path, test_digits, tmp_path: Path
) -> None:
    """Three members (the sweep's two jobs, and the run one of them was copied from): every
    ensemble of two of them, or one from the sweep with the run, scored from mean probabilities."""
    images, labels = test_digits
    members = resolve_members([str(sweep_dir), str(trained_run)]).checkpoints
    logits = [load_for_inference(c).logits(images, torch.device("cpu"), LIMIT) for c in members]

    def mistakes(way: tuple[int, ...]) -> int:
        return int((Ensemble.combine([logits[i] for i in way]).argmax(dim=1) != labels).sum())

    for size, ways in (("2", [(0, 1), (0, 2), (1, 2)]), ("[1,1]", [(0, 2), (1, 2)])):
        out = tmp_path / size
        result = run_cli(
            f"ckpt=[{sweep_dir},{trained_run}]", f"subsets.size={size}", f"limit={LIMIT}",
            "robustness.enabled=false", f"out={out}", "threads=1",
            cwd=tmp_path, mnist_root=mnist_root, module="mnist_lit.evaluate",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        sub = json.loads((out / "evaluation.json").read_text())["subsets"]
        expected = Counter(mistakes(w) for w in ways)
        assert sub["count"] == sub["of"] == len(ways), sub
        assert sub["mistakes"] == {str(n): expected[n] for n in sorted(expected)}
        assert sub["acc_min"] == 1 - max(expected) / LIMIT
        assert (
            f"ensembles of {'2 of 3' if size == '2' else '1 of 2 + 1 of 1'} members: all {len(ways)}"
            in result.stdout
        )


def test_an_item_of_the_list_may_be_a_list_drawn_from_as_one(sweep_dir: Path, trained_run: Path) -> None:
    jobs = [str(sweep_dir / ONECONV_JOB), str(sweep_dir / TWOCONV_JOB)]
    assert subset_groups([jobs, str(trained_run)], [1, 1]) == [[0, 1], [2]]
    assert subset_groups([str(trained_run), jobs], [1, 2]) == [[0], [1, 2]]


def test_beyond_the_limit_subsets_are_drawn_at_random_the_same_each_time() -> None:
    groups, sizes = [[0, 1, 2, 3, 4, 5], [6, 7, 8]], [3, 2]
    every, total = draw_subsets(groups, sizes, limit=1000)
    assert total == 20 * 3 and len(set(every)) == len(every) == total
    drawn, total = draw_subsets(groups, sizes, limit=25)
    assert total == 60 and len(set(drawn)) == 25 and set(drawn) <= set(every)
    assert draw_subsets(groups, sizes, limit=25) == (drawn, 60)


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``torch`` package that fails on import: bad paths must be answered before torch loads."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text('raise ImportError("torch was imported")\n')
    return folder


EVALUATE, BOTH = ("mnist_lit.evaluate",), ("mnist_lit.evaluate", "mnist_lit.predict")
# (arguments, in a folder holding run/, run2/, pair/, notes.txt, sweep/, jobs/ and empty/; the message;
# the commands that are run with them)
BAD_CKPT = [
    (["ckpt=[run,nowhere/run]"], "ckpt: 'nowhere/run' in the list: no such file or directory", BOTH),
    (["ckpt=[]"], "ckpt=[] is not allowed: use a .ckpt file, a run directory, a sweep folder", BOTH),
    (["ckpt=sweep"], "ckpt='sweep': no checkpoint to evaluate in this folder (no run directories", EVALUATE),
    (
        ["ckpt=[run,jobs]"],
        "ckpt='jobs': no checkpoint to evaluate in this folder (run directories without checkpoints",
        EVALUATE,
    ),
    (
        ["ckpt=[run,empty]"],
        "ckpt='empty': no .ckpt file in empty, nor run directories holding checkpoints",
        EVALUATE,
    ),
    (["ckpt=[run,run2]", "model=twoconv"], "ckpt= names 2 checkpoints, each rebuilt from its own", BOTH),
    (["ckpt=[run,run2]", "subsets.size=3"], "subsets.size=3: ckpt= names 2 checkpoint(s), so an", EVALUATE),
    (
        ["ckpt=[run,run2]", "subsets.size=0"],
        "subsets.size=0 is not allowed: use null, a member count",
        EVALUATE,
    ),
    (
        ["ckpt=run", "subsets.size=1"],
        "subsets.size scores smaller ensembles of several checkpoints",
        EVALUATE,
    ),
    (
        ["ckpt=[run,run2]", "subsets.size=[1]"],
        "takes a count from each item of ckpt=[...], which has 2",
        EVALUATE,
    ),
    (
        ["ckpt=pair", "subsets.size=[1,1]"],
        "takes a count from each item of a list ckpt=[A,B,...], but",
        EVALUATE,
    ),
    (["ckpt=[run,run2]", "subsets.size=[2,1]"], "['run'] holds 1 checkpoint(s), fewer than the 2", EVALUATE),
    (["ckpt=[run,run2]", "subsets.size=[0,0]"], "draws no member: at least one count must be >= 1", EVALUATE),
    (
        ["ckpt=[run,run2,run]", "subsets.size=[1,1,1]"],
        "['run'] names checkpoints that an earlier item",
        EVALUATE,
    ),
]


@pytest.fixture(scope="module")
def bad_layout(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("bad_ckpt")
    (cwd / "run").symlink_to(trained_run)
    (cwd / "run2" / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", cwd / "run2" / "checkpoints")
    (cwd / "pair").mkdir()  # a folder of two run directories
    (cwd / "pair" / "a").symlink_to(cwd / "run")
    (cwd / "pair" / "b").symlink_to(cwd / "run2")
    (cwd / "notes.txt").write_text("not a checkpoint\n")
    (cwd / "sweep").mkdir()
    (cwd / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    (cwd / "jobs" / "0_seed=1" / "checkpoints").mkdir(parents=True)
    (cwd / "empty").mkdir()
    return cwd


@pytest.mark.parametrize(("args", "message", "modules"), BAD_CKPT, ids=[" ".join(a) for a, _, _ in BAD_CKPT])
def test_bad_ckpt_values_get_one_line_before_torch_loads(
    args: list[str], message: str, modules: tuple[str, ...], bad_layout: Path, no_torch: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(no_torch), env.get("PYTHONPATH", "")])
    for module in modules:
        images = ["images=notes.txt"] if module == "mnist_lit.predict" else []
        proc = subprocess.run(
            [sys.executable, "-m", module, *args, *images],
            cwd=bad_layout, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr


def test_a_file_in_the_list_that_is_no_checkpoint_is_named(bad_layout: Path) -> None:
    result = run_cli("ckpt=[run,notes.txt]", cwd=bad_layout, module="mnist_lit.evaluate")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: checkpoint notes.txt is damaged or not a PyTorch checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1


def test_predict_with_two_checkpoints_averages_their_probabilities(
    sweep_dir: Path, test_digits, tmp_path: Path
) -> None:
    from mnist_lit.predict import open_image, to_mnist

    images, _ = test_digits
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(images[i].numpy(), mode="L").resize((84, 84)).save(folder / f"{i}.png")
    # a list typed as it comes, job folder names with = and , and a checkpoint file's name with =
    twoconv = load_for_inference(sweep_dir / TWOCONV_JOB)
    result = run_cli(
        f"ckpt=[{sweep_dir / ONECONV_JOB},{twoconv.path}]", f"images={folder}", "threads=1",
        cwd=tmp_path, module="mnist_lit.predict",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    ensemble = Ensemble([load_for_inference(sweep_dir / ONECONV_JOB), twoconv])
    seen = torch.stack([to_mnist(open_image(folder / f"{i}.png")) for i in range(5)])
    conf, digit = ensemble.logits(seen, torch.device("cpu"), 512).softmax(1).max(1)
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    for i, line in enumerate(lines):
        name, d, p = line.split()
        assert (name, int(d)) == (str(folder / f"{i}.png"), int(digit[i]))
        assert float(p) == pytest.approx(float(conf[i]), abs=1e-3)
