"""Which checkpoints ``ckpt=`` names, and several of them as one model, for evaluate and predict.

``ckpt=`` is a .ckpt file, a run directory (the checkpoint its run tested: the best by val/acc,
or the last under test_checkpoint=last), a sweep folder or a folder of run directories (every job's
tested checkpoint), or a list of these, flattened.

An ensemble predicts the mean of its members' softmax probabilities. Each member is rebuilt
from its own checkpoint (architectures may differ) and normalises images with its own run's
mean and std, so only probabilities are ever mixed. Its ``logits`` are the log of that mean:
softmax gives the mean back, cross-entropy on them is the NLL of the averaged probabilities, and
everything that takes a LoadedModel's logits (Evaluator, predict) takes an Ensemble unchanged.

Which smaller ensembles of the members evaluate's ``subsets.size`` scores (``subset_groups``,
``draw_subsets``) is decided here too, from the paths alone.

Only the standard library, Hydra and OmegaConf are imported at module level, so bad ``ckpt=``
values answer before torch loads.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import ListConfig

from mnist_lit.errors import UserError
from mnist_lit.rundir import (
    CHECKPOINTS,
    checkpoints_folder,
    evaluation_checkpoint,
    natural_key,
    quote,
    run_dir_of,
)

if TYPE_CHECKING:
    import torch

    from mnist_lit.checkpoint import LoadedModel

MULTIRUN = "multirun.yaml"  # what Hydra writes at the top of every sweep folder
FORMS = "a .ckpt file, a run directory, a sweep folder, or a list of them"


@dataclass
class Members:
    """The checkpoints ``ckpt=`` names, in order, and the folder they were found in together."""

    checkpoints: list[Path]
    # the sweep folder (or folder of run directories) whose runs' tested checkpoints are exactly the
    # members, if there is one: the ensemble of that folder, evaluated into its evaluation/
    home: Path | None


def is_run_dir(path: Path) -> bool:
    """A run directory keeps its checkpoints in checkpoints/: it stands for one checkpoint."""
    return (path / CHECKPOINTS).is_dir()


def tested_checkpoints(folder: Path) -> dict[Path, Path | None]:
    """Each run directory directly inside ``folder``, in job order, and the checkpoint it tested."""
    runs = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and is_run_dir(p)),
        key=lambda p: natural_key(p.name),
    )
    return {run: evaluation_checkpoint(run) for run in runs}


def runs_in(folder: Path) -> list[Path]:
    """The tested checkpoint of each run directory directly inside ``folder`` (a sweep's jobs).

    A job that left no checkpoint (it failed before its first epoch ended) is left out with a
    note on stderr; none at all is an error naming the folder.
    """
    best = tested_checkpoints(folder)
    runs = list(best)
    found = [c for c in best.values() if c is not None]
    if not found:
        what = "run directories without checkpoints" if runs else "no run directories"
        raise UserError(
            f"ckpt={str(folder)!r}: no checkpoint to evaluate in this folder ({what}; a sweep "
            "folder holds job folders, each with checkpoints/)"
        )
    for run in (r for r, c in best.items() if c is None):
        print(f"note: {run} holds no checkpoint (its job failed?); left out", file=sys.stderr)
    return found


def holds_runs(folder: Path) -> bool:
    """A sweep folder, or a plain folder of run directories (and no .ckpt files of its own)."""
    if (folder / MULTIRUN).is_file():
        return True
    if is_run_dir(folder) or any(folder.glob("*.ckpt")):
        return False
    return any(p.is_dir() and is_run_dir(p) for p in folder.iterdir())


def items(value: Any) -> list[str]:
    """``ckpt=`` as a flat list of the paths it names (a Hydra list may nest lists)."""
    if isinstance(value, list | tuple | ListConfig):
        return [s for v in value for s in items(v)]
    return [str(value)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file as given, or for a run directory the checkpoint it tested (else its last.ckpt)."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise UserError(
            f"ckpt={str(path)!r}: no such file or directory (give a .ckpt file or a run directory)"
        )
    found = evaluation_checkpoint(p)
    if found is None:
        runs = "" if checkpoints_folder(p) != p else ", nor run directories holding checkpoints"
        raise UserError(f"ckpt={str(path)!r}: no .ckpt file in {checkpoints_folder(p)}{runs}")
    return found


def resolve_members(value: Any) -> Members:
    """Every checkpoint ``ckpt=`` names: a file as given, a run directory's tested checkpoint,
    each job's tested checkpoint in a sweep folder, and all of these from a list, flattened; a
    checkpoint named twice counts once."""
    listed = isinstance(value, list | tuple | ListConfig)
    paths = items(value)
    if not paths:
        raise UserError(f"ckpt=[] names no checkpoint: give {FORMS}")
    found: list[Path] = []
    homes: set[Path | None] = set()
    single_runs = False  # some member named as a run or a checkpoint rather than by its folder
    for item in paths:
        p = Path(item).expanduser()
        if listed and not p.exists():
            raise UserError(f"ckpt: {item!r} in the list: no such file or directory (give {FORMS})")
        if p.is_dir() and holds_runs(p):
            found += runs_in(p)
            homes.add(p.resolve())
        else:
            single_runs = True
            found.append(resolve_checkpoint(item))
            run = run_dir_of(found[-1])
            homes.add(run.parent.resolve() if (run.parent / MULTIRUN).is_file() else None)
    unique, seen = [], set()
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    home = homes.pop() if len(homes) == 1 else None
    if home and single_runs and seen != {c.resolve() for c in tested_checkpoints(home).values() if c}:
        home = None  # some of the folder's runs, or other checkpoints of them: not the folder's ensemble
    return Members(unique, home)


def load_models(value: Any, model: Mapping[str, Any] | None = None) -> LoadedModel | Ensemble:
    """The model ``ckpt=`` names: one checkpoint as ever (a LoadedModel), several as an Ensemble.

    ``model=NAME`` reads one checkpoint's weights as another architecture; with several
    checkpoints each is rebuilt from its own config, so it is refused rather than guessed at.
    Paths and ``model=`` are checked before torch loads, so those mistakes answer at once.
    """
    members = resolve_members(value)
    if len(members.checkpoints) > 1 and model:
        raise UserError(
            f"model= loads one checkpoint into another architecture, but ckpt= names "
            f"{len(members.checkpoints)} checkpoints, each rebuilt from its own config: leave model= out"
        )
    from mnist_lit.checkpoint import load_for_inference

    if len(members.checkpoints) == 1:
        return load_for_inference(members.checkpoints[0], model)
    return Ensemble([load_for_inference(c) for c in members.checkpoints], members.home)


def subset_groups(value: Any, size: int | list[int]) -> list[list[int]]:
    """Where the members of each smaller ensemble come from: for ``subsets.size=K`` one group, all
    the members; for a list ``[K_1, K_2, ...]`` one group per item of the ``ckpt=`` list (the
    members it names: an item may be a folder or a list of its own), K_i drawn from the i-th.
    Indices are into ``resolve_members(value)``'s checkpoints. Checked before torch loads, so a
    size that cannot be drawn answers at once."""
    members = [c.resolve() for c in resolve_members(value).checkpoints]
    if len(members) < 2:
        raise UserError(
            "subsets.size scores smaller ensembles of several checkpoints, but ckpt= names one: "
            "give a sweep folder or a list, or leave subsets.size out"
        )
    if isinstance(size, int):
        if not 1 <= size <= len(members):
            raise UserError(
                f"subsets.size={size}: ckpt= names {len(members)} checkpoint(s), so an ensemble of "
                f"1..{len(members)} of them can be drawn"
            )
        return [list(range(len(members)))]
    if not isinstance(value, list | tuple | ListConfig):
        raise UserError(
            f"subsets.size={list(size)} takes a count from each item of a list ckpt=[A,B,...], "
            "but ckpt= is one path: give one number, to draw from all its members"
        )
    listed = list(value)  # an item may be a folder or a list of its own: one group to draw from
    if len(listed) != len(size):
        raise UserError(
            f"subsets.size={list(size)} takes a count from each item of ckpt=[...], which has "
            f"{len(listed)} item(s): give as many counts, or one number to draw from all members"
        )
    groups: list[list[int]] = []
    seen: set[int] = set()
    for item, k in zip(listed, size, strict=True):
        group = [members.index(c.resolve()) for c in resolve_members(item).checkpoints]
        if seen & set(group):
            raise UserError(f"ckpt: {items(item)} names checkpoints that an earlier item names too: "
                            "subsets.size=[...] needs items with no member in common")  # fmt: skip
        seen |= set(group)
        if k > len(group):
            raise UserError(f"subsets.size={list(size)}: {items(item)} holds {len(group)} checkpoint(s), "
                            f"fewer than the {k} to draw from it")  # fmt: skip
        groups.append(group)
    if sum(size) < 1:
        raise UserError(f"subsets.size={list(size)} draws no member: at least one count must be >= 1")
    return groups


def draw_subsets(
    groups: list[list[int]], sizes: list[int], limit: int, seed: int = 0
) -> tuple[list[tuple[int, ...]], int]:
    """Every way to take ``sizes[i]`` members of ``groups[i]`` (all of them when there are at most
    ``limit``, else ``limit`` different ones drawn at random from ``seed``, the same each time), and
    how many ways there are."""
    total = math.prod(math.comb(len(g), k) for g, k in zip(groups, sizes, strict=True))
    if total <= limit:
        ways = itertools.product(*(itertools.combinations(g, k) for g, k in zip(groups, sizes, strict=True)))
        return [tuple(i for part in way for i in part) for way in ways], total
    rng = random.Random(seed)
    drawn: dict[tuple[int, ...], None] = {}  # insertion-ordered, so the draws come out the same
    while len(drawn) < limit:
        way = tuple(i for g, k in zip(groups, sizes, strict=True) for i in sorted(rng.sample(g, k)))
        drawn.setdefault(way)
    return list(drawn), total


class Ensemble:
    """Several loaded models answering as one: the mean of their softmax probabilities."""

    def __init__(self, members: list[LoadedModel], home: Path | None = None) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = members
        self.home = home

    @property
    def architecture(self) -> str:
        names = ", ".join(m.architecture.split(" (")[0] for m in self.members)
        return f"ensemble of {len(self.members)} ({names})"

    @property
    def config(self) -> dict[str, Any]:
        """The first member's run config: where the test set is read from and in what batches."""
        return self.members[0].config

    def to(self, device: torch.device) -> Ensemble:
        for m in self.members:
            m.to(device)
        return self

    def test_set(self, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.members[0].test_set(root)

    def member_logits(
        self, images: torch.Tensor, device: torch.device, batch_size: int
    ) -> list[torch.Tensor]:
        """Each member's own float32 logits [N, 10] (CPU), each from images it normalised itself."""
        return [m.logits(images, device, batch_size) for m in self.members]

    @staticmethod
    def combine(logits: list[torch.Tensor]) -> torch.Tensor:
        """log(mean of softmax(logits)), computed in log space so that no probability underflows."""
        import torch

        log_probs = torch.stack([z.log_softmax(dim=1) for z in logits])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))

    def logits(self, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
        """The ensemble's logits [N, 10]: the log of its mean probabilities, as LoadedModel.logits."""
        return self.combine(self.member_logits(images, device, batch_size))


def quote_ckpt_list(argv: list[str]) -> list[str]:
    """``ckpt=[a,b]`` with each path quoted for Hydra, whose list grammar refuses ``=`` and ``~``
    (``epoch=0-step=20.ckpt``, ``0_seed=1`` sweep jobs). A comma inside a path that exists
    (``0_optim.lr=0.01,seed=2``) keeps its pieces together, and a list inside the list
    (``ckpt=[[a,b],c]``, a group for ``subsets.size``) is quoted the same way; a list already
    quoted, or with unmatched brackets, is left to Hydra as typed."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "ckpt" and value[:1] + value[-1:] == "[]" and not set("'\"") & set(value):
            quoted = quote_items(value[1:-1])
            arg = arg if quoted is None else f"ckpt=[{quoted}]"
        out.append(arg)
    return out


def quote_items(inner: str) -> str | None:
    """The inside of a typed list with each path quoted and each inner list quoted the same way;
    None if its brackets do not match (Hydra then answers as for any malformed override)."""
    if not inner.strip():
        return ""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            return None
        if ch == "," and depth == 0:
            items.append(inner[start:i].strip())
            start = i + 1
    if depth:
        return None
    items.append(inner[start:].strip())
    out: list[str] = []
    plain: list[str] = []  # a run of paths between inner lists: commas in existing paths rejoined
    for item in [*items, None]:
        if item is not None and not (item.startswith("[") and item.endswith("]")):
            plain.append(item)
            continue
        out += [quote_always(p) for p in join_existing(plain)]
        plain = []
        if item is not None:
            quoted = quote_items(item[1:-1])
            if quoted is None:
                return None
            out.append(f"[{quoted}]")
    return ",".join(out)


def join_existing(pieces: list[str]) -> list[str]:
    """Comma-split pieces rejoined where the longer run of them names an existing path."""
    joined, i = [], 0
    while i < len(pieces):
        end = next(
            (j for j in range(len(pieces), i + 1, -1) if Path(",".join(pieces[i:j])).expanduser().exists()),
            i + 1,
        )
        joined.append(",".join(pieces[i:end]))
        i = end
    return joined


def quote_always(value: str) -> str:
    """A list item Hydra reads back as exactly this string."""
    quoted = quote(value)
    return quoted if quoted.startswith("'") else f"'{quoted}'"


def ckpt_value(x: Any) -> bool:
    """What ``ckpt=`` may be: a path, or a non-empty (possibly nested) list of paths."""
    if isinstance(x, list):
        return bool(x) and all(ckpt_value(v) for v in x)
    return isinstance(x, str) and x != ""
