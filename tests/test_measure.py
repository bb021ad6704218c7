"""helpers.measure: parameter counts, stored size, sparsity, latency statistics, the comparison table."""
import io
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from helpers.data import load_mnist, make_loader
from helpers.measure import (
    Latency,
    _percentile,
    compare,
    compile_for_inference,
    count_parameters,
    cpu_features,
    int8_matmul_without_vnni,
    latencies,
    latency,
    machine_info,
    size_bytes,
    sparsity,
)
from helpers.models import CNN


def test_count_parameters_total_and_nonzero():
    model = nn.Linear(10, 4)
    assert count_parameters(model) == 44
    with torch.no_grad():
        model.weight[:2].zero_()
        model.bias.zero_()
    assert count_parameters(model, nonzero=True) == 20


def test_model_size_tracks_the_fp32_bytes():
    small, large = nn.Linear(100, 100), nn.Linear(1000, 100)
    # 4 bytes per float32 parameter plus a small, fixed serialization overhead
    for model in (small, large):
        assert 4 * count_parameters(model) < size_bytes(model) < 4 * count_parameters(model) + 2000
    buffer = io.BytesIO()
    torch.save(large.state_dict(), buffer)
    assert size_bytes(large) == len(buffer.getvalue())


def test_sparsity_reads_masked_weights_and_a_pruning_mask_does_not_shrink_the_file():
    model = CNN()
    assert sparsity(model) == 0.0
    dense_size = size_bytes(model)
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    weights = sum(m.weight.numel() for m in (model.conv1, model.conv2, model.fc1))
    assert sparsity(model) == pytest.approx(round(0.5 * model.fc1.weight.numel()) / weights)
    assert size_bytes(model) > dense_size  # weight_orig + weight_mask: bigger, not smaller


def test_sparsity_needs_a_layer():
    with pytest.raises(ValueError, match="no Conv or Linear"):
        sparsity(nn.ReLU())


def test_percentile_interpolates():
    assert _percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert _percentile([0.0, 10.0], 0.1) == pytest.approx(1.0)


def test_latency_orders_a_cheap_and_an_expensive_model():
    cheap, costly = nn.Linear(64, 64), nn.Sequential(*[nn.Linear(64, 64) for _ in range(60)])
    x = torch.randn(8, 64)
    result = latencies({"cheap": cheap, "costly": costly}, x, warmup=2, repeats=20, num_threads=1)
    assert result["cheap"].median_ms < result["costly"].median_ms
    for value in result.values():
        assert value.p10_ms <= value.median_ms <= value.p90_ms
        assert (value.batch_size, value.threads, value.repeats) == (8, 1, 20)
    assert torch.get_num_threads() >= 1
    single = latency(cheap, x, warmup=1, repeats=5)
    assert isinstance(single, Latency) and "batch 8" in str(single)


@pytest.mark.parametrize("kwargs, name", [({"repeats": 2}, "repeats"), ({"warmup": -1}, "warmup")])
def test_latency_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        latency(nn.Linear(2, 2), torch.zeros(1, 2), **kwargs)
    with pytest.raises(ValueError, match="models"):
        latencies({}, torch.zeros(1, 2))


def test_latency_restores_thread_count():
    before = torch.get_num_threads()
    latency(nn.Linear(2, 2), torch.zeros(1, 2), repeats=5, num_threads=1)
    assert torch.get_num_threads() == before


def test_compile_for_inference_computes_the_same_function():
    torch.manual_seed(0)
    model = CNN(channels=(4, 8))
    x = torch.randn(4, 1, 28, 28)
    compiled = compile_for_inference(model, x)
    with torch.inference_mode():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)
    with pytest.raises(ValueError, match="example_inputs"):
        compile_for_inference(model)


@pytest.mark.parametrize("dynamic", [False, None])
def test_compile_for_inference_warms_every_batch_shape(dynamic):
    torch.manual_seed(0)
    model = CNN(channels=(4, 8)).train()
    x1, x16 = torch.randn(1, 1, 28, 28), torch.randn(16, 1, 28, 28)
    torch._dynamo.reset()
    compiled = compile_for_inference(model, x1, x16, dynamic=dynamic)
    assert not model.training
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for x in (x1, x16):
            assert torch.allclose(compiled(x), model(x), atol=1e-4)
    # both shapes were compiled while warming up: timing them later compiles nothing new
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames >= 1


def test_machine_info_names_what_latency_depends_on():
    info = machine_info()
    assert set(info) == {"cpu", "cores", "torch_threads", "torch", "python"}
    assert info["cores"] >= 1 and info["torch"] == torch.__version__


def test_cpu_features_agree_with_the_kernel_flags():
    features = cpu_features()
    assert features["native_bf16"] == (features["avx512_bf16"] or features["amx_bf16"])
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to cross-check against")
    flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
    assert features["avx512_bf16"] == ("avx512_bf16" in flags)
    assert features["amx_bf16"] == ("amx_tile" in flags)
    assert features["avx512_vnni"] == ("avx512_vnni" in flags)


def test_int8_matmul_without_vnni_saturates_each_pair_of_products():
    # one pair 255 * 127 + 255 * 127 = 64,770 does not fit in 16 bits: it saturates to 32,767
    a = torch.tensor([[255, 255, 3]], dtype=torch.uint8)
    b = torch.tensor([[127], [127], [-5]], dtype=torch.int8)
    assert int8_matmul_without_vnni(a, b).item() == 32767 - 15
    assert (a.int() @ b.int()).item() == 64770 - 15
    # an independent reference: the pairs summed one entry at a time, in Python integers
    g = torch.Generator().manual_seed(0)
    a = torch.randint(128, 256, (5, 9), generator=g, dtype=torch.uint8)
    b = torch.randint(-128, 128, (9, 4), generator=g, dtype=torch.int8)
    b[:, 0] = 127  # a column of large weights of one sign: its pairs overflow
    expected = [[sum(max(-32768, min(32767, sum(int(a[i, k]) * int(b[k, j]) for k in range(p, min(p + 2, 9)))))
                     for p in range(0, 9, 2)) for j in range(4)] for i in range(5)]
    got = int8_matmul_without_vnni(a, b)
    assert got.dtype == torch.int32 and got.tolist() == expected
    assert not torch.equal(got, a.int() @ b.int())  # these full-range inputs do overflow
    # 7-bit weights: 2 * 255 * 64 = 32,640 fits, so the result is exact
    b7 = torch.randint(-64, 65, (9, 4), generator=g, dtype=torch.int8)
    assert torch.equal(int8_matmul_without_vnni(a, b7), a.int() @ b7.int())
    with pytest.raises(TypeError, match="a must be a torch.uint8 tensor, got torch.int8"):
        int8_matmul_without_vnni(b, b)
    with pytest.raises(ValueError, match=r"b must be 2-D, got shape \(9,\)"):
        int8_matmul_without_vnni(a, b[:, 0])
    with pytest.raises(ValueError, match=r"a's columns \(9\) must match b's rows \(4\)"):
        int8_matmul_without_vnni(a, b[:4])


def test_compare_builds_one_row_per_model():
    data = load_mnist()
    loader = make_loader(data.test, 500)
    models = {"a": CNN(), "b": CNN(channels=(4, 8))}
    table = compare(models, loader, data.test.tensors[0][:1], repeats=5)
    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "parameters"] == count_parameters(models["a"])
    assert table.loc["b", "size_kb"] < table.loc["a", "size_kb"]
    assert 0.0 <= table.loc["a", "accuracy"] <= 1.0


def test_layer_costs_match_a_hand_count_for_the_source_cnn():
    from helpers.measure import layer_costs

    table = layer_costs(CNN(), torch.zeros(1, 1, 28, 28))
    assert list(table.index) == ["conv1", "conv2", "fc1"]
    assert table["macs"].tolist() == [28 * 28 * 16 * 1 * 9, 14 * 14 * 32 * 16 * 9, 32 * 7 * 7 * 10]
    assert table["parameters"].tolist() == [160, 4640, 15690]
    assert table["fp32_bytes"].sum() == 4 * 20490
    assert table["param_share"].sum() == pytest.approx(1.0, abs=0.002)
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        layer_costs(nn.ReLU(), torch.zeros(1, 3))


def test_size_bytes_of_compiled_model_and_program_bytes():
    model = CNN(channels=(4, 8))
    compiled = torch.compile(model)
    assert size_bytes(compiled) == size_bytes(model)
    assert size_bytes(b"\x00" * 123) == 123
    with pytest.raises(TypeError, match="model must be"):
        size_bytes(3)
