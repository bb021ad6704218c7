"""Known, harmless log lines of the pinned stack, filtered by their exact text.

Stored notebook outputs must carry no stderr (tests/conftest.py says why), so each message below
was checked to be noise *on this book's CPU-only setting* and is dropped where it is logged. Any
other message, including a new warning after an upgrade, still reaches the reader and fails nbval.
Installed by ``import helpers``.
"""
from __future__ import annotations

import logging

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


class _DropKnownNoise(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def install() -> None:
    """Attach one exact-prefix filter to each logger in :data:`KNOWN_NOISE` (idempotent)."""
    for name, (prefix, _why) in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropKnownNoise(prefix))
