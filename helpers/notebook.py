"""What a reader sees when a cell fails: the reader's own lines and the message, nothing else.

A cell that calls into PyTorch or ``helpers`` and fails prints, by default, every frame of the
call: ``torch/nn/modules/module.py``, the helper's argument check, each with the absolute path of
the machine that ran it. The book's chapters show mistakes on purpose (the source document's code,
bad arguments), and what matters there is the one message at the end. :func:`short_tracebacks`
makes IPython print only the frames that belong to notebook cells (``Cell In[5], line 3``), then
``ValueError: the message``. It is switched on when ``helpers`` is imported inside IPython, for
every exception a cell raises; ``short_tracebacks(False)`` brings back IPython's full traceback
(``%tb`` also prints the last one in full).

Outside IPython (scripts, pytest) nothing changes.
"""
from __future__ import annotations

import traceback

__all__ = ["short_traceback_lines", "short_tracebacks"]


def short_traceback_lines(etype: type[BaseException], value: BaseException, tb,
                          is_cell) -> list[str]:
    """The lines of a short traceback: each frame for which ``is_cell(filename)`` gives a label
    such as ``("Cell", "In[5]")``, with its line of code, then ``"ValueError: message"``.

    Frames of library files (``is_cell`` returns ``None``) are left out, so no path of the machine
    appears. Chained exceptions are not followed: the message of the one raised is what matters.
    """
    lines = []
    for frame in traceback.extract_tb(tb):
        label = is_cell(frame.filename)
        if label is None:
            continue
        where = f"{label[0]} {label[1]}, line {frame.lineno}"
        if frame.name != "<module>":
            where += f", in {frame.name}"
        lines.append(where)
        if frame.line:
            lines.append(f"----> {frame.line.strip()}")
    message = str(value)
    lines.append(f"{etype.__name__}: {message}" if message else etype.__name__)
    return lines


def short_tracebacks(on: bool = True) -> None:
    """Show short tracebacks in this IPython session (``on=False``: IPython's full ones again).

    Does nothing outside IPython.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # no IPython installed: a plain interpreter
        return
    shell = get_ipython()
    if shell is None:
        return
    if not on:
        shell.set_custom_exc((), None)
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        lines = short_traceback_lines(etype, value, tb, shell.compile.format_code_name)
        shell._showtraceback(etype, value, lines)  # displays it and records it as the cell's error

    shell.set_custom_exc((Exception,), handler)
