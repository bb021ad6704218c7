"""helpers.lm_compression against independent references (plain loops, numpy) and torchao's own primitives."""
import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers.embeddings import cosine_fidelity
from helpers.lm_compression import (
    GroupQuantized,
    SmoothQuantLinear,
    activation_absmax,
    awq_quantize,
    capture_inputs,
    code_range,
    fake_quantize_absmax,
    gptq_quantize,
    group_qparams,
    input_norms,
    layer_hessian,
    magnitude_prune,
    n_m_mask,
    output_error,
    prune_mask,
    quantize_groups,
    quantize_linear_weights,
    quantized_linear_bytes,
    recall_at_1,
    resolve_group_size,
    rtn_quantize,
    smooth_weight,
    smoothing_factors,
    unstructured_mask,
    w8a8_linear,
    wanda_prune,
)


def weight(out_features=8, in_features=64, seed=0) -> torch.Tensor:
    return torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# round-to-nearest, group-wise
# ------------------------------------------------------------------------------------------------


def reference_rtn(w: np.ndarray, bits: int, group_size: int, symmetric: bool):
    """Group by group in numpy float32, written from the formulas, not from the module's code."""
    w = w.astype(np.float32)
    codes = np.zeros(w.shape, dtype=np.int64)
    deq = np.zeros(w.shape, dtype=np.float32)
    for r in range(w.shape[0]):
        for g in range(0, w.shape[1], group_size):
            x = w[r, g:g + group_size]
            lo, hi = min(np.float32(x.min()), np.float32(0)), max(np.float32(x.max()), np.float32(0))
            if symmetric:
                q_min, q_max = -2 ** (bits - 1), 2 ** (bits - 1) - 1
                s = np.float32(max(-lo, hi)) / np.float32((q_max - q_min) / 2)
                z = 0
            else:
                q_min, q_max = 0, 2 ** bits - 1
                s = np.float32(hi - lo) / np.float32(q_max - q_min)
                z = int(min(max(q_min - np.round(lo / s), q_min), q_max))
            q = np.clip(np.round(x / s) + z, q_min, q_max)  # np.round: half to even, like torch.round
            codes[r, g:g + group_size] = q
            deq[r, g:g + group_size] = (q - z) * s
    return codes, deq


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [16, 64, None])
def test_rtn_matches_a_group_by_group_reference(bits, symmetric, group_size):
    w = weight()
    result = rtn_quantize(w, bits, group_size, symmetric, scale_dtype=torch.float32)
    codes, deq = reference_rtn(w.numpy(), bits, group_size or 64, symmetric)
    assert np.array_equal(result.codes.numpy(), codes)
    assert np.allclose(result.weight.numpy(), deq, rtol=0, atol=1e-6)
    q_min, q_max = code_range(bits, symmetric)
    assert result.codes.min() >= q_min and result.codes.max() <= q_max
    assert result.scales.shape == result.zero_points.shape == (8, 64 // (group_size or 64))
    # the dequantized weight is the codes through the stored parameters
    again = (result.codes - result.zero_points.repeat_interleave(result.group_size, 1)) \
        * result.scales.repeat_interleave(result.group_size, 1)
    assert torch.equal(again, result.weight)


def test_rtn_error_is_at_most_half_a_step_and_shrinks_with_smaller_groups():
    w = weight(16, 256)
    for symmetric in (True, False):
        result = rtn_quantize(w, 4, 32, symmetric, scale_dtype=torch.float32)
        step = result.scales.repeat_interleave(32, 1)
        inside = (result.codes > code_range(4, symmetric)[0]) & (result.codes < code_range(4, symmetric)[1])
        assert ((w - result.weight).abs()[inside] <= step[inside] / 2 + 1e-6).all()
    errors = [(w - rtn_quantize(w, 4, g).weight).pow(2).sum().item() for g in (256, 64, 16)]
    assert errors[0] > errors[1] > errors[2]


def test_fp16_scales_are_the_ones_used():
    w = weight()
    result = rtn_quantize(w, 4, 16)  # default scale_dtype fp16
    assert result.scales.dtype == torch.float16
    codes, deq = quantize_groups(w, result.scales.float(), result.zero_points, 4, True)
    assert torch.equal(codes, result.codes) and torch.equal(deq, result.weight)


torchao_primitives = pytest.importorskip("torchao.quantization.quant_primitives")


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_matches_torchao_affine_primitives(bits, symmetric):
    q = torchao_primitives
    w = weight(32, 256, seed=bits)
    group_size = 32
    q_min, q_max = code_range(bits, symmetric)
    mapping = q.MappingType.SYMMETRIC if symmetric else q.MappingType.ASYMMETRIC
    target = torch.int8 if symmetric else torch.uint8
    block = (1, group_size)
    scale, zero_point = q.choose_qparams_affine(w, mapping, block, target, q_min, q_max, scale_dtype=torch.float32,
                                                zero_point_dtype=torch.int32)
    codes = q.quantize_affine(w, block, scale, zero_point, target, q_min, q_max)
    deq = q.dequantize_affine(codes, block, scale, zero_point, target, q_min, q_max)
    ours = rtn_quantize(w, bits, group_size, symmetric, scale_dtype=torch.float32)
    assert torch.equal(ours.scales, scale.reshape(ours.scales.shape))
    assert torch.equal(ours.zero_points, zero_point.reshape(ours.zero_points.shape).to(torch.int32))
    # torchao rounds w * (1 / s), we round w / s (as GPTQ's code does): one ulp apart, so a code may differ by one
    # where w / s is a tie (x.5), as it is at the extreme of every symmetric group (max|w| / s = (q_max - q_min) / 2)
    differ = ours.codes != codes.to(torch.int32)
    quotient = w / ours.scales.repeat_interleave(group_size, 1)
    tie = (quotient - quotient.floor() - 0.5).abs() < 1e-4
    assert not (differ & ~tie).any()
    assert (ours.codes - codes.to(torch.int32)).abs().max() <= 1
    assert torch.allclose(ours.weight[~differ], deq[~differ], rtol=0, atol=1e-6)


def test_stored_bytes_count_codes_scales_and_zero_points():
    # 384 x 384 at 4 bits, groups of 128: 73,728 bytes of codes, 1,152 fp16 scales, 1,152 zero points at 4 bits
    assert quantized_linear_bytes(384, 384, 4, 128, symmetric=True) == 384 * 384 // 2 + 1152 * 2
    assert quantized_linear_bytes(384, 384, 4, 128, symmetric=False) == 384 * 384 // 2 + 1152 * 2 + 576
    assert quantized_linear_bytes(384, 384, 4, None, scale_dtype=torch.float32, bias=True) \
        == 384 * 384 // 2 + 384 * 4 + 384 * 4
    assert quantized_linear_bytes(3, 5, 3, None) == math.ceil(45 / 8) + 3 * 2
    assert rtn_quantize(weight(), 4, 16).stored_bytes() == quantized_linear_bytes(8, 64, 4, 16)


def test_bad_arguments_name_the_argument_and_range():
    w = weight()
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\], got 9"):
        rtn_quantize(w, 9)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\], got 1"):
        rtn_quantize(w, 1)
    with pytest.raises(TypeError, match="bits must be an integer"):
        rtn_quantize(w, True)
    with pytest.raises(ValueError, match="group_size must divide the row length 64.*got 48"):
        rtn_quantize(w, 4, 48)
    with pytest.raises(ValueError, match="group_size must be an integer >= 1, got 0"):
        rtn_quantize(w, 4, 0)
    with pytest.raises(TypeError, match="symmetric must be True or False"):
        rtn_quantize(w, 4, 16, symmetric=1)
    with pytest.raises(ValueError, match="weight must be a 2-D"):
        rtn_quantize(torch.zeros(4), 4, None)
    with pytest.raises(ValueError, match="scale_dtype must be one of"):
        rtn_quantize(w, 4, 16, scale_dtype=torch.int8)
    assert resolve_group_size(None, 64) == resolve_group_size(-1, 64) == 64


def test_quantize_linear_weights_copies_and_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8, bias=False))
    quantized, total = quantize_linear_weights(model, lambda name, layer: rtn_quantize(layer.weight, 4, 16))
    assert total == quantized_linear_bytes(32, 64, 4, 16, bias=True) + quantized_linear_bytes(8, 32, 4, 16)
    assert not torch.equal(quantized[0].weight, model[0].weight)  # the original is untouched
    assert torch.equal(quantized[0].weight, rtn_quantize(model[0].weight, 4, 16).weight)
    assert isinstance(rtn_quantize(model[0].weight, 4, 16), GroupQuantized)
    only, _ = quantize_linear_weights(model, lambda name, layer: rtn_quantize(layer.weight, 4, 16), names=["2"])
    assert torch.equal(only[0].weight, model[0].weight)
    with pytest.raises(ValueError, match="not nn.Linear layers"):
        quantize_linear_weights(model, None, names=["1"])


def test_recall_at_1_counts_own_document_first():
    docs = torch.eye(4)
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0], [0, 0, 1.0, 0]])
    assert recall_at_1(queries, docs) == 0.5
    group_qparams(weight(), 4, 16)  # runs on its own


# ------------------------------------------------------------------------------------------------
# pruning: magnitude, Wanda, unstructured and n:m
# ------------------------------------------------------------------------------------------------


def brute_force_row_mask(scores: torch.Tensor, keep: int, block: int | None = None) -> torch.Tensor:
    """Every subset of ``keep`` weights of each row (or of each block of a row) tried; the best kept score sum wins."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    block = block or scores.shape[1]
    for r in range(scores.shape[0]):
        for start in range(0, scores.shape[1], block):
            values = scores[r, start:start + block].tolist()
            best = max(itertools.combinations(range(block), keep), key=lambda c: sum(values[i] for i in c))
            for i in best:
                out[r, start + i] = True
    return out


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75])
def test_unstructured_wanda_matches_brute_force(sparsity):
    w = weight(3, 8, seed=1)
    x = torch.randn(5, 7, 8, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.1, 3, 8)
    scores = w.abs() * x.reshape(-1, 8).pow(2).sum(0).sqrt()  # |W_ij| * ||X_j||_2, written out
    pruned, mask = wanda_prune(w, x, sparsity)
    assert torch.equal(mask, brute_force_row_mask(scores, 8 - round(sparsity * 8)))
    assert torch.equal(pruned, w * mask)
    assert (mask.sum(1) == 8 - round(sparsity * 8)).all()


@pytest.mark.parametrize("pattern, n, m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_n_m_mask_keeps_n_of_every_m_and_matches_brute_force(pattern, n, m):
    w = weight(4, 16, seed=3)
    x = [torch.randn(6, 16, generator=torch.Generator().manual_seed(4)), torch.randn(2, 3, 16)]
    pruned, mask = wanda_prune(w, x, pattern)
    # exactly n kept (so at most n nonzero) in every m consecutive weights along the input dimension
    assert (mask.reshape(4, -1, m).sum(2) == n).all()
    assert ((pruned != 0).reshape(4, -1, m).sum(2) <= n).all()
    norms = torch.cat([t.reshape(-1, 16) for t in x]).norm(dim=0)
    assert torch.equal(mask, brute_force_row_mask(w.abs() * norms, n, block=m))


def test_wanda_equals_magnitude_when_activation_norms_are_equal():
    w = weight(16, 64, seed=5)
    x = torch.ones(10, 64) * 3.0  # every input feature has the same norm
    for sparsity in (0.5, "2:4"):
        assert torch.equal(wanda_prune(w, x, sparsity)[1], magnitude_prune(w, sparsity)[1])
    # and differs once one input channel carries an outlier activation
    x[:, 0] = 100.0
    assert not torch.equal(wanda_prune(w, x, 0.5)[1], magnitude_prune(w, 0.5)[1])
    assert wanda_prune(w, x, 0.5)[1][:, 0].all()  # the outlier channel's weights are all kept


def test_magnitude_2_4_matches_torch_ao_weight_norm_sparsifier():
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 8))
    ours = magnitude_prune(model[0].weight, "2:4")[1]
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    assert torch.equal(model[0].parametrizations.weight[0].mask.bool(), ours)


def test_pruning_bad_arguments():
    w = weight(4, 16)
    for bad in ("4:2", "0:4", "2:2", "2-4", "a:b", "2:4:8"):
        with pytest.raises(ValueError, match=r"pattern must be 'n:m' with integers 0 < n < m"):
            wanda_prune(w, torch.ones(3, 16), bad)
    with pytest.raises(ValueError, match="needs in_features to be a multiple of 8"):
        n_m_mask(weight(4, 12), "4:8")
    with pytest.raises(ValueError, match="non-empty calibration set"):
        wanda_prune(w, [], 0.5)
    with pytest.raises(ValueError, match="non-empty calibration set"):
        wanda_prune(w, torch.zeros(0, 16), 0.5)
    with pytest.raises(ValueError, match="last dimension"):
        wanda_prune(w, torch.ones(3, 15), 0.5)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
            wanda_prune(w, torch.ones(3, 16), bad)
    with pytest.raises(TypeError, match="sparsity must be"):
        magnitude_prune(w, True)
    assert torch.equal(input_norms(torch.ones(4, 2, 3)), torch.full((3,), math.sqrt(8)))
    assert torch.equal(prune_mask(w.abs(), "2:4"), n_m_mask(w.abs(), "2:4"))
    assert torch.equal(prune_mask(w.abs(), 0.5), unstructured_mask(w.abs(), 0.5))


# ------------------------------------------------------------------------------------------------
# SmoothQuant
# ------------------------------------------------------------------------------------------------


def outlier_activations(tokens=256, channels=64, seed=0) -> torch.Tensor:
    """Activations like an LLM's: most channels small, a few with large values on every token."""
    x = torch.randn(tokens, channels, generator=torch.Generator().manual_seed(seed))
    x[:, [3, 17, 40]] *= 60.0
    return x


def test_smoothing_factors_follow_the_formula():
    w = weight(16, 64, seed=6)
    x = outlier_activations()
    for alpha in (0.0, 0.5, 0.8, 1.0):
        s = smoothing_factors(activation_absmax(x), w, alpha)
        for j in (0, 3, 63):
            expected = x[:, j].abs().max().item() ** alpha / w[:, j].abs().max().item() ** (1 - alpha)
            assert s[j].item() == pytest.approx(expected, rel=1e-5)
    # after smoothing with alpha = 0.5, each channel's activation and weight maxima are equal
    s = smoothing_factors(activation_absmax(x), w, 0.5)
    assert torch.allclose((x / s).abs().amax(0), smooth_weight(w, s).abs().amax(0), rtol=1e-5)


def test_smoothing_leaves_the_fp32_output_unchanged():
    w, b, x = weight(16, 64, seed=7), torch.randn(16), outlier_activations()
    s = smoothing_factors(activation_absmax(x), w, 0.5)
    assert torch.allclose((x / s) @ smooth_weight(w, s).T + b, x @ w.T + b, rtol=1e-5, atol=1e-4)


def test_fake_quantize_absmax_against_a_plain_computation():
    x = outlier_activations(8, 64)
    scale = x.abs().max() / 127
    assert torch.equal(fake_quantize_absmax(x), torch.round(x / scale).clamp(-127, 127) * scale)
    w = weight(4, 16)
    for i in range(4):
        row_scale = w[i].abs().max() / 7
        assert torch.allclose(fake_quantize_absmax(w, 4, dim=0)[i], torch.round(w[i] / row_scale) * row_scale)


def test_smoothing_lowers_w8a8_error_on_outlier_channels():
    w, b = weight(32, 64, seed=8) * 0.1, torch.zeros(32)
    x = outlier_activations(512, 64, seed=9)
    exact = x @ w.T
    plain = (w8a8_linear(x, w, b) - exact).pow(2).mean()
    smoothed = (w8a8_linear(x, w, b, factors=smoothing_factors(activation_absmax(x), w, 0.5)) - exact).pow(2).mean()
    assert smoothed < 0.5 * plain
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.copy_(w)
    module = SmoothQuantLinear(layer, x, alpha=0.5)
    assert torch.allclose(module(x.reshape(8, 64, 64)).reshape(512, 32),
                          w8a8_linear(x, w, layer.bias, factors=module.factors))
    assert SmoothQuantLinear(layer, alpha=None).factors is None


def test_smoothquant_bad_arguments():
    w = weight(4, 16)
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got 1.5"):
        smoothing_factors(torch.ones(16), w, 1.5)
    with pytest.raises(ValueError, match="one value per input channel"):
        smoothing_factors(torch.ones(15), w, 0.5)
    with pytest.raises(ValueError, match="non-empty calibration set"):
        activation_absmax([])
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\]"):
        fake_quantize_absmax(w, 16)


# ------------------------------------------------------------------------------------------------
# GPTQ
# ------------------------------------------------------------------------------------------------


def correlated_inputs(tokens=512, channels=64, seed=10) -> torch.Tensor:
    """Inputs whose channels are correlated (mixed by a random matrix), as a Transformer's are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, channels, generator=g) @ torch.randn(channels, channels, generator=g)


def reference_obs(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, symmetric: bool, damp: float):
    """Column by column, each step inverting the Hessian of the columns not yet quantized, as OBQ writes it."""
    w = w.double().clone()
    h = 2 * x.double().T @ x.double() / x.shape[0]
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    q_min, q_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    out = torch.zeros_like(w)
    for q in range(w.shape[1]):
        if q % group_size == 0:  # the group's parameters from its current weights, RTN formulas
            group = w[:, q:q + group_size].float()
            lo, hi = group.amin(1).clamp(max=0), group.amax(1).clamp(min=0)
            if symmetric:
                scale, zero = torch.maximum(-lo, hi) / ((q_max - q_min) / 2), torch.zeros_like(lo)
            else:
                scale = (hi - lo) / (q_max - q_min)
                zero = (q_min - torch.round(lo / scale)).clamp(q_min, q_max)
        quantized = (torch.clamp(torch.round(w[:, q].float() / scale) + zero, q_min, q_max) - zero) * scale
        out[:, q] = quantized.double()
        h_inv = torch.linalg.inv(h[q:, q:])  # H_F^-1 over the remaining columns F = q, q+1, ...
        delta = -((w[:, q] - out[:, q]) / h_inv[0, 0])[:, None] * h_inv[:, 0][None, :]
        w[:, q:] += delta
    return out.float()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("in_features, group_size", [(8, 4), (384, 32), (300, 60), (256, 256)])
def test_gptq_matches_the_column_by_column_obs_update(symmetric, in_features, group_size):
    # 384 / 32: blocks of 128 columns, four groups each; 300 / 60: blocks of 120 and a last one of
    # 60; 256 / 256: one block. The reference has no blocks: the lazy updates change nothing.
    w = weight(3, in_features, seed=11)
    x = correlated_inputs(max(64, 2 * in_features), in_features, seed=12)
    ours = gptq_quantize(w, x, bits=3, group_size=group_size, symmetric=symmetric, scale_dtype=torch.float32)
    expected = reference_obs(w, x, 3, group_size, symmetric, 0.01)
    assert torch.allclose(ours.weight, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    # codes, scales and zero points describe the returned weight
    zeros, scales = (t.repeat_interleave(group_size, 1) for t in (ours.zero_points, ours.scales))
    assert torch.allclose((ours.codes - zeros) * scales, ours.weight, rtol=0, atol=1e-6 * scales.max().item())


@pytest.mark.parametrize("group_size", [16, None])
def test_gptq_output_error_is_below_rtn(group_size):
    w = weight(32, 64, seed=13)
    x = correlated_inputs()
    rtn = rtn_quantize(w, 4, group_size)
    gptq = gptq_quantize(w, x, 4, group_size)
    assert output_error(w, gptq.weight, x) < 0.8 * output_error(w, rtn.weight, x)
    assert gptq.scales.shape == rtn.scales.shape and gptq.stored_bytes() == rtn.stored_bytes()


def test_gptq_bad_arguments_and_dead_inputs():
    w = weight(4, 16)
    with pytest.raises(ValueError, match="non-empty calibration set"):
        gptq_quantize(w, [], 4, 8)
    with pytest.raises(ValueError, match=r"damp must be a number in \[0, 1\]"):
        gptq_quantize(w, torch.ones(4, 16), 4, 8, damp=2.0)
    with pytest.raises(ValueError, match="group_size must divide"):
        gptq_quantize(w, torch.ones(4, 16), 4, 5)
    x = correlated_inputs(64, 16)
    x[:, 5] = 0  # a dead input channel: its weights are set to zero, the rest is still quantized
    result = gptq_quantize(w, x, 4, 8)
    assert (result.weight[:, 5] == 0).all() and torch.isfinite(result.weight).all()
    assert torch.allclose(layer_hessian(x), 2 * x.double().T @ x.double() / 64)


# ------------------------------------------------------------------------------------------------
# the real packaged all-MiniLM-L6-v2 (one load for the tests below)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentence_model():
    from helpers.embeddings import load_sentence_model

    return load_sentence_model()


def test_capture_inputs_records_what_the_layer_sees():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(3, 5, 8)
    inputs = capture_inputs(model, ["0", "2"], lambda: model(x))
    assert torch.equal(inputs["0"], x.reshape(15, 8))
    assert torch.allclose(inputs["2"], torch.relu(model[0](x)).reshape(15, 6))
    assert not model[0]._forward_pre_hooks  # hooks removed
    with pytest.raises(ValueError, match="is not a layer of the model"):
        capture_inputs(model, ["1"], lambda: model(x))


def test_real_encoder_rtn_fidelity_and_gptq_on_one_layer(sentence_model):
    sentences = ["Return the number of items in the queue.", "Open a file and return a stream object.",
                 "Compute the greatest common divisor of two integers.", "Parse a date string into a datetime."]
    names = [n for n, m in sentence_model.named_modules() if isinstance(m, nn.Linear) and ".encoder." in n]
    assert len(names) == 36  # 6 layers x (query, key, value, attention output, intermediate, output)
    with torch.inference_mode():
        reference = sentence_model.encode(sentences, convert_to_tensor=True)

    def fidelity(bits, group_size):
        quantized, _ = quantize_linear_weights(sentence_model, lambda n, m: rtn_quantize(m.weight, bits, group_size),
                                               names=names)
        with torch.inference_mode():
            return cosine_fidelity(reference, quantized.encode(sentences, convert_to_tensor=True))

    assert fidelity(8, None).min() > 0.998
    assert fidelity(4, 32).mean() > fidelity(4, None).mean()
    # GPTQ on one real layer, calibrated on these sentences' inputs, beats RTN on them
    name = "0.model.encoder.layer.0.attention.self.query"
    x = capture_inputs(sentence_model, [name], lambda: sentence_model.encode(sentences))[name]
    w = sentence_model.get_submodule(name).weight
    assert output_error(w, gptq_quantize(w, x, 4, 128).weight, x) < output_error(w, rtn_quantize(w, 4, 128).weight, x)


def salient_inputs(tokens=512, channels=64, seed=14) -> torch.Tensor:
    x = torch.randn(tokens, channels, generator=torch.Generator().manual_seed(seed))
    x[:, :4] *= 20.0  # a few channels with large mean magnitude: their weights matter most
    return x


def test_awq_is_never_worse_than_rtn_and_picks_the_best_alpha():
    w = weight(32, 64, seed=15)
    for x in (salient_inputs(), correlated_inputs()):
        quantized, s, alpha = awq_quantize(w, x, 4, 16)
        rtn_error = output_error(w, rtn_quantize(w, 4, 16).weight, x)
        assert output_error(w, quantized.weight, x) <= rtn_error
        # the chosen alpha is the best of the grid, each candidate recomputed here from the formulas
        errors = []
        for a in [i / 20 for i in range(20)]:
            scale = x.abs().mean(0) ** a
            scale = scale / (scale.max() * scale.min()).sqrt()
            errors.append(output_error(w, rtn_quantize(w * scale, 4, 16).weight / scale, x))
        assert alpha == [i / 20 for i in range(20)][int(np.argmin(errors))]
        assert output_error(w, quantized.weight, x) == pytest.approx(min(errors), rel=1e-6)
        # the codes and scales are those of W diag(s)
        assert torch.equal(quantized.codes, rtn_quantize(w * s, 4, 16).codes)
    # with salient channels AWQ clearly helps
    x = salient_inputs()
    awq_error = output_error(w, awq_quantize(w, x, 4, 16)[0].weight, x)
    assert awq_error < 0.9 * output_error(w, rtn_quantize(w, 4, 16).weight, x)  # 0.77 measured
    with pytest.raises(ValueError, match="grid must be an integer >= 1, got 0"):
        awq_quantize(w, x, 4, 16, grid=0)
    with pytest.raises(ValueError, match="non-empty calibration set"):
        awq_quantize(w, [], 4, 16)


# transformers 5.24 warns when peft 0.21 asks the wrapped model about gradient checkpointing, a
# deprecated name inside the two libraries, not in this test
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_lora_on_the_real_bert_trains_under_two_percent(sentence_model):
    import peft  # pinned in requirements.txt: a missing install fails here
    bert = sentence_model[0].auto_model
    lora = peft.get_peft_model(copy.deepcopy(bert), peft.LoraConfig(r=8, lora_alpha=16,
                                                                       target_modules=["query", "value"]))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    total = sum(p.numel() for p in lora.parameters())
    # r (in + out) per adapted layer: 8 * (384 + 384) for query and value of each of the 6 layers
    assert trainable == 6 * 2 * 8 * (384 + 384) == 73_728
    assert trainable / total < 0.02
    # LoRA's B starts at zero: the adapted model computes what the original does
    ids = sentence_model.preprocess(["Return the number of items in the queue."])
    with torch.no_grad():
        assert torch.equal(lora(**ids).last_hidden_state, bert(**ids).last_hidden_state)
