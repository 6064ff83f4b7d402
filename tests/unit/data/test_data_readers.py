"""Tests of budgetlora.data.readers: every file format, every user error, Hub datasets, fuzzed files."""

from __future__ import annotations

import collections
import csv
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetlora.config import DataConfig
from budgetlora.data import AG_NEWS_LABELS, TextSet, load_file, load_hub_dataset, prepare_splits
from budgetlora.errors import DataError
from conftest import shared_path
from data_files import frame, write_ag_rows, write_frame
from tiny import make_texts

CFG = DataConfig()


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


def test_deeply_nested_json(tmp_path):
    for name, body in (("deep.json", "[" * 100_000), ("deep.jsonl", '{"text": ' + "[" * 100_000 + "\n")):
        path = tmp_path / name
        path.write_text(body)
        _raises(path, "JSON")


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


def test_textset_subset():
    ts = TextSet(["a", "b", "c"], [0, 1, 0], ["x", "y", "z"], "n", ["p", "q"])
    sub = ts.subset([2, 0])
    assert (sub.texts, sub.labels, sub.ids, sub.name, sub.label_names) == (["c", "a"], [0, 0], ["z", "x"], "n", ["p", "q"])
    assert len(sub) == 2


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
