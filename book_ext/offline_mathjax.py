"""Serve MathJax from the book itself instead of a CDN, so equations render offline.

Sphinx points every page at MathJax 3 on a CDN by default. This book is read offline (and its
browser test, tests/browser/, runs without internet), so this extension copies MathJax 3 from the
pinned PyPI package ``django-static-mathjax`` (a plain copy of MathJax's ``es5`` build; its
import name is ``mathjax``; it needs no Django) into ``_static/mathjax/`` of the HTML output and
points ``mathjax_path`` there. It is the same component the CDN default loads
(``tex-mml-chtml.js``), plus the files that component fetches lazily: TeX extensions
(``\\require``, ``\\boldsymbol`` ...), the CHTML fonts, the menu, and the accessibility explorer.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import mathjax  # the django-static-mathjax package

ES5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
ENTRY = "tex-mml-chtml.js"  # what Sphinx's default CDN URL loads
# Lazily loaded by ENTRY: keep these; leave out the other bundles and the SVG output (not used).
KEEP_AT_TOP = {ENTRY, "input", "output", "a11y", "ui", "sre", "adaptors"}
TARGET = "mathjax"  # under _static/


def _ignore(directory: str, names: list[str]) -> set[str]:
    here = Path(directory)
    if here == ES5:
        return {n for n in names if n not in KEEP_AT_TOP}
    if here == ES5 / "output":
        return {n for n in names if n.startswith("svg")}
    return set()


def _set_path(app, config) -> None:
    # A relative mathjax_path is resolved against the _static/ folder of the built pages.
    config.mathjax_path = f"{TARGET}/{ENTRY}"


def _copy(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    shutil.copytree(ES5, Path(app.outdir) / "_static" / TARGET, ignore=_ignore, dirs_exist_ok=True)


def setup(app):
    if not (ES5 / ENTRY).is_file():
        raise RuntimeError(f"MathJax not found at {ES5 / ENTRY}: is django-static-mathjax installed?")
    app.connect("config-inited", _set_path)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
