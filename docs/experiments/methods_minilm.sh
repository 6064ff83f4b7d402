#!/usr/bin/env bash
# A first equal-budget comparison of the --method choices (docs/METHODS.md): all-MiniLM-L6-v2, the
# linear head, a budget of 150,000 trainable parameters, each method at the largest size that
# `budgetlora plan --budget 150000 --method M` puts first for the linear head (capped: VeRA r 1024,
# LoKr r 64, virtual tokens 64), the same 2,000 training rows, 1 epoch, the same 1,000 validation
# rows (the seeded stratified split of ../shared/data/ag_news/train.csv), the head at lr 1e-3 and
# the method's own tensors at two learning rates each.
#   Usage: bash docs/experiments/methods_minilm.sh   (BL="python3 -m budgetlora.cli" to run from src/)
set -euo pipefail
cd "$(dirname "$0")/../.."
BL=${BL:-budgetlora}
M=$(bash ../shared/models/get_pretrained.sh minilm)
OUT=${OUT:-runs/methods}
COMMON=(--model "$M" --head linear --train-file ../shared/data/ag_news/train.csv --max-train-samples 2000
        --max-eval-samples 1000 --epochs 1 --seed 42 --head-lr 1e-3 --budget 150000)
run() {  # run NAME LR FLAGS...
  local name=$1 lr=$2; shift 2
  [[ -f $OUT/$name-lr$lr/metrics.json ]] || $BL train "$@" --lr "$lr" "${COMMON[@]}" --output-dir "$OUT/$name-lr$lr" \
    --overwrite || echo "FAILED: $name-lr$lr" >&2
}
# every method at its first learning rate, then every method at its second
for i in 0 1; do
  lr=$([[ $i == 0 ]] && echo 1e-3 || echo 3e-3)  # LoRA-style ranks
  run lora $lr --target-modules query,key,value,attention.output.dense --r 8 --lora-alpha 16
  run dora $lr --method dora --target-modules all-linear --r 3 --lora-alpha 6
  run adalora $lr --method adalora --target-modules query,key,value,attention.output.dense --adalora-init-r 8 --adalora-target-r 5 --lora-alpha 16
  run loha $lr --method loha --target-modules query,key,value,attention.output.dense --r 4 --lora-alpha 8
  run lokr $lr --method lokr --target-modules all-linear --r 64 --lora-alpha 128
  lr=$([[ $i == 0 ]] && echo 3e-3 || echo 1e-2)  # scaling vectors, biases, norms
  run vera $lr --method vera --target-modules all-linear --vera-r 1024
  run ia3 $lr --method ia3 --target-modules all-linear --ia3-feedforward-modules output.dense
  run bias $lr --method bias
  run layernorm $lr --method layernorm
  run fourierft "$([[ $i == 0 ]] && echo 1e-2 || echo 5e-2)" --method fourierft --target-modules all-linear --fourierft-n-frequency 4096
  run prompt "$([[ $i == 0 ]] && echo 1e-2 || echo 3e-2)" --method prompt --num-virtual-tokens 64
done
$BL compare "$OUT"/*/ --output "$OUT/compare.png"
