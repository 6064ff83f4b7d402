"""Tests of budgetlora.data.safe_pickle: only allow-listed globals, never executed otherwise."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pandas as pd
import pytest

from budgetlora.config import DataConfig
from budgetlora.data import load_file, safe_load_pickle
from budgetlora.errors import DataError

CFG = DataConfig()


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "MARKER"
    for protocol in (0, 2, 4, 5):
        path = tmp_path / f"evil{protocol}.pkl"
        path.write_bytes(pickle.dumps(_RunsACommand(marker), protocol=protocol))
        with pytest.raises(DataError, match=r"refers to (posix|os|nt)\.system, which is not on the allow-list"):
            safe_load_pickle(path)
        with pytest.raises(DataError, match=str(path)):
            load_file(path, CFG)
        assert not marker.exists()


def _global_pickle(module: str, name: str, arg: str = "1") -> bytes:
    # protocol-0 pickle that calls module.name(arg)
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("builtins", "open"), ("subprocess", "Popen"), ("os", "system"), ("__builtin__", "eval"),
    ("datasets.arrow_dataset", "Dataset.from_file"), ("datasets.table", "MemoryMappedTable"),
    ("pandas", "read_csv"), ("pandas.io.pickle", "read_pickle"), ("numpy", "load"),
])
def test_refused_globals(tmp_path, module, name):
    path = tmp_path / "g.pkl"
    path.write_bytes(_global_pickle(module, name))
    with pytest.raises(DataError, match="not on the allow-list; refusing to load it"):
        safe_load_pickle(path)


def test_absurd_sizes_are_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.pkl"
    # protocol 5 BYTEARRAY8 claiming 1 TiB in a 12-byte file
    path.write_bytes(b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b".")
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_load_pickle(path)
    memo = tmp_path / "memo.pkl"
    memo.write_bytes(b"\x80\x02N" + b"r" + (2**31).to_bytes(4, "little") + b".")  # LONG_BINPUT
    with pytest.raises(DataError, match="memo index"):
        safe_load_pickle(memo)


def test_build_into_a_class_is_refused(tmp_path):
    # c pandas DataFrame, then BUILD with (None, {"tolist": 1}): would patch the class itself
    data = b"cpandas\nDataFrame\n(N}Vtolist\nI1\nstb."
    path = tmp_path / "patch.pkl"
    path.write_bytes(data)
    with pytest.raises(DataError, match="modify a class"):
        safe_load_pickle(path)
    assert not hasattr(pd.DataFrame, "tolist")
