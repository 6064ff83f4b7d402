"""`budgetlora export`: a run leaves budgetlora as a plain transformers folder or an ONNX graph,
verified to give budgetlora's labels; predict/evaluate read the exported folders; every bad
input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.inference.runner import LoadedRun
from budgetlora.training.trainer import train
from conftest import shared_path
from tiny import make_texts

onnxruntime = pytest.importorskip("onnxruntime", reason="pip install 'budgetlora[export]'")

# Run by a fresh `python -E` whose import hook refuses budgetlora: what a user without it has.
NO_BUDGETLORA = """
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'budgetlora':
            raise ImportError('budgetlora must not be needed')
sys.meta_path.insert(0, Refuse())
folder, texts = sys.argv[1], json.loads(sys.argv[2])
"""
HF_LABELS = NO_BUDGETLORA + """
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
model = AutoModelForSequenceClassification.from_pretrained(folder)
tok = AutoTokenizer.from_pretrained(folder)
logits = model(**tok(texts, truncation=True, padding=True, return_tensors='pt')).logits
auto = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
piped = [r['label'] for r in pipeline('text-classification', model=folder)(texts, truncation=True)]
print(json.dumps({'auto': auto, 'pipeline': piped}))
"""
ONNX_LABELS = NO_BUDGETLORA + """
import onnxruntime as ort
from transformers import AutoConfig, AutoTokenizer
session = ort.InferenceSession(folder + '/model.onnx', providers=['CPUExecutionProvider'])
enc = AutoTokenizer.from_pretrained(folder)(texts, truncation=True, padding=True, return_tensors='np')
logits = session.run(['logits'], {k: enc[k] for k in ('input_ids', 'attention_mask')})[0]
names = AutoConfig.from_pretrained(folder).id2label
print(json.dumps({'auto': [names[int(i)] for i in logits.argmax(-1)]}))
"""


def labels_without_budgetlora(script: str, folder: Path, texts: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-E", "-c", script, str(folder), json.dumps(texts)],
                          capture_output=True, text=True, timeout=900, cwd=folder.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def budgetlora_labels(folder: Path, texts: list[str]) -> list[str]:
    run = LoadedRun(folder)
    return [run.label_names[i] for i in run.logits(texts).argmax(-1).tolist()]


def _train(out: Path, model_dir: Path, train_csv: Path, head: str) -> Path:
    train(load_config(None, {
        "model": str(model_dir), "train_file": str(train_csv), "output_dir": str(out), "epochs": 3,
        "batch_size": 16, "lr": 5e-3, "r": 4, "head": head, "seed": 3, "target_modules": "all-linear",
        # fp32 serving, so budgetlora's labels and the fp32 exports' are the same function's
        "precision": "fp32",
    }))
    return out


@pytest.fixture(scope="module")
def native_run(tmp_path_factory, tiny_model_dir, tiny_train_csv) -> Path:
    return _train(tmp_path_factory.mktemp("runs") / "native", tiny_model_dir, tiny_train_csv, "native")


@pytest.fixture(scope="module")
def hf_export(native_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "hf"
    assert main(["export", "--run", str(native_run), "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def onnx_export(native_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "onnx"
    assert main(["export", "--run", str(native_run), "--output", str(out), "--format", "onnx"]) == 0
    return out


TEXTS = make_texts(24, seed=7)[0] + ["", "market " * 300]  # an empty text and one past max_length


def test_hf_export_loads_without_budgetlora_and_gives_its_labels(native_run, hf_export):
    files = {p.name for p in hf_export.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= files
    config = json.loads((hf_export / "config.json").read_text())
    assert config["id2label"]["1"] == "Sports" and config["label2id"]["Sci/Tech"] == 3
    assert "auto_map" not in config  # nothing that would need trust_remote_code
    got = labels_without_budgetlora(HF_LABELS, hf_export, TEXTS)
    expected = budgetlora_labels(native_run, TEXTS)
    assert got["auto"] == expected and got["pipeline"] == expected


def test_hf_export_card_has_the_hub_header(native_run, hf_export):
    import yaml

    meta = yaml.safe_load((hf_export / "README.md").read_text().split("---")[1])
    metrics = json.loads((native_run / "metrics.json").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["budgetlora"]["head"] == "native" and meta["budgetlora"]["budget"] == metrics["budget"]
    assert meta["budgetlora"]["trainable_parameters"] == metrics["trainable_params"]
    assert "accuracy" in meta["metrics"]


def test_onnx_export_runs_in_onnxruntime_with_budgetlora_labels(native_run, onnx_export):
    import onnx

    graph = onnx.load(str(onnx_export / "model.onnx")).graph
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert all(isinstance(a, str) and isinstance(b, str) for a, b in dims)  # dynamic batch and sequence
    got = labels_without_budgetlora(ONNX_LABELS, onnx_export, TEXTS)
    assert got["auto"] == budgetlora_labels(native_run, TEXTS)


def test_int8_export_stays_within_its_tolerance(native_run, tiny_eval_csv, tmp_path, capsys):
    from budgetlora.commands.export import INT8_MIN_AGREEMENT

    out = tmp_path / "int8"
    assert main(["export", "--run", str(native_run), "--output", str(out), "--format", "onnx", "--quantize", "int8"]) == 0
    record = json.loads((out / "budgetlora_export.json").read_text())
    assert record["quantize"] == "int8" and record["verification"]["label_agreement"] >= INT8_MIN_AGREEMENT
    assert main(["evaluate", "--run", str(native_run), "--data", str(tiny_eval_csv)]) == 0
    assert main(["evaluate", "--run", str(out), "--data", str(tiny_eval_csv)]) == 0
    run_acc = json.loads((native_run / "eval" / "eval.json").read_text())["accuracy"]
    int8_acc = json.loads((out / "eval" / "eval.json").read_text())["accuracy"]
    assert abs(int8_acc - run_acc) <= 1 - INT8_MIN_AGREEMENT  # 80 rows: at most 2 rows apart


@pytest.mark.parametrize("which", ["hf", "onnx"])
def test_predict_and_evaluate_read_an_exported_folder(which, native_run, hf_export, onnx_export, tiny_eval_csv,
                                                      tmp_path, capsys):
    folder = hf_export if which == "hf" else onnx_export
    assert main(["evaluate", "--run", str(folder), "--data", str(tiny_eval_csv)]) == 0
    assert main(["evaluate", "--run", str(native_run), "--data", str(tiny_eval_csv)]) == 0
    exported = json.loads((folder / "eval" / "eval.json").read_text())
    original = json.loads((native_run / "eval" / "eval.json").read_text())
    assert exported["accuracy"] == original["accuracy"] and exported["n"] == original["n"] == 80
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["predict", "--run", str(folder), "--input", str(tiny_eval_csv), "--output", str(a)]) == 0
    assert main(["predict", "--run", str(native_run), "--input", str(tiny_eval_csv), "--output", str(b)]) == 0
    assert a.read_text() == b.read_text()


def test_default_head_exports_too(tmp_path_factory, tiny_bert_dir, tiny_train_csv, capsys):
    run = _train(tmp_path_factory.mktemp("runs") / "bert-default", tiny_bert_dir, tiny_train_csv, "default")
    out = run.parent / "bert-hf"
    assert main(["export", "--run", str(run), "--output", str(out)]) == 0
    assert "pipeline() labels agree on 100.00%" in capsys.readouterr().out
    got = labels_without_budgetlora(HF_LABELS, out, TEXTS)
    assert got["pipeline"] == budgetlora_labels(run, TEXTS)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------


def _fails(argv: list[str], capsys, *words: str) -> str:
    capsys.readouterr()  # what came before (a training's progress bar) is not this command's output
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("budgetlora: error:"), err
    for w in words:
        assert w in err, err
    return err


def test_linear_head_is_refused_with_the_reason(tmp_path, tiny_model_dir, tiny_train_csv, capsys):
    run = _train(tmp_path / "linear", tiny_model_dir, tiny_train_csv, "linear")
    _fails(["export", "--run", str(run), "--output", str(tmp_path / "out")], capsys, "linear", "--head native")
    assert not (tmp_path / "out").exists()


def test_unfinished_run_is_refused(native_run, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((native_run / "config.yaml").read_text())
    _fails(["export", "--run", str(unfinished), "--output", str(tmp_path / "o")], capsys, "not a finished run")
    _fails(["export", "--run", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], capsys, "no such run")
    assert not (tmp_path / "o").exists()


def test_existing_or_unwritable_output_is_refused(native_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    _fails(["export", "--run", str(native_run), "--output", str(taken)], capsys, "--overwrite")
    assert (taken / "keep.txt").read_text() == "mine"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _fails(["export", "--run", str(native_run), "--output", str(blocker / "out")], capsys, "not writable")
    _fails(["export", "--run", str(native_run), "--output", str(native_run / "inside")], capsys, "inside the run")


def test_bad_format_options_are_refused(native_run, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "o")
    _fails(["export", "--run", str(native_run), "--output", out, "--quantize", "int8"], capsys, "--format onnx")
    _fails(["export", "--run", str(native_run), "--output", out, "--format", "tflite"], capsys, "invalid choice")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the export extra were not installed
    _fails(["export", "--run", str(native_run), "--output", out, "--format", "onnx"], capsys, "budgetlora[export]")
    assert not Path(out).exists()


def test_a_failed_verification_writes_nothing_and_keeps_the_old_output(native_run, hf_export, tmp_path, capsys,
                                                                      monkeypatch):
    import shutil

    from budgetlora.commands import export as export_module

    real = export_module.reference_logits
    monkeypatch.setattr(export_module, "reference_logits",
                        lambda *a, **k: real(*a, **k).roll(1, dims=-1))  # budgetlora "disagrees"
    out = tmp_path / "new"
    _fails(["export", "--run", str(native_run), "--output", str(out)], capsys, "does not reproduce", "nothing was written")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    old = tmp_path / "old"
    shutil.copytree(hf_export, old)
    before = sorted(p.name for p in old.iterdir())
    _fails(["export", "--run", str(native_run), "--output", str(old), "--overwrite"], capsys, "as it was")
    assert sorted(p.name for p in old.iterdir()) == before


def test_push_to_hub_offline_is_one_line_and_keeps_the_export(hf_export, monkeypatch):
    from budgetlora.commands.export import push_folder
    from budgetlora.errors import ExportError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError) as err:
        push_folder(hf_export, "someone/model")
    assert "\n" not in str(err.value) and "the export is complete" in str(err.value)
    assert (hf_export / "model.safetensors").is_file()


def test_onnx_folder_refuses_predict_quantize(onnx_export, tiny_eval_csv, tmp_path, capsys):
    _fails(["predict", "--run", str(onnx_export), "--input", str(tiny_eval_csv), "--output", str(tmp_path / "p.csv"),
            "--quantize"], capsys, "--quantize int8")


# ---------------------------------------------------------------------------------------------
# Real weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_recipe_exports_to_hf_and_onnx(minilm_dir, tmp_path, all_threads, capsys):
    """The shipped MiniLM recipe, briefly trained, exports both ways and verifies."""
    from budgetlora.config import load_config as load

    train_csv = shared_path("data", "ag_news", "train.csv")
    cfg = load(Path(__file__).resolve().parents[3] / "recipes" / "agnews-minilm-cpu.yaml", {
        "model": str(minilm_dir), "train_file": str(train_csv), "output_dir": str(tmp_path / "run"),
        "max_train_samples": 256, "max_eval_samples": 128,
    })
    if cfg.model.head == "linear":
        cfg.model.head = "native"  # the recipe's head cannot leave budgetlora; the decision is in docs/EXPORT.md
    train(cfg)
    for fmt in ("hf", "onnx"):
        out = tmp_path / fmt
        assert main(["export", "--run", str(tmp_path / "run"), "--output", str(out), "--format", fmt]) == 0
        assert json.loads((out / "budgetlora_export.json").read_text())["verification"]["passed"]
    texts = make_texts(16, seed=5)[0]
    assert labels_without_budgetlora(HF_LABELS, tmp_path / "hf", texts)["pipeline"] == budgetlora_labels(tmp_path / "run", texts)
