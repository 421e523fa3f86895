"""Run directories: resuming into the run that was stopped, and never two runs in one directory.

Only the standard library, Hydra and OmegaConf are imported here: these steps run before Hydra
composes the config (resume) or before the job starts (directory checks).

Resume: ``ckpt_path=last`` (the checkpoint written most recently under ./outputs), a run
directory, or a .ckpt file inside one continues that run: the original command's overrides are
replayed, the new ones applied on top, and Hydra writes into the same run directory, so logs,
checkpoints, TensorBoard events and metrics.json stay together.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mnist_lit.errors import UserError, report
from mnist_lit.record import read_metrics

# the checkpoint files of a run, in its checkpoints/ folder: named here only
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"  # at the end of each epoch (mnist_lit/train.py)
INTERRUPTED_CKPT = "interrupted.ckpt"  # a graceful stop's, mid-epoch (mnist_lit/guards.py)
# newest first: a mid-epoch stop leaves interrupted.ckpt beside the epoch-end last.ckpt
RESUMABLE = (INTERRUPTED_CKPT, LAST_CKPT)
OUTPUTS = Path("outputs")
DEBUG = "debug"  # outputs/debug/: the debug presets' runs (conf/debug/default.yaml), never resumed as "last"
MIN_FREE_BYTES = 16 << 20  # config, logs and TensorBoard events of a run, before any checkpoint
CKPT_KEYS = ("ckpt_path", "+ckpt_path", "++ckpt_path")
# command lines that start no job (or many): left as they are
NO_JOB_FLAGS = {"-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc"}
NO_JOB_FLAGS |= {"--shell-completion"}


# set once Hydra has parsed and composed the command line and starts a run or a sweep
_started: list[bool] = []
# a single run (not a sweep job), whose folder is left as it was if it stops before training
_guarded: list[bool] = []
# that folder as it was before this command, until training starts (then the command owns it)
_before: list[Snapshot] = []
_training: list[bool] = []


def rank_zero() -> bool:
    """False in the DDP processes Lightning starts beside the first: they report and write nothing."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def started() -> bool:
    """Whether this process got past Hydra's parsing and composition to start a run or sweep."""
    return bool(_started)


class Snapshot:
    """A run folder as it was before this command, so that a command refused before training can
    put it back: byte for byte for the files that are rewritten whole (the ``.hydra`` record,
    JSON files), by length for those only ever appended to (logs, TensorBoard events), and what
    this command added removed. A folder this command created is removed whole.

    In a folder that existed, only what a run writes is looked at (RUN_ENTRIES): anything else a
    user keeps there (``hydra.run.dir`` may name any folder) is neither read nor touched.
    """

    KEEP_BYTES = (".yaml", ".json")
    RUN_ENTRIES = (".hydra", "tb", "csv", CHECKPOINTS, "evaluation", "lightning_logs", "*.json", "*.log")
    RUN_ENTRIES += ("*-profiler.txt",)

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.existed = folder.exists()
        # the folders above it that this command creates, removed with it if left empty
        self.new_parents = [p for p in folder.parents if not p.exists()]
        self.entries: dict[Path, bytes | int | None] = {}
        for path in self.run_entries():
            rel = path.relative_to(folder)
            if path.is_dir() and not path.is_symlink():
                self.entries[rel] = None
            elif path.suffix in self.KEEP_BYTES or path.parent.name == ".hydra":
                self.entries[rel] = path.read_bytes()
            else:
                self.entries[rel] = path.lstat().st_size

    def run_entries(self) -> list[Path]:
        """What a run writes in the folder, deepest first."""
        if not self.folder.is_dir():
            return []
        tops = [p for p in self.folder.iterdir() if any(fnmatch(p.name, e) for e in self.RUN_ENTRIES)]
        found = [q for p in tops for q in ([p, *p.rglob("*")] if p.is_dir() and not p.is_symlink() else [p])]
        return sorted(found, key=lambda p: len(p.parts), reverse=True)

    def restore(self) -> None:
        if not self.existed:
            shutil.rmtree(self.folder, ignore_errors=True)
            for parent in self.new_parents:  # nearest first; kept if another run is in it now
                try:
                    parent.rmdir()
                except OSError:
                    break
            return
        for path in self.run_entries():
            before = self.entries.get(path.relative_to(self.folder), ...)
            if before is ...:  # new since the snapshot
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            elif isinstance(before, bytes) and path.read_bytes() != before:
                path.write_bytes(before)
            elif isinstance(before, int) and path.lstat().st_size > before:
                os.truncate(path, before)
        for rel, before in self.entries.items():  # rewritten files that were deleted meanwhile
            if isinstance(before, bytes) and not (self.folder / rel).exists():
                (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (self.folder / rel).write_bytes(before)


def training_began() -> bool:
    """Whether this command's training has started (or it keeps what it writes anyway: sweep jobs)."""
    return bool(_training) or not _guarded


def training_started() -> None:
    """From now on this command's changes to the run folder stay, whatever happens."""
    _training.append(True)
    _before.clear()


def undo() -> bool:
    """Put the run folder back as it was before this command, unless training has started.

    Returns whether it did. Hydra's log file handlers are closed first, so nothing more is written.
    """
    if not _before:
        return False
    for handler in logging.getLogger().handlers[:]:
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logging.getLogger().removeHandler(handler)
    _before.pop().restore()
    return True


def to_run_log(level: int, message: str, *args: Any) -> None:
    """A line for the run's log file only: the console has it already, or must not be disturbed
    (a line printed under a live progress bar breaks it)."""
    log = logging.getLogger("mnist_lit")
    record = log.makeRecord(log.name, level, __file__, 0, message, args, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def newest(files: list[Path]) -> Path | None:
    """The most recently written of ``files`` that exist (None if none does)."""
    existing = [f for f in files if f.is_file()]
    return max(existing, key=lambda f: f.stat().st_mtime_ns) if existing else None


def resume_checkpoint(run: Path, names: tuple[str, ...] = RESUMABLE) -> Path | None:
    """The checkpoint a resume of run folder ``run`` starts from: the newest of ``names`` in its
    checkpoints/ (or in ``run`` itself, a folder of checkpoints); None if it holds none."""
    return newest([run / CHECKPOINTS / name for name in names] + [run / name for name in names])


def checkpoints_folder(run: Path) -> Path:
    """Where a run folder keeps its checkpoints: its checkpoints/, else (a folder of them) itself."""
    return run / CHECKPOINTS if (run / CHECKPOINTS).is_dir() else run


def evaluation_checkpoint(run: Path) -> Path | None:
    """The checkpoint of a run folder to evaluate: the one the run tested (metrics.json: its best,
    or its last with test_checkpoint=last), else its last.ckpt, else its newest .ckpt file; None if
    it holds none."""
    folder = checkpoints_folder(run)
    record = read_metrics(run)
    for key in ("tested_checkpoint", "best_checkpoint"):  # a run recorded before tested_checkpoint
        # by name inside this folder, so a run folder that was moved still resolves
        name = Path(record[key]).name if record.get(key) else None
        if name and (folder / name).is_file():
            return folder / name
    if (folder / LAST_CKPT).is_file():
        return folder / LAST_CKPT
    found = sorted(folder.glob("*.ckpt"), key=lambda f: f.stat().st_mtime)
    return found[-1] if found else None


def natural_key(name: str) -> tuple[str | int, ...]:
    """Run folders in the order people number them: ``seed_10`` after ``seed_9``, job ``10_...``
    after ``9_...``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def run_dir_of(ckpt: Path) -> Path:
    """The run folder a checkpoint belongs to: the folder above checkpoints/, else its own folder."""
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else ckpt.parent


def recorded_run(ckpt: Path) -> Path | None:
    """The run folder a checkpoint was written by, if it still holds that run's Hydra record."""
    run = run_dir_of(ckpt)
    if ckpt.parent.name == CHECKPOINTS and (run / ".hydra" / "overrides.yaml").is_file():
        return run
    return None


def find_checkpoint(value: str, outputs: Path = OUTPUTS) -> Path:
    """The checkpoint a resume starts from: ``last``, a run directory, or a .ckpt file."""
    if value == "last":
        found = newest(
            [
                f
                for name in RESUMABLE
                for f in outputs.glob(f"**/{CHECKPOINTS}/{name}")
                if f.relative_to(outputs).parts[0] != DEBUG
            ]
        )
        if found is None:
            raise UserError(
                f"ckpt_path=last: no {' or '.join(RESUMABLE)} under {outputs.resolve()} (outside "
                f"{DEBUG}/); give the checkpoint file or run directory (ckpt_path=PATH)"
            )
        return found.resolve()
    path = Path(value).expanduser()
    if path.is_dir():
        found = resume_checkpoint(path)
        if found is None:
            raise UserError(f"ckpt_path={value!r}: no {' or '.join(RESUMABLE)} in that run directory")
        return found.resolve()
    if not path.is_file():
        raise UserError(
            f"ckpt_path={value!r}: no such file or run directory "
            "(use a .ckpt file, a run directory, or last for the latest run under ./outputs)"
        )
    return path.resolve()


def check_not_complete(cfg: DictConfig) -> None:
    """A resume of a completed run that would train nothing is refused, with how to go on instead.

    Lightning would otherwise skip the training, test again and replace the run's record with the
    few seconds of that test.
    """
    ckpt = Path(str(cfg.get("ckpt_path") or ""))
    run = recorded_run(ckpt) if ckpt.name == LAST_CKPT else None
    record = read_metrics(run) if run is not None else {}
    done, wanted = record.get("epochs"), cfg.trainer.get("max_epochs")
    if record.get("status") != "completed" or not isinstance(done, int) or wanted is None or wanted > done:
        return
    more = done + 5
    if cfg.get("sched", {}).get("interval") == "step":
        extend = (
            f"its per-step schedule was sized for {done} epochs, so it cannot be trained on: start a "
            f"new run with trainer.max_epochs={more}, or use an epoch schedule such as sched=steplr"
        )
    else:
        extend = f"to train it on, give it more epochs: python -m mnist_lit ckpt_path={run} "
        extend += f"trainer.max_epochs={more}"
    epochs = f"{done} epoch{'s' if done != 1 else ''}"
    raise UserError(
        f"run {run} is complete: it trained its {epochs} (trainer.max_epochs={wanted}) and was tested "
        f"(test/acc {record.get('test/acc', float('nan')):.4f}); nothing is left to resume. "
        f"{extend[0].upper()}{extend[1:]}. To test it again: python -m mnist_lit.evaluate ckpt={run}"
    )


def override_key(arg: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~a`` -> ``a``: the key an override sets."""
    return arg.split("=", 1)[0].lstrip("+~")


def resume_argv(argv: list[str], outputs: Path = OUTPUTS) -> list[str]:
    """Rewrite a resume command line to replay the stopped run's overrides into its own directory.

    ``argv`` is the command line after the program name; anything without ``ckpt_path`` and
    every multirun is returned unchanged.
    """
    if any(a in NO_JOB_FLAGS or a.split("=", 1)[0] in NO_JOB_FLAGS for a in argv):
        return argv
    at = [i for i, a in enumerate(argv) if a.split("=", 1)[0] in CKPT_KEYS]
    if not at:
        return argv
    value = argv[at[-1]].split("=", 1)[1].strip("'\"")
    if value in ("", "null", "None"):
        return argv
    ckpt = find_checkpoint(value, outputs)
    args = [a for i, a in enumerate(argv) if i not in at] + [f"ckpt_path={quote(str(ckpt))}"]
    run = recorded_run(ckpt)
    if run is None:
        return args
    given = {override_key(a) for a in args if "=" in a or a.startswith("~")}
    original = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    replay = [
        str(a)
        for a in original or []
        if override_key(str(a)) not in given and override_key(str(a)) not in CKPT_KEYS
    ]
    if "hydra.run.dir" not in given:
        args.append(f"hydra.run.dir={quote(str(run))}")
    # replayed overrides go before the new ones, so that the new ones win
    at = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
    return args[:at] + replay + args[at:]


def quote(value: str) -> str:
    """A Hydra override value that keeps any path intact."""
    if all(c.isalnum() or c in "/._-:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_probe(folder: Path) -> None:
    """Create ``folder`` and write, sync and delete a small file in it; OSError if any step fails."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)  # unique, even across threads
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)


def check_room(folder: Path, what: str, need_bytes: int = MIN_FREE_BYTES) -> None:
    """Create ``folder`` and make sure a file can be written there and ``need_bytes`` are free.

    Checked twice per run: before Hydra starts the job (the config, logs and events; a Hydra
    callback, so ``room_or_exit``) and once the model is built (room for its checkpoints too).
    """
    try:
        write_probe(folder)
    except OSError as err:
        reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise UserError(
            f"{what} {folder} cannot be written ({reason}): fix its permissions or free space, "
            "or choose another folder (hydra.run.dir=PATH, or hydra.sweep.dir=PATH with -m)"
        ) from err
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UserError(
            f"{what} {folder} has {free / 2**20:.1f} MiB free but this run needs about "
            f"{need_bytes / 2**20:.1f} MiB for its logs and checkpoints: free space, or choose another "
            "folder (hydra.run.dir=PATH, or hydra.sweep.dir=PATH with -m)"
        )


def room_or_exit(folder: Path, what: str) -> None:
    """check_room where a raised error would reach Hydra, which turns a callback's into a warning."""
    try:
        check_room(folder, what)
    except UserError as err:
        report(err)


def claim(folder: Path, marker: str | None) -> tuple[Path, Snapshot]:
    """Atomically take ``folder`` (or ``folder-1``, ``folder-2``...) for this process alone.

    ``marker`` names the subfolder whose creation is the claim (``.hydra`` for a run, whose
    folder may already exist); None claims the folder itself. Returns the folder taken and what
    it held before.
    """
    for n in range(1000):
        candidate = folder if n == 0 else folder.with_name(f"{folder.name}-{n}")
        before = Snapshot(candidate)
        try:
            candidate.mkdir(parents=True, exist_ok=marker is not None)
            if marker is not None:
                (candidate / marker).mkdir()
            return candidate, before
        except FileExistsError:
            continue
    raise UserError(f"could not find a free run directory next to {folder}")


class RunDirectory(Callback):
    """Hydra callback: check the output folder is writable and claim it before the job starts.

    Two runs started in the same microsecond (or a user-chosen ``hydra.run.dir`` already used)
    get distinct folders; a resume writes into the run it continues. Sweep jobs are told apart by
    their job number inside a sweep folder claimed the same way.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _started.append(True)
        run = Path(str(config.hydra.run.dir))
        resuming = config.get("ckpt_path") and recorded_run(Path(str(config.ckpt_path))) == run
        # a DDP process Lightning started for rank > 0 joins rank 0's folder (its hydra.run.dir)
        joining = not rank_zero()
        _guarded.append(True)
        new_parents = [p for p in run.parents if not p.exists()]  # room_or_exit creates them
        room_or_exit(run.parent, "output folder")
        if joining:
            return
        if resuming:
            _before.append(Snapshot(run))
            return
        taken, before = claim(run, ".hydra")
        before.new_parents = new_parents
        _before.append(before)
        if taken != run:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.run.dir = str(taken)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _started.append(True)
        sweep = Path(str(config.hydra.sweep.dir))
        room_or_exit(sweep.parent, "sweep folder")
        taken, _ = claim(sweep, None)
        if taken != sweep:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweep.dir = str(taken)
                # each job's config is composed again from these overrides
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quote(str(taken))}")
