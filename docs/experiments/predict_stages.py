# Wall seconds of each stage of `budgetlora predict`, in the order the command runs them and with the
# console entry point's collector settings: imports, model build + adapter load + merge, reading the
# file, tokenization, the inference loop; then the interpreter's exit, printed by the shell around it.
# Behind "What limits prediction" in docs/BENCHMARKS.md (2026-11-22):
#     s=$(date +%s.%N); python docs/experiments/predict_stages.py RUN_DIR INPUT_CSV; echo "wall $(echo "$(date +%s.%N) - $s" | bc)"
import time

T0 = time.perf_counter()
import gc  # noqa: E402
import sys  # noqa: E402

gc.disable()  # as budgetlora.cli.entry does
import peft  # noqa: E402,F401
import transformers.modeling_utils  # noqa: E402,F401

gc.freeze()
gc.enable()
t_import = time.perf_counter()
from budgetlora.data import encode, load_file  # noqa: E402
from budgetlora.inference.runner import predict_logits  # noqa: E402
from budgetlora.inference.runner import LoadedRun

run = LoadedRun(sys.argv[1])
t_load = time.perf_counter()
rows = load_file(sys.argv[2], run.cfg.data, require_labels=False, label_names=run.label_names)
t_read = time.perf_counter()
enc = encode(rows.texts, run.tokenizer, run.max_length)
t_tok = time.perf_counter()
predict_logits(run.model, enc.input_ids, run.eval_batch_size, run.collate, run.device, run.precision)
t_loop = time.perf_counter()
print(f"imports {t_import - T0:.2f} s, model build + adapter load + merge {t_load - t_import:.2f} s, "
      f"read file {t_read - t_load:.2f} s, tokenize {t_tok - t_read:.2f} s, inference loop {t_loop - t_tok:.2f} s "
      f"({len(enc.input_ids) / (t_loop - t_tok):.0f} texts/s); in this process {t_loop - T0:.2f} s")
gc.freeze()
