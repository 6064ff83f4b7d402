"""Every setting of a budgetlora run, its default, its help text and its validation.

This module is the one place where defaults live. A run is described by a `RunConfig`, made of one
dataclass per concern (model, adapter, data, training). A YAML recipe, the command line and Python
callers all build the same object, and the fully resolved object is written as `config.yaml` next
to every output, so that a run can be repeated from its own folder.

Field names are unique across the sections on purpose: each one is also a command-line flag
(`lora_alpha` -> `--lora-alpha`), so a user never has to know which section a setting lives in.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from budgetlora.errors import ConfigError, closest_match

DEFAULT_BUDGET = 1_000_000  # the flagship task's limit: fewer trainable parameters than this
HEADS = ("default", "linear", "native")
BIASES = ("none", "all", "lora_only")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("linear", "cosine", "constant")
LORA_INITS = ("true", "gaussian", "pissa", "olora", "eva", "orthogonal", "loftq")
POOLINGS = ("first", "mean")
TRACKERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers `--report-to` can send a run to
# Parameter-efficient methods (`--method`); docs/METHODS.md compares them at equal budgets.
METHODS = ("lora", "dora", "rslora", "vera", "fourierft", "lokr", "loha", "ia3", "adalora", "bias", "layernorm", "prompt", "full")
LORA_FAMILY = ("lora", "dora", "rslora")
QUANTIZATIONS = ("4bit", "8bit")


def _help(text: str, **kw: Any) -> Any:
    """A dataclass field whose help text travels with it (shown by `--help` and in the docs)."""
    metadata = {"help": text}
    if "default_factory" in kw:
        return field(default_factory=kw.pop("default_factory"), metadata=metadata)
    return field(default=kw.pop("default"), metadata=metadata)


@dataclass
class ModelConfig:
    """Which pretrained encoder to adapt and which classification head to put on it."""

    model: str = _help(
        "Hugging Face Hub id or local folder of the pretrained encoder (config + safetensors weights).",
        default="roberta-base",
    )
    head: Literal["default", "linear", "native"] = _help(
        "Classification head. 'default': the architecture's own head (roberta-base: dense 768x768 + "
        "out_proj, 593,668 params for 4 labels). 'linear': one linear layer on the first token "
        "(3,076 params for roberta-base), which leaves the budget for the adapters. 'native': the "
        "architecture's own head with its hidden dense layer frozen and LoRA-adapted and only the "
        "output layer trained (roberta-base, r=8: 15,364 params); a merged run is a plain "
        "transformers model, so it exports (`budgetlora export --format hf`).",
        default="default",
    )
    pooling: Literal["first", "mean"] = _help(
        "Pooling for the 'linear' head: the first token ([CLS]/<s>) or the mean over real tokens.",
        default="first",
    )
    attn_implementation: str = _help(
        "Attention kernel passed to transformers ('auto', 'sdpa', 'eager', ...). 'auto': 'sdpa' on a "
        "GPU (fused kernels), 'eager' on a CPU, where PyTorch's bf16 SDPA kernels were measured "
        "slower than plain matmul + softmax (docs/BENCHMARKS.md).",
        default="auto",
    )
    encoder_dropout: Optional[float] = _help(
        "Dropout inside the frozen pretrained encoder (hidden and attention) while training; None "
        "keeps the pretrained config's values (0.1 for BERT/RoBERTa). The head keeps its own "
        "dropout. 0 by default: with the encoder frozen, its dropout only adds noise to the "
        "features LoRA learns from, and turning it off was both 1.6x faster and more accurate in "
        "our measurements (docs/BENCHMARKS.md, docs/RESULTS.md).",
        default=0.0,
    )
    first_token_last_layer: bool = _help(
        "When the head reads only the first token (every architecture's own head, and the linear "
        "head with pooling 'first'), run the last encoder layer's feed-forward block on that token "
        "alone, and in BERT-style and DistilBERT layers its attention for that token's query alone. "
        "The logits are unchanged (every key and value is still read); MiniLM (6 layers) trained "
        "7-12% and predicted 6-10% faster with the feed-forward cut, then 3-8% and 5% faster with "
        "the attention's (docs/BENCHMARKS.md). Off: the plain forward pass.",
        default=True,
    )
    packed_cpu_linear: bool = _help(
        "When a finished run is served in bf16 on a CPU (predict, evaluate), run the merged model's "
        "linear layers as oneDNN matmuls on weights packed once into the kernel's layout, with the "
        "bias and the feed-forward GELU applied inside the matmul. Same predictions up to bf16 "
        "rounding (docs/BENCHMARKS.md). Off: PyTorch's plain nn.Linear.",
        default=True,
    )
    trust_remote_code: bool = _help(
        "Run code shipped with the model. Off unless you trust the model's authors.", default=False
    )
    allow_pickle_weights: bool = _help(
        "Allow loading weights from pickle files (pytorch_model.bin). Safetensors only by default, "
        "because a pickle can run arbitrary code.",
        default=False,
    )
    quantize_base: Optional[Literal["4bit", "8bit"]] = _help(
        "QLoRA: load the frozen pretrained encoder quantized by bitsandbytes (pip install bitsandbytes): "
        "'4bit' is NF4 with double quantization and bf16 compute, '8bit' LLM.int8(). The head and the "
        "adapters stay in full precision and the trainable count does not change. None: full precision.",
        default=None,
    )

    def validate(self) -> None:
        _choice("head", self.head, HEADS)
        _choice("pooling", self.pooling, POOLINGS)
        if not self.model:
            raise ConfigError("model: give a Hugging Face Hub id or a local model folder")
        if self.encoder_dropout is not None and not 0.0 <= self.encoder_dropout < 1.0:
            raise ConfigError(f"encoder_dropout: must be in [0, 1), got {self.encoder_dropout}")
        if self.quantize_base is not None:
            _choice("quantize_base", self.quantize_base, QUANTIZATIONS)


@dataclass
class LoraConfig:
    """Where and how LoRA adapters are inserted (peft does the inserting)."""

    r: int = _help("LoRA rank.", default=8)
    lora_alpha: float = _help("LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).", default=16)
    lora_dropout: float = _help(
        "Dropout on the LoRA input. Default 0 (peft's default): each adapted module would draw its own "
        "mask over the whole hidden state, which cost ~15% of a CPU training step on MiniLM (docs/BENCHMARKS.md).",
        default=0.0,
    )
    target_modules: Union[list[str], str] = _help(
        "Modules to adapt: a list of module-name suffixes (e.g. query,value), 'all-linear', or a "
        "regular expression matched against full module names.",
        default_factory=lambda: ["query", "value"],
    )
    layers: Optional[list[int]] = _help(
        "Only adapt these encoder layers (0-based); empty means all layers.", default=None
    )
    layers_relative_to: Optional[int] = _help(
        "The layer count N that --layers (and layer numbers inside --target-modules names such as "
        "encoder.layer.10.output.dense) were written for. On a model with L layers, index i becomes "
        "round(i*(L-1)/(N-1)) (halves up, duplicates dropped), so '--layers 0,1,5,10,11 "
        "--layers-relative-to 12' adapts the same relative depths of a 6-layer model (0,2,5). "
        "Empty: indices are used as given. The budget count uses the same mapping.",
        default=None,
    )
    bias: Literal["none", "all", "lora_only"] = _help(
        "Which biases train: none, all biases of the model, or only those of adapted modules.",
        default="none",
    )
    use_rslora: bool = _help("Rank-stabilised LoRA: scale by alpha/sqrt(r) instead of alpha/r.", default=False)
    use_dora: bool = _help("DoRA: add a trainable magnitude vector per adapted module.", default=False)
    init_lora_weights: str = _help(
        "LoRA initialisation: true (peft default), gaussian, pissa, olora, orthogonal, ...", default="true"
    )
    rank_pattern: dict[str, int] = _help(
        "Per-module rank overrides, {regex: r}, as in peft.", default_factory=dict
    )
    alpha_pattern: dict[str, float] = _help(
        "Per-module alpha overrides, {regex: alpha}, as in peft.", default_factory=dict
    )
    modules_to_train: list[str] = _help(
        "Extra modules (name suffixes) made fully trainable besides the head, e.g. LayerNorm.",
        default_factory=list,
    )

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"r: LoRA rank must be a positive integer, got {self.r!r}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha: must be > 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout!r}")
        _choice("bias", self.bias, BIASES)
        base_init = self.init_lora_weights.split("_")[0].lower()
        if base_init not in LORA_INITS:
            raise ConfigError(
                f"init_lora_weights: unknown initialisation {self.init_lora_weights!r}; "
                f"choose one of {', '.join(LORA_INITS)}"
            )
        if isinstance(self.target_modules, str):
            if self.target_modules != "all-linear":
                try:
                    re.compile(self.target_modules)
                except re.error as e:
                    raise ConfigError(f"target_modules: not a valid regular expression ({e})") from None
        elif not self.target_modules:
            raise ConfigError("target_modules: name at least one module, or 'all-linear'")
        if self.layers is not None and any((not isinstance(i, int)) or i < 0 for i in self.layers):
            raise ConfigError(f"layers: must be non-negative layer indices, got {self.layers!r}")
        if self.layers_relative_to is not None:
            n = self.layers_relative_to
            if not isinstance(n, int) or n < 2:
                raise ConfigError(f"layers_relative_to: must be a layer count >= 2, got {n!r}")
            named = [i for t in self.target_modules for i in _name_layer_indices(t)] if isinstance(self.target_modules, list) else []
            too_deep = sorted({i for i in list(self.layers or []) + named if i >= n})
            if too_deep:
                raise ConfigError(
                    f"layers_relative_to: layer indices {too_deep} do not exist in a {n}-layer model; "
                    "give the layer count the indices were written for"
                )
        for k, v in self.rank_pattern.items():
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"rank_pattern[{k!r}]: rank must be a positive integer, got {v!r}")

    def resolved_layers(self, num_layers: Optional[int]) -> Optional[list[int]]:
        """`layers` for a model with `num_layers` layers (see `layers_relative_to`)."""
        if self.layers is None or self.layers_relative_to is None:
            return None if self.layers is None else list(self.layers)
        return _dedup([map_layer_index(i, self.layers_relative_to, _need_layers(num_layers)) for i in self.layers])

    def resolved_target_modules(self, num_layers: Optional[int]) -> Union[list[str], str]:
        """`target_modules` with layer numbers inside list entries mapped like `resolved_layers`.

        Only a number right after a `layer`/`layers`/`h`/`block`/`blocks` part (peft's layer
        patterns) is a layer index; regular expressions and 'all-linear' are left as they are.
        """
        if self.layers_relative_to is None or isinstance(self.target_modules, str):
            return self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        if not any(_name_layer_indices(t) for t in self.target_modules):
            return list(self.target_modules)
        n, total = self.layers_relative_to, _need_layers(num_layers)
        out = []
        for t in self.target_modules:
            parts = t.split(".")
            for k in range(1, len(parts)):
                if parts[k].isdigit() and parts[k - 1] in _LAYER_PARTS:
                    parts[k] = str(map_layer_index(int(parts[k]), n, total))
            out.append(".".join(parts))
        return _dedup(out)

    @property
    def peft_init(self) -> Union[bool, str]:
        """init_lora_weights as peft wants it: booleans for the default/zero inits, else the name."""
        low = self.init_lora_weights.lower()
        if low in ("true", "false"):
            return low == "true"
        return self.init_lora_weights


@dataclass
class AdapterConfig:
    """Which parameter-efficient method trains, and the options of each (peft does the inserting).

    The target modules, layers, bias and modules_to_train of the LoRA section apply to every method
    that adapts modules; LoKr and LoHa also take their rank and alpha from --r and --lora-alpha.
    Defaults are peft's own.
    """

    method: Literal[METHODS] = _help(  # type: ignore[valid-type]
        "Parameter-efficient method: lora, dora (LoRA + a magnitude vector per module), rslora (LoRA "
        "scaled by alpha/sqrt(r)), vera (frozen shared random projections, trained scaling vectors), "
        "fourierft (a few trained Fourier coefficients per module), lokr (Kronecker-factored update), "
        "loha (Hadamard product of two low-rank updates), ia3 (trained scaling of activations), adalora "
        "(LoRA whose ranks are pruned from --adalora-init-r towards --adalora-target-r while training), "
        "bias (BitFit: only the biases train), layernorm (only the LayerNorms train) or prompt (prompt "
        "tuning: trained virtual tokens before the text), or full (full fine-tuning: every parameter trains, "
        "the reference the others are measured against; it needs a --budget above the model's size). The head "
        "trains whole with every method. bias, layernorm, prompt and full ignore --target-modules. "
        "docs/METHODS.md compares them.",
        default="lora",
    )
    vera_r: int = _help(
        "VeRA: rank of the frozen random projections shared by all adapted modules; each module trains "
        "r + out_features scaling parameters.", default=256,
    )
    vera_d_initial: float = _help("VeRA: initial value of the trained d vector.", default=0.1)
    vera_projection_prng_key: int = _help(
        "VeRA: seed of the shared random projections (saved with the adapter).", default=0
    )
    fourierft_n_frequency: int = _help(
        "FourierFT: Fourier coefficients trained per adapted module (at most in x out features).", default=1000
    )
    fourierft_scaling: float = _help("FourierFT: scale of the weight update (like LoRA's alpha/r).", default=150.0)
    lokr_decompose_factor: int = _help(
        "LoKr: factor of the Kronecker decomposition of each dimension; -1: as close to its square root "
        "as possible.", default=-1,
    )
    lokr_decompose_both: bool = _help(
        "LoKr: also factor the left Kronecker matrix into two rank-r matrices.", default=False
    )
    ia3_feedforward_modules: list[str] = _help(
        "IA3: target modules whose input (not output) is scaled, the feed-forward layers of the IA3 paper "
        "(e.g. output.dense, which in BERT-style models also names the attention output); each must also "
        "be in --target-modules.", default_factory=list,
    )
    adalora_init_r: int = _help(
        "AdaLoRA: rank every adapted module starts with; the budget counts it, as it is the most that "
        "ever trains.", default=12,
    )
    adalora_target_r: int = _help("AdaLoRA: average rank per module left at the end of training.", default=8)
    adalora_tinit: int = _help("AdaLoRA: steps of warm-up before ranks are pruned.", default=0)
    adalora_tfinal: int = _help("AdaLoRA: final steps that train with the ranks fixed.", default=0)
    adalora_delta_t: int = _help("AdaLoRA: steps between two rank reallocations.", default=1)
    adalora_orth_reg_weight: float = _help(
        "AdaLoRA: weight of the orthogonality penalty on its singular vectors, added to the loss.", default=0.5
    )
    num_virtual_tokens: int = _help(
        "Prompt tuning: trained virtual tokens put before every text (each costs hidden_size parameters; "
        "the texts get this many tokens longer).", default=20,
    )

    def validate(self) -> None:
        _choice("method", self.method, METHODS)
        for name in ("vera_r", "fourierft_n_frequency", "adalora_init_r", "adalora_target_r", "adalora_delta_t",
                     "num_virtual_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("adalora_tinit", "adalora_tfinal"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0 steps, got {getattr(self, name)!r}")
        # peft's rank allocator masks init_r - target_r singular values per module and cannot mask
        # none (torch.kthvalue with k=0 fails at the first step), so the target must be below.
        if self.adalora_target_r >= self.adalora_init_r:
            raise ConfigError(f"adalora_target_r: {self.adalora_target_r} is not below --adalora-init-r "
                              f"{self.adalora_init_r}; AdaLoRA prunes ranks from init_r down to target_r, so give "
                              "--adalora-init-r 2 or more and a smaller --adalora-target-r, or use --method lora")
        if self.adalora_orth_reg_weight < 0:
            raise ConfigError(f"adalora_orth_reg_weight: must be >= 0, got {self.adalora_orth_reg_weight!r}")
        if self.lokr_decompose_factor == 0 or self.lokr_decompose_factor < -1:
            raise ConfigError(f"lokr_decompose_factor: must be -1 or a positive factor, got {self.lokr_decompose_factor!r}")


@dataclass
class DataConfig:
    """Where the texts come from, how validation is carved and how texts are tokenized."""

    dataset: str = _help(
        "Hugging Face dataset id used when no --train-file is given (needs the Hub).", default="ag_news"
    )
    train_file: Optional[str] = _help(
        "Local training file: AG News original CSV (no header), CSV/TSV with header, JSONL, Parquet, "
        "or a pickled HF Dataset.",
        default=None,
    )
    eval_file: Optional[str] = _help(
        "Local validation file; when absent, validation is a stratified split carved from train.", default=None
    )
    text_column: str = _help("Text column name in files with a header.", default="text")
    label_column: str = _help("Label column name in files with a header (ids or names).", default="label")
    label_names: Optional[list[str]] = _help(
        "Class names in label-id order; default: the dataset's own (AG News: World, Sports, Business, Sci/Tech).",
        default=None,
    )
    val_fraction: float = _help("Share of train rows held out for validation when no eval file is given.", default=0.1)
    max_train_samples: Optional[int] = _help("Use only the first N training rows (after the split).", default=None)
    max_eval_samples: Optional[int] = _help("Use only the first N validation rows.", default=None)
    max_length: int = _help("Truncate texts to this many tokens (padding is per batch, never to this length).", default=128)
    length_filter: Optional[list[float]] = _help(
        "Drop training rows whose token length is outside these percentiles, e.g. [1, 99].", default=None
    )

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in (0, 1), got {self.val_fraction!r}")
        if self.max_length < 8:
            raise ConfigError(f"max_length: must be at least 8 tokens, got {self.max_length!r}")
        for name in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name}: must be a positive number of rows, got {v!r}")
        if self.length_filter is not None:
            lo_hi = self.length_filter
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= 100:
                raise ConfigError(f"length_filter: give two percentiles lo < hi in [0, 100], got {lo_hi!r}")


@dataclass
class TrainConfig:
    """The optimisation: schedule, batch, precision, evaluation and stopping."""

    epochs: float = _help("Passes over the training rows (fractions allowed).", default=3.0)
    max_steps: Optional[int] = _help("Stop after this many optimizer steps (overrides epochs).", default=None)
    batch_size: int = _help("Training rows per optimizer micro-batch.", default=32)
    eval_batch_size: int = _help(
        "Rows per batch in evaluation and prediction (64 was fastest on a 2-core CPU with MiniLM; "
        "raise it on a GPU).",
        default=64,
    )
    grad_accum: int = _help("Micro-batches per optimizer step.", default=1)
    lr: float = _help("Peak learning rate of AdamW.", default=2e-4)
    head_lr: Optional[float] = _help(
        "Learning rate of the head (the classifier modules); default: lr. Everything else that trains "
        "(the method's adapter, biases, modules_to_train) uses lr.", default=None,
    )
    lora_plus_ratio: float = _help("LoRA+: learning rate of the B matrices = lr x this ratio (1 = plain LoRA).", default=1.0)
    weight_decay: float = _help("AdamW weight decay (not applied to biases and norms).", default=0.01)
    schedule: Literal["linear", "cosine", "constant"] = _help("Learning-rate decay after warm-up.", default="linear")
    warmup_fraction: float = _help("Share of the optimizer steps spent warming up linearly from 0.", default=0.06)
    max_grad_norm: float = _help("Clip the gradient norm to this (0 = no clipping).", default=1.0)
    label_smoothing: float = _help("Label smoothing of the cross-entropy.", default=0.0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = _help(
        "Mixed precision: auto = bf16 where the device supports it (this includes modern CPUs), else fp32.",
        default="auto",
    )
    eval_every: Optional[int] = _help("Evaluate every N optimizer steps (and always at each epoch end).", default=None)
    log_every: int = _help("Write a log.jsonl record every N optimizer steps.", default=10)
    patience: Optional[int] = _help(
        "Early stopping: stop after this many evaluations without a better validation accuracy.", default=None
    )
    save_every: Optional[int] = _help(
        "Write a resumable checkpoint every N optimizer steps (and always at each epoch end).", default=None
    )
    keep_checkpoints: int = _help("Resumable checkpoints to keep (the newest ones; the best adapter is kept apart).", default=2)
    group_by_length: bool = _help(
        "Batch rows of similar length together (in shuffled buckets) so padding is small.", default=True
    )
    seed: int = _help("Seed for data split, shuffling, initialisation and dropout.", default=42)
    num_workers: int = _help("DataLoader worker processes (0 = in the main process).", default=0)
    compile: bool = _help("Compile the model with torch.compile.", default=False)
    teacher: Optional[str] = _help(
        "Knowledge distillation: a finished budgetlora run folder whose predictions the student also "
        "learns from; an ensemble is a comma-separated list of run folders whose probabilities are "
        "averaged. The teacher is not trained, so it does not count against the budget. Its logits "
        "on the training rows are computed once and cached in the run's cache/ folder and the teacher's.",
        default=None,
    )
    distill_alpha: float = _help(
        "Weight of the distillation term: loss = (1-alpha) x cross-entropy + alpha x T^2 x "
        "KL(teacher || student), both softened by the temperature T. Used only with --teacher.",
        default=0.5,
    )
    distill_temperature: float = _help(
        "Softmax temperature T of the distillation term (> 1 softens both distributions).", default=2.0
    )
    report_to: Optional[list[str]] = _help(
        "Experiment trackers that also receive every log.jsonl record, the resolved settings and the "
        "budget breakdown, through Accelerate's tracking API: tensorboard (event files in "
        "RUN/tensorboard), mlflow (the store MLFLOW_TRACKING_URI names, else RUN/mlflow.db), wandb "
        "(W&B's own settings apply, e.g. WANDB_PROJECT, WANDB_MODE=offline); several "
        "comma-separated, or none (the default). Checked before training starts: a tracker that "
        "is not installed stops the run with what to install.",
        default=None,
    )

    def validate(self) -> None:
        if self.epochs <= 0 and not self.max_steps:
            raise ConfigError(f"epochs: must be > 0, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {self.max_steps!r}")
        for name in ("batch_size", "eval_batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr: learning rate must be > 0, got {self.lr!r}")
        if self.head_lr is not None and not self.head_lr > 0:
            raise ConfigError(f"head_lr: must be > 0, got {self.head_lr!r}")
        if self.lora_plus_ratio <= 0:
            raise ConfigError(f"lora_plus_ratio: must be > 0, got {self.lora_plus_ratio!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction: must be in [0, 1), got {self.warmup_fraction!r}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm: must be >= 0, got {self.max_grad_norm!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing!r}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"eval_every: must be >= 1, got {self.eval_every!r}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience: must be >= 1, got {self.patience!r}")
        if self.save_every is not None and self.save_every < 1:
            raise ConfigError(f"save_every: must be >= 1, got {self.save_every!r}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints: must be >= 1, got {self.keep_checkpoints!r}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0, got {self.num_workers!r}")
        if self.teacher is not None and not self.teacher_dirs:
            raise ConfigError("teacher: give a finished run folder, or several separated by commas")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ConfigError(f"distill_alpha: must be in [0, 1], got {self.distill_alpha!r}")
        if not self.distill_temperature > 0:
            raise ConfigError(f"distill_temperature: must be > 0, got {self.distill_temperature!r}")
        for name in self.report_to or []:
            if name == "none":
                raise ConfigError("report_to: none means no tracker; give it alone, or name the trackers only")
            if name not in TRACKERS:
                close = closest_match(name, TRACKERS)
                hint = f"did you mean {close!r}? " if close else ""
                raise ConfigError(f"report_to: unknown tracker {name!r}; {hint}choose from "
                                  f"{', '.join(TRACKERS)} (several comma-separated) or none")

    @property
    def teacher_dirs(self) -> list[str]:
        """The teacher run folders (one, or the members of an ensemble)."""
        return [t.strip() for t in (self.teacher or "").split(",") if t.strip()]


@dataclass
class RunConfig:
    """A whole run: the four sections plus the budget and where outputs go."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    budget: int = field(
        default=DEFAULT_BUDGET,
        metadata={"help": "Trainable parameters must be strictly fewer than this (adapters + head + biases)."},
    )
    output_dir: Optional[str] = field(default=None, metadata={"help": "Folder for the run's outputs."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a finished run already in --output-dir."}
    )

    def validate(self) -> "RunConfig":
        for section in SECTIONS:
            getattr(self, section).validate()
        if not isinstance(self.budget, int) or self.budget <= 0:
            raise ConfigError(f"budget: must be a positive number of parameters, got {self.budget!r}")
        check_method_settings(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


SECTIONS: dict[str, type] = {"model": ModelConfig, "lora": LoraConfig, "adapter": AdapterConfig, "data": DataConfig,
                             "train": TrainConfig}
TOP_LEVEL = ("budget", "output_dir", "overwrite")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")


# ---------------------------------------------------------------------------------------------
# The method and the LoRA-section settings it can use (modeling.methods builds it, budget counts it)
# ---------------------------------------------------------------------------------------------

# Methods whose peft config takes a bias mode (peft's "<method>_only" is our lora_only), and those
# that take rank_pattern / alpha_pattern or layers_to_transform.
_TAKES_BIAS = LORA_FAMILY + ("adalora", "vera", "fourierft")
_TAKES_PATTERNS = LORA_FAMILY + ("lokr", "loha")
_TAKES_LAYERS = LORA_FAMILY + ("adalora", "vera", "fourierft", "lokr", "loha")
_TAKES_MODULES_TO_TRAIN = LORA_FAMILY + ("adalora", "vera", "fourierft", "lokr", "loha", "ia3", "layernorm")


def resolved_method(run: "RunConfig") -> str:
    """The method that trains: --use-dora / --use-rslora on plain LoRA name DoRA / rsLoRA."""
    method = run.adapter.method
    if method in LORA_FAMILY:
        if method == "dora" or run.lora.use_dora:
            return "dora"
        if method == "rslora" or run.lora.use_rslora:
            return "rslora"
    return method


def prompt_room(hf_config: Any, max_length: int) -> Optional[int]:
    """How many virtual tokens fit before texts of `max_length` tokens: the position embeddings
    less 2 (kept aside for roberta's offset); None when the config does not say."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    return limit - 2 - max_length if isinstance(limit, int) else None


def check_prompt_fits(hf_config: Any, run: "RunConfig") -> None:
    """Virtual tokens lengthen every text: the longest must still fit the position embeddings,
    or the forward pass fails on the first long text."""
    room, n = prompt_room(hf_config, run.data.max_length), run.adapter.num_virtual_tokens
    if room is not None and n > room:
        limit = hf_config.max_position_embeddings
        raise ConfigError(f"num_virtual_tokens: {n} virtual tokens + max_length {run.data.max_length} exceed the "
                          f"{limit} positions of this model; lower --max-length to {limit - 2 - n} or use fewer tokens")


def check_method_settings(run: "RunConfig") -> None:
    """Refuse LoRA-section settings that the chosen method has no use for, rather than ignore them."""
    method, lora = run.adapter.method, run.lora
    if method not in LORA_FAMILY and (lora.use_dora or lora.use_rslora):
        flag = "--use-dora" if lora.use_dora else "--use-rslora"
        raise ConfigError(f"{flag.lstrip('-').replace('-', '_')}: only for --method lora; {method} has no {flag}")
    if lora.bias != "none" and method not in _TAKES_BIAS:
        extra = "; --method bias already trains every bias" if method == "bias" else ""
        raise ConfigError(f"bias: --bias {lora.bias} is for {', '.join(_TAKES_BIAS)}, not --method {method}{extra}")
    if (lora.rank_pattern or lora.alpha_pattern) and method not in _TAKES_PATTERNS:
        raise ConfigError(f"rank_pattern/alpha_pattern: only {', '.join(_TAKES_PATTERNS)} take them, "
                          f"not --method {method}")
    if lora.layers is not None and method not in _TAKES_LAYERS:
        raise ConfigError(f"layers: --method {method} cannot be limited to layers (peft has no layers_to_transform "
                          f"for it); drop --layers or list exact module names in --target-modules")
    if lora.modules_to_train and method not in _TAKES_MODULES_TO_TRAIN:
        raise ConfigError(f"modules_to_train: not supported with --method {method}")
    if run.model.quantize_base and method in ("lokr", "loha"):  # peft reads their shapes off packed weights
        raise ConfigError(f"quantize_base: peft's {method} cannot adapt bitsandbytes layers; drop --quantize-base "
                          "or use another --method (lora, dora, vera, ia3, adalora, ...)")
    if method == "ia3" and isinstance(lora.target_modules, list):
        missing = [m for m in run.adapter.ia3_feedforward_modules if m not in lora.target_modules]
        if missing:  # peft's IA3Config refuses this too, with a traceback
            raise ConfigError(f"ia3_feedforward_modules: {', '.join(missing)} must also be in --target-modules")


# ---------------------------------------------------------------------------------------------
# Layer indices written for another depth (LoraConfig.layers_relative_to). model.add_lora and
# budget.analyse both call `resolve_relative_layers`, so what trains is what was counted.
# ---------------------------------------------------------------------------------------------

_LAYER_PARTS = ("layer", "layers", "h", "block", "blocks")  # peft's default layers_pattern


def map_layer_index(i: int, written_for: int, num_layers: int) -> int:
    """Index `i` of a `written_for`-layer model -> the same relative depth of a `num_layers` one."""
    if num_layers <= 1:
        return 0
    return min(num_layers - 1, int(i * (num_layers - 1) / (written_for - 1) + 0.5))


def model_num_layers(hf_config: Any) -> Optional[int]:
    """Number of transformer blocks from a transformers config (bert-like, distilbert, others)."""
    for name in ("num_hidden_layers", "n_layers", "num_layers", "n_layer"):
        value = getattr(hf_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_relative_layers(run: "RunConfig", num_layers: Optional[int]) -> "RunConfig":
    """`run` with `layers` and layer numbers in target names mapped onto a `num_layers`-layer
    model and `layers_relative_to` cleared (a copy); `run` itself when there is nothing to map."""
    if run.lora.layers_relative_to is None:
        return run
    out = _deepcopy(run)
    out.lora.layers = run.lora.resolved_layers(num_layers)
    out.lora.target_modules = run.lora.resolved_target_modules(num_layers)
    out.lora.layers_relative_to = None
    return out


def _name_layer_indices(name: str) -> list[int]:
    parts = name.split(".")
    return [int(parts[k]) for k in range(1, len(parts)) if parts[k].isdigit() and parts[k - 1] in _LAYER_PARTS]


def _need_layers(num_layers: Optional[int]) -> int:
    if not num_layers:
        raise ConfigError("layers_relative_to: cannot tell how many layers this model has")
    return num_layers


def _dedup(items: list) -> list:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------------
# Field lookup, type coercion and building from dicts / YAML / flags
# ---------------------------------------------------------------------------------------------


def field_index() -> dict[str, tuple[Optional[str], dataclasses.Field]]:
    """Map every flat field name to (section or None for top level, dataclass field)."""
    index: dict[str, tuple[Optional[str], dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            assert f.name not in index, f"field name {f.name} is not unique across sections"
            index[f.name] = (section, f)
    for f in fields(RunConfig):
        if f.name in TOP_LEVEL:
            index[f.name] = (None, f)
    return index


def _resolved_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def field_type(name: str) -> Any:
    section, _ = field_index()[name]
    return _resolved_type(SECTIONS[section] if section else RunConfig, name)


def coerce(name: str, value: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or raise a clear ConfigError."""
    tp = field_type(name)
    try:
        return _coerce(tp, value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {value!r} is not a valid {_type_name(tp)} ({e})") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        # With list[str] | str (target_modules), a comma list is a list and anything else a string.
        if set(map(typing.get_origin, non_none)) == {list, None} and str in non_none:
            if isinstance(value, list):
                return [str(v) for v in value]
            if isinstance(value, str) and value != "all-linear":
                # A bare module name (`query`) means that module, like peft's list form; only
                # text with regex syntax in it is taken as a regular expression.
                if "," in value or re.fullmatch(r"[\w.]+", value.strip()):
                    return [v.strip() for v in value.split(",") if v.strip()]
            return str(value)
        for a in non_none:
            try:
                return _coerce(a, value)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ValueError(f"choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        (inner,) = args
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError("expected a list")
        return [_coerce(inner, v) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise TypeError("expected a mapping like {regex: value}")
        k_t, v_t = args
        return {_coerce(k_t, k): _coerce(v_t, v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError("expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError("expected an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("expected an integer")
            return int(value)
        if isinstance(value, str):
            text = value.replace("_", "").replace(",", "")
            try:
                return int(text)
            except ValueError:
                as_float = float(text)  # accepts 1e6 as a budget
                if not as_float.is_integer():
                    raise ValueError("expected an integer") from None
                return int(as_float)
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError("expected a number")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise TypeError("expected a string")
        return str(value)
    return value


def from_dict(data: dict[str, Any], base: Optional[RunConfig] = None) -> RunConfig:
    """Apply a nested (YAML-shaped) or flat mapping onto `base` (defaults when None).

    Unknown keys are an error with a suggestion, because a silently ignored typo in a recipe
    is a run with settings nobody asked for.
    """
    cfg = dataclasses.replace(base) if base else RunConfig()
    cfg = _deepcopy(cfg)
    flat: dict[str, Any] = {}
    for key, value in (data or {}).items():
        # `model` is both a section and the field naming the model: a mapping is the section,
        # anything else is the field (so `model: roberta-base` works as a recipe shorthand).
        if key in SECTIONS and (isinstance(value, dict) or key not in field_index()):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section of settings, got {value!r}")
            section_fields = {f.name for f in fields(SECTIONS[key])}
            for sub, v in value.items():
                if sub not in section_fields:
                    raise ConfigError(_unknown(f"{key}.{sub}", sub, section_fields))
                flat[sub] = v
        else:
            flat[key] = value
    index = field_index()
    for key, value in flat.items():
        name = key.replace("-", "_")
        if name not in index:
            raise ConfigError(_unknown(key, name, set(index)))
        set_field(cfg, name, coerce(name, value))
    return cfg


def set_field(cfg: RunConfig, name: str, value: Any) -> None:
    section, _ = field_index()[name]
    setattr(getattr(cfg, section) if section else cfg, name, value)


def get_field(cfg: RunConfig, name: str) -> Any:
    section, _ = field_index()[name]
    return getattr(getattr(cfg, section) if section else cfg, name)


def _unknown(shown: str, name: str, known: set[str]) -> str:
    close = closest_match(name, known)
    hint = f"; did you mean {close!r}?" if close else ""
    return f"unknown setting {shown!r}{hint}"


def _deepcopy(cfg: RunConfig) -> RunConfig:
    import copy

    return copy.deepcopy(cfg)


def flag_value(value: Any) -> str:
    """A setting as the text its command-line flag takes; `coerce` reads it back to the same value."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
        # A one-element list of a name with regex syntax in it would read back as a regex: a
        # trailing comma keeps it a list. Plain names (`query`, `5`) read back as lists already.
        single_odd = len(items) == 1 and not re.fullmatch(r"[\w.]+", items[0])
        return ",".join(items) + ("," if single_odd else "")
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def to_flags(settings: dict[str, Any]) -> list[str]:
    """`budgetlora train` flags for {field name: value}, in the given order (the inverse of the CLI)."""
    args: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            args += [flag, flag_value(value)]
    return args


def load_yaml(path: Union[str, Path]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: recipe file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping of settings")
    return data


def load_config(
    recipe: Optional[Union[str, Path]] = None, overrides: Optional[dict[str, Any]] = None
) -> RunConfig:
    """Defaults, then the recipe, then explicit overrides (flat names); validated."""
    cfg = RunConfig()
    if recipe is not None:
        cfg = from_dict(load_yaml(recipe), cfg)
    if overrides:
        cfg = from_dict(overrides, cfg)
    return cfg.validate()
