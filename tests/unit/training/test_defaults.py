"""Budget-aware defaults: with no adapter setting given, `train` takes the planner's first choice
among DEFAULT_METHODS (plain LoRA) for the model and budget and the planned learning rate, logs what it chose first and records it in
config.yaml; any adapter flag or recipe leaves the settings exactly as given."""

from __future__ import annotations

import json
import logging
import shlex

import pytest

from budgetlora.budget import load_config_only
from budgetlora.budget.defaults import (
    ADAPTER_SETTINGS, DEFAULT_METHODS, Unset, choose_defaults, lr_rule, unset_settings,
)
from budgetlora.budget.planner import plan as plan_all
from budgetlora.cli import build_parser, config_overrides, main
from budgetlora.config import RunConfig, load_config
from budgetlora.errors import BudgetError
from conftest import REPO


def _train_args(model_dir, train_csv, eval_csv, out, *extra):
    return ["train", "--model", str(model_dir), "--train-file", str(train_csv), "--eval-file", str(eval_csv),
            "--max-train-samples", "48", "--max-eval-samples", "16", "--max-steps", "2", "--batch-size", "16",
            "--output-dir", str(out), *extra]


def plan(hf_config, budget, num_labels):
    """The planner as the defaults ask it: DEFAULT_METHODS only."""
    return plan_all(hf_config, budget, num_labels, DEFAULT_METHODS)


def _recorded(out) -> RunConfig:
    return load_config(out / "config.yaml")


def test_unset_settings_follow_what_was_given():
    assert unset_settings({}, recipe=False) == Unset(adapter=True, lr=True)
    # settings that do not place the adapter keep the plan
    assert unset_settings({"epochs": "1", "budget": "500000", "lora_dropout": "0.1"}, recipe=False) == Unset(True, True)
    assert unset_settings({"lr": "0.01"}, recipe=False) == Unset(adapter=True, lr=False)
    for name in sorted(ADAPTER_SETTINGS):  # any adapter setting: the user chose the adapter
        assert unset_settings({name: "x"}, recipe=False) == Unset(), name
    assert unset_settings({}, recipe=True) == Unset()  # a recipe, or a resumed run's config.yaml
    assert {"head", "r", "lora_alpha", "target_modules", "layers", "use_dora", "bias", "method", "vera_r",
            "num_virtual_tokens", "modules_to_train"} <= ADAPTER_SETTINGS
    assert "lora_dropout" not in ADAPTER_SETTINGS


def test_no_flags_train_the_planners_first_choice(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(_train_args(tiny_model_dir, tiny_train_csv, tiny_eval_csv, out)) == 0
    hf_config = load_config_only(str(tiny_model_dir), 4)
    best = plan(hf_config, RunConfig().budget, 4)[0][0]
    cfg = _recorded(out)
    assert (cfg.model.head, cfg.lora.target_modules, cfg.lora.layers, cfg.lora.r, cfg.lora.lora_alpha,
            cfg.lora.use_dora) == (best.head, best.target_modules, best.layers, best.r, best.lora_alpha, best.use_dora)
    assert best.method == cfg.adapter.method == "lora" and best.head == "linear"  # the linear head first
    assert cfg.train.lr == lr_rule(hf_config.hidden_size)
    assert cfg.lora.lora_dropout == 0.0
    # the first line budgetlora logs says what it chose, and its flags reproduce the same settings
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("budgetlora")]
    assert ours[0].startswith("no adapter settings given") and f"r={best.r}" in ours[0]
    flags = ours[0].split("The same with flags: ", 1)[1]
    again = load_config(None, config_overrides(build_parser().parse_args(["train", *shlex.split(flags)])))
    assert again.lora == cfg.lora and again.model.head == cfg.model.head and again.train.lr == cfg.train.lr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == best.trainable_params < cfg.budget


def test_given_lr_is_kept_and_the_adapter_still_planned(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv):
    out = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, tiny_train_csv, tiny_eval_csv, out, "--lr", "0.0123")) == 0
    cfg = _recorded(out)
    best = plan(load_config_only(str(tiny_model_dir), 4), cfg.budget, 4)[0][0]
    assert cfg.train.lr == 0.0123 and cfg.lora.r == best.r and cfg.model.head == best.head


def test_an_adapter_flag_leaves_every_setting_as_given(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(_train_args(tiny_model_dir, tiny_train_csv, tiny_eval_csv, out, "--r", "3")) == 0
    defaults = RunConfig()
    cfg = _recorded(out)
    assert cfg.lora.r == 3
    assert (cfg.model.head, cfg.lora.target_modules, cfg.lora.lora_alpha, cfg.train.lr) == (
        defaults.model.head, defaults.lora.target_modules, defaults.lora.lora_alpha, defaults.train.lr)
    assert not any("no adapter settings given" in r.getMessage() for r in caplog.records)


def test_a_seed_recipe_keeps_its_exact_settings(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv):
    recipe = REPO / "recipes" / "seeds" / "r8-qv-lora-only.yaml"
    out = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, tiny_train_csv, tiny_eval_csv, out, "--config", str(recipe))) == 0
    cfg, seed = _recorded(out), load_config(recipe)
    assert cfg.lora == seed.lora and cfg.model.head == seed.model.head and cfg.train.lr == seed.train.lr


def test_resolution_is_a_copy_and_refuses_a_budget_nothing_fits(tiny_model_dir):
    hf_config = load_config_only(str(tiny_model_dir), 4)
    cfg = RunConfig()
    chosen, choice = choose_defaults(cfg, hf_config, 4, Unset(adapter=True, lr=True))
    assert choice is not None and cfg.lora == RunConfig().lora and chosen.lora.r == choice.candidate.r
    assert choose_defaults(cfg, hf_config, 4, Unset()) == (cfg, None)
    cfg.budget = 10
    with pytest.raises(BudgetError, match="no adapter configuration the planner tries fits.*lora_A"):
        choose_defaults(cfg, hf_config, 4, Unset(adapter=True, lr=True))


def test_the_plan_follows_the_budget(tiny_model_dir):
    from budgetlora.budget import estimate

    hf_config = load_config_only(str(tiny_model_dir), 4)
    counts = []
    for budget in (500, 5_000, 50_000):
        cfg = RunConfig()
        cfg.budget = budget
        chosen, choice = choose_defaults(cfg, hf_config, 4, Unset(adapter=True, lr=True))
        assert choice.candidate == plan(hf_config, budget, 4)[0][0]
        counts.append(estimate(chosen, hf_config, 4).total)
        assert counts[-1] == choice.candidate.trainable_params < budget
    assert counts == sorted(counts) and counts[0] < counts[-1]  # a larger budget is spent, not ignored


def test_a_given_lora_dropout_keeps_the_plan_and_the_dropout(tiny_model_dir):
    hf_config = load_config_only(str(tiny_model_dir), 4)
    cfg = load_config(None, {"lora_dropout": "0.1"})
    unset = unset_settings({"lora_dropout": "0.1"}, recipe=False)
    chosen, choice = choose_defaults(cfg, hf_config, 4, unset)
    assert choice is not None and chosen.lora.lora_dropout == 0.1 and chosen.lora.r == choice.candidate.r
    assert "LoRA dropout 0.1" in choice.message() and choice.flags()[-2:] == ["--lora-dropout", "0.1"]


def test_the_methods_the_defaults_choose_among_are_one_setting(tiny_model_dir, monkeypatch):
    from budgetlora.budget import defaults

    hf_config = load_config_only(str(tiny_model_dir), 4)
    monkeypatch.setattr(defaults, "DEFAULT_METHODS", ("dora",))
    chosen, choice = choose_defaults(RunConfig(), hf_config, 4, Unset(adapter=True, lr=True))
    assert choice.candidate == plan_all(hf_config, RunConfig().budget, 4, ["dora"])[0][0]
    assert chosen.lora.use_dora or chosen.adapter.method == "dora"
    assert "--method dora" in " ".join(choice.flags()) and "plan --method dora" in choice.message()
