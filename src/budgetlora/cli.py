"""The `budgetlora` command: a thin layer that parses flags and calls one typed function per command.

All logic lives in the modules (train, evaluate, predict, budget, ...), callable from Python too.
A `UserError` becomes one line on stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import typing
from typing import Any, Callable, Optional, Sequence

from budgetlora.errors import UserError, closest_match
from budgetlora.flags import add_config_flags, add_train_arguments, config_overrides


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage mistake (unknown flag, missing value) is one line on stderr
    and exit code 2, like every other user error, with the closest known flag suggested."""

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments:"):
            known = {o for p in _all_parsers(self) for o in p._option_string_actions}
            typos = [a.split("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("--")]
            close = [m for m in (closest_match(a, known) for a in typos) if m]
            if close:
                message += f" (did you mean {', '.join(close)}?)"
        self.exit(2, f"budgetlora: error: {message}; see `{self.prog} --help`\n")


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_all_parsers(sub))
    return found


# ---------------------------------------------------------------------------------------------
# Commands. Each is a function of a parsed namespace; the real work is imported lazily so that
# `budgetlora --help` and error paths start fast.
# ---------------------------------------------------------------------------------------------


def cmd_train(ns: argparse.Namespace) -> int:
    from budgetlora.budget.defaults import unset_settings
    from budgetlora.training.trainer import config_for_train, train

    setup_logging()
    overrides = config_overrides(ns)
    cfg = config_for_train(ns.config, overrides, ns.resume)
    # No recipe and no adapter flag: train spends the budget as `plan` advises (budget.defaults).
    unset = unset_settings(overrides, recipe=bool(ns.config or ns.resume))
    m = train(cfg, command="budgetlora " + shlex.join(["train", *ns._argv]), resume=bool(ns.resume), unset=unset)
    print(f"best validation accuracy {m.best_eval_accuracy:.4f} (step {m.best_step}), "
          f"{m.trainable_params:,} trainable params < budget {m.budget:,}, "
          f"{m.train_samples_per_second:.1f} samples/s")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from budgetlora.inference.evaluate import evaluate_run

    report = evaluate_run(ns.run, ns.data, model=ns.model, batch_size=ns.batch_size, max_samples=ns.max_samples,
                          quantize=ns.quantize)
    print(f"accuracy {report['accuracy']:.4f}  macro_f1 {report['macro_f1']:.4f}  ({report['n']} rows)")
    print(f"report: {report['path']}")
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    from budgetlora.inference.predict import predict_file, predict_text

    if ns.text is not None:
        label, prob = predict_text(ns.run, ns.text, model=ns.model)
        print(f"{label}\t{prob:.4f}")
        return 0
    if not ns.input or not ns.output:
        raise UserError("predict: give --input FILE and --output OUT.csv, or --text \"...\"")
    summary = predict_file(
        ns.run, ns.input, ns.output, probabilities=ns.probabilities, model=ns.model,
        batch_size=ns.batch_size, quantize=ns.quantize, overwrite=ns.overwrite,
    )
    print(f"wrote {summary['rows']} predictions to {summary['output']} ({summary['samples_per_second']:.1f} texts/s)")
    return 0


def cmd_plan(ns: argparse.Namespace) -> int:
    from budgetlora.commands.plan import plan_command

    if ns.measure:
        setup_logging()
    print(plan_command(ns.model, budget=ns.budget, labels=ns.labels, top=ns.top, as_json=ns.json, explain=ns.explain,
                       measure=ns.measure, train_file=ns.train_file, measure_rows=ns.measure_rows,
                       measure_eval_rows=ns.measure_eval_rows, seed=ns.seed,
                       progress=lambda msg: print(f"plan --measure: {msg}", file=sys.stderr, flush=True)))
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from budgetlora.commands.bench import bench_command

    print(bench_command(
        ns.model, ns.train_file, samples=ns.samples, eval_rows=ns.eval_rows, seed=ns.seed,
        output_dir=ns.output_dir, as_json=ns.json, sweep=ns.sweep, sweep_lengths=ns.sweep_lengths,
        sweep_rows=ns.sweep_rows, matmul_n=ns.matmul_size, repeats=ns.repeats, eval_every=ns.eval_every, argv=ns._argv,
        progress=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True),
    ))
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def cmd_search(ns: argparse.Namespace) -> int:
    from budgetlora.commands.search import search_from_cli

    setup_logging()
    search_from_cli(ns.space, ns.study_dir, ns.trials, ns.timeout, config_overrides(ns))
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from budgetlora.commands.compare import compare_command

    print(compare_command(ns.runs, output=ns.output, as_json=ns.json))
    return 0


def setup_logging() -> None:
    """The commands that train log their progress at INFO; offline, the Hub client would log
    every retry, and our own one-line error says what happened."""
    import logging
    import os

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    # Tokenizers' own threads would fight the DataLoader and torch for the cores (and warn after a fork).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "plan": cmd_plan,
    "search": cmd_search,
    "compare": cmd_compare,
    "bench": cmd_bench,
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="budgetlora",
        description="LoRA fine-tuning of pretrained encoders for text classification under a trainable-parameter budget.",
    )
    p.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="Train a LoRA adapter + head under the budget.")
    add_train_arguments(t)

    e = sub.add_parser("evaluate", help="Accuracy, macro-F1, per-class scores and confusion matrix of a run.")
    e.add_argument("--run", required=True, metavar="DIR", help="A finished run folder.")
    e.add_argument("--data", required=True, metavar="FILE", help="Labelled data file to evaluate on.")
    e.add_argument("--model", metavar="ID_OR_DIR", help="Load the base model from here instead of the recorded one.")
    e.add_argument("--batch-size", type=int, default=None, metavar="N")
    e.add_argument("--max-samples", type=int, default=None, metavar="N", help="Evaluate the first N rows only.")
    e.add_argument("--quantize", action="store_true", help="int8 dynamic quantization of linear layers (CPU).")

    pr = sub.add_parser("predict", help="Write a Kaggle-style submission (ID,Label) or classify one text.")
    pr.add_argument("--run", required=True, metavar="DIR", help="A finished run folder.")
    pr.add_argument("--input", metavar="FILE", help="Texts to classify (any supported format).")
    pr.add_argument("--output", metavar="OUT.csv", help="Submission CSV to write.")
    pr.add_argument("--text", metavar="TEXT", help="Classify this one text and print label and probability.")
    pr.add_argument("--probabilities", action="store_true", help="Add one probability column per class.")
    pr.add_argument("--model", metavar="ID_OR_DIR", help="Load the base model from here instead of the recorded one.")
    pr.add_argument("--batch-size", type=int, default=None, metavar="N")
    pr.add_argument("--quantize", action="store_true", help="int8 dynamic quantization of linear layers (CPU).")
    pr.add_argument("--overwrite", action="store_true", help="Replace OUT.csv if it exists.")

    pl = sub.add_parser("plan", help="Best adapter configurations under a budget, counted from the model config alone.")
    pl.add_argument("--model", required=True, metavar="ID_OR_DIR", help="Hub id, model folder or config.json.")
    pl.add_argument("--budget", type=int, default=None, metavar="N", help="Trainable parameters must be fewer (default 1,000,000).")
    pl.add_argument("--labels", type=int, default=4, metavar="N", help="Number of classes.")
    pl.add_argument("--top", type=int, default=20, metavar="N", help="Rows to print.")
    pl.add_argument("--json", action="store_true", help="Print every candidate as JSON.")
    pl.add_argument("--explain", metavar="FLAGS", help="Breakdown of one configuration given as train flags.")
    pl.add_argument("--measure", type=int, default=0, metavar="K",
                    help="Train the first K candidates briefly (successive halving on the validation split) and "
                         "print the measured ranking beside the planner's; needs --train-file and the model's weights.")
    pl.add_argument("--train-file", metavar="FILE", help="Labelled rows for --measure (validation is carved from them).")
    pl.add_argument("--measure-rows", type=int, default=256, metavar="N",
                    help="Training rows of --measure's first round (doubled each round; default 256).")
    pl.add_argument("--measure-eval-rows", type=int, default=500, metavar="N",
                    help="Validation rows every --measure round is scored on (default 500).")
    pl.add_argument("--seed", type=int, default=42, metavar="N", help="Seed of --measure's split and runs.")

    se = sub.add_parser("search", help="Optuna search over a declared space; over-budget trials are pruned untrained.")
    se.add_argument("--space", required=True, metavar="FILE", help="Search space YAML (base recipe + space of settings).")
    se.add_argument("--study-dir", required=True, metavar="DIR", help="Study folder: study.db, trial-<n>/, search.json. Run again to continue.")
    se.add_argument("--trials", type=int, default=20, metavar="N", help="Finished trials the study should reach (default 20).")
    se.add_argument("--timeout", type=float, default=None, metavar="S", help="Start no new trial after S seconds.")
    add_config_flags(se)

    co = sub.add_parser("compare", help="Finished runs side by side: table, JSON and a bar plot of validation accuracy.")
    co.add_argument("runs", nargs="+", metavar="RUN", help="Run folders.")
    co.add_argument("--output", default="compare.png", metavar="PNG", help="Bar plot to write (default compare.png).")
    co.add_argument("--json", action="store_true", help="Print the rows as JSON instead of a table.")

    b = sub.add_parser("bench", help="The seed notebooks' HF Trainer pipeline and budgetlora's default one, side by side.")
    b.add_argument("--model", required=True, metavar="ID_OR_DIR", help="Pretrained encoder (Hub id or local folder).")
    b.add_argument("--train-file", metavar="FILE", help="Labelled rows (e.g. AG News train.csv); training and validation rows are carved from it.")
    b.add_argument("--samples", type=int, default=1024, metavar="N", help="Training rows, one epoch, for both pipelines.")
    b.add_argument("--eval-rows", type=int, default=7600, metavar="N", help="Validation rows for accuracy and eval speed (default: the size of the AG News test split).")
    b.add_argument("--seed", type=int, default=42, metavar="N")
    b.add_argument("--output-dir", metavar="DIR", help="Where carved rows, runs, logs and bench.json go (default: a new temp folder).")
    b.add_argument("--json", action="store_true", help="Print the full results as JSON.")
    b.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="Run the pair N times, the order alternating; report the medians of the paired ratios (for a machine whose speed drifts).")
    b.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="Steps between the evaluations of the time-to-accuracy run (`budgetlora train` with its defaults); default: about ten in the epoch.")
    b.add_argument("--sweep", action="store_true", help="Instead: time budgetlora's training loop over sequence lengths and row counts, with a plot.")
    b.add_argument("--sweep-lengths", type=_int_list, default=[32, 64, 128, 256], metavar="T,T,...", help="Sequence lengths of the sweep.")
    b.add_argument("--sweep-rows", type=_int_list, default=[256, 512, 1024], metavar="N,N,...", help="Row counts of the sweep.")
    b.add_argument("--matmul-size", type=int, default=2048, metavar="N", help="Size of the matmul that measures the machine's peak.")
    for command_parser in sub.choices.values():  # `budgetlora train --debug ...` works too
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="Show full tracebacks for errors.")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    ns._argv = argv
    try:
        return COMMANDS[ns.command](ns)
    except UserError as e:
        if ns.debug:
            raise
        print(f"budgetlora: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("budgetlora: interrupted", file=sys.stderr)
        return 130


# Commands that import torch, transformers and peft (the others stay light: --help, plan, compare).
MODEL_COMMANDS = frozenset({"train", "evaluate", "predict", "search", "bench"})


# glibc's malloc options (mallopt(3)): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed activation buffers (up to 32 MiB each) for reuse instead of
    handing them back to the kernel; True when set.

    By default a freed block of a few MiB goes back to the kernel (munmap, or a trim of the heap
    top), so the next batch's tensor of the same size page-faults in fresh zeroed pages: a
    `budgetlora predict` of 7,600 texts took 350-763 thousand page faults and 1.1-1.8 s of system
    time, against 201-208 thousand and 0.8-1.0 s with this (docs/BENCHMARKS.md). The price is that
    the process's memory does not shrink after its peak. Left alone where the user set glibc's
    malloc variables, and where the C library is not glibc (no `mallopt`, or not Linux).
    """
    import os

    if not sys.platform.startswith("linux") or any(v in os.environ for v in _MALLOC_ENV) \
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # musl's mallopt exists and does nothing (returns 0), so the result is what says it took.
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def console_process_setup() -> None:
    """The process-wide settings the `budgetlora` console command makes before a model command:
    the memory allocator's (`keep_freed_memory`) and the garbage collector's, which a library call
    must not make on its own.

    Importing torch, transformers and peft allocates a few hundred thousand objects and no garbage,
    yet the cyclic collector walks them again and again while they load (~1 s) and once more while
    the interpreter shuts down (~1.2 s): a tenth of a `budgetlora predict` of 7,600 texts on a
    2-core CPU (docs/BENCHMARKS.md). So no collection during those imports, and the objects that
    exist once they are done are moved out of the collector's sight (`gc.freeze`); every object
    made afterwards is collected as usual.
    """
    keep_freed_memory()
    gc.disable()
    try:
        import peft  # noqa: F401  (pulls in torch and transformers)
        import transformers.modeling_utils  # noqa: F401
    finally:
        gc.freeze()
        gc.enable()


def entry(argv: Optional[Sequence[str]] = None) -> int:
    """The `budgetlora` console command: `main`, after `console_process_setup` for the model
    commands; at exit the objects left are frozen too, so the interpreter's shutdown does not walk them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MODEL_COMMANDS:
        console_process_setup()
    try:
        return main(argv)
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(entry())
