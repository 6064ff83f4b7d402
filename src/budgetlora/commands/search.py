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

With `--storage URL` (postgresql://, mysql://: any database Optuna's RDBStorage opens) and
`--study-name NAME`, any number of workers on any machines run the same command and share one
study: trial numbers come from the database, so each trial is trained once, by one worker, into
its own `<study_dir>/trial-<n>/`. A worker sends a heartbeat every `--heartbeat` seconds while it
trains; a trial silent for 3 heartbeats (its worker was killed, or lost the network) is marked
failed by the others and queued again. Each worker stops when the study has N finished trials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shlex
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union
from urllib.parse import unquote

import optuna
from optuna.trial import TrialState

from budgetlora.config import RunConfig, coerce, field_index, flag_value, from_dict, load_yaml, to_flags
from budgetlora.errors import (BudgetError, ConfigError, RunDirError, StorageError, TrainingDiverged,
                               TrainingInterrupted, UserError, closest_match)

log = logging.getLogger(__name__)

STUDY_NAME = "budgetlora"
STUDY_DB = "study.db"
SUMMARY_FILE = "search.json"
HEARTBEAT_S = 60  # default seconds between a training worker's heartbeats
GRACE_BEATS = 3  # heartbeats a trial may miss before other workers call it dead
MAX_RETRY = 2  # copies of a dead trial: a configuration that kills its worker each time is given up
CONNECT_TIMEOUT_S = 15
# The pip package of each database driver SQLAlchemy may ask for.
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                   "pymysql": "pymysql", "asyncpg": "asyncpg"}
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # who trained a trial, in search.json
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
# Where the study lives: SQLite in the study folder, or a database every worker reaches.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyPlace:
    """The study's database and name. `url` None: `<study_dir>/study.db` (SQLite, one machine)."""

    url: Optional[str] = None
    name: str = STUDY_NAME
    heartbeat_s: int = HEARTBEAT_S

    def resolved_url(self, study_dir: Path) -> str:
        return self.url or f"sqlite:///{(study_dir / STUDY_DB).resolve()}"

    def shown(self, study_dir: Path) -> str:
        """The database as it may be printed and saved: never its password."""
        if self.url is None:
            return str(study_dir / STUDY_DB)
        return hide_password(self.url)

    @property
    def grace_s(self) -> int:
        return GRACE_BEATS * self.heartbeat_s


def hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return unquote(make_url(url).render_as_string(hide_password=True))
    except ArgumentError:
        return "(hidden)"  # unparseable: it is not echoed, it may hold a password


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {}
    # Workers hold a connection for hours between trials; a server or firewall may drop it meanwhile.
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}  # a silent host: fail, don't hang
    return kwargs


def open_storage(place: StudyPlace, study_dir: Path) -> Any:
    """Optuna's RDBStorage with heartbeats; StorageError/ConfigError (one line) when it cannot be opened."""
    url = place.resolved_url(study_dir)
    shown = place.shown(study_dir)
    try:
        with warnings.catch_warnings(), _database_errors(shown):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _create_storage(url, place)
    except ImportError as e:  # Optuna's wrapper of the driver's ModuleNotFoundError
        missing = getattr(e.__cause__, "name", None) or "for it"
        package = DRIVER_PACKAGES.get(missing, "the driver SQLAlchemy names for that URL")
        raise ConfigError(f"--storage {shown}: the database driver {missing} is not installed; "
                          f"pip install '{package}'") from None


def _create_storage(url: str, place: StudyPlace, tries: int = 5) -> Any:
    """RDBStorage, tried again when workers started together race to create its tables: PostgreSQL's
    CREATE TABLE is not atomic against another session's, so the loser sees a duplicate-key error;
    once the winner's tables exist, they are found and used."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, tries + 1):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=_engine_kwargs(url),
                # A worker that dies (kill -9, power cut, lost network) stops sending heartbeats;
                # after the grace period any worker marks its trial failed and queues a copy.
                heartbeat_interval=place.heartbeat_s, grace_period=place.grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        except (IntegrityError, ProgrammingError):
            if attempt == tries:
                raise
            time.sleep(random.uniform(0.2, 1.0))
    raise AssertionError("unreachable")


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def _database_errors(shown: str) -> Iterator[None]:
    """The study database's failures as one line that says what to do, not a driver traceback."""
    from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError

    try:
        yield
    except ArgumentError as e:  # also an unknown dialect (NoSuchModuleError)
        raise ConfigError(f"--storage {shown}: not a database URL ({_first_line(e)}); "
                          "give e.g. postgresql+psycopg://USER:PASSWORD@HOST:5432/DB") from None
    except (OperationalError, InterfaceError, optuna.exceptions.StorageInternalError) as e:
        raise StorageError(f"cannot reach the study database {shown}: {_first_line(e)}; check that the "
                           "server runs and --storage is right (finished trials are kept in the database: "
                           "run the same command again to continue)") from None
    except SQLAlchemyError as e:
        raise StorageError(f"the study database {shown} refused a request: {_first_line(e)}; check the "
                           "user's rights on that database") from None


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Optuna's TPE whose random draws are seeded by (study seed, trial number).

    One TPESampler(seed) per process would make every worker draw the same random configurations
    (two workers that start together would train the same one twice). Here a trial's draws depend
    on its number and the study's history, not on which worker runs it, and one worker alone is
    still reproducible."""

    def __init__(self, seed: int):
        self.seed = seed
        self._tpe = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: Any, trial: Any) -> None:
        digest = hashlib.sha256(f"{self.seed}:{trial.number}".encode()).digest()
        self._tpe = optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "little"))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


def open_study(study_dir: Path, space: SearchSpace, seed: int, overrides: Optional[dict[str, Any]] = None,
               place: StudyPlace = StudyPlace()) -> Any:
    """Create the study, or join it: every worker runs this with the same arguments."""
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trial_line says what happens
    storage = open_storage(place, study_dir)
    with _database_errors(place.shown(study_dir)):
        study = optuna.create_study(storage=storage, study_name=place.name, direction="maximize",
                                    sampler=TrialSeededSampler(seed), pruner=optuna.pruners.MedianPruner(**space.pruner),
                                    load_if_exists=True)
        _check_same_request(study, space, overrides or {})
    return study


def _check_same_request(study: Any, space: SearchSpace, overrides: dict[str, Any]) -> None:
    """The first run records its space and flags; a later run or another worker that differs is told."""
    mine = {"space_sha256": hashlib.sha256(space.text.encode()).hexdigest()[:16],
            "flags": json.dumps(overrides, sort_keys=True, default=str)}
    recorded = study.user_attrs
    if "space_sha256" not in recorded:
        study.set_user_attr("space_file", str(space.path))
        for key, value in mine.items():
            study.set_user_attr(key, value)
        return
    if recorded["space_sha256"] != mine["space_sha256"]:
        log.warning("%s differs from the space this study began with; earlier trials were sampled from the other",
                    space.path)
    if recorded.get("flags", mine["flags"]) != mine["flags"]:
        log.warning("these flags (%s) differ from those the study began with (%s): its trials are not trained alike",
                    mine["flags"], recorded["flags"])


# ---------------------------------------------------------------------------------------------
# One trial
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


def claim_trial_folder(run_dir: Path, trial_number: int, study_name: str) -> None:
    """Create the trial's folder, failing if it exists: trial numbers come from the shared study and
    are never reused, so an existing folder belongs to another study (or a deleted one)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise RunDirError(
            f"{run_dir} exists, but trial {trial_number} of study {study_name!r} has just begun: another study "
            "writes its trials into this folder; give each study its own --study-dir"
        ) from None


def _share_cache(run_dir: Path, shared: Path) -> None:
    """Point the trial's cache/ at the study's: token ids and teacher logits are keyed by content
    and written atomically, so every trial reuses what an earlier one computed."""
    link = run_dir / "cache"
    if link.exists() or link.is_symlink():
        return
    try:
        shared.mkdir(parents=True, exist_ok=True)
        link.symlink_to(shared.resolve(), target_is_directory=True)
    except OSError as e:  # no symlinks here: each trial keeps its own cache
        log.debug("cannot share the cache with %s (%s)", run_dir, e)


class NotNeeded(Exception):
    """The study already had enough finished or running trials when this one was created."""


# Failures that end one trial (recorded, shown in search.json) and let the search go on.
CAUGHT = (ConfigError, BudgetError, TrainingDiverged, NotNeeded)


class _Objective:
    def __init__(self, space: SearchSpace, overrides: dict[str, Any], study_dir: Path, num_labels: int,
                 trials: int, study_name: str = STUDY_NAME):
        self.space = space
        self.overrides = overrides
        self.study_dir = study_dir
        self.num_labels = num_labels
        self.trials = trials
        self.study_name = study_name
        self._hf_configs: dict[str, Any] = {}

    def _hf_config(self, model: str) -> Any:
        from budgetlora.budget import load_config_only

        if model not in self._hf_configs:
            self._hf_configs[model] = load_config_only(model, self.num_labels)
        return self._hf_configs[model]

    def _check_needed(self, trial: Any) -> None:
        """Two workers may each create a trial at the same moment when one more was needed: trial
        numbers are handed out in order under a lock, so the later one steps back, untrained."""
        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        ahead = sum(t.number < trial.number for t in trial.study.get_trials(deepcopy=False, states=live))
        if ahead >= self.trials:
            trial.set_user_attr("error", f"not run: the study had {ahead} finished or running trials, "
                                         f"{self.trials} were asked for")
            raise NotNeeded(trial.user_attrs["error"])

    def _configure(self, trial: Any) -> RunConfig:
        """The trial's settings, counted against the budget before anything is loaded or written."""
        from budgetlora import budget

        values = {name: p.suggest(trial) for name, p in self.space.params.items()}
        run_dir = self.study_dir / f"trial-{trial.number}"
        args = train_args(self.space, self.overrides, values, str(run_dir))
        for stale in ("error", "pruned_reason"):  # a retried trial starts with a copy of the failed one's
            if trial.user_attrs.get(stale) is not None:
                trial.set_user_attr(stale, None)
        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("train_command", "budgetlora " + shlex.join(args))
        try:
            cfg = trial_config(self.space, self.overrides, values, run_dir)
            count = budget.estimate(cfg, self._hf_config(cfg.model.model), self.num_labels)
        except ConfigError as e:
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("model", cfg.model.model)
        trial.set_user_attr("head", cfg.model.head)
        trial.set_user_attr("trainable_params", count.total)
        if count.total >= cfg.budget:
            reason = f"over budget: {count.total:,} trainable parameters >= {cfg.budget:,} ({count.describe()})"
            trial.set_user_attr("pruned_reason", reason)
            raise optuna.TrialPruned(reason)
        return cfg

    def __call__(self, trial: Any) -> float:
        from budgetlora.training.trainer import train

        self._check_needed(trial)
        cfg = self._configure(trial)

        def on_eval(step: int, accuracy: float) -> None:
            trial.report(accuracy, step)
            if trial.should_prune():
                trial.set_user_attr("pruned_reason", f"below the median of earlier trials at step {step} ({accuracy:.4f})")
                raise optuna.TrialPruned(f"step {step}")

        run_dir = Path(cfg.output_dir)
        claim_trial_folder(run_dir, trial.number, self.study_name)
        _share_cache(run_dir, self.study_dir / "cache")
        try:
            with _signals_restored():
                metrics = train(cfg, command=trial.user_attrs["train_command"], on_eval=on_eval)
        except (ConfigError, BudgetError, TrainingDiverged) as e:
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("trainable_params", metrics["trainable_params"])
        trial.set_user_attr("train_runtime_s", metrics["train_runtime_s"])
        trial.set_user_attr("train_samples_per_second", metrics["train_samples_per_second"])
        return float(metrics["best_eval_accuracy"])


# ---------------------------------------------------------------------------------------------
# A worker: any number of them, on any machines, run the same command against one study.
# ---------------------------------------------------------------------------------------------


def _num_labels(cfg: RunConfig) -> int:
    if cfg.data.label_names:
        return len(cfg.data.label_names)
    from budgetlora.data import prepare_splits

    return len(prepare_splits(cfg.data, cfg.train.seed).label_names)


def _finished(study: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _census(study: Any) -> dict[TrialState, int]:
    """Trials by state, after failing those whose worker stopped sending heartbeats (their copies
    are queued as WAITING trials by the retry callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    counts = {state: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


@dataclass
class WorkPlan:
    trials: int  # finished trials the study should reach
    timeout: Optional[float] = None  # start no new trial after this many seconds
    poll_s: float = 10.0  # how often a worker with nothing to start looks at the study again
    heartbeat_s: int = HEARTBEAT_S  # for messages
    on_trial: Optional[Callable[[str], None]] = None  # told one line per trial this worker ends


def _taken_over(study: Any, number: int) -> bool:
    """Whether another worker called trial `number` dead (no heartbeats) and queued its copy."""
    return any(number in t.system_attrs.get("retry_history", []) for t in study.get_trials(deepcopy=False))


def work(study: Any, objective: Callable[[Any], float], plan: WorkPlan) -> int:
    """Run trials until the study has `plan.trials` finished ones; returns how many this worker ran.

    A worker with nothing left to start waits while other workers' trials run, because one of
    them may die and its trial come back to be run again. This worker itself starts at most
    `trials` minus the finished trials it found, so a study whose trials all fail still ends."""
    started = time.monotonic()
    allowance = plan.trials - _finished(study)
    ran = 0
    waiting_said = False
    callbacks = [lambda _study, trial: plan.on_trial(trial_line(trial))] if plan.on_trial else []
    current: list[int] = []

    def run_one(trial: Any) -> float:
        current[:] = [trial.number]
        return objective(trial)

    while ran < allowance:
        counts = _census(study)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if finished >= plan.trials or (plan.timeout is not None and time.monotonic() - started > plan.timeout):
            break
        if counts[TrialState.WAITING] == 0 and finished + counts[TrialState.RUNNING] >= plan.trials:
            if not waiting_said:
                log.info("%d trials are running on other workers; waiting for them (one whose worker stops "
                         "sending heartbeats is run again here)", counts[TrialState.RUNNING])
                waiting_said = True
            time.sleep(plan.poll_s)
            continue
        current.clear()
        try:
            study.optimize(run_one, n_trials=1, gc_after_trial=True, catch=CAUGHT, callbacks=callbacks)
        except Exception as e:
            # Optuna refuses to record a result for a trial that is already failed; when another
            # worker failed it for missing heartbeats, its copy is queued: drop this result.
            if isinstance(e, UserError) or not current or not _taken_over(study, current[0]):
                raise
            log.warning("trial %d was called dead by another worker (no heartbeat for %d s) and runs again; its "
                        "result here is dropped: on a machine this busy, give a larger --heartbeat",
                        current[0], GRACE_BEATS * plan.heartbeat_s)
            continue
        ran += 1
    return ran


def _check_request(trials: int, timeout: Optional[float], overrides: dict[str, Any], place: StudyPlace) -> None:
    if trials < 1:
        raise ConfigError(f"trials: must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout: must be > 0 seconds, got {timeout}")
    if place.heartbeat_s < 1:
        raise ConfigError(f"heartbeat: must be >= 1 second, got {place.heartbeat_s}")
    if not place.name.strip():
        raise ConfigError("study-name: give a non-empty name")
    for name in ("output_dir", "overwrite"):
        if name in overrides:
            raise ConfigError(f"search: --{name.replace('_', '-')} is not used; trials go to --study-dir/trial-<n>")


def run_search(
    space_file: Union[str, Path],
    study_dir: Union[str, Path],
    trials: int,
    timeout: Optional[float] = None,
    overrides: Optional[dict[str, Any]] = None,
    place: StudyPlace = StudyPlace(),
    on_trial: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Run (or join, or continue) the study until it has `trials` finished trials; write search.json."""
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}
    _check_request(trials, timeout, overrides, place)
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
    study = open_study(study_dir, space, space.seed if space.seed is not None else base.train.seed, overrides, place)
    objective = _Objective(space, overrides, study_dir, _num_labels(base), trials, place.name)
    plan = WorkPlan(trials, timeout, poll_s=min(float(place.heartbeat_s), 10.0), heartbeat_s=place.heartbeat_s,
                    on_trial=on_trial)
    shown = place.shown(study_dir)
    interrupted = False
    with _database_errors(shown):
        try:
            work(study, objective, plan)
        except (TrainingInterrupted, KeyboardInterrupt):
            interrupted = True
        summary = write_summary(study, space, overrides, study_dir, shown)
    if interrupted:
        raise TrainingInterrupted(f"search interrupted; its {summary['counts']['complete'] + summary['counts']['pruned']} "
                                  f"finished trials are kept in {shown}: run the same command again to continue")
    return summary


# ---------------------------------------------------------------------------------------------
# The summary: every worker's trials, read from the shared study.
# ---------------------------------------------------------------------------------------------


def trial_line(trial: Any) -> str:
    state = trial.state.name.lower()
    params = trial.user_attrs.get("trainable_params")
    what = f"value {trial.value:.4f}" if trial.value is not None else (
        trial.user_attrs.get("pruned_reason") or trial.user_attrs.get("error") or "")
    retry_of = trial.system_attrs.get("failed_trial")
    again = f" (trial {retry_of} again: its worker stopped)" if retry_of is not None else ""
    return (f"trial {trial.number}{again}: {state}" + (f", {params:,} trainable params" if params else "")
            + (f": {what}" if what else ""))


def trial_record(trial: Any, space: SearchSpace) -> dict[str, Any]:
    params = {}
    for name, stored in trial.params.items():
        p = space.params.get(name)
        params[name] = p.value_of(stored) if p else stored
    value = trial.value
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else value,
        "params": params,
        "trainable_params": attrs.get("trainable_params"),
        "run_dir": attrs.get("run_dir"),
        "worker": attrs.get("worker"),
        "retry_of": trial.system_attrs.get("failed_trial"),
        "model": attrs.get("model"),
        "head": attrs.get("head"),
        "train_command": attrs.get("train_command"),
        "pruned_reason": attrs.get("pruned_reason"),
        "error": attrs.get("error"),
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "train_runtime_s": attrs.get("train_runtime_s"),
        "train_samples_per_second": attrs.get("train_samples_per_second"),
        "started": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "finished": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }


def write_summary(study: Any, space: SearchSpace, overrides: dict[str, Any], study_dir: Path,
                  storage: Optional[str] = None) -> dict[str, Any]:
    """<study_dir>/search.json: every trial of the study, whichever worker ran it, and the best one
    with the train flags that rebuild it."""
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
        "study_name": study.study_name,
        "storage": storage or str(study_dir / STUDY_DB),
        "space_file": str(space.path),
        "metric": "best validation accuracy",
        "direction": "maximize",
        "workers": sorted({r["worker"] for r in records if r["worker"]}),
        "counts": {k.lower(): v for k, v in counts.items()} | {"over_budget": over_budget},
        "best": None if best is None else {**best, "train_command": best_command},
        "trials": records,
    }
    atomic_write_json(study_dir / SUMMARY_FILE, summary)
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    lines = [f"study {summary['study_name']} ({summary['storage']}): {len(summary['trials'])} trials from "
             f"{len(summary['workers'])} workers: {c['complete']} complete, {c['pruned']} pruned "
             f"({c['over_budget']} over budget), {c['fail']} failed; all in {Path(summary['study_dir']) / SUMMARY_FILE}"]
    best = summary["best"]
    if best is None:
        lines.append("no trial has completed yet")
    else:
        lines.append(f"best: trial {best['number']}, validation accuracy {best['value']:.4f}, "
                     f"{best['trainable_params']:,} trainable params, {json.dumps(best['params'])}")
        lines.append(f"  {best['train_command']}")
    return "\n".join(lines)


__all__ = ["load_space", "run_search", "summary_text", "StudyPlace", "SearchSpace", "Param", "trial_config",
           "train_args", "flag_value"]
