"""python -m mnist_lit.export: ONNX, a plain state_dict and a torch.export program, each loaded back
as its users load it (onnxruntime; torch alone, in a process that cannot import this package) and
giving the checkpoint's logits, at any batch size."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PACKAGE, run_cli

from mnist_lit.checkpoint import LoadedModel, build_backbone, known_architectures, load_for_inference
from mnist_lit.data import load_mnist
from mnist_lit.export import target, to_pt2, verify

# a user's fresh interpreter: isolated (-I: no script folder, no PYTHON* variables on the path),
# started outside the repository, with this package and Lightning unimportable
WITHOUT_PACKAGE = """import sys
for name in ("mnist_lit", "lightning", "pytorch_lightning"):
    sys.modules[name] = None
import torch
"""
# ...which runs the loaded ``model`` on the saved input batches and saves its logits
RUN_SAVED_INPUTS = """
with torch.inference_mode():
    torch.save([model(x) for x in torch.load("inputs.pt", weights_only=True)], "outputs.pt")
"""


def checkpoint_logits(run: Path, mnist_root: Path, folder: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of real test images (100 and 7), normalised, with the checkpoint's own logits of
    them; the inputs are also saved as folder/inputs.pt for a fresh process."""
    model = load_for_inference(run)
    images, _ = load_mnist(mnist_root, train=False, download=False)
    inputs = [model.normalize(batch) for batch in (images[:100], images[100:107])]
    torch.save(inputs, folder / "inputs.pt")
    with torch.inference_mode():
        return [(x, model.backbone(x)) for x in inputs]


def in_fresh_python(code: str, cwd: Path) -> list[torch.Tensor]:
    """Run ``code`` (which loads ``model``) without this package, on the saved inputs; its logits."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", WITHOUT_PACKAGE + code + RUN_SAVED_INPUTS],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(cwd / "outputs.pt", weights_only=True)


def export_cli(run: Path, mnist_root: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(
        f"ckpt={run}", *args, "threads=1", cwd=cwd, mnist_root=mnist_root, module="mnist_lit.export"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_onnx_round_trip_matches_pytorch(trained_run: Path, mnist_root: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip(
        "onnxruntime", reason="the export extra is not installed: pip install '.[export]'"
    )
    onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install '.[export]'")
    out = tmp_path / "exported"
    result = export_cli(trained_run, mnist_root, tmp_path, f"out={out}")
    path = out / "model.onnx"
    assert f"wrote {path}" in result.stdout
    assert "onnxruntime matches the checkpoint's model on 100 test images" in result.stdout
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert float(meta["mean"]) == pytest.approx(0.1307) and meta["architecture"].startswith("twoconv")

    # checked here again, independently of the command's own check
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for x, expected in checkpoint_logits(trained_run, mnist_root, tmp_path):
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


def test_state_dict_loads_with_torch_and_a_copy_of_the_class(
    trained_run: Path, mnist_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    result = export_cli(trained_run, mnist_root, tmp_path, "format=state_dict", f"out={out}")
    path = out / "model.pt"
    assert f"wrote {path}" in result.stdout
    assert (
        "TwoConv(activation='relu') with the file's weights matches the checkpoint's model on 100 test images"
        in result.stdout
    )
    lines = result.stdout.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("load it with torch and the class TwoConv")]
    assert "copy mnist_lit/models/twoconv.py" in lines[at]
    code = [line.strip() for line in lines[at + 1 : at + 3]]
    assert code == [
        "model = TwoConv(activation='relu')",
        f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True))",
    ]
    # plain tensors under the plain module's names, nothing of Lightning or the Classifier
    state = torch.load(path, weights_only=True)
    assert list(state) == list(build_backbone(known_architectures()["twoconv"]).state_dict())
    assert all(type(v) is torch.Tensor for v in state.values())

    # a user without this package: torch, a copy of the class's file and the two printed lines
    expected = checkpoint_logits(trained_run, mnist_root, tmp_path)
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(PACKAGE / "models" / "twoconv.py", lib)
    script = [f"sys.path.insert(0, {str(lib)!r})", "from twoconv import TwoConv", *code, "model.eval()"]
    got = in_fresh_python("\n".join(script), tmp_path)
    for g, (_, e) in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_pt2_loads_with_torch_alone(trained_run: Path, mnist_root: Path, tmp_path: Path) -> None:
    result = export_cli(trained_run, mnist_root, tmp_path, "format=pt2", f"out={tmp_path / 'm.pt2'}")
    path = tmp_path / "m.pt2"
    assert f"wrote {path}" in result.stdout
    assert "torch.export.load matches the checkpoint's model on 100 test images" in result.stdout
    lines = result.stdout.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line == "load it with torch alone, no class needed:"]
    code = lines[at + 1].strip()
    assert code == f"model = torch.export.load({str(path)!r}).module()"
    meta = {"mnist_lit.json": ""}
    torch.export.load(path, extra_files=meta)
    assert '"mean": "0.1307"' in meta["mnist_lit.json"] and "twoconv" in meta["mnist_lit.json"]

    expected = checkpoint_logits(trained_run, mnist_root, tmp_path)
    got = in_fresh_python(code, tmp_path)  # the batch of 7 was not traced: the batch is dynamic
    for g, (_, e) in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(known_architectures()))
def test_every_architecture_exports_to_pt2(name: str, tmp_path: Path) -> None:
    config = known_architectures()[name]
    model = LoadedModel(
        backbone=build_backbone(config).eval(),
        config={},
        path=tmp_path / "untrained.ckpt",
        run_dir=tmp_path,
        architecture=name,
        model_config=config,
    )
    to_pt2(model, tmp_path / "model.pt2")
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result = verify(model, tmp_path / "model.pt2", "pt2", images, atol=1e-4)
    assert result["same_prediction"] == 8 and result["batch_sizes"] == [8, 1]


def test_a_channels_last_run_infers_in_nhwc_and_exports_as_built(tmp_path: Path) -> None:
    config = {"_target_": "mnist_lit.models.VGGNet", "widths": [4, 8], "depth": 1}
    backbone = build_backbone(config).eval()
    model = LoadedModel(
        backbone=backbone,
        config={"channels_last": True},
        path=tmp_path / "untrained.ckpt",
        run_dir=tmp_path,
        architecture="vggnet",
        model_config=config,
    )
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = backbone(model.normalize(images))
    nhwc = model.logits(images, torch.device("cpu"), batch_size=3)
    torch.testing.assert_close(nhwc, plain, atol=1e-5, rtol=0)
    conv = next(m for m in model.inference_backbone().modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.stride()[1] == 1
    assert all(p.is_contiguous() for p in backbone.parameters())  # what export writes is as built
    to_pt2(model, tmp_path / "model.pt2")
    assert verify(model, tmp_path / "model.pt2", "pt2", images, atol=1e-4)["same_prediction"] == 8


def test_where_the_file_goes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert target(None, run, "onnx") == run / "model.onnx"
    assert target(None, run, "state_dict") == run / "model.pt"
    assert target(None, run, "pt2") == run / "model.pt2"
    assert target(str(tmp_path / "dir"), run, "pt2") == tmp_path / "dir" / "model.pt2"
    assert target(str(tmp_path / "m.onnx"), run, "onnx") == tmp_path / "m.onnx"
    assert target(str(tmp_path / "w.pt"), run, "state_dict") == tmp_path / "w.pt"


def test_unknown_format_and_a_file_of_another_format_are_refused(tmp_path: Path) -> None:
    result = run_cli("ckpt=any.ckpt", "format=tflite", cwd=tmp_path, module="mnist_lit.export")
    assert result.returncode == 2
    assert "format='tflite' is not allowed: use onnx, state_dict or pt2" in result.stderr
    result = run_cli("ckpt=any.ckpt", "format=pt2", "out=m.onnx", cwd=tmp_path, module="mnist_lit.export")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "error: out=m.onnx is not allowed with format=pt2: it writes a .pt2 file; "
        "name a .pt2 file or a folder" in result.stderr
    )
