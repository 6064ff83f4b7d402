# The whole `budgetlora predict` command, timed from outside, with each of the two start-up/shape levers
# on and off: the collector settings of the console entry point (`budgetlora.cli.entry` vs a bare
# `main()`) and `first_token_last_layer` (the run's config.yaml edited in a copy of the run).
# Interleaved rounds, wall seconds, medians; the four outputs are checked to be the same file.
# Behind the "garbage collector" and "first-token last layer" rows of docs/BENCHMARKS.md (2026-11-22):
#     python docs/experiments/predict_whole_command.py RUN_DIR VALIDATION_CSV [ROUNDS]
import filecmp
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

run_dir, input_csv = Path(sys.argv[1]), sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
work = Path(tempfile.mkdtemp())
runs = {}
for cut in (True, False):
    copy = work / f"run-cut-{cut}"
    shutil.copytree(run_dir, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["model"]["first_token_last_layer"] = cut
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    runs[cut] = copy
launchers = {
    "entry": [sys.executable, "-m", "budgetlora.cli"],
    "main": [sys.executable, "-c", "import sys; from budgetlora.cli import main; sys.exit(main())"],
}
variants = list(itertools.product(launchers, (True, False)))
seconds = {v: [] for v in variants}
for r in range(rounds):
    for launcher, cut in variants:
        out = work / f"{launcher}-{cut}.csv"
        cmd = launchers[launcher] + ["predict", "--run", str(runs[cut]), "--input", input_csv, "--output", str(out), "--overwrite"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds[(launcher, cut)].append(time.perf_counter() - start)
        print(f"round {r + 1}: {launcher:5s} first_token_last_layer={cut!s:5s} {seconds[(launcher, cut)][-1]:.2f} s", flush=True)
outputs = [work / f"{launcher}-{cut}.csv" for launcher, cut in variants]
same = all(filecmp.cmp(outputs[0], o, shallow=False) for o in outputs[1:])
print(f"all four prediction files identical: {same}")
for v, xs in seconds.items():
    print(f"{v[0]:5s} first_token_last_layer={v[1]!s:5s} median {statistics.median(xs):.2f} s  runs {[round(x, 2) for x in xs]}")
shutil.rmtree(work)
