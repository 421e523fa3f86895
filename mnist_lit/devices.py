"""Whether the GPU a command asks for is there, for training runs and checkpoint commands alike.

Answered before torch loads where the machine certainly has none (no NVIDIA driver, or
CUDA_VISIBLE_DEVICES hiding every device), else by torch once it is loaded.
"""

from __future__ import annotations

import os
import sys

from mnist_lit.errors import UserError

GPU_NAMES = ("gpu", "cuda")


def gpu_possible() -> bool:
    """False only when CUDA certainly cannot work here, found without importing torch.

    On Linux: no NVIDIA device node (nor WSL's GPU bridge), or CUDA_VISIBLE_DEVICES set to hide
    every device; elsewhere, and whenever this says True, torch is asked once it is loaded.
    """
    if not sys.platform.startswith("linux"):
        return True
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(
        os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/proc/driver/nvidia")
    )


def check_gpu(key: str, value: object, devices: object = 1, loaded: bool = False) -> None:
    """Refuse ``KEY=gpu`` (or cuda) where no GPU, or fewer than ``devices``, can be used.

    ``key`` is what the user typed (``trainer.accelerator`` is chosen with ``accelerator=``);
    with ``loaded`` torch is asked as well, else only what needs no torch is checked.
    """
    if value not in GPU_NAMES:
        return
    short = "accelerator" if key == "trainer.accelerator" else key
    if not gpu_possible():
        raise UserError(
            f"{key}={value} but this machine has no NVIDIA GPU driver (or CUDA_VISIBLE_DEVICES hides "
            f"every GPU): use {short}=cpu or {short}=auto"
        )
    if not loaded:
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"{key}={value} but this machine has no usable CUDA GPU: use {short}=cpu or {short}=auto"
        )
    if isinstance(devices, int) and devices > torch.cuda.device_count():
        raise UserError(f"trainer.devices={devices} but only {torch.cuda.device_count()} GPU(s) are visible")
