"""Running a model outside eager PyTorch: ``torch.export``, ExecuTorch (XNNPACK) and ONNX Runtime.

chapters/05_applications/deployment.ipynb uses them. :func:`export_program` wraps
``torch.export`` and, when a layer cannot be exported, names that layer (:class:`ExportError`).
:func:`to_executorch` lowers a model (fp32, or int8 from
:func:`helpers.quantization.xnnpack_quantize`) to an ExecuTorch ``.pte`` program delegated to
XNNPACK, the runtime PyTorch ships for phones and microcontrollers; :class:`ExecuTorchModel` runs
it. :func:`to_onnx` / :class:`OnnxRuntimeModel` do the same for ONNX Runtime, and
:func:`onnx_quantize_static` is ONNX Runtime's own int8 static quantization. The runtime wrappers
are ``nn.Module``s with the program's bytes in ``program``, so :func:`helpers.evaluate`,
:func:`helpers.latencies` and :func:`helpers.measure.size_bytes` take them beside PyTorch models.
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from helpers._checks import check_int
from helpers.noise import known_runtime_logs_dropped

# ----------------------------------------------------------------------------------------------
# Export, with a message that names the layer that cannot be exported
# ----------------------------------------------------------------------------------------------


class ExportError(RuntimeError):
    """``torch.export`` failed; the message names the layer (module path and class) that broke it.

    ``exporter_log`` holds what the exporter wrote to ``sys.stderr`` while failing (for a
    data-dependent branch: a warning and the partial graph it had traced), kept for debugging
    instead of being printed ahead of the error.
    """

    def __init__(self, message: str, exporter_log: str = "", original_error: BaseException | None = None):
        super().__init__(message)
        self.exporter_log = exporter_log
        #: the exporter's own exception (not chained, so the traceback a reader sees stays short)
        self.original_error = original_error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _find_unexportable_layer(model: nn.Module, example_input: torch.Tensor):
    """Run the model once, record each leaf module's inputs, and export leaves one by one."""
    inputs: dict[str, tuple] = {}
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: inputs.setdefault(name, args)))
    try:
        with torch.no_grad():
            model(example_input)
    except Exception:  # the eager model itself fails: nothing layer-specific to report
        return None
    finally:
        for handle in handles:
            handle.remove()
    for name, args in inputs.items():
        module = model.get_submodule(name)
        try:
            torch.export.export(module, args)
        except Exception as error:  # any export failure of this layer is the answer we look for
            return name, module, error
    return None


def export_program(model: nn.Module, example_input: torch.Tensor, dynamic_batch: bool = False):
    """``torch.export.export(model.eval(), (example_input,))``, with a layer-naming error.

    With ``dynamic_batch`` the first dimension may vary (1..1024 examples). If export fails, each
    leaf layer is exported alone on the input it saw in an eager run, and the first one that fails
    is named in an :class:`ExportError` together with the exporter's reason and what to do.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    if not isinstance(model, torch.fx.GraphModule):  # a pt2e graph has no train/eval switch
        model = model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},)
        if len(example_input) < 2:  # a batch of 1 would be specialized to the constant 1
            example_input = torch.cat([example_input, example_input])
    log = io.StringIO()
    try:
        # torch's log handler writes to the current sys.stderr: keep it until we know the outcome
        with contextlib.redirect_stderr(log):
            program = torch.export.export(model, (example_input,), dynamic_shapes=dynamic_shapes)
    except Exception as error:
        with contextlib.redirect_stderr(log):
            culprit = _find_unexportable_layer(model, example_input)
        if culprit is None:
            raise ExportError(f"torch.export could not capture {type(model).__name__}: {_first_line(error)}",
                              log.getvalue(), error) from None
        name, module, layer_error = culprit
        raise ExportError(
            f"layer {name!r} ({type(module).__name__}) cannot be exported: {_first_line(layer_error)}. "
            "Rewrite its forward with tensor operations only (no .item(), .numpy() or Python `if` on "
            "tensor values; torch.where or torch.cond instead), or keep it outside the exported model. "
            "(The exporter's own error and log are in the error's original_error and exporter_log.)",
            log.getvalue(), error,
        ) from None
    if log.getvalue():  # a successful export's messages are the reader's business: pass them on
        sys.stderr.write(log.getvalue())
    return program


# ----------------------------------------------------------------------------------------------
# ExecuTorch (XNNPACK) and ONNX Runtime
# ----------------------------------------------------------------------------------------------


def to_executorch(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """Export ``model`` and lower it to an ExecuTorch program delegated to XNNPACK; the ``.pte`` bytes.

    ``model`` is a float ``nn.Module`` or a pt2e-quantized graph from :func:`helpers.quantization.xnnpack_quantize`.
    The program has the static input shape of ``example_input`` (its batch size included): in
    ExecuTorch 1.5 a dynamic batch dimension lowered to XNNPACK accepted at most 15 examples here,
    whatever upper bound was declared, so :class:`ExecuTorchModel` feeds larger inputs in chunks.
    ``to_edge_transform_and_lower`` converts the graph to the Edge dialect and hands every
    subgraph XNNPACK supports to that backend; ``to_executorch`` serializes the program.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = export_program(model, example_input)
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


class ExecuTorchModel(nn.Module):
    """An ExecuTorch program (``.pte`` bytes) behind an ``nn.Module`` interface.

    Loads the program with ``executorch.runtime.Runtime`` (the same C++ runtime a phone app links)
    and calls its ``forward`` method. The program has a static batch size ``batch_size`` (that of
    the example it was exported with); a larger input is run chunk by chunk (the last chunk
    zero-padded, its padding dropped from the output). ``program`` keeps the bytes, so
    :func:`helpers.measure.size_bytes` is the file a device would ship. Loading drops
    :data:`helpers.noise.KNOWN_RUNTIME_LOG` lines only.
    """

    def __init__(self, program: bytes, batch_size: int = 1):
        super().__init__()
        from executorch.runtime import Runtime

        if not isinstance(program, (bytes, bytearray)) or not program:
            raise TypeError("program must be the non-empty bytes of an ExecuTorch .pte file")
        check_int("batch_size", batch_size, minimum=1)
        self.program, self.batch_size = bytes(program), batch_size
        with known_runtime_logs_dropped():
            self._program = Runtime.get().load_program(self.program)
            self._method = self._program.load_method("forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == self.batch_size:
            return self._method.execute([x.contiguous()])[0]
        outputs = []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start:start + self.batch_size]
            rows = len(chunk)
            if rows < self.batch_size:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch_size - rows, *chunk.shape[1:]))])
            outputs.append(self._method.execute([chunk.contiguous()])[0][:rows])
        return torch.cat(outputs)


def strip_debug_metadata(model_proto):
    """Remove the exporter's debugging metadata from an ONNX ``ModelProto`` in place, and return it.

    ``torch.onnx.export(dynamo=True)`` records on every node and value the Python stack trace and
    module path it came from, with absolute file names: the file's size then depends on where the
    repository is checked out. A runtime needs none of it; the graph and the weights are untouched.
    """
    graphs = [model_proto.graph]
    while graphs:
        graph = graphs.pop()
        for item in (*graph.node, *graph.value_info, *graph.input, *graph.output, *graph.initializer):
            del item.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            graphs.extend(attribute.g for attribute in node.attribute if attribute.HasField("g"))
    return model_proto


def to_onnx(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """Export ``model`` with ``torch.onnx.export(dynamo=True)`` (a dynamic batch dimension); the ONNX bytes.

    Debugging metadata is stripped (:func:`strip_debug_metadata`), so the bytes do not depend on
    the path of the checkout.
    """
    program = export_program(model, example_input, dynamic_batch=True)
    onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    onnx_program.optimize()
    return strip_debug_metadata(onnx_program.model_proto).SerializeToString()


class OnnxRuntimeModel(nn.Module):
    """An ONNX model (bytes) run by ONNX Runtime's CPU execution provider, as an ``nn.Module``.

    Uses as many intra-op threads as PyTorch (``torch.get_num_threads()`` at construction), so the
    two are timed on equal terms.
    """

    def __init__(self, program: bytes):
        super().__init__()
        import onnxruntime as ort

        if not isinstance(program, (bytes, bytearray)) or not program:
            raise TypeError("program must be the non-empty bytes of an ONNX model")
        self.program = bytes(program)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT's info lines are about graph rewrites
        self._session = ort.InferenceSession(self.program, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._session.run(None, {self._input: x.detach().numpy()})[0])


def onnx_quantize_static(program: bytes, calibration_batches) -> bytes:
    """ONNX Runtime's own int8 static quantization (QDQ format, per-channel weights) of ONNX bytes.

    ``calibration_batches`` is an iterable of input tensors run through the model to set the
    activation ranges (min-max), as ``onnxruntime.quantization.quantize_static`` expects.

    The weights use 7 bits (``reduce_range=True``, codes in [-64, 64]). On an x86 CPU without VNNI,
    ONNX Runtime multiplies uint8 activations by int8 weights with ``vpmaddubsw``, which adds each
    neighbouring pair of products in a 16-bit register that saturates at 32,767: with 8-bit weights
    a pair can reach 2 * 255 * 127 = 64,770, with 7-bit weights at most 2 * 255 * 64 = 32,640.
    With VNNI the products are added exactly either way, and 7 bits cost one bit of weight precision.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [b.detach().numpy() for b in calibration_batches]
    if not batches:
        raise ValueError("calibration_batches must yield at least one batch")

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self._items = iter([{name: b} for b in batches])

        def get_next(self):
            return next(self._items, None)

    import onnx
    name = onnx.load_from_string(program).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(program)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Reader(name), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)
        return target.read_bytes()
