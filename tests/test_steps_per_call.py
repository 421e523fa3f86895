"""Several optimizer steps per Lightning training step make exactly the run that one step per call makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, last_checkpoint, read_metrics, run_cli, run_dirs
from omegaconf import OmegaConf

from mnist_lit.config import AUTO_STEPS_PER_CALL, resolve_steps_per_call
from mnist_lit.sampling import EpochBatchSampler
from mnist_lit.steps_per_call import GroupedBatches


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of the run, by TensorBoard tag (``train/lr``, ``loss/val``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# a per-step schedule with gradient clipping and an epoch whose batch count steps_per_call does not
# divide; an epoch schedule with a fractional batch limit and the last partial batch dropped
CASES = {
    "warmup_clip": ["sched=warmup", "trainer.gradient_clip_val=0.5", "trainer.limit_train_batches=11"],
    "steplr_fraction": [
        "optim=sgd",
        "sched=steplr",
        "sched.scheduler.step_size=1",
        "trainer.limit_train_batches=0.012",
        "data.drop_last=true",
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_four_steps_per_call_equal_one(case: str, tmp_path: Path, mnist_root: Path) -> None:
    common = [o for o in TINY if not o.startswith("trainer.limit_train_batches")]
    common += ["trainer.max_epochs=2", "trainer.log_every_n_steps=4", "inspect.enabled=false", *CASES[case]]
    common += ["threads=1", "trainer.deterministic=true"]  # bitwise comparisons: one fixed kernel path
    runs = {}
    for per_call in (1, 4):
        cwd = tmp_path / str(per_call)
        cwd.mkdir()
        result = run_cli(*common, f"steps_per_call={per_call}", cwd=cwd, mnist_root=mnist_root)
        assert result.returncode == 0, result.stderr[-3000:]
        (runs[per_call],) = run_dirs(cwd)
    one, four = (last_checkpoint(runs[k]) for k in (1, 4))
    assert read_metrics(runs[4])["steps_per_call"] == 4
    assert one["global_step"] == four["global_step"] == read_metrics(runs[1])["global_steps"] > 8
    assert one["state_dict"].keys() == four["state_dict"].keys()
    assert all(torch.equal(one["state_dict"][k], four["state_dict"][k]) for k in one["state_dict"])
    assert one["lr_schedulers"][0]["last_epoch"] == four["lr_schedulers"][0]["last_epoch"]
    # the same TensorBoard scalars at the same steps: step-level loss and learning rate included
    logged_one, logged_four = scalars(runs[1]), scalars(runs[4])
    assert {"train/loss_step", "train/lr"} <= logged_one.keys()
    assert logged_one.keys() == logged_four.keys()
    for tag, points in logged_one.items():
        assert [s for s, _ in points] == [s for s, _ in logged_four[tag]], tag
        assert [v for _, v in points] == pytest.approx([v for _, v in logged_four[tag]], rel=1e-6), tag


def test_grouped_batches_are_the_same_batches_in_the_same_order() -> None:
    def items(group: int, done: int = 0, max_batches: int | float | None = None) -> list[list[int]]:
        sampler = EpochBatchSampler(100, 8, False, 5, done=lambda: done)
        grouped = GroupedBatches(sampler, group, max_batches) if group > 1 or max_batches else sampler
        grouped.set_epoch(1)
        return [[int(i) for i in item] for item in grouped]

    batches = items(1)
    assert len(batches) == 13 and len(batches[-1]) == 4  # 12 full batches and the last 4 images
    grouped = items(3)
    assert len(grouped) == 5 and [len(item) for item in grouped] == [24, 24, 24, 24, 4]
    assert sum(grouped, []) == sum(batches, [])
    assert items(3, done=2) == grouped[2:]  # a resume counts whole items
    assert sum(items(3, max_batches=7), []) == sum(batches[:7], [])
    assert sum(items(3, max_batches=0.5), []) == sum(batches[:6], [])  # int(13 * 0.5) batches


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, AUTO_STEPS_PER_CALL),
        ({"precision": "bf16-mixed"}, AUTO_STEPS_PER_CALL),
        ({"devices": 2, "strategy": "ddp"}, 1),
        ({"precision": "16-mixed"}, 1),
        ({"accumulate_grad_batches": 2}, 1),
    ],
)
def test_auto_takes_several_steps_only_where_they_are_allowed(settings: dict, expected: int) -> None:
    trainer = {"devices": 1, "precision": "32", "accumulate_grad_batches": 1, **settings}
    cfg = OmegaConf.create({"steps_per_call": "auto", "trainer": trainer})
    assert resolve_steps_per_call(cfg) == expected
    assert resolve_steps_per_call(OmegaConf.create({"steps_per_call": 3, "trainer": {}})) == 3


def test_lightning_loop_state_of_another_layout_fails_loudly() -> None:
    """The one module that touches Lightning's private loop state names the version it needs."""
    from types import SimpleNamespace

    import lightning

    from mnist_lit import loopstate

    trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace()))
    for use in (loopstate.batches_done, loopstate.batch_index, loopstate.optimizer_step_counter):
        with pytest.raises(loopstate.LoopStateChanged, match=rf"lightning {lightning.__version__} .* 2\.6"):
            use(trainer)
    with pytest.raises(loopstate.LoopStateChanged, match="_batches_that_stepped"):
        loopstate.add_logger_steps(trainer, 3)
    with pytest.raises(loopstate.LoopStateChanged, match="loops.fit_loop"):
        loopstate.carry_over({"loops": {"fit_loop": {"epoch_loop.batch_progress": {}}}}, saved=4, now=1)


PROBE = '''
import json
from lightning.pytorch.callbacks import Callback


class Probe(Callback):
    """What a per-batch callback sees: each batch, its index, the step, the learning rate."""

    def __init__(self, path):
        self.path, self.rows = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows.append(["start", trainer.current_epoch, batch_idx, trainer.global_step, y.tolist(), lr])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = float(outputs["loss"])
        self.rows.append(["end", trainer.current_epoch, batch_idx, trainer.global_step, loss])

    def on_train_end(self, trainer, pl_module):
        with open(self.path, "w") as f:
            json.dump(self.rows, f)
'''


def test_per_batch_callbacks_see_the_same_batches_whatever_steps_per_call(
    tmp_path: Path, mnist_root: Path
) -> None:
    """Each batch, its index and the step reach every per-batch callback (a probe, Lightning's weight
    averaging, the learning-rate log, the epoch timer, the training-batch view) as with one per call."""
    common = [o for o in TINY if not o.startswith("trainer.limit_train_batches")]
    common += ["trainer.max_epochs=2", "trainer.limit_train_batches=10", "trainer.log_every_n_steps=3"]
    common += ["sched=warmup", "threads=1", "trainer.deterministic=true"]
    common += ["+callbacks.probe._target_=probe.Probe", "+callbacks.probe.path=seen.json"]
    common += [
        "+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging",
        "+callbacks.ema.decay=0.5",
    ]
    seen, runs = {}, {}
    for per_call in (1, 4):
        cwd = tmp_path / str(per_call)
        cwd.mkdir()
        (cwd / "probe.py").write_text(PROBE)
        result = run_cli(*common, f"steps_per_call={per_call}", cwd=cwd, mnist_root=mnist_root)
        assert result.returncode == 0, result.stderr[-3000:]
        (runs[per_call],) = run_dirs(cwd)
        seen[per_call] = json.loads((cwd / "seen.json").read_text())
    assert len(seen[1]) == 2 * 2 * 10  # a start and an end per batch, 10 batches, 2 epochs
    assert seen[4] == seen[1]
    one, four = (last_checkpoint(runs[k]) for k in (1, 4))
    assert one["global_step"] == four["global_step"] == 20
    # the averaged weights (validated, checkpointed and tested) are the same average of the same steps
    assert all(torch.equal(one["state_dict"][k], four["state_dict"][k]) for k in one["state_dict"])
    current = one["current_model_state"]  # the trained weights, which the average differs from
    assert not all(torch.equal(current[k], one["state_dict"][k]) for k in current)
    assert all(torch.equal(current[k], four["current_model_state"][k]) for k in current)
    lr_one, lr_four = scalars(runs[1])["train/lr"], scalars(runs[4])["train/lr"]
    assert [s for s, _ in lr_one] == [2, 5, 8, 11, 14, 17] and lr_four == lr_one
    timing_one, timing_four = (read_metrics(runs[k])["timing"]["train_epochs"] for k in (1, 4))
    assert [e["images"] for e in timing_four] == [e["images"] for e in timing_one]
