# Two commands a newcomer needs (README): `make book` and `make test`. Both set everything up.
# Everything runs from the project's own virtual environment in .venv, created on first use and
# re-installed whenever requirements.txt or pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(shell find chapters -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort)
JB_FLAGS := -W -n --keep-going --all
# one run of one notebook may take this long under nbval before it is a failure
CELL_TIMEOUT := 600
# Progress bars off wherever outputs are stored or compared (helpers.training.PROGRESS_ENV): a person
# running a cell sees them, make execute, make book and nbval do not.
QUIET := BOOK_PROGRESS=0
# nbval as make nbval and make robustness run it; each adds its threads and workers
NBVAL := $(QUIET) $(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	--nbval-cell-timeout $(CELL_TIMEOUT)

.PHONY: setup book test lint unit nbval robustness html-stored check-html cjk-fonts execute lab bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -r requirements.txt
	touch $(STAMP)

## make book: execute every notebook from a fresh kernel and render the HTML into _build/html.
book: setup
	$(QUIET) $(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo "Open _build/html/index.html"

## make test: ruff (lint), unit tests of helpers/, nbval over every notebook, a -W build from stored
## outputs, and that build opened page by page in headless Chromium (check-html).
test: lint unit nbval html-stored check-html

## make lint: ruff over the code and the notebooks' cells (settings in pyproject.toml, [tool.ruff]);
## takes seconds, so make test runs it first. `$(BIN)/ruff check --fix ...` repairs import order.
lint: setup
	$(BIN)/ruff check helpers tests benchmarks book_ext chapters

# tests/browser/ needs the rendered book and Chromium: check-html runs it.
unit: setup
	$(BIN)/python -m pytest tests --ignore=tests/browser

# Stored outputs come from `make execute` (two threads, one notebook at a time); nbval checks them in
# another configuration on purpose: two notebooks at a time (pytest-xdist, one notebook per worker),
# one thread each, so each notebook shares the machine with a busy neighbour. A claim that held only
# where its output was stored fails here. It also halves the wall time on 2 cores.
nbval: setup
	OMP_NUM_THREADS=1 $(NBVAL) -n 2 --dist loadscope $(NOTEBOOKS)

## make robustness: nbval of every notebook in the other configurations a reader's machine may have,
## one notebook at a time with OMP_NUM_THREADS=2 and with 4, then, while another process keeps one
## core busy, make nbval's configuration and one notebook at a time with 2 threads that sleep while
## they wait (the remedy chapters/08_faq.md gives: spinning threads beside a busy core stall).
## Not part of make test: it takes several times as long as nbval.
robustness: setup
	OMP_NUM_THREADS=2 $(NBVAL) -p no:xdist $(NOTEBOOKS)
	OMP_NUM_THREADS=4 $(NBVAL) -p no:xdist $(NOTEBOOKS)
	$(BIN)/python -c 'while True: pass' & busy=$$!; \
		OMP_NUM_THREADS=1 $(NBVAL) -n 2 --dist loadscope $(NOTEBOOKS) && \
		OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(NBVAL) -p no:xdist $(NOTEBOOKS); \
		rc=$$?; kill $$busy; exit $$rc

# The book rendered from the outputs stored in the notebooks (no execution): catches broken
# cross-references, citations and math in seconds. Same _config.yml, execution turned off.
html-stored: setup
	rm -rf _build/stored  # no page left over from a file since renamed or removed
	@mkdir -p _build
	$(BIN)/python -c "import yaml; c = yaml.safe_load(open('_config.yml')); \
c['execute']['execute_notebooks'] = 'off'; yaml.safe_dump(c, open('_build/config-stored.yml', 'w'))"
	$(BIN)/jupyter-book build . --config _build/config-stored.yml --path-output _build/stored $(JB_FLAGS)

# Every page of the html-stored build opened in headless Chromium, as a reader sees it (console
# errors, equations typeset by MathJax, images and alt text, links, nothing wider than the page,
# launch and repository buttons, bibliography labels equal to the citations), at a desktop width and
# at a phone's 390 px; screenshots of each page go to _build/screenshots/ (phone/ for 390 px).
# Chromium is Debian's package, driven by Playwright's Python package (never `playwright install`).
# Takes well under 2 minutes; `timeout` bounds it at 10 even if a browser call hangs.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

check-html: html-stored $(CHROMIUM) cjk-fonts
	rm -rf _build/screenshots
	BOOK_HTML=_build/stored/_build/html BOOK_SCREENSHOTS=_build/screenshots CHROMIUM=$(CHROMIUM) \
		timeout 600 $(BIN)/python -m pytest tests/browser

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "Install Chromium, or set CHROMIUM=/path/to/chromium"; exit 1; }
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk

# The Chinese terms (errata, glossary) need a CJK font, or the screenshots show boxes.
cjk-fonts:
	@fc-list :lang=zh 2>/dev/null | grep -q . || { \
		command -v apt-get >/dev/null || { echo "Install a CJK font (Debian: fonts-noto-cjk)"; exit 1; }; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk; }

## make execute: re-run every notebook in place (fresh kernel, top to bottom) to refresh its outputs.
execute: setup
	@for nb in $(NOTEBOOKS); do \
		echo "executing $$nb"; \
		$(QUIET) $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=$(CELL_TIMEOUT) --ExecutePreprocessor.record_timing=False \
			"$$nb" || exit 1; \
	done

## make bench: the book's headline numbers re-measured (3 seeds, interleaved timings at batch 1 and 256):
## Markdown tables on stdout, everything with its spread in _build/bench/bench.json. Takes minutes;
## never part of make test (tests/test_bench.py runs only its --quick mode). Run it on a quiet machine.
bench: setup
	$(BIN)/python -m benchmarks.bench

## make lab: open the chapters in JupyterLab.
lab: setup
	$(BIN)/jupyter lab chapters

clean:
	rm -rf _build
