"""`budgetlora bench`: the seed notebooks' pipeline and budgetlora's, side by side (issue #4).

Both pipelines see the same model, the same training rows, the same validation rows and a
trainable-parameter budget of the same class (< 1,000,000), on the same machine, one after the
other, each in its own Python process (so peak memory is per pipeline and no warm cache is shared).

- flops.py: useful FLOPs of a model's work, the machine's matmul peaks
- rows.py: the rows, carved once into files both pipelines read
- pipelines.py: (a) the notebooks' HF Trainer + PEFT, (b) budgetlora's defaults; what is timed
- processes.py: child processes, their peak memory and environment
- worker.py: one pipeline per process (`python -m budgetlora.commands.bench _worker SPEC.json`)
- report.py: paired ratios, medians over `--repeats`, targets, the table
- sweep.py: `--sweep`, the training loop's time against tokens per row
- tta.py: time to accuracy: the whole `budgetlora train` command with its budget-aware defaults
  against the notebook pipeline, from each command's start to the notebook's final accuracy
- run.py: `run_bench` and `bench_command`, which the CLI calls
"""

from budgetlora.commands.bench.flops import measure_matmul_peak, measure_peaks, model_flops, model_shape, shape_flops
from budgetlora.commands.bench.report import combine_pairs, format_report, pair_ratios
from budgetlora.commands.bench.run import bench_command, run_bench
from budgetlora.commands.bench.sweep import scaling_sweep

__all__ = [
    "bench_command", "combine_pairs", "format_report", "measure_matmul_peak", "measure_peaks", "model_flops",
    "model_shape", "pair_ratios", "run_bench", "scaling_sweep", "shape_flops",
]
