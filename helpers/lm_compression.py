"""Compressing a pretrained Transformer's ``Linear`` layers from scratch: RTN, Wanda, SmoothQuant, GPTQ, AWQ.

Written for all-MiniLM-L6-v2 (:mod:`helpers.embeddings`) on the CPU, but every function takes a plain
weight ``(out_features, in_features)`` or an ``nn.Linear``, and calibration inputs as a tensor or a
list of tensors ``(..., in_features)`` (:func:`capture_inputs` records them from a real model).
Sections: group-wise round-to-nearest (below); pruning by magnitude and Wanda, unstructured or
n:m; SmoothQuant W8A8; GPTQ; AWQ. Weights are *fake-quantized*: the
functions return the dequantized fp32 weight (what the layer computes with) together with the
integer codes, scales and zero points a kernel would store, so a chapter can both measure the
fidelity (:func:`helpers.embeddings.cosine_fidelity`, :func:`recall_at_1`) and count the bytes
(:func:`quantized_linear_bytes`).

Round-to-nearest (RTN) with groups: each row of the weight is cut into groups of ``group_size``
consecutive input weights, and each group gets its own scale ``s`` (and zero point ``z``):

    q = clamp(round(w / s) + z, q_min, q_max),    w_hat = s * (q - z)

the uniform affine quantizer of Jacob et al. (2018, Eq. 1, ``r = S(q - Z)``) applied per group, the
RTN baseline of GPTQ (Frantar et al. 2023) and AWQ (Lin et al. 2024), whose published 4-bit results
use ``group_size=128``. The scale follows torchao's ``choose_qparams_affine`` (0.18.0), which
``tests/test_lm_compression.py`` checks to the last code:

- symmetric: codes in ``[-2^(b-1), 2^(b-1) - 1]``, ``z = 0``, ``s = max|w| / ((q_max - q_min) / 2)``
  (GPTQ's reference code uses the same grid, shifted to ``[0, 2^b - 1]`` with ``z = 2^(b-1)``);
- asymmetric: codes in ``[0, 2^b - 1]``, ``s = (max(w, 0) - min(w, 0)) / (q_max - q_min)``,
  ``z = clamp(q_min - round(min(w, 0) / s), q_min, q_max)``.

A scale is stored in ``scale_dtype`` (default fp16, as the GPTQ and AWQ checkpoint formats do): it is
computed in fp32, the zero point from the fp32 scale, then the scale is rounded to ``scale_dtype``
and the codes are computed with the rounded scale, so the bytes counted are the bytes used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from helpers._checks import check_fraction, check_int, get_submodule
from helpers.embeddings import search_top1, with_linear_weights

SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_bits(bits) -> int:
    return check_int("bits", bits, minimum=2, maximum=8)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_weight(weight) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D floating-point tensor (out_features, in_features), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    return weight


def resolve_group_size(group_size, in_features: int) -> int:
    """``group_size`` itself, or ``in_features`` for ``None`` / ``-1`` (one group per output channel).

    ``ValueError`` unless it is an integer >= 1 that divides the row length ``in_features``.
    """
    if group_size is None or (not isinstance(group_size, bool) and group_size == -1):
        return in_features
    group_size = check_int("group_size", group_size, minimum=1)
    if in_features % group_size:
        raise ValueError(f"group_size must divide the row length {in_features} (or be None or -1 for one group "
                         f"per row), got {group_size}")
    return group_size


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(q_min, q_max)``: ``[-2^(b-1), 2^(b-1) - 1]`` symmetric, ``[0, 2^b - 1]`` asymmetric."""
    bits = _check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


@dataclass(frozen=True)
class GroupQuantized:
    """A weight quantized group-wise: what a kernel stores, and what the layer computes with.

    ``weight``: the dequantized weight (fp32, the input's shape); ``codes``: int32 ``(out, in)`` in
    :func:`code_range`; ``scales``: ``(out, in // group_size)`` in ``scale_dtype``; ``zero_points``:
    int32, same shape (all 0 when symmetric).
    """

    weight: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool

    def stored_bytes(self, bias: bool = False) -> int:
        """:func:`quantized_linear_bytes` of this weight (its scales at their own dtype)."""
        out_features, in_features = self.codes.shape
        return quantized_linear_bytes(out_features, in_features, self.bits, self.group_size, self.symmetric,
                                      scale_dtype=self.scales.dtype, bias=bias)


def group_qparams(weight: torch.Tensor, bits: int = 4, group_size=128, symmetric: bool = True,
                  scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scales, zero_points)``, each ``(out, in // group_size)``: the RTN parameters of every group."""
    weight = _check_weight(weight)
    q_min, q_max = code_range(bits, _check_bool("symmetric", symmetric))
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}, got {scale_dtype!r}")
    group_size = resolve_group_size(group_size, weight.shape[1])
    groups = weight.detach().float().reshape(weight.shape[0], -1, group_size)
    low = groups.amin(dim=2).clamp(max=0)
    high = groups.amax(dim=2).clamp(min=0)
    eps = torch.finfo(torch.float32).smallest_normal
    if symmetric:
        scales = (torch.maximum(-low, high) / ((q_max - q_min) / 2)).clamp(min=eps)
        zero_points = torch.zeros_like(scales, dtype=torch.int32)
    else:
        scales = ((high - low) / (q_max - q_min)).clamp(min=eps)
        zero_points = (q_min - torch.round(low / scales)).clamp(q_min, q_max).to(torch.int32)
    return scales.to(scale_dtype), zero_points


def quantize_groups(weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, bits: int,
                    symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, dequantized)`` of ``weight`` with given per-group ``scales`` and ``zero_points``."""
    weight = _check_weight(weight)
    q_min, q_max = code_range(bits, symmetric)
    if scales.shape != zero_points.shape or scales.dim() != 2 or scales.shape[0] != weight.shape[0] \
            or weight.shape[1] % scales.shape[1]:
        raise ValueError(f"scales and zero_points must be (out_features, groups) with groups dividing "
                         f"{weight.shape[1]}, got {tuple(scales.shape)} and {tuple(zero_points.shape)}")
    group_size = weight.shape[1] // scales.shape[1]
    s = scales.float().repeat_interleave(group_size, dim=1)
    z = zero_points.float().repeat_interleave(group_size, dim=1)
    codes = torch.clamp(torch.round(weight.detach().float() / s) + z, q_min, q_max)
    return codes.to(torch.int32), (codes - z) * s


def rtn_quantize(weight: torch.Tensor, bits: int = 4, group_size=128, symmetric: bool = True,
                 scale_dtype: torch.dtype = torch.float16) -> GroupQuantized:
    """Group-wise round-to-nearest of a weight ``(out, in)``: scales from each group's range, then rounding.

    ``w_hat = s (clamp(round(w / s) + z, q_min, q_max) - z)`` per group (module docstring): the RTN
    baseline of GPTQ (Frantar et al. 2023) and AWQ (Lin et al. 2024).

    ``bits`` in 2..8; ``group_size`` divides ``in`` (``None`` or ``-1``: one group per output channel).
    """
    scales, zero_points = group_qparams(weight, bits, group_size, symmetric, scale_dtype)
    codes, dequantized = quantize_groups(weight, scales, zero_points, bits, symmetric)
    return GroupQuantized(dequantized.to(weight.dtype), codes, scales, zero_points, bits,
                          weight.shape[1] // scales.shape[1], symmetric)


def quantized_linear_bytes(out_features: int, in_features: int, bits: int, group_size=128, symmetric: bool = True,
                           scale_dtype: torch.dtype = torch.float16, bias: bool = False) -> int:
    """Stored bytes of a group-quantized ``Linear(in_features, out_features)``.

    Codes packed at ``bits`` bits each, ``ceil(out * in * bits / 8)`` bytes; one scale per group in
    ``scale_dtype`` (2 bytes for fp16/bf16, 4 for fp32); asymmetric only: one zero point per group,
    packed at ``bits`` bits; ``bias``: ``out_features`` fp32 values, not quantized.
    """
    out_features = check_int("out_features", out_features, minimum=1)
    in_features = check_int("in_features", in_features, minimum=1)
    bits = _check_bits(bits)
    _check_bool("symmetric", symmetric)
    _check_bool("bias", bias)
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}, got {scale_dtype!r}")
    groups = out_features * (in_features // resolve_group_size(group_size, in_features))
    total = math.ceil(out_features * in_features * bits / 8) + groups * torch.finfo(scale_dtype).bits // 8
    if not symmetric:
        total += math.ceil(groups * bits / 8)
    return total + (4 * out_features if bias else 0)


def quantize_linear_weights(model: nn.Module, quantize, names=None) -> tuple[nn.Module, int]:
    """A deep copy of ``model`` whose ``nn.Linear`` weights are replaced by ``quantize(name, linear)``.

    ``quantize`` returns a :class:`GroupQuantized` (e.g. ``lambda name, layer: rtn_quantize(layer.weight)``);
    ``names`` limits the layers (default: every ``nn.Linear``). Returns the copy and the stored bytes
    of the quantized layers (:meth:`GroupQuantized.stored_bytes`, biases included in fp32).
    """
    stored = {}

    def weight_of(name, layer):
        result = quantize(name, layer)
        stored[name] = result.stored_bytes(bias=layer.bias is not None)
        return result.weight

    return with_linear_weights(model, weight_of, names), sum(stored.values())


def recall_at_1(query_embeddings: torch.Tensor, document_embeddings: torch.Tensor) -> float:
    """Fraction of queries whose most cosine-similar document is their own (row ``i`` answers row ``i``)."""
    if query_embeddings.shape != document_embeddings.shape:
        raise ValueError(f"query and document embeddings must have the same shape, got "
                         f"{tuple(query_embeddings.shape)} and {tuple(document_embeddings.shape)}")
    top1 = search_top1(query_embeddings, document_embeddings)
    return float((top1 == torch.arange(len(top1))).double().mean())


# ------------------------------------------------------------------------------------------------
# Pruning: magnitude and Wanda, unstructured and n:m
# ------------------------------------------------------------------------------------------------


def _calibration_rows(inputs, in_features: int | None = None) -> torch.Tensor:
    """Calibration inputs as one fp32 matrix ``(tokens, in_features)``; a tensor or a list of tensors ``(..., in)``."""
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    rows = [t.detach().float().reshape(-1, t.shape[-1]) for t in tensors if t.numel()]
    if not rows:
        raise ValueError("inputs must be a non-empty calibration set (at least one input row), got none")
    width = {r.shape[1] for r in rows}
    if len(width) != 1 or (in_features is not None and width != {in_features}):
        raise ValueError(f"inputs must all have the layer's in_features {in_features} as their last dimension, "
                         f"got {sorted(width)}")
    return torch.cat(rows)


def input_norms(inputs, in_features: int | None = None) -> torch.Tensor:
    """``||X_j||_2`` of each input feature ``j`` over every token of the calibration set (``(in_features,)``)."""
    return _calibration_rows(inputs, in_features).pow(2).sum(dim=0).sqrt()


def parse_n_m(pattern) -> tuple[int, int]:
    """``(n, m)`` of a semi-structured pattern ``"n:m"`` with ``0 < n < m`` (``"2:4"``: 2 of every 4 kept)."""
    parts = pattern.split(":") if isinstance(pattern, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]):
        raise ValueError(f"pattern must be 'n:m' with integers 0 < n < m (e.g. '2:4'), got {pattern!r}")
    return int(parts[0]), int(parts[1])


def unstructured_mask(scores: torch.Tensor, sparsity) -> torch.Tensor:
    """Keep-mask (bool) pruning the ``round(sparsity * in_features)`` lowest scores of every output row.

    Rows are Wanda's comparison group (Sun et al. 2024, Sec. 3: weights are compared per output, not
    across the whole layer); ties are broken by input index (the earlier one is pruned first).
    ``sparsity`` in ``[0, 1)``.
    """
    sparsity = check_fraction("sparsity", sparsity)
    scores = _check_weight(scores)
    pruned = round(sparsity * scores.shape[1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    order = torch.sort(scores, dim=1, stable=True).indices
    mask.scatter_(1, order[:, :pruned], False)
    return mask


def n_m_mask(scores: torch.Tensor, pattern: str = "2:4") -> torch.Tensor:
    """Keep-mask (bool) with the ``n`` highest scores of every ``m`` consecutive weights along the input dimension.

    The semi-structured sparsity of NVIDIA's Ampere sparse tensor cores (Mishra et al. 2021, "2:4": at
    most 2 nonzeros in every group of 4), as Wanda uses it (Sun et al. 2024, Sec. 3). ``in_features``
    must be a multiple of ``m``; ties go to the earlier index.
    """
    n, m = parse_n_m(pattern)
    scores = _check_weight(scores)
    if scores.shape[1] % m:
        raise ValueError(f"pattern {pattern!r} needs in_features to be a multiple of {m}, got {scores.shape[1]}")
    blocks = scores.reshape(scores.shape[0], -1, m)
    order = torch.sort(blocks, dim=2, stable=True, descending=True).indices
    mask = torch.zeros_like(blocks, dtype=torch.bool)
    mask.scatter_(2, order[..., :n], True)
    return mask.reshape(scores.shape)


def prune_mask(scores: torch.Tensor, sparsity) -> torch.Tensor:
    """:func:`n_m_mask` when ``sparsity`` is a string ``"n:m"``, else :func:`unstructured_mask`."""
    return n_m_mask(scores, sparsity) if isinstance(sparsity, str) else unstructured_mask(scores, sparsity)


def magnitude_prune(weight: torch.Tensor, sparsity=0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pruned weight, keep-mask)`` by magnitude ``|W_ij|``, in the same per-row groups as :func:`wanda_prune`."""
    weight = _check_weight(weight)
    mask = prune_mask(weight.detach().abs(), sparsity)
    return weight.detach() * mask, mask


def wanda_scores(weight: torch.Tensor, inputs) -> torch.Tensor:
    """Wanda's importance of every weight (Sun et al. 2024): ``S_ij = |W_ij| * ||X_j||_2``.

    The paper's words: "the product of its magnitude and the corresponding input feature norm".

    ``X`` are the layer's calibration inputs (a tensor or a list of tensors ``(..., in_features)``),
    and ``||X_j||_2`` the norm of input feature ``j`` over all their tokens (:func:`input_norms`).
    """
    weight = _check_weight(weight)
    return weight.detach().abs().float() * input_norms(inputs, weight.shape[1])[None, :]


def wanda_prune(weight: torch.Tensor, inputs, sparsity=0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pruned weight, keep-mask)``: Wanda, pruning by weights *and* activations, no retraining or update.

    ``sparsity``: a fraction in ``[0, 1)`` removed from each output row, or ``"n:m"`` (e.g. ``"2:4"``).
    """
    mask = prune_mask(wanda_scores(weight, inputs), sparsity)
    return weight.detach() * mask, mask


# ------------------------------------------------------------------------------------------------
# SmoothQuant: move activation outliers into the weights, then W8A8
# ------------------------------------------------------------------------------------------------


def activation_absmax(inputs, in_features: int | None = None) -> torch.Tensor:
    """``max |X_j|`` of each input channel ``j`` over every calibration token (``(in_features,)``)."""
    return _calibration_rows(inputs, in_features).abs().amax(dim=0)


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha=0.5, eps: float = 1e-5) -> torch.Tensor:
    """SmoothQuant's per-input-channel factor (Xiao et al. 2023, Eq. 4): ``s_j = max|X_j|^a / max|W_j|^(1-a)``.

    ``act_absmax``: :func:`activation_absmax` of the layer's calibration inputs; ``max|W_j|`` is over
    the weights that input channel ``j`` meets (column ``j`` of ``weight``, shape ``(out, in)``);
    ``alpha`` (the migration strength) in ``[0, 1]``, 0.5 in the paper for most models. Both maxima
    are clamped to ``eps`` from below, as the authors' code does, so a dead channel gives no 0 or inf.
    """
    weight = _check_weight(weight)
    alpha = check_fraction("alpha", alpha, allow_one=True)
    if act_absmax.shape != (weight.shape[1],):
        raise ValueError(f"act_absmax must have one value per input channel ({weight.shape[1]},), "
                         f"got {tuple(act_absmax.shape)}")
    w_absmax = weight.detach().abs().float().amax(dim=0).clamp(min=eps)
    return act_absmax.float().clamp(min=eps).pow(alpha) / w_absmax.pow(1 - alpha)


def smooth_weight(weight: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``W diag(s)``: the weight that takes the smoothed input ``X diag(s)^-1``, so ``Y = (X / s)(W s)^T = X W^T``.

    In a Transformer the division ``X / s`` is folded into the preceding LayerNorm's weight and bias,
    so it costs nothing at run time (Xiao et al. 2023, Sec. 4).
    """
    return _check_weight(weight).detach() * factors[None, :]


def fake_quantize_absmax(x: torch.Tensor, bits: int = 8, dim: int | None = None) -> torch.Tensor:
    """Symmetric absmax fake-quantization: ``s = max|x| / (2^(b-1) - 1)``, ``x_hat = s * round(x / s)``.

    Per tensor (``dim=None``) or per slice along ``dim`` (``dim=0`` on a weight: per output channel).
    """
    q_max = 2 ** (_check_bits(bits) - 1) - 1
    absmax = x.abs().amax() if dim is None else x.abs().amax(dim=[d for d in range(x.dim()) if d != dim], keepdim=True)
    scale = absmax.clamp(min=1e-5) / q_max
    return torch.clamp(torch.round(x / scale), -q_max, q_max) * scale


def w8a8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, bits: int = 8,
                factors: torch.Tensor | None = None) -> torch.Tensor:
    """A Linear in W8A8 fake-quant: per-tensor activations (dynamic, from ``x``), per-output-channel weights.

    With ``factors`` (:func:`smoothing_factors`), SmoothQuant: ``x / s`` and ``W s`` are quantized
    instead of ``x`` and ``W``; without, the plain W8A8 baseline.
    """
    if factors is not None:
        x, weight = x / factors, smooth_weight(weight, factors)
    y = fake_quantize_absmax(x.float(), bits) @ fake_quantize_absmax(weight.detach().float(), bits, dim=0).T
    return y if bias is None else y + bias.detach()


class SmoothQuantLinear(nn.Module):
    """An ``nn.Linear`` replaced by its SmoothQuant W8A8 version (fake-quant), smoothing factors from calibration.

    ``SmoothQuantLinear(linear, calibration_inputs, alpha=0.5)``; ``alpha=None`` gives plain W8A8.
    """

    def __init__(self, linear: nn.Linear, calibration_inputs=None, alpha=0.5, bits: int = 8):
        super().__init__()
        self.bits = _check_bits(bits)
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        factors = None
        if alpha is not None:
            factors = smoothing_factors(activation_absmax(calibration_inputs, linear.in_features), self.weight, alpha)
        self.register_buffer("factors", factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = w8a8_linear(x.reshape(-1, shape[-1]), self.weight, self.bias, self.bits, self.factors)
        return y.reshape(*shape[:-1], -1)


# ------------------------------------------------------------------------------------------------
# GPTQ: quantize column by column, updating the columns not yet quantized
# ------------------------------------------------------------------------------------------------


def layer_hessian(inputs, in_features: int | None = None) -> torch.Tensor:
    """``H = 2 X^T X / tokens`` (``(in, in)``, float64): the Hessian of ``||X W^T - X W_hat^T||^2 / tokens`` per row."""
    x = _calibration_rows(inputs, in_features).double()
    return 2 * x.T @ x / x.shape[0]


def gptq_quantize(weight: torch.Tensor, inputs, bits: int = 4, group_size=128, symmetric: bool = True,
                  scale_dtype: torch.dtype = torch.float16, damp=0.01) -> GroupQuantized:
    """GPTQ (Frantar et al. 2023, Algorithm 1) on one layer, with the groups of :func:`rtn_quantize`.

    Columns are quantized left to right; the rounding error of column ``q`` is spread over the
    columns not yet quantized by the optimal brain surgeon update (Eq. 2, from OBQ):

        delta_F = -(w_q - quant(w_q)) / [H_F^-1]_qq * (H_F^-1)_{:,q}

    with ``H = 2 X^T X`` over the calibration inputs ``X``. As in the paper (its step 3, "Cholesky
    reformulation"), the inverses of all the shrinking ``H_F`` are read from the rows of the upper
    Cholesky factor of ``H^-1``, after dampening ``H`` by ``damp`` times its mean diagonal. The
    paper's step 2, "lazy batch-updates" (its Eqs. 4-5): within a block of columns (about 128, a
    whole number of groups) the update is applied column by column, to the columns after the block
    once per block with all its errors; the same update in fewer passes over the weight. A group's scale and zero
    point are chosen from its weights as updated when its first column is reached. (The authors'
    ``gptq.py`` reads them from the weights as the earlier blocks left them, which differs for groups
    smaller than its block of 128.) ``inputs``: the layer's calibration inputs (a tensor or a list of
    tensors ``(..., in_features)``); ``damp`` in ``[0, 1]``.
    """
    weight = _check_weight(weight)
    damp = check_fraction("damp", damp, allow_one=True)
    q_min, q_max = code_range(bits, _check_bool("symmetric", symmetric))
    out_features, in_features = weight.shape
    group_size = resolve_group_size(group_size, in_features)
    hessian = layer_hessian(inputs, in_features)
    w = weight.detach().double().clone()
    dead = torch.diag(hessian) == 0  # an input that is always zero: its weights do not matter
    hessian[dead, dead] = 1
    w[:, dead] = 0
    hessian += damp * torch.diag(hessian).mean() * torch.eye(in_features, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    codes = torch.zeros(out_features, in_features, dtype=torch.int32)
    dequantized = torch.zeros(out_features, in_features, dtype=torch.float64)
    scales, zero_points = [], []
    errors = torch.zeros(out_features, in_features, dtype=torch.float64)
    block = group_size * max(1, 128 // group_size)
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        for i in range(start, end):
            if i % group_size == 0:
                s, z = group_qparams(w[:, i:i + group_size].float(), bits, None, symmetric, scale_dtype)
                scales.append(s)
                zero_points.append(z)
            code, q = quantize_groups(w[:, i:i + 1].float(), s, z, bits, symmetric)
            codes[:, i], dequantized[:, i] = code[:, 0], q[:, 0].double()
            errors[:, i] = (w[:, i] - dequantized[:, i]) / hinv[i, i]
            w[:, i:end] -= errors[:, i, None] * hinv[i, i:end][None, :]
        w[:, end:] -= errors[:, start:end] @ hinv[start:end, end:]
    return GroupQuantized(dequantized.to(weight.dtype), codes, torch.cat(scales, 1), torch.cat(zero_points, 1),
                          bits, group_size, symmetric)


def output_error(weight: torch.Tensor, quantized: torch.Tensor, inputs) -> float:
    """``||X W^T - X W_hat^T||_F^2 / tokens``: the layer-wise objective GPTQ and AWQ minimize."""
    x = _calibration_rows(inputs, weight.shape[1]).double()
    return float((x @ (weight.detach().double() - quantized.detach().double()).T).pow(2).sum() / x.shape[0])


def capture_inputs(model: nn.Module, names, run) -> dict[str, torch.Tensor]:
    """The inputs each named ``nn.Linear`` of ``model`` receives while ``run()`` executes, ``(tokens, in)`` each.

    For calibration: ``capture_inputs(model, names, lambda: model.encode(sentences))``. Every position
    the layer sees is kept, padding included (encode sentences of similar length, or one batch per
    sentence, to keep padding out).
    """
    layers = {n: get_submodule(model, n, "names", (nn.Linear,)) for n in names}
    captured = {n: [] for n in layers}
    handles = [layer.register_forward_pre_hook(lambda module, args, n=n: captured[n].append(
        args[0].detach().reshape(-1, args[0].shape[-1]).float().clone())) for n, layer in layers.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return {n: torch.cat(rows) for n, rows in captured.items() if rows}


def awq_quantize(weight: torch.Tensor, inputs, bits: int = 4, group_size=128, symmetric: bool = True,
                 scale_dtype: torch.dtype = torch.float16,
                 grid: int = 20) -> tuple[GroupQuantized, torch.Tensor, float]:
    """AWQ's scale search (Lin et al. 2024, Eq. 5) on one layer: ``s = s_X^alpha``, alpha by output error.

    ``s_X`` is the mean magnitude ``mean|X_j|`` of each input channel over the calibration inputs;
    ``alpha* = argmin_alpha ||Q(W diag(s)) (diag(s)^-1 X) - W X||`` over ``alpha = 0, 1/grid, ..., (grid-1)/grid``
    (the authors' code), ``s`` normalized by ``sqrt(max(s) min(s))`` as there. ``alpha = 0`` is plain
    RTN, so the result is never worse than RTN on the calibration inputs. Not included: AWQ's second
    search, for a clipping range of the weights.

    Returns ``(quantized, s, alpha)``: ``quantized.codes``, ``scales`` and ``zero_points`` quantize
    ``W diag(s)``; ``quantized.weight`` is their dequantization times ``diag(s)^-1``, the weight the
    layer computes with once ``1 / s`` is folded into the operation before it (no bytes stored for it).
    """
    weight = _check_weight(weight)
    grid = check_int("grid", grid, minimum=1)
    x = _calibration_rows(inputs, weight.shape[1])
    mean_abs = x.abs().mean(dim=0).clamp(min=1e-8)
    gram = x.double().T @ x.double() / x.shape[0]  # output_error(W, W_hat, X) = sum((D @ gram) * D), D = W - W_hat
    best = None
    for step in range(grid):
        alpha = step / grid
        s = mean_abs.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        result = rtn_quantize(weight.detach().float() * s[None, :], bits, group_size, symmetric, scale_dtype)
        effective = result.weight / s[None, :]
        difference = weight.detach().double() - effective.double()
        error = float(((difference @ gram) * difference).sum())
        if best is None or error < best[0]:
            best = (error, GroupQuantized(effective.to(weight.dtype), result.codes, result.scales, result.zero_points,
                                          result.bits, result.group_size, symmetric), s, alpha)
    return best[1], best[2], best[3]
