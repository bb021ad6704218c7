"""Label the bibliography's entries with the author-year text the chapters cite them by.

The chapters cite author-year (``bibtex_reference_style: author_year``: "[Jacob et al., 2018]"),
but pybtex's default ``alpha`` style labelled the entries on the bibliography page "[JKC+18]", so a
reader could not match a citation to its entry. This extension registers, as sphinxcontrib-bibtex
documents for custom formatting, sorting and labelling (pybtex plugins registered at run time):

- ``author_year`` (``pybtex.style.labels``): each entry's label is built by the very templates the
  ``author_year`` reference style formats a parenthetical citation with (its person style, its
  author-year separator, ``n.d.`` for no year), so label and citation text are equal by
  construction: "Hinton, 2014", "Pan and Yang, 2010", "Jacob et al., 2018", an organisation as
  written in braces ("PyTorch team, 2026"), the editor or the title when there is no author.
  No "2015a/2015b" suffixes: the citations carry none, so two entries that would share a label
  would also share their citation text; the style warns about such a pair (and ``-W`` builds fail)
  instead of hiding it on this page only.
- ``author_year_label`` (``pybtex.style.sorting``): the entries in the order their labels read
  alphabetically, by the label's author part, then year ("Han et al., 2015" before "Han et al.,
  2016"; pybtex's ``author_year_title`` would put 2016 first, as Han, Mao sorts before Han, Pool),
  ties broken by all authors and the title. Names compare as printed, so organisations
  ("{PyTorch team}") file under their name instead of after "Z", and "M{\\"u}ller" as "Muller".
- ``author_year`` (``pybtex.style.formatting``): pybtex's ``unsrt`` entry formatting (what the
  default ``alpha`` style formats entries with) using the two plugins above.

``_config.yml`` selects it with ``bibtex_default_style: author_year``. The labels follow the default
``author_year`` reference style; a change of ``bibtex_reference_style`` or of its options needs the
same change here (tests/test_book_ext.py and the browser test compare labels with the citations).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator

import pybtex.plugin
from pybtex.database import Entry, Person
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import author_year_title
from sphinx.util import logging
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
from sphinxcontrib.bibtex.style.template import join, year

NAME = "author_year"  # the formatting and the label style
SORTING_NAME = "author_year_label"

logger = logging.getLogger(__name__)
# Rich text to plain text. Looked up once: ``render_as("text")`` looks the backend up among the
# installed packages' entry points on every call, which made formatting 60 entries take seconds.
PLAIN_TEXT = pybtex.plugin.find_plugin("pybtex.backends", "plaintext")()


def _templates(style: AuthorYearReferenceStyle):
    author = style.person.author_or_editor_or_title(full=False)
    return author, join(sep=style.author_year_sep)[author, year]


def citation_text(entry: Entry, reference_style: AuthorYearReferenceStyle | None = None) -> str:
    """The plain text an ``author_year`` parenthetical citation of ``entry`` shows, brackets aside.

    The same template as sphinxcontrib-bibtex's ``BasicAuthorYearParentheticalReferenceStyle.inner``
    without its pre-text, post-text and link: author (or editor, or title), separator, year.
    """
    style = reference_style or AuthorYearReferenceStyle()
    return _templates(style)[1].format_data({"entry": entry, "style": style}).render(PLAIN_TEXT)


def citation_author(entry: Entry, reference_style: AuthorYearReferenceStyle | None = None) -> str:
    """The author part of :func:`citation_text`: "Jacob et al.", "Pan and Yang", "PyTorch team"."""
    style = reference_style or AuthorYearReferenceStyle()
    return _templates(style)[0].format_data({"entry": entry, "style": style}).render(PLAIN_TEXT)


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels equal to the entries' author-year citation text, e.g. "Jacob et al., 2018"."""

    def format_labels(self, sorted_entries: Iterable[Entry]) -> Iterator[str]:
        reference_style = AuthorYearReferenceStyle()  # what sphinxcontrib-bibtex instantiates
        seen: dict[str, str] = {}
        for entry in sorted_entries:
            label = citation_text(entry, reference_style)
            if label in seen:
                logger.warning(
                    "bibliography entries %r and %r are both cited as %r: a reader cannot tell them "
                    "apart, in the text or on the bibliography page", seen[label], entry.key, label,
                    type="bibtex", subtype="duplicate_label")
            seen.setdefault(label, entry.key)
            yield label


class AuthorYearSortingStyle(author_year_title.SortingStyle):
    """The order in which the labels read alphabetically: the label's author part as printed
    ("Han et al."), then the year, then pybtex's ``author_year_title`` key (all authors, else the
    editors, else the title; then the title) to break ties. Names and titles are compared as
    printed: TeX decoded, no grouping braces, no accents, case folded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reference_style = AuthorYearReferenceStyle()

    def person_key(self, person: Person) -> str:
        return "  ".join(_plain(" ".join(names)) for names in (
            person.prelast_names + person.last_names,
            person.first_names + person.middle_names,
            person.lineage_names,
        ))

    def sorting_key(self, entry: Entry) -> tuple[str, str, str, str]:
        persons = entry.persons.get("author") or entry.persons.get("editor")
        title = _plain(entry.fields.get("title", ""))
        return (_sort_text(citation_author(entry, self._reference_style)), entry.fields.get("year", ""),
                self.persons_key(persons) if persons else title, title)


def _sort_text(text: str) -> str:
    """``text`` lower case and without accents, for sorting ("Müller" -> "muller")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def _plain(latex: str) -> str:
    """A bib field as printed (TeX decoded, no grouping braces), for sorting with ``_sort_text``:
    "M{\\"u}ller" -> "muller", "{PyTorch team}" -> "pytorch team"."""
    return _sort_text(Text.from_latex(latex).render(PLAIN_TEXT))


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entry formatting, sorted by author and year, labelled author-year."""

    default_label_style = NAME
    default_sorting_style = SORTING_NAME


def register() -> None:
    """Make the three styles known to pybtex (idempotent)."""
    pybtex.plugin.register_plugin("pybtex.style.labels", NAME, AuthorYearLabelStyle, force=True)
    pybtex.plugin.register_plugin("pybtex.style.sorting", SORTING_NAME, AuthorYearSortingStyle, force=True)
    pybtex.plugin.register_plugin("pybtex.style.formatting", NAME, AuthorYearStyle, force=True)


def setup(app):
    register()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
