"""python -m mnist_lit.evaluate on a real checkpoint; checkpoints loaded as weights only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_metrics, run_cli
from PIL import Image

from mnist_lit.checkpoint import load_for_inference, load_weights_only
from mnist_lit.errors import UserError
from mnist_lit.evaluate import rotate, run_test_images, shift


@pytest.fixture(scope="module")
def evaluation(trained_run: Path, mnist_root: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("evaluation")
    # the run directory, as a user gives it; limit=500: the images the run's own test step saw
    result = run_cli(
        f"ckpt={trained_run}", "limit=500", f"out={out}", "threads=1", cwd=out, mnist_root=mnist_root,
        module="mnist_lit.evaluate",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "evaluation.json").read_text()), result.stdout, out


def test_evaluate_reproduces_the_run_test_accuracy(evaluation, trained_run: Path) -> None:
    report, stdout, _ = evaluation
    metrics = read_metrics(trained_run)
    assert report["test"]["images"] == 500
    assert report["test"]["acc"] == metrics["test/acc"]
    assert report["test"]["loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert report["architecture"].startswith("twoconv")
    assert f"test/acc     {metrics['test/acc']:.4f}" in stdout
    assert "the same images" in stdout


def test_per_class_accuracy_and_confusion_matrix_agree(evaluation) -> None:
    test = evaluation[0]["test"]
    cm = torch.tensor(test["confusion_matrix"])
    assert cm.shape == (10, 10) and int(cm.sum()) == 500
    assert float(cm.diag().sum()) / 500 == pytest.approx(test["acc"], abs=1e-6)
    for d in range(10):
        assert test["per_class_images"][str(d)] == int(cm[d].sum())
        assert test["per_class_acc"][str(d)] == pytest.approx(float(cm[d, d] / cm[d].sum()), abs=1e-6)


def test_robustness_table_has_a_row_per_shift_and_rotation(evaluation) -> None:
    report, stdout, out = evaluation
    rows = report["robustness"]
    expected = {("none", 0)}
    expected |= {(f"shift {d}", px) for d in ("left", "right", "up", "down") for px in (1, 2, 3, 4)}
    expected |= {("rotate", sign * a) for a in (5, 10, 15, 20, 25, 30) for sign in (1, -1)}
    assert [(r["transform"], r["amount"]) for r in rows].count(("none", 0)) == 1
    assert {(r["transform"], r["amount"]) for r in rows} == expected and len(rows) == len(expected)
    assert rows[0]["acc"] == report["test"]["acc"]
    by = {(r["transform"], r["amount"]): r["acc"] for r in rows}
    assert by[("shift left", 4)] < by[("none", 0)] and by[("rotate", 30)] < by[("none", 0)]
    assert stdout.count("shift ") == 16 and stdout.count(" deg ") == 12
    for png in ("robustness.png", "confusion_matrix.png"):
        with Image.open(out / png) as img:
            assert img.width > 300 and img.height > 300


def test_shift_and_rotate_move_pixels_as_named() -> None:
    img = torch.zeros(1, 28, 28, dtype=torch.uint8)
    img[0, 10, 10] = 255
    assert shift(img, 3, 0)[0, 10, 13] == 255 and shift(img, 3, 0).sum() == 255  # right
    assert shift(img, 0, -2)[0, 8, 10] == 255  # up
    assert shift(img, 20, 0).sum() == 0  # pushed off the frame: black fills in
    bar = torch.zeros(1, 28, 28, dtype=torch.uint8)
    bar[0, 4:24, 13:15] = 255
    assert rotate(bar, 90)[0, 13:15, 4:24].float().mean() > 200  # vertical bar becomes horizontal


def test_run_test_images_follows_limit_test_batches() -> None:
    assert run_test_images({"trainer": {"limit_test_batches": None}}) == 10_000
    assert run_test_images({"trainer": {"limit_test_batches": 2}, "data": {"eval_batch_size": 1000}}) == 2000
    quarter = {"trainer": {"limit_test_batches": 0.25}, "data": {"eval_batch_size": 500}}
    assert run_test_images(quarter) == 2500


def test_wrong_architecture_names_both(trained_run: Path) -> None:
    resnet = {"_target_": "mnist_lit.models.ResNet8"}
    with pytest.raises(UserError) as err:
        load_for_inference(trained_run, resnet)
    assert "does not fit the requested architecture resnet (mnist_lit.models.ResNet8)" in str(err.value)
    assert "its weights are those of twoconv (mnist_lit.models.TwoConv)" in str(err.value)


def test_resume_with_other_architecture_names_both(trained_run: Path, mnist_root: Path, tmp_path: Path):
    # a copy, so the shared run's own folder is left as it is
    ckpt = tmp_path / "twoconv.ckpt"
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", ckpt)
    result = run_cli(*TINY, "model=oneconv", f"ckpt_path={ckpt}", cwd=tmp_path, mnist_root=mnist_root)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "requested architecture oneconv" in result.stderr and "those of twoconv" in result.stderr


def test_checkpoint_with_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {}}, "x": Payload()}, evil)
    result = run_cli(f"ckpt={evil}", cwd=tmp_path, module="mnist_lit.evaluate")
    assert result.returncode == 2
    assert "holds more than weights and was not loaded" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"just some text\n", "is damaged or not a PyTorch checkpoint"),
        (b"PK\x03\x04truncated zip", "is damaged or not a PyTorch checkpoint"),
    ],
)
def test_unreadable_checkpoints_say_so(content: bytes, message: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_for_inference(bad)


def test_checkpoint_without_config_asks_for_the_architecture(trained_run: Path, tmp_path: Path) -> None:
    ckpt = load_weights_only(trained_run / "checkpoints" / "last.ckpt")
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": ckpt["state_dict"]}, bare)
    with pytest.raises(UserError, match="model=NAME"):
        load_for_inference(bare)
    named = load_for_inference(bare, {"_target_": "mnist_lit.models.TwoConv"})
    assert named.architecture.startswith("twoconv")


def test_missing_and_bad_arguments(tmp_path: Path) -> None:
    missing = run_cli(cwd=tmp_path, module="mnist_lit.evaluate")
    assert missing.returncode == 2 and "ckpt is required" in missing.stderr
    bad = run_cli("ckpt=x", "robustness.shifts=[0,2]", cwd=tmp_path, module="mnist_lit.evaluate")
    assert bad.returncode == 2 and "robustness.shifts=[0, 2] is not allowed" in bad.stderr
    with pytest.raises(UserError, match="no such file or directory"):
        load_for_inference(tmp_path / "no" / "such" / "run")


def test_skip_evaluates_a_later_part_of_the_test_set_from_a_folder_named_like_a_sweep_job(
    trained_run: Path, mnist_root: Path, tmp_path: Path
) -> None:
    job = tmp_path / "0_optim.lr=0.01,seed=2"  # sweep job folders hold = and ,
    shutil.copytree(trained_run, job)
    result = run_cli(
        f"ckpt={job}", "skip=9900", "robustness.enabled=false", f"out={tmp_path / 'ev'}", "threads=1",
        cwd=tmp_path, mnist_root=mnist_root, module="mnist_lit.evaluate",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert report["test"]["images"] == 100 and report["test"]["first_image"] == 9900
    assert "100 (from image 9900 on)" in result.stdout


def test_path_arguments_are_quoted_for_hydra() -> None:
    from mnist_lit.cli import quote_paths

    args = ["ckpt=out/0_a=1,b=2", "images=[a.png,b.png]", "out='x=y'", "limit=5", "ckpt=plain/path"]
    assert quote_paths(args) == [
        "ckpt='out/0_a=1,b=2'",
        "images=[a.png,b.png]",
        "out='x=y'",
        "limit=5",
        "ckpt=plain/path",
    ]
