"""Reading a text-classification file (CSV, TSV, JSON lines, Parquet, a pickled Dataset or
DataFrame) or a Hub dataset into a `TextSet`.

Loading is split in two stages: a per-format reader turns the file into raw columns (texts, raw
labels, ids, plus where each row came from, for messages), and `_finish` applies the rules that
are the same for every format (empty texts, label ids vs names, label ranges, ids).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from budgetlora.config import DataConfig
from budgetlora.data.checks import PathLike, check_file, data_error, read_bytes, short_reason
from budgetlora.data.safe_pickle import safe_load_pickle
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


# TextSet lives beside the readers that make it, not in splits: splits imports the readers.
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
        raise data_error(p, f"unsupported file type {p.suffix or '(no extension)'!r}; use one of "
                            f"{', '.join(sorted(SUFFIXES))}")
    check_file(p)
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
        raise data_error(
            dataset_id,
            f"cannot load the dataset from the Hugging Face Hub ({type(e).__name__}: {short_reason(e)}). "
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


def _read_text(p: Path) -> str:
    data = read_bytes(p)
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start + bom
        raise data_error(p, f"not UTF-8 text (byte 0x{data[offset]:02x} at byte offset {offset}); "
                            "re-save the file as UTF-8") from None
    if not text.strip():
        raise data_error(p, "the file is empty (only whitespace); give a file with data rows")
    return text


def _is_int_text(v: Any) -> bool:
    return isinstance(v, str) and _INT_RE.fullmatch(v.strip()) is not None


def _csv_records(p: Path, delimiter: str) -> tuple[list[list[str]], list[int]]:
    """The file's non-blank records and the line each starts on (a record may span lines inside
    quotes); broken quoting is a DataError that names the line."""
    rows: list[list[str]] = []
    lines: list[int] = []
    # strict=True turns broken quoting into an error instead of silently gluing rows together.
    reader = csv.reader(io.StringIO(_read_text(p), newline=""), delimiter=delimiter, strict=True)
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
                    raise data_error(p, f"line {start}: a quoted field never closes (unterminated "
                                        "\"); close the quote, and write a \" inside a field as "
                                        "\"\"") from None
                raise data_error(p, f"line {reader.line_num}: malformed CSV ({short_reason(e)}); "
                                    "quote fields that contain the delimiter and write a \" inside "
                                    "a field as \"\"") from None
            if not row:  # blank line
                continue
            rows.append(row)
            lines.append(start)
    finally:
        csv.field_size_limit(old_limit)
    if not rows:
        raise data_error(p, "the file has no rows; give a file with data rows")
    return rows, lines


def _read_delimited(p: Path, delimiter: str, cfg: DataConfig) -> _Raw:
    rows, lines = _csv_records(p, delimiter)

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
            raise data_error(p, f"line {line}: {len(row)} fields, but the header on line {lines[0]} has "
                                f"{len(header)}; quote fields that contain the delimiter and write a \" "
                                "inside a field as \"\"")
    if not data_rows:
        raise data_error(p, "the file has a header but no data rows")
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
        raise data_error(p, f"no text column {cfg.text_column!r} in the header (columns: "
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
        raise data_error(p, f"line {lines[0]}: starts with a class number but has {n} fields; a file "
                            "without header needs 3 fields (class, title, description: AG News) or 2 "
                            "(class, text); otherwise add a header row")
    for row, line in zip(rows, lines):
        if len(row) != n:
            raise data_error(p, f"line {line}: {len(row)} fields, expected {n} like line {lines[0]}; "
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
                raise data_error(p, f"not valid JSON ({short_reason(e)}); write one JSON object per line "
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
                    raise data_error(p, f"line {n}: not valid JSON ({short_reason(e)}); write one JSON object "
                                        "per line") from None
                lines.append(n)
    except RecursionError:
        raise data_error(p, "JSON nested too deeply; write one flat JSON object per row") from None

    def where(i: int) -> str:
        return f"{unit} {lines[i]}"

    if not records:
        raise data_error(p, "no JSON records in the file; give one JSON object per line")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise data_error(p, f"{where(i)}: expected a JSON object like "
                                f'{{"{cfg.text_column}": "...", "{cfg.label_column}": 0}}, '
                                f"got {type(r).__name__}")
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(map(str, r)))
    columns = list(keys)
    if cfg.text_column not in keys:
        raise data_error(p, f"no text field {cfg.text_column!r} in any record (fields: "
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
        raise data_error(p, f"not a readable Parquet file ({short_reason(e)}); re-export it, e.g. with "
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
            raise data_error(where_name, f"column {name!r} cannot be read ({short_reason(e)})") from None

    if cfg.text_column not in columns:
        raise data_error(where_name, f"no text column {cfg.text_column!r} (columns: {', '.join(columns)}); "
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
            raise data_error(where_name, "the pickled dataset's Arrow data is corrupt "
                                         f"({short_reason(e)})") from None
    names = None
    feature = ds.features.get(cfg.label_column) if ds.features else None
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    try:
        table = ds.with_format("arrow")[:]  # applies a select()/shuffle() index mapping
    except Exception as e:
        raise data_error(where_name, f"the dataset's rows cannot be read ({short_reason(e)})") from None
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
            raise data_error(p, f"the pickled {kind} is damaged ({type(e).__name__}: {short_reason(e)}); save "
                                "it again, or use CSV/JSONL/Parquet") from None
    raise data_error(p, f"the pickle holds a {type(obj).__name__}, not a Hugging Face Dataset or a pandas "
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
        raise data_error(p, f"no text column {cfg.text_column!r} in the DataFrame (columns: "
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
            raise data_error(src, f"{raw.where(i)}: the text is a {type(v).__name__}, not a string; "
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
            raise data_error(src, "no rows left: every text is empty; check --text-column "
                                  f"({cfg.text_column!r})")
        if raw.labels is None:
            raise data_error(src, f"no label column {cfg.label_column!r} (columns: {', '.join(raw.columns)}); "
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
            raise data_error(src, f"{raw.where(i)}: the label is {e}; labels must be integer ids or "
                                  f"class names (check --label-column, {cfg.label_column!r})") from None
        if v is _MISSING:
            if require_labels:
                raise data_error(src, f"{raw.where(i)}: no label; give every row a label, or drop the row")
            log.warning("%s: %s has no label, so the file's labels are ignored", src, raw.where(i))
            return None, names
        if isinstance(v, int) and first_int is None:
            first_int = i
        if isinstance(v, str) and first_name is None:
            first_name = i
        values.append(v)
    if raw.one_based and first_name is not None:
        k = len(names or AG_NEWS_LABELS)
        raise data_error(src, f"{raw.where(first_name)}: the class must be a number 1..{k}, "
                              f"got {raw.labels[first_name]!r}")
    if first_int is not None and first_name is not None:
        raise data_error(src, f"labels mix integer ids ({raw.where(first_int)}: {raw.labels[first_int]!r}) "
                              f"and names ({raw.where(first_name)}: {raw.labels[first_name]!r}); use one kind")
    if first_name is not None:
        if names is None:
            names = sorted(set(values))
        index = {n: k for k, n in enumerate(names)}
        out = []
        for i, v in zip(keep, values):
            if v not in index:
                raise data_error(src, f"{raw.where(i)}: unknown label {v!r}; known labels: "
                                      f"{', '.join(names)} (fix the row or pass --label-names)")
            out.append(index[v])
        return out, names
    out = []
    for i, v in zip(keep, values):
        if raw.one_based:
            k = len(names) if names is not None else len(AG_NEWS_LABELS)
            if not 1 <= v <= k:
                raise data_error(src, f"{raw.where(i)}: class {v} is outside 1..{k}; a file without header "
                                      "numbers its classes from 1 (AG News format); add a header row "
                                      "'label,text' to use 0-based ids")
            v -= 1
        elif v < 0:
            raise data_error(src, f"{raw.where(i)}: label {v} is negative; label ids start at 0")
        elif names is not None and v >= len(names):
            raise data_error(src, f"{raw.where(i)}: label {v} is out of range for the {len(names)} label "
                                  f"names ({', '.join(names)}); fix the row or pass --label-names")
        out.append(v)
    return out, names
