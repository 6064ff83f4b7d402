"""What a run leaves in its folder besides checkpoints: log.jsonl, metrics.json (a typed
`RunMetrics`), curves.png and the README.md model card."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from budgetlora.config import RunConfig
from budgetlora.core.files import atomic_write_json, atomic_write_text, read_json_object
from budgetlora.errors import RunDirError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


@dataclass
class RunMetrics:
    """metrics.json: the result of a finished run, read by the model card, compare, bench, search
    and report. Fields added later have defaults, so files written by earlier versions still read."""

    model: str
    head: str
    trainable_params: int  # adapters + head + trainable biases, counted on the built model
    total_params: int
    budget: int
    budget_breakdown: dict[str, int]  # trainable parameters by kind (lora_A, lora_B, head, ...)
    best_eval_accuracy: float
    best_step: int
    final_eval_accuracy: Optional[float]
    steps: int  # optimizer steps taken
    epochs_completed: float
    stopped_early: bool
    train_rows: int
    eval_rows: int
    label_names: list[str]
    train_samples: int  # rows trained on, over every epoch and process
    train_samples_per_second: float
    train_tokens_per_second: float
    train_runtime_s: float  # time inside training steps, evaluation excluded
    precision: str
    device: str
    machine: str
    seed: int
    command: str
    finished: bool = True
    world_size: int = 1  # processes that trained together (data parallel)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def __getitem__(self, key: str) -> Any:
        """`metrics["best_eval_accuracy"]`: code written against the dict `train()` used to return."""
        return self.as_dict()[key]

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d.pop("extra"), **d}

    def write(self, run_dir: Union[str, Path]) -> None:
        atomic_write_json(Path(run_dir) / METRICS_FILE, self.as_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunMetrics":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    @classmethod
    def read(cls, run_dir: Union[str, Path]) -> "RunMetrics":
        """The metrics of a finished run, or a one-line error saying the folder is not one."""
        d = read_metrics_file(run_dir)
        try:
            return cls.from_dict(d)
        except TypeError as e:  # a required field missing
            raise RunDirError(f"{Path(run_dir) / METRICS_FILE}: unreadable ({e})") from None


def read_metrics_file(run_dir: Union[str, Path]) -> dict[str, Any]:
    """metrics.json as written, for readers that take whatever fields a run has (compare)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a finished budgetlora run (no {METRICS_FILE})")
    return read_json_object(path)


class JsonlLog:
    """log.jsonl: one JSON object per logged step or evaluation, flushed as written. A log that is
    not `enabled` (a process other than a run's main one) writes nothing."""

    def __init__(self, path: Path, keep_up_to_step: Optional[int] = None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if keep_up_to_step is not None and path.exists():
            # On resume, drop records written after the checkpoint so the log matches the state.
            atomic_write_text(path, "".join(line + "\n" for line in _lines_up_to(path, keep_up_to_step)))
        elif keep_up_to_step is None:
            path.write_text("", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _lines_up_to(path: Path, step: int) -> list[str]:
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        at = record.get("step", 0) if isinstance(record, dict) else None
        if isinstance(at, (int, float)) and at <= step:
            kept.append(line)
    return kept


def write_outputs(out: Path, cfg: RunConfig, metrics: RunMetrics) -> None:
    """metrics.json (the finished mark, so written first), curves.png and the model card."""
    from budgetlora.core.plots import plot_curves

    metrics.write(out)
    try:
        plot_curves(out / "log.jsonl", out / "curves.png")
    except Exception as e:  # a plot must never cost the user a finished run
        log.warning("could not draw curves.png: %s", e)
    write_model_card(out, cfg, metrics)


def _direct_loading(cfg: RunConfig, out: Path) -> str:
    from budgetlora.config import resolved_method
    from budgetlora.modeling import METHOD_INFO, TRAINED_PARAMETERS

    if not METHOD_INFO[resolved_method(cfg)].peft:  # BitFit, full: no peft adapter, the trained tensors by name
        return (f"or on the base model built by `budgetlora.modeling.build_classifier`, load the trained tensors of "
                f"`{out}/adapter/{TRAINED_PARAMETERS}` with `safetensors.torch.load_file` and "
                "`base.load_state_dict(tensors, strict=False)`.")
    return ("or with peft directly on the base model built by `budgetlora.modeling.build_classifier`:\n"
            f'`peft.PeftModel.from_pretrained(base, "{out}/adapter")`.')


def write_model_card(out: Path, cfg: RunConfig, metrics: RunMetrics) -> None:
    from budgetlora.modeling import describe_adapter

    data = cfg.data.train_file or f"{cfg.data.dataset} (Hugging Face Hub)"
    breakdown = metrics.budget_breakdown
    rows = "\n".join(f"| {k} | {v:,} |" for k, v in breakdown.items() if k != "total" and v)
    text = f"""# budgetlora run

- **Base model**: `{cfg.model.model}` with the `{cfg.model.head}` head
- **Adapter**: {describe_adapter(cfg)}
- **Data**: {data}; {metrics.train_rows:,} training rows, {metrics.eval_rows:,} validation rows \
({"file " + cfg.data.eval_file if cfg.data.eval_file else f"stratified {cfg.data.val_fraction:g} split of train, seed {cfg.train.seed}"}); \
max_length {cfg.data.max_length}
- **Labels**: {", ".join(metrics.label_names)}

## Budget

{metrics.trainable_params:,} trainable parameters, strictly under the budget of {metrics.budget:,} \
({metrics.total_params:,} parameters in all).

| kind | parameters |
| --- | --- |
{rows}
| **total** | **{breakdown["total"]:,}** |

## Results

| metric | value |
| --- | --- |
| best validation accuracy | {metrics.best_eval_accuracy:.4f} (step {metrics.best_step}) |
| final validation accuracy | {metrics.final_eval_accuracy:.4f} |
| optimizer steps | {metrics.steps} ({metrics.epochs_completed} epochs) |
| training throughput | {metrics.train_samples_per_second:.1f} samples/s, {metrics.train_tokens_per_second:.0f} tokens/s |
| training time | {metrics.train_runtime_s:.1f} s ({metrics.precision}, {metrics.device}) |
| machine | {metrics.machine} |

## Reproduce

```
{metrics.command}
```

The fully resolved settings are in `config.yaml`; `budgetlora train --config config.yaml --output-dir NEW_DIR`
repeats this run. Load the adapter (head included) with:

```python
from budgetlora.modeling import load_trained
model, tokenizer, meta = load_trained("{out}")
```

{_direct_loading(cfg, out)}
"""
    atomic_write_text(out / "README.md", text)
