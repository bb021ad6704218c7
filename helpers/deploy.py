"""Fitting a model to a device budget and running it in a device runtime (chapters/05_applications/deployment.ipynb).

Three pieces, in the order the chapter uses them:

- **The budget.** :class:`Budget` states what the device allows relative to the fp32 baseline
  (storage ratio, batch-1 latency ratio, accuracy drop); :func:`check_budget` compares a candidate
  with the baseline, constraint by constraint, and says which part is missed and by how much.
- **The pipeline.** :func:`budget_pipeline` chains the book's own techniques: distillation into a
  narrower :class:`helpers.CNN` (Hinton et al., 2015; chapters/03_algorithms/distillation.ipynb),
  structured channel pruning that really shrinks the tensors (:func:`helpers.pruning.prune_channels`,
  chapters/03_algorithms/pruning.ipynb) with a short distillation fine-tune, and int8 post-training
  quantization through PyTorch 2 export (pt2e, torchao's ``X86InductorQuantizer`` as in
  chapters/04_practice/quantization.ipynb). It returns one :class:`PipelineStep` per stage.
- **The runtimes.** :func:`export_program` wraps ``torch.export`` and, when a layer cannot be
  exported, names that layer (:class:`ExportError`). :func:`to_executorch` lowers a model (fp32, or
  int8 with ExecuTorch's ``XNNPACKQuantizer``) to an ExecuTorch ``.pte`` program delegated to
  XNNPACK, the runtime PyTorch ships for phones and microcontrollers; :class:`ExecuTorchModel` runs
  it. :func:`to_onnx` / :class:`OnnxRuntimeModel` do the same for ONNX Runtime, and
  :func:`onnx_quantize_static` is ONNX Runtime's own int8 static quantization. The runtime
  wrappers are ``nn.Module``s, so :func:`helpers.evaluate` and :func:`helpers.latencies` time them
  beside PyTorch models in one run.
"""
from __future__ import annotations

import contextlib
import copy
import io
import re
import sys
import warnings
from dataclasses import dataclass, field
from operator import attrgetter

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------
# The budget
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What a device allows, relative to the fp32 baseline.

    - ``max_size_ratio``: candidate storage / baseline storage, in (0, 1] (0.1 = a tenth).
    - ``max_latency_ratio``: candidate batch-1 latency / baseline batch-1 latency, in (0, 1].
    - ``max_accuracy_drop``: baseline accuracy minus candidate accuracy, a fraction in [0, 1)
      (0.01 = one percentage point).

    Invalid values raise ``ValueError`` naming the field and its allowed range.
    """

    max_size_ratio: float = 0.1
    max_latency_ratio: float = 1.0
    max_accuracy_drop: float = 0.01

    def __post_init__(self):
        for name in ("max_size_ratio", "max_latency_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
        value = self.max_accuracy_drop
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"max_accuracy_drop must be a fraction in [0, 1) (0.01 = one point), got {value!r}")


@dataclass(frozen=True)
class Measurement:
    """What the budget is checked on: test accuracy (fraction), storage (bytes), batch-1 latency (ms)."""

    accuracy: float
    size_bytes: int
    latency_ms: float

    def __post_init__(self):
        if not 0 <= self.accuracy <= 1:
            raise ValueError(f"accuracy must be a fraction in [0, 1], got {self.accuracy!r}")
        if not self.size_bytes > 0:
            raise ValueError(f"size_bytes must be positive, got {self.size_bytes!r}")
        if not self.latency_ms > 0:
            raise ValueError(f"latency_ms must be positive, got {self.latency_ms!r}")


class BudgetMissedError(ValueError):
    """Raised by :meth:`BudgetReport.raise_if_missed`; the message lists every missed constraint."""


@dataclass(frozen=True)
class Constraint:
    """One line of a budget check. ``margin`` is how far inside the limit the value is, in the
    constraint's unit (bytes, ms, accuracy points as a fraction); negative when missed."""

    name: str
    limit: float
    value: float
    margin: float
    unit: str

    @property
    def met(self) -> bool:
        return self.margin >= 0

    def __str__(self) -> str:
        fmt = {"bytes": lambda v: f"{v / 1024:.1f} KiB", "ms": lambda v: f"{v:.3f} ms",
               "points": lambda v: f"{100 * v:.1f} pt"}[self.unit]
        verdict = "met" if self.met else "MISSED"
        side = "under the limit by" if self.met else "over the limit by"
        return f"{self.name:<9} {verdict:<6} {fmt(self.value)} vs limit {fmt(self.limit)} ({side} {fmt(abs(self.margin))})"


@dataclass(frozen=True)
class BudgetReport:
    """The result of :func:`check_budget`: one :class:`Constraint` per budget field."""

    constraints: tuple[Constraint, ...]

    @property
    def met(self) -> bool:
        return all(c.met for c in self.constraints)

    @property
    def missed(self) -> tuple[Constraint, ...]:
        return tuple(c for c in self.constraints if not c.met)

    def __getitem__(self, name: str) -> Constraint:
        for constraint in self.constraints:
            if constraint.name == name:
                return constraint
        raise KeyError(f"no constraint named {name!r}; have {[c.name for c in self.constraints]}")

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.constraints)

    def raise_if_missed(self) -> None:
        """Raise :class:`BudgetMissedError` naming each missed constraint and by how much."""
        if not self.met:
            raise BudgetMissedError("the budget is missed: " + "; ".join(str(c) for c in self.missed))


def check_budget(budget: Budget, baseline: Measurement, candidate: Measurement) -> BudgetReport:
    """Check ``candidate`` against ``budget`` relative to ``baseline``, constraint by constraint.

    storage: ``candidate.size_bytes <= max_size_ratio * baseline.size_bytes``;
    latency: ``candidate.latency_ms <= max_latency_ratio * baseline.latency_ms``;
    accuracy: ``candidate.accuracy >= baseline.accuracy - max_accuracy_drop``.
    Never raises for a missed budget (call :meth:`BudgetReport.raise_if_missed` for that); raises
    ``TypeError`` if the arguments are not a :class:`Budget` and two :class:`Measurement`.
    """
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a Budget, got {type(budget).__name__}")
    for name, value in (("baseline", baseline), ("candidate", candidate)):
        if not isinstance(value, Measurement):
            raise TypeError(f"{name} must be a Measurement, got {type(value).__name__}")
    size_limit = budget.max_size_ratio * baseline.size_bytes
    latency_limit = budget.max_latency_ratio * baseline.latency_ms
    accuracy_limit = baseline.accuracy - budget.max_accuracy_drop
    return BudgetReport((
        Constraint("storage", size_limit, candidate.size_bytes, size_limit - candidate.size_bytes, "bytes"),
        Constraint("latency", latency_limit, candidate.latency_ms, latency_limit - candidate.latency_ms, "ms"),
        Constraint("accuracy", accuracy_limit, candidate.accuracy, candidate.accuracy - accuracy_limit, "points"),
    ))


# ----------------------------------------------------------------------------------------------
# Storage of any model the book builds
# ----------------------------------------------------------------------------------------------


def _graph_tensors(model: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    used = sorted({node.target for node in model.graph.nodes if node.op == "get_attr"})
    tensors = {name: attrgetter(name)(model) for name in used}
    return {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor)}


def size_bytes(model) -> int:
    """Bytes to store ``model``: ``torch.save`` of the tensors it needs.

    For an ``nn.Module`` that is its ``state_dict`` (:func:`helpers.model_size_bytes`); for a pt2e
    graph (``torch.fx.GraphModule`` from ``convert_pt2e``) it is the constants the graph reads
    (int8 weights, their scales), as chapters/04_practice/quantization.ipynb measures it; for an
    ExecuTorch or ONNX Runtime model, the bytes of the program file.
    """
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model stores what it wraps
    if isinstance(model, (ExecuTorchModel, OnnxRuntimeModel)):
        return len(model.program)
    if isinstance(model, torch.fx.GraphModule):
        buffer = io.BytesIO()
        torch.save(_graph_tensors(model), buffer)
        return buffer.getbuffer().nbytes
    if isinstance(model, nn.Module):
        from helpers.measure import model_size_bytes
        return model_size_bytes(model)
    raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


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
# Known native log lines of the device runtime
# ----------------------------------------------------------------------------------------------

#: Log lines ExecuTorch 1.5's XNNPACK backend prints once per process when it first loads a
#: method. Its cpuinfo code reads the ARM "main ID register" (MIDR) files to tell big from little
#: cores on phones; on an x86 machine those files do not exist, and the thread count it then falls
#: back to is the right one. They are written to Python's ``sys.stderr`` (not the C file
#: descriptor), so a notebook would store them as stderr. (pattern, why it is harmless)
KNOWN_RUNTIME_LOG: tuple[tuple[str, str], ...] = (
    (r"\[cpuinfo_utils\.cpp:\d+\] Reading file /sys/devices/(soc0/image_version|system/cpu/cpu0/regs/identification/midr_el1)$",
     "probing an ARM-only sysfs file"),
    (r"\[cpuinfo_utils\.cpp:\d+\] Failed to open midr file /sys/devices/(soc0/image_version|system/cpu/cpu0/regs/identification/midr_el1)$",
     "the ARM-only file is absent on x86"),
    (r"\[cpuinfo_utils\.cpp:\d+\] CPU info and manual query on # of cpus dont match\.$",
     "the ARM core-type query found no ARM cores; the CPU count from the OS is used"),
)


@contextlib.contextmanager
def known_runtime_logs_dropped():
    """Inside the block, drop exactly the :data:`KNOWN_RUNTIME_LOG` lines written to ``sys.stderr``.

    Everything else written to ``sys.stderr`` in the block is passed on, line by line, after the
    block (also when the block raises), so a new or different runtime message still reaches the reader.
    """
    captured = io.StringIO()
    patterns = [re.compile(pattern) for pattern, _why in KNOWN_RUNTIME_LOG]
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        kept = [line for line in captured.getvalue().splitlines(keepends=True)
                if not any(p.match(line.rstrip("\n")) for p in patterns)]
        if kept:
            sys.stderr.write("".join(kept))


# ----------------------------------------------------------------------------------------------
# ExecuTorch (XNNPACK) and ONNX Runtime
# ----------------------------------------------------------------------------------------------


def xnnpack_quantize(model: nn.Module, calibration_batches, example_input: torch.Tensor):
    """int8 pt2e quantization for XNNPACK: per-channel symmetric int8 weights, int8 activations.

    ExecuTorch's ``XNNPACKQuantizer`` annotates the exported graph, the observers see
    ``calibration_batches`` (an iterable of input tensors), and ``convert_pt2e`` returns a graph
    with quantize/dequantize pairs that XNNPACK's partitioner turns into int8 kernels.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return _quantize_pt2e(model, quantizer, calibration_batches, example_input)


def _quantize_pt2e(model: nn.Module, quantizer, calibration_batches, example_input: torch.Tensor):
    """The pt2e recipe for any backend quantizer: export (dynamic batch), ``prepare_pt2e``, run the
    observers on ``calibration_batches`` (input tensors), ``convert_pt2e``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    exported = export_program(copy.deepcopy(model), example_input, dynamic_batch=True).module()
    prepared = prepare_pt2e(exported, quantizer)
    seen = 0
    with torch.no_grad():
        for batch in calibration_batches:
            prepared(batch)
            seen += 1
    if seen == 0:
        raise ValueError("calibration_batches must yield at least one batch")
    return convert_pt2e(prepared)


def to_executorch(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """Export ``model`` and lower it to an ExecuTorch program delegated to XNNPACK; the ``.pte`` bytes.

    ``model`` is a float ``nn.Module`` or a pt2e-quantized graph from :func:`xnnpack_quantize`.
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
    :func:`size_bytes` is the file a device would ship. Loading drops :data:`KNOWN_RUNTIME_LOG` lines only.
    """

    def __init__(self, program: bytes, batch_size: int = 1):
        super().__init__()
        from executorch.runtime import Runtime

        if not isinstance(program, (bytes, bytearray)) or not program:
            raise TypeError("program must be the non-empty bytes of an ExecuTorch .pte file")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (the exported batch size), got {batch_size!r}")
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
    """
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
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
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return target.read_bytes()


# ----------------------------------------------------------------------------------------------
# The pipeline: distill -> prune -> quantize
# ----------------------------------------------------------------------------------------------


@dataclass
class PipelineStep:
    """One stage of :func:`budget_pipeline`: its name, the model, test accuracy and storage bytes."""

    name: str
    model: nn.Module
    accuracy: float
    size_bytes: int
    notes: dict = field(default_factory=dict)


def pt2e_quantize(model: nn.Module, calibration_batches, example_input: torch.Tensor):
    """int8 pt2e quantization for this CPU (torchao's ``X86InductorQuantizer``), as chapters/04_practice/quantization.ipynb does.

    Returns the converted graph (runs in eager PyTorch, and with real int8 kernels after
    :func:`helpers.compile_for_inference`).
    """
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    quantized = _quantize_pt2e(model, quantizer, calibration_batches, example_input)
    allow_exported_model_train_eval(quantized)  # so evaluate() may call .eval() on it
    return quantized


def compile_for_batches(model, *example_inputs):
    """:func:`helpers.compile_for_inference` warmed on every batch shape it will be timed on.

    Compiling is lazy: a new batch size compiles again on its first call, and it must happen
    inside Inductor's freezing setting, or the int8 pattern fusions of a pt2e graph are not applied.
    So each of ``example_inputs`` is run once here, inside the setting, each batch size getting its
    own static graph. Inductor's mkldnn lowering
    copy-constructs a weight zero-point with ``torch.tensor(t)``, which PyTorch flags with a
    ``UserWarning``: an internal style notice, harmless for the result, filtered for that call only.
    """
    import torch._inductor.config as inductor_config

    if not example_inputs:
        raise ValueError("give at least one example input")
    if isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model.eval()
    # dynamic=False: one static graph per batch size. A dynamic batch dimension trips an Inductor
    # stride check in the int8 convolution lowering (torch 2.14) on the second batch size.
    compiled = torch.compile(model, dynamic=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        with inductor_config.patch(freezing=True), torch.inference_mode():
            for example in example_inputs:
                compiled(example)
    return compiled


def budget_pipeline(train_set, test_set, *, seed: int = 0, teacher: nn.Module | None = None,
                    student_channels: tuple[int, int] = (8, 16), keep_channels: int = 6,
                    num_epochs: int = 12, finetune_epochs: int = 3, T: float = 4.0, alpha: float = 0.9,
                    batch_size: int = 64, calibration_batches: int = 16) -> list[PipelineStep]:
    """Baseline -> distilled student -> channel-pruned student -> int8: one :class:`PipelineStep` each.

    Arguments: ``train_set``/``test_set`` are datasets of ``(N, 1, 28, 28)`` digits (``load_mnist()``);
    ``seed`` seeds every training run and loader, so two calls with the same seed give the same
    models (on the same machine and thread count); ``teacher`` is the fp32 baseline (trained with
    :func:`helpers.train_baseline` if ``None``).

    1. ``"fp32 baseline"``: the teacher, :class:`helpers.CNN` with 16 and 32 channels.
    2. ``"distilled"``: ``CNN(student_channels)`` trained ``num_epochs`` with :func:`helpers.distillation.distill`
       (temperature ``T``, soft-target weight ``alpha``).
    3. ``"pruned"``: conv2 of the student cut to its ``keep_channels`` filters of largest L1 norm with
       :func:`helpers.pruning.prune_channels` (conv2 and fc1 shrink), then ``finetune_epochs`` of
       distillation from the same teacher to recover.
    4. ``"int8"``: :func:`pt2e_quantize` of the pruned model, calibrated on ``calibration_batches``
       training batches.

    ``accuracy`` is on ``test_set``; ``size_bytes`` is :func:`size_bytes`. Latency is not measured
    here: time the models of all steps together in one run (:func:`helpers.latencies`).
    """
    from helpers.data import make_loader
    from helpers.distillation import distill
    from helpers.models import CNN
    from helpers.pruning import prune_channels
    from helpers.training import evaluate, set_seed, train_baseline

    if not isinstance(keep_channels, int) or not 1 <= keep_channels <= student_channels[1]:
        raise ValueError(f"keep_channels must be an integer in [1, {student_channels[1]}] "
                         f"(the student's conv2 channels), got {keep_channels!r}")
    if not isinstance(calibration_batches, int) or calibration_batches < 1:
        raise ValueError(f"calibration_batches must be a positive integer, got {calibration_batches!r}")
    test_loader = make_loader(test_set, batch_size=1000)
    if teacher is None:
        teacher, _ = train_baseline(make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed), seed=seed)
    teacher.eval()
    steps = [PipelineStep("fp32 baseline", teacher, evaluate(teacher, test_loader).accuracy, size_bytes(teacher))]

    set_seed(seed)
    student = CNN(channels=student_channels)
    distill(student, teacher, make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed),
            num_epochs=num_epochs, T=T, alpha=alpha)
    student.eval()
    steps.append(PipelineStep("distilled", student, evaluate(student, test_loader).accuracy, size_bytes(student)))

    pruned, keep = prune_channels(student, "conv2", "fc1", keep=torch.topk(
        student.conv2.weight.detach().abs().sum(dim=(1, 2, 3)), keep_channels).indices)
    before = evaluate(pruned, test_loader).accuracy
    set_seed(seed)
    distill(pruned, teacher, make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed + 1),
            num_epochs=finetune_epochs, T=T, alpha=alpha)
    pruned.eval()
    steps.append(PipelineStep("pruned", pruned, evaluate(pruned, test_loader).accuracy, size_bytes(pruned),
                              notes={"accuracy_before_finetune": before, "kept_channels": keep.tolist()}))

    calibration_loader = make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed)
    batches = [x for _, (x, _) in zip(range(calibration_batches), calibration_loader)]
    int8 = pt2e_quantize(pruned, batches, batches[0])
    steps.append(PipelineStep("int8", int8, evaluate(int8, test_loader).accuracy, size_bytes(int8)))
    return steps
