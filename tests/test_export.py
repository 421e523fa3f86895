"""python -m mnist_lit.export: ONNX with a dynamic batch that onnxruntime runs as PyTorch does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli

from mnist_lit.export import target


def test_onnx_round_trip_matches_pytorch(trained_run: Path, mnist_root: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip(
        "onnxruntime", reason="the export extra is not installed: pip install '.[export]'"
    )
    onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install '.[export]'")
    from mnist_lit.checkpoint import load_for_inference
    from mnist_lit.data import load_mnist

    out = tmp_path / "exported"
    result = run_cli(
        f"ckpt={trained_run}", f"out={out}", "threads=1", cwd=tmp_path, mnist_root=mnist_root,
        module="mnist_lit.export",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    path = out / "model.onnx"
    assert (
        f"wrote {path}" in result.stdout and "onnxruntime matches PyTorch on 100 test images" in result.stdout
    )
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert float(meta["mean"]) == pytest.approx(0.1307) and meta["architecture"].startswith("twoconv")

    # checked here again, independently of the command's own check
    model = load_for_inference(trained_run)
    images, _ = load_mnist(mnist_root, train=False, download=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (images[:100], images[100:107]):
        x = model.normalize(batch)
        with torch.inference_mode():
            expected = model.backbone(x)
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_without_the_extra_says_which_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an onnxruntime that cannot be imported, as on an install without the extra
    blocked = tmp_path / "blocked" / "onnxruntime"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError(\"No module named 'onnxruntime'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "blocked"))
    result = run_cli("ckpt=any.ckpt", cwd=tmp_path, module="mnist_lit.export")
    assert result.returncode == 2
    assert (
        "format=onnx needs onnxruntime, from the export extra: pip install 'mnist-lit[export]'"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_where_the_file_goes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert target(None, run) == run / "model.onnx"
    assert target(str(tmp_path / "dir"), run) == tmp_path / "dir" / "model.onnx"
    assert target(str(tmp_path / "m.onnx"), run) == tmp_path / "m.onnx"


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    result = run_cli("ckpt=any.ckpt", "format=tflite", cwd=tmp_path, module="mnist_lit.export")
    assert result.returncode == 2 and "format='tflite' is not allowed: use onnx" in result.stderr
