"""helpers.docstrings: the pinned standard-library docstring pairs are deterministic, split by module, well formed."""
import getpass
import hashlib
import sys

import pytest

from helpers.docstrings import (
    MAX_BODY_WORDS,
    MIN_BODY_WORDS,
    MIN_QUERY_WORDS,
    MODULES,
    SPLITS,
    DocstringPairs,
    docstring_pairs,
    load_docstring_pairs,
    module_source,
    pairs_digest,
    select_split,
    split_docstring,
    split_of,
)

on_pinned_python = pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the pairs are defined on CPython 3.11")

#: measured on CPython 3.11.7 (Linux), 2026-12-05: 978 pairs from 151 modules
EXPECTED_DIGEST = "336ab9d211a8ff0ec4533c7fa7e2c626ea77d1bf0306321655be933884ae1203"
EXPECTED_SIZES = {"train": 623, "val": 77, "test": 278}


def test_the_module_list_is_pinned_sorted_and_unique():
    assert list(MODULES) == sorted(set(MODULES))
    assert 140 <= len(MODULES) <= 160


def test_split_docstring_reads_first_sentence_and_body():
    body = " ".join(f"Word{i}" for i in range(100))
    doc = f"""Return the whole thing.

        {body}
        """
    query, document = split_docstring(doc)
    assert query == "Return the whole thing."
    assert document.split() == body.split()[:MAX_BODY_WORDS]
    # a first paragraph of several sentences: the query is the first, the rest joins the body
    query, document = split_docstring(f"Do this right now. Then {body}")
    assert query == "Do this right now." and document.startswith("Then Word0 Word1")
    # an Argument Clinic signature line and doctest paragraphs are dropped
    query, document = split_docstring(f"f(x, /) -> int\n\nCompute the value of f.\n\n>>> f(1)\n2\n\n{body}")
    assert query == "Compute the value of f." and ">>>" not in document


def test_split_docstring_refuses_short_parts():
    assert split_docstring("Only one sentence here.") is None
    assert split_docstring("Too short. " + "a " * (MIN_BODY_WORDS + 5)) is None  # 2-word query
    assert split_docstring("A long enough query. " + "a " * (MIN_BODY_WORDS - 1)) is None  # body too short


def test_pairs_digest_is_sha256_of_the_pairs_in_order():
    reference = hashlib.sha256(b"q1\x00d1\x01q2\x00d2\x01").hexdigest()
    assert pairs_digest(["q1", "q2"], ["d1", "d2"]) == reference
    assert pairs_digest(["q2", "q1"], ["d2", "d1"]) != reference
    with pytest.raises(ValueError, match="same length"):
        pairs_digest(["q"], [])


@on_pinned_python
def test_pairs_are_deterministic_and_match_the_recorded_digest(monkeypatch):
    # read from source, never imported: a running program's patches (pytest's, a kernel's) change nothing
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "")
    fresh = docstring_pairs(MODULES)  # not the cached copy
    again = docstring_pairs(tuple(reversed(MODULES)))  # the order given does not matter
    assert fresh == again
    assert fresh.digest == load_docstring_pairs("all").digest == EXPECTED_DIGEST
    assert len(fresh) == 978 and len(set(fresh.modules)) == 151


@on_pinned_python
def test_splits_are_by_module_disjoint_and_cover_everything():
    everything = load_docstring_pairs("all")
    parts = {split: load_docstring_pairs(split) for split in SPLITS}
    assert {split: len(p) for split, p in parts.items()} == EXPECTED_SIZES
    modules = [set(p.modules) for p in parts.values()]
    assert not (modules[0] & modules[1]) and not (modules[0] & modules[2]) and not (modules[1] & modules[2])
    assert set().union(*modules) == set(everything.modules)
    for split, part in parts.items():
        assert part.split == split and all(split_of(m) == split for m in part.modules)
        assert set(zip(part.queries, part.documents)) <= set(zip(everything.queries, everything.documents))


@on_pinned_python
def test_every_pair_is_well_formed_and_unique():
    pairs = load_docstring_pairs("all")
    assert len(set(pairs.queries)) == len(pairs) == len(set(pairs.documents))
    for query, document in zip(pairs.queries, pairs.documents):
        assert len(query.split()) >= MIN_QUERY_WORDS
        assert MIN_BODY_WORDS <= len(document.split()) <= MAX_BODY_WORDS
        assert query == " ".join(query.split()) and document == " ".join(document.split())


def test_split_of_depends_only_on_the_name():
    assert {split_of(m) for m in MODULES} == set(SPLITS)
    first_byte = hashlib.sha256(b"json").digest()[0]
    assert split_of("json") == ("train" if first_byte < 154 else "val" if first_byte < 179 else "test")


def test_limit_and_bad_arguments():
    pairs = DocstringPairs(("a",), ("b",), ("json",), "all")
    with pytest.raises(ValueError, match="split must be one of"):
        select_split(pairs, "dev")
    with pytest.raises(ValueError, match="modules must be a non-empty"):
        docstring_pairs("json")
    if sys.version_info[:2] == (3, 11):
        assert len(load_docstring_pairs("test", limit=10)) == 10
        with pytest.raises(ValueError, match="limit must be an integer >= 1, got 0"):
            load_docstring_pairs("test", limit=0)
        with pytest.raises(TypeError, match="limit must be an integer >= 1, got True"):
            load_docstring_pairs("test", limit=True)
    else:
        with pytest.raises(RuntimeError, match="CPython 3.11"):
            load_docstring_pairs("test")


def test_module_source_finds_files_and_refuses_the_rest():
    assert module_source("json").name == "__init__.py" and module_source("json.decoder").name == "decoder.py"
    with pytest.raises(ValueError, match="has no Python source"):
        module_source("sys")  # built into the interpreter
