"""The rendered book checked the way a reader sees it: every page opened in headless Chromium.

Used by ``test_rendered_book.py`` (on the book built from the stored notebook outputs by
``make html-stored``) and by ``test_checker.py`` (on small broken and healthy pages made on the
spot, which shows that each check can fail). Nothing here knows about one particular chapter.

What one page must pass (``check_page``):

- it loads (HTTP 200) with no console error, no uncaught exception, no failed request, and no
  request leaving this machine: the book is read offline, so everything it needs is in the build
  (the server sees only 127.0.0.1; any other host is refused and reported);
- MathJax typeset every equation: each ``.math`` element Sphinx wrote holds an ``mjx-container``,
  MathJax reported no TeX error (``mjx-merror``), and no raw TeX (``$$``, ``\\begin{``, ``\\(`` ...)
  is left in the visible text outside code;
- every ``<img>`` loaded (``naturalWidth > 0``) and has alt text that describes it: present,
  non-empty, and not just the image's file name (what myst-nb writes when a notebook cell gives none);
  and it is not shrunk below ``MIN_IMAGE_SCALE`` of the width it was drawn for to fit the column
  (its text would be too small to read); a high-density PNG's given width, half its pixel width,
  is the width it was drawn for; and it keeps its aspect ratio (not squeezed by a fixed height);
- every link inside the book resolves: HTTP 200 from the local server and, for ``page#anchor``,
  an element with that id on the target page;
- nothing is wider than the page. The width policy, at a 1280-pixel-wide window (article column
  about 690 px; ``_static/custom.css`` does the styling side):

  * the page never scrolls sideways, and no element sticks out of the article column;
  * prose, tables, figures and display equations (break a long one with ``\\begin{aligned}``) fit
    the column: none needs a horizontal scrollbar;
  * source code is never wrapped (a continuation at column 0 would read as Python's indentation): a
    code box whose lines are at most ``CODE_COLUMNS`` characters (the chapters' ruff line length)
    must fit the column; one with a longer line (the source's code quoted as printed) may scroll;
  * a printed cell output fits the column as printed (measured at its natural width, 13 px
    monospace: about 84 characters). Fix a wider one in the notebook by printing narrower. When its
    lines read left to right (prose, a dict or module repr, a warning text, one measurement per line,
    never a table whose columns continue past the wrap), the cell may carry the ``wrap-output`` tag
    instead, and the CSS wraps those lines like a sentence; a tag on an output that already fits is
    reported, so the tag stays a deliberate exception;
  * the only box allowed to scroll sideways is the traceback of a must-raise cell (tag
    ``raises-exception``): Python prints it as it is, so keep it short where you can (a helper
    that raises at the top level gives a short traceback);
  * a box that clips what does not fit (``overflow: hidden``, as the dropdown hints do) must not
    cut anything off (math aside: the theme's inline-math box clips its glyphs' overhang);

  and at a phone's width (``PHONE``, 390 x 844, ``check_page(..., phone=True)``), where no printed
  output of 84 characters can fit: the page never scrolls sideways, the article column fits the
  window, and nothing sticks out of the column or is cut off, but a box may scroll sideways inside
  itself (printed outputs, code, tables, display equations: the reader swipes that box, not the
  page). Long words and inline code wrap there (``_static/custom.css``);
- launch (Colab, and Binder when one is configured) and repository buttons point at this page's
  source file in the repository on the configured branch (``expected_links``); with no Binder
  configured there is no Binder button.

A screenshot of the whole page is saved for a person to look at.

Across pages (``citation_facts`` per page, ``citation_problems`` over all of them): every citation
link shows the label of the bibliography entry it links to (the author-year text, e.g. "Jacob et
al., 2018"), no two entries share a label, and every entry is cited.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags that make Chromium work on a machine without internet and without a display. Without the
# background-networking ones it tries to reach update and sync services and logs refused connections.
# Playwright adds --headless itself and gives each launch a fresh temporary --user-data-dir.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# A laptop-sized window: the layout a reader gets with the sidebar and the page's table of contents.
VIEWPORT = {"width": 1280, "height": 900}
# A phone held upright (390 x 844 CSS pixels, an iPhone 12 to 15): no sidebars, the article is the
# whole width. `is_mobile` lays the page out at its meta viewport width, as a phone does. One device
# pixel per CSS pixel (phones have 3; the layout is the same) keeps the full-page screenshots small.
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 1, "is_mobile": True,
         "has_touch": True}
# Bounded but generous: the machine may be busy. Milliseconds.
TIMEOUT_MS = int(os.environ.get("BROWSER_TIMEOUT_MS", "60000"))
LOCAL_HOSTS = {"127.0.0.1"}
# A figure shown at less than this fraction of its pixel width has its labels shrunk below ~8px:
# matplotlib's 10-point text is 14 px at the notebook's 100 dpi.
MIN_IMAGE_SCALE = 0.6
# The chapters' code line length (chapters/ruff.toml): code of this width fits the article column.
CODE_COLUMNS = 88


# ---------------------------------------------------------------------------------------------
# A loopback web server for one folder, so pages behave as deployed (not file://).

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # The browser drops connections it no longer needs (a tab closed mid-transfer): not a failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1 at an ephemeral port; yields the base URL (ends in /)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"directory must be an existing folder, got {str(directory)!r}")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# Chromium through Playwright's Python package, using Debian's chromium (never `playwright install`).

@contextlib.contextmanager
def launch_browser():
    """Yields a Playwright browser: headless Debian Chromium. Open pages in ``new_context(browser)``."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(
            f"Chromium not found at {CHROMIUM} (set CHROMIUM=...); `make check-html` installs "
            "Debian's chromium package when it is missing")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


def new_context(browser, device: dict | None = None):
    """A fresh browser context (own profile) with the book viewport, or a ``device`` (``PHONE``)."""
    context = browser.new_context(**(device or {"viewport": VIEWPORT}), service_workers="block")
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


@contextlib.contextmanager
def open_browser(device: dict | None = None):
    """Yields a Playwright browser context: headless Debian Chromium, fresh profile, book viewport
    (or ``device``)."""
    with launch_browser() as browser:
        context = new_context(browser, device)
        try:
            yield context
        finally:
            context.close()


# ---------------------------------------------------------------------------------------------
# Links inside the book: fetched once each from the local server.

class _IdCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value or "")


# The server is on this machine: never route its URLs through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class LinkChecker:
    """Fetches internal URLs (cached) and says what is wrong with one, or None."""
    timeout_s: float = TIMEOUT_MS / 1000
    _status: dict = field(default_factory=dict)
    _ids: dict = field(default_factory=dict)

    def _fetch(self, url: str) -> None:
        if url in self._status:
            return
        try:
            with _NO_PROXY.open(url, timeout=self.timeout_s) as response:
                self._status[url] = response.status
                kind = response.headers.get_content_type()
                body = response.read() if kind == "text/html" else b""
        except urllib.error.HTTPError as error:
            self._status[url] = error.code
            return
        except OSError as error:
            self._status[url] = f"unreachable ({error})"
            return
        collector = _IdCollector()
        collector.feed(body.decode("utf-8", errors="replace"))
        self._ids[url] = collector.ids

    def problem(self, href: str) -> str | None:
        url, _, fragment = href.partition("#")
        self._fetch(url)
        status = self._status[url]
        if status != 200:
            return f"HTTP {status}"
        fragment = urllib.parse.unquote(fragment)
        if fragment and url in self._ids and fragment not in self._ids[url]:
            return f"no element with id {fragment!r} on the target page"
        return None


# ---------------------------------------------------------------------------------------------
# One page.

# Raw TeX that MathJax should have replaced. Looked for in visible text outside code, pre and
# MathJax's own output: display delimiters, environments, the inline delimiters Sphinx writes,
# and a $...$ pair holding a TeX command.
RAW_TEX = re.compile(r"\$\$|\\begin\{|\\end\{|\\\(|\\\)|\\\[|\\\]|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")

_PAGE_FACTS_JS = r"""
async ({waitMs, phone, codeColumns}) => {
  // Waits are bounded: a promise that never settles is reported, not waited on forever.
  const timeout = () => new Promise(done => setTimeout(() => done("timeout"), waitMs));
  // Let MathJax finish: it loads deferred and typesets after the page is ready.
  let mathjax = "absent";
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    mathjax = await Promise.race([window.MathJax.startup.promise.then(() => "typeset"), timeout()]);
  }
  // Let every image settle (loaded or failed).
  const images = Array.from(document.images);
  const settled = await Promise.race([Promise.all(images.map(img => img.complete ? null :
    new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); }))),
    timeout()]);
  const imagesTimedOut = settled === "timeout";

  const describe = el => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    if (typeof el.className === "string" && el.className.trim())
      s += "." + el.className.trim().split(/\s+/).slice(0, 3).join(".");
    const text = (el.innerText || el.textContent || "").trim().replace(/\s+/g, " ");
    return text ? `${s} "${Array.from(text).slice(0, 60).join("")}"` : s;  // whole characters
  };

  // Math: every element Sphinx marked as math must hold MathJax output.
  const mathElements = Array.from(document.querySelectorAll(".math"));
  const untypeset = mathElements.filter(el => !el.querySelector("mjx-container"))
    .map(el => (el.textContent || "").trim().slice(0, 80));
  const mathErrors = Array.from(document.querySelectorAll("mjx-merror"))
    .map(el => el.getAttribute("data-mjx-error") || (el.textContent || "").slice(0, 80));

  // Visible text outside code and MathJax output (for raw TeX).
  const skip = "script, style, pre, code, textarea, mjx-container, mjx-assistive-mml, noscript, template";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip)) continue;
    if (!parent.checkVisibility()) continue;
    texts.push(node.textContent);
  }

  // Width (the policy is in the module docstring). A printed output is measured at its natural
  // width (white-space: pre, as Python printed it): untagged, it must fit the article column; in a
  // `wrap-output` cell it is allowed to wrap, and the tag must be needed. A traceback of a
  // must-raise cell may scroll in its own box. Everything else must neither need a horizontal
  // scrollbar nor stick out of the article column.
  const root = document.documentElement;
  const article = document.querySelector("article.bd-article") || document.querySelector("article")
    || document.querySelector("main") || document.body;
  const box = article.getBoundingClientRect();
  const tooWide = [];
  const judged = new Set();
  let scrollingTracebacks = 0;
  let scrollingBoxes = 0;
  let scrollingCode = 0;  // code boxes with a line longer than codeColumns, which may scroll
  const cutOff = new Set();  // boxes already reported for hiding part of their content
  if (phone && (box.left < -1 || box.right > root.clientWidth + 1))
    tooWide.push(`${describe(article).split(" ")[0]}: the article column (${Math.round(box.left)}..` +
      `${Math.round(box.right)}px) is wider than the ${root.clientWidth}px window`);
  const wrapNeeded = new Map();  // wrap-output cell -> its widest output at natural width
  // At phone width (`phone`) only the page and the article column are judged: a printed output, code
  // or a table may then scroll sideways inside its own box (desktop judges those).
  for (const pre of phone ? [] : article.querySelectorAll(".cell_output pre")) {
    if (!pre.checkVisibility()) continue;
    const traceback = pre.closest(".output.traceback");
    if (traceback) {
      if (!pre.closest(".tag_raises-exception")) continue;  // judged below like any other box
      judged.add(pre);
      if (pre.scrollWidth > pre.clientWidth + 1) scrollingTracebacks += 1;
      continue;
    }
    judged.add(pre);
    const saved = pre.style.whiteSpace;
    pre.style.whiteSpace = "pre";
    const natural = pre.scrollWidth, width = pre.clientWidth;
    pre.style.whiteSpace = saved;
    const wrapCell = pre.closest(".tag_wrap-output");
    if (!wrapCell && natural > width + 1)
      tooWide.push(`${describe(pre)}: printed output is ${natural}px wide in a ${width}px column: ` +
        "print it narrower, or tag the cell wrap-output if its lines are prose or a repr (never columns)");
    if (wrapCell) {
      const need = wrapNeeded.get(wrapCell) || { first: pre, widest: 0, width };
      need.widest = Math.max(need.widest, natural);
      wrapNeeded.set(wrapCell, need);
      if (pre.scrollWidth > pre.clientWidth + 1)
        tooWide.push(`${describe(pre)}: tagged wrap-output but does not wrap ` +
          `(content ${pre.scrollWidth}px in ${pre.clientWidth}px)`);
    }
  }
  // the tag is needed when at least one output of its cell would not fit unwrapped
  for (const need of wrapNeeded.values()) {
    if (need.widest <= need.width + 1)
      tooWide.push(`${describe(need.first)}: the cell is tagged wrap-output but its outputs fit ` +
        `(widest ${need.widest}px in ${need.width}px): remove the tag`);
  }
  for (const el of article.querySelectorAll("*")) {
    if (judged.has(el) || !el.checkVisibility()) continue;
    const style = getComputedStyle(el);
    const scrolls = ["auto", "scroll"].includes(style.overflowX);
    if (scrolls && el.scrollWidth > el.clientWidth + 1) {
      if (!phone && el.matches("div.highlight pre") && !el.closest(".cell_output")) {
        const longest = Math.max(...el.textContent.split("\n").map(line => line.length));
        if (longest <= codeColumns)
          tooWide.push(`${describe(el)}: code of at most ${codeColumns} characters a line needs ` +
            `a horizontal scrollbar (content ${el.scrollWidth}px in ${el.clientWidth}px)`);
        else
          scrollingCode += 1;
        continue;
      }
      if (!phone) {
        tooWide.push(`${describe(el)} needs a horizontal scrollbar ` +
          `(content ${el.scrollWidth}px in ${el.clientWidth}px)`);
        continue;
      }
      scrollingBoxes += 1;  // allowed on a phone, if the box itself fits the column (below)
    }
    // an element inside a box that clips or scrolls is that box's business, judged above
    let clipper = null;
    for (let a = el.parentElement; a && a !== article; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== "visible") { clipper = a; break; }
    }
    if (clipper) {
      // A box that scrolls shows all of its content; one that clips (overflow: hidden, as
      // sphinx-togglebutton's dropdowns do) must not cut text off. Math is the theme's and
      // MathJax's business (an inline formula's box clips its glyphs' overhang by design).
      if (["hidden", "clip"].includes(getComputedStyle(clipper).overflowX) && !cutOff.has(clipper)
          && !el.closest(".math, mjx-container")) {
        const c = clipper.getBoundingClientRect(), r = el.getBoundingClientRect();
        if (r.width > 0 && (r.right > c.right + 2 || r.left < c.left - 2)) {
          cutOff.add(clipper);
          tooWide.push(`${describe(el)} is cut off: it reaches ${Math.round(r.left)}..${Math.round(r.right)}px ` +
            `in ${describe(clipper).split(" ")[0]} (${Math.round(c.left)}..${Math.round(c.right)}px), ` +
            "which hides what does not fit");
        }
      }
      continue;
    }
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > box.right + 2 || r.left < box.left - 2))
      tooWide.push(`${describe(el)} sticks out of the article column ` +
        `(${Math.round(r.left)}..${Math.round(r.right)}px vs ${Math.round(box.left)}..${Math.round(box.right)}px)`);
  }

  return {
    title: document.title,
    mathjax,
    imagesTimedOut,
    mathCount: mathElements.length,
    mjxCount: document.querySelectorAll("mjx-container").length,
    untypeset,
    mathErrors,
    visibleText: texts.join(" "),
    pageScrollWidth: root.scrollWidth,
    viewportWidth: root.clientWidth,
    tooWide,
    scrollingTracebacks,
    scrollingBoxes,
    scrollingCode,
    images: images.map(img => ({
      src: img.getAttribute("src") || "", url: img.currentSrc || img.src,
      alt: img.getAttribute("alt"), complete: img.complete, naturalWidth: img.naturalWidth,
      // the width the figure was drawn for: a high-density ("retina") PNG is given half its pixel
      // width (myst-nb writes it as style="width: ...px")
      designWidth: parseFloat(img.style.width) || Number(img.getAttribute("width")) || img.naturalWidth,
      shownWidth: img.getBoundingClientRect().width, shownHeight: img.getBoundingClientRect().height,
      naturalHeight: img.naturalHeight,
    })),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => ({
      href: a.href, raw: a.getAttribute("href"), text: (a.textContent || "").trim().slice(0, 60),
      button: !!a.closest(".article-header-buttons, .header-article-items, .bd-header-article"),
    })),
  };
}
"""


@dataclass
class PageReport:
    url: str
    problems: list[str]
    facts: dict


def _alt_problem(img: dict) -> str | None:
    alt = img["alt"]
    if alt is None:
        return "has no alt attribute"
    if not alt.strip():
        return "has empty alt text"
    name = Path(urllib.parse.urlparse(img["src"]).path).name
    if Path(alt.strip()).name == name or re.fullmatch(r"\S+\.(png|jpe?g|gif|svg|webp)", alt.strip()):
        return f"has its file name as alt text ({alt!r}): describe the figure instead"
    return None


def check_page(context, url: str, links: LinkChecker, screenshot: Path | None = None,
               expected_links: dict | None = None, phone: bool = False) -> PageReport:
    """Open ``url`` in a new tab of ``context`` and return every problem found on it.

    ``expected_links`` (optional) says where this page's buttons must point:
    ``{"source": "chapters/x.ipynb", "repository": "https://github.com/o/r", "branch": "main",
    "binder": "https://mybinder.org", "colab": "https://colab.research.google.com",
    "launch": True}`` (``launch``: whether Binder/Colab buttons must be there, i.e. a notebook;
    ``"binder": None``: no Binder is configured, so no page may have a Binder button).

    ``phone``: the page is open in a phone-sized ``context`` (``PHONE``) and only what depends on
    the window's width is judged, with the phone's width policy (module docstring): the page loads
    without errors and nothing makes it wider than the window. Content (math, images, links,
    buttons) is the same at every width and is judged by the desktop check.
    """
    problems: list[str] = []
    page = context.new_page()
    base = urllib.parse.urlparse(url)

    def on_console(msg):
        if msg.type == "error":
            where = msg.location.get("url", "") if msg.location else ""
            problems.append(f"console error: {msg.text}" + (f" (at {where})" if where else ""))

    def on_request_failed(request):
        if urllib.parse.urlparse(request.url).hostname in LOCAL_HOSTS:
            problems.append(f"request failed: {request.url} ({request.failure})")

    def on_response(response):
        if response.status >= 400:
            problems.append(f"HTTP {response.status} for {response.url}")

    def route(route_):
        host = urllib.parse.urlparse(route_.request.url).hostname
        if host in LOCAL_HOSTS or route_.request.url.startswith(("data:", "blob:")):
            route_.continue_()
        else:
            problems.append(f"requests an outside resource (the book must work offline): {route_.request.url}")
            route_.abort("blockedbyclient")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught exception: {error}"))
    page.on("requestfailed", on_request_failed)
    page.on("response", on_response)
    page.route("**/*", route)
    try:
        response = page.goto(url, wait_until="load")
        if response is None or response.status != 200:
            problems.append(f"page itself: HTTP {response.status if response else 'no response'}")
        facts = page.evaluate(_PAGE_FACTS_JS, {"waitMs": TIMEOUT_MS // 2, "phone": phone,
                                                "codeColumns": CODE_COLUMNS})
        if page.url.split("#")[0] != url.split("#")[0]:
            problems.append(f"page navigated away to {page.url}: the checks ran on that page instead")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
    except PlaywrightError as error:  # e.g. the page navigated away, or a timeout
        problems.append(f"page could not be inspected: {error}")
        return PageReport(url=url, problems=problems, facts={})
    finally:
        page.close()

    # math
    if facts["mathjax"] == "timeout":
        problems.append(f"MathJax did not finish typesetting within {TIMEOUT_MS // 2000} s")
    elif facts["mathCount"] and facts["mathjax"] != "typeset":
        problems.append(f"{facts['mathCount']} math elements but MathJax did not load")
    if facts["imagesTimedOut"]:
        problems.append(f"images still loading after {TIMEOUT_MS // 2000} s")
    if not phone:
        problems.extend(_content_problems(facts, base, links, expected_links))

    # width
    if facts["pageScrollWidth"] > facts["viewportWidth"] + 1:
        problems.append(f"page scrolls sideways: {facts['pageScrollWidth']}px wide in a "
                        f"{facts['viewportWidth']}px window")
    problems.extend(facts["tooWide"])
    return PageReport(url=url, problems=list(dict.fromkeys(problems)), facts=facts)  # each once


def _content_problems(facts: dict, base: urllib.parse.ParseResult, links: LinkChecker,
                      expected_links: dict | None) -> list[str]:
    """What is wrong with the page's math, images, links and buttons (the same at every width)."""
    problems = []
    for tex in facts["untypeset"]:
        problems.append(f"equation not typeset by MathJax: {tex!r}")
    for error in facts["mathErrors"]:
        problems.append(f"MathJax error: {error}")
    covered = -1  # report overlapping matches (e.g. "\\begin{" inside "$$ ... $$") once
    for match in RAW_TEX.finditer(facts["visibleText"]):
        if match.start() < covered:
            continue
        start, covered = max(0, match.start() - 30), match.end() + 30
        problems.append(f"raw TeX left in the visible text: {facts['visibleText'][start:covered]!r}")

    # images
    for img in facts["images"]:
        if not img["complete"] or img["naturalWidth"] == 0:
            problems.append(f"image did not load: {img['src']}")
        alt = _alt_problem(img)
        if alt:
            problems.append(f"image {img['src']} {alt}")
        if img["naturalWidth"] and img.get("naturalHeight") and img["shownWidth"] and img.get("shownHeight"):
            stretch = (img["shownWidth"] / img["shownHeight"]) / (img["naturalWidth"] / img["naturalHeight"])
            if abs(stretch - 1) > 0.05:
                problems.append(f"image {img['src']} is distorted: shown {img['shownWidth']:.0f}x"
                                f"{img['shownHeight']:.0f}, drawn {img['naturalWidth']}x{img['naturalHeight']}")
        design = img.get("designWidth") or img["naturalWidth"]
        if design and img["shownWidth"] and img["shownWidth"] < MIN_IMAGE_SCALE * design:
            problems.append(f"image {img['src']} is shrunk to {img['shownWidth'] / design:.0%} of its "
                            f"{design}px width to fit: its text is too small to read; make the "
                            f"figure narrower (matplotlib figsize)")

    # links inside the book
    seen = set()
    for link in facts["links"]:
        target = urllib.parse.urlparse(link["href"])
        if (target.scheme, target.netloc) != (base.scheme, base.netloc) or link["href"] in seen:
            continue
        seen.add(link["href"])
        problem = links.problem(link["href"])
        if problem:
            problems.append(f"dead link {link['raw']!r} ({link['text']!r}): {problem}")

    if expected_links is not None:
        problems.extend(_button_problems(facts["links"], expected_links))
    return problems


def _button_problems(links: list[dict], expected: dict) -> list[str]:
    """Launch and repository buttons must point at this page's source on the configured branch."""
    problems = []
    repo = expected["repository"].rstrip("/")
    owner_repo = urllib.parse.urlparse(repo).path.strip("/")
    source, branch = expected["source"], expected["branch"]
    hrefs = [link["href"] for link in links if link["button"]]  # the page's header buttons
    binder_prefix = (expected["binder"] or "https://mybinder.org").rstrip("/") + "/"
    colab_prefix = expected["colab"].rstrip("/") + "/"
    binder = [h for h in hrefs if h.startswith(binder_prefix)]
    colab = [h for h in hrefs if h.startswith(colab_prefix)]
    want_binder = f"{binder_prefix}v2/gh/{owner_repo}/{branch}?urlpath=lab/tree/{source}"
    want_colab = f"{colab_prefix}github/{owner_repo}/blob/{branch}/{source}"
    if not expected["binder"] and binder:
        problems.append(f"a Binder button, though no Binder is configured: {binder[0]}")
    if expected["launch"]:
        if expected["binder"] and want_binder not in binder:
            problems.append(f"Binder button should be {want_binder}, found {binder or 'none'}")
        if want_colab not in colab:
            problems.append(f"Colab button should be {want_colab}, found {colab or 'none'}")
    for href in binder + colab:
        if href not in (want_binder, want_colab):
            problems.append(f"launch button points elsewhere than {source} on {branch}: {href}")
    if repo not in hrefs:
        problems.append(f"no repository button linking to {repo}")
    for href in hrefs:
        # any link to a file of the repository (source, edit) must be this page's, on the branch
        match = re.match(re.escape(repo) + r"/(blob|edit|tree|raw)/([^/]+)/(.+)$", href)
        if match and (match[2] != branch or match[3] != source):
            problems.append(f"repository link points at {match[3]} on {match[2]}, not {source} on {branch}: {href}")
    return problems


_REFRESH = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["']\d+;\s*url=([^"']+)["']""", re.I)


def redirect_target(html_file: Path) -> str | None:
    """The target of a page that is only a ``<meta http-equiv="Refresh">`` redirect, else None."""
    match = _REFRESH.search(Path(html_file).read_text(encoding="utf-8", errors="replace")[:2000])
    return match[1] if match else None


# ---------------------------------------------------------------------------------------------
# Citations and the bibliography (sphinxcontrib-bibtex): a citation's text is its entry's label.

_CITATION_FACTS_JS = r"""
() => {
  const squash = s => (s || "").replace(/\s+/g, " ").trim();
  // each bibliography entry's label without Sphinx's brackets (and backlinks, if any)
  const labels = {};
  for (const entry of document.querySelectorAll(".citation[id]")) {
    const label = entry.querySelector(":scope > .label");
    if (!label) continue;
    const copy = label.cloneNode(true);
    copy.querySelectorAll(".fn-bracket, .backrefs").forEach(part => part.remove());
    labels[entry.id] = squash(copy.textContent);
  }
  // every link with a fragment, as the reader sees its text; `citation`: written by a {cite} role
  const links = Array.from(document.querySelectorAll("a[href*='#']")).map(a => ({
    href: a.href, text: squash(a.innerText || a.textContent), citation: !!a.closest(".bibtex-citation"),
  }));
  return { labels, links };
}
"""


def citation_facts(context, url: str) -> dict:
    """The bibliography entries (``labels``: id -> label text) and the links with a fragment
    (``links``: href, text, citation) of the page at ``url``, opened in a new tab of ``context``."""
    page = context.new_page()

    def route(route_):
        host = urllib.parse.urlparse(route_.request.url).hostname
        if host in LOCAL_HOSTS or route_.request.url.startswith(("data:", "blob:")):
            route_.continue_()
        else:  # check_page reports these; here they would only slow the page down
            route_.abort("blockedbyclient")

    page.route("**/*", route)
    try:
        page.goto(url, wait_until="load")
        return page.evaluate(_CITATION_FACTS_JS)
    finally:
        page.close()


def _target(href: str) -> tuple[str, str]:
    url, fragment = urllib.parse.urldefrag(href)
    return url, urllib.parse.unquote(fragment)


def citation_problems(pages: dict[str, dict]) -> list[str]:
    """What is wrong with the citations of ``pages`` (url -> ``citation_facts``): every link to a
    bibliography entry must show exactly that entry's label (author-year: "Jacob et al., 2018" in
    the text, "[Jacob et al., 2018]" on the bibliography page), no two entries may share a label,
    every citation must link to an entry, and every entry must be cited from one of the pages (the
    ``{bibliography}`` directive lists cited entries only, so an uncited one means a page is
    missing from ``pages``)."""
    problems = []
    entries: dict[tuple[str, str], str] = {}
    for url, facts in pages.items():
        by_label: dict[str, list[str]] = {}
        for entry_id, label in facts["labels"].items():
            entries[_target(url)[0], entry_id] = label
            by_label.setdefault(label, []).append(entry_id)
            if not label:
                problems.append(f"{url}#{entry_id}: bibliography entry without a label")
        for label, ids in by_label.items():
            if label and len(ids) > 1:
                problems.append(f"{url}: entries {', '.join('#' + i for i in ids)} share the label {label!r}: "
                                "their citations cannot be told apart")
    if not entries:
        return ["no bibliography entry (.citation with a label) on any page"]
    cited = set()
    for url, facts in pages.items():
        for link in facts["links"]:
            target = _target(link["href"])
            if target in entries:
                cited.add(target)
                if link["text"] != entries[target]:
                    problems.append(f"{url}: citation {link['text']!r} links to the bibliography entry labelled "
                                    f"{entries[target]!r} ({target[0]}#{target[1]})")
            elif link["citation"]:
                problems.append(f"{url}: citation {link['text']!r} links to {link['href']}, "
                                "which is no bibliography entry")
    for target in sorted(set(entries) - cited):
        problems.append(f"bibliography entry {entries[target]!r} ({target[0]}#{target[1]}) is cited from no page")
    return problems
