#!/usr/bin/env bash
# The export figures in docs/EXPORT.md, on the MiniLM native-head run of docs/export_heads_minilm.sh:
# 1. export it three ways (hf, onnx fp32, onnx int8), each verified by the command itself;
# 2. speed: the whole `budgetlora predict` command on 7,600 texts (the first 7,600 rows of
#    train_text_only.csv, the size of the AG News test split) for the run folder (budgetlora's CPU
#    path) and each export, two rounds in alternating order, wall time and accuracy;
# 3. agreement: on all 15,100 rows of train_text_only.csv, the exports scored as a user without
#    budgetlora would (transformers fp32, ONNX Runtime) against `budgetlora predict` on the run.
# Usage: bash docs/export_measure_minilm.sh   (writes runs/export/)
set -euo pipefail
cd "$(dirname "$0")/.."
R=runs/heads/minilm-native X=runs/export D=../shared/data/ag_news/train_text_only.csv
mkdir -p $X
for f in hf onnx int8; do
  args=(); [[ $f == onnx ]] && args=(--format onnx); [[ $f == int8 ]] && args=(--format onnx --quantize int8)
  [[ -f $X/$f/budgetlora_export.json ]] || /usr/bin/time -f "export $f: %e s wall" budgetlora export --run $R --output $X/$f "${args[@]}"
done
head -7600 $D > $X/texts7600.csv
acc() { python3 -c "import csv,sys; g=[int(r[0])-1 for r in csv.reader(open('$X/texts7600.csv'))]; p=[int(r['Label']) for r in csv.DictReader(open(sys.argv[1]))]; print(f'accuracy {sum(a==b for a,b in zip(g,p))/len(g):.4f}')" "$1"; }
for round in 1 2; do
  order=(run onnx int8 hf); [[ $round == 2 ]] && order=(hf int8 onnx run)
  for f in "${order[@]}"; do
    src=$X/$f; [[ $f == run ]] && src=$R
    /usr/bin/time -f "predict 7600 $f round $round: %e s wall" budgetlora predict --run $src --input $X/texts7600.csv --output $X/p7600-$f.csv --overwrite
    acc $X/p7600-$f.csv
  done
done
[[ -f $X/p15100-run.csv ]] || budgetlora predict --run $R --input $D --output $X/p15100-run.csv
[[ -s $X/agreement.json ]] || python3 docs/experiments/export_agreement.py $D $X/p15100-run.csv $X/hf $X/onnx $X/int8 > $X/agreement.json
