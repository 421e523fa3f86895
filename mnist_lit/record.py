"""A run's record, ``metrics.json``: written atomically, and carried over when a run trains on.

Only the standard library is imported here: a sweep job that failed before torch loaded still
records why.

A run may be trained in several stretches (interrupted, then resumed; completed, then extended
with more epochs). Each stretch rewrites the record; what the earlier one said stays unless this
stretch replaces it or it no longer holds: the reason a stopped run gave once it completes, the
test result once the run trains on without being tested again. ``wall_seconds`` adds up every
stretch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

METRICS = "metrics.json"
# what a stopped or failed run says about its stop: no longer true once it completes
STOP_KEYS = ("reason", "resume_checkpoint", "stopped_as", "error_type")
# what testing measured: no longer true once the run trains on and stops untested
RESULT_KEYS = ("test/acc", "test/loss", "best_checkpoint", "tested_checkpoint")

# the records this process wrote, so that a second write in one stretch does not add its time twice
_written: dict[Path, float] = {}


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` in one step: a reader never sees half a file, a crash never leaves one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_metrics(folder: Path) -> dict[str, Any]:
    """The run's record, or {} when it has none (or none that can be read)."""
    try:
        data = json.loads((Path(folder) / METRICS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def written_here(folder: Path) -> bool:
    """Whether this process has already written the run's record (this stretch's own)."""
    return Path(folder) / METRICS in _written


def update_metrics(folder: Path, new: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Merge this stretch's ``new`` values into the run's record and write it; return the record.

    ``seconds`` is this stretch's wall time; the record's ``wall_seconds`` is the sum over stretches.
    """
    folder = Path(folder)
    path = folder / METRICS
    old = read_metrics(folder)
    earlier = float(old.get("wall_seconds", 0.0)) - _written.get(path, 0.0)
    drop = STOP_KEYS if new.get("status") == "completed" else RESULT_KEYS
    record = {k: v for k, v in old.items() if k not in drop}
    record.update(new)
    record["wall_seconds"] = round(max(0.0, earlier) + seconds, 2)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    _written[path] = seconds
    return record
