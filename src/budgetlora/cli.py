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
from pathlib import Path
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
            # argparse reports a subcommand's unknown flag from the top parser, which sees every
            # command's flags: an exact match is a flag of another command, not a typo.
            elsewhere = [a for a in typos if a in known]
            close = [m for m in (closest_match(a, known) for a in typos if a not in known) if m]
            if elsewhere:
                message += f" ({', '.join(elsewhere)}: not an option of this command)"
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
    m = train(cfg, command="budgetlora " + shlex.join(ns._argv), resume=bool(ns.resume),  # _argv starts with "train"
              unset=unset)
    print(f"best validation accuracy {m.best_eval_accuracy:.4f} (step {m.best_step}), "
          f"{m.trainable_params:,} trainable params < budget {m.budget:,}, "
          f"{m.train_samples_per_second:.1f} samples/s")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from budgetlora.inference.evaluate import evaluate_run

    report = evaluate_run(ns.run, ns.data, model=ns.model, batch_size=ns.batch_size, max_samples=ns.max_samples,
                          quantize=ns.quantize, calibrate=ns.calibrate)
    print(f"accuracy {report['accuracy']:.4f}  macro_f1 {report['macro_f1']:.4f}  ({report['n']} rows)")
    cal = report["calibration"]
    fitted = cal.get("fitted")
    if fitted:
        print(f"temperature {fitted['temperature']:.4f} fitted on {fitted['rows']} validation rows "
              f"(ECE {fitted['ece_before']:.4f} -> {fitted['ece_after']:.4f} there); stored in calibration.json")
    line = f"ECE {cal['ece']:.4f}  NLL {cal['nll']:.4f}  ({cal['binning']})"
    if "temperature" in cal:
        line += (f"; at temperature {cal['temperature']:.4f}: ECE {cal['ece_calibrated']:.4f}  "
                 f"NLL {cal['nll_calibrated']:.4f}")
    print(line)
    print(f"errors: {report['errors']} misclassified rows, most confident first: "
          f"{Path(report['path']).parent / report['errors_file']}")
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
    if ns.probabilities and summary["temperature"] is not None:
        print(f"probabilities temperature-scaled (T = {summary['temperature']:.4f}, the run's calibration.json)")
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from budgetlora.commands.export import export_run, verification_text

    result = export_run(
        ns.run, ns.output, ns.format, quantize=ns.quantize, overwrite=ns.overwrite, push_to_hub=ns.push_to_hub,
        base_model=ns.model, verify_data=ns.verify_data, verify_rows=ns.verify_rows,
    )
    kind = ns.format + (f", {ns.quantize}" if ns.quantize else "")
    print(f"wrote {result.output} ({kind}, {result.head} head, {result.size_bytes / 1e6:.1f} MB) in {result.seconds:.1f} s")
    print(f"verified without budgetlora on {verification_text(result.verification)}")
    if result.pushed_to:
        print(f"pushed to {result.pushed_to}")
    return 0


def cmd_plan(ns: argparse.Namespace) -> int:
    from budgetlora.commands.measure import MeasureSettings
    from budgetlora.commands.plan import plan_command

    settings = None
    if ns.measure:
        setup_logging()  # the brief runs log as `train` does
        if ns.train_file:
            settings = MeasureSettings(ns.train_file, rows=ns.measure_rows, eval_rows=ns.measure_eval_rows,
                                       seed=ns.seed, out_dir=ns.measure_dir,
                                       **({"lr": ns.measure_lr} if ns.measure_lr is not None else {}))
    print(plan_command(ns.model, budget=ns.budget, labels=ns.labels, top=ns.top, as_json=ns.json, explain=ns.explain,
                       methods=ns.method, measure=ns.measure, measure_settings=settings,
                       progress=lambda msg: print(f"plan --measure: {msg}", file=sys.stderr, flush=True)))
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from budgetlora.commands.bench import bench_command

    print(bench_command(
        ns.model, ns.train_file, samples=ns.samples, eval_rows=ns.eval_rows, seed=ns.seed,
        output_dir=ns.output_dir, as_json=ns.json, sweep=ns.sweep, sweep_lengths=ns.sweep_lengths,
        sweep_rows=ns.sweep_rows, matmul_n=ns.matmul_size, repeats=ns.repeats, eval_every=ns.eval_every,
        argv=ns._argv,
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
    from budgetlora.commands.search import StudyPlace, run_search, summary_text

    setup_logging()
    place = StudyPlace(ns.storage, ns.study_name, ns.heartbeat)
    summary = run_search(ns.space, ns.study_dir, ns.trials, timeout=ns.timeout, overrides=config_overrides(ns),
                         place=place, on_trial=lambda line: print(line, flush=True))
    print(summary_text(summary))
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from budgetlora.commands.compare import compare_command

    print(compare_command(ns.runs, output=ns.output, as_json=ns.json))
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from budgetlora.commands.report import report_command

    done = report_command(ns.runs, ns.output, overwrite=ns.overwrite, eval_name=ns.eval, top_errors=ns.errors)
    for run, missing in done["missing"].items():
        for line in missing:
            print(f"{run}: missing {line}", file=sys.stderr)
    print(f"wrote {done['output']} ({done['runs']} run{'s' if done['runs'] > 1 else ''}, {done['bytes'] / 1024:.0f} KiB, self-contained)")
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
    "export": cmd_export,
    "plan": cmd_plan,
    "search": cmd_search,
    "compare": cmd_compare,
    "report": cmd_report,
    "bench": cmd_bench,
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="budgetlora",
        description="LoRA fine-tuning of pretrained encoders for text classification under a trainable-parameter budget.",
    )
    p.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_model_commands(sub)
    _add_study_commands(sub)
    _add_bench_command(sub)
    for command_parser in sub.choices.values():  # `budgetlora train --debug ...` works too
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="Show full tracebacks for errors.")
    return p


def _add_model_commands(sub: Any) -> None:
    """train, evaluate, predict, export: the commands that make or use one model."""
    t = sub.add_parser("train", help="Train a LoRA adapter + head under the budget.",
                       description="With no recipe and no adapter flag (--method, --head, a LoRA setting but "
                                   "--lora-dropout, or another method's setting), the head and adapter are chosen for "
                                   "--budget as `budgetlora plan --method lora` advises, with the planned adapter's learning rate "
                                   "(docs/BUDGET.md) unless --lr is given; "
                                   "the first log line names them. Otherwise the defaults below apply.")
    add_train_arguments(t)

    e = sub.add_parser("evaluate", help="Accuracy, macro-F1, per-class scores, confusion matrix, calibration (ECE, NLL) and the misclassified rows of a run.")
    e.add_argument("--run", required=True, metavar="DIR", help="A finished run folder.")
    e.add_argument("--data", required=True, metavar="FILE", help="Labelled data file to evaluate on.")
    e.add_argument("--model", metavar="ID_OR_DIR", help="Load the base model from here instead of the recorded one.")
    e.add_argument("--batch-size", type=int, default=None, metavar="N")
    e.add_argument("--max-samples", type=int, default=None, metavar="N", help="Evaluate the first N rows only.")
    e.add_argument("--quantize", action="store_true", help="int8 dynamic quantization of linear layers (CPU).")
    e.add_argument("--calibrate", action="store_true",
                   help="First fit temperature scaling on the run's own validation split and store it in the run "
                        "(calibration.json); predict --probabilities then uses it.")

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

    ex = sub.add_parser("export", help="A finished run as a standalone model (plain transformers or ONNX), verified without budgetlora.")
    ex.add_argument("--run", required=True, metavar="DIR", help="A finished run folder.")
    ex.add_argument("--output", required=True, metavar="OUT", help="Folder to write (must not exist unless --overwrite).")
    ex.add_argument("--format", choices=["hf", "onnx"], default="hf",
                    help="hf: a transformers folder (AutoModelForSequenceClassification, pipeline()); onnx: one ONNX graph for ONNX Runtime.")
    ex.add_argument("--quantize", choices=["int8"], default=None, help="int8 weights (with --format onnx).")
    ex.add_argument("--overwrite", action="store_true", help="Replace OUT if it exists (only once the new export is verified).")
    ex.add_argument("--push-to-hub", metavar="REPO", help="Upload the verified folder to this Hugging Face Hub model repo.")
    ex.add_argument("--model", metavar="ID_OR_DIR", help="Load the base model from here instead of the recorded one.")
    ex.add_argument("--verify-data", metavar="FILE", help="Texts to verify on instead of the run's validation rows.")
    ex.add_argument("--verify-rows", type=int, default=512, metavar="N", help="Rows to verify on (default 512).")



def _add_study_commands(sub: Any) -> None:
    """plan, search, compare, report: the commands that choose among or look at several runs."""
    pl = sub.add_parser("plan", help="Best adapter configurations under a budget, counted from the model config alone.")
    pl.add_argument("--model", required=True, metavar="ID_OR_DIR", help="Hub id, model folder or config.json.")
    pl.add_argument("--budget", type=int, default=None, metavar="N", help="Trainable parameters must be fewer (default 1,000,000).")
    pl.add_argument("--labels", type=int, default=4, metavar="N", help="Number of classes.")
    pl.add_argument("--top", type=int, default=20, metavar="N", help="Rows to print.")
    pl.add_argument("--json", action="store_true", help="Print every candidate as JSON.")
    pl.add_argument("--explain", metavar="FLAGS", help="Breakdown of one configuration given as train flags.")
    pl.add_argument("--method", metavar="NAMES", help="Only these methods, comma-separated (default: all of "
                    "lora, dora, adalora, vera, fourierft, lokr, loha, ia3, bias, layernorm, prompt).")
    pl.add_argument("--measure", type=int, default=0, metavar="K",
                    help="Train the first K candidates briefly (successive halving on the validation split) and "
                         "print the measured ranking beside the planner's; needs --train-file and the model's weights.")
    pl.add_argument("--train-file", metavar="FILE", help="Labelled rows for --measure (validation is carved from them).")
    pl.add_argument("--measure-rows", type=int, default=256, metavar="N",
                    help="Training rows of --measure's first round (doubled each round; default 256).")
    pl.add_argument("--measure-eval-rows", type=int, default=500, metavar="N",
                    help="Validation rows every --measure round is scored on (default 500).")
    pl.add_argument("--measure-lr", type=float, default=None, metavar="LR",
                    help="Learning rate of every --measure run (default: the one train's defaults give the planned "
                         "LoRA adapter, 2e-3).")
    pl.add_argument("--measure-dir", metavar="DIR", help="Folder for --measure's runs (default: a new temporary one).")
    pl.add_argument("--seed", type=int, default=42, metavar="N", help="Seed of --measure's split and runs.")

    se = sub.add_parser("search", help="Optuna search over a declared space; over-budget trials are pruned untrained.")
    se.add_argument("--space", required=True, metavar="FILE", help="Search space YAML (base recipe + space of settings).")
    se.add_argument("--study-dir", required=True, metavar="DIR", help="Study folder: study.db, trial-<n>/, search.json. Run again to continue.")
    se.add_argument("--storage", metavar="URL", help="Share the study through this database (postgresql+psycopg://USER:PASSWORD@HOST/DB, mysql://...): "
                    "any number of workers on any machines run the same command. Default: SQLite in --study-dir.")
    se.add_argument("--study-name", default="budgetlora", metavar="NAME", help="The study's name in the database (default budgetlora).")
    se.add_argument("--heartbeat", type=int, default=60, metavar="S", help="Seconds between a worker's heartbeats; a trial silent for 3 of them "
                    "(its worker died) is marked failed and run again (default 60).")
    se.add_argument("--trials", type=int, default=20, metavar="N", help="Finished trials the study should reach (default 20).")
    se.add_argument("--timeout", type=float, default=None, metavar="S", help="Start no new trial after S seconds.")
    add_config_flags(se)

    co = sub.add_parser("compare", help="Finished runs side by side: table, JSON and a bar plot of validation accuracy.")
    co.add_argument("runs", nargs="+", metavar="RUN", help="Run folders, or a search study folder (every complete trial of its search.json).")
    co.add_argument("--output", default="compare.png", metavar="PNG", help="Bar plot to write (default compare.png).")
    co.add_argument("--json", action="store_true", help="Print the rows as JSON instead of a table.")

    r = sub.add_parser("report", help="One self-contained HTML page of evaluated runs: settings, budget, curves, "
                                      "confusion matrix, calibration, errors, and a comparison of several runs.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="Run folders, each evaluated by `budgetlora evaluate`.")
    r.add_argument("--output", default="report.html", metavar="HTML", help="Page to write (default report.html).")
    r.add_argument("--overwrite", action="store_true", help="Replace HTML if it exists.")
    r.add_argument("--eval", default=None, metavar="NAME",
                   help="Which evaluation to show, by its eval/NAME.json (default: each run's newest).")
    r.add_argument("--errors", type=int, default=20, metavar="N", help="Misclassified rows to show per run (default 20).")



def _add_bench_command(sub: Any) -> None:
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


def wait_for_the_other_processes(seconds: float = 30) -> None:
    """Under torchrun, every process of a run that stops on an error prints the same line
    (training.trainer agrees on it); the first to exit would make the launcher kill the others
    before they print theirs, so they meet once more. A process that is gone ends the wait."""
    import datetime

    try:
        import torch.distributed as dist
    except ImportError:
        return
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=seconds))
        else:
            dist.barrier()
    except Exception:  # another process died first: nothing to wait for
        pass


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
        print(f"budgetlora: error: {e}", file=sys.stderr, flush=True)
        wait_for_the_other_processes()
        return e.exit_code
    except KeyboardInterrupt:
        print("budgetlora: interrupted", file=sys.stderr)
        return 130


# Commands that import torch, transformers and peft (the others stay light: --help, plan, compare).
MODEL_COMMANDS = frozenset({"train", "evaluate", "predict", "search", "bench", "export"})


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
