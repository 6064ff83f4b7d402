"""What each method trains on one adapted module, from its shape alone (peft 0.21's layer code,
replayed): the per-module half of the count. `rules.analyse` decides which modules are adapted.

| method | per adapted `in -> out` module |
| --- | --- |
| lora, rslora | lora_A `r x in`, lora_B `out x r` |
| dora | the same + dora_magnitude `out` |
| adalora | lora_A `r0 x in`, lora_B `out x r0`, adalora_E `r0` (r0 = --adalora-init-r, the most it trains) |
| vera | vera_lambda `r + out` (the projections are frozen and shared) |
| fourierft | fourier_spectrum `n` (--fourierft-n-frequency, at most `in x out`) |
| lokr | kronecker: `w1` + `w2` of the factored shapes (see `lokr_params`) |
| loha | hadamard `2 r (in + out)` |
| ia3 | ia3_scale `in` for a feed-forward module, else `out` |
| layernorm | layernorm: the norm's weight and bias |
"""

from __future__ import annotations

from budgetlora.budget.counting import Breakdown
from budgetlora.config import RunConfig
from budgetlora.errors import ConfigError


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """peft's lokr.layer.factorization: two factors of `dimension`, the first <= the second, as
    close to `factor` (or to the square root when -1) as the divisors allow."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    if m > n:
        n, m = m, n
    return m, n


def lokr_params(in_features: int, out_features: int, r: int, factor: int = -1, decompose_both: bool = False) -> int:
    """LoKr's trained parameters on one linear module (peft LoKrLayer.update_layer): W = w1 (x) w2
    with w1 `out_l x in_m` and w2 `out_k x in_n`; either factor is itself split into two rank-r
    matrices when r is below half its larger side (w1 only with decompose_both)."""
    in_m, in_n = factorization(in_features, factor)
    out_l, out_k = factorization(out_features, factor)
    if decompose_both and r < max(out_l, in_m) / 2:
        w1 = r * (out_l + in_m)
    else:
        w1 = out_l * in_m
    if r < max(out_k, in_n) / 2:
        w2 = r * (out_k + in_n)
    else:
        w2 = out_k * in_n
    return w1 + w2


def add_module_cost(out: Breakdown, method: str, run: RunConfig, name: str, rank: int, in_features: int,
                    out_features: int) -> None:
    """Add what `method` trains on one adapted module to `out` (biases and the head are not
    counted here). `rank` is the module's rank after rank_pattern (LoRA, LoKr, LoHa)."""
    a = run.adapter
    if method in ("lora", "rslora", "dora"):
        out.lora_A += rank * in_features
        out.lora_B += out_features * rank
        if method == "dora":
            out.dora_magnitude += out_features
    elif method == "adalora":
        r0 = a.adalora_init_r
        out.lora_A += r0 * in_features
        out.lora_B += out_features * r0
        out.adalora_E += r0
    elif method == "vera":
        out.vera_lambda += a.vera_r + out_features
    elif method == "fourierft":
        n = a.fourierft_n_frequency
        if n > in_features * out_features:  # peft refuses it when it builds the layer
            raise ConfigError(f"fourierft_n_frequency: {n:,} is more than the {in_features * out_features:,} "
                              f"weights of {name} ({in_features}->{out_features}); lower it")
        out.fourier_spectrum += n
    elif method == "lokr":
        out.kronecker += lokr_params(in_features, out_features, rank, a.lokr_decompose_factor, a.lokr_decompose_both)
    elif method == "loha":
        out.hadamard += 2 * rank * (in_features + out_features)
    elif method == "ia3":
        feedforward = any(name.endswith(m) for m in a.ia3_feedforward_modules)  # peft: no "." before it
        out.ia3_scale += in_features if feedforward else out_features
    else:
        raise ConfigError(f"method: {method!r} does not adapt linear modules")
