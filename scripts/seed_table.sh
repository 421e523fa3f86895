#!/usr/bin/env bash
# Rerun every seed recipe preset and print the "reported in the seed vs measured here" table.
#
#   scripts/seed_table.sh [OUT_DIR]        CPU budget: the epochs and seeds listed below (about 1 hour on one core)
#   FULL=1 scripts/seed_table.sh [OUT_DIR] each preset's own epoch count (the seeds' full recipes),
#                                          into OUT_DIR/<preset>_full
#   SEEDS=1 ...                            only these seeds, for every preset
#   PRESETS="convnet sepconv" scripts/seed_table.sh [OUT_DIR]   only these presets (the table covers all in OUT_DIR)
#
# Runs one preset after another, each as a Hydra multirun over its seeds with one torch thread, so it
# can run beside other work. Extra arguments for every run go in $ARGS (for example ARGS="accelerator=gpu").
set -u
OUT=$(realpath -m "${1:-outputs/seed_table}")
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

# preset          epochs  seeds
RECIPES="
tutorialnet        3      1,2
oneconv            15     1,2
twoconv_relu       10     1,2
twoconv_leakyrelu  10     1,2
convnet            20     1
sepconv            3      1,2
examplesnet        2      1
resnet             2      1
bnconvnet          1      1
"

failed=0
while read -r preset epochs seeds; do
    [ -z "$preset" ] && continue
    case " ${PRESETS:-$preset} " in *" $preset "*) ;; *) continue ;; esac
    epoch_arg="trainer.max_epochs=$epochs"
    dir="$OUT/$preset"
    if [ "${FULL:-0}" = 1 ]; then epoch_arg=""; dir="$OUT/${preset}_full"; fi
    seeds=${SEEDS:-$seeds}
    echo "== $(date +%T) $preset epochs=${epoch_arg#trainer.max_epochs=} seeds=$seeds"
    # shellcheck disable=SC2086
    "$PYTHON" -m mnist_lit -m "experiment=$preset" "seed=$seeds" $epoch_arg threads=1 \
        trainer.enable_progress_bar=false "hydra.sweep.dir=$dir" ${ARGS:-} || failed=1
done <<< "$RECIPES"

"$PYTHON" -m mnist_lit.report --seed-table "$OUT"
exit $failed
