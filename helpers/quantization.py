"""Uniform affine quantization from scratch: the pieces chapters/03_algorithms/quantization.ipynb derives.

A real number ``x`` is stored as an integer ``q`` with a scale ``s`` (a positive float) and a
zero-point ``z`` (an integer in the code range), Jacob et al. (2018), equations ``q-quantize`` and
``q-dequantize`` of the chapter::

    q = clamp(round(x / s) + z, q_min, q_max)        x_hat = s * (q - z)

Symmetric quantization is the special case ``z = 0`` with a signed code range. Every function here
follows PyTorch's conventions to the last integer step (round half to even, ``x * (1/s)`` in float32),
so ``tests/test_quantization.py`` can check it against ``torch.fake_quantize_per_tensor_affine``,
``torch.fake_quantize_per_channel_affine``, ``torch.quantize_per_tensor`` and the observers of
``torch.ao.quantization``. chapters/04_practice/quantization.ipynb uses the library versions and
this module's weight fake-quantizer for the low-bit sweep (PTQ vs QAT).

The library recipes, each written once here for every chapter and the benchmark: int8 static PTQ
and QAT with eager ``torch.ao.quantization`` (:func:`ptq_eager`, :func:`qat_eager`; deprecated but
still taught), and int8 PTQ through PyTorch 2 export (pt2e) with a backend quantizer:
:func:`pt2e_quantize` (torchao's ``X86InductorQuantizer``, run compiled on this CPU) and
:func:`xnnpack_quantize` (ExecuTorch's ``XNNPACKQuantizer``, for :func:`helpers.runtimes.to_executorch`).
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.ao.quantization as tq
from torch import nn
from torch.nn.utils import parametrize
from torchao.quantization.pt2e import allow_exported_model_train_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from helpers._checks import check_int
from helpers.noise import int8_kernels, taught_torch_ao_warnings
from helpers.runtimes import export_program
from helpers.training import set_seed, train

#: Bit widths this module supports (2..16): 1 bit has no room for a zero and a sign; 16 is enough
#: for any accumulator-free use in the book.
MIN_BITS, MAX_BITS = 2, 16
CALIBRATION_METHODS = ("minmax", "percentile", "mse")
#: The smallest scale PyTorch's observers allow (torch.finfo(torch.float32).eps), used for a
#: constant tensor whose range is zero.
EPS = torch.finfo(torch.float32).eps


def _check_bits(bits: int) -> None:
    check_int("bits", bits, minimum=MIN_BITS, maximum=MAX_BITS)


def qrange(bits: int = 8, signed: bool = False) -> tuple[int, int]:
    """The integer code range ``(q_min, q_max)``: ``[0, 2^b - 1]`` or ``[-2^(b-1), 2^(b-1) - 1]``."""
    _check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def calculate_qparams(min_val, max_val, bits: int = 8, symmetric: bool = False):
    """Scale and zero-point from a calibrated range ``[min_val, max_val]``.

    Equation ``q-qparams`` of chapters/03_algorithms/quantization.ipynb.

    The range is first widened to include 0, so that 0 (padding, ReLU output) is exact.

    - asymmetric (``symmetric=False``, unsigned codes ``[0, 2^b - 1]``):
      ``s = (max - min) / (q_max - q_min)``, ``z = q_min - round(min / s)`` clamped to the code range;
    - symmetric (signed codes ``[-2^(b-1), 2^(b-1) - 1]``, ``z = 0``):
      ``s = max(|min|, |max|) / ((q_max - q_min) / 2)``.

    ``min_val``/``max_val`` are floats or tensors (one entry per channel for per-channel
    quantization). A zero range gives the smallest scale ``EPS``, as PyTorch's observers do. Returns
    ``(scale, zero_point)`` as float32 and int64 tensors, matching ``MinMaxObserver.calculate_qparams``.
    """
    q_min, q_max = qrange(bits, signed=symmetric)
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    if min_val.shape != max_val.shape:
        raise ValueError(f"min_val and max_val must have the same shape, got {tuple(min_val.shape)} "
                         f"and {tuple(max_val.shape)}")
    if not torch.all(min_val <= max_val):
        raise ValueError(f"min_val must be <= max_val, got {min_val} and {max_val}")
    min_neg = torch.clamp(min_val, max=0.0)
    max_pos = torch.clamp(max_val, min=0.0)
    if symmetric:
        bound = torch.maximum(-min_neg, max_pos)
        scale = bound / ((q_max - q_min) / 2)
        scale = torch.clamp(scale, min=EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        scale = (max_pos - min_neg) / float(q_max - q_min)
        scale = torch.clamp(scale, min=EPS)
        zero_point = q_min - torch.round(min_neg / scale).to(torch.int64)
        zero_point = torch.clamp(zero_point, q_min, q_max)
    return scale.to(torch.float32), zero_point


def _check_qparams(scale: torch.Tensor, zero_point: torch.Tensor, q_min: int, q_max: int) -> None:
    if not torch.all(scale > 0) or not torch.all(torch.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    if torch.any(zero_point < q_min) or torch.any(zero_point > q_max):
        raise ValueError(f"zero_point must be an integer in [{q_min}, {q_max}], got {zero_point}")


def _broadcast(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Shape a per-channel parameter so it broadcasts along ``axis`` of ``x``."""
    if axis is None:
        if t.numel() != 1:
            raise ValueError(f"per-tensor quantization needs one scale and zero_point, got {t.numel()}")
        return t.reshape(())
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-d tensor, got {axis}")
    axis = axis % x.dim()
    if t.dim() == 0:  # one value shared by every channel (e.g. z = 0)
        return t
    if t.numel() != x.shape[axis]:
        raise ValueError(f"per-channel scale and zero_point need {x.shape[axis]} entries (axis {axis}), "
                         f"got {t.numel()}")
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _prepare(x, scale, zero_point, bits, signed, axis):
    q_min, q_max = qrange(bits, signed)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zero_point = torch.as_tensor(zero_point)
    if zero_point.is_floating_point() and not torch.all(zero_point == torch.round(zero_point)):
        raise ValueError(f"zero_point must be an integer in [{q_min}, {q_max}], got {zero_point}")
    zero_point = zero_point.to(torch.int64)
    _check_qparams(scale, zero_point, q_min, q_max)
    return _broadcast(scale, x, axis), _broadcast(zero_point, x, axis), q_min, q_max


def quantize(x: torch.Tensor, scale, zero_point, bits: int = 8, signed: bool = False,
             axis: int | None = None) -> torch.Tensor:
    """``q = clamp(round(x / s) + z, q_min, q_max)`` (equation ``q-quantize``), as an int32 tensor of codes.

    ``axis=None`` is per-tensor (one ``scale``/``zero_point``); an integer ``axis`` is per-channel
    along that dimension. Rounds half to even on ``x * (1/s)`` in float32, exactly as PyTorch does.
    Raises ``ValueError`` for a non-positive scale or a zero-point outside ``[q_min, q_max]``.
    """
    scale_b, zp_b, q_min, q_max = _prepare(x, scale, zero_point, bits, signed, axis)
    inv_scale = 1.0 / scale_b
    q = torch.round(x.detach().to(torch.float32) * inv_scale) + zp_b
    return torch.clamp(q, q_min, q_max).to(torch.int32)


def dequantize(q: torch.Tensor, scale, zero_point, axis: int | None = None) -> torch.Tensor:
    """``x_hat = s * (q - z)`` (equation ``q-dequantize``): back to float32, per tensor or per channel
    along ``axis``."""
    scale_b = _broadcast(torch.as_tensor(scale, dtype=torch.float32), q, axis)
    zp_b = _broadcast(torch.as_tensor(zero_point).to(torch.int64), q, axis)
    if not torch.all(scale_b > 0):
        raise ValueError(f"scale must be positive, got {scale}")
    return (q.to(torch.int64) - zp_b).to(torch.float32) * scale_b


def fake_quantize(x: torch.Tensor, scale, zero_point, bits: int = 8, signed: bool = False,
                  axis: int | None = None) -> torch.Tensor:
    """Quantize then dequantize, in float, with a straight-through gradient (equation ``q-ste``).

    Forward: ``s * (clamp(round(x/s) + z, q_min, q_max) - z)``. Backward (Bengio et al., 2013; the
    clipped STE of Jacob et al., 2018): the gradient of ``round`` is taken as 1, so ``dL/dx`` passes
    through unchanged where ``x`` falls inside the code range and is 0 where it was clipped, which is
    exactly the gradient of ``torch.fake_quantize_per_tensor_affine``.
    """
    scale_b, zp_b, q_min, q_max = _prepare(x, scale, zero_point, bits, signed, axis)
    inv_scale = 1.0 / scale_b
    unclamped = torch.round(x.detach() * inv_scale) + zp_b
    inside = (unclamped >= q_min) & (unclamped <= q_max)
    x_hat = (torch.clamp(unclamped, q_min, q_max) - zp_b) * scale_b
    # value of x_hat, gradient of x (times the in-range mask): the straight-through estimator
    return x_hat.detach() + (x - x.detach()) * inside


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB (equation ``q-sqnr``)."""
    noise = torch.sum((x - x_hat).double() ** 2)
    signal = torch.sum(x.double() ** 2)
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


def _collect(data) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        values = data.detach().flatten()
    else:
        parts = [torch.as_tensor(t).detach().flatten() for t in data]
        values = torch.cat(parts) if parts else torch.empty(0)
    if values.numel() == 0:
        raise ValueError("data must hold at least one value to calibrate on (got an empty calibration set)")
    return values.to(torch.float32)


def calibrate_range(data: torch.Tensor | Iterable[torch.Tensor], method: str = "minmax", bits: int = 8,
                    symmetric: bool = False, percentile: float = 99.99,
                    num_candidates: int = 100) -> tuple[float, float]:
    """The range ``(min, max)`` to quantize with, from observed values (Section "Calibration").

    - ``"minmax"``: the observed extremes; no clipping, but one outlier stretches the step.
    - ``"percentile"``: the ``100 - percentile`` and ``percentile`` percentiles; clips the tails.
    - ``"mse"``: clip the min-max range to ``[-c, c]`` for ``num_candidates`` values of ``c`` from
      ``max|x|`` down to ``max|x|/1000`` (a geometric grid) and keep the range whose fake-quantized
      values have the smallest mean squared error (equation ``q-mse``).

    ``data`` is a tensor or an iterable of tensors (e.g. activations of several batches). Raises
    ``ValueError`` for an empty calibration set, an unknown method or a percentile outside (50, 100].
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    _check_bits(bits)
    values = _collect(data)
    low, high = float(values.min()), float(values.max())
    if method == "minmax":
        return low, high
    if method == "percentile":
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        sample = values
        if sample.numel() > 2 ** 24:  # torch.quantile's input limit
            sample = sample[torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(0))[:2 ** 24]]
        qs = torch.tensor([1 - percentile / 100, percentile / 100])
        low_p, high_p = torch.quantile(sample, qs).tolist()
        return low_p, high_p
    check_int("num_candidates", num_candidates, minimum=1)
    best, best_err = (low, high), float("inf")
    bound = max(abs(low), abs(high))
    for factor in torch.logspace(0, -3, num_candidates, dtype=torch.float64).tolist():
        clip = bound * factor
        lo, hi = max(low, -clip), min(high, clip)
        if lo > hi:
            continue
        scale, zp = calculate_qparams(lo, hi, bits, symmetric)
        err = float(torch.mean((fake_quantize(values, scale, zp, bits, symmetric) - values) ** 2))
        if err < best_err:
            best, best_err = (lo, hi), err
    return best


def quantized_linear(q_x: torch.Tensor, x_scale: float, x_zero_point: int, q_w: torch.Tensor,
                     w_scale: torch.Tensor, bias: torch.Tensor | None, out_scale: float,
                     out_zero_point: int, out_bits: int = 8) -> torch.Tensor:
    """Integer-only ``Linear`` (equation ``q-int-linear``): uint8 activations x int8 weights, int32
    accumulator, requantize.

    ``q_x`` holds unsigned codes with zero-point ``x_zero_point``; ``q_w`` holds symmetric signed
    codes (zero-point 0) with one scale per output channel ``w_scale``; the bias is quantized to int32
    with scale ``x_scale * w_scale`` (Jacob et al., 2018, Sec. 2.4). The accumulator
    ``sum_k (q_x - z_x) q_w`` is exact in int32; the only rounding is the final requantization
    ``q_y = clamp(round(M * acc) + z_y)`` with ``M = x_scale * w_scale / out_scale``. Returns uint8
    codes of the output (as int32) with scale ``out_scale`` and zero-point ``out_zero_point``.
    """
    if (q_x.dtype not in (torch.int32, torch.int64, torch.uint8)
            or q_w.dtype not in (torch.int32, torch.int64, torch.int8)):
        raise TypeError(f"q_x and q_w must be integer code tensors, got {q_x.dtype} and {q_w.dtype}")
    if not x_scale > 0 or not out_scale > 0:
        raise ValueError(f"x_scale and out_scale must be positive, got {x_scale} and {out_scale}")
    w_scale = torch.as_tensor(w_scale, dtype=torch.float32).reshape(-1)
    if not torch.all(w_scale > 0):
        raise ValueError("w_scale must be positive")
    acc = (q_x.to(torch.int64) - x_zero_point) @ q_w.to(torch.int64).T  # exact integer dot products
    if bias is not None:
        acc = acc + torch.round(bias.double() / (x_scale * w_scale.double())).to(torch.int64)
    if torch.any(acc.abs() > 2 ** 31 - 1):
        raise OverflowError("the accumulator left the int32 range")
    multiplier = (x_scale * w_scale.double()) / out_scale
    q_min, q_max = qrange(out_bits, signed=False)
    q_y = torch.round(acc.double() * multiplier) + out_zero_point
    return torch.clamp(q_y, q_min, q_max).to(torch.int32)


class FakeQuantize(nn.Module):
    """A fake-quant module for activations in QAT: observe the range, then quantize-dequantize.

    In training mode it tracks ``min``/``max`` with an exponential moving average (``momentum``), as
    ``torch.ao.quantization.MovingAverageMinMaxObserver`` does, and fake-quantizes with those
    statistics; in eval mode the range is frozen. Gradients pass straight through (see
    :func:`fake_quantize`). Asymmetric unsigned codes, per tensor.
    """

    def __init__(self, bits: int = 8, momentum: float = 0.01):
        super().__init__()
        _check_bits(bits)
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.bits, self.momentum = bits, momentum
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            low, high = x.detach().min(), x.detach().max()
            if torch.isinf(self.min_val):
                self.min_val.copy_(low)
                self.max_val.copy_(high)
            else:
                self.min_val.lerp_(low, self.momentum)
                self.max_val.lerp_(high, self.momentum)
        if torch.isinf(self.min_val):
            raise RuntimeError("FakeQuantize has seen no data: run it in training mode first")
        scale, zero_point = calculate_qparams(self.min_val, self.max_val, self.bits)
        return fake_quantize(x, scale, zero_point, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


class WeightFakeQuantize(nn.Module):
    """A parametrization that fake-quantizes a layer's weight from its own min-max range.

    Symmetric signed codes (``z = 0``), per output channel (``per_channel=True``, axis 0) or per
    tensor. Registered with ``torch.nn.utils.parametrize``, so ``layer.weight`` *is* the quantized
    weight at every forward pass, while the optimizer updates the float ``original`` behind it
    through the straight-through estimator: that is QAT for weights.
    """

    def __init__(self, bits: int = 8, per_channel: bool = True):
        super().__init__()
        _check_bits(bits)
        self.bits, self.per_channel = bits, per_channel

    def qparams(self, weight: torch.Tensor):
        w = weight.detach()
        if self.per_channel:
            flat = w.reshape(w.shape[0], -1)
            return calculate_qparams(flat.min(dim=1).values, flat.max(dim=1).values, self.bits, symmetric=True)
        return calculate_qparams(w.min(), w.max(), self.bits, symmetric=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self.qparams(weight)
        axis = 0 if self.per_channel else None
        return fake_quantize(weight, scale, zero_point, self.bits, signed=True, axis=axis)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


QUANTIZABLE = (nn.Conv2d, nn.Linear)


def quantize_weights(model: nn.Module, bits: int, per_channel: bool = True) -> nn.Module:
    """A copy of ``model`` whose ``Conv2d``/``Linear`` weights are fake-quantized to ``bits``.

    Applied to a trained model this is weight-only post-training quantization (PTQ, min-max
    calibration on the weights); :func:`quantization_aware_train` then fine-tunes such a copy.
    Raises ``ValueError`` if the model has no ``Conv2d`` or ``Linear`` layer.
    """
    _check_bits(bits)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    quantized = copy.deepcopy(model)
    layers = [m for m in quantized.modules() if isinstance(m, QUANTIZABLE)]
    if not layers:
        raise ValueError("model has no quantizable layer (Conv2d or Linear)")
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", WeightFakeQuantize(bits, per_channel))
    return quantized


def post_training_quantize(model: nn.Module, bits: int, per_channel: bool = True) -> nn.Module:
    """Weight-only PTQ: :func:`quantize_weights` on a trained model, in eval mode, no training."""
    return quantize_weights(model, bits, per_channel).eval()


def quantization_aware_train(model: nn.Module, train_loader, bits: int, per_channel: bool = True,
                             num_epochs: int = 2, lr: float = 1e-4, log_dir=None) -> nn.Module:
    """Weight-only QAT: fine-tune a fake-quantized copy of a trained ``model`` with the STE.

    Starts from the trained float weights (as Jacob et al. and Krishnamoorthi recommend), trains
    ``num_epochs`` with Adam at ``lr`` using :func:`helpers.training.train` (logged to TensorBoard
    in ``log_dir`` if given), and returns the copy in eval mode, its weights still fake-quantized
    to ``bits``.
    """
    quantized = quantize_weights(model, bits, per_channel)
    train(quantized, train_loader, num_epochs=num_epochs, lr=lr, log_dir=log_dir)
    return quantized.eval()


def integer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The integer codes behind each fake-quantized weight of a :func:`quantize_weights` model."""
    codes = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            fq = module.parametrizations.weight[0]
            original = module.parametrizations.weight.original
            scale, zp = fq.qparams(original)
            codes[name] = quantize(original, scale, zp, fq.bits, signed=True,
                                   axis=0 if fq.per_channel else None)
    if not codes:
        raise ValueError("model has no fake-quantized weight (use quantize_weights first)")
    return codes


def per_channel_vs_per_tensor_sqnr(weight: torch.Tensor, bits: int = 8) -> tuple[float, float]:
    """SQNR (dB) of symmetric per-tensor and per-output-channel quantization of one weight tensor."""
    results = []
    for per_channel in (False, True):
        fq = WeightFakeQuantize(bits, per_channel)
        results.append(sqnr_db(weight, fq(weight.detach())))
    return results[0], results[1]


# ----------------------------------------------------------------------------------------------
# The library recipes: eager torch.ao (deprecated) and pt2e
# ----------------------------------------------------------------------------------------------

#: The conv + ReLU pairs of :class:`helpers.CNN` that eager ``torch.ao`` fuses into one int8 kernel.
CNN_FUSION = (("conv1", "relu1"), ("conv2", "relu2"))


def ptq_eager(model: nn.Module, calibration_batches, fuse=CNN_FUSION) -> nn.Module:
    """int8 static PTQ with eager ``torch.ao.quantization``: a quantized copy of ``model``.

    Wraps a copy between ``QuantStub`` and ``DeQuantStub`` (``QuantWrapper``), fuses the ``fuse``
    layer groups, takes the x86 qconfig (per-channel int8 weights, uint8 activations), inserts
    observers (``prepare``), runs every batch of ``calibration_batches`` (input tensors, or
    ``(inputs, labels)`` pairs as a loader yields them) and converts.
    """
    int8 = tq.QuantWrapper(copy.deepcopy(model)).eval()
    tq.fuse_modules(int8.module, [list(group) for group in fuse], inplace=True)
    int8.qconfig = tq.get_default_qconfig("x86")
    with taught_torch_ao_warnings(), int8_kernels():
        tq.prepare(int8, inplace=True)
        _calibrate(int8, calibration_batches)
        tq.convert(int8, inplace=True)
    return int8


def qat_eager(model: nn.Module, train_loader, num_epochs: int, seed: int = 0, lr: float = 1e-4,
              fuse=CNN_FUSION, val_loader=None, log_dir=None) -> nn.Module:
    """int8 QAT with eager ``torch.ao.quantization``: fine-tune a fake-quantized copy, then convert.

    Same wrapper and fusion as :func:`ptq_eager`, the x86 QAT qconfig, ``prepare_qat`` (fake-quantize
    modules with observers), ``num_epochs`` of :func:`helpers.train` at ``lr`` from the trained
    weights after :func:`helpers.set_seed` with ``seed``, then ``convert``. ``val_loader`` and
    ``log_dir`` are passed to :func:`helpers.train` (validation metrics per epoch, TensorBoard).
    """
    set_seed(seed)
    qat = tq.QuantWrapper(copy.deepcopy(model)).train()
    tq.fuse_modules_qat(qat.module, [list(group) for group in fuse], inplace=True)
    qat.qconfig = tq.get_default_qat_qconfig("x86")
    with taught_torch_ao_warnings(), int8_kernels():
        tq.prepare_qat(qat, inplace=True)
        train(qat, train_loader, num_epochs=num_epochs, lr=lr, val_loader=val_loader, log_dir=log_dir)
        qat.eval()
        tq.convert(qat, inplace=True)
    return qat


def _calibrate(model, calibration_batches) -> None:
    seen = 0
    with torch.no_grad():
        for batch in calibration_batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    if seen == 0:
        raise ValueError("calibration_batches must yield at least one batch (got an empty calibration set)")


def quantize_pt2e(model: nn.Module, quantizer, calibration_batches, example_input: torch.Tensor):
    """The pt2e recipe for any backend quantizer: export (dynamic batch), ``prepare_pt2e``, run the
    observers on ``calibration_batches`` (input tensors or ``(inputs, labels)``), ``convert_pt2e``."""
    exported = export_program(copy.deepcopy(model), example_input, dynamic_batch=True).module()
    prepared = prepare_pt2e(exported, quantizer)
    _calibrate(prepared, calibration_batches)
    return convert_pt2e(prepared)


def pt2e_quantize(model: nn.Module, calibration_batches, example_input: torch.Tensor):
    """int8 pt2e quantization for this CPU with torchao's ``X86InductorQuantizer``.

    Returns the converted graph: it runs in eager PyTorch (quantize/dequantize pairs around float
    ops), and with real int8 kernels after :func:`helpers.compile_for_inference`. ``.eval()`` is
    allowed on it, so :func:`helpers.evaluate` takes it.
    """
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    quantized = quantize_pt2e(model, quantizer, calibration_batches, example_input)
    allow_exported_model_train_eval(quantized)
    return quantized


def xnnpack_quantize(model: nn.Module, calibration_batches, example_input: torch.Tensor):
    """int8 pt2e quantization for XNNPACK: per-channel symmetric int8 weights, int8 activations.

    ExecuTorch's ``XNNPACKQuantizer`` annotates the exported graph, the observers see
    ``calibration_batches``, and ``convert_pt2e`` returns a graph with quantize/dequantize pairs
    that XNNPACK's partitioner turns into int8 kernels (:func:`helpers.runtimes.to_executorch`).
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (  # lazy: executorch is heavy
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return quantize_pt2e(model, quantizer, calibration_batches, example_input)
