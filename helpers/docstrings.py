"""Real text, offline: (first sentence, body) pairs from the docstrings of Python's standard library.

A sentence encoder is judged by semantic search: the *query* is a docstring's first sentence, the
*document* is the rest of the same docstring, and the encoder should find that document among all
the others (recall@1, the measure of the MS MARCO and BEIR retrieval benchmarks). The text ships
with Python itself, so nothing is downloaded, and it is the same on every machine that runs the
same CPython feature release: the book pins 3.11 (the docstrings change between 3.11 and 3.12,
so :func:`load_docstring_pairs` checks ``sys.version_info`` and :func:`pairs_digest` lets a chapter
print, and a test check, that the text is the one the stored outputs were computed from).

How the pairs are made (:func:`docstring_pairs`): for each module of the pinned, sorted list
:data:`MODULES`, its source file in the standard library (``sysconfig.get_path("stdlib")``) is parsed
with ``ast``, never imported, so nothing a running program patches (pytest replaces
``sys.unraisablehook``, a Jupyter kernel ``getpass.getpass``) changes the text. The walk takes the
module's public (no leading underscore) top-level functions and classes in sorted order, and for
each class its public methods (properties included) in sorted order; definitions nested in an
``if`` or ``try`` are not read. A docstring is cleaned as ``inspect.cleandoc`` does
(``ast.get_docstring``); a signature line (``name(args) -> ret``) and paragraphs with doctest
prompts (``>>>``) are dropped; whitespace is collapsed to single spaces; the first sentence ends at
the first full stop followed by white space and a capital letter. A pair is kept when the sentence
has at least :data:`MIN_QUERY_WORDS` words and the body at least :data:`MIN_BODY_WORDS`; the body is
cut to its first :data:`MAX_BODY_WORDS` words (well under the encoder's 256 tokens, so encoding
stays fast). A pair whose query or document already occurred is dropped, so each query has one
right answer.

The split is by module, so no module's style leaks from training into test: a module goes to
train, validation or test by the first byte of the SHA-256 of its name (:func:`split_of`), which
does not depend on which other modules are in the list.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from helpers._checks import check_int

#: The pinned, sorted standard-library modules whose docstrings are read: pure-Python modules of
#: CPython 3.11 (not frozen, not C), each giving at least one pair there; no private or deprecated
#: module (``cgi``, ``lib2to3``) and no GUI module (``turtle``).
MODULES = (
    "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.locks", "asyncio.protocols",
    "asyncio.queues", "asyncio.streams", "asyncio.tasks", "asyncio.transports", "base64", "bdb", "bisect", "bz2",
    "calendar", "cmd", "code", "codeop", "collections", "compileall", "concurrent.futures.process", "configparser",
    "contextlib", "csv", "ctypes", "dataclasses", "datetime", "dbm", "difflib", "dis", "doctest", "email.charset",
    "email.feedparser", "email.generator", "email.header", "email.headerregistry", "email.message", "email.parser",
    "email.policy", "email.utils", "encodings", "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "getpass", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser",
    "http.client", "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib.abc", "importlib.metadata",
    "inspect", "ipaddress", "json", "json.decoder", "json.encoder", "linecache", "locale", "logging",
    "logging.handlers", "lzma", "mimetypes", "modulefinder", "multiprocessing.connection", "multiprocessing.managers",
    "multiprocessing.process", "numbers", "operator", "optparse", "pathlib", "pdb", "pickle", "pickletools",
    "pkgutil", "platform", "poplib", "profile", "pstats", "py_compile", "pyclbr", "pydoc", "queue", "quopri",
    "random", "re", "rlcompleter", "sched", "secrets", "selectors", "shelve", "shutil", "smtplib", "socket",
    "socketserver", "ssl", "statistics", "string", "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "tracemalloc", "types", "unittest.case",
    "unittest.loader", "unittest.mock", "unittest.result", "unittest.runner", "unittest.suite", "urllib.parse",
    "urllib.request", "urllib.robotparser", "uuid", "warnings", "weakref", "webbrowser", "wsgiref.handlers",
    "wsgiref.headers", "wsgiref.util", "xml.dom.expatbuilder", "xml.dom.minidom", "xml.etree.ElementTree",
    "xml.sax.expatreader", "xml.sax.handler", "xml.sax.saxutils", "xml.sax.xmlreader", "xmlrpc.client",
    "xmlrpc.server", "zipapp", "zipfile",
)
#: The CPython feature release the pairs (and the digest the chapter prints) are defined on.
PYTHON = (3, 11)
MIN_QUERY_WORDS = 4
MIN_BODY_WORDS = 16
MAX_BODY_WORDS = 64
SPLITS = ("train", "val", "test")

_SIGNATURE = re.compile(r"^[\w.]+\(.*\)( -> .*)?$")
_SENTENCE_END = re.compile(r"(?<=[.])\s+(?=[A-Z])")


@dataclass(frozen=True)
class DocstringPairs:
    """Aligned tuples: ``queries[i]`` (a first sentence) belongs to ``documents[i]`` (its body).

    ``modules[i]`` is the module the docstring comes from, ``split`` the part these pairs are
    (``"all"``, ``"train"``, ``"val"`` or ``"test"``). ``digest`` is :func:`pairs_digest` of them.
    """

    queries: tuple[str, ...]
    documents: tuple[str, ...]
    modules: tuple[str, ...]
    split: str

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def digest(self) -> str:
        return pairs_digest(self.queries, self.documents)

    def __repr__(self) -> str:
        return (f"DocstringPairs(split={self.split!r}, pairs={len(self)}, modules={len(set(self.modules))}, "
                f"digest={self.digest[:12]})")


def _normalize(text: str) -> str:
    return " ".join(text.split())


def split_docstring(doc: str) -> tuple[str, str] | None:
    """``(first sentence, body cut to MAX_BODY_WORDS words)`` of one docstring, or ``None`` if too short."""
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    if paragraphs and _SIGNATURE.match(_normalize(paragraphs[0])):
        paragraphs = paragraphs[1:]
    paragraphs = [p for p in paragraphs if ">>>" not in p]
    parts = _SENTENCE_END.split(" ".join(_normalize(p) for p in paragraphs), maxsplit=1)
    if len(parts) < 2:
        return None
    query, body = parts
    words = body.split()
    if len(query.split()) < MIN_QUERY_WORDS or len(words) < MIN_BODY_WORDS:
        return None
    return query, " ".join(words[:MAX_BODY_WORDS])


def module_source(module_name: str) -> Path:
    """The source file of a standard-library module (``a.b`` -> ``stdlib/a/b.py`` or ``a/b/__init__.py``)."""
    base = Path(sysconfig.get_path("stdlib"), *module_name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise ValueError(f"module {module_name!r} has no Python source in the standard library ({base}.py)")


def _docstrings(module_name: str) -> list[str]:
    """The docstrings of a module's public top-level functions, classes and their methods, in sorted order."""
    tree = ast.parse(module_source(module_name).read_text(encoding="utf-8"))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)

    def public(nodes, kinds):
        return sorted((n for n in nodes if isinstance(n, kinds) and not n.name.startswith("_")), key=lambda n: n.name)

    docs = []
    for node in public(tree.body, functions + (ast.ClassDef,)):
        docs.append(ast.get_docstring(node, clean=True))
        if isinstance(node, ast.ClassDef):
            docs.extend(ast.get_docstring(member, clean=True) for member in public(node.body, functions))
    return [d for d in docs if d]


def split_of(module_name: str) -> str:
    """``"train"`` (first SHA-256 byte of the name < 154, about 60%), ``"val"`` (< 179, 10%) or ``"test"`` (30%)."""
    first_byte = hashlib.sha256(module_name.encode("utf-8")).digest()[0]
    return "train" if first_byte < 154 else "val" if first_byte < 179 else "test"


def docstring_pairs(modules=MODULES) -> DocstringPairs:
    """Every pair of ``modules`` (default :data:`MODULES`), deduplicated, in module order (split ``"all"``)."""
    if isinstance(modules, str) or not modules:
        raise ValueError(f"modules must be a non-empty sequence of module names, got {modules!r}")
    queries, documents, names = [], [], []
    seen_queries, seen_documents = set(), set()
    for module_name in sorted(modules):
        for doc in _docstrings(module_name):
            pair = split_docstring(doc)
            if pair is None or pair[0] in seen_queries or pair[1] in seen_documents:
                continue
            seen_queries.add(pair[0])
            seen_documents.add(pair[1])
            queries.append(pair[0])
            documents.append(pair[1])
            names.append(module_name)
    return DocstringPairs(tuple(queries), tuple(documents), tuple(names), "all")


def select_split(pairs: DocstringPairs, split: str) -> DocstringPairs:
    """The pairs of ``pairs`` whose module falls in ``split`` (one of :data:`SPLITS`, or ``"all"``)."""
    if split not in SPLITS + ("all",):
        raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
    if split == "all":
        return pairs
    keep = [i for i, m in enumerate(pairs.modules) if split_of(m) == split]
    return DocstringPairs(tuple(pairs.queries[i] for i in keep), tuple(pairs.documents[i] for i in keep),
                          tuple(pairs.modules[i] for i in keep), split)


@functools.lru_cache(maxsize=1)
def _pinned_pairs() -> DocstringPairs:
    return docstring_pairs(MODULES)


def load_docstring_pairs(split: str = "test", limit: int | None = None) -> DocstringPairs:
    """The pinned pairs of one split (``"train"``, ``"val"``, ``"test"`` or ``"all"``), first ``limit`` of them.

    Raises ``RuntimeError`` on a Python other than :data:`PYTHON` (3.11): its docstrings differ, so
    the pairs, the digest and every number measured on them would silently change.
    """
    if sys.version_info[:2] != PYTHON:
        raise RuntimeError(f"the docstring pairs are defined on CPython {PYTHON[0]}.{PYTHON[1]}, "
                           f"this is {sys.version_info[0]}.{sys.version_info[1]}")
    pairs = select_split(_pinned_pairs(), split)
    if limit is not None:
        limit = check_int("limit", limit, minimum=1)
        pairs = DocstringPairs(pairs.queries[:limit], pairs.documents[:limit], pairs.modules[:limit], pairs.split)
    return pairs


def pairs_digest(queries, documents) -> str:
    """SHA-256 (hex) of the pairs, in order: each query and document UTF-8 encoded, separated by NUL and SOH."""
    if len(queries) != len(documents):
        raise ValueError(f"queries and documents must have the same length, got {len(queries)} and {len(documents)}")
    h = hashlib.sha256()
    for query, document in zip(queries, documents):
        h.update(query.encode("utf-8") + b"\x00" + document.encode("utf-8") + b"\x01")
    return h.hexdigest()

