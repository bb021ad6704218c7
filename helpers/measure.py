"""Measuring models like an engineer: parameters, bytes on disk, sparsity and latency.

Latency rules the book follows (chapters/01_background.ipynb explains them): warm up first, time
many calls on the same input, report the median and a spread (10th-90th percentile), time the
models being compared *interleaved in the same run* so that drift in the machine's speed hits all
of them alike, and compare against the strongest fp32 baseline, a ``torch.compile``d model
(:func:`compile_for_inference`), not only eager PyTorch.
"""
from __future__ import annotations

import io
import os
import platform
import statistics
import time
from dataclasses import dataclass
from operator import attrgetter

import torch
import torch._inductor.config as inductor_config
from torch import nn

from helpers._checks import check_int
from helpers.noise import compile_notices_dropped
from helpers.training import evaluate


def count_parameters(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameter elements of ``model`` (only the non-zero ones if ``nonzero``).

    Counts ``model.parameters()``: weights hidden in packed buffers (``torch.ao`` quantized modules)
    are not parameters, so use :func:`size_bytes` to compare a quantized model's cost.
    """
    if nonzero:
        return sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


def _graph_tensors(model: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    used = sorted({node.target for node in model.graph.nodes if node.op == "get_attr"})
    tensors = {name: attrgetter(name)(model) for name in used}
    return {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor)}


def size_bytes(model) -> int:
    """Bytes to store ``model``, for any artefact the book builds: what it costs to store or ship.

    - an ``nn.Module``: ``torch.save`` of its ``state_dict`` (a ``torch.compile``d model: of what it wraps);
    - a pt2e graph (``torch.fx.GraphModule`` from ``convert_pt2e``): ``torch.save`` of the constants
      the graph reads (int8 weights, their scales), as chapters/04_practice/quantization.ipynb measures it;
    - a device-runtime model (:class:`helpers.runtimes.ExecuTorchModel`, :class:`helpers.runtimes.OnnxRuntimeModel`)
      or raw program bytes: the bytes of the program file.
    """
    if isinstance(model, (bytes, bytearray)):
        return len(model)
    model = getattr(model, "_orig_mod", model)
    program = getattr(model, "program", None)
    if isinstance(model, nn.Module) and isinstance(program, bytes):
        return len(program)
    buffer = io.BytesIO()
    if isinstance(model, torch.fx.GraphModule):
        torch.save(_graph_tensors(model), buffer)
    elif isinstance(model, nn.Module):
        torch.save(model.state_dict(), buffer)
    else:
        raise TypeError(f"model must be a torch.nn.Module or program bytes, got {type(model).__name__}")
    return buffer.getbuffer().nbytes


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over the ``weight`` of every ``Conv``/``Linear`` layer.

    Reads ``module.weight``, so weights masked by ``torch.nn.utils.prune`` count as zero.
    Raises ``ValueError`` if the model has no such layer.
    """
    zeros, total = 0, 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            weight = module.weight.detach()
            zeros += int((weight == 0).sum())
            total += weight.numel()
    if total == 0:
        raise ValueError("model has no Conv or Linear layer to measure sparsity on")
    return zeros / total


def layer_costs(model: nn.Module, example_input: torch.Tensor):
    """Per-layer cost of one forward pass on a single example: parameters, fp32 bytes and MACs.

    Multiply-accumulates (MACs) are counted for ``Conv2d`` (``out_h*out_w*C_out*C_in/groups*k_h*k_w``)
    and ``Linear`` (``in*out``) layers, with hooks on a real forward pass, so they follow the actual
    shapes. ``example_input`` is one batch; MACs are reported per example. Returns a
    ``pandas.DataFrame`` indexed by layer name, with each column's share of the total.
    """
    import pandas as pd

    rows: list[dict] = []
    hooks = []

    def record(name):
        def hook(module, inputs, output):
            weight = module.weight
            if isinstance(module, nn.Conv2d):
                out_h, out_w = output.shape[-2:]
                macs = out_h * out_w * weight.shape[0] * weight.shape[1] * weight.shape[2] * weight.shape[3]
            else:
                macs = weight.shape[0] * weight.shape[1]
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append({"layer": name, "type": type(module).__name__, "parameters": params,
                         "fp32_bytes": 4 * params, "macs": int(macs)})
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(record(name)))
    if not hooks:
        raise ValueError("model has no Conv2d or Linear layer to cost")
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in hooks:
            handle.remove()
    table = pd.DataFrame(rows).set_index("layer")
    table["param_share"] = (table["parameters"] / table["parameters"].sum()).round(3)
    table["mac_share"] = (table["macs"] / table["macs"].sum()).round(3)
    return table


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one forward pass, in milliseconds, over ``repeats`` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    batch_size: int
    threads: int

    def __str__(self) -> str:
        return (f"{self.median_ms:.3f} ms median (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}; "
                f"batch {self.batch_size}, {self.threads} threads, {self.repeats} runs)")


def _percentile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def latencies(models: dict[str, nn.Module], example_input: torch.Tensor, warmup: int = 10,
              repeats: int = 100, num_threads: int | None = None) -> dict[str, Latency]:
    """Time several models on the same input, interleaved call by call, in one run.

    Every model gets ``warmup`` untimed calls, then the models take turns for ``repeats`` rounds,
    so a slow spell of the machine lands on all of them. Runs under ``torch.inference_mode()``
    with ``num_threads`` intra-op threads (default: PyTorch's current setting, restored after).
    Raises ``ValueError`` for an empty ``models``, ``warmup < 0`` or ``repeats < 5``.

    This is the book's timer for *reporting* times (tables of milliseconds, with their spread).
    A *claim* about a speed ratio is not checked against one run of it: that is
    :func:`helpers.evidence.check_speedups`, which times in the same interleaved way but block
    after block, until the interval of the ratio is clear of the claimed bound.
    """
    if not models:
        raise ValueError("models must name at least one model")
    check_int("warmup", warmup, minimum=0)
    check_int("repeats", repeats, minimum=5)
    previous_threads = torch.get_num_threads()
    threads = num_threads or previous_threads
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            for model in models.values():
                for _ in range(warmup):
                    model(example_input)
            for _ in range(repeats):
                for name, model in models.items():
                    start = time.perf_counter_ns()
                    model(example_input)
                    times[name].append((time.perf_counter_ns() - start) / 1e6)
    finally:
        torch.set_num_threads(previous_threads)
    result = {}
    for name, values in times.items():
        values.sort()
        result[name] = Latency(median_ms=statistics.median(values), p10_ms=_percentile(values, 0.1),
                               p90_ms=_percentile(values, 0.9), repeats=repeats,
                               batch_size=len(example_input), threads=threads)
    return result


def latency(model: nn.Module, example_input: torch.Tensor, warmup: int = 10, repeats: int = 100,
            num_threads: int | None = None) -> Latency:
    """Median and spread of one model's forward-pass time; see :func:`latencies`."""
    return latencies({"model": model}, example_input, warmup, repeats, num_threads)["model"]


def compile_for_inference(model: nn.Module, *example_inputs: torch.Tensor, dynamic: bool | None = None) -> nn.Module:
    """The strongest CPU baseline: ``torch.compile`` with Inductor's weight freezing, warmed up.

    Freezing (``torch._inductor.config.freezing``) treats the weights as constants, which lets
    Inductor fold them and pre-pack them for oneDNN; it is what PyTorch's CPU inference guides
    use, and the int8 pt2e path needs it too (without it the int8 pattern fusions of a pt2e graph
    are not applied), so both sides of a comparison get it. Compilation is lazy and a new input
    shape compiles again on its first call, so the model is run once on each of ``example_inputs``
    here, inside the setting, and returned ready (first calls take seconds; later calls are fast).
    Give every batch shape it will be timed on.

    ``dynamic`` is ``torch.compile``'s switch: ``None`` (its default) compiles a static graph and a
    dynamic one if another shape comes; ``False`` compiles one static graph per batch size, which a
    pt2e int8 graph timed at several batch sizes needs (a dynamic batch dimension trips an Inductor
    stride check in the int8 convolution lowering in torch 2.14). The model is put in eval mode
    (a pt2e graph as it is). The harmless notices compiling raises for an int8 graph or torchao's
    4-bit weights are dropped here (:data:`helpers.noise.COMPILE_NOTICES`).
    """
    if not example_inputs:
        raise ValueError("example_inputs: give at least one example input tensor")
    if isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model.eval()
    compiled = torch.compile(model, dynamic=dynamic)
    with compile_notices_dropped(), inductor_config.patch(freezing=True), torch.inference_mode():
        for example in example_inputs:
            compiled(example)
    return compiled


def machine_info() -> dict[str, str | int]:
    """What a latency number depends on: CPU model, cores, PyTorch threads and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def cpu_features() -> dict[str, bool]:
    """The instruction-set extensions that decide whether a low-precision format is *fast* here.

    - ``avx512_bf16``: AVX-512 BF16 (``vdpbf16ps``: bf16 dot products into fp32; AMD Zen 4, Intel
      Cooper Lake and Sapphire Rapids and later Xeons, not Ice Lake);
    - ``amx_bf16``: AMX tiles (bf16 and int8 matrix units; Intel Sapphire Rapids and later);
    - ``native_bf16``: either of the two. Without them oneDNN emulates bf16 with fp32 arithmetic plus
      conversions (chapters/05_applications/training.ipynb measures what that costs);
    - ``avx512_vnni``: VNNI int8 dot products (``vpdpbusd``), what fbgemm's and oneDNN's int8 kernels use.

    Read from PyTorch's own CPU detection (the flags its kernels dispatch on), not from /proc/cpuinfo.
    """
    features = {"avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
                "amx_bf16": bool(torch.cpu._is_amx_tile_supported()),
                "avx512_vnni": bool(torch.cpu._is_vnni_supported())}
    features["native_bf16"] = features["avx512_bf16"] or features["amx_bf16"]
    return features


def int8_matmul_without_vnni(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (uint8 ``a`` of shape (m, k), int8 ``b`` of shape (k, n)) as an x86 CPU without VNNI
    computes it in oneDNN's and ONNX Runtime's int8 kernels: ``vpmaddubsw`` multiplies neighbouring
    pairs along k and adds each pair in a 16-bit register that saturates at [-32768, 32767]; the pair
    sums are then added exactly in 32 bits. With VNNI (``vpdpbusd``) the result is exact,
    ``a.int() @ b.int()``. Returns int32 (m, n); an odd k gets a zero pad.
    """
    for name, t, dtype in (("a", a, torch.uint8), ("b", b, torch.int8)):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype:
            raise TypeError(f"{name} must be a {dtype} tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a's columns ({a.shape[1]}) must match b's rows ({b.shape[0]})")
    a32, b32 = a.int(), b.int()
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32)
    for i in range(0, a.shape[1], 2):
        pair = a32[:, i, None] * b32[i] + (a32[:, i + 1, None] * b32[i + 1] if i + 1 < a.shape[1] else 0)
        out += pair.clamp(-32768, 32767)
    return out


def compare(models: dict[str, nn.Module], test_loader, example_input: torch.Tensor,
            repeats: int = 100):
    """One table, measured in one run: accuracy, parameters, non-zeros, size and latency per model.

    Returns a ``pandas.DataFrame`` indexed by model name. Latencies come from :func:`latencies`
    (interleaved), so the rows are comparable with each other, not across machines.
    """
    import pandas as pd  # lazy: pandas is needed only for this table

    timing = latencies(models, example_input, repeats=repeats)
    rows = []
    for name, model in models.items():
        rows.append({
            "model": name,
            "accuracy": round(evaluate(model, test_loader).accuracy, 4),
            "parameters": count_parameters(model),
            "nonzero": count_parameters(model, nonzero=True),
            "size_kb": round(size_bytes(model) / 1024, 1),
            "latency_ms": round(timing[name].median_ms, 3),
            "p10_ms": round(timing[name].p10_ms, 3),
            "p90_ms": round(timing[name].p90_ms, 3),
        })
    return pd.DataFrame(rows).set_index("model")
