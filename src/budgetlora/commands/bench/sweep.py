"""`budgetlora bench --sweep`: budgetlora's training loop timed on synthetic rows of exactly T
tokens for several T and row counts, and how time grows with tokens (bench_scaling.png + .md)."""

from __future__ import annotations

import datetime as _dt
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from budgetlora.commands.bench.flops import measure_peaks, model_shape, shape_flops
from budgetlora.commands.bench.rows import PathLike, write_rows
from budgetlora.core.files import atomic_write_text
from budgetlora.errors import UserError

SWEEP_LABELS = ["World", "Sports", "Business", "Sci/Tech"]  # AG News's four classes


def synthetic_text(tokenizer: Any, tokens: int) -> str:
    """A text that tokenizes to exactly `tokens` ids (special tokens included)."""
    specials = len(tokenizer("")["input_ids"])
    for word in ("the", "a", "of", "and", "x"):
        for k in (tokens - specials, tokens - specials - 1, tokens - specials + 1):
            if k < 1:
                continue
            text = " ".join([word] * k)
            if len(tokenizer(text)["input_ids"]) == tokens:
                return text
    raise UserError(f"bench --sweep: cannot build a text of exactly {tokens} tokens with this tokenizer")


def _write_sweep_rows(data: Path, text: str, T: int, n: int, seed: int) -> tuple[Path, Path]:
    """`n` training rows and 8 evaluation rows of `text`, the classes balanced and shuffled."""
    data.mkdir(exist_ok=True)
    rng = random.Random(seed)
    tr, ev = data / f"train-{T}-{n}.csv", data / "eval.csv"
    for path, count in ((tr, n), (ev, 8)):
        labels = [i % 4 for i in range(count)]
        rng.shuffle(labels)
        write_rows(path, labels, [text] * count)
    return tr, ev


def _time_one(model: str, text: str, T: int, n: int, seed: int, out: Path, shape: dict[str, int],
              peaks: Optional[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """One (T, rows) point of the sweep, and the precision it trained in."""
    from budgetlora.config import load_config
    from budgetlora.training.trainer import train

    tr, ev = _write_sweep_rows(out / "sweep-data", text, T, n, seed)
    cfg = load_config(None, {"model": model, "train_file": str(tr), "eval_file": str(ev), "epochs": 1,
                             "seed": seed, "max_length": max(T, 8), "output_dir": str(out / "sweep-run"),
                             "overwrite": True})
    m = train(cfg, command="budgetlora bench --sweep")
    secs = float(m["train_runtime_s"])
    flops = shape_flops([T] * n, shape)
    row = {"seq_len": T, "rows": n, "tokens": T * n, "train_seconds": secs,
           "samples_per_second": n / secs, "tokens_per_second": T * n / secs,
           "useful_flops_per_second": flops / secs}
    if peaks:
        row["share_of_bf16_peak"] = flops / secs / peaks["bf16_flops_per_second"]
        row["share_of_fp32_peak"] = flops / secs / peaks["fp32_flops_per_second"]
    return row, m["precision"]


def scaling_sweep(
    model: str,
    lengths: Sequence[int] = (32, 64, 128, 256),
    rows: Sequence[int] = (256, 512, 1024),
    *,
    seed: int = 42,
    out_dir: Optional[PathLike] = None,
    peaks: Optional[dict[str, Any]] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Time budgetlora's training loop (train(), defaults, one epoch) for each (T, rows)."""
    from budgetlora.config import load_config
    from budgetlora.core.hub import load_hf_config, load_tokenizer
    from budgetlora.modeling import add_lora, build_classifier_from_config

    say = progress or (lambda msg: None)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="budgetlora-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(model)
    base_cfg = load_config(None, {"model": model})
    hf_config = load_hf_config(base_cfg.model, len(SWEEP_LABELS), SWEEP_LABELS)
    max_pos = int(getattr(hf_config, "max_position_embeddings", 512) or 512)
    shape = model_shape(add_lora(build_classifier_from_config(base_cfg.model, hf_config), base_cfg))
    table, skipped, precision = [], [], None
    for T in lengths:
        if T > max_pos - 2 or T < 8:
            skipped.append({"seq_len": T, "why": f"outside 8..{max_pos - 2} tokens for this model"})
            continue
        text = synthetic_text(tokenizer, T)
        for n in rows:
            say(f"sweep: {n} rows x {T} tokens")
            row, precision = _time_one(model, text, T, n, seed, out, shape, peaks)
            table.append(row)
    shutil.rmtree(out / "sweep-run", ignore_errors=True)
    plot = out / "bench_scaling.png"
    _plot_sweep(table, plot)
    md = out / "bench_scaling.md"
    atomic_write_text(md, sweep_markdown(table) + "\n")
    return {"model": str(model), "lengths": list(lengths), "rows": list(rows), "table": table, "skipped": skipped,
            "plot": str(plot), "table_file": str(md), "precision": precision}


def _plot_sweep(table: list[dict[str, Any]], path: Path) -> None:
    from budgetlora.core.plots import pyplot

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for T in sorted({r["seq_len"] for r in table}):
        pts = sorted((r for r in table if r["seq_len"] == T), key=lambda r: r["tokens"])
        ax1.plot([r["tokens"] for r in pts], [r["train_seconds"] for r in pts], marker="o", label=f"T={T}")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("training tokens (rows x T)")
    ax1.set_ylabel("seconds in the training loop")
    ax1.set_title("time vs tokens")
    ax1.legend()
    for n in sorted({r["rows"] for r in table}):
        pts = sorted((r for r in table if r["rows"] == n), key=lambda r: r["seq_len"])
        ax2.plot([r["seq_len"] for r in pts], [1e3 * r["train_seconds"] / r["tokens"] for r in pts], marker="o",
                 label=f"{n} rows")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("sequence length T (tokens)")
    ax2.set_ylabel("ms per token")
    ax2.set_title("cost per token vs sequence length")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_markdown(table: list[dict[str, Any]]) -> str:
    """The sweep's table in Markdown."""
    lines = ["| T (tokens) | rows | tokens | train s | samples/s | tokens/s | useful GFLOP/s | share of bf16 peak |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table:
        share = r.get("share_of_bf16_peak")
        lines.append(f"| {r['seq_len']} | {r['rows']} | {r['tokens']:,} | {r['train_seconds']:.2f} | "
                     f"{r['samples_per_second']:.1f} | {r['tokens_per_second']:.0f} | "
                     f"{r['useful_flops_per_second'] / 1e9:.1f} | {'' if share is None else f'{share:.1%}'} |")
    return "\n".join(lines)


def sweep_command(model: str, lengths: Sequence[int], rows: Sequence[int], *, seed: int, output_dir: Optional[str],
                  matmul_n: int, command: Optional[str], as_json: bool, say: Callable[[str], None]) -> str:
    """The sweep with the machine's peaks; bench_scaling.json written; the text (or JSON) to show."""
    from budgetlora.core.device import machine_description

    out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="budgetlora-sweep-"))
    say(f"measuring the bf16 and fp32 matmul peaks (n={matmul_n})")
    peaks = measure_peaks(matmul_n)
    res = scaling_sweep(model, lengths, rows, seed=seed, out_dir=out, peaks=peaks, progress=say)
    res.update({"command": command, "date": _dt.date.today().isoformat(), "machine": machine_description(), "peaks": peaks})
    atomic_write_text(out / "bench_scaling.json", json.dumps(res, indent=2))
    if as_json:
        return json.dumps(res, indent=2)
    return "\n".join([f"budgetlora bench --sweep  {res['date']}  {res['machine']}",
                      f"budgetlora training loop ({res['precision']}), synthetic rows of exactly T tokens", "",
                      sweep_markdown(res["table"]), "",
                      *(f"skipped T={s['seq_len']}: {s['why']}" for s in res["skipped"]),
                      f"plot: {res['plot']}"])
