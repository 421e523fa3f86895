#!/usr/bin/env bash
# experiment=best over seeds, each a whole process timed from the shell, then their ensemble.
#
#   scripts/best.sh [OUT_DIR]                      seeds 1..5 into OUT_DIR (default outputs/best)
#   SEEDS="1 2 3" scripts/best.sh                  only these seeds
#   ARGS="trainer.max_epochs=30" scripts/best.sh outputs/best_30     the longer schedule
#   EVAL_ARGS="robustness.enabled=false" scripts/best.sh               the ensemble without its robustness table
#
# Prints each seed's test accuracy and wall time, their mean and standard deviation, then
# `python -m mnist_lit.evaluate` on the folder: every seed's tested checkpoint (experiment=best
# tests its last.ckpt) and the ensemble of all of them (mean of their softmax probabilities), with
# its robustness table. A seed already
# in OUT_DIR (its metrics.json completed) is not trained again, so an interrupted run goes on.
set -u
OUT=$(realpath -m "${1:-outputs/best}")
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-1 2 3 4 5}
mkdir -p "$OUT"
failed=0
for seed in $SEEDS; do
    run="$OUT/seed_$seed"
    if grep -qs '"status": "completed"' "$run/metrics.json"; then
        echo "== seed $seed: done before, in $run"
        continue
    fi
    echo "== $(date +%T) seed $seed"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$PYTHON" -m mnist_lit experiment=best "seed=$seed" trainer.enable_progress_bar=false \
        "hydra.run.dir=$run" ${ARGS:-} || failed=1
    end=$(date +%s.%N)
    echo "$seed $start $end" >> "$OUT/wall_seconds.txt"
done

"$PYTHON" - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
walls = out / "wall_seconds.txt"
wall = {}
for line in walls.read_text().splitlines() if walls.exists() else []:
    seed, start, end = line.split()
    wall[seed] = float(end) - float(start)  # the latest run of a seed counts
accs = []
print("\n seed  test/acc  val/acc_best  epochs  wall (shell)")
for run in sorted(out.glob("seed_*"), key=lambda p: int(p.name.split("_")[1])):
    m = json.loads((run / "metrics.json").read_text())
    seed = run.name.split("_")[1]
    accs.append(100 * m["test/acc"])
    w = f"{wall[seed]:.0f} s" if seed in wall else "?"
    print(f" {seed:>4}  {100 * m['test/acc']:.2f}%    {100 * m['val/acc_best']:.2f}%       {m['epochs']:>3}  {w}")
if accs:
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"\n mean {statistics.mean(accs):.3f}% +- {std:.3f} (std over {len(accs)} seeds)")
PY

# shellcheck disable=SC2086
"$PYTHON" -m mnist_lit.evaluate "ckpt=$OUT" ${EVAL_ARGS:-} || failed=1
exit $failed
