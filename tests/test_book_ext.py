"""The bibliography's author-year labels (book_ext/author_year_labels.py).

The entries of references.bib are parsed as sphinxcontrib-bibtex parses them (pybtex's BibTeX
parser, TeX left in the fields) and formatted through the book's ``author_year`` style, as the
``{bibliography}`` directive formats them. The labels must be the text the chapters' author-year
citations show, unique, and in alphabetical order. The last test builds a small Sphinx project that
cites every entry of references.bib and compares, in the HTML, each citation link's text with the
label of the entry it links to (the browser test does the same on the book itself).
"""
from __future__ import annotations

import html
import io
import re
from pathlib import Path

import pybtex.plugin
import pytest
from pybtex.database import Entry, Person
from pybtex.database.input.bibtex import Parser

from book_ext import author_year_labels

ROOT = Path(__file__).resolve().parents[1]
BIB = ROOT / "references.bib"


@pytest.fixture(scope="module")
def style():
    author_year_labels.register()
    return pybtex.plugin.find_plugin("pybtex.style.formatting", author_year_labels.NAME)()


@pytest.fixture(scope="module")
def entries():
    return list(Parser("utf-8-sig").parse_file(BIB).entries.values())  # as sphinxcontrib-bibtex parses


@pytest.fixture(scope="module")
def labels(style, entries) -> dict[str, str]:
    """key -> label, in the bibliography's order."""
    return {formatted.key: formatted.label for formatted in style.format_entries(entries)}


def _entry(key: str, fields: dict, authors=(), editors=(), kind: str = "misc") -> Entry:
    persons = {}
    if authors:
        persons["author"] = [Person(name) for name in authors]
    if editors:
        persons["editor"] = [Person(name) for name in editors]
    entry = Entry(kind, fields=fields, persons=persons)
    entry.key = key
    return entry


def test_labels_are_the_author_year_citation_text(labels):
    expected = {
        "hinton2014dark": "Hinton, 2014",                      # one author: surname, year
        "krishnamoorthi2018quantizing": "Krishnamoorthi, 2018",
        "pan2010survey": "Pan and Yang, 2010",                 # two: A and B
        "zhu2017prune": "Zhu and Gupta, 2017",
        "hinton2015distilling": "Hinton et al., 2015",         # three or more: A et al.
        "jacob2018quantization": "Jacob et al., 2018",
        "muller2019label": "Müller et al., 2019",              # TeX accents decoded, as in the text
        "konecny2016federated": "Konečný et al., 2016",
        "executorch": "PyTorch team, 2026",                    # an organisation, {braced}: as written
        "tfmot": "TensorFlow Model Optimization team, 2026",
        "or2025torchao": "Or et al., 2025",
    }
    assert {key: labels[key] for key in expected} == expected


def test_every_entry_has_a_label_and_no_two_share_one(labels, entries):
    assert set(labels) == {entry.key for entry in entries}
    shared = {}
    for key, label in labels.items():
        shared.setdefault(label, []).append(key)
    duplicates = {label: keys for label, keys in shared.items() if len(keys) > 1}
    assert not duplicates, (
        f"entries cited by the same author-year text (a reader cannot tell them apart): {duplicates}")
    # not alpha labels ("[JKC+18]") any more
    assert not [label for label in labels.values() if not re.search(r", (\d{4}|n\.d\.)$", label)]


def test_bibliography_is_sorted_by_author_then_year(labels):
    order = list(labels.values())
    for earlier, later in [
        ("Han et al., 2015", "Han et al., 2016"),          # same label author: by year
        ("LeCun et al., 1990", "LeCun et al., 1998"),
        ("Hinton, 2014", "Hinton et al., 2015"),
        ("Li et al., 2017", "Li et al., 2020"),
        ("Paszke et al., 2019", "PyTorch team, 2026"),     # organisations file under their name,
        ("PyTorch team, 2026", "Radford et al., 2021"),    # not after "Z" for their {braces}
        ("Micikevicius et al., 2018", "Müller et al., 2019"),  # "Müller" files as "Muller"
        ("Müller et al., 2019", "Nagel et al., 2021"),
    ]:
        assert order.index(earlier) < order.index(later), f"{earlier!r} should come before {later!r}"
    # and in general: (the label's author part, year) never decreases down the page
    keys = [author_year_labels._sort_text(label.rsplit(", ", 1)[0]) for label in order]
    years = [label.rsplit(", ", 1)[1] for label in order]
    assert list(zip(keys, years)) == sorted(zip(keys, years))


def test_labels_without_author_or_year(style):
    entries = [
        _entry("solo", {"title": "A", "year": "2001"}, authors=["Doe, Jane"]),
        _entry("edited", {"title": "Proceedings", "year": "2002"}, editors=["Roe, Rick", "Poe, Pat"]),
        _entry("anonymous", {"title": "The Manual", "year": "2003"}),
        _entry("undated", {"title": "B"}, authors=["Moe, Max", "Lo, Li", "Bo, Bea"]),
    ]
    labels = {formatted.key: formatted.label for formatted in style.format_entries(entries)}
    assert labels == {
        "solo": "Doe, 2001",
        "edited": "Roe and Poe, 2002",   # no author: the editors, as the citation shows
        "anonymous": "The Manual, 2003",  # neither: the title
        "undated": "Moe et al., n.d.",    # no year: n.d., as the citation shows
    }
    assert list(labels) == ["solo", "undated", "edited", "anonymous"]  # Doe, Moe, Roe, The Manual


def test_a_shared_label_is_reported(style, monkeypatch):
    warnings = []

    class Recorder:
        def warning(self, message, *args, **kwargs):
            warnings.append(message % args)

    monkeypatch.setattr(author_year_labels, "logger", Recorder())
    twins = [_entry("han2015a", {"title": "One", "year": "2015"}, authors=["Han, Song", "Pool, Jeff", "Tran, J"]),
             _entry("han2015b", {"title": "Two", "year": "2015"}, authors=["Han, Song", "Mao, H", "Dally, W"])]
    labels = [formatted.label for formatted in style.format_entries(twins)]
    assert labels == ["Han et al., 2015", "Han et al., 2015"]  # as the citations would show them
    assert len(warnings) == 1 and "'Han et al., 2015'" in warnings[0] and "han2015a" in warnings[0]


def test_sphinx_build_labels_equal_citation_links(tmp_path, entries):
    """Through Sphinx and sphinxcontrib-bibtex with the book's settings: every entry of references.bib
    cited once, and each citation link's text equals the label of the entry it links to."""
    from sphinx.application import Sphinx

    source = tmp_path / "source"
    source.mkdir()
    (source / "references.bib").write_text(BIB.read_text(encoding="utf-8"), encoding="utf-8")
    (source / "conf.py").write_text(
        "extensions = ['sphinxcontrib.bibtex', 'book_ext.author_year_labels']\n"
        "bibtex_bibfiles = ['references.bib']\n"
        "bibtex_reference_style = 'author_year'\n"
        "bibtex_default_style = 'author_year'\n", encoding="utf-8")
    cites = "\n\n".join(f"Cited :cite:p:`{entry.key}`." for entry in entries)
    (source / "index.rst").write_text(f"Text\n====\n\n{cites}\n\nReferences\n==========\n\n.. bibliography::\n",
                                      encoding="utf-8")
    warnings = io.StringIO()
    app = Sphinx(str(source), str(source), str(tmp_path / "html"), str(tmp_path / "doctrees"), "html",
                 status=None, warning=warnings, freshenv=True)
    app.build()
    assert warnings.getvalue() == ""
    page = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")

    def text(fragment: str) -> str:
        return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())

    label_of = {match["id"]: text(match["label"]) for match in re.finditer(
        r'<div class="citation" id="(?P<id>[^"]+)"[^>]*>\s*<span class="label">'
        r'<span class="fn-bracket">\[</span>(?P<label>.*?)<span class="fn-bracket">\]</span>', page, re.S)}
    links = [(match["id"], text(match["text"])) for match in re.finditer(
        r'<a class="reference internal" href="#(?P<id>[^"]+)"[^>]*>(?P<text>.*?)</a>', page, re.S)
        if match["id"] in label_of]
    assert len(label_of) == len(entries) and len(links) == len(entries)
    mismatched = [(text_, label_of[id_]) for id_, text_ in links if text_ != label_of[id_]]
    assert not mismatched, f"citation text vs the label of the entry it links to: {mismatched}"
