"""Loading a model's config and tokenizer from the Hugging Face Hub or a local folder, with one
clear line when that fails (offline, a typo, a folder without the files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from budgetlora.config import ModelConfig
from budgetlora.errors import ConfigError, ModelLoadError


def wrap_load_error(what: str, name: str, err: Exception) -> ModelLoadError:
    """The one-line error for a failed load of `what` from `name` (a folder or a Hub id)."""
    local = Path(name).expanduser()
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if local.exists():
        return ModelLoadError(f"{name}: cannot load the {what} from this folder ({text})")
    if "/" in name and (name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists()):
        return ModelLoadError(f"{name}: no such model folder")
    return ModelLoadError(
        f"{name}: cannot load the {what} from the Hugging Face Hub ({text}). If this machine is "
        "offline, pass a local model folder with --model (see `get_pretrained.sh` in the README)"
    )


def quiet_transformers() -> None:
    """Hide transformers' expected warnings ('newly initialized head') and progress bars; our own
    log says what trains."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_hf_config(cfg: ModelConfig, num_labels: Optional[int] = None,
                   label_names: Optional[list[str]] = None) -> Any:
    """The transformers config of `cfg.model` (Hub id, model folder or a config.json file), with
    the labels set when given. Nothing but the config is read, so a folder holding only
    config.json and the tokenizer is enough to plan or check a budget."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if num_labels is not None:
        if num_labels < 1:
            raise ConfigError(f"labels: need at least one class, got {num_labels}")
        kwargs["num_labels"] = num_labels
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    path = Path(cfg.model).expanduser()
    try:
        return AutoConfig.from_pretrained(str(path) if path.is_file() else cfg.model, **kwargs)
    except Exception as e:  # transformers raises OSError/ValueError/HF errors for the same cause
        if path.is_file():
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelLoadError(f"{cfg.model}: not a usable model config.json ({text})") from None
        raise wrap_load_error("model config", cfg.model, e) from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise wrap_load_error("tokenizer", name_or_path, e) from None
