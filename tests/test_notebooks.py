"""Hygiene of the committed notebooks and the table of contents (cheap, no execution).

nbval checks that each notebook reproduces its stored outputs; these tests check that the stored
outputs are worth reproducing: one fresh top-to-bottom run, no stored errors except in cells that
must raise, no stderr (see conftest.py), and every TOC entry present.
"""
import base64
import json
import re
import struct
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# an absolute path: a home or temporary directory, an installed package, or any /dir/.../file.py
MACHINE_PATH = re.compile(r"/root/|/home/\w+/|/tmp/|site-packages/|(?<![\w.])/\w[\w.-]*/[\w./-]*\.py\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
NOTEBOOKS = sorted(p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def toc_files():
    def walk(entries):
        for entry in entries:
            if "file" in entry:
                yield entry["file"]
            yield from walk(entry.get("sections", []))
            yield from walk(entry.get("chapters", []))
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    yield toc["root"]
    for part in toc.get("parts", []):
        yield from walk(part["chapters"])


def test_every_toc_entry_exists_exactly_once():
    for name in toc_files():
        found = [p for p in (ROOT / name).parent.glob(Path(name).name + ".*")
                 if p.suffix in {".md", ".ipynb"}]
        assert len(found) == 1, f"{name}: expected one .md or .ipynb, found {found}"


def test_every_notebook_is_in_the_toc():
    listed = {str(Path(f)) for f in toc_files()}
    for nb in NOTEBOOKS:
        assert str(nb.relative_to(ROOT).with_suffix("")) in listed, f"{nb} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_stored_outputs_are_one_clean_fresh_run(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), f"execution counts {counts} are not 1..n"
    for index, cell in enumerate(code, start=1):
        tags = cell.get("metadata", {}).get("tags", [])
        source = "".join(cell["source"])
        raises = "raises-exception" in tags
        # nbval reads its cell tags (raises-exception, nbval-ignore-output); a "# NBVAL_..." comment
        # would only show the reader the test machinery
        assert "NBVAL_" not in source, (
            f"code cell {index}: use nbval's cell tags (raises-exception, nbval-ignore-output), "
            "not # NBVAL_ comments")
        errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
        assert bool(errors) == raises, f"code cell {index}: stored error without the tag, or a " \
                                       "cell that must raise did not"
        for out in cell["outputs"]:
            assert out.get("name") != "stderr", f"code cell {index} stores stderr: {out.get('text')!r:.200}"
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            text += "\n".join(out.get("traceback", []))
            assert str(ROOT) not in text and not MACHINE_PATH.search(text), \
                f"code cell {index} output shows a path of this machine"
        for error in errors:  # helpers.notebook.short_tracebacks: the cells' own lines, then the message
            lines = ANSI.sub("", "\n".join(error["traceback"])).strip().splitlines()
            assert len(lines) <= 7 and lines[-1] == f"{error['ename']}: {error['evalue']}", (
                f"code cell {index} stores a {len(lines)}-line traceback; import helpers before "
                "the cell so that it shows the cell's lines and the message")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_figure_is_high_density(path):
    """A stored figure is a PNG of twice the pixels it is shown at (helpers.plotting.INLINE_FORMAT),
    so it is sharp on a high-density screen."""
    nb = json.loads(path.read_text())
    for index, cell in enumerate((c for c in nb["cells"] if c["cell_type"] == "code"), start=1):
        for output in cell.get("outputs", []):
            if "image/png" not in output.get("data", {}):
                continue
            assert "image/svg+xml" not in output["data"]
            png = base64.b64decode(output["data"]["image/png"])
            pixels = struct.unpack(">II", png[16:24])  # width and height in the PNG's IHDR chunk
            shown = output.get("metadata", {}).get("image/png", {})
            # IPython halves the pixel size, rounding down, for the size to show it at
            assert shown and (pixels[0] // 2, pixels[1] // 2) == (shown["width"], shown["height"]), (
                f"code cell {index}: a figure of {pixels} pixels shown at {shown or 'its pixel size'}; "
                "import helpers before plotting, so that figures are stored at twice their pixels")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_follows_the_house_layout(path):
    nb = json.loads(path.read_text())
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    # the first code cell is the set-up cell (tests/test_bootstrap.py), which installs only on Colab
    code = "\n".join(["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"][1:])
    # the source's section number, or a chapter beyond the source (the _toc.yml part of that name)
    title = nb["cells"][0]["source"][0]
    assert nb["cells"][0]["cell_type"] == "markdown"
    assert title.startswith("# 3.2.") or title.startswith("# Beyond the source: "), title
    # near its top, how long the chapter takes to run (measured by `make execute`; the book's limit is
    # 3 minutes on 2 cores, and a chapter should stay well under it)
    running = re.search(r"\*\*Running time\*\*: about (\d+) seconds on two CPU cores",
                        "".join(nb["cells"][0]["source"]))
    assert running and int(running[1]) <= 180, "the first cell says **Running time**: about N seconds ..."
    for heading in ("What you will learn", "Prerequisites", "Summary", "Exercises"):
        assert heading in markdown, (f"missing section {heading!r} (the book's style rule: every "
                                     "chapter has What you will learn, Prerequisites, Summary, Exercises)")
    assert not re.search(r"\bpip\b", code), "never install from inside a chapter, outside the set-up cell"
    # the prose speaks to a reader: a checked claim is marked "(checked)" (chapters/index.md says how),
    # not in the test harness's words
    harness = re.search(r"[^.\n]*\b(assert(s|ed)?|nbval)\b[^.\n]*", markdown, re.IGNORECASE)
    assert not harness, f"prose in the test harness's words: {harness[0].strip()!r}; say (checked)"
    assert "import *" not in code
    assert "filterwarnings(\"ignore\")" not in code and "filterwarnings('ignore')" not in code


def test_every_sanitize_rule_is_parsed_by_nbval():
    """nbval silently skips a rule it cannot parse (say, an editor stripped a trailing space)."""
    from nbval.plugin import get_sanitize_patterns

    text = (ROOT / "tests" / "nbval_sanitize.cfg").read_text()
    rules = get_sanitize_patterns(text)
    assert rules and len(rules) == len(re.findall(r"^regex: ", text, flags=re.MULTILINE))
    assert dict(rules)["[ ]{2,}"] == " ", "the column-padding rule must replace with exactly one space"

    def sanitize(s):
        for regex, replace in rules:
            s = re.sub(regex, replace, s)
        return s

    # measured decimals and percentages are masked; integers, words and structure are not
    assert sanitize("fp32:  96.1%, 0.258, -1.5e-07, 52% of 20,490 weights") == \
        sanitize("fp32: 95.8%,  0.301, +2.0e-06, 48% of 20,490 weights")
    assert sanitize("20,490 parameters") != sanitize("20,491 parameters")
    assert sanitize("CNN(8, 16)") != sanitize("CNN(8, 6)")
