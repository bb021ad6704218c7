"""Every page of the rendered book, opened in headless Chromium (checks: rendered_book.py).

Runs on the HTML that ``make html-stored`` builds from the notebooks' stored outputs; ``make
check-html`` (part of ``make test``) builds it, installs Chromium when missing, and runs this file
with BOOK_HTML set. Without BOOK_HTML and without a build these tests are skipped, so a plain
``pytest tests`` before any build does not fail for that reason alone; with BOOK_HTML set, a missing
build fails. A screenshot of every page goes to BOOK_SCREENSHOTS (default ``_build/screenshots``),
and one at a phone's width to its ``phone/`` folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import rendered_book

ROOT = Path(__file__).resolve().parents[2]
BOOK_HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "stored" / "_build" / "html"))
SCREENSHOTS = Path(os.environ.get("BOOK_SCREENSHOTS", ROOT / "_build" / "screenshots"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


TOC_FILES = _toc_files()
# Sphinx's own pages, not in the table of contents but linked from every page.
EXTRA_PAGES = ["genindex.html", "search.html"]


def _source(docname: str) -> str:
    """The one source file (relative to the repository) a TOC entry is built from."""
    found = [f"{docname}{ext}" for ext in (".ipynb", ".md") if (ROOT / f"{docname}{ext}").is_file()]
    assert len(found) == 1, f"{docname}: expected exactly one source file, found {found or 'none'}"
    return found[0]


@pytest.fixture(scope="module")
def site():
    if not (BOOK_HTML / "index.html").is_file():
        if "BOOK_HTML" in os.environ:
            pytest.fail(f"no rendered book at {BOOK_HTML}: build it with `make html-stored`")
        pytest.skip(f"no rendered book at {BOOK_HTML} (run `make check-html`)")
    with rendered_book.serve(BOOK_HTML) as base_url:
        yield base_url, rendered_book.LinkChecker()


def _expected_links(source: str) -> dict:
    launch = CONFIG.get("launch_buttons", {})
    return {
        "source": source,
        "repository": CONFIG["repository"]["url"],
        "branch": CONFIG["repository"]["branch"],
        "binder": launch.get("binderhub_url"),  # None: no Binder button (_config.yml says why)
        "colab": launch["colab_url"],
        "launch": source.endswith(".ipynb"),
    }


def _fail_with(report: rendered_book.PageReport) -> None:
    if report.problems:
        pytest.fail(f"{len(report.problems)} problem(s) on {report.url}:\n- " + "\n- ".join(report.problems),
                    pytrace=False)


@pytest.mark.parametrize("docname", TOC_FILES)
def test_toc_page(docname, site, browser_context):
    base_url, links = site
    source = _source(docname)
    report = rendered_book.check_page(
        browser_context, base_url + docname + ".html", links,
        screenshot=SCREENSHOTS / f"{docname}.png", expected_links=_expected_links(source))
    _fail_with(report)
    # not vacuous: the page was really inspected and has a title
    assert report.facts["title"], f"{docname}: the page has no title"


@pytest.mark.parametrize("page", [f"{docname}.html" for docname in TOC_FILES] + EXTRA_PAGES)
def test_page_at_phone_width(page, site, phone_context):
    """The same page on a phone (390 x 844): it must not scroll sideways (rendered_book.PHONE)."""
    base_url, links = site
    report = rendered_book.check_page(phone_context, base_url + page, links,
                                      screenshot=SCREENSHOTS / "phone" / page.replace(".html", ".png"), phone=True)
    _fail_with(report)
    assert report.facts["viewportWidth"] <= rendered_book.PHONE["viewport"]["width"], "not laid out at phone width"


def test_bibliography_labels_are_the_citation_text(site, browser_context):
    """Each bibliography entry is labelled with the text the chapters cite it by: every citation
    link's text equals the label of the entry it links to (author-year, book_ext/author_year_labels.py)."""
    base_url, _ = site
    pages = {base_url + f"{docname}.html": rendered_book.citation_facts(browser_context, base_url + f"{docname}.html")
             for docname in TOC_FILES}
    problems = rendered_book.citation_problems(pages)
    if problems:
        pytest.fail(f"{len(problems)} citation problem(s):\n- " + "\n- ".join(problems), pytrace=False)
    # not vacuous: entries were found, and citations to them
    entries = sum(len(facts["labels"]) for facts in pages.values())
    citations = sum(link["citation"] for facts in pages.values() for link in facts["links"])
    assert entries >= 10 and citations >= entries, f"{entries} entries, {citations} citations"


@pytest.mark.parametrize("page", EXTRA_PAGES)
def test_sphinx_page(page, site, browser_context):
    base_url, links = site
    report = rendered_book.check_page(browser_context, base_url + page, links,
                                      screenshot=SCREENSHOTS / page.replace(".html", ".png"))
    _fail_with(report)


def test_every_built_page_is_checked_or_redirects(site):
    """No page of the build escapes the checks above: the rest are redirects that resolve."""
    base_url, links = site
    checked = {f"{docname}.html" for docname in TOC_FILES} | set(EXTRA_PAGES)
    built = {p.relative_to(BOOK_HTML).as_posix() for p in BOOK_HTML.rglob("*.html")
             if not p.relative_to(BOOK_HTML).parts[0].startswith("_")}
    assert checked <= built, f"pages in _toc.yml that were not built: {sorted(checked - built)}"
    for page in sorted(built - checked):
        target = rendered_book.redirect_target(BOOK_HTML / page)
        assert target, f"{page} is built but neither in _toc.yml nor a redirect: add it to the checks"
        url = rendered_book.urllib.parse.urljoin(base_url + page, target)
        problem = links.problem(url)
        assert problem is None, f"{page} redirects to {target}: {problem}"
