"""Child processes and their memory: a command run to its end while its peak RSS is polled, this
process's own peak RSS, the environment children get, and reading what their logs say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, Optional

# The environment this process started with: `budgetlora.training.trainer.train()` sets
# TOKENIZERS_PARALLELISM=false in the worker's own environment, which a user's shell does not have.
_START_ENV = dict(os.environ)


def child_env() -> dict[str, str]:
    """The user's environment as it was (TOKENIZERS_PARALLELISM included: the timed `budgetlora
    predict` must tokenize as it does for them), with unbuffered output for the logs."""
    env = dict(_START_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(cmd: list[str], log_f: IO[str], watch: Optional[Callable[[], None]] = None) -> tuple[int, Optional[float]]:
    """Run a command to its end; (exit code, its own peak RSS in MiB, None where unknown).
    `watch` is called at every poll while it runs, and once after it ends (bench.tta reads the
    run's log with it).

    The peak is the child's VmHWM, polled from /proc every 20 ms (monotonic, so the last read is
    the peak up to its final 20 ms). Not getrusage: on Linux a child's ru_maxrss starts from its
    parent's RSS at fork/exec time, which would charge the worker's memory to `budgetlora predict`.
    """
    import threading

    proc = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, env=child_env())
    status = Path(f"/proc/{proc.pid}/status")
    peak: list[Optional[float]] = [None]

    def poll() -> None:
        while proc.poll() is None:
            kb = _vm_hwm_kb(status)
            if kb is not None:
                peak[0] = kb / 1024
            if watch is not None:
                watch()
            time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    rc = proc.wait()
    watcher.join()
    if watch is not None:
        watch()
    return rc, peak[0]


def _vm_hwm_kb(status_path: Path) -> Optional[int]:
    try:
        for line in status_path.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM (since exec) where /proc has it."""
    kb = _vm_hwm_kb(Path("/proc/self/status"))
    if kb is not None:
        return kb / 1024
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, kB elsewhere


def parse_texts_per_s(log_path: Path) -> Optional[float]:
    """The in-process rate `budgetlora predict` logs ('(N texts/s)'), None when it logged none."""
    m = re.search(r"\(([0-9.]+) texts/s\)", log_path.read_text(encoding="utf-8", errors="replace"))
    return float(m.group(1)) if m else None


def log_tail(path: Path, n: int = 600) -> str:
    """The last `n` characters of a log on one line, for a one-line error."""
    text = path.read_text(encoding="utf-8", errors="replace").strip() if path.exists() else ""
    return " ".join(text[-n:].split()) or "(no output)"
