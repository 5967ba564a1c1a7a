"""Training and inference compute in FLOPs.

Transformers: 6·N·D for the weights (2 FLOPs per multiply-add, forward plus a backward of
twice the forward) plus the attention term 6·L·s·h·D (Kaplan et al. 2020, Table 1: forward
attention costs 2·n_layer·n_ctx·d_model per token), with N the parameters that compute
for each token (the active ones in a mixture of experts). Other networks give their
forward FLOPs per sample; training is three forwards' worth.
"""

from __future__ import annotations

from kilowatt.spec.plan import PlanModel, TrainingWorkload

__all__ = [
    "attention_flops_per_token",
    "forward_flops_per_token",
    "training_flops",
    "training_flops_per_token",
    "training_units",
]


def attention_flops_per_token(model: PlanModel, context_tokens: float | None = None) -> float:
    """Forward FLOPs per token spent on attention scores: 2·L·s·h (0 for generic models)."""
    if model.architecture == "generic":
        return 0.0
    assert model.layers and model.hidden and model.seq_len  # guaranteed by PlanModel
    context = model.seq_len if context_tokens is None else context_tokens
    return 2.0 * model.layers * context * model.hidden


def forward_flops_per_token(model: PlanModel, context_tokens: float | None = None) -> float:
    """Forward FLOPs per token: 2·N_active plus attention over ``context_tokens``."""
    return 2.0 * model.compute_params + attention_flops_per_token(model, context_tokens)


def training_flops_per_token(model: PlanModel) -> float:
    """Training FLOPs per token: 6·N_active + 6·L·s·h."""
    return 3.0 * forward_flops_per_token(model)


def training_units(model: PlanModel, train: TrainingWorkload) -> float:
    """Tokens (transformers) or samples times epochs (generic models) to process."""
    if model.architecture == "generic":
        assert train.samples is not None  # guaranteed by PlanSpec
        return train.samples * train.epochs
    assert train.tokens is not None
    return train.tokens * train.epochs


def training_flops(model: PlanModel, train: TrainingWorkload) -> float:
    """Model FLOPs of the whole training job (recomputation not included).

    >>> from kilowatt.spec.plan import PlanModel, TrainingWorkload
    >>> gpt3 = PlanModel(params=175e9, layers=96, hidden=12288, heads=96, seq_len=2048)
    >>> f"{training_flops(gpt3, TrainingWorkload(tokens=300e9)):.3g}"
    '3.19e+23'
    """
    units = training_units(model, train)
    if model.architecture == "generic":
        assert model.forward_flops_per_sample is not None
        return 3.0 * model.forward_flops_per_sample * units
    return training_flops_per_token(model) * units
