"""Tests of helpers.runtimes: the runtimes' round trips (ExecuTorch, ONNX Runtime) and the export error."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import CNN
from helpers.measure import size_bytes
from helpers.quantization import xnnpack_quantize
from helpers.runtimes import (
    ExecuTorchModel,
    ExportError,
    OnnxRuntimeModel,
    export_program,
    onnx_quantize_static,
    strip_debug_metadata,
    to_executorch,
    to_onnx,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = CNN(channels=(2, 4)).eval()
    x = torch.randn(8, 1, 28, 28)
    return model, x


def test_executorch_round_trip_fp32_and_int8(tiny):
    model, x = tiny
    runtime = ExecuTorchModel(to_executorch(model, x[:1]))
    with torch.no_grad():
        expected = model(x)
    out = runtime(x)  # 8 examples through a batch-1 program, chunk by chunk
    assert out.shape == (8, 10)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert size_bytes(runtime) == len(runtime.program)

    int8 = xnnpack_quantize(model, [x], x[:1])
    runtime8 = ExecuTorchModel(to_executorch(int8, x[:4]), batch_size=4)
    with torch.no_grad():
        reference = int8(x)
    out8 = runtime8(x[:6])  # 6 = one full chunk + a padded one
    assert out8.shape == (6, 10)
    # XNNPACK's int8 kernels and PyTorch's reference q/dq graph round the same integers alike
    # up to one quantization step of the output
    assert (out8 - reference[:6]).abs().max() < 0.1 * reference.abs().max()


def test_executorch_model_rejects_bad_arguments():
    with pytest.raises(TypeError, match="program"):
        ExecuTorchModel(b"")
    with pytest.raises(ValueError, match="batch_size"):
        ExecuTorchModel(b"x", batch_size=0)


def test_onnx_runtime_round_trip_fp32_and_int8(tiny):
    model, x = tiny
    program = to_onnx(model, x[:1])
    runtime = OnnxRuntimeModel(program)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(runtime(x), expected, atol=1e-4, rtol=1e-4)
    runtime8 = OnnxRuntimeModel(onnx_quantize_static(program, [x]))
    assert runtime8(x).shape == (8, 10)
    assert (runtime8(x) - expected).abs().max() < 0.1 * expected.abs().max()
    # 7-bit weight codes, so no pair of uint8 x int8 products overflows a 16-bit register
    import onnx
    from onnx import numpy_helper

    codes = [numpy_helper.to_array(t) for t in onnx.load_from_string(runtime8.program).graph.initializer
             if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) > 1]
    assert codes and all(-64 <= c.min() and c.max() <= 64 for c in codes)
    assert max(int(abs(c).max()) for c in codes) >= 63  # the 7-bit range is used, not a smaller one
    with pytest.raises(ValueError, match="calibration_batches"):
        onnx_quantize_static(program, [])


def test_onnx_bytes_do_not_depend_on_the_checkout_path(tiny):
    import onnx

    model, x = tiny
    program = to_onnx(model, x[:1])
    # the exporter's stack traces name this repository's files by absolute path: all stripped
    assert b"models.py" not in program and b"stack_trace" not in program
    proto = onnx.load_from_string(program)
    assert not any(node.metadata_props for node in proto.graph.node)
    assert program == to_onnx(model, x[:1])
    raw = torch.onnx.export(export_program(model, x[:1], dynamic_batch=True), dynamo=True, verbose=False)
    assert any(node.metadata_props for node in raw.model_proto.graph.node)  # what there was to strip
    stripped = strip_debug_metadata(raw.model_proto)
    assert not any(node.metadata_props for node in stripped.graph.node)


class ValueDependent(nn.Module):
    """A layer whose Python control flow depends on a tensor's value: torch.export cannot trace it."""

    def forward(self, x):
        if x.mean() > 0:
            return x * 2
        return x


def test_export_error_names_the_unsupported_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), ValueDependent(), nn.Flatten())
    with pytest.raises(ExportError, match=r"layer '2' \(ValueDependent\) cannot be exported.*torch\.where"):
        export_program(model, torch.randn(1, 1, 8, 8))
    assert issubclass(ExportError, RuntimeError)


def test_export_program_type_errors(tiny):
    model, x = tiny
    with pytest.raises(TypeError, match="model"):
        export_program(lambda t: t, x)
    with pytest.raises(TypeError, match="example_input"):
        export_program(model, x.numpy())


LOAD_SCRIPT = """
import sys
from pathlib import Path
program = Path(sys.argv[1]).read_bytes()
if sys.argv[2] == "raw":
    from executorch.runtime import Runtime
    Runtime.get().load_program(program).load_method("forward")
else:
    from helpers.runtimes import ExecuTorchModel
    ExecuTorchModel(program)
"""


def test_loading_a_program_drops_exactly_the_known_lines(tiny, tmp_path):
    model, x = tiny
    path = tmp_path / "tiny.pte"
    path.write_bytes(to_executorch(model, x[:1]))
    root = Path(__file__).resolve().parents[1]
    runs = {mode: subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(path), mode], cwd=root,
                                 capture_output=True, text=True, timeout=120) for mode in ("raw", "wrapped")}
    assert all(run.returncode == 0 for run in runs.values()), {m: r.stderr[-500:] for m, r in runs.items()}
    # in a fresh process the runtime does log (once per process) on this x86 machine ...
    assert "[cpuinfo_utils.cpp:" in runs["raw"].stderr
    # ... and ExecuTorchModel lets none of those lines through
    assert "cpuinfo_utils" not in runs["wrapped"].stderr


def test_export_error_keeps_the_exporter_log_off_stderr(capsys):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), ValueDependent())
    with pytest.raises(ExportError) as caught:
        export_program(model, torch.randn(1, 1, 8, 8))
    assert capsys.readouterr().err == ""
    assert "data-dependent" in str(caught.value) or "data-dependent" in caught.value.exporter_log
    assert caught.value.original_error is not None and caught.value.__cause__ is None


def test_size_bytes_of_graph_module_and_runtime_program(tiny):
    model, x = tiny
    assert size_bytes(model) > 4 * sum(p.numel() for p in model.parameters())
    int8 = xnnpack_quantize(model, [x], x[:1])
    assert size_bytes(int8) < size_bytes(model)
    with pytest.raises(TypeError, match="model"):
        size_bytes("model.pt")
