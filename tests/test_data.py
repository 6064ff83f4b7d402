"""Tests of budgetlora.data: every file format, every user error, the splits, tokenization, batching."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import os
import pickle
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetlora.config import DataConfig
from budgetlora.data import (
    AG_NEWS_LABELS,
    Collator,
    Encoded,
    EncodedDataset,
    LengthGroupedBatchSampler,
    Splits,
    TextSet,
    encode,
    length_filter_indices,
    load_file,
    load_hub_dataset,
    prepare_splits,
    safe_load_pickle,
    sorted_batches,
    stratified_split,
)
from budgetlora.errors import DataError
from conftest import shared_path
from tiny import make_texts, make_tokenizer

CFG = DataConfig()


def write_ag_rows(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    return path


def frame(n: int = 12, names: bool = False) -> pd.DataFrame:
    texts, labels = make_texts(n, seed=5)
    texts[1] = 'a "quoted" text, with a comma,\ta tab and\na newline'
    lab = [AG_NEWS_LABELS[y] for y in labels] if names else labels
    return pd.DataFrame({"id": list(range(100, 100 + n)), "text": texts, "label": lab})


def write_frame(df: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".json":
        df.to_json(path, orient="records", force_ascii=False)  # an array of objects
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".pkl":
        df.to_pickle(path)
    else:
        raise AssertionError(suffix)
    return path


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def test_ag_original_format(tmp_path):
    path = write_ag_rows(tmp_path / "ag.csv", [
        (3, "Wall St. Bears (Reuters)", 'Reuters - Short-sellers, Wall Street\'s "dwindling"\\band.'),
        (1, 'Title with "quotes"', "Line one\\nline two, with commas"),
        (4, "Only a title", ""),
        (2, "", "Only a description"),
    ])
    raw = path.read_text()
    assert '""dwindling""' in raw and "\\n" in raw  # the file really uses "" and literal \n
    ts = load_file(path, CFG)
    assert ts.labels == [2, 0, 3, 1]
    assert ts.label_names == AG_NEWS_LABELS
    assert ts.ids is None and ts.name == "ag"
    assert ts.texts[0] == 'Wall St. Bears (Reuters) Reuters - Short-sellers, Wall Street\'s "dwindling"\\band.'
    # literal backslash sequences are kept, as in HF ag_news and the Kaggle test texts
    assert ts.texts[1] == 'Title with "quotes" Line one\\nline two, with commas'
    assert ts.texts[2] == "Only a title "
    assert ts.texts[3] == " Only a description"


def test_ag_fixture_matches_generator(tiny_train_csv):
    ts = load_file(tiny_train_csv, CFG)
    texts, labels = make_texts(240, seed=1)
    assert ts.labels == labels
    assert ts.texts == texts  # title + " " + description gives the words back


def test_two_field_headerless(tmp_path):
    path = write_ag_rows(tmp_path / "text_only.csv", [(4, "chip news"), (1, "war news"), (2, "goal")])
    ts = load_file(path, CFG)
    assert ts.texts == ["chip news", "war news", "goal"]
    assert ts.labels == [3, 0, 1]
    assert ts.label_names == AG_NEWS_LABELS


def test_kaggle_ag_header(tmp_path):
    path = tmp_path / "kaggle.csv"
    path.write_text('Class Index,Title,Description\n3,"Oil, up","Prices rise"\n2,Match,Goal\n')
    ts = load_file(path, CFG)
    assert ts.texts == ["Oil, up Prices rise", "Match Goal"]
    assert ts.labels == [2, 1]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pkl"])
@pytest.mark.parametrize("names", [False, True])
def test_round_trip(tmp_path, suffix, names):
    df = frame(names=names)
    ts = load_file(write_frame(df, tmp_path / f"data{suffix}"), CFG)
    assert ts.texts == df["text"].tolist()
    assert ts.ids == df["id"].tolist()
    assert ts.name == "data"
    if names:
        assert ts.label_names == sorted(AG_NEWS_LABELS)  # no names given: sorted unique names
        assert [ts.label_names[y] for y in ts.labels] == df["label"].tolist()
        # with the names given, their order decides the ids
        ts2 = load_file(tmp_path / f"data{suffix}", CFG, label_names=AG_NEWS_LABELS)
        assert ts2.labels == [AG_NEWS_LABELS.index(x) for x in df["label"]]
        assert ts2.label_names == AG_NEWS_LABELS
    else:
        assert ts.labels == df["label"].tolist()
        assert ts.label_names is None


def test_jsonl_other_columns_and_string_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"ID": "a1", "sentence": "x y", "y": "pos"}, {"ID": "a2", "sentence": "z", "y": "neg"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    cfg = DataConfig(text_column="sentence", label_column="y")
    ts = load_file(path, cfg)
    assert ts.texts == ["x y", "z"] and ts.ids == ["a1", "a2"]
    assert ts.label_names == ["neg", "pos"] and ts.labels == [1, 0]


def test_jsonl_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b\x85c", "label": 0}, ensure_ascii=False) + "\r\n", newline="")
    assert load_file(path, CFG).texts == ["a\u2028b\x85c"]


def test_cfg_label_names_map_names(tmp_path):
    path = write_frame(frame(names=True), tmp_path / "d.csv")
    ts = load_file(path, DataConfig(label_names=list(AG_NEWS_LABELS)))
    assert ts.label_names == AG_NEWS_LABELS
    assert ts.labels == frame()["label"].tolist()


def test_hf_dataset_pickle_and_parquet_keep_classlabel_names(tmp_path):
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["bad", "good", "fine"], "label": [0, 1, 1]}, features=feats)
    ds = ds.select([2, 0])  # an index mapping must be honoured
    pkl = tmp_path / "ds.pkl"
    pkl.write_bytes(pickle.dumps(ds))
    ts = load_file(pkl, CFG)
    assert ts.texts == ["fine", "bad"] and ts.labels == [1, 0] and ts.label_names == ["neg", "pos"]
    pq = tmp_path / "ds.parquet"
    ds.to_parquet(str(pq))
    ts = load_file(pq, CFG)
    assert ts.texts == ["fine", "bad"] and ts.labels == [1, 0] and ts.label_names == ["neg", "pos"]


def test_one_megabyte_text(tmp_path):
    big = "word " * 200_000
    path = write_ag_rows(tmp_path / "big.csv", [(1, "title", big), (2, "small", "text")])
    limit = csv.field_size_limit()
    ts = load_file(path, CFG)
    assert len(ts.texts[0]) > 1_000_000 and ts.labels == [0, 1]
    assert csv.field_size_limit() == limit  # the process-wide csv limit is restored


# ---------------------------------------------------------------------------------------------
# Empty texts and prediction mode
# ---------------------------------------------------------------------------------------------


def test_empty_texts_dropped_for_training_kept_for_predict(tmp_path, caplog):
    path = tmp_path / "d.csv"
    path.write_text("id,text,label\n0,hello,1\n1,,0\n2,   ,1\n3,world,0\n")
    with caplog.at_level(logging.WARNING, logger="budgetlora.data"):
        ts = load_file(path, CFG)
    assert ts.texts == ["hello", "world"] and ts.labels == [1, 0] and ts.ids == [0, 3]
    assert "dropped 2 row" in caplog.text
    pred = load_file(path, CFG, require_labels=False)
    assert pred.texts == ["hello", "", "   ", "world"] and pred.ids == [0, 1, 2, 3]
    assert pred.labels == [1, 0, 1, 0]


def test_predict_without_labels(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("ID,text\n0,a\n1,\n2,c\n")
    ts = load_file(path, CFG, require_labels=False)
    assert ts.labels is None and ts.ids == [0, 1, 2] and ts.texts == ["a", "", "c"]
    with pytest.raises(DataError, match=r"test\.csv: no label column 'label'"):
        load_file(path, CFG)


def test_predict_ignores_incomplete_labels(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    assert load_file(path, CFG, require_labels=False).labels is None
    with pytest.raises(DataError, match=r"t\.jsonl: line 2: no label"):
        load_file(path, CFG)


# ---------------------------------------------------------------------------------------------
# User errors: one line, naming the file
# ---------------------------------------------------------------------------------------------


def _raises(path, match, **kw):
    with pytest.raises(DataError) as info:
        load_file(path, kw.pop("cfg", CFG), **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert re.search(match, msg), msg
    return msg


def test_error_missing_file(tmp_path):
    _raises(tmp_path / "nope.csv", "file not found")


def test_error_folder(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    _raises(tmp_path / "dir.csv", "is a folder")


@pytest.mark.parametrize("content", [b"", b"  \n\n"])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".tsv"])
def test_error_empty_file(tmp_path, content, suffix):
    path = tmp_path / f"e{suffix}"
    path.write_bytes(content)
    _raises(path, "empty")


def test_error_empty_binary_files(tmp_path):
    for suffix in (".pkl", ".parquet"):
        (tmp_path / f"e{suffix}").write_bytes(b"")
        _raises(tmp_path / f"e{suffix}", "empty")


def test_error_not_utf8_names_byte_offset(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes('"1","caf'.encode() + b"\xe9" + b'","x"\n')
    _raises(path, r"not UTF-8 .*byte offset 8")


def test_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhi,0\n")
    assert load_file(path, CFG).texts == ["hi"]


def test_error_wrong_field_count_names_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('"1","t","d"\n"2","t","d"\n"3","t"\n')
    _raises(path, r"line 3: 2 fields, expected 3")
    path2 = tmp_path / "bad2.csv"
    path2.write_text("text,label\na,1\nb,2,3\n")
    _raises(path2, r"line 3: 3 fields, but the header")


def test_error_unterminated_quote_names_line(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('"1","t","d"\n"2","t","d\n"3","t","d"\n')
    _raises(path, r"line \d+: .*(never closes|malformed)")
    path2 = tmp_path / "quote_end.csv"
    path2.write_text('"1","t","d"\n"2","t","unterminated\n')
    _raises(path2, r"line 2: a quoted field never closes")


def test_error_unsupported_extension(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"x")
    _raises(path, "unsupported file type")


def test_error_no_text_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nhi,0\n")
    _raises(path, r"no text column 'text' .*sentence.*--text-column")


def test_error_all_texts_empty(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n,0\n  ,1\n")
    _raises(path, "no rows left")


def test_error_header_without_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n")
    _raises(path, "no data rows")


def test_error_label_out_of_range(tmp_path):
    path = write_ag_rows(tmp_path / "ag.csv", [(1, "a", "b"), (5, "c", "d")])
    _raises(path, r"line 2: class 5 is outside 1\.\.4")
    path0 = write_ag_rows(tmp_path / "ag0.csv", [(0, "a", "b")])
    _raises(path0, r"headerless|without header|1-based|1\.\.")
    ids = tmp_path / "ids.csv"
    ids.write_text("text,label\na,0\nb,4\n")
    _raises(ids, r"line 3: label 4 is out of range for the 4 label names", label_names=AG_NEWS_LABELS)
    neg = tmp_path / "neg.csv"
    neg.write_text("text,label\na,0\nb,-3\n")
    _raises(neg, r"line 3: label -3 is negative")


def test_error_unknown_label_name(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,World\nb,Weather\n")
    _raises(path, r"line 3: unknown label 'Weather'", label_names=AG_NEWS_LABELS)


def test_error_mixed_label_kinds(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,World\nb,2\n")
    _raises(path, r"mix integer ids .*line 3.* names .*line 2")


def test_error_bad_label_values(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1.5}\n')
    _raises(path, r"line 1: the label is 1\.5, not an integer")
    path2 = tmp_path / "d2.jsonl"
    path2.write_text('{"text": "a", "label": [1]}\n')
    _raises(path2, r"line 1: the label is a list")
    path3 = tmp_path / "d3.jsonl"
    path3.write_text('{"text": {"x": 1}, "label": 1}\n')
    _raises(path3, r"line 1: the text is a dict")


def test_error_missing_label(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,\n")
    _raises(path, r"line 3: no label")


def test_error_bad_json(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    _raises(path, r"line 2: not valid JSON")
    path2 = tmp_path / "d2.jsonl"
    path2.write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    _raises(path2, r"line 2: expected a JSON object")


def test_error_corrupt_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not parquet PAR1")
    _raises(path, "not a readable Parquet file")


def test_error_corrupt_pickle(tmp_path):
    path = tmp_path / "d.pkl"
    path.write_bytes(b"\x80\x04garbage")
    _raises(path, "not a readable pickle")
    other = tmp_path / "list.pkl"
    other.write_bytes(pickle.dumps([1, 2, 3]))
    _raises(other, "holds a list, not a Hugging Face Dataset or a pandas DataFrame")


# ---------------------------------------------------------------------------------------------
# Pickles: only allow-listed globals, never executed otherwise
# ---------------------------------------------------------------------------------------------


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


def test_deeply_nested_json(tmp_path):
    for name, body in (("deep.json", "[" * 100_000), ("deep.jsonl", '{"text": ' + "[" * 100_000 + "\n")):
        path = tmp_path / name
        path.write_text(body)
        _raises(path, "JSON")


def test_build_into_a_class_is_refused(tmp_path):
    # c pandas DataFrame, then BUILD with (None, {"tolist": 1}): would patch the class itself
    data = b"cpandas\nDataFrame\n(N}Vtolist\nI1\nstb."
    path = tmp_path / "patch.pkl"
    path.write_bytes(data)
    with pytest.raises(DataError, match="modify a class"):
        safe_load_pickle(path)
    assert not hasattr(pd.DataFrame, "tolist")


def test_pickled_dataframe_variants_load(tmp_path):
    df = pd.DataFrame({
        "text": pd.array(["a", "b"], dtype="string"),
        "label": pd.Categorical(["x", "y"]),
        "id": np.array([5, 6], dtype=np.int32),
        "when": pd.to_datetime(["2020-01-01", "2021-01-01"]),
        "n": pd.array([1, None], dtype="Int64"),
    })
    for protocol in (2, 4, 5):
        path = tmp_path / f"df{protocol}.pkl"
        path.write_bytes(pickle.dumps(df, protocol=protocol))
        ts = load_file(path, CFG)
        assert ts.texts == ["a", "b"] and ts.labels == [0, 1] and ts.label_names == ["x", "y"]
        assert ts.ids == [5, 6] and all(type(i) is int for i in ts.ids)


def test_pandas_missing_values(tmp_path):
    df = pd.DataFrame({"text": pd.array(["a", None, "c"], dtype="string"),
                       "label": pd.array([1, 0, None], dtype="Int64")})
    path = tmp_path / "na.pkl"
    df.to_pickle(path)
    pred = load_file(path, CFG, require_labels=False)
    assert pred.texts == ["a", "", "c"] and pred.labels is None
    with pytest.raises(DataError, match=r"na\.pkl: row 3: no label"):
        load_file(path, CFG)


@pytest.mark.slow
def test_kaggle_pickle_loads():
    path = shared_path("data", "ag_news_kaggle", "test_unlabelled.pkl")
    ts = load_file(path, CFG, require_labels=False)
    assert len(ts) == 8000 and ts.labels is None and ts.ids is None
    assert all(isinstance(t, str) for t in ts.texts)


@pytest.mark.slow
def test_real_ag_files_load():
    train = load_file(shared_path("data", "ag_news", "train.csv"), CFG)
    assert len(train) == 29877
    assert collections.Counter(train.labels) == {0: 7379, 1: 7273, 2: 7662, 3: 7563}
    assert train.texts[0].startswith("Wall St. Bears Claw Back Into the Black (Reuters) Reuters - ")
    text_only = load_file(shared_path("data", "ag_news", "train_text_only.csv"), CFG)
    assert collections.Counter(text_only.labels) == {0: 4249, 1: 3393, 2: 3138, 3: 4320}


# ---------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------


def test_hub_offline_is_a_clear_quick_error():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_hub_dataset("ag_news", "train", CFG)
    msg = str(info.value)
    assert time.monotonic() - start < 15
    assert msg.startswith("ag_news: cannot load the dataset from the Hugging Face Hub (")
    assert "--train-file/--eval-file" in msg and "\n" not in msg


def test_hub_dataset_conversion(monkeypatch):
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=AG_NEWS_LABELS)})
    texts, labels = make_texts(40, seed=9)
    local = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=feats)
    calls = []

    def fake_load_dataset(dataset_id, split):
        calls.append((dataset_id, split))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ts = load_hub_dataset("fancyzhx/ag_news", "train", CFG)
    assert calls == [("fancyzhx/ag_news", "train")]
    assert ts.name == "ag_news-train" and ts.texts == texts and ts.labels == labels
    assert ts.label_names == AG_NEWS_LABELS
    s = prepare_splits(DataConfig(dataset="fancyzhx/ag_news", val_fraction=0.25), seed=0)
    assert len(s.eval) == 10 and s.label_names == AG_NEWS_LABELS


def test_prepare_splits_without_files_needs_the_hub():
    with pytest.raises(DataError, match="--train-file"):
        prepare_splits(DataConfig(dataset="ag_news"), seed=0)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def test_stratified_split_is_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    labels = rng.choice(4, size=1003, p=[0.4, 0.3, 0.2, 0.1]).tolist()
    tr, va = stratified_split(labels, 0.1, seed=7)
    assert sorted(tr + va) == list(range(len(labels)))
    assert len(va) == round(0.1 * len(labels))
    total, held = collections.Counter(labels), collections.Counter(labels[i] for i in va)
    for c in total:
        assert abs(held[c] - total[c] * len(va) / len(labels)) <= 1
    assert stratified_split(labels, 0.1, seed=7) == (tr, va)
    assert stratified_split(labels, 0.1, seed=8) != (tr, va)
    # every prefix of the train order is close to stratified (max_train_samples takes a prefix)
    for n in (20, 100):
        prefix = collections.Counter(labels[i] for i in tr[:n])
        for c in total:
            assert abs(prefix[c] - total[c] * n / len(labels)) <= 2


def test_stratified_split_keeps_every_class_in_train():
    labels = [0] * 50 + [1] + [2] * 2
    tr, va = stratified_split(labels, 0.5, seed=0)
    assert {labels[i] for i in tr} == {0, 1, 2}


def test_prepare_splits_from_train_file(tiny_train_csv):
    cfg = DataConfig(train_file=str(tiny_train_csv), val_fraction=0.25)
    s = prepare_splits(cfg, seed=3)
    assert isinstance(s, Splits) and s.label_names == AG_NEWS_LABELS
    assert len(s.eval) == 60 and len(s.train) == 180
    assert collections.Counter(s.eval.labels) == {0: 15, 1: 15, 2: 15, 3: 15}
    full = load_file(tiny_train_csv, CFG)
    assert sorted(s.train.texts + s.eval.texts) == sorted(full.texts)
    assert s.eval.name == "train-val" and s.train.label_names == s.eval.label_names == AG_NEWS_LABELS
    again = prepare_splits(cfg, seed=3)
    assert again.eval.texts == s.eval.texts and again.train.texts == s.train.texts


def test_max_samples_apply_after_split(tmp_path):
    path = write_frame(frame(200), tmp_path / "with_ids.csv")  # ids make rows traceable
    base = DataConfig(train_file=str(path), val_fraction=0.2)
    full = prepare_splits(base, seed=0)
    cut = prepare_splits(dataclasses.replace(base, max_train_samples=8), seed=0)
    assert cut.train.ids == full.train.ids[:8]
    assert cut.eval.ids == full.eval.ids  # the held-out rows do not depend on max_train_samples
    assert not set(cut.train.ids) & set(cut.eval.ids)
    assert set(cut.train.labels) == {0, 1, 2, 3}  # a short prefix still has every class
    both = prepare_splits(dataclasses.replace(base, max_train_samples=8, max_eval_samples=5), seed=0)
    assert both.eval.ids == full.eval.ids[:5] and both.train.ids == cut.train.ids


def test_prepare_splits_with_eval_file(tiny_train_csv, tiny_eval_csv):
    cfg = DataConfig(train_file=str(tiny_train_csv), eval_file=str(tiny_eval_csv), max_eval_samples=10)
    s = prepare_splits(cfg, seed=0)
    assert len(s.train) == 240 and len(s.eval) == 10
    assert s.eval.texts == load_file(tiny_eval_csv, CFG).texts[:10]


def test_eval_names_follow_train_mapping(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,pos\nb,neg\nc,pos\nd,neg\n")
    ev = tmp_path / "eval.csv"
    ev.write_text("text,label\ne,pos\nf,pos\n")
    s = prepare_splits(DataConfig(train_file=str(train), eval_file=str(ev)), seed=0)
    assert s.label_names == ["neg", "pos"] and s.eval.labels == [1, 1]
    bad = tmp_path / "bad_eval.csv"
    bad.write_text("text,label\ne,pos\nf,meh\n")
    with pytest.raises(DataError, match=r"bad_eval\.csv: line 3: unknown label 'meh'"):
        prepare_splits(DataConfig(train_file=str(train), eval_file=str(bad)), seed=0)


def test_error_ids_in_train_names_in_eval(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,0\nb,1\n")
    ev = tmp_path / "eval.csv"
    ev.write_text("text,label\nc,pos\n")
    with pytest.raises(DataError, match=r"eval\.csv: the labels are names but the training file's are integer ids"):
        prepare_splits(DataConfig(train_file=str(train), eval_file=str(ev)), seed=0)


def test_error_eval_class_missing_from_train(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,0\nb,1\nc,0\n")
    ev = tmp_path / "eval.csv"
    ev.write_text("text,label\nd,0\ne,2\n")
    with pytest.raises(DataError, match=r"eval\.csv: row 2: class 2 is in the evaluation rows but not in the training"):
        prepare_splits(DataConfig(train_file=str(train), eval_file=str(ev)), seed=0)


def test_error_class_missing_from_train(tmp_path):
    path = write_ag_rows(tmp_path / "three.csv", [(1 + i % 3, f"t{i}", "d") for i in range(30)])
    with pytest.raises(DataError, match=r"three\.csv: no training rows of class 3 \('Sci/Tech'\)"):
        prepare_splits(DataConfig(train_file=str(path)), seed=0)
    ints = tmp_path / "ints.csv"
    ints.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    cfg = DataConfig(train_file=str(ints), label_names=["a", "b", "c"])
    with pytest.raises(DataError, match=r"ints\.csv: no training rows of class 2 \('c'\)"):
        prepare_splits(cfg, seed=0)


def test_default_label_names_for_integer_ids(tmp_path):
    path = tmp_path / "ints.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{i % 3}\n" for i in range(30)))
    s = prepare_splits(DataConfig(train_file=str(path)), seed=0)
    assert s.label_names == ["0", "1", "2"]


def test_error_too_few_rows_for_validation(tmp_path):
    path = write_ag_rows(tmp_path / "tiny.csv", [(1, "a", "b"), (2, "c", "d")])
    with pytest.raises(DataError, match=r"tiny\.csv: 2 labelled rows are too few"):
        prepare_splits(DataConfig(train_file=str(path)), seed=0)


def test_textset_subset():
    ts = TextSet(["a", "b", "c"], [0, 1, 0], ["x", "y", "z"], "n", ["p", "q"])
    sub = ts.subset([2, 0])
    assert (sub.texts, sub.labels, sub.ids, sub.name, sub.label_names) == (["c", "a"], [0, 0], ["z", "x"], "n", ["p", "q"])
    assert len(sub) == 2


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_encode_matches_tokenizer(tokenizer):
    texts, labels = make_texts(50, seed=3, max_words=60)
    enc = encode(texts, tokenizer, max_length=16, labels=labels)
    assert isinstance(enc, Encoded) and enc.labels == labels
    assert enc.input_ids == tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert max(enc.lengths) == 16 and min(enc.lengths) < 16
    assert encode([], tokenizer, 16).input_ids == []


def test_encode_cache_hit(tokenizer, tmp_path, monkeypatch):
    texts, labels = make_texts(30, seed=4)
    first = encode(texts, tokenizer, 32, labels=labels, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("tokenizer called despite a cache hit")

    monkeypatch.setattr(type(tokenizer), "__call__", boom)
    second = encode(texts, tokenizer, 32, labels=labels, cache_dir=tmp_path)
    assert second.input_ids == first.input_ids and second.labels == labels
    monkeypatch.undo()
    encode(texts, tokenizer, 24, cache_dir=tmp_path)  # another max_length: another entry
    encode(texts[:-1], tokenizer, 32, cache_dir=tmp_path)  # other texts: another entry
    assert len(list(tmp_path.glob("*.npz"))) == 3
    files[0].write_bytes(b"damaged")  # a broken cache entry is recomputed
    assert encode(texts, tokenizer, 32, cache_dir=tmp_path).input_ids == first.input_ids


def test_encode_megabyte_text_is_cheap(tokenizer):
    start = time.monotonic()
    enc = encode(["goal " * 200_000, "short text"], tokenizer, max_length=32)
    assert time.monotonic() - start < 2
    assert enc.lengths[0] == 32


def test_length_filter_indices():
    lengths = list(range(1, 101))
    assert length_filter_indices(lengths, 0, 100) == list(range(100))
    keep = length_filter_indices(lengths, 10, 90)
    assert keep == [i for i, n in enumerate(lengths) if np.percentile(lengths, 10) <= n <= np.percentile(lengths, 90)]
    assert 0 not in keep and 99 not in keep
    assert length_filter_indices([], 1, 99) == []


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def _lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(5, 200, size=n).tolist()


def test_sampler_permutation_and_determinism():
    lengths = _lengths(1003)
    s = LengthGroupedBatchSampler(lengths, 16, seed=1, bucket_batches=10)
    rng_state = torch.get_rng_state()
    e0 = list(s)
    assert torch.equal(rng_state, torch.get_rng_state())  # the global RNG is untouched
    assert sorted(i for b in e0 for i in b) == list(range(1003))
    assert len(e0) == len(s) == 63
    assert list(LengthGroupedBatchSampler(lengths, 16, seed=1, bucket_batches=10)) == e0
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(i for b in e1 for i in b) == list(range(1003))
    s.set_epoch(0)
    assert list(s) == e0


def test_sampler_groups_lengths():
    lengths = _lengths(2000)
    bs = 32

    def waste(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = list(LengthGroupedBatchSampler(lengths, bs, seed=0))
    perm = np.random.default_rng(0).permutation(len(lengths)).tolist()
    random_batches = [perm[i:i + bs] for i in range(0, len(perm), bs)]
    assert waste(grouped) < 0.1 * waste(random_batches)


def test_sampler_sequential_and_drop_last():
    s = LengthGroupedBatchSampler([3] * 10, 4, shuffle=False)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    d = LengthGroupedBatchSampler(_lengths(10), 4, drop_last=True)
    assert len(d) == 2 and all(len(b) == 4 for b in d)


def test_sampler_resume_mid_epoch():
    lengths = _lengths(500)
    s = LengthGroupedBatchSampler(lengths, 8, seed=5, bucket_batches=4)
    s.set_epoch(2)
    it = iter(s)
    seen = [next(it) for _ in range(7)]
    state = s.state_dict()
    assert state == {"epoch": 2, "seed": 5, "batches_done": 7}
    rest = list(it)
    resumed = LengthGroupedBatchSampler(lengths, 8, seed=5, bucket_batches=4)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert len(resumed) == len(rest)
    assert list(resumed) == rest
    assert seen + rest == s.batches(2)
    assert len(resumed) == len(s.batches(2))  # the next epoch is whole again
    with pytest.raises(ValueError):
        LengthGroupedBatchSampler(lengths, 8, seed=6).load_state_dict(state)


def test_sorted_batches():
    lengths = [5, 9, 1, 9, 3, 7, 2]
    batches = sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [3, 3, 1]


def test_collator_and_dataset():
    enc = Encoded([[5, 6, 7], [8], [9, 10]], [1, 0, 3])
    ds = EncodedDataset(enc)
    assert len(ds) == 3 and ds[1] == {"input_ids": [8], "labels": 0}
    batch = Collator(pad_token_id=1)([ds[1], ds[2]])
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[8, 1], [9, 10]]  # T = longest row of THIS batch
    assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["labels"].tolist() == [0, 3]
    full = Collator(0)([ds[i] for i in range(3)])
    assert full["input_ids"].shape == (3, 3) and full["labels"].shape == (3,)
    unlabelled = EncodedDataset(Encoded([[1, 2]], None))
    assert unlabelled[0] == {"input_ids": [1, 2]}
    assert set(Collator(0)([unlabelled[0]])) == {"input_ids", "attention_mask"}


def test_dataloader_end_to_end(tokenizer, tiny_train_csv):
    ts = load_file(tiny_train_csv, CFG)
    enc = encode(ts.texts, tokenizer, 32, labels=ts.labels)
    sampler = LengthGroupedBatchSampler(enc.lengths, 16, seed=0)
    loader = torch.utils.data.DataLoader(EncodedDataset(enc), batch_sampler=sampler,
                                         collate_fn=Collator(tokenizer.pad_token_id))
    rows = 0
    for batch in loader:
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()
        rows += len(batch["labels"])
    assert rows == len(ts)


# ---------------------------------------------------------------------------------------------
# Fuzz: any bytes give a TextSet or a DataError, never another exception
# ---------------------------------------------------------------------------------------------

_CSVISH = st.text(alphabet='"\',\t\n\r 01234abc\\\x00é', max_size=200).map(lambda s: s.encode())
_JSONISH = st.text(alphabet='{}[]":,\n 0123-.etruflsnabxl\\', max_size=200).map(lambda s: s.encode())
_PICKLEISH = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([pickle.dumps(x, protocol=p) for x in ([1], {"text": "a"}, "s", None) for p in (0, 2, 5)])
    .flatmap(lambda b: st.integers(0, len(b)).map(lambda k: b[:k])),  # truncated real pickles
)


def _fuzz_one(data: bytes, suffix: str, require_labels: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f{suffix}"
        path.write_bytes(data)
        try:
            ts = load_file(path, CFG, require_labels=require_labels)
        except DataError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return
        assert isinstance(ts, TextSet) and len(ts) >= 1
        assert all(isinstance(t, str) for t in ts.texts)
        if ts.labels is not None:
            assert len(ts.labels) == len(ts.texts) and all(isinstance(y, int) and y >= 0 for y in ts.labels)


_FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(data=st.one_of(st.binary(max_size=300), _CSVISH), require_labels=st.booleans())
def test_fuzz_csv(data, require_labels):
    _fuzz_one(data, ".csv", require_labels)


@_FUZZ
@given(data=st.one_of(st.binary(max_size=300), _CSVISH), require_labels=st.booleans())
def test_fuzz_tsv(data, require_labels):
    _fuzz_one(data, ".tsv", require_labels)


@_FUZZ
@given(data=st.one_of(st.binary(max_size=300), _JSONISH), require_labels=st.booleans())
def test_fuzz_jsonl(data, require_labels):
    _fuzz_one(data, ".jsonl", require_labels)


@_FUZZ
@given(data=_PICKLEISH, require_labels=st.booleans())
def test_fuzz_pickle(data, require_labels):
    _fuzz_one(data, ".pkl", require_labels)
