"""Shared pytest settings, and how the book compares notebook outputs under nbval.

How stderr is compared: strictly, like stdout. nbval (0.11) compares a cell's stderr stream as its
own key, and we keep that on instead of sanitizing stderr away, because in this book stderr only
ever carries warnings (deprecations, numerical trouble, a library noticing misuse), and a warning
that appears after a dependency bump is exactly what CI should stop on. So:

- Stored notebook outputs carry no stderr at all (``tests/test_notebooks.py`` checks this), and
  ``_config.yml`` sets ``stderr_output: error`` so ``make book`` fails on stderr too.
- A warning is handled where it arises: fix the call that triggers it, or, for a message that is
  known noise on this CPU-only stack, filter that exact message in ``helpers/noise.py`` with the
  reason beside it. Never a blanket ``warnings.filterwarnings("ignore")`` in a notebook.
- Progress bars (tqdm writes to stderr) are off in notebooks (``train(..., quiet=True)``).

Machine-dependent *stdout* (timings, CPU names) is handled per cell with nbval's
``nbval-ignore-output`` tag, and the claim behind it is asserted with a tolerance in the same cell
(the book's style rule: an output nbval does not compare is still checked, by an ``assert``).
Remaining differences between honest runs are removed by ``tests/nbval_sanitize.cfg``, one commented
rule each. One of them matters for every chapter: results are bit-for-bit repeatable on one machine
but not across CPUs (MKL and oneDNN choose other kernels), and CI may run on another CPU than the one
that produced the stored outputs, so decimal numbers and percentages are masked; every claim they
support is asserted with a tolerance, and integers, words and output structure are still compared.
"""
import os

# The unit tests train tiny models; two intra-op threads match the book's target machine and keep
# timings in tests/test_measure.py comparable between a laptop and CI.
os.environ.setdefault("OMP_NUM_THREADS", "2")
