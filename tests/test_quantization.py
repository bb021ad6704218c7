"""helpers.quantization checked against PyTorch's own quantization ops, edge cases and bad input."""
import warnings
from operator import attrgetter

import pytest
import torch
from torch import nn

from helpers.data import load_mnist, make_loader
from helpers.measure import size_bytes
from helpers.models import CNN
from helpers.noise import int8_kernels, taught_torch_ao_warnings
from helpers.plotting import read_scalars
from helpers.quantization import (
    FakeQuantize,
    calculate_qparams,
    calibrate_range,
    dequantize,
    fake_quantize,
    integer_weights,
    per_channel_vs_per_tensor_sqnr,
    post_training_quantize,
    pt2e_quantize,
    ptq_eager,
    qat_eager,
    qrange,
    quantization_aware_train,
    quantize,
    quantize_weights,
    quantized_linear,
    sqnr_db,
)
from helpers.training import evaluate, set_seed, train

BITS = list(range(2, 9))


def tensors():
    """Random and edge-case tensors: normal, wide, constant, all-negative, all-positive, with zeros."""
    g = torch.Generator().manual_seed(0)
    return {
        "normal": torch.randn(1000, generator=g),
        "wide": 50 * torch.randn(1000, generator=g),
        "constant": torch.full((100,), 0.37),
        "zeros": torch.zeros(10),
        "all_negative": -torch.rand(500, generator=g) - 0.1,
        "all_positive": torch.rand(500, generator=g) + 0.1,
        "ties": torch.arange(-20, 21, dtype=torch.float32) * 0.05,
    }


def observer_qparams(x, bits, symmetric):
    """PyTorch's reference: MinMaxObserver with the same code range."""
    from torch.ao.quantization import MinMaxObserver

    q_min, q_max = qrange(bits, signed=symmetric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reference only; the observer's own notices are irrelevant here
        obs = MinMaxObserver(dtype=torch.qint8 if symmetric else torch.quint8,
                             qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
                             quant_min=q_min, quant_max=q_max)
    obs(x)
    return obs.calculate_qparams()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("name", list(tensors()))
def test_qparams_match_minmax_observer(name, symmetric, bits):
    x = tensors()[name]
    scale, zero_point = calculate_qparams(x.min(), x.max(), bits, symmetric)
    ref_scale, ref_zp = observer_qparams(x, bits, symmetric)
    if symmetric:  # PyTorch's symmetric qint8 observer keeps z=0 for signed codes, as we do
        assert int(zero_point) == 0
    assert torch.allclose(scale, ref_scale.reshape(()), rtol=1e-6, atol=0)
    assert int(zero_point) == int(ref_zp)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("name", list(tensors()))
def test_fake_quantize_equals_torch_per_tensor_to_the_last_step(name, symmetric, bits):
    x = tensors()[name]
    scale, zero_point = calculate_qparams(x.min(), x.max(), bits, symmetric)
    q_min, q_max = qrange(bits, signed=symmetric)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), q_min, q_max)
    ours = fake_quantize(x, scale, zero_point, bits, signed=symmetric)
    assert torch.equal(ours, ref)
    # the integer codes agree exactly, and dequantizing them gives the same floats
    codes = quantize(x, scale, zero_point, bits, signed=symmetric)
    assert torch.equal(torch.round(ref / scale).to(torch.int32) + int(zero_point), codes)
    assert torch.equal(dequantize(codes, scale, zero_point), ref)


@pytest.mark.parametrize("name", list(tensors()))
def test_quantize_equals_torch_quantize_per_tensor(name):
    x = tensors()[name]
    for symmetric, dtype in ((False, torch.quint8), (True, torch.qint8)):
        scale, zero_point = calculate_qparams(x.min(), x.max(), 8, symmetric)
        with warnings.catch_warnings():
            # torch 2.14 deprecates quantized dtypes; the op is still the reference it always was
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
            ref = torch.quantize_per_tensor(x, float(scale), int(zero_point), dtype)
        assert torch.equal(quantize(x, scale, zero_point, 8, signed=symmetric), ref.int_repr().to(torch.int32))
        assert torch.equal(dequantize(quantize(x, scale, zero_point, 8, signed=symmetric), scale, zero_point),
                           ref.dequantize())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quantize_equals_torch_per_channel(bits, symmetric):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 4, 3, 3, generator=g) * torch.linspace(0.01, 3, 8).view(-1, 1, 1, 1)
    w[3] = 0.5  # a constant channel
    w[5] = -w[5].abs()  # an all-negative channel
    flat = w.reshape(8, -1)
    scale, zero_point = calculate_qparams(flat.min(1).values, flat.max(1).values, bits, symmetric)
    q_min, q_max = qrange(bits, signed=symmetric)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zero_point.to(torch.int32), 0, q_min, q_max)
    assert torch.equal(fake_quantize(w, scale, zero_point, bits, signed=symmetric, axis=0), ref)


def test_straight_through_gradient_equals_torch():
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    scale, zero_point = calculate_qparams(-1.0, 2.0, 4)
    upstream = torch.randn(101, generator=torch.Generator().manual_seed(2))
    fake_quantize(x, scale, zero_point, 4).backward(upstream)
    torch.fake_quantize_per_tensor_affine(x_ref, float(scale), int(zero_point), 0, 15).backward(upstream)
    assert torch.equal(x.grad, x_ref.grad)
    assert 0 < int((x.grad == 0).sum()) < 101  # clipped values get no gradient, the rest pass through


def test_zero_is_exact_and_constant_tensor_round_trips():
    for x in (torch.full((5,), 0.37), torch.full((5,), -2.0), torch.zeros(3)):
        for symmetric in (False, True):
            scale, zero_point = calculate_qparams(x.min(), x.max(), 8, symmetric)
            assert fake_quantize(torch.zeros(1), scale, zero_point, 8, signed=symmetric).item() == 0.0
            assert torch.allclose(fake_quantize(x, scale, zero_point, 8, signed=symmetric), x,
                                  atol=float(scale) / 2 + 1e-7)


def test_error_shrinks_with_bits_and_per_channel_beats_per_tensor():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    sqnrs = []
    for bits in BITS:
        scale, zero_point = calculate_qparams(x.min(), x.max(), bits)
        sqnrs.append(sqnr_db(x, fake_quantize(x, scale, zero_point, bits)))
    assert all(b > a + 4 for a, b in zip(sqnrs, sqnrs[1:]))  # about 6 dB per bit
    w = torch.randn(16, 9) * torch.logspace(-2, 0, 16).view(-1, 1)
    per_tensor, per_channel = per_channel_vs_per_tensor_sqnr(w, 4)
    assert per_channel > per_tensor + 3


def test_calibration_methods():
    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(100_000, generator=g), torch.tensor([40.0])])  # one outlier
    assert calibrate_range(x, "minmax") == (float(x.min()), 40.0)
    low, high = calibrate_range(x, "percentile", percentile=99.9)
    assert 2.5 < high < 4.0 and -4.0 < low < -2.5
    mse_low, mse_high = calibrate_range(x, "mse", bits=8)
    assert mse_high < 40.0
    errors = {}
    for method in ("minmax", "percentile", "mse"):
        scale, zero_point = calculate_qparams(*calibrate_range(x, method, bits=4), bits=4)
        errors[method] = float(torch.mean((fake_quantize(x, scale, zero_point, 4) - x) ** 2))
    assert errors["mse"] <= errors["percentile"] * 1.01 and errors["mse"] < errors["minmax"] / 5
    # an iterable of batches gives the same range as one tensor
    assert calibrate_range([x[:500], x[500:]], "minmax") == calibrate_range(x, "minmax")


def test_quantized_linear_matches_float_within_quantization_error():
    g = torch.Generator().manual_seed(5)
    layer = nn.Linear(64, 10)
    x = torch.relu(torch.randn(32, 64, generator=g))
    y = layer(x).detach()
    x_scale, x_zp = calculate_qparams(x.min(), x.max(), 8)
    w = layer.weight.detach()
    w_scale, _ = calculate_qparams(w.min(1).values, w.max(1).values, 8, symmetric=True)
    q_w = quantize(w, w_scale, 0, 8, signed=True, axis=0)
    y_scale, y_zp = calculate_qparams(y.min(), y.max(), 8)
    q_y = quantized_linear(quantize(x, x_scale, x_zp, 8), float(x_scale), int(x_zp), q_w, w_scale,
                           layer.bias.detach(), float(y_scale), int(y_zp))
    y_hat = dequantize(q_y, y_scale, y_zp)
    assert (y_hat - y).abs().max() < 4 * float(y_scale)
    # and it equals the float computation on the dequantized inputs, requantized once
    x_dq = dequantize(quantize(x, x_scale, x_zp, 8), x_scale, x_zp)
    w_dq = dequantize(q_w, w_scale, 0, axis=0)
    bias_scale = float(x_scale) * w_scale.double()
    bias_q = torch.round(layer.bias.detach().double() / bias_scale) * bias_scale
    ref = quantize((x_dq.double() @ w_dq.double().T + bias_q).float(), y_scale, y_zp, 8)
    assert (q_y - ref).abs().max() <= 1


def test_fake_quantize_module_tracks_range_and_freezes_in_eval():
    fq = FakeQuantize(bits=8, momentum=0.5)
    fq.train()
    fq(torch.tensor([0.0, 1.0]))
    fq(torch.tensor([0.0, 3.0]))
    assert fq.max_val.item() == pytest.approx(2.0)
    fq.eval()
    out = fq(torch.tensor([10.0]))
    assert fq.max_val.item() == pytest.approx(2.0) and out.item() == pytest.approx(2.0, abs=0.01)
    with pytest.raises(RuntimeError, match="seen no data"):
        FakeQuantize().eval()(torch.ones(1))


def test_quantize_weights_ptq_and_qat_on_the_cnn(tmp_path):
    splits = load_mnist()
    train_loader = make_loader(splits.train, 128, shuffle=True, seed=0)
    torch.manual_seed(0)
    model = CNN().eval()
    ptq = post_training_quantize(model, bits=4)
    codes = integer_weights(ptq)
    assert set(codes) == {"conv1", "conv2", "fc1"}
    for name, q in codes.items():
        assert q.min() >= -8 and q.max() <= 7
        layer = dict(ptq.named_modules())[name]
        scale = layer.parametrizations.weight[0].qparams(layer.parametrizations.weight.original)[0]
        assert torch.equal(layer.weight, dequantize(q, scale, 0, axis=0))
    assert model.conv1.weight.dtype == torch.float32 and not hasattr(model.conv1, "parametrizations")
    qat = quantization_aware_train(model, train_loader, bits=4, num_epochs=1, lr=1e-3, log_dir=tmp_path)
    assert not torch.equal(qat.fc1.parametrizations.weight.original, model.fc1.weight)
    assert len(torch.unique(qat.fc1.weight[0])) <= 16
    assert len(read_scalars(tmp_path)["loss/train_step"][0]) == len(train_loader)


def test_taught_warnings_are_silenced_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with taught_torch_ao_warnings():
            warnings.warn("torch.ao.quantization is deprecated and will be removed", DeprecationWarning)
            warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in caught] == ["something else"]


@pytest.mark.parametrize("bits", [1, 17, 0, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 16\]"):
        qrange(bits)
    with pytest.raises(ValueError, match="bits"):
        fake_quantize(torch.ones(3), 0.1, 0, bits)
    with pytest.raises(ValueError, match="bits"):
        quantize_weights(CNN(), bits)


def test_bits_wrong_type():
    with pytest.raises(TypeError, match="bits"):
        qrange(4.0)


@pytest.mark.parametrize("scale", [0.0, -0.1, float("nan")])
def test_non_positive_scale(scale):
    with pytest.raises(ValueError, match="scale must be positive"):
        quantize(torch.ones(3), scale, 0)
    with pytest.raises(ValueError, match="scale must be positive"):
        fake_quantize(torch.ones(3), scale, 0)


@pytest.mark.parametrize("zero_point, bits, signed", [(256, 8, False), (-1, 8, False), (8, 4, True),
                                                      (-9, 4, True), (1.5, 8, False)])
def test_zero_point_outside_range(zero_point, bits, signed):
    with pytest.raises(ValueError, match=r"zero_point must be an integer in \["):
        quantize(torch.ones(3), 0.1, zero_point, bits, signed)


def test_empty_calibration_set():
    for empty in (torch.empty(0), [], [torch.empty(0)]):
        with pytest.raises(ValueError, match="empty calibration set"):
            calibrate_range(empty)
    with pytest.raises(ValueError, match="method must be one of"):
        calibrate_range(torch.ones(3), "entropy")
    with pytest.raises(ValueError, match="percentile must be in"):
        calibrate_range(torch.ones(3), "percentile", percentile=30)


def test_model_without_quantizable_layers():
    with pytest.raises(ValueError, match="no quantizable layer"):
        quantize_weights(nn.Sequential(nn.ReLU(), nn.Flatten()), 8)
    with pytest.raises(TypeError, match="model must be"):
        quantize_weights("not a model", 8)
    with pytest.raises(ValueError, match="no fake-quantized weight"):
        integer_weights(CNN())


def test_per_channel_shape_errors():
    with pytest.raises(ValueError, match="per-channel scale and zero_point need 4 entries"):
        quantize(torch.ones(4, 2), torch.ones(3), torch.zeros(3), axis=0)
    with pytest.raises(ValueError, match="axis must be in"):
        quantize(torch.ones(4, 2), torch.ones(4), torch.zeros(4), axis=2)
    with pytest.raises(ValueError, match="min_val must be <= max_val"):
        calculate_qparams(1.0, 0.0)


def test_ties_round_half_to_even_not_half_up():
    """The source (3.2.3.1, the note under the first formula) defines round() as 四舍五入, halves
    away from zero. PyTorch's quantizers round an exact tie to the even code, and
    helpers.quantization does the same."""
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5])  # x / s exact ties with s = 1
    ours = quantize(x, 1.0, 0, bits=8, signed=True)
    reference = torch.fake_quantize_per_tensor_affine(x, 1.0, 0, -128, 127).to(torch.int32)  # s = 1: codes
    half_up = (torch.sign(x) * torch.floor(x.abs() + 0.5)).to(torch.int32)
    assert torch.equal(ours, reference)
    assert ours.tolist() == [0, 2, 2, 4, 0, -2, -2]
    assert half_up.tolist() == [1, 2, 3, 4, -1, -2, -3] and not torch.equal(ours, half_up)


@pytest.fixture(scope="module")
def trained_cnn():
    """A small CNN trained one epoch on 4,000 real digits, and loaders for calibration and test."""
    splits = load_mnist()
    train_loader = make_loader(splits.train, 64, shuffle=True, seed=0)
    set_seed(0)
    model = CNN(channels=(8, 16))
    train(model, train_loader, num_epochs=1, quiet=True)
    return model.eval(), train_loader, make_loader(splits.test, 1000)


def test_pt2e_quantize_stores_int8_weights_and_keeps_accuracy(trained_cnn):
    model, train_loader, test_loader = trained_cnn
    batches = [x for _, (x, _) in zip(range(4), train_loader)]
    int8 = pt2e_quantize(model, batches, batches[0])
    targets = {node.target for node in int8.graph.nodes if node.op == "call_function"}
    assert torch.ops.quantized_decomposed.quantize_per_tensor.default in targets
    assert torch.ops.quantized_decomposed.dequantize_per_channel.default in targets
    constants = [attrgetter(n.target)(int8) for n in int8.graph.nodes if n.op == "get_attr"]
    assert any(t.dtype == torch.int8 and t.dim() == 4 for t in constants)  # conv weights stored as int8
    assert size_bytes(int8) < size_bytes(model) / 2  # int8 weights; fp32 biases and per-channel scales stay
    int8.eval()  # allowed: evaluate() calls it
    fp32_accuracy = evaluate(model, test_loader).accuracy
    assert abs(evaluate(int8, test_loader).accuracy - fp32_accuracy) <= 0.02
    with pytest.raises(ValueError, match="calibration_batches must yield at least one batch"):
        pt2e_quantize(model, [], batches[0])


def test_eager_ptq_and_qat_convert_to_int8_modules(trained_cnn, tmp_path):
    model, train_loader, test_loader = trained_cnn
    fp32_accuracy = evaluate(model, test_loader).accuracy
    int8 = ptq_eager(model, (batch for _, batch in zip(range(4), train_loader)))
    assert type(int8.module.conv1).__name__ == "ConvReLU2d" and "quantized" in type(int8.module.conv1).__module__
    assert int8.module.fc1.weight().dtype == torch.qint8
    with int8_kernels():
        assert abs(evaluate(int8, test_loader).accuracy - fp32_accuracy) <= 0.02
    assert model.conv1.weight.dtype == torch.float32 and isinstance(model.conv1, nn.Conv2d)  # not touched
    qat = qat_eager(model, train_loader, num_epochs=1, seed=0, val_loader=test_loader, log_dir=tmp_path)
    assert "quantized" in type(qat.module.fc1).__module__
    scalars = read_scalars(tmp_path)  # the fake-quantized fine-tuning, logged for TensorBoard
    assert len(scalars["loss/train_step"][0]) == len(train_loader) and scalars["accuracy/val"][0] == [1]
    with int8_kernels():
        assert evaluate(qat, test_loader).accuracy >= fp32_accuracy - 0.02  # one more epoch: may gain
    with pytest.raises(ValueError, match="calibration_batches must yield at least one batch"):
        ptq_eager(model, [])
