"""One headless Chromium for all browser tests of a run (see rendered_book.py), with a desktop-sized
context (``browser_context``) and a phone-sized one (``phone_context``)."""
import pytest

import rendered_book


@pytest.fixture(scope="session")
def browser():
    with rendered_book.launch_browser() as browser_:
        yield browser_


@pytest.fixture(scope="session")
def browser_context(browser):
    context = rendered_book.new_context(browser)
    yield context
    context.close()


@pytest.fixture(scope="session")
def phone_context(browser):
    context = rendered_book.new_context(browser, rendered_book.PHONE)
    yield context
    context.close()
