#!/usr/bin/env bash
# Reproduces the table in docs/RESULTS.md: all-MiniLM-L6-v2, the same 8,000 training rows, 2 epochs,
# the same 2,000 validation rows (the seeded stratified split of ../shared/data/ag_news/train.csv),
# every recipe's own settings otherwise.  Usage: bash docs/results_minilm.sh   (about 40 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
M=$(bash ../shared/models/get_pretrained.sh minilm)
COMMON=(--model "$M" --train-file ../shared/data/ag_news/train.csv --max-train-samples 8000 --max-eval-samples 2000 --epochs 2 --seed 42)
run() { local name=$1; shift; [[ -f runs/exp/$name/metrics.json ]] || budgetlora train "$@" "${COMMON[@]}" --output-dir "runs/exp/$name"; }
run defaults
run defaults-encoder-dropout-0.1 --encoder-dropout none
run seed-r8-qv-lora-only --config recipes/seeds/r8-qv-lora-only.yaml
run seed-r6-qkv --config recipes/seeds/r6-qkv.yaml
run seed-r12-chosen-layers --config recipes/seeds/r12-chosen-layers.yaml
run ours-minilm-cpu --config recipes/agnews-minilm-cpu.yaml
run ours-minilm-cpu-encoder-dropout-0.1 --config recipes/agnews-minilm-cpu.yaml --encoder-dropout none
run ours-r24-all-linear --config recipes/agnews-minilm-cpu.yaml --r 24 --lora-alpha 48
run ours-r16-lr2e-3 --config recipes/agnews-minilm-cpu.yaml --lr 2e-3
run ours-distilled --config recipes/agnews-minilm-cpu.yaml --teacher runs/exp/ours-r24-all-linear,runs/exp/ours-r16-lr2e-3 --distill-alpha 0.5 --distill-temperature 2
budgetlora compare runs/exp/defaults* runs/exp/seed-* runs/exp/ours-* --output runs/exp/compare.png
# The same runs scored on 15,100 other AG News rows (train_text_only.csv): a figure less noisy than 2,000 rows.
for d in runs/exp/*/; do [[ -f $d/eval/train_text_only.json ]] || budgetlora evaluate --run "$d" --data ../shared/data/ag_news/train_text_only.csv; done
