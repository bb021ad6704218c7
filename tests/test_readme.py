"""README.md's Layout section names every top-level folder and every module of helpers/.

Cheap and standalone (pathlib, re, subprocess; nothing heavy imported), so a folder or a helper
module added without a line in the README fails the unit tests.
"""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def layout_section():
    """The text of README.md from its '## Layout' heading to the next '## ' heading (or the end)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout[ \t]*\n(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def tracked_files():
    """Files tracked by git, relative to the repository; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return [name for name in out.stdout.decode("utf-8").split("\0") if name]


def top_level_folders():
    """Top-level folders that hold at least one tracked file (every folder with a file, without git)."""
    files = tracked_files()
    if files is None:
        return sorted(p.name for p in ROOT.iterdir()
                      if p.is_dir() and p.name not in {".git", ".venv", "_build"}
                      and not p.name.endswith((".egg-info", "_cache"))
                      and p.name != "__pycache__" and any(q.is_file() for q in p.rglob("*")))
    return sorted({name.split("/")[0] for name in files if "/" in name})


def helper_modules():
    return sorted(p.name for p in (ROOT / "helpers").glob("*.py") if p.name != "__init__.py")


def listed_paths(section):
    """Paths of the Layout section's list items, nesting resolved.

    An item is a Markdown list line whose first code span names a file or folder: ``- `Makefile`: ...``.
    An item nested under a folder's item (``- `helpers/`: ...`` then ``  - `data.py`: ...``) is read
    as inside that folder (``helpers/data.py``), unless its span already starts with the folder.
    """
    paths, parents = [], []  # parents: (indent, folder path ending in "/")
    for indent, span in re.findall(r"^( *)[-*] `([^`]+)`", section, flags=re.M):
        while parents and parents[-1][0] >= len(indent):
            parents.pop()
        parent = parents[-1][1] if parents else ""
        path = span if span.startswith(parent) else parent + span
        paths.append(path)
        if path.endswith("/"):
            parents.append((len(indent), path))
    return paths


def test_the_layout_section_exists_and_the_lists_are_not_empty():
    assert listed_paths(layout_section())
    assert helper_modules(), "no helpers/*.py found"
    assert "helpers" in top_level_folders()


@pytest.mark.parametrize("folder", top_level_folders())
def test_every_top_level_folder_is_in_the_layout(folder):
    assert any(path.startswith(folder + "/") for path in listed_paths(layout_section())), \
        f"README.md's Layout section has no list item for the top-level folder {folder}/"


@pytest.mark.parametrize("module", helper_modules())
def test_every_helper_module_is_in_the_layout(module):
    assert "helpers/" + module in listed_paths(layout_section()), \
        f"README.md's Layout section has no list item for helpers/{module}"


def test_listed_paths_resolves_nesting():
    section = ("- `Makefile`: x\n- `.ci/run`: CI\n- `helpers/`: y\n  - `data.py`: z\n"
               "  - `helpers/models.py`: w\n- `tests/`: t\n  - `browser/`: b\n"
               "    - `conftest.py`: c\n  - `test_data.py`: d\nprose with `pruning.py`\n")
    assert listed_paths(section) == ["Makefile", ".ci/run", "helpers/", "helpers/data.py",
                                     "helpers/models.py", "tests/", "tests/browser/",
                                     "tests/browser/conftest.py", "tests/test_data.py"]
