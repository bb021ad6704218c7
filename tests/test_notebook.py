"""Tests of helpers.notebook: short tracebacks, as a function and inside a real kernel."""
import sys

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers.notebook import short_traceback_lines

CELL = "<cell-1>"


def is_cell(filename):
    return ("Cell", "In[1]") if filename == CELL else None


def raise_from_a_cell():
    """Run 'cell' code that calls into torch, which raises: the traceback has library frames."""
    namespace = {"torch": torch}
    exec(compile("def f(x):\n    return x.view(-1, 7)\n\nf(torch.zeros(10))\n", CELL, "exec"), namespace)


def test_short_traceback_keeps_the_cells_lines_and_the_message():
    with pytest.raises(RuntimeError) as info:
        raise_from_a_cell()
    lines = short_traceback_lines(info.type, info.value, info.tb, is_cell)
    assert lines[-1] == f"RuntimeError: {info.value}"
    assert lines[:-1] == ["Cell In[1], line 4", "Cell In[1], line 2, in f"]  # no linecache: no code lines
    assert not any("/" in line for line in lines[:-1])  # no file of this machine


def test_short_traceback_of_an_exception_without_a_message():
    try:
        raise KeyError
    except KeyError:
        etype, value, tb = sys.exc_info()
    assert short_traceback_lines(etype, value, tb, lambda name: None) == ["KeyError"]


def run_notebook(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s, metadata={"tags": ["raises-exception"]}) for s in sources]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    return [[o for o in cell.outputs if o.output_type == "error"] for cell in nb.cells]


def test_a_kernel_that_imported_helpers_stores_short_tracebacks():
    setup = "import torch\nimport helpers\n\ndef f(x):\n    return helpers.CNN()(x)"
    errors = run_notebook(setup, "f(torch.randn(1, 1, 32, 32))",
                          "helpers.short_tracebacks(False)\nf(torch.randn(1, 1, 32, 32))")
    (short,), (full,) = errors[1], errors[2]
    assert short.traceback == ["Cell In[2], line 1", "----> f(torch.randn(1, 1, 32, 32))",
                               "Cell In[1], line 5, in f", "----> return helpers.CNN()(x)",
                               "ValueError: x must have shape (N, 1, 28, 28), got (1, 1, 32, 32)"]
    assert len(full.traceback) > len(short.traceback) and "models.py" in "".join(full.traceback)


def test_a_failing_cell_still_fails_the_run():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import helpers\nraise ValueError('bad argument')")]
    with pytest.raises(CellExecutionError, match="bad argument"):
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
