"""Unpickling a stranger's file without running its code: an allow-list of the globals that
pickled Hugging Face Datasets and pandas DataFrames need, and a walk over the opcodes that refuses
sizes the file cannot hold, before anything is unpickled.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import types
from pathlib import Path
from typing import Any

import numpy as np

from budgetlora.data.checks import PathLike, check_file, data_error, read_bytes, short_reason
from budgetlora.errors import DataError


# The globals that pickled HF Datasets and pandas DataFrames refer to: collected by unpickling
# such objects (string, numeric, nullable, categorical, datetime, pyarrow-backed columns; nested
# features; select()ed and concatenated datasets; protocols 0-5) with a logging find_class under
# numpy 2, pandas 3 and datasets 5, plus the names older versions write (numpy.core.*,
# pandas.core.frame.DataFrame, ...).
# Each is a data constructor: calling it with any arguments builds a value and runs nothing else.
# Notably absent: builtins.getattr/eval/exec/__import__/open (generic code gadgets; this also means
# datasets with Array2D features, which pickle through getattr, are refused), and
# datasets.table.MemoryMappedTable (it opens a path named inside the pickle).
_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    k: frozenset(v)
    for k, v in {
        "builtins": ["bytearray", "bytes", "complex", "dict", "frozenset", "list", "set", "slice",
                     "tuple", "range", "object", "str", "int", "float", "bool"],
        "copyreg": ["_reconstructor"],
        "_codecs": ["encode"],
        "collections": ["OrderedDict"],
        "datetime": ["datetime", "date", "time", "timedelta", "timezone"],
        "numpy": ["ndarray", "dtype"],
        "numpy._core.multiarray": ["_reconstruct", "scalar"],
        "numpy.core.multiarray": ["_reconstruct", "scalar"],
        "numpy._core.numeric": ["_frombuffer"],
        "numpy.core.numeric": ["_frombuffer"],
        "numpy._core._internal": ["_convert_to_stringdtype_kwargs"],
        "pyarrow.lib": [
            "type_for_alias", "field", "schema", "chunked_array", "py_buffer", "_restore_array",
            "_reconstruct_record_batch", "_reconstruct_table", "list_", "large_list", "list_view",
            "large_list_view", "map_", "struct", "union", "dictionary", "timestamp", "decimal128",
            "decimal256", "binary", "run_end_encoded",
        ],
        "datasets.arrow_dataset": ["Dataset"],
        "datasets.info": ["DatasetInfo", "PostProcessedInfo"],
        "datasets.splits": ["NamedSplit", "NamedSplitAll", "SplitInfo", "SplitDict"],
        "datasets.utils.version": ["Version"],
        "datasets.table": ["InMemoryTable", "ConcatenationTable"],
        "pandas": [
            "DataFrame", "Series", "Index", "RangeIndex", "MultiIndex", "DatetimeIndex",
            "TimedeltaIndex", "PeriodIndex", "CategoricalIndex", "IntervalIndex", "Categorical",
            "CategoricalDtype", "StringDtype", "ArrowDtype", "BooleanDtype", "Int8Dtype",
            "Int16Dtype", "Int32Dtype", "Int64Dtype", "UInt8Dtype", "UInt16Dtype", "UInt32Dtype",
            "UInt64Dtype", "Float32Dtype", "Float64Dtype", "DatetimeTZDtype", "PeriodDtype",
            "IntervalDtype", "NA", "NaT", "Timestamp", "Timedelta", "Period", "Interval",
        ],
        "pandas.arrays": [
            "ArrowStringArray", "ArrowStringArrayNumpySemantics", "StringArray", "IntegerArray",
            "FloatingArray", "BooleanArray", "DatetimeArray", "TimedeltaArray", "PeriodArray",
            "IntervalArray", "ArrowExtensionArray", "NumpyExtensionArray", "Categorical",
        ],
        "pandas._libs.internals": ["_unpickle_block"],
        "pandas._libs.arrays": ["__pyx_unpickle_NDArrayBacked"],
        "pandas._libs.interval": ["__pyx_unpickle_IntervalMixin"],
        "pandas._libs.tslibs.timestamps": ["_unpickle_timestamp"],
        "pandas._libs.tslibs.timedeltas": ["_timedelta_unpickle"],
        "pandas._libs.tslibs.nattype": ["__nat_unpickle"],
        "pandas.core.internals.managers": ["BlockManager", "SingleBlockManager"],
        "pandas.core.internals.blocks": ["new_block"],
        "pandas.core.indexes.base": ["_new_Index", "Index"],
        "pandas.core.indexes.datetimes": ["_new_DatetimeIndex"],
        "pandas.core.indexes.period": ["_new_PeriodIndex"],
        "pandas.core.indexes.range": ["RangeIndex"],
        "pandas.core.indexes.multi": ["MultiIndex"],
        "pandas.core.frame": ["DataFrame"],
        "pandas.core.series": ["Series"],
    }.items()
}


def _allowed_by_kind(module: str, name: str) -> bool:
    """Whole families of plain value classes that are allowed by what they are, not by name."""
    import importlib

    if module.startswith("datasets.features."):  # feature types: Value, ClassLabel, List, ...
        kind = "datasets-feature"
    elif module == "pandas._libs.tslibs.offsets":  # a DatetimeIndex's freq (Day, Hour, ...)
        kind = "pandas-offset"
    elif module == "numpy.dtypes":
        kind = "numpy-dtype"
    else:
        return False
    # Import only inside these three trusted packages; the object must be a class defined there.
    obj = getattr(importlib.import_module(module), name, None)
    if not isinstance(obj, type) or obj.__module__ != module:
        return False
    if kind == "pandas-offset":
        from pandas.tseries.offsets import BaseOffset

        return issubclass(obj, BaseOffset)
    if kind == "numpy-dtype":
        return issubclass(obj, np.dtype)
    return True


class _AllowListUnpickler(pickle._Unpickler):
    """Pickle's reference (pure-Python) unpickler with two guards.

    The pure-Python one rather than the C one because it can be guarded at the BUILD opcode.
    Sizes written in the stream are checked beforehand by `_check_pickle_opcodes`.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, source: Path):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        import _compat_pickle

        # Python 2 pickles name builtins "__builtin__" and so on; map before checking.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = (
            "." not in name  # a dotted name reaches attributes of an allowed object (Cls.method)
            and (name in _ALLOWED_GLOBALS.get(module, ()) or _allowed_safely(module, name))
        )
        if not allowed:
            raise data_error(self._source, f"the pickle refers to {module}.{name}, which is not on the "
                                           "allow-list; refusing to load it")
        return super().find_class(module, name)

    def _load_build(self) -> None:
        # BUILD sets attributes on the object below it. Aimed at an allowed class or function
        # instead of an instance, it would patch that class for the whole process.
        target = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(target, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
            raise data_error(self._source, "the pickle tries to modify a class or function while loading; "
                                           "refusing to load it")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def _allowed_safely(module: str, name: str) -> bool:
    try:
        return _allowed_by_kind(module, name)
    except Exception:  # e.g. a module of that family that does not exist in this version
        return False


def safe_load_pickle(path: PathLike) -> Any:
    """Unpickle a file, resolving only allow-listed globals (HF Dataset / pandas DataFrame parts).

    A pickle names the callables that rebuild it, so a plain `pickle.load` of a stranger's file can
    run any command. Here every global goes through `find_class`, which refuses anything not on the
    allow-list before it is imported or called.
    """
    p = Path(path)
    check_file(p)
    data = read_bytes(p)
    _check_pickle_opcodes(p, data)
    try:
        return _AllowListUnpickler(io.BytesIO(data), p).load()
    except DataError:
        raise
    except RecursionError:
        raise data_error(p, "the pickle is nested too deeply to load") from None
    except Exception as e:  # a damaged or foreign pickle fails in many ways, all of them the file's
        raise data_error(p, f"not a readable pickle ({type(e).__name__}: {short_reason(e)}); save the data "
                            "again, or use CSV/JSONL/Parquet") from None


def _check_pickle_opcodes(p: Path, data: bytes) -> None:
    """Walk the opcodes without running any: refuse streams whose sizes do not fit the file.

    Unpicklers trust the lengths written in the stream: a BYTEARRAY8 claiming 4 GB makes the
    reference unpickler allocate (and zero) 4 GB before noticing the bytes are not there. The
    opcode walker reads every argument and fails on the first one that runs past the end.
    """
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int) and arg > len(data):
                raise data_error(p, f"not a valid pickle (memo index {arg} in a {len(data)}-byte file)")
    except DataError:
        raise
    except Exception as e:
        raise data_error(p, f"not a readable pickle ({short_reason(e)}); save the data again, or use "
                            "CSV/JSONL/Parquet") from None
