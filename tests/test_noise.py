"""helpers.noise: only the exact known messages are dropped, anything else still reaches stderr."""
import logging

import helpers  # noqa: F401 - installs the filters
from helpers.noise import KNOWN_NOISE, install


def test_known_messages_are_dropped_and_others_pass(caplog):
    install()  # idempotent
    for name, (prefix, _why) in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        assert sum(type(f).__name__ == "_DropKnownNoise" for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=name):
            caplog.clear()
            logger.warning(prefix + " something")
            logger.warning("a different, real warning")
        assert [r.getMessage() for r in caplog.records] == ["a different, real warning"]


def test_importing_torchao_logs_nothing_on_stderr():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import helpers, torchao"], capture_output=True,
                         text=True, check=True)
    assert out.stderr == ""
