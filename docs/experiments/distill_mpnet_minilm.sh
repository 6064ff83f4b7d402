#!/usr/bin/env bash
# Distillation from a bigger teacher (docs/METHODS.md, issue 19 item 5): all-mpnet-base-v2
# (110M, roberta-base's size class) fine-tuned with LoRA and no budget on the same 8,000 training
# rows as the equal-budget table, then distilled into MiniLM students that are rows of that table
# plus --teacher, so each student's gain is the teacher's alone (students train 1 epoch, as the
# table's rows do; the teacher is not held to that):
#   lora24:    LoRA r=24 on every linear layer, 996,868 trainable (without teacher: runs/table/lora-1000000)
#   lora8:     LoRA r=8 on the attention, 148,996 trainable (without teacher: runs/table/lora-150000)
#   loha:      LoHa r=12 on every linear layer, 996,868 trainable (without teacher: runs/table/loha-1000000)
#   lora8-ens: lora8 taught by an ensemble, the mpnet teacher with the table's full fine-tuning of MiniLM
#              (runs/table/full-lr1e-4) and its LoHa 1M run (their probabilities averaged); needs those runs
#   lora8-t2:  lora8 taught by the same mpnet configuration trained for 2 epochs (runs/table/teacher-mpnet-2ep)
#   Usage: [STUDENTS="lora24 lora8 loha lora8-ens lora8-t2"] bash docs/experiments/distill_mpnet_minilm.sh
#   (writes runs/table/teacher-mpnet[-2ep] and runs/table/student-<name>-mpnet)
set -euo pipefail
cd "$(dirname "$0")/../.."
BL=${BL:-budgetlora}
MPNET=$(bash ../shared/models/get_pretrained.sh mpnet)
MINILM=$(bash ../shared/models/get_pretrained.sh minilm)
COMMON=(--train-file ../shared/data/ag_news/train.csv --max-train-samples 8000 --max-eval-samples 2000
        --seed 42 --head-lr 1e-3)
T=runs/table/teacher-mpnet T2=runs/table/teacher-mpnet-2ep
teacher() {  # teacher DIR EPOCHS
  [[ -f $1/metrics.json ]] || $BL train --model "$MPNET" --head linear --target-modules all-linear --r 16 \
    --lora-alpha 32 --lr 2e-3 --budget 100000000 "${COMMON[@]}" --epochs "$2" --output-dir "$1" --overwrite > /dev/null
}
declare -A ARGS=(
  [lora24]="--target-modules all-linear --r 24 --lora-alpha 48 --lr 3e-3"
  [lora8]="--target-modules query,key,value,attention.output.dense --r 8 --lora-alpha 16 --lr 3e-3 --budget 150000"
  [loha]="--method loha --target-modules all-linear --r 12 --lora-alpha 24 --lr 1e-2"
)
ARGS[lora8-ens]=${ARGS[lora8]} ARGS[lora8-t2]=${ARGS[lora8]}
declare -A BASE=([lora24]=runs/table/lora-1000000 [lora8]=runs/table/lora-150000 [loha]=runs/table/loha-1000000
                 [lora8-ens]=runs/table/lora-150000 [lora8-t2]=runs/table/lora-150000)
declare -A TEACHER=([lora8-ens]=$T,runs/table/full-lr1e-4,runs/table/loha-1000000 [lora8-t2]=$T2)
for s in ${STUDENTS:-lora24 lora8 loha lora8-ens lora8-t2}; do
  S=runs/table/student-$s-mpnet
  if [[ $s == *-t2 ]]; then teacher $T2 2; else teacher $T 1; fi
  # shellcheck disable=SC2086  # ARGS holds several flags
  [[ -f $S/metrics.json ]] || $BL train --model "$MINILM" --head linear ${ARGS[$s]} --teacher "${TEACHER[$s]:-$T}" \
    "${COMMON[@]}" --epochs 1 --output-dir "$S" --overwrite > /dev/null
  teachers=${TEACHER[$s]:-$T}
  $BL compare "${BASE[$s]}" ${teachers//,/ } "$S" --output "$S/compare.png"  # each member of an ensemble on its own
done
