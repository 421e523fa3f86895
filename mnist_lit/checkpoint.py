"""Checkpoints for inference: found from a file or a run directory, loaded as weights only.

Which file a ``ckpt=`` path names, and several checkpoints at once (a sweep folder, a list) as
one model, are in mnist_lit/ensemble.py.

A checkpoint is data, not a program: ``torch.load(weights_only=True)`` refuses any pickled
object beyond tensors and plain containers, and the backbone is rebuilt here from the run
config saved in the file, only from classes under ``mnist_lit.models`` with plain-value
arguments, so a crafted file cannot make the package import or call anything else.
"""

from __future__ import annotations

import copy
import importlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from mnist_lit.ensemble import resolve_checkpoint
from mnist_lit.errors import UserError, one_line
from mnist_lit.images import MEAN, STD, normalize
from mnist_lit.rundir import run_dir_of

MODELS_PACKAGE = "mnist_lit.models"
CONF_MODELS = Path(__file__).resolve().parent / "conf" / "model"
# the prefix the Classifier gives its backbone's parameters
BACKBONE = "backbone."
PLAIN = (int, float, str, bool, type(None))


@dataclass
class LoadedModel:
    """A backbone rebuilt from a checkpoint, in eval mode, with what inference needs to feed it."""

    backbone: nn.Module
    config: dict[str, Any]
    path: Path
    run_dir: Path
    architecture: str
    # the model config the backbone was built from (``_target_`` and arguments): how to build it again
    model_config: dict[str, Any]
    # the backbone in the layout inference runs it in (``inference_backbone``), made on first use
    _inference: nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def mean(self) -> float:
        return float(self.config.get("data", {}).get("mean", MEAN))

    @property
    def std(self) -> float:
        return float(self.config.get("data", {}).get("std", STD))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,28,28] -> float [N,1,28,28] standardised as the run trained on it."""
        return normalize(images, self.mean, self.std)

    def to(self, device: torch.device) -> LoadedModel:
        """The backbone moved to ``device``, where ``logits`` runs it (an Ensemble moves each member)."""
        self.backbone.to(device)
        self._inference = None
        return self

    def inference_backbone(self) -> nn.Module:
        """The backbone in the memory layout its run trained in: a ``channels_last`` run's convolutions
        infer about 1.7x faster in NHWC on a CPU. A copy, so export still writes the network as built."""
        if self._inference is None:
            self._inference = self.backbone
            if self.config.get("channels_last", False):
                self._inference = copy.deepcopy(self.backbone).to(memory_format=torch.channels_last)
        return self._inference

    def logits(self, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
        """float32 logits [N, 10], on the CPU, of uint8 images [N,28,28], ``batch_size`` at a time
        on ``device`` (where the backbone is)."""
        net = self.inference_backbone()
        with torch.inference_mode():
            batches = images.split(batch_size)
            return torch.cat([net(self.normalize(batch.to(device))).float().cpu() for batch in batches])

    def test_set(self, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The official MNIST test images and labels, from ``root`` (the command's data.root, which
        MNIST_ROOT sets), else from where the run read its data (downloaded only if the run did)."""
        from mnist_lit.data import load_mnist

        run_data = self.config.get("data", {})
        folder = root or run_data.get("root") or "data"
        return load_mnist(folder, train=False, download=bool(run_data.get("download", False)))


def _numpy_globals() -> list[Any]:
    """numpy arrays and dtypes (RNG states in resumable checkpoints) are data, safe to rebuild."""
    try:
        import numpy as np
    except ImportError:
        return []
    found: list[Any] = [np.ndarray, np.dtype]
    for where in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            found.append(importlib.import_module(where)._reconstruct)
            break
        except (ImportError, AttributeError):
            continue
    found += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "uint8", "int32", "float32")]
    return found


def load_weights_only(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents via ``torch.load(weights_only=True)``, or a UserError naming the file."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "global" in ln]
        if not lines:
            raise UserError(
                f"checkpoint {path} is damaged or not a PyTorch checkpoint ({one_line(err, limit=120)})"
            ) from err
        raise UserError(
            f"checkpoint {path} holds more than weights and was not loaded, because loading it could run "
            f"code from the file ({lines[0]}). Load only checkpoints written by mnist_lit."
        ) from err
    except Exception as err:
        raise UserError(
            f"checkpoint {path} is damaged or not a PyTorch checkpoint ({one_line(err, limit=120)})"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"checkpoint {path} is not a Lightning checkpoint (it has no state_dict)")
    return ckpt


def backbone_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's weights from a Classifier checkpoint, with their plain module names."""
    state = ckpt["state_dict"]
    if any(k.startswith(BACKBONE) for k in state):
        return {k[len(BACKBONE) :]: v for k, v in state.items() if k.startswith(BACKBONE)}
    return dict(state)


@cache
def known_architectures() -> dict[str, dict[str, Any]]:
    """conf/model/NAME.yaml -> its model config: the names users pick architectures by."""
    return {
        p.stem: OmegaConf.to_container(OmegaConf.load(p), resolve=True)  # type: ignore[misc]
        for p in sorted(CONF_MODELS.glob("*.yaml"))
    }


def architecture_name(model_cfg: Mapping[str, Any] | None) -> str:
    """'twoconv (mnist_lit.models.TwoConv)' for a model config, as users know the architectures."""
    if not model_cfg:
        return "an unknown architecture"
    target = str(model_cfg.get("_target_", "?"))
    names = [n for n, c in known_architectures().items() if c.get("_target_") == target]
    return f"{names[0]} ({target})" if names else target


def plain(value: Any) -> bool:
    """A number, string, boolean or None, or a list of them (a stack's widths): data, not code."""
    if isinstance(value, list | tuple):
        return all(isinstance(v, PLAIN) for v in value)
    return isinstance(value, PLAIN)


def build_backbone(model_cfg: Mapping[str, Any]) -> nn.Module:
    """The nn.Module a model config names, restricted to mnist_lit.models with plain arguments."""
    target = model_cfg.get("_target_")
    if not isinstance(target, str) or not target.startswith(MODELS_PACKAGE + "."):
        raise UserError(
            f"model._target_={target!r} is not allowed: a checkpoint's model must be a class under "
            f"{MODELS_PACKAGE} (one of: {', '.join(known_architectures())})"
        )
    kwargs = {k: v for k, v in model_cfg.items() if not str(k).startswith("_")}
    bad = [k for k, v in kwargs.items() if not plain(v)]
    if bad:
        raise UserError(
            f"model.{bad[0]} of {target} is not allowed: model arguments must be plain values "
            "or lists of them"
        )
    module_name, _, cls_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"model._target_={target!r}: no such architecture in this mnist_lit") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"model._target_={target!r} is not an architecture (not an nn.Module)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"model={dict(model_cfg)} cannot be built: {err}") from err


def identify_weights(state: Mapping[str, torch.Tensor]) -> str | None:
    """The known architecture whose parameter names and shapes these weights have, if any."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for cfg in known_architectures().values():
        reference = build_backbone(cfg).state_dict()
        if shapes == {k: tuple(v.shape) for k, v in reference.items()}:
            return architecture_name(cfg)
    return None


def fit_weights(backbone: nn.Module, state: Mapping[str, torch.Tensor], requested: str, source: Path) -> None:
    """Load ``state`` into ``backbone``; on any missing, extra or mis-shaped tensor say which is which."""
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        found = identify_weights(state)
        if found is None:
            detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
            found = f"an architecture mnist_lit does not know ({detail[:160]})"
        raise UserError(
            f"checkpoint {source} does not fit the requested architecture {requested}: "
            f"its weights are those of {found}"
        ) from err


def load_for_inference(ckpt: str | Path, model: Mapping[str, Any] | None = None) -> LoadedModel:
    """Rebuild the backbone a checkpoint was trained as (or ``model``, when given) with its weights."""
    path = resolve_checkpoint(ckpt)
    content = load_weights_only(path)
    config = (content.get("hyper_parameters") or {}).get("config") or {}
    if not isinstance(config, dict):
        config = {}
    model_cfg = dict(model) if model else config.get("model")
    if not model_cfg:
        raise UserError(
            f"checkpoint {path} holds no run config to rebuild its model from: name the architecture "
            f"with model=NAME (one of: {', '.join(known_architectures())})"
        )
    name = architecture_name(model_cfg)
    backbone = build_backbone(model_cfg)
    fit_weights(backbone, backbone_state(content), name, path)
    backbone.eval()
    return LoadedModel(
        backbone=backbone,
        config=config,
        path=path,
        run_dir=run_dir_of(path),
        architecture=name,
        model_config=model_cfg,
    )


def check_resume(ckpt_path: str | Path, backbone: nn.Module, model_cfg: Mapping[str, Any]) -> None:
    """Before resuming: the file must load as weights only and fit this run's architecture."""
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise UserError(f"ckpt_path={str(ckpt_path)!r}: no such checkpoint file")
    content = load_weights_only(path)
    # a copy, so the run's own freshly initialised weights stay as Lightning expects them
    fit_weights(copy.deepcopy(backbone), backbone_state(content), architecture_name(model_cfg), path)
