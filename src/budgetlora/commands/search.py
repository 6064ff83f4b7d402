"""`budgetlora search`: Optuna hyperparameter search over a declared space, under the budget.

A space file (YAML) names a base configuration and the settings to search:

    base: ../agnews-minilm-cpu.yaml      # a recipe, relative to this file; or a mapping of settings
    seed: 42                             # optional: the sampler's seed (default: the base's seed)
    pruner: {n_startup_trials: 5, n_warmup_steps: 0}   # optional: optuna MedianPruner settings
    space:
      lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      r: {type: int, low: 4, high: 32, step: 4}
      target_modules: {type: categorical, choices: [[query, value], all-linear]}

Every trial's configuration is counted with `budget.estimate` before anything is trained; one at
or over the budget is pruned at once. The others train with `train()` into
`<study_dir>/trial-<n>/` and are scored by their best validation accuracy (the held-out split of
the training data, or --eval-file: never give the test set here). Each evaluation is reported to
Optuna, whose MedianPruner stops trials that fall behind the earlier ones. The study lives in
`<study_dir>/study.db` (SQLite), so running the same command again continues it; `--trials N` is
the number of finished (complete or pruned) trials the study should reach: a run starts at most
N minus those already finished (failed trials, e.g. a diverged one, use up one of them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from budgetlora.config import RunConfig, coerce, field_index, flag_value, from_dict, load_yaml, to_flags
from budgetlora.errors import BudgetError, ConfigError, closest_match

log = logging.getLogger(__name__)

STUDY_NAME = "budgetlora"
STUDY_DB = "study.db"
SPACE_KEYS = ("base", "seed", "pruner", "space")
PARAM_TYPES = ("float", "int", "categorical")
NOT_SEARCHABLE = ("output_dir", "overwrite", "budget")
PRUNER_KEYS = ("n_startup_trials", "n_warmup_steps", "interval_steps")


@dataclass
class Param:
    """One searched setting."""

    name: str
    type: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: list[Any] = field(default_factory=list)

    def labels(self) -> list[Any]:
        """Optuna stores categorical values that are None/bool/int/float/str: lists and mappings
        (target_modules, rank_pattern) are stored as their flag text and mapped back."""
        return [_choice_label(c) for c in self.choices]

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return self.value_of(trial.suggest_categorical(self.name, self.labels()))

    def value_of(self, stored: Any) -> Any:
        """The setting's value from what Optuna stored."""
        if self.type != "categorical":
            return stored
        labels = self.labels()
        return self.choices[labels.index(stored)] if stored in labels else stored


@dataclass
class SearchSpace:
    path: Path
    base_recipe: Optional[Path]
    settings: dict[str, Any]
    params: dict[str, Param]
    seed: Optional[int]
    pruner: dict[str, int]
    text: str

    def base_config(self, overrides: Optional[dict[str, Any]] = None) -> RunConfig:
        """Defaults < base recipe < inline settings < command-line overrides (not yet validated)."""
        cfg = RunConfig()
        if self.base_recipe is not None:
            cfg = from_dict(load_yaml(self.base_recipe), cfg)
        if self.settings:
            cfg = from_dict(self.settings, cfg)
        return from_dict(overrides or {}, cfg)


def _choice_label(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return flag_value(value)


def load_space(path: Union[str, Path]) -> SearchSpace:
    """Read and check a space file; every value it can produce is checked as a setting."""
    p = Path(path)
    data = load_yaml(p)
    for key in data:
        if key not in SPACE_KEYS:
            raise ConfigError(f"{p}: unknown key {key!r} in a search space (use {', '.join(SPACE_KEYS)})")
    base = data.get("base")
    base_recipe: Optional[Path] = None
    settings: dict[str, Any] = {}
    if isinstance(base, str):
        base_recipe = (p.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_recipe.is_file():
            raise ConfigError(f"{p}: base recipe {base} not found (paths are relative to the space file)")
    elif isinstance(base, dict):
        settings = base
    elif base is not None:
        raise ConfigError(f"{p}: base: give a recipe path or a mapping of settings")
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{p}: space: give a mapping of setting -> {{type: float|int|categorical, ...}}")
    index = field_index()
    params: dict[str, Param] = {}
    for raw_name, spec in space.items():
        name = str(raw_name).replace("-", "_")
        where = f"{p}: space.{raw_name}"
        if name not in index:
            close = closest_match(name, index)
            raise ConfigError(f"{where}: unknown setting" + (f"; did you mean {close!r}?" if close else ""))
        if name in NOT_SEARCHABLE:
            raise ConfigError(f"{where}: {name} cannot be searched (it is fixed for the whole study)")
        params[name] = _param(name, spec, where)
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{p}: seed: must be an integer, got {seed!r}")
    pruner = data.get("pruner") or {}
    if not isinstance(pruner, dict) or any(k not in PRUNER_KEYS for k in pruner) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in pruner.values()
    ):
        raise ConfigError(f"{p}: pruner: a mapping of {', '.join(PRUNER_KEYS)} to non-negative integers")
    out = SearchSpace(p, base_recipe, settings, params, seed, dict(pruner), p.read_text(encoding="utf-8"))
    out.base_config()  # unknown or mistyped base settings fail here, not in trial 0
    return out


def _param(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
        raise ConfigError(f"{where}: give {{type: float|int|categorical, ...}}")
    kind = spec["type"]
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}[kind]
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown keys {sorted(extra)} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices: give a non-empty list")
        for c in choices:
            coerce(name, c)  # raises a ConfigError naming the setting
        labels = [_choice_label(c) for c in choices]
        if len(set(map(repr, labels))) != len(labels):
            raise ConfigError(f"{where}: choices repeat a value")
        return Param(name, kind, choices=list(choices))
    num = float if kind == "float" else int
    try:
        low, high = num(spec["low"]), num(spec["high"])
        step = None if spec.get("step") is None else num(spec["step"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: give numbers low and high (and optionally step)") from None
    if kind == "int" and (float(spec["low"]) != low or float(spec["high"]) != high):
        raise ConfigError(f"{where}: low and high of an int setting must be integers")
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool):
        raise ConfigError(f"{where}: log: true or false")
    if not low <= high or (kind == "float" and not low < high):
        raise ConfigError(f"{where}: need low < high, got {low} and {high}")
    if log_scale and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0")
    if log_scale and step is not None:
        raise ConfigError(f"{where}: step and log cannot be combined (an optuna rule)")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0")
    coerce(name, low)
    coerce(name, high)
    return Param(name, kind, low=low, high=high, log=log_scale, step=step)


# ---------------------------------------------------------------------------------------------
# Flags: every trial is reproducible with one `budgetlora train` command.
# ---------------------------------------------------------------------------------------------


def _flat_settings(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe mapping (nested sections or flat names) as {flat name: value}."""
    from budgetlora.config import SECTIONS

    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return {k.replace("-", "_"): v for k, v in flat.items()}


def train_args(space: SearchSpace, overrides: dict[str, Any], values: dict[str, Any], output_dir: str) -> list[str]:
    """`budgetlora train` arguments that rebuild one trial's configuration exactly."""
    args: list[str] = []
    if space.base_recipe is not None:
        args += ["--config", str(space.base_recipe)]
    settings = _flat_settings(space.settings)
    settings.update({k.replace("-", "_"): coerce(k.replace("-", "_"), v) for k, v in overrides.items()})
    settings.update(values)
    settings["output_dir"] = output_dir
    return ["train", *to_flags(settings)]


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def trial_config(space: SearchSpace, overrides: dict[str, Any], values: dict[str, Any], run_dir: Path) -> RunConfig:
    cfg = from_dict(values, space.base_config(overrides))
    cfg.output_dir = str(run_dir)
    cfg.overwrite = True  # the study owns its trial folders
    return cfg.validate()


@contextlib.contextmanager
def _signals_restored() -> Iterator[None]:
    """train() turns SIGINT/SIGTERM into a checkpoint-and-stop flag and restores the handlers when
    it returns; a pruned trial leaves by an exception, so restore them here whatever happens."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _share_cache(run_dir: Path, shared: Path) -> None:
    """Point the trial's cache/ at the study's: token ids and teacher logits are keyed by content
    and written atomically, so every trial reuses what an earlier one computed."""
    link = run_dir / "cache"
    if link.exists() or link.is_symlink():
        return
    try:
        shared.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        link.symlink_to(shared.resolve(), target_is_directory=True)
    except OSError as e:  # no symlinks here: each trial keeps its own cache
        log.debug("cannot share the cache with %s (%s)", run_dir, e)


class _Objective:
    def __init__(self, space: SearchSpace, overrides: dict[str, Any], study_dir: Path, num_labels: int):
        self.space = space
        self.overrides = overrides
        self.study_dir = study_dir
        self.num_labels = num_labels
        self._hf_configs: dict[str, Any] = {}

    def _hf_config(self, model: str) -> Any:
        from budgetlora.budget import load_config_only

        if model not in self._hf_configs:
            self._hf_configs[model] = load_config_only(model, self.num_labels)
        return self._hf_configs[model]

    def __call__(self, trial: Any) -> float:
        import optuna

        from budgetlora import budget
        from budgetlora.training.trainer import train

        values = {name: p.suggest(trial) for name, p in self.space.params.items()}
        run_dir = self.study_dir / f"trial-{trial.number}"
        args = train_args(self.space, self.overrides, values, str(run_dir))
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("train_command", "budgetlora " + shlex.join(args))
        try:
            cfg = trial_config(self.space, self.overrides, values, run_dir)
            # The budget first: an over-budget configuration is pruned without loading a weight.
            count = budget.estimate(cfg, self._hf_config(cfg.model.model), self.num_labels)
        except ConfigError as e:
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("trainable_params", count.total)
        if count.total >= cfg.budget:
            reason = f"over budget: {count.total:,} trainable parameters >= {cfg.budget:,} ({count.describe()})"
            trial.set_user_attr("pruned_reason", reason)
            raise optuna.TrialPruned(reason)

        def on_eval(step: int, accuracy: float) -> None:
            trial.report(accuracy, step)
            if trial.should_prune():
                trial.set_user_attr("pruned_reason", f"below the median of earlier trials at step {step} ({accuracy:.4f})")
                raise optuna.TrialPruned(f"step {step}")

        _share_cache(run_dir, self.study_dir / "cache")
        try:
            with _signals_restored():
                metrics = train(cfg, command=trial.user_attrs["train_command"], on_eval=on_eval)
        except (ConfigError, BudgetError) as e:
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("trainable_params", metrics["trainable_params"])
        trial.set_user_attr("train_runtime_s", metrics["train_runtime_s"])
        trial.set_user_attr("train_samples_per_second", metrics["train_samples_per_second"])
        return float(metrics["best_eval_accuracy"])


def _num_labels(cfg: RunConfig) -> int:
    if cfg.data.label_names:
        return len(cfg.data.label_names)
    from budgetlora.data import prepare_splits

    return len(prepare_splits(cfg.data, cfg.train.seed).label_names)


def open_study(study_dir: Path, space: SearchSpace, seed: int):
    import optuna

    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # _print_trial says what happens
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{(study_dir / STUDY_DB).resolve()}",
        # A trial whose process died (kill -9, power cut) stops sending heartbeats and is marked
        # failed when the study is next opened, instead of staying "running" forever.
        heartbeat_interval=60, grace_period=180,
    )
    pruner = optuna.pruners.MedianPruner(**space.pruner)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    digest = hashlib.sha256(space.text.encode()).hexdigest()[:16]
    previous = study.user_attrs.get("space_sha256")
    if previous is None:
        study.set_user_attr("space_sha256", digest)
        study.set_user_attr("space_file", str(space.path))
    elif previous != digest:
        log.warning("%s changed since this study began; earlier trials were sampled from the old space", space.path)
    return study


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_search(
    space_file: Union[str, Path],
    study_dir: Union[str, Path],
    trials: int,
    timeout: Optional[float] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Run (or continue) the study until it has `trials` finished trials; write search.json."""

    from budgetlora.errors import TrainingInterrupted

    if trials < 1:
        raise ConfigError(f"trials: must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout: must be > 0 seconds, got {timeout}")
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}
    for name in ("output_dir", "overwrite"):
        if name in overrides:
            raise ConfigError(f"search: --{name.replace('_', '-')} is not used; trials go to --study-dir/trial-<n>")
    space = load_space(space_file)
    both = sorted(set(overrides) & set(space.params))
    if both:
        raise ConfigError(f"search: {', '.join(both)} is both searched and given as a flag; drop one")
    study_dir = Path(study_dir).expanduser()
    base = space.base_config(overrides)
    base.output_dir = str(study_dir / "trial-0")
    base.validate()
    if base.data.eval_file and "test" in Path(base.data.eval_file).name.lower():
        log.warning("--eval-file %s looks like a test set: the search selects on it, so its accuracy "
                    "is no longer an unbiased test score", base.data.eval_file)
    study = open_study(study_dir, space, space.seed if space.seed is not None else base.train.seed)
    todo = trials - _finished(study)
    objective = _Objective(space, overrides, study_dir, _num_labels(base))
    interrupted: Optional[BaseException] = None
    if todo > 0:
        try:
            study.optimize(objective, n_trials=todo, timeout=timeout, gc_after_trial=True,
                           catch=(ConfigError, BudgetError), callbacks=[_print_trial])
        except (TrainingInterrupted, KeyboardInterrupt) as e:
            interrupted = e
    summary = write_summary(study, space, overrides, study_dir)
    if interrupted is not None:
        raise TrainingInterrupted(
            f"search interrupted; its {_finished(study)} finished trials are kept in {study_dir / STUDY_DB}: "
            "run the same command again to continue"
        )
    return summary


def _print_trial(study: Any, trial: Any) -> None:
    state = trial.state.name.lower()
    params = trial.user_attrs.get("trainable_params")
    what = f"value {trial.value:.4f}" if trial.value is not None else (
        trial.user_attrs.get("pruned_reason") or trial.user_attrs.get("error") or "")
    print(f"trial {trial.number}: {state}" + (f", {params:,} trainable params" if params else "") + (f": {what}" if what else ""),
          flush=True)


def trial_record(trial: Any, space: SearchSpace) -> dict[str, Any]:
    params = {}
    for name, stored in trial.params.items():
        p = space.params.get(name)
        params[name] = p.value_of(stored) if p else stored
    value = trial.value
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else value,
        "params": params,
        "trainable_params": trial.user_attrs.get("trainable_params"),
        "run_dir": trial.user_attrs.get("run_dir"),
        "train_command": trial.user_attrs.get("train_command"),
        "pruned_reason": trial.user_attrs.get("pruned_reason"),
        "error": trial.user_attrs.get("error"),
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "train_runtime_s": trial.user_attrs.get("train_runtime_s"),
        "started": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "finished": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }


def write_summary(study: Any, space: SearchSpace, overrides: dict[str, Any], study_dir: Path) -> dict[str, Any]:
    """<study_dir>/search.json with every trial, and the best trial printed with its train flags."""
    from optuna.trial import TrialState

    from budgetlora.core.files import atomic_write_json

    records = [trial_record(t, space) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in records if r["state"] == TrialState.COMPLETE.name and r["value"] is not None]
    best = max(complete, key=lambda r: (r["value"], -r["number"])) if complete else None
    best_command = None
    if best is not None:
        args = train_args(space, overrides, best["params"], str(study_dir / "best"))
        best_command = "budgetlora " + shlex.join(args)
    counts = {s: sum(r["state"] == s for r in records) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    over_budget = sum(1 for r in records if (r["pruned_reason"] or "").startswith("over budget"))
    summary = {
        "study_dir": str(study_dir),
        "storage": str(study_dir / STUDY_DB),
        "space_file": str(space.path),
        "metric": "best validation accuracy",
        "direction": "maximize",
        "counts": {k.lower(): v for k, v in counts.items()} | {"over_budget": over_budget},
        "best": None if best is None else {**best, "train_command": best_command},
        "trials": records,
    }
    atomic_write_json(study_dir / "search.json", summary)
    print(f"study {study_dir}: {len(records)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned "
          f"({over_budget} over budget), {counts['FAIL']} failed; all in {study_dir / 'search.json'}")
    if best is None:
        print("no trial has completed yet")
    else:
        print(f"best: trial {best['number']}, validation accuracy {best['value']:.4f}, "
              f"{best['trainable_params']:,} trainable params, {json.dumps(best['params'])}")
        print(f"  {best_command}")
    return summary


def search_from_cli(space_file: str, study_dir: str, trials: int, timeout: Optional[float],
                    overrides: dict[str, Any]) -> dict[str, Any]:
    return run_search(space_file, study_dir, trials, timeout=timeout, overrides=overrides)


__all__ = ["load_space", "run_search", "SearchSpace", "Param", "trial_config", "train_args", "flag_value"]
