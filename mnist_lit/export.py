"""``python -m mnist_lit.export ckpt=PATH format=onnx``: the trained model for other runtimes.

Writes ONNX with a dynamic batch dimension (input ``image`` [batch, 1, 28, 28], normalised as in
training; output ``logits`` [batch, 10]) and the normalisation constants in the file's metadata,
then proves the file right: onnxruntime and PyTorch must agree on real test images, at two batch
sizes. Exporting needs the optional ``export`` extra; without it the command says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from mnist_lit.cli import COMMON, model_override, run_command, torch_device, user_errors
from mnist_lit.config import boolean, check_rules, optional_path, positive, positive_int
from mnist_lit.errors import UserError

if TYPE_CHECKING:
    import torch

    from mnist_lit.checkpoint import LoadedModel

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
EXTRA = "pip install 'mnist-lit[export]'  (from a checkout: pip install '.[export]')"
RULES = {
    **COMMON,
    "format": (lambda x: x in FORMATS, " or ".join(FORMATS)),
    "out": (optional_path, "null, a folder, or a .onnx file path"),
    "opset": (lambda x: x is None or (positive_int(x) and 7 <= x <= 30), "null or an ONNX opset in 7..30"),
    "verify.enabled": (boolean, "true or false"),
    "verify.images": (lambda x: positive_int(x) and x <= 10_000, "an integer in 1..10000 (test images)"),
    "verify.atol": (positive, "a number > 0"),
}


class VerificationFailed(UserError):
    """The exported file computes something else than the PyTorch model."""

    exit_code = 1


def require_extra() -> None:
    """The export extra's packages, or a UserError saying how to install them."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"format=onnx needs {', '.join(missing)}, from the export extra: {EXTRA}")


def target(out: str | None, run_dir: Path) -> Path:
    """Where the file goes: ``out`` when it names a .onnx file, else model.onnx in ``out`` or the run."""
    if out is None:
        return run_dir / "model.onnx"
    path = Path(out).expanduser()
    return path if path.suffix == ".onnx" else path / "model.onnx"


def to_onnx(model: LoadedModel, path: Path, opset: int | None) -> None:
    """Export with torch.export (dynamic batch), store mean/std, and check the graph with onnx."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 1, 28, 28)
    chatter = io.StringIO()  # the exporter narrates every stage on stdout; keep it for failures only
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):  # and on the log at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(chatter):
            torch.onnx.export(
                model.backbone,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                external_data=False,
                dynamo=True,
            )
    except Exception as err:
        log.error("%s", chatter.getvalue())
        raise UserError(f"{model.architecture} could not be exported to ONNX: {err}") from err
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {
        "architecture": model.architecture,
        "checkpoint": str(model.path),
        "input": "image: float32 [batch, 1, 28, 28] = (pixel / 255 - mean) / std, light digit on black",
        "mean": str(model.mean),
        "std": str(model.std),
    }
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, str(path))


def verify(model: LoadedModel, path: Path, images: torch.Tensor, atol: float) -> dict[str, Any]:
    """Largest logit difference between onnxruntime and PyTorch, for all images at once and one by one."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = model.normalize(images)
    reference = model.logits(images, torch.device("cpu"), batch_size=len(images))  # all in one batch
    whole = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    single = torch.from_numpy(session.run(["logits"], {"image": x[:1].numpy()})[0])
    diff = max(float((whole - reference).abs().max()), float((single - reference[:1]).abs().max()))
    same = int((whole.argmax(1) == reference.argmax(1)).sum())
    result = {"images": len(x), "batch_sizes": [len(x), 1], "max_abs_diff": diff, "same_prediction": same}
    if diff > atol or same != len(x):
        raise VerificationFailed(
            f"{path} does not match the PyTorch model: largest logit difference {diff:.2e} "
            f"(verify.atol={atol:g}), same prediction on {same} of {len(x)} test images; "
            "the file was written but do not use it"
        )
    return result


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the checkpoint's model and, unless verify.enabled=false, check it on test images."""
    require_extra()
    from mnist_lit.checkpoint import load_for_inference

    torch_device("cpu", cfg.threads)
    model = load_for_inference(cfg.ckpt, model_override(cfg))
    path = target(cfg.out, model.run_dir)
    to_onnx(model, path, cfg.opset)
    result: dict[str, Any] = {
        "file": str(path),
        "architecture": model.architecture,
        "bytes": path.stat().st_size,
    }
    if cfg.verify.enabled:
        images, _ = model.test_set(cfg.data.root)
        result["verify"] = verify(model, path, images[: cfg.verify.images], float(cfg.verify.atol))
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Check the arguments, export, verify, and say where the file is."""
    with user_errors():
        check_rules(cfg, RULES)
        result = export(cfg)
        print(f"wrote {result['file']} ({result['bytes'] / 1e6:.2f} MB, {result['architecture']})")
        if "verify" in result:
            v = result["verify"]
            print(
                f"onnxruntime matches PyTorch on {v['images']} test images (batch sizes {v['batch_sizes']}): "
                f"largest logit difference {v['max_abs_diff']:.1e}, same prediction on "
                f"{v['same_prediction']}/{v['images']}"
            )


if __name__ == "__main__":
    run_command(main, "export")
