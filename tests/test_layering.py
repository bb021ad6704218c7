"""The layering of helpers/: which module may import which, as CONTRIBUTING.md's layer table states it.

Cheap and standalone (ast, tokenize, re, pathlib; nothing from helpers is imported), so it runs in a
second, even while helpers/ does not import. For every helpers/*.py it checks:

- the table in CONTRIBUTING.md (columns ``Layer | Modules | May import``) equals :data:`LAYERS`,
  every module is in exactly one layer, every module in the table exists, each has a role line;
- the imports between helpers modules (``from helpers.x import ...``, ``from helpers import x``,
  ``import helpers.x``, relative imports, inside functions too) form no cycle and point strictly
  downward: a module imports only modules of lower layers. ``__init__``, the package's re-export
  surface, is the top layer, so ``from helpers import CNN`` inside helpers/ is an upward import;
- those imports sit at module level, unless the import ends its line with ``# lazy: <reason>``;
- no module is longer than :data:`MAX_LINES` lines;
- only helpers/noise.py filters warnings or log records.
"""
import ast
import functools
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "helpers"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
PACKAGE = "helpers"

#: layer -> modules of helpers/ (file names without .py). A module imports only from lower layers.
#: Must equal the table in CONTRIBUTING.md (test_contributing_states_the_same_layers).
LAYERS = {
    0: {"_checks", "noise"},
    1: {"notebook", "evidence", "plotting", "data", "docstrings", "models"},
    2: {"training"},
    3: {"measure", "runtimes"},
    4: {"quantization", "pruning", "distillation", "transfer", "embeddings", "distributed"},
    5: {"federated", "budget", "sparse", "lm_compression", "lm_adaptation"},
    6: {"__init__"},  # the re-export surface: may import every module, no module may import it
}
#: the one module allowed to filter warnings and log records
FILTER_MODULE = "noise"
MAX_LINES = 520
LAZY_MARKER = re.compile(r"#\s*lazy:\s*\S")


def layer_of() -> dict[str, int]:
    return {module: layer for layer, modules in LAYERS.items() for module in modules}


def existing_modules() -> list[str]:
    return sorted(p.stem for p in HELPERS.glob("*.py"))


def source_of(module: str) -> str:
    return (HELPERS / f"{module}.py").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# CONTRIBUTING.md's layer table
# ------------------------------------------------------------------------------------------------


def contributing_table(text: str) -> list[tuple[str, str, str]]:
    """Rows (Layer, Modules, May import) of the Markdown table whose header is exactly those columns."""
    lines = text.splitlines()

    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split("|")]

    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and cells(line) == ["Layer", "Modules", "May import"]:
            rows = []
            for row in lines[i + 2:]:  # skip the |---| line
                if not row.lstrip().startswith("|"):
                    break
                rows.append(tuple(cells(row)))
            return rows
    raise AssertionError("CONTRIBUTING.md has no table with the columns | Layer | Modules | May import |")


def may_import(cell: str) -> set[int]:
    """The layers a 'May import' cell allows: 'no helpers module', 'layer 0', 'layers 0-2' (then any words)."""
    match = re.match(r"(no helpers module)|layers? 0(?:\s*(?:-|–|to)\s*(\d+))?\b", cell)
    assert match, f"'May import' cell {cell!r}: write 'no helpers module', 'layer 0' or 'layers 0-N'"
    if match.group(1):
        return set()
    return set(range(int(match.group(2) or 0) + 1))


def layers_in_contributing() -> dict[int, set[str]]:
    table = {}
    for row in contributing_table(CONTRIBUTING.read_text(encoding="utf-8")):
        assert len(row) == 3, f"CONTRIBUTING.md layer table: row {row} does not have three cells"
        layer, modules, allowed = row
        assert layer.isdigit(), f"CONTRIBUTING.md layer table: layer {layer!r} is not a number"
        layer = int(layer)
        assert layer not in table, f"CONTRIBUTING.md layer table: layer {layer} has two rows"
        table[layer] = set(re.findall(r"`(?:helpers/)?(\w+)(?:\.py)?`", modules))
        assert may_import(allowed) == set(range(layer)), (
            f"CONTRIBUTING.md layer table: layer {layer} may import {allowed!r}; "
            f"strictly lower layers are {sorted(range(layer))}")
    return table


def test_contributing_states_the_same_layers():
    assert layers_in_contributing() == LAYERS, \
        "CONTRIBUTING.md's layer table and LAYERS in tests/test_layering.py differ: change both together"


def test_contributing_gives_every_module_a_role():
    text = CONTRIBUTING.read_text(encoding="utf-8")
    roles = set(re.findall(r"^[-*] `(?:helpers/)?(\w+)(?:\.py)?`:", text, flags=re.M))
    missing = set(layer_of()) - roles
    assert not missing, f"CONTRIBUTING.md has no role line ('- `name`: ...') for {sorted(missing)}"


def test_every_module_is_in_exactly_one_layer():
    seen = {}
    for layer, modules in LAYERS.items():
        for module in modules:
            assert module not in seen, f"{module} is in layers {seen[module]} and {layer}"
            seen[module] = layer
    unlisted = sorted(set(existing_modules()) - set(seen))
    assert not unlisted, (f"helpers/ modules in no layer: {unlisted}; add each to the table in "
                          "CONTRIBUTING.md and to LAYERS here")


def test_every_module_in_the_table_exists():
    missing = sorted(set(layer_of()) - set(existing_modules()))
    assert not missing, f"the layer table lists modules that helpers/ does not have: {missing}"


# ------------------------------------------------------------------------------------------------
# Imports between helpers modules
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HelpersImport:
    target: str  # a module of helpers/, or "__init__" for the package itself
    line: int
    end_line: int
    in_function: bool
    statement: str


def helpers_imports(source: str, modules: set[str]) -> list[HelpersImport]:
    """Every import of a helpers module in ``source`` (a module of helpers/), wherever it sits.

    ``modules`` are the names that are modules of helpers/: ``from helpers import x`` imports module
    ``x`` if it is one of them, and the package (``__init__``) otherwise (``from helpers import CNN``).
    """
    found = []

    def add(node, target, in_function):
        found.append(HelpersImport(target, node.lineno, node.end_lineno, in_function, ast.unparse(node)))

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == PACKAGE:
                        add(child, parts[1] if len(parts) > 1 else "__init__", in_function)
            elif isinstance(child, ast.ImportFrom):
                if child.level == 0:
                    parts = (child.module or "").split(".")
                    if parts[0] != PACKAGE:
                        continue
                    parts = parts[1:]
                elif child.level == 1:  # from . import x, from .x import y: inside helpers/
                    parts = child.module.split(".") if child.module else []
                else:
                    continue
                if parts:
                    add(child, parts[0], in_function)
                else:
                    for alias in child.names:
                        add(child, alias.name if alias.name in modules else "__init__", in_function)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def comments_by_line(source: str) -> dict[int, str]:
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
    return comments


def unmarked_function_level_imports(source: str, modules: set[str]) -> list[HelpersImport]:
    """Imports of helpers modules inside a function without ``# lazy: <reason>`` on one of their lines."""
    comments = comments_by_line(source)
    return [imp for imp in helpers_imports(source, modules) if imp.in_function
            and not any(LAZY_MARKER.search(comments.get(n, "")) for n in range(imp.line, imp.end_line + 1))]


@functools.cache
def import_graph() -> dict[str, dict[str, list[HelpersImport]]]:
    """module -> imported module -> the import statements, for every helpers/*.py."""
    names = set(existing_modules()) | set(layer_of())
    graph = {}
    for module in existing_modules():
        edges = {}
        for imp in helpers_imports(source_of(module), names):
            edges.setdefault(imp.target, []).append(imp)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components that hold a cycle (two or more modules, or a self-import)."""
    def reachable(start):
        seen, stack = set(), [start]
        while stack:
            for nxt in graph.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    reach = {node: reachable(node) for node in graph}
    components = []
    for node in sorted(graph):
        if node in reach[node] and not any(node in c for c in components):
            components.append(sorted(n for n in reach[node] if n in reach and node in reach[n]))
    return components


def test_no_import_cycles():
    graph = {module: set(edges) for module, edges in import_graph().items()}
    found = cycles(graph)
    assert not found, "helpers modules import each other in a cycle: " + "; ".join(
        " <-> ".join(c) + " (" + ", ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c) + ")"
        for c in found)


@pytest.mark.parametrize("module", existing_modules())
def test_imports_point_to_lower_layers(module):
    layers = layer_of()
    if module not in layers:
        pytest.fail(f"helpers/{module}.py is in no layer (test_every_module_is_in_exactly_one_layer)")
    wrong = []
    for target, imports in import_graph()[module].items():
        lines = ", ".join(str(imp.line) for imp in imports)
        if target not in layers:
            wrong.append(f"line {lines}: imports helpers.{target}, which is in no layer")
        elif layers[target] >= layers[module]:
            wrong.append(f"line {lines}: imports helpers.{target} (layer {layers[target]}) from layer "
                         f"{layers[module]}; only layers below {layers[module]} may be imported")
    assert not wrong, f"helpers/{module}.py:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", existing_modules())
def test_imports_between_helpers_sit_at_module_level(module):
    names = set(existing_modules()) | set(layer_of())
    unmarked = unmarked_function_level_imports(source_of(module), names)
    assert not unmarked, (
        f"helpers/{module}.py imports helpers modules inside a function: "
        + "; ".join(f"line {imp.line}: {imp.statement}" for imp in unmarked)
        + ". Move the import to the top of the module, or, for an optional heavy dependency, end the "
          "import line with '# lazy: <reason>' (CONTRIBUTING.md)")


# ------------------------------------------------------------------------------------------------
# Size, and where warnings and log records may be filtered
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", existing_modules())
def test_module_is_not_too_long(module):
    lines = len(source_of(module).splitlines())
    assert lines <= MAX_LINES, (f"helpers/{module}.py has {lines} lines (at most {MAX_LINES}): split it "
                                "by idea and add the new module to the layer table")


def warning_or_log_filters(source: str) -> list[tuple[int, str]]:
    """(line, what) for each place in ``source`` that filters warnings or log records.

    ``warnings.filterwarnings`` and ``warnings.simplefilter`` (also imported by name or under an
    alias), ``warnings.catch_warnings(action=...)``, a subclass of ``logging.Filter``, any
    ``.addFilter(``. Docstrings and comments that mention them do not count.
    """
    tree = ast.parse(source)
    aliases = {"warnings": {"warnings"}, "logging": {"logging"}}
    forbidden = {"warnings": {"filterwarnings", "simplefilter"}, "logging": {"Filter"}}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in aliases:
                    aliases[alias.name].add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module in forbidden and node.level == 0:
            for alias in node.names:
                if alias.name in forbidden[node.module]:
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            for module, names in forbidden.items():
                if node.value.id in aliases[module] and node.attr in names:
                    found.append((node.lineno, f"{module}.{node.attr}"))
        if isinstance(node, ast.Attribute) and node.attr == "addFilter":
            found.append((node.lineno, ".addFilter("))
        if isinstance(node, ast.Call) and any(k.arg == "action" for k in node.keywords):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == "catch_warnings"
                    and isinstance(func.value, ast.Name) and func.value.id in aliases["warnings"]):
                found.append((node.lineno, "warnings.catch_warnings(action=...)"))
    return sorted(set(found))


@pytest.mark.parametrize("module", [m for m in existing_modules() if m != FILTER_MODULE])
def test_only_noise_filters_warnings_and_logs(module):
    found = warning_or_log_filters(source_of(module))
    assert not found, (f"helpers/{module}.py filters warnings or log records ("
                       + ", ".join(f"line {line}: {what}" for line, what in found)
                       + f"); a known harmless message is dropped in helpers/{FILTER_MODULE}.py only, "
                         "by its exact text, with the reason beside it")


# ------------------------------------------------------------------------------------------------
# The checkers themselves, on made-up sources
# ------------------------------------------------------------------------------------------------

SAMPLE = '''\
"""Mentions warnings.filterwarnings and from helpers import x in a docstring: not an import."""
import helpers.data
import helpers.models as m
import helpers
import helpersextra
from helpers.training import train
from helpers import measure, CNN
from . import plotting
from .evidence import speedup
from helpersextra import thing
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from helpers.pruning import apply_masks


class Holder:
    from helpers.transfer import fine_tune


def later():
    from helpers.quantization import quantize  # lazy: only the int8 recipes need it
    from helpers.distillation import (  # lazy: pulls the teacher code
        distill)
    from helpers.budget import Budget
    from helpers.federated import (fedavg,
                                   shard_split)  # lazy: marked on its last line
    from helpers.runtimes import to_onnx  # lazy:
    import torch  # not a helpers module
'''
SAMPLE_MODULES = {"data", "models", "training", "measure", "plotting", "evidence", "pruning", "transfer",
                  "quantization", "distillation", "budget", "federated", "runtimes"}


def test_the_import_collector_sees_every_form():
    found = [(imp.target, imp.in_function) for imp in helpers_imports(SAMPLE, SAMPLE_MODULES)]
    assert found == [("data", False), ("models", False), ("__init__", False), ("training", False),
                     ("measure", False), ("__init__", False), ("plotting", False), ("evidence", False),
                     ("pruning", False), ("transfer", False), ("quantization", True), ("distillation", True),
                     ("budget", True), ("federated", True), ("runtimes", True)]


def test_a_function_level_import_needs_the_lazy_marker_with_a_reason():
    unmarked = unmarked_function_level_imports(SAMPLE, SAMPLE_MODULES)
    # budget: no marker; runtimes: the marker without a reason
    assert [imp.target for imp in unmarked] == ["budget", "runtimes"]


def test_the_cycle_finder():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}, "b": set()}) == [["a"]]


def test_the_filter_finder():
    source = '''\
"""warnings.filterwarnings("ignore") in a docstring does not count."""
import logging
import warnings as w
from warnings import simplefilter
from logging import Filter


class Quiet(logging.Filter):
    pass


def f(logger):
    w.filterwarnings("ignore", message="x")  # warnings.simplefilter in a comment does not count
    logger.addFilter(Quiet())
    with w.catch_warnings(action="ignore"):
        pass
    with w.catch_warnings():
        w.warn("still shown")
'''
    assert [what for _, what in warning_or_log_filters(source)] == [
        "from warnings import simplefilter", "from logging import Filter", "logging.Filter",
        "warnings.filterwarnings", ".addFilter(", "warnings.catch_warnings(action=...)"]
    assert warning_or_log_filters('"""warnings.simplefilter, addFilter("""\nimport warnings\n') == []


def test_the_table_parser():
    text = ("Intro.\n\n| Layer | Modules | May import |\n|---|---|---|\n"
            "| 0 | `a`, `b` | no helpers module |\n| 1 | `c` | layer 0 |\n| 2 | `d` | layers 0-1: all below |\n"
            "\nAfter the table.\n| x | y |\n")
    rows = contributing_table(text)
    assert rows == [("0", "`a`, `b`", "no helpers module"), ("1", "`c`", "layer 0"),
                    ("2", "`d`", "layers 0-1: all below")]
    assert [may_import(r[2]) for r in rows] == [set(), {0}, {0, 1}]
