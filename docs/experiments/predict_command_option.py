# The whole `budgetlora predict` command (`python -m budgetlora.cli predict`, as `budgetlora bench`
# times it), timed from outside, with one boolean model option of the run on and off (in copies of the
# run whose config.yaml differ in that option alone). Interleaved rounds; wall seconds and the command's
# own texts/s, medians; how many predicted labels differ between the two.
# Behind the "packed linear layers" row of docs/BENCHMARKS.md (2026-11-22):
#     python docs/experiments/predict_command_option.py RUN_DIR INPUT_CSV packed_cpu_linear [ROUNDS]
import csv
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

run_dir, input_csv, option = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
work = Path(tempfile.mkdtemp())
runs = {}
for on in (True, False):
    runs[on] = work / f"run-{option}-{on}"
    shutil.copytree(run_dir, runs[on])
    cfg = yaml.safe_load((runs[on] / "config.yaml").read_text())
    assert isinstance(cfg["model"].get(option, True), bool), f"model.{option} is not a boolean option"
    cfg["model"][option] = on
    (runs[on] / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
seconds, rates = {True: [], False: []}, {True: [], False: []}
for r in range(rounds):
    for on in (True, False):
        out = work / f"{on}.csv"
        cmd = [sys.executable, "-m", "budgetlora.cli", "predict", "--run", str(runs[on]), "--input", input_csv,
               "--output", str(out), "--overwrite"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        seconds[on].append(time.perf_counter() - start)
        rates[on].append(float(re.search(r"\(([0-9.]+) texts/s\)", done.stdout + done.stderr).group(1)))
        print(f"round {r + 1}: {option}={on!s:5s} {seconds[on][-1]:.2f} s, {rates[on][-1]:.1f} texts/s in the command", flush=True)
labels = {on: [row["Label"] for row in csv.DictReader(open(work / f"{on}.csv"))] for on in (True, False)}
differ = sum(a != b for a, b in zip(labels[True], labels[False]))
for on in (True, False):
    print(f"{option}={on!s:5s} median {statistics.median(seconds[on]):.2f} s  rounds {[round(s, 2) for s in seconds[on]]}; "
          f"in the command {statistics.median(rates[on]):.1f} texts/s")
print(f"{differ} of {len(labels[True])} predicted labels differ")
shutil.rmtree(work)
