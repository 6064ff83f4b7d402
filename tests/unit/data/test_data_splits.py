"""Tests of budgetlora.data.splits: stratified hold-out, label ids and names across train and eval."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from budgetlora.config import DataConfig
from budgetlora.data import AG_NEWS_LABELS, Splits, load_file, prepare_splits, stratified_split
from budgetlora.errors import DataError
from data_files import frame, write_ag_rows, write_frame

CFG = DataConfig()


def test_prepare_splits_without_files_needs_the_hub():
    with pytest.raises(DataError, match="--train-file"):
        prepare_splits(DataConfig(dataset="ag_news"), seed=0)


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


def _train_and_eval(tmp_path, train_csv: str, eval_csv: str, eval_name: str = "eval.csv") -> DataConfig:
    train = tmp_path / "train.csv"
    train.write_text(train_csv)
    ev = tmp_path / eval_name
    ev.write_text(eval_csv)
    return DataConfig(train_file=str(train), eval_file=str(ev))


def test_eval_names_follow_train_mapping(tmp_path):
    train_csv = "text,label\na,pos\nb,neg\nc,pos\nd,neg\n"
    s = prepare_splits(_train_and_eval(tmp_path, train_csv, "text,label\ne,pos\nf,pos\n"), seed=0)
    assert s.label_names == ["neg", "pos"] and s.eval.labels == [1, 1]
    bad = _train_and_eval(tmp_path, train_csv, "text,label\ne,pos\nf,meh\n", eval_name="bad_eval.csv")
    with pytest.raises(DataError, match=r"bad_eval\.csv: line 3: unknown label 'meh'"):
        prepare_splits(bad, seed=0)


def test_error_ids_in_train_names_in_eval(tmp_path):
    cfg = _train_and_eval(tmp_path, "text,label\na,0\nb,1\n", "text,label\nc,pos\n")
    with pytest.raises(DataError, match=r"eval\.csv: the labels are names but the training file's are integer ids"):
        prepare_splits(cfg, seed=0)


def test_error_eval_class_missing_from_train(tmp_path):
    cfg = _train_and_eval(tmp_path, "text,label\na,0\nb,1\nc,0\n", "text,label\nd,0\ne,2\n")
    with pytest.raises(DataError, match=r"eval\.csv: row 2: class 2 is in the evaluation rows but not in the training"):
        prepare_splits(cfg, seed=0)


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
