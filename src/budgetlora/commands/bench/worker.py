"""Each pipeline in a fresh Python process of its own, so peak memory is per pipeline and no warm
cache is shared: the parent writes a spec, `python -m budgetlora.commands.bench _worker SPEC.json`
runs the pipeline and writes its result beside it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from budgetlora.commands.bench.pipelines import budgetlora_pipeline, reference_pipeline
from budgetlora.commands.bench.processes import child_env, log_tail
from budgetlora.core.files import atomic_write_text
from budgetlora.errors import UserError

PIPELINE_FUNCTIONS = {"reference": reference_pipeline, "budgetlora": budgetlora_pipeline}


def run_pipeline_in_subprocess(name: str, spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Run one pipeline in a fresh `python -m budgetlora.commands.bench _worker` process; its JSON back."""
    spec_path = out_dir / f"{name}-spec.json"
    result_path = out_dir / f"{name}-result.json"
    log_path = out_dir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "pipeline": name, "result": str(result_path)}), encoding="utf-8")
    env = child_env()
    if Path(spec["model"]).expanduser().is_dir():
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no Hub look-ups
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log_f:
        rc = subprocess.run([sys.executable, "-m", "budgetlora.commands.bench", "_worker", str(spec_path)],
                            stdout=log_f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0 or not result_path.is_file():
        raise UserError(f"bench: the {name} pipeline failed (exit {rc}; log {log_path}): {log_tail(log_path)}")
    return {**json.loads(result_path.read_text(encoding="utf-8")), "process_started_wall_time": started}


def run_worker(spec_path: str) -> int:
    """The worker process's work: the pipeline its spec names, its result written where the spec says."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    fn = PIPELINE_FUNCTIONS[spec["pipeline"]]
    result = fn(spec["model"], spec["train_file"], spec["samples"], spec["eval_rows"], spec["seed"], spec["out_dir"],
                eval_file=spec["eval_file"])
    # whole or absent: the parent takes an existing result file as a finished pipeline
    atomic_write_text(spec["result"], json.dumps(result, indent=2))
    return 0
