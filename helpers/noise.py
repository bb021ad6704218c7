"""Every known, harmless message of the pinned stack, each filtered by its exact text, and why.

This is the one module of ``helpers`` that filters warnings or log records. Stored notebook outputs
must carry no stderr (tests/conftest.py says why), so each message below was checked to be noise
*in this book's CPU-only setting* and is dropped where it is emitted, by its exact text. Any other
message, including a new warning after an upgrade, still reaches the reader and fails nbval.

- :data:`KNOWN_NOISE`: log records dropped for the whole process (:func:`install`, run by
  ``import helpers``);
- :func:`transformers_import_notices_dropped`: the notices ``import transformers`` logs once;
- :func:`taught_torch_ao_warnings`: the deprecation notices of ``torch.ao.quantization`` that the
  quantization practice chapter shows once and explains;
- :func:`peft_notices_dropped`: a deprecation notice between PEFT and transformers;
- :func:`compile_notices_dropped`: the :data:`COMPILE_NOTICES` ``torch.compile`` raises while compiling
  an int8 graph or torchao's 4-bit weights;
- :func:`known_runtime_logs_dropped`: the lines ExecuTorch's XNNPACK backend prints on x86;
- :func:`int8_kernels`: not a filter but the one switch around int8 kernels (see its docstring).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings

import torch
from tqdm.std import TqdmWarning

#: logger name -> (message start, why it is harmless here)
KNOWN_NOISE: dict[str, tuple[str, str]] = {
    "torch.utils._pytree": (
        "<enum 'KernelPreference'> is an Enum subclass and is now natively supported",
        "torchao 0.18 registers one of its Enums as a pytree constant, which torch 2.14 now "
        "supports natively; it is a notice to torchao's developers, not to the book's reader.",
    ),
    "torch.utils.cpp_extension": (
        "No CUDA runtime is found, using CUDA_HOME=",
        "PyPI's torch wheel is a CUDA build; on a machine that has nvcc but no GPU, Inductor's "
        "CPU code generation logs this although it never uses CUDA.",
    ),
}


class _DropPrefixes(logging.Filter):
    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def install() -> None:
    """Attach one exact-prefix filter to each logger in :data:`KNOWN_NOISE` (idempotent)."""
    for name, (prefix, _why) in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) and f.prefixes == (prefix,) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefix))


#: The two torchao notices that ``import transformers`` triggers (it imports torchao's mx_formats
#: and float8 configs, which register Enums as pytree constants; torch 2.14 supports Enums natively
#: and tells torchao's developers so). They are addressed to torchao, not to the reader, and are
#: logged once, at import.
TRANSFORMERS_IMPORT_NOTICES = (
    "<enum 'KernelPreference'> is an Enum subclass and is now natively supported",
    "<enum 'ScaleCalculationMode'> is an Enum subclass and is now natively supported",
)


@contextlib.contextmanager
def transformers_import_notices_dropped():
    """Around ``import transformers`` / ``sentence_transformers``: drop :data:`TRANSFORMERS_IMPORT_NOTICES`.

    Also drops tqdm's "IProgress not found" warning: sentence-transformers imports ``tqdm.auto``,
    which in a Jupyter kernel without ipywidgets warns that it falls back to text bars; the book
    turns progress bars off, so the notice is moot.
    """
    pytree_logger = logging.getLogger("torch.utils._pytree")
    notices = _DropPrefixes(*TRANSFORMERS_IMPORT_NOTICES)
    pytree_logger.addFilter(notices)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
            yield
    finally:
        pytree_logger.removeFilter(notices)


#: The deprecation notice transformers (5.x) gives when PEFT (0.21) asks the wrapped model whether
#: gradient checkpointing is on: a renamed attribute inside the two libraries, addressed to PEFT's
#: developers; the book never turns gradient checkpointing on.
PEFT_NOTICE = "`is_gradient_checkpointing` is deprecated"


@contextlib.contextmanager
def peft_notices_dropped():
    """Inside the block (a PEFT call), drop the ``FutureWarning`` :data:`PEFT_NOTICE` only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(PEFT_NOTICE), category=FutureWarning)
        yield


#: Warnings of the pinned torch (2.14) that the book *teaches* instead of printing at every call
#: (chapters/04_practice/quantization.ipynb shows each one once): (category, message regex, why).
TORCH_AO_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated",
     "eager-mode torch.ao.quantization is deprecated in favour of torchao; the chapter says so"),
    (UserWarning, r"Please use quant_min and quant_max to specify the range for observers",
     "the x86 qconfig builds its observers with reduce_range=True; a notice to qconfig authors"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor",
     "quantized tensor dtypes (quint8/qint8) are deprecated; torch.ao's converted modules use them"),
)


@contextlib.contextmanager
def taught_torch_ao_warnings():
    """Silence exactly the :data:`TORCH_AO_WARNINGS` (which the chapter shows and explains) inside the block.

    Any other warning still reaches the reader. Use it around a ``torch.ao.quantization`` call only.
    """
    with warnings.catch_warnings():
        for category, message, _why in TORCH_AO_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


#: Warnings ``torch.compile`` raises while compiling the book's models, harmless for the result:
#: (message prefix, why). Dropped by :func:`compile_notices_dropped`, which
#: :func:`helpers.measure.compile_for_inference` wraps around its compiling calls.
COMPILE_NOTICES: tuple[tuple[str, str], ...] = (
    ("To copy construct from a tensor",
     "Inductor's mkldnn lowering of a pt2e int8 graph copy-constructs a weight zero-point with "
     "torch.tensor(t), which PyTorch flags: an internal style notice"),
    ("Int4OpaqueTensor does not implement _stable_hash_for_caching",
     "AOT autograd's cache warns once that torchao 0.18's 4-bit weight tensor has no stable hash, "
     "so the cache skips that graph; a notice to torchao's developers, the compiled model is the same"),
)


@contextlib.contextmanager
def compile_notices_dropped():
    """Inside the block (a ``torch.compile`` call), drop the ``UserWarning`` s of :data:`COMPILE_NOTICES` only."""
    with warnings.catch_warnings():
        for message, _why in COMPILE_NOTICES:
            warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning)
        yield


@contextlib.contextmanager
def int8_kernels():
    """Run int8 kernels inside the block without a determinism notice at each call.

    :func:`helpers.set_seed` asks PyTorch for deterministic kernels (``warn_only=True``); quantized
    CPU kernels are not on PyTorch's list of deterministic ones, so each call would print a C++
    notice. The check is off inside the block and restored after it (int8 kernels are
    deterministic on the CPU in practice; the notice is about PyTorch's list, not about them).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)


#: Log lines ExecuTorch 1.5's XNNPACK backend prints once per process when it first loads a
#: method. Its cpuinfo code reads the ARM "main ID register" (MIDR) files to tell big from little
#: cores on phones; on an x86 machine those files do not exist, and the thread count it then falls
#: back to is the right one. They are written to Python's ``sys.stderr`` (not the C file
#: descriptor), so a notebook would store them as stderr. (pattern, why it is harmless)
_MIDR_FILES = r"/sys/devices/(soc0/image_version|system/cpu/cpu0/regs/identification/midr_el1)$"
KNOWN_RUNTIME_LOG: tuple[tuple[str, str], ...] = (
    (r"\[cpuinfo_utils\.cpp:\d+\] Reading file " + _MIDR_FILES,
     "probing an ARM-only sysfs file"),
    (r"\[cpuinfo_utils\.cpp:\d+\] Failed to open midr file " + _MIDR_FILES,
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
