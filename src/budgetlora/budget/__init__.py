"""Trainable-parameter counts: the one source of truth for the budget.

Two ways to count, which must agree to the parameter:

- `count_trainable(model)` measures a built (peft-wrapped) model: every parameter with
  `requires_grad`, classified by name. It equals `peft_model.get_nb_trainable_parameters()[0]`.
- `estimate(run, hf_config, num_labels)` predicts the same number from the model config alone,
  without building a model or importing peft, so that `train` can refuse an
  over-budget run before downloading anything and `plan` can price hundreds of candidates in
  well under a second. It lists the modules the architecture builds
  (`modeling.module_inventory`, from the family records) and replays peft 0.21's rules on
  their names (`analyse`): which modules get LoRA, which are wrapped by `modules_to_save`,
  which biases train. Architectures or settings it does not model exactly fall back to
  building the model on the `meta` device and counting it.

The budget covers everything that trains: LoRA A and B matrices, DoRA magnitude vectors, the
classification head (a full trainable copy kept by peft's `modules_to_save`), trainable biases
and any extra `modules_to_train`. It is a strict upper bound: a run must have *fewer* trainable
parameters than the budget.

Modules: `counting` (Breakdown, count_trainable, check_budget), `rules` (peft's rules replayed:
analyse), `estimate` (estimate, count_on_meta, config loading).
"""

from __future__ import annotations

from budgetlora.budget.counting import KINDS, Breakdown, check_budget, count_trainable
from budgetlora.budget.estimate import count_on_meta, describe_model, estimate, inventory_from_model, load_config_only
from budgetlora.budget.rules import Adapted, Analysis, NeedsMeta, analyse, modules_to_save

__all__ = [
    "KINDS", "Breakdown", "check_budget", "count_trainable", "count_on_meta", "describe_model", "estimate",
    "inventory_from_model", "load_config_only", "Adapted", "Analysis", "NeedsMeta", "analyse", "modules_to_save",
]
