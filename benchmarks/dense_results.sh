#!/usr/bin/env bash
# LinGlo vs a timm peer on the small real sets of ../shared/data, same command and budget for both:
#   detection:    Mask R-CNN on coco128 (128 images; no val split, so scored on its train json —
#                 a pipeline/fitting check, not a benchmark)
#   segmentation: Semantic FPN on coco128_semseg (100 train / 100 val images with masks, 133 classes)
# Both backbones start from random weights (nothing is downloaded). The heads are narrowed (FPN 64 /
# Semantic FPN 128 instead of 256) so that the backbones, not the heads, take most of the compute.
#
#   benchmarks/dense_results.sh TASK MODEL [extra linglo flags]     TASK = detect | segment
# Environment: DATA (default ../shared/data), OUT (default runs/dense), LINGLO (default "linglo"),
#              DET_EPOCHS (default 12), SEG_EPOCHS (default 20). The budget fits a 2-core CPU
#              (about 1 h per task with LinGlo and the peer run side by side, OMP_NUM_THREADS=1 each).
set -euo pipefail
task=$1 model=$2
shift 2
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/dense}
LINGLO=${LINGLO:-linglo}
common=(--model "$model" --lr 1e-3 --warmup-epochs 2 --clip-grad 1.0 --drop-path 0.1 --workers 1
        --output "$OUT/$task-$model" --overwrite)
case $task in
  detect)
    $LINGLO train detect --arch maskrcnn --data "$DATA/coco128" \
      --val-images "$DATA/coco128/train2017" --val-ann "$DATA/coco128/annotations/instances_train2017.json" \
      --img-size 256 --max-size 427 --fpn-channels 64 --epochs "${DET_EPOCHS:-12}" --batch-size 8 "${common[@]}" "$@" ;;
  segment)
    $LINGLO train segment --head fpn --data "$DATA/coco128_semseg" \
      --img-size 256 --head-channels 128 --epochs "${SEG_EPOCHS:-20}" --batch-size 8 "${common[@]}" "$@" ;;
  *) echo "usage: $0 detect|segment MODEL [flags]" >&2; exit 2 ;;
esac
