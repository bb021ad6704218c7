"""One headless Chromium for all browser tests of a run (see rendered_book.py)."""
import pytest

import rendered_book


@pytest.fixture(scope="session")
def browser_context():
    with rendered_book.open_browser() as context:
        yield context
