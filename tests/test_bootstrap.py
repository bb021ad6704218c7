"""The first cell of every chapter: it makes `helpers` importable wherever a notebook is opened.

The book's repository is named once, in _config.yml (`repository.url`, which the launch and
repository buttons are built from); the set-up cell and the README must name the same one.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPOSITORY = CONFIG["repository"]["url"]


def first_code_cell(path):
    cells = json.loads(path.read_text())["cells"]
    return next(c for c in cells if c["cell_type"] == "code")


SETUP = "".join(first_code_cell(NOTEBOOKS[0])["source"])


def run_setup(cwd, then=""):
    """The set-up cell in a Python that cannot import helpers: -S skips site-packages (where
    `pip install -e .` registered the repository), -I keeps cwd and PYTHONPATH off sys.path."""
    return subprocess.run([sys.executable, "-I", "-S", "-c", SETUP + "\n" + then], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_chapter_starts_with_the_same_setup_cell(path):
    cell = first_code_cell(path)
    assert "".join(cell["source"]) == SETUP, f"{path.name}: its first code cell is not the set-up cell"
    # in the rendered book the cell is folded away; it prints nothing when helpers imports
    assert "hide-input" in cell["metadata"].get("tags", [])
    assert cell["outputs"] == []


def test_the_repository_is_named_once():
    assert f'BOOK = "{REPOSITORY}"' in SETUP
    assert REPOSITORY in (ROOT / "README.md").read_text()
    assert "binderhub_url" not in CONFIG["launch_buttons"], "Binder gets no CPU-only environment"


def test_setup_is_a_no_op_where_helpers_imports():
    done = subprocess.run([sys.executable, "-c", "import sys; before = list(sys.path)\n" + SETUP
                           + "\nprint(sys.path == before, 'clone' in globals())"],
                          cwd=ROOT / "chapters", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_setup_finds_the_clone_from_a_chapter_folder():
    done = run_setup(ROOT / "chapters" / "04_practice",
                     "print(importlib.util.find_spec('helpers').origin)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == ROOT / "helpers" / "__init__.py"


def test_setup_outside_a_clone_says_in_one_line_what_to_do(tmp_path):
    done = run_setup(tmp_path, "print('went on')")
    assert done.returncode == 1 and "went on" not in done.stdout
    message = done.stderr.strip()
    assert message == (f"This chapter needs the book's code: git clone {REPOSITORY}, "
                       "then run `make lab` in the clone.")
