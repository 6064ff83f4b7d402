# The whole `budgetlora predict` command with and without the console entry point's allocator
# setting (`budgetlora.cli.keep_freed_memory`: glibc keeps freed activation buffers for reuse).
# Interleaved rounds: wall seconds, the child's system CPU seconds and minor page faults (from
# wait4), medians; the two outputs are checked to be the same file.
# Behind the "allocator" row of docs/BENCHMARKS.md (2026-11-22):
#     python docs/experiments/predict_allocator.py RUN_DIR VALIDATION_CSV [ROUNDS]
import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

run_dir, input_csv = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
work = Path(tempfile.mkdtemp())
launchers = {
    "kept": [sys.executable, "-m", "budgetlora.cli"],
    "returned": [sys.executable, "-c", "import sys; from budgetlora import cli; "
                 "cli.keep_freed_memory = lambda: False; sys.exit(cli.entry())"],
}
stats = {name: [] for name in launchers}
for r in range(rounds):
    for name, launcher in launchers.items():
        cmd = launcher + ["predict", "--run", run_dir, "--input", input_csv, "--output", str(work / f"{name}.csv"), "--overwrite"]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{name}: predict failed")
        stats[name].append((wall, usage.ru_stime, usage.ru_minflt))
        print(f"round {r + 1}: freed memory {name:8s} {wall:.2f} s, system {usage.ru_stime:.2f} s, "
              f"{usage.ru_minflt:,} minor faults", flush=True)
print(f"prediction files identical: {filecmp.cmp(work / 'kept.csv', work / 'returned.csv', shallow=False)}")
for name, xs in stats.items():
    wall, sys_s, faults = (statistics.median(x[i] for x in xs) for i in range(3))
    print(f"freed memory {name:8s} median {wall:.2f} s wall, {sys_s:.2f} s system, {faults:,.0f} minor faults; "
          f"walls {[round(x[0], 2) for x in xs]}")
shutil.rmtree(work)
