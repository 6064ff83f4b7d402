"""The parameter-efficient methods (`--method`): the peft config each run gets, or for BitFit the
plain selection of what trains; which can be merged into the base weights; and the per-step work a
method needs from the training loop (AdaLoRA's rank allocation and orthogonality penalty).

Every method trains the head whole (peft's `modules_to_save`, so the adapter folder carries it).
`budget` counts each one from the model config alone and must agree with what is built here; the
tests check it against peft on tiny models of every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from budgetlora.config import LORA_FAMILY, LoraConfig, RunConfig, check_prompt_fits, model_num_layers, resolved_method
from budgetlora.errors import ConfigError, UserError

if TYPE_CHECKING:  # torch and peft are imported when a model is built
    import torch
    from torch import nn


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    peft: bool  # False: no peft tuner, the built model's own parameters are selected (BitFit)
    mergeable: bool  # the update can be folded into the base weights (merge_and_unload)


METHOD_INFO = {m.name: m for m in (
    MethodInfo("lora", "low-rank update B A per module", True, True),
    MethodInfo("dora", "LoRA + a trained magnitude per output", True, True),
    MethodInfo("rslora", "LoRA scaled by alpha/sqrt(r)", True, True),
    MethodInfo("vera", "shared frozen random projections, trained scaling vectors", True, True),
    MethodInfo("fourierft", "a few trained Fourier coefficients per module", True, True),
    MethodInfo("lokr", "Kronecker product of two small factors", True, True),
    MethodInfo("loha", "Hadamard product of two low-rank updates", True, True),
    MethodInfo("ia3", "trained scaling of activations", True, True),
    MethodInfo("adalora", "LoRA with ranks pruned while training", True, True),
    MethodInfo("bias", "BitFit: only the biases train", False, True),
    MethodInfo("layernorm", "only the LayerNorms train", True, True),
    MethodInfo("prompt", "trained virtual tokens before the text", True, False),
    MethodInfo("full", "full fine-tuning: every parameter trains", False, True),
)}

_BIAS_MODE = {"vera": "vera_only", "fourierft": "fourier_only"}  # peft's name for our lora_only


def can_merge(method: str) -> bool:
    return METHOD_INFO[method].mergeable


def refuse_merge(method: str, operation: str) -> None:
    """One line for an operation that needs the update folded into the base weights."""
    if not can_merge(method):
        raise UserError(f"{operation}: a {method} run cannot be merged into the base model (peft keeps its "
                        f"{METHOD_INFO[method].summary} apart); use the run folder with budgetlora predict/evaluate")


def describe_adapter(run: RunConfig) -> str:
    """One line for the model card: the method and the settings that shape it."""
    method, lora, a = resolved_method(run), run.lora, run.adapter
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    where = f"targets: {targets}, layers: {lora.layers or 'all'}, bias: {lora.bias}"
    own = {
        "lora": f"LoRA r={lora.r}, alpha={lora.lora_alpha:g}, dropout={lora.lora_dropout:g}",
        "dora": f"DoRA r={lora.r}, alpha={lora.lora_alpha:g}, dropout={lora.lora_dropout:g}",
        "rslora": f"rsLoRA r={lora.r}, alpha={lora.lora_alpha:g}, dropout={lora.lora_dropout:g}",
        "adalora": f"AdaLoRA init_r={a.adalora_init_r}, target_r={a.adalora_target_r}, alpha={lora.lora_alpha:g}",
        "vera": f"VeRA r={a.vera_r}, d_initial={a.vera_d_initial:g}",
        "fourierft": f"FourierFT n_frequency={a.fourierft_n_frequency}, scaling={a.fourierft_scaling:g}",
        "lokr": f"LoKr r={lora.r}, alpha={lora.lora_alpha:g}, decompose_factor={a.lokr_decompose_factor}",
        "loha": f"LoHa r={lora.r}, alpha={lora.lora_alpha:g}",
        "ia3": f"IA3, feed-forward: {', '.join(a.ia3_feedforward_modules) or 'none'}",
    }
    if method in own:
        return f"{own[method]}{', rsLoRA scaling' if method == 'dora' and lora.use_rslora else ''}, {where}"
    return {"bias": "BitFit (every bias of the encoder)", "layernorm": "LayerNorm tuning (every LayerNorm of the "
            "encoder)", "prompt": f"prompt tuning, {a.num_virtual_tokens} virtual tokens",
            "full": "full fine-tuning (every parameter)"}[method]


def norm_module_names(model: "nn.Module", head_modules: list[str]) -> list[str]:
    """The normalisation layers of the encoder (LayerNorm tuning's targets), head excluded; a
    module counts as one when its class name says so, as in `budget.inventory_from_model`."""
    heads = set(head_modules)
    return [name for name, mod in model.named_modules()
            if name and "norm" in type(mod).__name__.lower() and name.split(".")[0] not in heads
            and any(True for _ in mod.parameters(recurse=False))]


def input_embedding_dim(model: "nn.Module") -> int:
    """Width of the word embeddings, which prompt tuning's virtual tokens take (electra's are
    narrower than its hidden size)."""
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    return encoder.get_input_embeddings().embedding_dim


def peft_lora_config(lora: LoraConfig, head_modules: list[str], head: str, method: str = "lora"):
    """Our LoRA settings as peft's LoraConfig (lora, dora, rslora). The head goes in `modules_to_save`."""
    import peft

    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        bias=lora.bias,
        use_rslora=method == "rslora" or lora.use_rslora,
        use_dora=method == "dora" or lora.use_dora,
        init_lora_weights=lora.peft_init,
        rank_pattern=dict(lora.rank_pattern),
        alpha_pattern=dict(lora.alpha_pattern),
        **_placement(lora, head_modules, head),
    )


def _placement(lora: LoraConfig, head_modules: list[str], head: str, layers: bool = True) -> dict[str, Any]:
    """Where an adapter goes: targets, layers, the modules saved whole, the task type."""
    import peft

    target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    out: dict[str, Any] = {
        "target_modules": target,
        "modules_to_save": list(head_modules) + list(lora.modules_to_train),
        # SEQ_CLS gives users the standard PeftModelForSequenceClassification for the default head.
        "task_type": peft.TaskType.SEQ_CLS if head == "default" else None,
    }
    if layers:
        out["layers_to_transform"] = list(lora.layers) if lora.layers else None
    return out


def peft_method_config(run: RunConfig, head_modules: list[str], norm_names: list[str], hf_config: Any = None,
                       token_dim: int = 0):
    """The peft config of the run's method (any but `bias`, which peft has no tuner for).
    `norm_names`: LayerNorm tuning's targets; `hf_config`, `token_dim`: the model's, for prompt tuning."""
    import peft

    method, lora, a, head = resolved_method(run), run.lora, run.adapter, run.model.head
    if method in LORA_FAMILY:
        return peft_lora_config(lora, head_modules, head, method)
    place = _placement(lora, head_modules, head)
    bias = _BIAS_MODE.get(method, lora.bias) if lora.bias == "lora_only" else lora.bias
    if method == "vera":
        return peft.VeraConfig(r=a.vera_r, projection_prng_key=a.vera_projection_prng_key, d_initial=a.vera_d_initial,
                               vera_dropout=lora.lora_dropout, bias=bias, save_projection=True, **place)
    if method == "fourierft":
        return peft.FourierFTConfig(n_frequency=a.fourierft_n_frequency, scaling=a.fourierft_scaling, bias=bias,
                                    **place)
    if method in ("lokr", "loha"):
        common = dict(r=lora.r, alpha=lora.lora_alpha, rank_pattern=dict(lora.rank_pattern),
                      alpha_pattern=dict(lora.alpha_pattern), **place)
        if method == "lokr":
            return peft.LoKrConfig(decompose_factor=a.lokr_decompose_factor, decompose_both=a.lokr_decompose_both,
                                   **common)
        return peft.LoHaConfig(**common)
    if method == "ia3":
        return peft.IA3Config(feedforward_modules=list(a.ia3_feedforward_modules),
                              **_placement(lora, head_modules, head, layers=False))
    if method == "adalora":
        # total_step is the run's step count, known once the data is loaded: a placeholder that
        # passes peft's checks until `training_hooks` sets the real one.
        return peft.AdaLoraConfig(init_r=a.adalora_init_r, target_r=a.adalora_target_r, tinit=a.adalora_tinit,
                                  tfinal=a.adalora_tfinal, deltaT=a.adalora_delta_t, lora_alpha=lora.lora_alpha,
                                  lora_dropout=lora.lora_dropout, orth_reg_weight=a.adalora_orth_reg_weight,
                                  bias=bias, total_step=a.adalora_tinit + a.adalora_tfinal + 1, **place)
    if method == "layernorm":
        return peft.LNTuningConfig(target_modules=norm_names, modules_to_save=place["modules_to_save"],
                                   task_type=place["task_type"])
    if method == "prompt":
        # Prompt learning needs PeftModelForSequenceClassification (it prepends the virtual tokens'
        # embeddings), whatever the head.
        # peft reads the sizes below from the config's own keys, which some families name
        # differently (distilbert: n_heads); transformers' attribute aliases know them all.
        return peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=a.num_virtual_tokens,
                                       token_dim=token_dim, prompt_tuning_init=peft.PromptTuningInit.RANDOM,
                                       num_attention_heads=getattr(hf_config, "num_attention_heads", None),
                                       num_layers=model_num_layers(hf_config), modules_to_save=list(head_modules))
    raise ConfigError(f"method: {method!r} has no peft configuration")


def attach_method(model: "nn.Module", run: RunConfig, head_modules: list[str]) -> "nn.Module":
    """The run's method on a built classifier: a peft model, or for `bias` the classifier itself
    with only its biases and head left trainable, or for `full` the classifier with everything trainable."""
    method = resolved_method(run)
    if method == "bias":
        return train_biases_only(model, head_modules)
    if method == "full":  # the reference line: nothing frozen, no peft wrapper
        return model.requires_grad_(True)
    import peft

    norms = norm_module_names(model, head_modules) if method == "layernorm" else []
    token_dim = input_embedding_dim(model) if method == "prompt" else 0
    if method == "prompt":
        check_prompt_fits(model.config, run)
    pcfg = peft_method_config(run, head_modules, norms, model.config, token_dim)
    return peft.get_peft_model(model, pcfg)


def train_biases_only(model: "nn.Module", head_modules: list[str]) -> "nn.Module":
    """BitFit (Ben Zaken et al. 2022): every bias of the encoder trains, with the head whole."""
    # Head modules are dotted paths (the native heads name `classifier.out_proj`, not `classifier`).
    heads = tuple(f"{h}." for h in head_modules)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(heads) or name.endswith(".bias"))
    return model


# ---------------------------------------------------------------------------------------------
# What the training loop does for a method
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingHooks:
    """Per-step work of a method, run by `training.loop` (none for most methods)."""

    extra_loss: Optional[Callable[[], "torch.Tensor"]] = None  # added to every micro-batch's loss
    # called with the number of the optimizer step just taken, before gradients are cleared
    after_optimizer_step: Optional[Callable[[int], None]] = None


def training_hooks(model: "nn.Module", run: RunConfig, total_steps: int) -> TrainingHooks:
    """AdaLoRA: its rank budget follows the run's schedule (peft's `update_and_allocate` after each
    optimizer step, from the gradients) and its orthogonality penalty joins the loss, which peft
    adds only when the model computes the loss itself; budgetlora's loop computes it from logits."""
    if resolved_method(run) != "adalora":
        return TrainingHooks()
    a = run.adapter
    if a.adalora_tinit >= total_steps - a.adalora_tfinal:
        raise ConfigError(f"adalora_tinit/adalora_tfinal: {a.adalora_tinit} + {a.adalora_tfinal} steps leave no step "
                          f"to prune ranks in a run of {total_steps} steps; lower them")
    tuner = model.base_model  # peft's AdaLoraModel
    tuner.peft_config[tuner.trainable_adapter_name].total_step = total_steps
    weight = a.adalora_orth_reg_weight
    return TrainingHooks(extra_loss=(lambda: weight * orthogonality_penalty(tuner)) if weight > 0 else None,
                         after_optimizer_step=tuner.update_and_allocate)


def orthogonality_penalty(tuner: "nn.Module") -> "torch.Tensor":
    """AdaLoRA's regulariser (peft's AdaLoraModel.forward): mean over the P and Q matrices of
    ||P P^T - I||_F, which keeps them close to orthogonal so that E holds singular values."""
    import torch

    name = tuner.trainable_adapter_name
    terms = []
    for n, p in tuner.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)))
    return torch.stack(terms).mean() if terms else torch.zeros(())
