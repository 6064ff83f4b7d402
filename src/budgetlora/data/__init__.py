"""Reading text-classification data, carving validation, tokenizing once and batching by length.

Everything a user can get wrong in a data file ends as a `DataError` whose one-line message names
the file (and the line, row or field where known) and says what to do. Anything else escaping
from here is a bug.

Loading is split in two stages: a per-format reader turns the file into raw columns (texts, raw
labels, ids, plus where each row came from, for messages), and `_finish` applies the rules that
are the same for every format (empty texts, label ids vs names, label ranges, ids).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import math
import os
import pickle
import pickletools
import re
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from budgetlora.config import DataConfig
from budgetlora.errors import DataError

log = logging.getLogger(__name__)

AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
ID_COLUMNS = ("id", "ID", "Id")
SUFFIXES = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".pkl": "pickle", ".pickle": "pickle",
}
# Kaggle's copy of AG News has a header instead of the original's bare 3 columns.
_KAGGLE_AG_HEADER = ["class index", "title", "description"]
# At most 18 digits: int() of a longer string is slow or refused (3.11's digit limit), and no
# label id is that large anyway.
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------
# Text sets
# ---------------------------------------------------------------------------------------------


@dataclass
class TextSet:
    """Texts with their labels (None when the file has none), optional ids and class names."""

    texts: list[str]
    labels: Optional[list[int]]
    ids: Optional[list]
    name: str
    label_names: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> "TextSet":
        idx = [int(i) for i in indices]

        def pick(xs: Optional[list]) -> Optional[list]:
            return None if xs is None else [xs[i] for i in idx]

        return TextSet(
            texts=pick(self.texts),
            labels=pick(self.labels),
            ids=pick(self.ids),
            name=self.name,
            label_names=list(self.label_names) if self.label_names is not None else None,
        )


@dataclass
class Splits:
    train: TextSet
    eval: TextSet
    label_names: list[str]


def _err(where: Any, what: str) -> DataError:
    # The CLI prints the message as one line; embedded library messages may carry newlines.
    return DataError(" ".join(f"{where}: {what}".split()))


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Loading files
# ---------------------------------------------------------------------------------------------


def load_file(
    path: PathLike,
    cfg: Optional[DataConfig] = None,
    *,
    require_labels: bool = True,
    label_names: Optional[list[str]] = None,
) -> TextSet:
    """Load one local file (format from the extension, header/no-header from the content).

    `require_labels=True` is the training/evaluation mode: every row needs a label, and rows with
    an empty or whitespace-only text are dropped with a warning, since they carry no signal.
    `require_labels=False` is the prediction mode: EVERY row is kept, in order, with empty texts
    as "" (a submission needs one output row per input row); labels are returned if the file has
    a complete label column, else None.

    `label_names` (then `cfg.label_names`) fixes the name -> id mapping; pass the training set's
    names when loading its evaluation file so both use the same ids.
    """
    cfg = cfg if cfg is not None else DataConfig()
    p = Path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise _err(p, f"unsupported file type {p.suffix or '(no extension)'!r}; use one of "
                      f"{', '.join(sorted(SUFFIXES))}")
    _check_file(p)
    names = label_names if label_names is not None else cfg.label_names
    if kind in ("csv", "tsv"):
        raw = _read_delimited(p, "," if kind == "csv" else "\t", cfg)
    elif kind == "json":
        raw = _read_json(p, cfg)
    elif kind == "parquet":
        raw = _read_parquet(p, cfg)
    else:
        raw = _read_pickle(p, cfg)
    return _finish(p, raw, name=p.stem, cfg=cfg, require_labels=require_labels, label_names=names)


def load_hub_dataset(dataset_id: str, split: str, cfg: Optional[DataConfig] = None) -> TextSet:
    """One split of a Hugging Face Hub dataset (labels required, names from its ClassLabel)."""
    cfg = cfg if cfg is not None else DataConfig()
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # offline, unknown id, unknown split, broken cache: all the user's to fix
        raise _err(
            dataset_id,
            f"cannot load the dataset from the Hugging Face Hub ({type(e).__name__}: {_short(e)}). "
            "If this machine is offline, pass local files with --train-file/--eval-file",
        ) from None
    raw = _raw_from_hf_dataset(dataset_id, ds, cfg, check_buffers=False)
    short = dataset_id.rstrip("/").split("/")[-1]
    return _finish(dataset_id, raw, name=f"{short}-{split}", cfg=cfg, require_labels=True,
                   label_names=cfg.label_names)


@dataclass
class _Raw:
    """A file's columns before the common rules are applied."""

    texts: list
    labels: Optional[list]  # None: the file has no label column
    ids: Optional[list]
    where: Callable[[int], str]  # row index -> "line 12" / "row 12", for messages
    columns: list[str]  # what the file offers, for "no such column" messages
    label_names: Optional[list[str]] = None  # the file's own class names (ClassLabel, AG format)
    one_based: bool = False  # labels are class numbers 1..K (AG News original)


def _check_file(p: Path) -> None:
    if not p.exists():
        raise _err(p, "file not found; check the path")
    if p.is_dir():
        raise _err(p, "is a folder, not a data file; give the file itself")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise _err(p, f"cannot read the file ({e.strerror or e})") from None
    if size == 0:
        raise _err(p, "the file is empty; give a file with data rows")


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise _err(p, f"cannot read the file ({e.strerror or e}); check its permissions") from None


def _read_text(p: Path) -> str:
    data = _read_bytes(p)
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start + bom
        raise _err(p, f"not UTF-8 text (byte 0x{data[offset]:02x} at byte offset {offset}); "
                      "re-save the file as UTF-8") from None
    if not text.strip():
        raise _err(p, "the file is empty (only whitespace); give a file with data rows")
    return text


def _is_int_text(v: Any) -> bool:
    return isinstance(v, str) and _INT_RE.fullmatch(v.strip()) is not None


def _read_delimited(p: Path, delimiter: str, cfg: DataConfig) -> _Raw:
    text = _read_text(p)
    rows: list[list[str]] = []
    lines: list[int] = []  # first line of each record (records may span lines inside quotes)
    # strict=True turns broken quoting into an error instead of silently gluing rows together.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    old_limit = csv.field_size_limit()
    # The default 128 KiB field limit would reject a long (but valid) text; the tokenizer
    # truncates it later anyway. The limit is process-wide, hence restored afterwards.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                if "unexpected end of data" in str(e):
                    raise _err(p, f"line {start}: a quoted field never closes (unterminated \"); "
                                  "close the quote, and write a \" inside a field as \"\"") from None
                raise _err(p, f"line {reader.line_num}: malformed CSV ({_short(e)}); quote fields "
                              "that contain the delimiter and write a \" inside a field as \"\"") from None
            if not row:  # blank line
                continue
            rows.append(row)
            lines.append(start)
    finally:
        csv.field_size_limit(old_limit)
    if not rows:
        raise _err(p, "the file has no rows; give a file with data rows")

    def where(i: int) -> str:
        return f"line {lines[i]}"

    first = rows[0]
    if _is_int_text(first[0]):
        return _headerless(p, rows, lines, where)
    header = [h.strip() for h in first]
    data_rows, data_lines = rows[1:], lines[1:]

    def where_data(i: int) -> str:
        return f"line {data_lines[i]}"

    for row, line in zip(data_rows, data_lines):
        if len(row) != len(header):
            raise _err(p, f"line {line}: {len(row)} fields, but the header on line {lines[0]} has "
                          f"{len(header)}; quote fields that contain the delimiter and write a \" "
                          "inside a field as \"\"")
    if not data_rows:
        raise _err(p, "the file has a header but no data rows")
    columns = {}
    for j, h in enumerate(header):
        columns.setdefault(h, j)  # the first of duplicate names wins

    def col(name: str) -> Optional[list]:
        j = columns.get(name)
        return None if j is None else [r[j] for r in data_rows]

    if cfg.text_column not in columns and [h.lower() for h in header] == _KAGGLE_AG_HEADER:
        texts = [r[1] + " " + r[2] for r in data_rows]
        return _Raw(texts, [r[0] for r in data_rows], _id_column(col, columns), where_data, header,
                    label_names=AG_NEWS_LABELS, one_based=True)
    if cfg.text_column not in columns:
        raise _err(p, f"no text column {cfg.text_column!r} in the header (columns: "
                      f"{', '.join(header)}); pass --text-column NAME")
    ids = _id_column(col, columns)
    if ids is not None:
        ids = [int(v) if _canonical_int(v) else v for v in ids]
    return _Raw(col(cfg.text_column), col(cfg.label_column), ids, where_data, header)


def _canonical_int(v: str) -> bool:
    # Only ids that print back identically become ints ("007" stays a string).
    return _is_int_text(v) and str(int(v)) == v


def _id_column(col: Callable[[str], Optional[list]], columns: Any) -> Optional[list]:
    for name in ID_COLUMNS:
        if name in columns:
            return col(name)
    return None


def _headerless(p: Path, rows: list[list[str]], lines: list[int], where: Callable[[int], str]) -> _Raw:
    n = len(rows[0])
    if n not in (2, 3):
        raise _err(p, f"line {lines[0]}: starts with a class number but has {n} fields; a file "
                      "without header needs 3 fields (class, title, description: AG News) or 2 "
                      "(class, text); otherwise add a header row")
    for row, line in zip(rows, lines):
        if len(row) != n:
            raise _err(p, f"line {line}: {len(row)} fields, expected {n} like line {lines[0]}; "
                          "quote every field and write a \" inside a field as \"\"")
    # AG News keeps literal backslash sequences such as "\n" and "\$" in its texts. They are kept
    # as they are: the Hugging Face `ag_news` texts and the Kaggle test set (whose AG rows are
    # verbatim HF texts) keep them too, so rewriting them here would make training texts differ
    # from the texts the model is later asked to classify.
    if n == 3:
        # Hugging Face's ag_news text is exactly title + " " + description.
        texts = [r[1] + " " + r[2] for r in rows]
    else:
        texts = [r[1] for r in rows]
    return _Raw(texts, [r[0] for r in rows], None, where, ["class", "title", "description"][:n],
                label_names=AG_NEWS_LABELS, one_based=True)


def _read_json(p: Path, cfg: DataConfig) -> _Raw:
    text = _read_text(p)
    records: list = []
    lines: list[int] = []
    try:
        if text.lstrip().startswith("["):
            try:
                records = json.loads(text)
            except ValueError as e:
                raise _err(p, f"not valid JSON ({_short(e)}); write one JSON object per line "
                              "(JSON lines) or an array of objects") from None
            lines = list(range(1, len(records) + 1))
            unit = "record"
        else:
            unit = "line"
            # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and similar, which
            # splitlines() would treat as line ends.
            for n, line in enumerate(text.split("\n"), start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError as e:
                    raise _err(p, f"line {n}: not valid JSON ({_short(e)}); write one JSON object "
                                  "per line") from None
                lines.append(n)
    except RecursionError:
        raise _err(p, "JSON nested too deeply; write one flat JSON object per row") from None

    def where(i: int) -> str:
        return f"{unit} {lines[i]}"

    if not records:
        raise _err(p, "no JSON records in the file; give one JSON object per line")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise _err(p, f"{where(i)}: expected a JSON object like "
                          f'{{"{cfg.text_column}": "...", "{cfg.label_column}": 0}}, got {type(r).__name__}')
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(map(str, r)))
    columns = list(keys)
    if cfg.text_column not in keys:
        raise _err(p, f"no text field {cfg.text_column!r} in any record (fields: "
                      f"{', '.join(columns[:20])}); pass --text-column NAME")
    texts = [r.get(cfg.text_column) for r in records]
    labels = [r.get(cfg.label_column) for r in records] if cfg.label_column in keys else None
    ids = None
    for name in ID_COLUMNS:
        if name in keys:
            ids = [r.get(name) for r in records]
            break
    return _Raw(texts, labels, ids, where, columns)


def _read_parquet(p: Path, cfg: DataConfig) -> _Raw:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise _err(p, f"not a readable Parquet file ({_short(e)}); re-export it, e.g. with "
                      "DataFrame.to_parquet") from None
    names = None
    meta = table.schema.metadata or {}
    if b"huggingface" in meta:  # written by datasets: the schema carries its ClassLabel names
        try:
            import datasets

            feature = datasets.Features.from_arrow_schema(table.schema).get(cfg.label_column)
            if isinstance(feature, datasets.ClassLabel):
                names = list(feature.names)
        except Exception:
            names = None  # the names are a convenience; ids still load without them
    return _raw_from_arrow(p, table, cfg, names)


def _raw_from_arrow(where_name: Any, table: Any, cfg: DataConfig, names: Optional[list[str]]) -> _Raw:
    columns = [c for c in table.column_names if not c.startswith("__index_level_")]

    def col(name: str) -> Optional[list]:
        if name not in columns:
            return None
        try:
            return table.column(name).to_pylist()
        except Exception as e:
            raise _err(where_name, f"column {name!r} cannot be read ({_short(e)})") from None

    if cfg.text_column not in columns:
        raise _err(where_name, f"no text column {cfg.text_column!r} (columns: {', '.join(columns)}); "
                               "pass --text-column NAME")
    ids = next((col(n) for n in ID_COLUMNS if n in columns), None)
    return _Raw(col(cfg.text_column), col(cfg.label_column), ids, lambda i: f"row {i + 1}", columns,
                label_names=names)


def _raw_from_hf_dataset(where_name: Any, ds: Any, cfg: DataConfig, *, check_buffers: bool) -> _Raw:
    import datasets

    if check_buffers:
        # Arrays rebuilt from a pickle are not validated by pyarrow; a crafted one could point
        # outside its buffers. Full validation refuses it before any value is read.
        try:
            ds.data.table.validate(full=True)
            if ds._indices is not None:
                ds._indices.table.validate(full=True)
        except Exception as e:
            raise _err(where_name, f"the pickled dataset's Arrow data is corrupt ({_short(e)})") from None
    names = None
    feature = ds.features.get(cfg.label_column) if ds.features else None
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    try:
        table = ds.with_format("arrow")[:]  # applies a select()/shuffle() index mapping
    except Exception as e:
        raise _err(where_name, f"the dataset's rows cannot be read ({_short(e)})") from None
    return _raw_from_arrow(where_name, table, cfg, names)


def _read_pickle(p: Path, cfg: DataConfig) -> _Raw:
    import datasets
    import pandas as pd

    obj = safe_load_pickle(p)
    kind = {datasets.Dataset: "dataset", pd.DataFrame: "DataFrame"}.get(type(obj))
    if kind is not None:
        try:
            if kind == "dataset":
                return _raw_from_hf_dataset(p, obj, cfg, check_buffers=True)
            return _raw_from_dataframe(p, obj, cfg)
        except DataError:
            raise
        except Exception as e:  # an object rebuilt from damaged bytes can fail anywhere it is read
            raise _err(p, f"the pickled {kind} is damaged ({type(e).__name__}: {_short(e)}); save "
                          "it again, or use CSV/JSONL/Parquet") from None
    raise _err(p, f"the pickle holds a {type(obj).__name__}, not a Hugging Face Dataset or a pandas "
                  "DataFrame; save one of those (or use CSV/JSONL/Parquet)")


def _validate_arrow_backed(values: Any) -> None:
    # pandas 3 stores strings in pyarrow arrays; rebuilt from a pickle, they are unvalidated
    # (see _raw_from_hf_dataset).
    pa_array = getattr(values, "_pa_array", None)
    if pa_array is not None:
        pa_array.validate(full=True)


def _raw_from_dataframe(p: Path, df: Any, cfg: DataConfig) -> _Raw:
    _validate_arrow_backed(df.columns.array)
    columns = [str(c) for c in df.columns]

    def col(name: str) -> Optional[list]:
        if name not in columns:
            return None
        series = df.iloc[:, columns.index(name)]
        _validate_arrow_backed(series.array)
        return series.tolist()

    if cfg.text_column not in columns:
        raise _err(p, f"no text column {cfg.text_column!r} in the DataFrame (columns: "
                      f"{', '.join(columns[:20])}); pass --text-column NAME")
    ids = next((col(n) for n in ID_COLUMNS if n in columns), None)
    return _Raw(col(cfg.text_column), col(cfg.label_column), ids, lambda i: f"row {i + 1}", columns)


# ---------------------------------------------------------------------------------------------
# Rules common to every format
# ---------------------------------------------------------------------------------------------


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    return type(v).__name__ in ("NAType", "NaTType")  # pandas' missing markers, without pandas


def _text_value(v: Any) -> Optional[str]:
    """The text of one cell, "" when missing, None when it is not text at all."""
    if _is_missing(v):
        return ""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (JSON "\ud800") would break the tokenizer
            v = v.encode("utf-8", "replace").decode("utf-8")
        return v
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return str(v)
    return None


_MISSING = object()


def _label_value(v: Any) -> Any:
    """int, str (a name), _MISSING, or raises ValueError for values that are no label at all."""
    if _is_missing(v):
        return _MISSING
    if isinstance(v, bool):
        raise ValueError("a boolean")
    if isinstance(v, (int, np.integer)):
        v = int(v)
        # -1 is the Hugging Face convention for "no label" (e.g. unlabelled test splits).
        return _MISSING if v == -1 else v
    if isinstance(v, (float, np.floating)):
        if v.is_integer() and abs(v) < 1e18:
            return _label_value(int(v))
        raise ValueError(f"{v!r}, not an integer")
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return _MISSING
        if _INT_RE.fullmatch(s):
            return _label_value(int(s))
        return s
    raise ValueError(f"a {type(v).__name__}")


def _finish(
    src: Any,
    raw: _Raw,
    *,
    name: str,
    cfg: DataConfig,
    require_labels: bool,
    label_names: Optional[list[str]],
) -> TextSet:
    texts: list[str] = []
    for i, v in enumerate(raw.texts):
        t = _text_value(v)
        if t is None:
            raise _err(src, f"{raw.where(i)}: the text is a {type(v).__name__}, not a string; "
                            f"check --text-column ({cfg.text_column!r})")
        texts.append(t)
    keep = list(range(len(texts)))
    if require_labels:
        # Training/evaluation: an empty text carries no signal and only distorts the loss and the
        # accuracy, so such rows are dropped (and counted). Prediction keeps them (see load_file).
        keep = [i for i in keep if texts[i].strip()]
        dropped = len(texts) - len(keep)
        if dropped:
            log.warning("%s: dropped %d row(s) with an empty text", src, dropped)
        if not keep:
            raise _err(src, "no rows left: every text is empty; check --text-column "
                            f"({cfg.text_column!r})")
        if raw.labels is None:
            raise _err(src, f"no label column {cfg.label_column!r} (columns: {', '.join(raw.columns)}); "
                            "pass --label-column NAME, or use predict for unlabelled files")
    labels, names = _labels(src, raw, keep, cfg, require_labels, label_names)
    ids = None
    if raw.ids is not None:
        ids = [raw.ids[i] for i in keep]
        ids = [v.item() if isinstance(v, np.generic) else v for v in ids]
    return TextSet(texts=[texts[i] for i in keep], labels=labels, ids=ids, name=name, label_names=names)


def _labels(
    src: Any,
    raw: _Raw,
    keep: list[int],
    cfg: DataConfig,
    require_labels: bool,
    label_names: Optional[list[str]],
) -> tuple[Optional[list[int]], Optional[list[str]]]:
    names = list(label_names) if label_names is not None else (
        list(raw.label_names) if raw.label_names is not None else None
    )
    if raw.labels is None:
        return None, names
    values: list[Any] = []
    first_int = first_name = None
    for i in keep:
        try:
            v = _label_value(raw.labels[i])
        except ValueError as e:
            raise _err(src, f"{raw.where(i)}: the label is {e}; labels must be integer ids or "
                            f"class names (check --label-column, {cfg.label_column!r})") from None
        if v is _MISSING:
            if require_labels:
                raise _err(src, f"{raw.where(i)}: no label; give every row a label, or drop the row")
            log.warning("%s: %s has no label, so the file's labels are ignored", src, raw.where(i))
            return None, names
        if isinstance(v, int) and first_int is None:
            first_int = i
        if isinstance(v, str) and first_name is None:
            first_name = i
        values.append(v)
    if raw.one_based and first_name is not None:
        raise _err(src, f"{raw.where(first_name)}: the class must be a number 1..{len(names or AG_NEWS_LABELS)}, "
                        f"got {raw.labels[first_name]!r}")
    if first_int is not None and first_name is not None:
        raise _err(src, f"labels mix integer ids ({raw.where(first_int)}: {raw.labels[first_int]!r}) "
                        f"and names ({raw.where(first_name)}: {raw.labels[first_name]!r}); use one kind")
    if first_name is not None:
        if names is None:
            names = sorted(set(values))
        index = {n: k for k, n in enumerate(names)}
        out = []
        for i, v in zip(keep, values):
            if v not in index:
                raise _err(src, f"{raw.where(i)}: unknown label {v!r}; known labels: "
                                f"{', '.join(names)} (fix the row or pass --label-names)")
            out.append(index[v])
        return out, names
    out = []
    for i, v in zip(keep, values):
        if raw.one_based:
            k = len(names) if names is not None else len(AG_NEWS_LABELS)
            if not 1 <= v <= k:
                raise _err(src, f"{raw.where(i)}: class {v} is outside 1..{k}; a file without header "
                                "numbers its classes from 1 (AG News format); add a header row "
                                "'label,text' to use 0-based ids")
            v -= 1
        elif v < 0:
            raise _err(src, f"{raw.where(i)}: label {v} is negative; label ids start at 0")
        elif names is not None and v >= len(names):
            raise _err(src, f"{raw.where(i)}: label {v} is out of range for the {len(names)} label "
                            f"names ({', '.join(names)}); fix the row or pass --label-names")
        out.append(v)
    return out, names


# ---------------------------------------------------------------------------------------------
# Pickles
# ---------------------------------------------------------------------------------------------

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
            raise _err(self._source, f"the pickle refers to {module}.{name}, which is not on the "
                                     "allow-list; refusing to load it")
        return super().find_class(module, name)

    def _load_build(self) -> None:
        # BUILD sets attributes on the object below it. Aimed at an allowed class or function
        # instead of an instance, it would patch that class for the whole process.
        target = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(target, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
            raise _err(self._source, "the pickle tries to modify a class or function while loading; "
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
    _check_file(p)
    data = _read_bytes(p)
    _check_pickle_opcodes(p, data)
    try:
        return _AllowListUnpickler(io.BytesIO(data), p).load()
    except DataError:
        raise
    except RecursionError:
        raise _err(p, "the pickle is nested too deeply to load") from None
    except Exception as e:  # a damaged or foreign pickle fails in many ways, all of them the file's
        raise _err(p, f"not a readable pickle ({type(e).__name__}: {_short(e)}); save the data "
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
                raise _err(p, f"not a valid pickle (memo index {arg} in a {len(data)}-byte file)")
    except DataError:
        raise
    except Exception as e:
        raise _err(p, f"not a readable pickle ({_short(e)}); save the data again, or use "
                      "CSV/JSONL/Parquet") from None


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train_idx, val_idx): `fraction` of the rows held out, every class in proportion.

    Each class gives round-to-total shares (largest remainders), and keeps at least one row in
    train. Both index lists come in a seeded order in which every PREFIX is itself close to
    stratified, so "the first N rows" (max_train_samples, max_eval_samples) are a stratified
    random sample rather than the head of a possibly sorted file.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    total = min(max(1, round(fraction * n)), n - len(classes)) if n > len(classes) else 0
    ideal = counts * (total / n) if n else counts.astype(float)
    take = np.floor(ideal).astype(np.int64)
    caps = np.maximum(counts - 1, 0)
    take = np.minimum(take, caps)
    remainder = ideal - take
    # Ties in the remainders are broken at random (seeded) so no class is favoured by its id.
    order = np.lexsort((rng.random(len(classes)), -remainder))
    short = total - int(take.sum())
    for c in order:
        if short <= 0:
            break
        if take[c] < caps[c]:
            take[c] += 1
            short -= 1
    train_parts, val_parts = [], []
    for c, k in zip(classes, take):
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(len(members))]
        val_parts.append(members[:k])
        train_parts.append(members[k:])
    return _prefix_stratified(train_parts, rng), _prefix_stratified(val_parts, rng)


def _prefix_stratified(parts: list[np.ndarray], rng: np.random.Generator) -> list[int]:
    # Row r of a class with m rows sits at (r + u) / m on [0, 1); sorting all rows by that key
    # interleaves the classes in proportion, with random jitter.
    keys, idx = [], []
    for members in parts:
        m = len(members)
        if m == 0:
            continue
        keys.append((np.arange(m) + rng.random(m)) / m)
        idx.append(members)
    if not idx:
        return []
    all_keys, all_idx = np.concatenate(keys), np.concatenate(idx)
    return [int(i) for i in all_idx[np.argsort(all_keys, kind="stable")]]


def prepare_splits(cfg: DataConfig, seed: int) -> Splits:
    """The training and validation texts of a run, with consistent label ids and names."""
    if cfg.train_file:
        train_src: Any = cfg.train_file
        train = load_file(cfg.train_file, cfg)
    else:
        train_src = cfg.dataset
        train = load_hub_dataset(cfg.dataset, "train", cfg)
    assert train.labels is not None
    known = cfg.label_names or train.label_names
    if cfg.eval_file:
        eval_set = load_file(cfg.eval_file, cfg, label_names=known)
        assert eval_set.labels is not None
        if known is None and eval_set.label_names is not None:
            raise _err(cfg.eval_file, "the labels are names but the training file's are integer "
                                      "ids; use the same kind in both, or pass --label-names")
    else:
        tr_idx, va_idx = stratified_split(train.labels, cfg.val_fraction, seed)
        if not va_idx or not tr_idx:
            raise _err(train_src, f"{len(train)} labelled rows are too few to hold out "
                                  f"val_fraction={cfg.val_fraction} for validation; give more rows "
                                  "or an --eval-file")
        eval_set = train.subset(va_idx)
        eval_set.name = f"{train.name}-val"
        train = train.subset(tr_idx)
    # Truncate only after the split, so a held-out row can never come back as a training row.
    if cfg.max_train_samples is not None:
        train = train.subset(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples is not None:
        eval_set = eval_set.subset(range(min(cfg.max_eval_samples, len(eval_set))))
    names = cfg.label_names or train.label_names or eval_set.label_names
    present = set(train.labels or [])
    eval_src = cfg.eval_file or f"{train_src} (validation split)"
    if names is None:
        k = max(present) + 1
        for i, y in enumerate(eval_set.labels or []):
            if y >= k:
                raise _err(eval_src, f"row {i + 1}: class {y} is in the evaluation rows but not in "
                                     "the training rows; add training rows of that class")
        names = [str(c) for c in range(k)]
    for c, label in enumerate(names):
        if c not in present:
            hint = ("; raise --max-train-samples" if cfg.max_train_samples is not None else "")
            raise _err(train_src, f"no training rows of class {c} ({label!r}) although the label "
                                  f"names list {len(names)} classes; add rows of that class or "
                                  f"pass --label-names with only the classes present{hint}")
    for i, y in enumerate(eval_set.labels or []):
        if y >= len(names):
            raise _err(eval_src, f"row {i + 1}: label {y} is out of range for the {len(names)} "
                                 "label names; fix the row or pass --label-names")
    train.label_names = list(names)
    eval_set.label_names = list(names)
    return Splits(train=train, eval=eval_set, label_names=list(names))


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------

# Characters kept per allowed token before tokenizing: far more than any tokenizer needs to fill
# max_length, and it makes a megabyte-long text cost no more than a normal one.
CHARS_PER_TOKEN_LIMIT = 64
_CACHE_VERSION = b"budgetlora-encode-v1"


@dataclass
class Encoded:
    """Token ids per row, unpadded (padding is per batch, in the collator)."""

    input_ids: list[list[int]]
    labels: Optional[list[int]]

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash that changes whenever the tokenizer would produce different ids."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())  # vocab, normalizer, pre-tokenizer, special tokens
        # transformers leaves the last call's truncation/padding settings on the backend; they are
        # call arguments (max_length is hashed separately), not part of what the tokenizer is.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "truncation_side", "right")).encode())
    return h.hexdigest()


def update_hash_with_texts(h: Any, texts: Sequence[str]) -> None:
    """Feed texts into a hashlib object, length-prefixed so that ["ab", "c"] != ["a", "bc"]."""
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)


def _cache_key(texts: list[str], tokenizer: Any, max_length: int) -> str:
    h = hashlib.sha256(_CACHE_VERSION)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"{max_length}/{CHARS_PER_TOKEN_LIMIT}/{len(texts)}".encode())
    update_hash_with_texts(h, texts)
    return h.hexdigest()[:40]


def encode(
    texts: list[str],
    tokenizer: Any,
    max_length: int,
    labels: Optional[Sequence[int]] = None,
    cache_dir: Optional[Path] = None,
) -> Encoded:
    """Tokenize every text once (truncated, unpadded), reusing a cached result when there is one."""
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} texts")
    label_list = [int(y) for y in labels] if labels is not None else None
    limit = CHARS_PER_TOKEN_LIMIT * max_length
    cut = [t[:limit] for t in texts]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"tokens-{_cache_key(cut, tokenizer, max_length)}.npz"
        ids = _load_cached(path, len(cut))
        if ids is not None:
            return Encoded(ids, label_list)
    if cut:
        # One batched call: the fast tokenizer encodes the whole list in Rust, off the train loop.
        # Only the ids: the collator builds the masks, and turning the tokenizer's unused masks
        # into Python lists took up to a fifth of this call (7,600 texts: 0.63-0.76 s -> 0.42-0.69 s).
        ids = tokenizer(cut, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        ids = [x if isinstance(x, list) else list(x) for x in ids]
    else:
        ids = []
    if path is not None:
        _save_cached(path, ids)
    return Encoded(ids, label_list)


def _load_cached(path: Path, n: int) -> Optional[list[list[int]]]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, offsets = z["ids"], z["offsets"]
        if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(flat) or np.any(np.diff(offsets) < 0):
            raise ValueError("inconsistent offsets")
    except Exception as e:  # a damaged cache is only a lost shortcut
        log.warning("ignoring unreadable token cache %s (%s)", path, _short(e))
        return None
    flat_list = flat.tolist()
    bounds = offsets.tolist()
    return [flat_list[bounds[i]:bounds[i + 1]] for i in range(n)]


def _save_cached(path: Path, ids: list[list[int]]) -> None:
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file (runs may share a cache).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, ids=flat, offsets=offsets)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        log.warning("could not write the token cache %s (%s)", path, _short(e))


def length_filter_indices(lengths: list[int], lo_pct: float, hi_pct: float) -> list[int]:
    """Rows whose length lies within the [lo_pct, hi_pct] percentiles (inclusive): rows to keep."""
    if not len(lengths):
        return []
    arr = np.asarray(lengths)
    lo, hi = np.percentile(arr, [lo_pct, hi_pct])
    return [int(i) for i in np.flatnonzero((arr >= lo) & (arr <= hi))]


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


# Rows are sorted by length within buckets of this many batches: large enough that batches hold
# rows of similar length (little padding), small enough that each epoch's order stays random.
LENGTH_BUCKET_BATCHES = 50


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches of rows of similar length, so per-batch padding stays small.

    Per epoch (own generator seeded with seed + epoch; the global RNG is never touched): shuffle
    all rows, cut into mega-buckets of `bucket_batches * batch_size`, sort each by length, cut
    into batches, shuffle the batch order. Randomness comes from the shuffles; homogeneity from
    the sort within a bucket.

    Resuming mid-epoch: `state_dict(batches_done)` records the epoch and how many of its batches
    were consumed; after `load_state_dict(state)` the next iteration yields exactly the remaining
    batches of that epoch (and `len()` counts only those), later epochs are complete again. Pass
    `batches_done` explicitly when a DataLoader prefetches (the sampler's own count would include
    batches fetched but not trained on).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        bucket_batches: int = LENGTH_BUCKET_BATCHES,
        drop_last: bool = False,
    ):
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError("batch_size and bucket_batches must be >= 1")
        self.lengths = [int(x) for x in lengths]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._skip = 0

    def batches(self, epoch: Optional[int] = None) -> list[list[int]]:
        """All batches of an epoch, in order (a pure function of seed and epoch)."""
        epoch = self.epoch if epoch is None else epoch
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            out = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        else:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            perm = torch.randperm(n, generator=g).tolist()
            mega = self.bucket_batches * bs
            out = []
            for start in range(0, n, mega):
                bucket = sorted(perm[start:start + mega], key=self.lengths.__getitem__, reverse=True)
                out.extend(bucket[i:i + bs] for i in range(0, len(bucket), bs))
            order = torch.randperm(len(out), generator=g).tolist()
            out = [out[i] for i in order]
        if self.drop_last:
            out = [b for b in out if len(b) == bs]
        return out

    def __iter__(self):
        batches = self.batches()
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for b in batches[skip:]:
            self._yielded += 1
            yield b

    def __len__(self) -> int:
        n = len(self.lengths)
        full = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return max(full - self._skip, 0)

    def state_dict(self, batches_done: Optional[int] = None) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "batches_done": self._yielded if batches_done is None else int(batches_done),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, not {self.seed}")
        self.epoch = int(state["epoch"])
        self._skip = int(state["batches_done"])
        self._yielded = self._skip


def train_batch_sampler(lengths: Sequence[int], batch_size: int, *, seed: int,
                        group_by_length: bool = True) -> LengthGroupedBatchSampler:
    """The training loop's sampler: shuffled, length-grouped batches (or plain shuffled batches
    when `group_by_length` is off), never dropping the last short batch."""
    return LengthGroupedBatchSampler(
        lengths, batch_size, shuffle=True, seed=seed, drop_last=False,
        bucket_batches=LENGTH_BUCKET_BATCHES if group_by_length else 1,
    )


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Inference batches, longest rows first (memory peaks show at once); every index once."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class EncodedDataset(torch.utils.data.Dataset):
    """Row i -> {"input_ids": list[int], "labels": int} (no "labels" when there are none), plus
    row i of each `extra` tensor under its name (e.g. "teacher_logits" for distillation)."""

    def __init__(self, enc: Encoded, extra: Optional[dict[str, torch.Tensor]] = None):
        self.enc = enc
        self.extra = dict(extra or {})
        for name, values in self.extra.items():
            if len(values) != len(enc.input_ids):
                raise ValueError(f"{name}: {len(values)} rows for {len(enc.input_ids)} encoded rows")

    def __len__(self) -> int:
        return len(self.enc.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"input_ids": self.enc.input_ids[i]}
        if self.enc.labels is not None:
            item["labels"] = self.enc.labels[i]
        for name, values in self.extra.items():
            item[name] = values[i]
        return item


class Collator:
    """Pads a list of rows on the right to the longest row of THIS batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [list(map(int, it["input_ids"])) for it in items]
        width = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if items and all("labels" in it for it in items):
            out["labels"] = torch.tensor([int(it["labels"]) for it in items], dtype=torch.long)
        for name in items[0] if items else ():
            if isinstance(items[0][name], torch.Tensor):  # EncodedDataset's per-row extras
                out[name] = torch.stack([it[name] for it in items])
        return out
