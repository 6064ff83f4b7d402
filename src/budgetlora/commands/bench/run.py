"""The bench itself: rows carved once, the machine's peaks measured, both pipelines run one after
the other in their own processes (`--repeats N`: N pairs, the order alternating), the report
written to bench.json; and `bench_command`, what the CLI calls."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from budgetlora.commands.bench.flops import measure_peaks
from budgetlora.commands.bench.report import (
    PIPELINES, add_rates, combine_pairs, combine_time_to_accuracy, format_report, pair_ratios, pair_summaries, targets,
)
from budgetlora.commands.bench.rows import PathLike, carve_rows
from budgetlora.commands.bench.sweep import sweep_command
from budgetlora.commands.bench.tta import default_eval_every, run_defaults_command, time_to_accuracy
from budgetlora.commands.bench.worker import run_pipeline_in_subprocess
from budgetlora.config import DEFAULT_BUDGET
from budgetlora.core.files import atomic_write_text
from budgetlora.errors import UserError

Progress = Callable[[str], None]

FLOPS_FORMULA = ("training: per real token 4N + 2N_trainable + 12*L*H*t; inference: 2N + 4*L*H*t "
                 "(N non-embedding params incl. LoRA and head, t = real tokens of the row); parameters run on the "
                 "first token only (first_token_last_layer) count for one token per row")
TIMING = ("train: inside the training loop only (model load, tokenization, evaluation, saving excluded); "
          "reference eval: trainer.evaluate(); budgetlora eval: whole `budgetlora predict` command")


@dataclass
class BenchPlan:
    """What every pair runs on: the carved rows, the machine's peaks, where the outputs go."""

    model: str
    train_file: PathLike
    samples: int
    eval_rows: int
    seed: int
    out: Path
    train_csv: Path
    val_csv: Path
    rows_info: dict[str, Any]
    peaks: dict[str, Any]
    eval_every: int  # steps between the evaluations of the time-to-accuracy run

    def worker_spec(self, out_dir: Path) -> dict[str, Any]:
        return {"model": str(self.model), "train_file": str(self.train_csv), "eval_file": str(self.val_csv),
                "samples": self.samples, "eval_rows": self.eval_rows, "seed": self.seed, "out_dir": str(out_dir)}


def _plan(model: str, train_file: PathLike, samples: int, eval_rows: int, seed: int, out_dir: Optional[PathLike],
          matmul_n: int, say: Progress, eval_every: Optional[int] = None) -> BenchPlan:
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="budgetlora-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    if not Path(train_file).is_file():
        raise UserError(f"{train_file}: no such training file")
    say(f"carving {samples} training and {eval_rows} validation rows from {train_file}")
    train_csv, val_csv, rows_info = carve_rows(train_file, samples, eval_rows, seed, out)
    say(f"measuring the bf16 and fp32 matmul peaks (n={matmul_n})")
    peaks = measure_peaks(matmul_n)
    if eval_every is not None and eval_every < 1:
        raise UserError("bench: --eval-every must be >= 1")
    return BenchPlan(model, train_file, samples, eval_rows, seed, out, train_csv, val_csv, rows_info, peaks,
                     eval_every or default_eval_every(samples))


def _run_pair(plan: BenchPlan, k: int, repeats: int, say: Progress) -> dict[str, Any]:
    """Repeat k: both pipelines, reference first on even k, budgetlora first on odd k."""
    order = PIPELINES if k % 2 == 0 else PIPELINES[::-1]
    pair_dir = plan.out if repeats == 1 else plan.out / f"repeat-{k + 1}"
    pair_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name in order:
        say(f"{f'repeat {k + 1}/{repeats}: ' if repeats > 1 else ''}running the {name} pipeline "
            f"(log: {pair_dir / (name + '.log')})")
        results[name] = run_pipeline_in_subprocess(name, plan.worker_spec(pair_dir), pair_dir)
    for r in results.values():
        add_rates(r, plan.peaks)
    a, b = results["reference"], results["budgetlora"]
    say(f"{f'repeat {k + 1}/{repeats}: ' if repeats > 1 else ''}running `budgetlora train` with its defaults, "
        f"evaluating every {plan.eval_every} steps (log: {pair_dir / 'budgetlora-defaults.log'})")
    ours = run_defaults_command(plan.model, plan.train_csv, plan.val_csv, plan.seed, plan.eval_every, pair_dir)
    return {"order": list(order), "output_dir": str(pair_dir), "reference": a, "budgetlora": b,
            "ratios": pair_ratios(a, b), "defaults_command": ours, "time_to_accuracy": time_to_accuracy(a, ours)}


def _report(plan: BenchPlan, pairs: list[dict[str, Any]], command: Optional[str]) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    from budgetlora.core.device import machine_description

    a, b, ratios = combine_pairs(pairs)
    repeats = len(pairs)
    return {
        "command": command or (f"budgetlora bench --model {plan.model} --train-file {plan.train_file} "
                               f"--samples {plan.samples} --eval-rows {plan.eval_rows}"),
        "date": _dt.date.today().isoformat(),
        "machine": machine_description(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "python": platform.python_version()},
        "model": str(plan.model),
        "train_file": str(plan.train_file),
        "samples": plan.samples,
        "eval_rows": plan.eval_rows,
        "seed": plan.seed,
        "budget": DEFAULT_BUDGET,
        "rows": plan.rows_info,
        "peaks": plan.peaks,
        "flops_formula": FLOPS_FORMULA,
        "timing": TIMING,
        "reference": a,
        "budgetlora": b,
        "ratios": ratios,
        "time_to_accuracy": (tta := combine_time_to_accuracy(pairs)),
        "defaults_command": pairs[0]["defaults_command"],
        "targets": targets(a, b, ratios, tta),
        "repeats": repeats,
        "ratios_are": "the one pair's" if repeats == 1 else
                      f"medians of the {repeats} paired ratios; each pipeline's figures are medians over the repeats",
        "pairs": pair_summaries(pairs),
        "output_dir": str(plan.out),
    }


def run_bench(
    model: str,
    train_file: PathLike,
    *,
    samples: int = 1024,
    eval_rows: int = 7600,
    seed: int = 42,
    out_dir: Optional[PathLike] = None,
    matmul_n: int = 2048,
    repeats: int = 1,
    eval_every: Optional[int] = None,
    command: Optional[str] = None,
    progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """Both pipelines, one after the other in their own processes, and the ratios (b)/(a).

    With `repeats` > 1 the pair runs that many times, the order alternating (reference first, then
    budgetlora first, ...). Each repeat's ratios compare two runs next to each other in time; the
    reported ratios are the medians of those paired ratios, and each pipeline's figures the medians
    over the repeats. On a shared machine whose speed drifts between the minutes of one pipeline
    and the next, one pair can land on either side of a target by load alone; every repeat is kept
    in the report (`pairs`) and its full results in `repeat-K/` of the output folder.

    Each pair also runs the whole `budgetlora train` command with its defaults on the same files,
    evaluating every `eval_every` steps (default: about ten times in the epoch), for the time to
    the notebook's final accuracy (bench.tta).
    """
    if repeats < 1:
        raise UserError("bench: --repeats must be >= 1")
    say = progress or (lambda msg: None)
    plan = _plan(model, train_file, samples, eval_rows, seed, out_dir, matmul_n, say, eval_every)
    pairs = [_run_pair(plan, k, repeats, say) for k in range(repeats)]
    report = _report(plan, pairs, command)
    atomic_write_text(plan.out / "bench.json", json.dumps(report, indent=2))
    return report


def bench_command(
    model: str,
    train_file: Optional[str],
    *,
    samples: int = 1024,
    eval_rows: int = 7600,
    seed: int = 42,
    output_dir: Optional[str] = None,
    as_json: bool = False,
    sweep: bool = False,
    sweep_lengths: Sequence[int] = (32, 64, 128, 256),
    sweep_rows: Sequence[int] = (256, 512, 1024),
    matmul_n: int = 2048,
    repeats: int = 1,
    eval_every: Optional[int] = None,
    argv: Sequence[str] = (),
    progress: Optional[Progress] = None,
) -> str:
    """`budgetlora bench`: the side-by-side run (or `--sweep`); the text (or JSON) to show.
    `progress` gets a line at each step (the CLI prints them to stderr)."""
    say = progress or (lambda msg: None)
    command = "budgetlora " + shlex.join(list(argv)) if argv else None
    if sweep and repeats != 1:
        raise UserError("bench: --repeats is for the side-by-side run, not --sweep")
    if sweep:
        return sweep_command(model, sweep_lengths, sweep_rows, seed=seed, output_dir=output_dir, matmul_n=matmul_n,
                             command=command, as_json=as_json, say=say)
    if not train_file:
        raise UserError("bench: give --train-file FILE (or --sweep for the scaling sweep)")
    rep = run_bench(model, train_file, samples=samples, eval_rows=eval_rows, seed=seed, out_dir=output_dir,
                    matmul_n=matmul_n, repeats=repeats, eval_every=eval_every, command=command, progress=say)
    return json.dumps(rep, indent=2) if as_json else format_report(rep)
