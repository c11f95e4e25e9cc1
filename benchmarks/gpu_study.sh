#!/usr/bin/env bash
# The Imagenette evidence on one lent GPU, in one call that ends inside 10 minutes (the device machine: one H200,
# 16 CPU cores). Everything runs at once and writes as it goes; what finished is packed into $OUT/results.tgz
# (the device tool returns at most 8 files):
#   1. speed: benchmarks/train_speed.py, the whole pipeline vs the model alone (bf16, channels_last), linglo_t 128 px;
#   2. the leaderboard rows: linglo_t and linglo_s, Imagenette 128 px, 20 and 80 epochs (`linglo train --config
#      imagenette`); the linglo_t 20-epoch run goes first, alone, timed from the command to its last eval, data
#      preparation included; the other three run beside
#   3. the study grid: benchmarks/study.py all --budget gpu (mixer, peers, window, layout, macro, macro_xs;
#      3 seeds, 20 epochs), GRID_JOBS runs at a time, no run started after GRID_DEADLINE_S.
# Data: DATA must hold imagenette/ (../shared/data does not travel to the device machine: see
# benchmarks/device_data.sh, which packs it into two carries under the 64 MiB limit).
# Usage (device machine, repository root):  DATA=/tmp/data OUT=$OUT benchmarks/gpu_study.sh
# Toy check on CPU (the tests):  BUDGET=toy DEVICE=cpu AMP=none STUDIES=layout LEADER_EPOCHS="1 2" LEADER_MODELS=test_convnext \
#   LEADER_ARGS="--img-size 32 --batch-size 8" SPEED_ARGS="--steps 1 --rounds 1" DATA=../shared/data OUT=/tmp/x benchmarks/gpu_study.sh
set -uo pipefail
BUDGET=${BUDGET:-gpu}
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-bf16}
STUDIES=${STUDIES:-all}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/gpu-study/out}
RUNS=${RUNS:-runs/gpu-study}
GRID_JOBS=${GRID_JOBS:-8}
GRID_DEADLINE_S=${GRID_DEADLINE_S:-360}
LEADER_MODELS=${LEADER_MODELS:-linglo_t linglo_s}
LEADER_EPOCHS=${LEADER_EPOCHS:-20 80}
LEADER_ARGS=${LEADER_ARGS:---batch-size 256 --lr 4e-3}
SPEED_ARGS=${SPEED_ARGS:---steps 20 --rounds 5 --set batch_size=256}
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  nproc
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

python3 benchmarks/train_speed.py --data "$DATA/imagenette" --config imagenette --device "$DEVICE" --amp "$AMP" \
  $SPEED_ARGS --output "$OUT/train_speed.json" > "$OUT/train_speed.txt" 2>&1

leader() {   # model epochs: one `linglo train --config imagenette` run, its wall time from the command to the end
  local run="$RUNS/leader-$1-e$2" start
  start=$(date +%s%N)
  python3 -m linglo.cli train --config imagenette --data "$DATA/imagenette" --model "$1" --epochs "$2" \
    --device "$DEVICE" --amp "$AMP" --workers 4 $LEADER_ARGS --output "$run" --overwrite > "$run.log" 2>&1
  echo "$1 $2 epochs: exit $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> "$OUT/leaders.txt"
}
set -- $LEADER_MODELS
first_model=$1
set -- $LEADER_EPOCHS
first_epochs=$1
leader "$first_model" "$first_epochs"   # alone on the GPU: the timed run
leaders=()
for model in $LEADER_MODELS; do
  for epochs in $LEADER_EPOCHS; do
    [ "$model $epochs" = "$first_model $first_epochs" ] || { leader "$model" "$epochs" & leaders+=($!); }
  done
done

python3 benchmarks/study.py $STUDIES --budget "$BUDGET" --device "$DEVICE" --data "$DATA" --runs "$RUNS/grid" \
  --results "$OUT/study" --jobs "$GRID_JOBS" --deadline-s "$GRID_DEADLINE_S" 2>&1 | grep -v USDT | tail -60 \
  > "$OUT/grid.txt"
[ ${#leaders[@]} -eq 0 ] || wait "${leaders[@]}"
for run in "$RUNS"/leader-*/; do
  mkdir -p "$OUT/leaders/$(basename "$run")"
  cp "$run"/summary.json "$run"/metrics.csv "$OUT/leaders/$(basename "$run")/" 2>/dev/null
done
tar -czf "$OUT/results.tgz" -C "$OUT" study leaders machine.txt train_speed.txt train_speed.json leaders.txt grid.txt \
  2>/dev/null
cat "$OUT/machine.txt" "$OUT/train_speed.txt" "$OUT/leaders.txt" "$OUT/grid.txt"
