"""Checks on the four raw MNIST files before any training: a run never learns from damaged data.

Each file is checked for its size, its IDX header (magic number and dimensions) and its MD5
against the published uncompressed files (the checksums torchvision's extracted files have).
A failure names the file, what is wrong with it, and how to get a good copy.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from mnist_lit.errors import UserError


@dataclass(frozen=True)
class RawFile:
    """What one uncompressed IDX file of the official MNIST must look like."""

    name: str
    magic: int  # 0x0803: uint8 images (3 dims), 0x0801: uint8 labels (1 dim)
    dims: tuple[int, ...]
    md5: str

    @property
    def size(self) -> int:
        header = 4 + 4 * len(self.dims)
        count = 1
        for d in self.dims:
            count *= d
        return header + count


RAW_FILES: tuple[RawFile, ...] = (
    RawFile("train-images-idx3-ubyte", 0x0803, (60_000, 28, 28), "6bbc9ace898e44ae57da46a324031adb"),
    RawFile("train-labels-idx1-ubyte", 0x0801, (60_000,), "a25bea736e30d166cdddb491f175f624"),
    RawFile("t10k-images-idx3-ubyte", 0x0803, (10_000, 28, 28), "2646ac647ad5339dbf082846283269ea"),
    RawFile("t10k-labels-idx1-ubyte", 0x0801, (10_000,), "27ae3e4e09519cfbb04c329615203637"),
)

FIX = (
    "Replace it with a fresh copy of the official file (delete the MNIST/raw folder under data.root "
    "to let torchvision download it again, or copy it from a good MNIST folder)."
)

# (root, name) -> (size, mtime_ns) of files already verified in this process
_verified: dict[tuple[str, str], tuple[int, int]] = {}


def raw_dir(root: str | Path) -> Path:
    """Where torchvision's MNIST(root) keeps the uncompressed IDX files."""
    return Path(root).expanduser() / "MNIST" / "raw"


def check_file(path: Path, spec: RawFile) -> None:
    """Raise UserError naming ``path`` if it is missing, the wrong size, a wrong header or checksum."""
    if not path.is_file():
        raise UserError(f"MNIST file {path} is missing. {FIX}")
    size = path.stat().st_size
    if size != spec.size:
        other = next((f.name for f in RAW_FILES if f.size == size), None)
        if other is not None:
            raise UserError(
                f"MNIST file {path} has the size of {other} ({size:,} bytes, expected {spec.size:,}): "
                f"the files look swapped or misnamed. {FIX}"
            )
        what = "truncated" if size < spec.size else "too long"
        raise UserError(f"MNIST file {path} is {what}: {size:,} bytes, expected {spec.size:,}. {FIX}")
    with path.open("rb") as fh:
        header = fh.read(4 + 4 * len(spec.dims))
    magic, *dims = struct.unpack(f">{1 + len(spec.dims)}I", header)
    if magic != spec.magic or tuple(dims) != spec.dims:
        kind = {0x0803: "an image file", 0x0801: "a label file"}.get(magic, "not an MNIST IDX file")
        raise UserError(
            f"MNIST file {path} has a wrong IDX header: magic 0x{magic:08x} dims {tuple(dims)} "
            f"({kind}), expected magic 0x{spec.magic:08x} dims {spec.dims}. "
            f"The file may be swapped with another one or corrupted. {FIX}"
        )
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != spec.md5:
        raise UserError(
            f"MNIST file {path} is corrupted: its MD5 is {digest.hexdigest()}, expected {spec.md5} "
            f"(size and header look right, so some bytes inside were changed). {FIX}"
        )


def check_raw_files(root: str | Path) -> None:
    """Verify all four raw files under ``root``; each file is hashed once per process unless it changes."""
    folder = raw_dir(root)
    for spec in RAW_FILES:
        path = folder / spec.name
        key = (str(folder.resolve()), spec.name)
        try:
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp is not None and _verified.get(key) == stamp:
            continue
        check_file(path, spec)
        _verified[key] = stamp
