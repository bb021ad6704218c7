"""helpers.noise: only the exact known messages are dropped, anything else still reaches stderr."""
import io
import logging
import subprocess
import sys
import warnings

import pytest
import torch

import helpers  # noqa: F401 - installs the filters
from helpers.noise import (
    COMPILE_NOTICES,
    KNOWN_NOISE,
    PEFT_NOTICE,
    TORCH_AO_WARNINGS,
    compile_notices_dropped,
    install,
    int8_kernels,
    known_runtime_logs_dropped,
    peft_notices_dropped,
    taught_torch_ao_warnings,
)


def test_known_messages_are_dropped_and_others_pass(caplog):
    install()  # idempotent
    for name, (prefix, _why) in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        assert sum(type(f).__name__ == "_DropPrefixes" for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=name):
            caplog.clear()
            logger.warning(prefix + " something")
            logger.warning("a different, real warning")
        assert [r.getMessage() for r in caplog.records] == ["a different, real warning"]


def test_importing_torchao_logs_nothing_on_stderr():
    out = subprocess.run([sys.executable, "-c", "import helpers, torchao"], capture_output=True,
                         text=True, check=True)
    assert out.stderr == ""


def test_taught_torch_ao_warnings_drop_exactly_those():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with taught_torch_ao_warnings():
            for category, pattern, _why in TORCH_AO_WARNINGS:
                warnings.warn(pattern.replace("\\", ""), category)
            warnings.warn("torch.ao.quantization is fine", UserWarning)
    assert [str(w.message) for w in caught] == ["torch.ao.quantization is fine"]


def test_peft_notice_dropped_only_inside_the_block_and_only_as_futurewarning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with peft_notices_dropped():
            warnings.warn(PEFT_NOTICE + " and will be removed", FutureWarning)
            warnings.warn(PEFT_NOTICE, UserWarning)
        warnings.warn(PEFT_NOTICE, FutureWarning)
    assert [(w.category, str(w.message)) for w in caught] == [(UserWarning, PEFT_NOTICE),
                                                              (FutureWarning, PEFT_NOTICE)]


@pytest.mark.parametrize("notice", [
    "To copy construct from a tensor, it is recommended to use sourceTensor.detach().clone()",
    "Int4OpaqueTensor does not implement _stable_hash_for_caching. For PT2-compatible tensor subclasses, ...",
])
def test_compile_notices_dropped_only_inside_the_block(notice):
    assert any(notice.startswith(message) for message, _why in COMPILE_NOTICES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with compile_notices_dropped():
            warnings.warn(notice, UserWarning)
            warnings.warn("another notice", UserWarning)
            warnings.warn(notice, FutureWarning)
        warnings.warn(notice, UserWarning)
    assert [(w.category, str(w.message)) for w in caught] == [
        (UserWarning, "another notice"), (FutureWarning, notice), (UserWarning, notice)]


def test_int8_kernels_switches_determinism_off_and_restores_it():
    helpers.set_seed(0)  # deterministic, warn-only
    with int8_kernels():
        assert not torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        with int8_kernels():
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert not torch.are_deterministic_algorithms_enabled()


def test_known_runtime_logs_are_dropped_and_others_pass(monkeypatch):
    sink = io.StringIO()
    monkeypatch.setattr(sys, "stderr", sink)
    with known_runtime_logs_dropped():
        sys.stderr.write("[cpuinfo_utils.cpp:87] Failed to open midr file /sys/devices/soc0/image_version\n")
        sys.stderr.write("[cpuinfo_utils.cpp:125] CPU info and manual query on # of cpus dont match.\n")
        sys.stderr.write("[method.cpp:1243] Error resizing tensor at input 0\n")
    assert sink.getvalue() == "[method.cpp:1243] Error resizing tensor at input 0\n"
