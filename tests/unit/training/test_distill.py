"""Knowledge distillation: the loss, the teacher logits cache, and a student trained end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from budgetlora.training import distill
from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.data import Collator, Encoded, EncodedDataset, encode, prepare_splits
from budgetlora.errors import ConfigError, UserError
from budgetlora.core.hub import load_tokenizer
from budgetlora.inference.runner import LoadedRun
from budgetlora.training.trainer import train


def _cfg(out, model_dir, train_csv, eval_csv, **over):
    base = {
        "model": str(model_dir), "train_file": str(train_csv), "eval_file": str(eval_csv),
        "output_dir": str(out), "epochs": 2, "batch_size": 16, "lr": 5e-3, "r": 4, "lora_alpha": 8,
        "log_every": 2, "seed": 7, "precision": "fp32",
    }
    base.update(over)
    return load_config(None, base)



@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_model_dir, tiny_train_csv, tiny_eval_csv):
    out = tmp_path_factory.mktemp("teacher") / "run"
    metrics = train(_cfg(out, tiny_model_dir, tiny_train_csv, tiny_eval_csv, epochs=1, max_train_samples=128))
    assert metrics["best_eval_accuracy"] > 0.5  # a teacher worth learning from
    return out


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_distill_loss_matches_hand_computation():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [0.5, 0.5, 2.5]]
    labels = [1, 2]
    alpha, T = 0.3, 2.0
    ce = kl = 0.0
    for s, t, y in zip(student, teacher, labels):
        ce += -math.log(_softmax(s)[y]) / 2
        ps, pt = _softmax([v / T for v in s]), _softmax([v / T for v in t])
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps)) / 2  # KL(teacher || student), batch mean
    expected = (1 - alpha) * ce + alpha * T * T * kl
    got = distill.distill_loss(torch.tensor(student), torch.tensor(labels), torch.tensor(teacher), alpha, T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # alpha 0 is plain cross-entropy; a teacher equal to the student adds nothing
    plain = distill.distill_loss(torch.tensor(student), torch.tensor(labels), torch.tensor(teacher), 0.0, T)
    assert plain.item() == pytest.approx(ce, rel=1e-6)
    same = distill.distill_loss(torch.tensor(student), torch.tensor(labels), torch.tensor(student), 1.0, T)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_ensemble_targets_average_the_tempered_probabilities():
    T = 3.0
    a, b = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, -1.0, 4.0]])
    combined = distill.combine([a, b], T)
    mean = (torch.softmax(a / T, -1) + torch.softmax(b / T, -1)) / 2
    torch.testing.assert_close(torch.softmax(combined / T, -1), mean)
    assert distill.combine([a], T) is a


def test_batches_carry_their_rows_teacher_logits():
    enc = Encoded([[5, 6], [7], [8, 9, 10]], [0, 1, 2])
    extra = torch.arange(9, dtype=torch.float32).view(3, 3)
    ds = EncodedDataset(enc, {"teacher_logits": extra})
    batch = Collator(0)([ds[2], ds[0]])
    torch.testing.assert_close(batch["teacher_logits"], extra[[2, 0]])
    assert batch["labels"].tolist() == [2, 0]
    assert "teacher_logits" not in Collator(0)([EncodedDataset(enc)[1]])
    with pytest.raises(ValueError):
        EncodedDataset(enc, {"teacher_logits": extra[:2]})


def test_distillation_settings_are_validated(tmp_path, capsys):
    cfg = load_config(None, {"teacher": "runs/a, runs/b", "distill_alpha": 0.7, "distill_temperature": 4})
    assert cfg.train.teacher_dirs == ["runs/a", "runs/b"]
    for bad in ({"distill_alpha": 1.5}, {"distill_temperature": 0}, {"teacher": " , "}):
        with pytest.raises(ConfigError):
            load_config(None, bad)
    assert main(["train", "--teacher", "x", "--distill-alpha", "2", "--output-dir", str(tmp_path / "r")]) == 2
    assert "distill_alpha" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Teacher logits and their cache
# ---------------------------------------------------------------------------------------------


def test_teacher_logits_with_the_teachers_own_tokenization(tmp_path, teacher_run, tiny_model_dir, tiny_train_csv, tiny_eval_csv):
    cfg = _cfg(tmp_path / "s", tiny_model_dir, tiny_train_csv, tiny_eval_csv, max_length=8)
    texts = prepare_splits(cfg.data, 7).train.texts[:40]
    tok = load_tokenizer(str(tiny_model_dir))
    enc = encode(texts, tok, 8)  # the student truncates to 8 tokens, the teacher reads 128
    got = distill.teacher_logits(str(teacher_run), texts, enc, tok, 8, ["World", "Sports", "Business", "Sci/Tech"], tmp_path / "cache")
    want = LoadedRun(teacher_run).logits(texts)
    torch.testing.assert_close(got, want)
    # an ensemble of the same teacher twice is that teacher (and the second member is a cache hit)
    ens = _cfg(tmp_path / "s", tiny_model_dir, tiny_train_csv, tiny_eval_csv, max_length=8,
               teacher=f"{teacher_run},{teacher_run}", distill_temperature=2.0)
    both = distill.training_targets(ens, texts, enc, tok, ["World", "Sports", "Business", "Sci/Tech"], tmp_path / "cache")
    torch.testing.assert_close(torch.softmax(both / 2, -1), torch.softmax(want / 2, -1))
    assert len(list((tmp_path / "cache").glob("teacher-*.safetensors"))) == 1


def test_teacher_must_be_a_finished_run_with_the_same_classes(tmp_path, teacher_run, tiny_model_dir, tiny_train_csv, tiny_eval_csv):
    tok = load_tokenizer(str(tiny_model_dir))
    enc = encode(["a text"], tok, 16)
    with pytest.raises(UserError, match="not a finished budgetlora run"):
        distill.teacher_logits(str(tmp_path / "nothing"), ["a text"], enc, tok, 16, ["a", "b"], tmp_path / "c")
    with pytest.raises(ConfigError, match="same classes"):
        distill.teacher_logits(str(teacher_run), ["a text"], enc, tok, 16, ["a", "b"], tmp_path / "c")


def test_student_distils_from_a_teacher_and_reuses_the_cached_logits(
    tmp_path, monkeypatch, teacher_run, tiny_model_dir, tiny_train_csv, tiny_eval_csv
):
    out = tmp_path / "student"
    cfg = _cfg(out, tiny_model_dir, tiny_train_csv, tiny_eval_csv, teacher=str(teacher_run),
               distill_alpha=0.5, distill_temperature=2.0, r=2, lora_alpha=4, epochs=1, max_train_samples=96)
    calls = []
    real_loss = distill.distill_loss
    monkeypatch.setattr(distill, "distill_loss", lambda *a, **k: calls.append(a[2].shape) or real_loss(*a, **k))
    metrics = train(cfg)
    assert metrics["best_eval_accuracy"] > 0.5
    assert calls and all(shape[1] == 4 for shape in calls)  # the KL term ran on every step, with teacher rows
    cached = list((out / "cache").glob("teacher-*.safetensors"))
    assert len(cached) == 1
    from safetensors.torch import load_file

    logits = load_file(str(cached[0]))["logits"]
    texts = prepare_splits(cfg.data, cfg.train.seed).train.texts
    assert logits.shape == (len(texts), 4)
    torch.testing.assert_close(logits, LoadedRun(teacher_run).logits(texts))
    log1 = (out / "log.jsonl").read_text()
    stamp = cached[0].stat().st_mtime_ns

    # Again in the same folder: the teacher is not loaded again, and the run is the same run.
    def no_teacher(*a, **k):
        raise AssertionError("the teacher was loaded although its logits are cached")

    monkeypatch.setattr("budgetlora.training.distill.LoadedRun", no_teacher)
    cfg.overwrite = True
    again = train(cfg)
    assert cached[0].stat().st_mtime_ns == stamp
    strip = lambda text: [{k: v for k, v in json.loads(l).items() if k != "samples_per_second"} for l in text.splitlines()]
    assert strip((out / "log.jsonl").read_text()) == strip(log1)
    assert again["best_eval_accuracy"] == metrics["best_eval_accuracy"]


def test_teachers_that_differ_only_in_their_trained_parameters_are_cached_apart(tmp_path, teacher_run):
    """Full fine-tuning and BitFit runs save trained_parameters.safetensors, not peft's adapter_*
    files: two such teachers of the same base once shared one cache key, so an ensemble of them
    silently averaged the first one with itself."""
    import shutil

    meta = {"base_model": "b", "head": "linear", "pooling": "first", "label_names": ["a", "b"]}
    keys = []
    for i in range(2):
        folder = tmp_path / f"t{i}"
        shutil.copytree(teacher_run / "adapter", folder / "adapter")
        (folder / "adapter" / "trained_parameters.safetensors").write_bytes(bytes([i]) * 64)
        keys.append(distill._cache_key(folder, meta, "fp", 128, "fp32", ["a text"]))
    assert keys[0] != keys[1]


def test_a_second_student_reuses_the_teachers_cached_logits(
    tmp_path, monkeypatch, teacher_run, tiny_model_dir, tiny_train_csv, tiny_eval_csv
):
    tok = load_tokenizer(str(tiny_model_dir))
    texts = ["first text", "a second, longer text", "third"]
    enc = encode(texts, tok, 16)
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    first = distill.teacher_logits(str(teacher_run), texts, enc, tok, 16, labels, tmp_path / "one")
    assert len(list((teacher_run / "cache").glob("teacher-*.safetensors"))) >= 1

    def no_teacher(*a, **k):
        raise AssertionError("the teacher was run again for another student on the same rows")

    monkeypatch.setattr("budgetlora.training.distill.LoadedRun", no_teacher)
    second = distill.teacher_logits(str(teacher_run), texts, enc, tok, 16, labels, tmp_path / "two")
    torch.testing.assert_close(first, second)
    assert len(list((tmp_path / "two").glob("teacher-*.safetensors"))) == 1  # the student keeps its own copy
