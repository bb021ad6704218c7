"""The browser checks are not vacuous: a deliberately broken page fails each of them, and a
healthy page with the same parts passes (so the failures come from the defects, not the set-up)."""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest

import rendered_book
from book_ext import offline_mathjax

ROOT = Path(__file__).resolve().parents[2]


def _png(width: int, height: int) -> bytes:
    """A real PNG of white pixels, so "the image loaded" is tested on an actual decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\xff\xff\xff" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


REPO = "https://github.com/example-owner/example-book"
EXPECTED = {"source": "chapters/page.ipynb", "repository": REPO, "branch": "main",
            "binder": "https://mybinder.org", "colab": "https://colab.research.google.com",
            "launch": True}

HEAD = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ margin: 0; width: 1200px; }} article {{ width: 700px; margin-left: 250px; }}
pre {{ overflow-x: auto; font-family: monospace; }} img {{ max-width: 100%; }}</style>
<link rel="stylesheet" href="_static/custom.css">
{scripts}</head><body>
<div class="article-header-buttons">
  <a href="{repo}">repository</a>
  <a href="https://mybinder.org/v2/gh/example-owner/example-book/main?urlpath=lab/tree/{binder_path}">Binder</a>
  <a href="https://colab.research.google.com/github/example-owner/example-book/blob/main/chapters/page.ipynb">Colab</a>
</div>
<article class="bd-article">
"""
MATHJAX = '<script defer src="_static/mathjax/tex-mml-chtml.js"></script>'


def _cell(tags: str, kind: str, text: str) -> str:
    """A code cell with one output, in the HTML myst-nb writes (tags become tag_* classes)."""
    classes = " ".join(f"tag_{tag}" for tag in tags.split())
    return (f'<div class="cell {classes} docutils container"><div class="cell_output docutils container">'
            f'<div class="output {kind}"><div class="highlight"><pre>{text}</pre></div></div></div></div>')


LONG_LINE = "accuracy 96.1%, " * 12  # about 190 characters: wider than the column at any font size

HEALTHY = HEAD.format(title="Healthy", scripts=MATHJAX, repo=REPO, binder_path="chapters/page.ipynb") + r"""
<h1 id="top">A healthy page</h1>
<p>Inline math <span class="math notranslate nohighlight">\(x^2 + 1\)</span> and a display equation:</p>
<div class="math notranslate nohighlight">\[\sum_{i=1}^{n} w_i x_i\]</div>
<img src="square.png" alt="A small white rectangle used as a test figure">
<img src="retina.png" style="width: 600px; height: 20px;" alt="A high-density test figure shown at half its pixels">
<p><a href="other.html#section">a link to a section</a> and <a href="#top">back to the top</a>.</p>
<pre>short code line</pre>
<div class="highlight"><pre>""" + "quoted_as_printed = 1  # " + "y" * 100 + """</pre></div>
""" + _cell("", "stream", "a printed line that fits") \
    + _cell("wrap-output", "stream", LONG_LINE) \
    + _cell("raises-exception", "traceback", "Traceback " + "-" * 300) + """
</article></body></html>
"""

BROKEN = HEAD.format(title="Broken", scripts="", repo=REPO, binder_path="chapters/elsewhere.ipynb") + r"""
<h1>A broken page</h1>
<p>Unrendered display math: $$x^2$$ and an environment \begin{aligned} a \end{aligned}.</p>
<p>A math element MathJax never saw: <span class="math notranslate nohighlight">\(y\)</span></p>
<img src="missing.png" alt="A figure that is not there">
<img src="square.png">
<img src="square.png" alt="square.png">
<img src="wide.png" alt="A figure twice as wide as the column">
<img src="square.png" style="width: 40px; height: 60px;" alt="A test figure squeezed by a fixed height">
<p><a href="nowhere.html">a dead link</a>, <a href="other.html#no-such-section">a dead anchor</a></p>
<div style="width: 1500px">a block wider than the article</div>
<pre style="overflow-x: auto">""" + "x" * 400 + """</pre>
<div class="highlight" style="width: 300px"><pre>""" + "short = 1  # " + "z" * 70 + """</pre></div>
<div style="overflow: hidden; width: 300px"><span style="display: inline-block; width: 500px">cut</span></div>
""" + _cell("", "stream", "untagged " + LONG_LINE) \
    + _cell("wrap-output", "stream", "a tagged line that fits") \
    + _cell("", "traceback", "untagged Traceback " + "-" * 300) + """
<img src="https://fonts.example.invalid/font.png" alt="an outside resource">
<script>console.error("a console error");</script>
<script>undefinedFunction();</script>
</article></body></html>
"""


# At a phone's width (rendered_book.PHONE): a page laid out like the book's (article across the window,
# the theme's heading size, Sphinx's no-wrap words of inline code); without the book's stylesheet the
# healthy one scrolls sideways.
PHONE_HEAD = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body {{ margin: 0; font-size: 16px; }} article {{ margin: 0 16px; {article} }}
pre {{ overflow-x: auto; font-family: monospace; }} .dropdown {{ overflow: hidden; padding: 0 12px; }}
h2 {{ font-size: 34px; }} h2 code {{ display: inline-block; }} span.pre {{ white-space: nowrap; }}</style>
<link rel="stylesheet" href="_static/custom.css">
</head><body><article class="bd-article">
"""
LONG_CODE = ('<code class="docutils literal notranslate"><span class="pre">distiller.KnowledgeDistillationPolicy('
             'student,</span> <span class="pre">teacher,</span> <span class="pre">temperature)</span></code>')

PHONE_HEALTHY = PHONE_HEAD.format(title="Phone, healthy", article="") + f"""
<h2>With <code class="docutils literal notranslate"><span class="pre">torch.ao.quantization</span></code></h2>
<h2>Data parallelism with DistributedDataParallel</h2>
<p>Inline code longer than a phone's line: {LONG_CODE}, wrapped by the book's stylesheet.</p>
<div class="dropdown"><p>A hint that clips what does not fit: {LONG_CODE}</p></div>
""" + _cell("", "stream", LONG_LINE) + """
<div style="overflow-x: auto"><table><tr><td style="white-space: nowrap">""" + "a wide table cell " * 8 + """</td></tr>
</table></div>
</article></body></html>
"""

PHONE_BROKEN = PHONE_HEAD.format(title="Phone, broken", article="min-width: 420px;") + """
<h1>A page wider than a phone</h1>
<div style="width: 600px">a block wider than the window</div>
<div style="overflow-x: auto; width: 520px"><pre>a box that scrolls but is itself too wide</pre></div>
<div class="dropdown"><p><span style="white-space: nowrap">""" + "cut off " * 12 + """</span></p></div>
</article></body></html>
"""

# Citations (sphinxcontrib-bibtex's HTML): an entry on the bibliography page, cited from a chapter.
BIBLIOGRAPHY = """<!DOCTYPE html><html><head><title>Bibliography</title></head><body><article>
<div role="list" class="citation-list">
<div class="citation" id="id1" role="doc-biblioentry">
<span class="label"><span class="fn-bracket">[</span>Jacob et al., 2018<span class="fn-bracket">]</span></span>
<p>Benoit Jacob and others. Quantization. 2018.</p></div>
<div class="citation" id="id2" role="doc-biblioentry">
<span class="label"><span class="fn-bracket">[</span>PY10<span class="fn-bracket">]</span></span>
<p>Sinno Jialin Pan and Qiang Yang. A survey on transfer learning. 2010.</p></div>
</div></article></body></html>
"""
CITING = """<!DOCTYPE html><html><head><title>Chapter</title></head><body><article>
<p>As <span class="bibtex-citation">[<a class="reference internal" href="bibliography.html#id1">Jacob
<em>et al.</em>, 2018</a>]</span> showed, and <span class="bibtex-citation">[<a class="reference internal"
href="bibliography.html#id2">Pan and Yang, 2010</a>]</span> surveyed
(<span class="bibtex-citation">[<a href="bibliography.html#id9">Gone, 1999</a>]</span>).</p>
</article></body></html>
"""


@pytest.fixture()
def fixture_site(tmp_path):
    (tmp_path / "square.png").write_bytes(_png(40, 30))
    (tmp_path / "wide.png").write_bytes(_png(1400, 20))
    (tmp_path / "retina.png").write_bytes(_png(1200, 40))
    (tmp_path / "other.html").write_text(
        '<!DOCTYPE html><html><head><title>Other</title></head><body><article>'
        '<h2 id="section">Section</h2></article></body></html>', encoding="utf-8")
    (tmp_path / "healthy.html").write_text(HEALTHY, encoding="utf-8")
    (tmp_path / "broken.html").write_text(BROKEN, encoding="utf-8")
    (tmp_path / "phone-healthy.html").write_text(PHONE_HEALTHY, encoding="utf-8")
    (tmp_path / "phone-broken.html").write_text(PHONE_BROKEN, encoding="utf-8")
    (tmp_path / "bibliography.html").write_text(BIBLIOGRAPHY, encoding="utf-8")
    (tmp_path / "citing.html").write_text(CITING, encoding="utf-8")
    # the same offline MathJax the book ships (book_ext/offline_mathjax.py)
    shutil.copytree(offline_mathjax.ES5, tmp_path / "_static" / "mathjax", ignore=offline_mathjax._ignore)
    # and the book's own stylesheet, which wraps the outputs of `wrap-output` cells
    shutil.copy(ROOT / "_static" / "custom.css", tmp_path / "_static" / "custom.css")
    with rendered_book.serve(tmp_path) as base_url:
        yield base_url, tmp_path


def test_healthy_page_passes(fixture_site, browser_context):
    base_url, folder = fixture_site
    shot = folder / "shots" / "healthy.png"
    report = rendered_book.check_page(browser_context, base_url + "healthy.html", rendered_book.LinkChecker(),
                                      screenshot=shot, expected_links=EXPECTED)
    assert report.problems == []
    assert report.facts["mathjax"] == "typeset"
    assert report.facts["mathCount"] == 2 and report.facts["mjxCount"] == 2
    # the traceback of a must-raise cell scrolls in its box, and that alone is allowed
    assert report.facts["scrollingTracebacks"] == 1
    # and code with a line longer than CODE_COLUMNS (the source's code, quoted as printed)
    assert report.facts["scrollingCode"] == 1
    assert shot.is_file() and shot.read_bytes()[:4] == b"\x89PNG"


def test_broken_page_fails_every_check(fixture_site, browser_context):
    base_url, _ = fixture_site
    report = rendered_book.check_page(browser_context, base_url + "broken.html", rendered_book.LinkChecker(),
                                      expected_links=EXPECTED)
    text = "\n".join(report.problems)
    expected = {
        "raw TeX": "raw TeX left in the visible text",
        "raw $$": "$$x^2$$",
        "raw environment": "\\begin{aligned}",
        "math not typeset": "equation not typeset by MathJax: '\\\\(y\\\\)'",
        "MathJax missing": "math elements but MathJax did not load",
        "broken image": "image did not load: missing.png",
        "missing alt": "image square.png has no alt attribute",
        "file name as alt": "has its file name as alt text ('square.png')",
        "dead link": "dead link 'nowhere.html' ('a dead link'): HTTP 404",
        "dead anchor": "no element with id 'no-such-section'",
        "404 while loading": "HTTP 404 for " + base_url + "missing.png",
        "sticks out": "sticks out of the article column",
        "cut off": 'span "cut" is cut off: it reaches',
        "figure shrunk": "image wide.png is shrunk to 50% of its 1400px width to fit",
        "figure distorted": "image square.png is distorted: shown 40x60, drawn 40x30",
        "scrollbar": "needs a horizontal scrollbar",
        "short code scrolls": 'pre "short = 1 # zzz',
        "short code message": "code of at most 88 characters a line needs a horizontal scrollbar",
        "wide output": '"untagged accuracy 96.1%, accuracy 96.1%, accuracy 96.1%, acc": printed output is ',
        "needless tag": '"a tagged line that fits": the cell is tagged wrap-output but its outputs fit',
        "traceback outside a must-raise cell": 'pre "untagged Traceback -------',
        "outside request": "requests an outside resource (the book must work offline): https://fonts.example.invalid/font.png",
        "console error": "console error: a console error",
        "uncaught exception": "uncaught exception: ",
        "wrong Binder": "Binder button should be https://mybinder.org/v2/gh/example-owner/example-book/main?urlpath=lab/tree/chapters/page.ipynb",
        "Binder elsewhere": "launch button points elsewhere than chapters/page.ipynb on main",
    }
    missing = {name: needle for name, needle in expected.items() if needle not in text}
    assert not missing, f"the checker missed {sorted(missing)}; it reported:\n{text}"
    # raw TeX outside code only: the long <pre> line of x's is not TeX and was not reported as such
    assert "xxxxxxxx'" not in text.split("needs a horizontal scrollbar")[0]


def test_phone_width_healthy_page_passes(fixture_site, phone_context):
    """Long words and inline code wrap (the book's stylesheet), and boxes may scroll inside themselves."""
    base_url, folder = fixture_site
    shot = folder / "shots" / "phone.png"
    report = rendered_book.check_page(phone_context, base_url + "phone-healthy.html", rendered_book.LinkChecker(),
                                      screenshot=shot, phone=True)
    assert report.problems == []
    assert report.facts["viewportWidth"] == 390
    assert report.facts["scrollingBoxes"] >= 2  # the printed output and the table scroll in their boxes
    assert shot.is_file()


def test_phone_width_broken_page_fails(fixture_site, phone_context):
    base_url, _ = fixture_site
    report = rendered_book.check_page(phone_context, base_url + "phone-broken.html", rendered_book.LinkChecker(),
                                      phone=True)
    text = "\n".join(report.problems)
    expected = {
        "page scrolls": "page scrolls sideways:",
        "article too wide": "article: the article column (16..436px) is wider than the 390px window",
        "block sticks out": 'div "a block wider than the window" sticks out of the article column',
        "scrolling box too wide": 'div "a box that scrolls but is itself too wide" sticks out of the article column',
        "cut off": 'span "cut off cut off',
    }
    missing = {name: needle for name, needle in expected.items() if needle not in text}
    assert not missing, f"the checker missed {sorted(missing)}; it reported:\n{text}"


def test_citation_labels(fixture_site, browser_context):
    base_url, _ = fixture_site
    pages = {base_url + name: rendered_book.citation_facts(browser_context, base_url + name)
             for name in ("bibliography.html", "citing.html")}
    assert pages[base_url + "bibliography.html"]["labels"] == {"id1": "Jacob et al., 2018", "id2": "PY10"}
    assert rendered_book.citation_problems(pages) == [
        f"{base_url}citing.html: citation 'Pan and Yang, 2010' links to the bibliography entry labelled 'PY10' "
        f"({base_url}bibliography.html#id2)",
        f"{base_url}citing.html: citation 'Gone, 1999' links to {base_url}bibliography.html#id9, "
        "which is no bibliography entry",
    ]
    # an entry nobody cites, two entries with one label, and no bibliography at all
    facts = {"labels": {"a": "Han et al., 2015", "b": "Han et al., 2015"}, "links": []}
    problems = rendered_book.citation_problems({"http://h/bib.html": facts})
    assert problems[0] == "http://h/bib.html: entries #a, #b share the label 'Han et al., 2015': " \
                          "their citations cannot be told apart"
    assert "bibliography entry 'Han et al., 2015' (http://h/bib.html#a) is cited from no page" in problems
    assert rendered_book.citation_problems({"http://h/x.html": {"labels": {}, "links": []}}) == [
        "no bibliography entry (.citation with a label) on any page"]


def test_wrong_repository_link_is_reported():
    links = [{"href": REPO, "button": True},
             {"href": f"{REPO}/blob/dev/chapters/page.ipynb", "button": True},
             {"href": f"{REPO}/blob/main/helpers/data.py", "button": False}]  # in the text: allowed
    problems = rendered_book._button_problems(links, {**EXPECTED, "launch": False})
    assert problems == [f"repository link points at chapters/page.ipynb on dev, not chapters/page.ipynb "
                        f"on main: {REPO}/blob/dev/chapters/page.ipynb"]
    assert rendered_book._button_problems([], {**EXPECTED, "launch": False}) == [
        f"no repository button linking to {REPO}"]


def test_binder_buttons_only_where_binder_is_configured():
    colab = "https://colab.research.google.com/github/example-owner/example-book/blob/main/chapters/page.ipynb"
    binder = "https://mybinder.org/v2/gh/example-owner/example-book/main?urlpath=lab/tree/chapters/page.ipynb"
    links = [{"href": href, "button": True} for href in (REPO, colab)]
    without = {**EXPECTED, "binder": None}
    assert rendered_book._button_problems(links, without) == []
    assert rendered_book._button_problems(links + [{"href": binder, "button": True}], without) == [
        f"a Binder button, though no Binder is configured: {binder}"]
    assert rendered_book._button_problems(links, EXPECTED) == [
        f"Binder button should be {binder}, found none"]


def test_serve_rejects_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="directory must be an existing folder"):
        with rendered_book.serve(tmp_path / "absent"):
            pass

