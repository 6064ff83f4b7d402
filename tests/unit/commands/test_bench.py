"""`budgetlora bench` on a tiny model: it runs end to end and reports both pipelines and the ratios.

Not a timing test: the figures on a tiny model mean nothing; only the harness is checked. The FLOP
count is checked against a hand computation.
"""

from __future__ import annotations

import json

import pytest

from budgetlora.commands.bench import combine_pairs, model_flops, model_shape
from budgetlora.cli import main
from tiny import make_tiny_model, write_agnews_csv


@pytest.fixture(scope="module")
def bench_bert(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("bench-bert"), "bert", pretrain_steps=30)


def test_model_flops_by_hand():
    # N = 1000, 10 trainable, 2 layers, hidden 8, rows of 3 and 5 real tokens (8 tokens, sum t^2 = 34).
    # training: (4*1000 + 2*10) * 8 + 12 * 2 * 8 * 34 = 32,160 + 6,528
    assert model_flops([3, 5], n_params=1000, n_layers=2, hidden=8, n_trainable=10) == 38_688
    # inference: 2*1000 * 8 + 4 * 2 * 8 * 34 = 16,000 + 2,176
    assert model_flops([3, 5], n_params=1000, n_layers=2, hidden=8, n_trainable=10, training=False) == 18_176
    # 100 of the N run on the first token only: the other 2 + 4 tokens skip 4*100 (training), 2*100 each
    assert model_flops([3, 5], n_params=1000, n_layers=2, hidden=8, n_trainable=10,
                       first_token_only_params=100) == 38_688 - 4 * 100 * 6
    assert model_flops([3, 5], n_params=1000, n_layers=2, hidden=8, training=False,
                       first_token_only_params=100) == 18_176 - 2 * 100 * 6
    # one of the 2 layers attends from the first query only: its attention term is c*H*t, not c*H*t^2
    assert model_flops([3, 5], n_params=1000, n_layers=2, hidden=8, n_trainable=10,
                       first_query_layers=1) == 38_688 - 12 * 8 * (34 - 8)
    assert model_flops([3, 5], n_params=1000, n_layers=2, hidden=8, training=False,
                       first_query_layers=1) == 18_176 - 4 * 8 * (34 - 8)


def test_model_shape_counts_non_embedding_params_by_hand():
    import peft
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=4)
    model = peft.get_peft_model(
        BertForSequenceClassification(cfg),
        peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], bias="lora_only",
                        task_type=peft.TaskType.SEQ_CLS),
    )
    h, i = 32, 64
    per_layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h  # attention, LN, FFN, LN
    pooler, head = h * h + h, h * 4 + 4
    lora = 2 * 2 * (8 * h + h * 8)  # 2 layers x (query, value) x (A + B)
    shape = model_shape(model)
    assert shape["non_embedding_params"] == 2 * per_layer + pooler + head + lora  # head counted once
    assert shape["lora_params"] == lora
    assert shape["trainable_non_embedding_params"] == lora + head + 2 * 2 * h  # + query/value biases
    assert (shape["layers"], shape["hidden"]) == (2, 32)
    assert shape["first_token_only_params"] == shape["first_query_layers"] == 0  # a plain transformers model


def test_model_shape_counts_the_first_token_only_params():
    from budgetlora.config import ModelConfig
    from budgetlora.modeling import build_classifier_from_config
    from tiny import tiny_config

    h, i = 32, 64  # tiny_config's hidden and intermediate sizes
    for arch, ffn in (("bert", (h * i + i) + (i * h + h) + 2 * h), ("distilbert", (h * i + i) + (i * h + h) + 2 * h)):
        model = build_classifier_from_config(ModelConfig(model="tiny"), tiny_config(arch))
        assert model_shape(model)["first_token_only_params"] == ffn, arch
        assert model_shape(model)["first_query_layers"] == 1, arch
    mpnet = build_classifier_from_config(ModelConfig(model="tiny"), tiny_config("mpnet"))
    assert model_shape(mpnet)["first_query_layers"] == 0  # its attention adds a position bias in its own code


def test_bench_runs_both_pipelines_and_reports_ratios(bench_bert, tmp_path, capsys):
    data = write_agnews_csv(tmp_path / "train.csv", 200, seed=1)
    out = tmp_path / "bench"
    rc = main(["bench", "--model", str(bench_bert), "--train-file", str(data), "--samples", "64",
               "--eval-rows", "32", "--matmul-size", "128", "--output-dir", str(out), "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep == json.loads((out / "bench.json").read_text())
    for key in ("reference", "budgetlora"):
        r = rep[key]
        assert r["train_samples"] == 64 and r["eval_rows"] == 32
        for field in ("train_samples_per_second", "train_tokens_per_second", "eval_samples_per_second",
                      "peak_rss_mb", "train_useful_flops_per_second", "train_share_of_bf16_peak",
                      "train_share_of_fp32_peak"):
            assert r[field] > 0, (key, field)
        assert 0.0 <= r["eval_accuracy"] <= 1.0
        assert r["trainable_params"] < rep["budget"]
    a, b = rep["reference"], rep["budgetlora"]
    # Same rows: the same real tokens; the reference executes every row padded to 128.
    assert a["train_real_tokens"] == b["train_real_tokens"]
    assert a["train_executed_tokens"] == 64 * 128
    assert a["non_embedding_params"] == b["non_embedding_params"]
    assert a["precision"] == "fp32"
    assert b["predict_accuracy"] == pytest.approx(b["eval_accuracy"], abs=0.1)
    assert rep["ratios"]["train_samples_per_second"] == pytest.approx(
        b["train_samples_per_second"] / a["train_samples_per_second"])
    assert rep["ratios"]["eval_samples_per_second"] > 0
    assert set(rep["targets"]) >= {"train_samples_per_second_ratio_at_least_8", "accuracy_not_lower"}
    assert rep["peaks"]["bf16_flops_per_second"] > 0 and rep["peaks"]["fp32_flops_per_second"] > 0
    assert rep["command"].startswith("budgetlora bench --model")
    _check_time_to_accuracy(rep, bench_bert)


def _check_time_to_accuracy(rep, model_dir):
    """The whole `budgetlora train` command with its defaults on the same rows: its evaluations in
    time order, the first one at the notebook's final accuracy, both final accuracies."""
    from budgetlora.budget import load_config_only
    from budgetlora.budget.defaults import DEFAULT_METHODS
    from budgetlora.budget.planner import plan

    t, ours = rep["time_to_accuracy"], rep["defaults_command"]
    a = rep["reference"]
    assert t["target_accuracy"] == t["reference_final_accuracy"] == a["eval_accuracy"]
    assert 0 < t["reference_seconds"]
    evals = ours["evaluations"]
    assert len(evals) >= 2 and all(0 < e["seconds"] <= ours["whole_command_s"] for e in evals)
    assert [e["seconds"] for e in evals] == sorted(e["seconds"] for e in evals)
    assert all(e["step"] % ours["eval_every"] == 0 for e in evals[:-1])  # the last: the epoch's end
    reached = [e for e in evals if e["eval_accuracy"] >= t["target_accuracy"]]
    if reached:
        assert (t["budgetlora_seconds"], t["budgetlora_step"]) == (reached[0]["seconds"], reached[0]["step"])
        assert t["ratio"] == pytest.approx(t["reference_seconds"] / t["budgetlora_seconds"])
    else:
        assert t["budgetlora_seconds"] is None and t["ratio"] is None
    assert t["budgetlora_final_accuracy"] == evals[-1]["eval_accuracy"]
    assert t["final_accuracy_difference"] == pytest.approx(t["budgetlora_final_accuracy"] - t["reference_final_accuracy"])
    # no recipe, no adapter flag: the planner's first choice trained
    best = plan(load_config_only(str(model_dir), 4), rep["budget"], 4, DEFAULT_METHODS)[0][0]
    assert (ours["chosen"]["method"], ours["chosen"]["head"], ours["chosen"]["r"], ours["trainable_params"]) == (
        best.method, best.head, best.r, best.trainable_params)
    assert "--r" not in ours["command"] and "--config" not in ours["command"]
    assert set(rep["targets"]) >= {"time_to_accuracy_ratio_at_least_20", "defaults_final_accuracy_at_least_5_points_higher"}


def test_bench_repeats_alternate_the_order_and_report_the_paired_medians(bench_bert, tmp_path, capsys):
    data = write_agnews_csv(tmp_path / "train.csv", 200, seed=1)
    out = tmp_path / "bench"
    rc = main(["bench", "--model", str(bench_bert), "--train-file", str(data), "--samples", "32",
               "--eval-rows", "16", "--matmul-size", "128", "--output-dir", str(out), "--repeats", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "repeat 1 (reference first)" in text and "repeat 2 (budgetlora first)" in text
    assert "time to the notebook's final accuracy" in text and "the defaults chose:" in text
    rep = json.loads((out / "bench.json").read_text())
    assert rep["repeats"] == 2 and [p["order"][0] for p in rep["pairs"]] == ["reference", "budgetlora"]
    for k in (1, 2):  # each repeat's full results in its own folder
        assert (out / f"repeat-{k}" / "reference-result.json").is_file()
        assert (out / f"repeat-{k}" / "budgetlora-run" / "config.yaml").is_file()
    paired = [p["budgetlora"]["train_samples_per_second"] / p["reference"]["train_samples_per_second"] for p in rep["pairs"]]
    assert rep["ratios"]["train_samples_per_second"] == pytest.approx(sum(paired) / 2)  # median of two
    assert rep["budgetlora"]["train_samples"] == 32  # counts stay counts
    for k, p in enumerate(rep["pairs"], 1):  # each repeat ran the defaults command too
        assert (out / f"repeat-{k}" / "budgetlora-defaults-run" / "config.yaml").is_file()


def test_combine_pairs_takes_medians_and_keeps_what_does_not_vary():
    def pair(rate_a, rate_b, gpu=None):
        a = {"train_samples_per_second": rate_a, "train_samples": 64, "precision": "fp32", "under_budget": True}
        b = {"train_samples_per_second": rate_b, "train_samples": 64, "precision": "bf16", "under_budget": True}
        return {"reference": a, "budgetlora": b,
                "ratios": {"train_samples_per_second": rate_b / rate_a, "peak_gpu_allocated": gpu}}

    one = pair(10.0, 90.0)
    assert combine_pairs([one]) == (one["reference"], one["budgetlora"], one["ratios"])
    a, b, ratios = combine_pairs([pair(10.0, 90.0), pair(20.0, 100.0, gpu=1.0), pair(12.0, 120.0)])
    assert a["train_samples_per_second"] == 12.0 and b["train_samples_per_second"] == 100.0
    # the median of the paired ratios (9, 5, 10), not the ratio of the medians (100 / 12)
    assert ratios["train_samples_per_second"] == 9.0
    assert ratios["peak_gpu_allocated"] is None  # not every pair has one
    assert (a["train_samples"], type(a["train_samples"]), a["precision"], b["under_budget"]) == (64, int, "fp32", True)


@pytest.mark.parametrize("args, message", [
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--repeats", "2", "--sweep"], "--repeats is for the side-by-side run"),
])
def test_bench_refuses_bad_repeats(bench_bert, tmp_path, capsys, args, message):
    data = write_agnews_csv(tmp_path / "train.csv", 50, seed=1)
    assert main(["bench", "--model", str(bench_bert), "--train-file", str(data), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_sweep_writes_plot_and_table(bench_bert, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["bench", "--model", str(bench_bert), "--sweep", "--sweep-lengths", "16,32", "--sweep-rows", "32",
               "--matmul-size", "128", "--output-dir", str(out), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [(r["seq_len"], r["rows"], r["tokens"]) for r in res["table"]] == [(16, 32, 512), (32, 32, 1024)]
    assert all(r["train_seconds"] > 0 for r in res["table"])
    assert (out / "bench_scaling.png").stat().st_size > 1000
    assert "| 32 | 32 |" in (out / "bench_scaling.md").read_text()


def test_bench_needs_a_train_file(bench_bert, capsys):
    assert main(["bench", "--model", str(bench_bert)]) == 2
    assert "--train-file" in capsys.readouterr().err


def test_timed_commands_get_the_environment_the_bench_started_with(monkeypatch):
    # train() sets TOKENIZERS_PARALLELISM=false in the worker; the timed `budgetlora predict` must
    # still tokenize as it does from the user's shell
    from budgetlora.commands.bench import processes

    monkeypatch.setattr(processes, "_START_ENV", {"PATH": "/usr/bin"})
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    env = processes.child_env()
    assert "TOKENIZERS_PARALLELISM" not in env and env["PATH"] == "/usr/bin"


def test_eval_clock_reads_whole_records_as_the_log_grows(tmp_path):
    from budgetlora.commands.bench.tta import EvalClock

    log = tmp_path / "log.jsonl"
    clock = EvalClock(log)
    clock()  # no log yet
    log.write_text('{"step": 1, "loss": 0.9}\n{"step": 2, "eval_accuracy": 0.5')  # the second half written
    clock()
    assert clock.evals == []
    with open(log, "a") as f:
        f.write(', "eval_loss": 1.0}\n{"step": 4, "eval_accuracy": 0.75}\n')
    clock()
    clock()  # nothing new: nothing counted twice
    assert [r["step"] for _, r in clock.evals] == [2, 4]
    assert clock.evals[0][0] <= clock.evals[1][0]
