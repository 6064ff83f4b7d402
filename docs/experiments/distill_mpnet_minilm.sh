#!/usr/bin/env bash
# Distillation from a bigger teacher (docs/METHODS.md, issue 19 item 5): all-mpnet-base-v2
# (110M, roberta-base's size class) fine-tuned with LoRA and no budget on the same 8,000 training
# rows as the equal-budget table, then distilled into the table's best 1M MiniLM configuration.
# The same student without a teacher is the table's own row (runs/table/lora-1000000).
#   Usage: bash docs/experiments/distill_mpnet_minilm.sh   (writes runs/table/teacher-mpnet, runs/table/student-mpnet)
set -euo pipefail
cd "$(dirname "$0")/../.."
BL=${BL:-budgetlora}
MPNET=$(bash ../shared/models/get_pretrained.sh mpnet)
MINILM=$(bash ../shared/models/get_pretrained.sh minilm)
COMMON=(--train-file ../shared/data/ag_news/train.csv --max-train-samples 8000 --max-eval-samples 2000
        --epochs 1 --seed 42 --head-lr 1e-3)
T=runs/table/teacher-mpnet S=runs/table/student-mpnet
[[ -f $T/metrics.json ]] || $BL train --model "$MPNET" --head linear --target-modules all-linear --r 16 --lora-alpha 32 \
  --lr 2e-3 --budget 100000000 "${COMMON[@]}" --output-dir $T --overwrite > /dev/null
[[ -f $S/metrics.json ]] || $BL train --model "$MINILM" --head linear --target-modules all-linear --r 24 --lora-alpha 48 \
  --lr 3e-3 --teacher $T "${COMMON[@]}" --output-dir $S --overwrite > /dev/null
$BL compare runs/table/lora-1000000 $T $S
