"""``python -m mnist_lit.export ckpt=PATH format=onnx|state_dict|pt2``: the trained model as a file
that loads without Lightning or this package's training code.

- ``onnx`` (``model.onnx``), for other runtimes: a dynamic batch dimension (input ``image``
  [batch, 1, 28, 28], normalised as in training; output ``logits`` [batch, 10]) and the
  normalisation constants in the file's metadata. Needs the optional ``export`` extra; without it
  the command says so.
- ``state_dict`` (``model.pt``): the plain ``nn.Module``'s weights, which ``torch.load(weights_only=True)``
  and ``load_state_dict`` read into the architecture's class from ``mnist_lit.models`` (plain
  torch, copyable on its own); the command prints the two lines that do it.
- ``pt2`` (``model.pt2``): ``torch.export``'s ExportedProgram with the same dynamic batch, which
  ``torch.export.load`` runs with torch alone, no class needed.

Each file is then proved right: loaded back as its users load it, it must give the checkpoint's
own logits on real test images, at two batch sizes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from mnist_lit.cli import COMMON, model_override, run_command, torch_device, user_errors
from mnist_lit.config import boolean, check_rules, optional_path, positive, positive_int
from mnist_lit.errors import UserError, one_line

if TYPE_CHECKING:
    import torch

    from mnist_lit.checkpoint import LoadedModel

log = logging.getLogger(__name__)

# format -> the suffix of the file it writes
SUFFIXES = {"onnx": ".onnx", "state_dict": ".pt", "pt2": ".pt2"}
FORMATS = tuple(SUFFIXES)
EXTRA = "pip install 'mnist-lit[export]'  (from a checkout: pip install '.[export]')"
RULES = {
    **COMMON,
    "format": (lambda x: x in FORMATS, ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]),
    "out": (optional_path, "null, a folder, or a file path ending in .onnx, .pt or .pt2 (as format=)"),
    "opset": (lambda x: x is None or (positive_int(x) and 7 <= x <= 30), "null or an ONNX opset in 7..30"),
    "verify.enabled": (boolean, "true or false"),
    "verify.images": (lambda x: positive_int(x) and x <= 10_000, "an integer in 1..10000 (test images)"),
    "verify.atol": (positive, "a number > 0"),
}


class VerificationFailed(UserError):
    """The exported file computes something else than the PyTorch model."""

    exit_code = 1


def require_extra(fmt: str) -> None:
    """For ONNX, the export extra's packages, or a UserError saying how to install them; the
    other formats need torch alone."""
    if fmt != "onnx":
        return
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"format=onnx needs {', '.join(missing)}, from the export extra: {EXTRA}")


def target(out: str | None, run_dir: Path, fmt: str) -> Path:
    """Where the file goes: ``out`` when it names a file with the format's suffix, else
    model.SUFFIX in ``out`` (a folder) or in the run; a file named for another format is refused."""
    suffix = SUFFIXES[fmt]
    if out is None:
        return run_dir / f"model{suffix}"
    path = Path(out).expanduser()
    if path.suffix == suffix:
        return path
    if path.suffix in SUFFIXES.values():
        raise UserError(
            f"out={out} is not allowed with format={fmt}: it writes a {suffix} file; "
            f"name a {suffix} file or a folder"
        )
    return path / f"model{suffix}"


def traced_input() -> tuple[torch.Tensor, tuple[dict[int, Any]]]:
    """The example input both exporters trace with, and its batch dimension left dynamic."""
    import torch

    return torch.zeros(2, 1, 28, 28), ({0: torch.export.Dim("batch")},)


def metadata(model: LoadedModel) -> dict[str, str]:
    """What a user of the file needs to feed it, stored beside the graph (ONNX, pt2)."""
    return {
        "architecture": model.architecture,
        "checkpoint": str(model.path),
        "input": "image: float32 [batch, 1, 28, 28] = (pixel / 255 - mean) / std, light digit on black",
        "mean": str(model.mean),
        "std": str(model.std),
    }


def to_onnx(model: LoadedModel, path: Path, opset: int | None) -> None:
    """Export with torch.export (dynamic batch), store mean/std, and check the graph with onnx."""
    import onnx
    import torch

    example, dynamic = traced_input()
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
                dynamic_shapes=dynamic,
                opset_version=opset,
                external_data=False,
                dynamo=True,
            )
    except Exception as err:
        log.error("%s", chatter.getvalue())
        raise UserError(f"{model.architecture} could not be exported to ONNX: {err}") from err
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    onnx.helper.set_model_props(proto, metadata(model))
    onnx.save(proto, str(path))


def to_state_dict(model: LoadedModel, path: Path) -> None:
    """The backbone's own state_dict: plain tensors under the module's names, nothing of Lightning."""
    import torch

    torch.save(model.backbone.state_dict(), path)


def to_pt2(model: LoadedModel, path: Path) -> None:
    """torch.export's ExportedProgram (dynamic batch) with the metadata as mnist_lit.json beside it."""
    import torch

    example, dynamic = traced_input()
    try:
        program = torch.export.export(model.backbone, (example,), dynamic_shapes=dynamic)
    except Exception as err:
        raise UserError(
            f"{model.architecture} could not be exported with torch.export: {one_line(err)}"
        ) from err
    torch.export.save(program, path, extra_files={"mnist_lit.json": json.dumps(metadata(model))})


def constructor(model_config: dict[str, Any]) -> str:
    """``TwoConv(activation='relu')``: the architecture's class called with the run's arguments."""
    name = str(model_config["_target_"]).rpartition(".")[2]
    args = ", ".join(f"{k}={v!r}" for k, v in model_config.items() if not str(k).startswith("_"))
    return f"{name}({args})"


def usage(fmt: str, path: Path, model: LoadedModel) -> list[str]:
    """The Python that loads the file, printed for the user to copy (ONNX has its own runtimes)."""
    if fmt == "state_dict":
        package, _, name = str(model.model_config["_target_"]).rpartition(".")
        source = type(model.backbone).__module__.replace(".", "/") + ".py"
        return [
            f"load it with torch and the class {name} (from {package} import {name}; without mnist_lit, "
            f"copy {source}, which imports only torch), then model.eval() to predict:",
            f"  model = {constructor(model.model_config)}",
            f"  model.load_state_dict(torch.load({str(path)!r}, weights_only=True))",
        ]
    if fmt == "pt2":
        return [
            "load it with torch alone, no class needed:",
            f"  model = torch.export.load({str(path)!r}).module()",
        ]
    return []


def reloaded(fmt: str, path: Path, model: LoadedModel) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The written file loaded back as its users load it: what runs it, and its logits of
    normalised images."""
    import torch

    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return "onnxruntime", lambda x: torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    if fmt == "state_dict":
        from mnist_lit.checkpoint import build_backbone

        net = build_backbone(model.model_config)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.eval()
        runtime = f"{constructor(model.model_config)} with the file's weights"
    else:
        net = torch.export.load(str(path)).module()
        runtime = "torch.export.load"

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    return runtime, run


def verify(model: LoadedModel, path: Path, fmt: str, images: torch.Tensor, atol: float) -> dict[str, Any]:
    """Largest logit difference between the reloaded file and the checkpoint's model, for all
    images at once and one by one (the batch dimension is dynamic)."""
    import torch

    runtime, run = reloaded(fmt, path, model)
    x = model.normalize(images)
    reference = model.logits(images, torch.device("cpu"), batch_size=len(images))  # all in one batch
    whole = run(x)
    single = run(x[:1])
    diff = max(float((whole - reference).abs().max()), float((single - reference[:1]).abs().max()))
    same = int((whole.argmax(1) == reference.argmax(1)).sum())
    result = {
        "runtime": runtime,
        "images": len(x),
        "batch_sizes": [len(x), 1],
        "max_abs_diff": diff,
        "same_prediction": same,
    }
    if diff > atol or same != len(x):
        raise VerificationFailed(
            f"{path} does not match the PyTorch model: largest logit difference {diff:.2e} "
            f"(verify.atol={atol:g}), same prediction on {same} of {len(x)} test images; "
            "the file was written but do not use it"
        )
    return result


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the checkpoint's model and, unless verify.enabled=false, check it on test images."""
    fmt = str(cfg.format)
    require_extra(fmt)
    from mnist_lit.checkpoint import load_for_inference

    torch_device("cpu", cfg.threads)
    model = load_for_inference(cfg.ckpt, model_override(cfg))
    path = target(cfg.out, model.run_dir, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        to_onnx(model, path, cfg.opset)
    elif fmt == "state_dict":
        to_state_dict(model, path)
    else:
        to_pt2(model, path)
    result: dict[str, Any] = {
        "file": str(path),
        "architecture": model.architecture,
        "bytes": path.stat().st_size,
        "usage": usage(fmt, path, model),
        "input": f"image: float32 [batch, 1, 28, 28] = (pixel / 255 - {model.mean:g}) / {model.std:g}, "
        "light digit on black; output: logits [batch, 10]",
    }
    if cfg.verify.enabled:
        images, _ = model.test_set(cfg.data.root)
        result["verify"] = verify(model, path, fmt, images[: cfg.verify.images], float(cfg.verify.atol))
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Check the arguments, export, verify, and say where the file is and how to load it."""
    with user_errors():
        check_rules(cfg, RULES)
        if cfg.out is not None:
            target(cfg.out, Path(), cfg.format)  # a file named for another format: refused before torch loads
        result = export(cfg)
        print(f"wrote {result['file']} ({result['bytes'] / 1e6:.2f} MB, {result['architecture']})")
        for line in result["usage"]:
            print(line)
        print(f"input {result['input']}")
        if "verify" in result:
            v = result["verify"]
            print(
                f"{v['runtime']} matches the checkpoint's model on {v['images']} test images "
                f"(batch sizes {v['batch_sizes']}): "
                f"largest logit difference {v['max_abs_diff']:.1e}, same prediction on "
                f"{v['same_prediction']}/{v['images']}"
            )


if __name__ == "__main__":
    run_command(main, "export")
