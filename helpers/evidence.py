"""Claims with their uncertainty: paired comparisons of two recipes, and speed claims decided by
interleaved, sequential timing.

The book never compares two accuracies or two timings against a bare constant. An accuracy
claim is a **paired difference** with a confidence interval; a speed claim is a **ratio of
interleaved timings**, measured until its interval lies clearly on one side of the claimed bound.

Paired differences (:func:`paired_difference`, :func:`paired_accuracy`). For pairs
:math:`(a_i, b_i)`, :math:`i = 1..n` (the same seed, or the same test digit, under both recipes),
with :math:`d_i = a_i - b_i`,

.. math::  \\bar d \\pm t_{1-(1-c)/2,\\,n-1}\\; s_d / \\sqrt{n}

is Student's t-interval for the mean difference at confidence :math:`c` (:math:`s_d` the sample
standard deviation of the :math:`d_i`). Pairing removes what the two recipes share (the seed's
initialization and data order, or how hard a digit is), which is why a paired interval is much
narrower than comparing two means. The verdicts a chapter may print:

- ``better`` (interval above 0) or ``worse`` (below 0);
- ``no worse than m`` (lower end above ``-m``: a non-inferiority claim, e.g. int8 loses < 1 point);
- ``within m`` (the whole interval inside ``(-m, m)``: "no difference larger than m");
- otherwise ``no detectable difference`` at this number of pairs.

Over test examples the :math:`d_i` are in {-1, 0, 1} and the t-interval is the usual normal
approximation for a paired difference of proportions (McNemar's setting); with 1,000 test digits
it is accurate to a fraction of its own width. Over seeds it assumes roughly normal differences,
which is why at least 5 seeds are used where a claim rests on them.

Speed claims (:func:`check_speedups`): see its docstring. Chapters cite
chapters/01_background.ipynb for why timings are interleaved and repeated. The two timers divide
the work: :func:`helpers.measure.latencies` reports times (milliseconds with their spread, for
tables), :func:`check_speedups` decides claims about their ratios; an ``assert`` on a speed
always goes through the second.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from helpers._checks import check_fraction, check_int, check_number

#: 95%: the confidence of every accuracy interval the book prints.
CONFIDENCE = 0.95


def _check_confidence(confidence: float) -> None:
    check_fraction("confidence", confidence, allow_zero=False)


def _check_positive(name: str, value: float) -> None:
    check_number(name, value, 0, low_open=True)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and Student's t-interval ``(mean, low, high)`` of ``values`` (at least 2 of them)."""
    _check_confidence(confidence)
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"values must be a flat sequence of at least 2 numbers, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite numbers")
    mean = float(x.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedComparison:
    """Recipe ``a`` minus recipe ``b`` over ``n`` pairs, with a t-interval (see the module doc).

    Differences are kept as fractions (accuracy 0.963 - 0.958 = 0.005); :meth:`__str__` prints
    them in percentage points, the unit the chapters speak in.
    """

    a: str
    b: str
    differences: tuple[float, ...]
    mean: float
    low: float
    high: float
    confidence: float
    unit: str

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def better(self) -> bool:
        """``a`` beats ``b``: the whole interval lies above 0."""
        return self.low > 0

    @property
    def worse(self) -> bool:
        """``a`` trails ``b``: the whole interval lies below 0."""
        return self.high < 0

    def no_worse_than(self, margin: float) -> bool:
        """``a`` loses less than ``margin`` (a fraction: 0.01 = 1 point) against ``b``."""
        _check_positive("margin", margin)
        return self.low > -margin

    def within(self, margin: float) -> bool:
        """No difference as large as ``margin`` either way: the interval lies inside ``(-m, m)``."""
        _check_positive("margin", margin)
        return -margin < self.low and self.high < margin

    def verdict(self, margin: float | None = None) -> str:
        """``better``, ``worse``, ``within m points`` (with ``margin``) or ``no detectable difference``."""
        if self.better:
            return "better"
        if self.worse:
            return "worse"
        if margin is not None and self.within(margin):
            return f"within {100 * margin:g} points"
        return "no detectable difference"

    def __str__(self) -> str:
        return (f"{self.a} - {self.b}: {100 * self.mean:+.1f} points, "
                f"{self.confidence:.0%} CI [{100 * self.low:+.1f}, {100 * self.high:+.1f}] "
                f"over {self.n} {self.unit}")


def paired_difference(a: Sequence[float] | Mapping[Any, float], b: Sequence[float] | Mapping[Any, float],
                      *, names: tuple[str, str] = ("a", "b"), unit: str = "seeds",
                      confidence: float = CONFIDENCE) -> PairedComparison:
    """Compare two recipes measured on the same pairs (seeds, or test examples).

    ``a`` and ``b`` are sequences of equal length (pair ``i`` is ``a[i]`` and ``b[i]``), or
    mappings with the same keys (e.g. ``{seed: accuracy}``), paired by key. Raises ``ValueError``
    for fewer than 2 pairs, pairs that do not match, non-finite values or a ``confidence``
    outside (0, 1).
    """
    _check_confidence(confidence)
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            raise ValueError("a and b must pair the same keys (e.g. the same seeds), "
                             f"got {sorted(map(str, a))} and {sorted(map(str, b))}")
        keys = list(a)
        a, b = [a[k] for k in keys], [b[k] for k in keys]
    a_values, b_values = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_values.ndim != 1 or a_values.shape != b_values.shape:
        raise ValueError(f"a and b must be flat and of equal length, got shapes {a_values.shape} "
                         f"and {b_values.shape}")
    if len(a_values) < 2:
        raise ValueError(f"a and b need at least 2 pairs (e.g. 2 seeds), got {len(a_values)}")
    if not (np.all(np.isfinite(a_values)) and np.all(np.isfinite(b_values))):
        raise ValueError("a and b must hold finite numbers")
    differences = a_values - b_values
    mean, low, high = t_interval(differences, confidence)
    return PairedComparison(a=names[0], b=names[1], differences=tuple(float(d) for d in differences),
                            mean=mean, low=low, high=high, confidence=confidence, unit=unit)


@torch.no_grad()
def correct_per_example(model: Callable[[torch.Tensor], torch.Tensor], loader) -> np.ndarray:
    """1.0 where ``model`` classifies an example of ``loader`` right, else 0.0 (loader order).

    An ``nn.Module`` is put in eval mode for the pass and its mode restored afterwards.
    """
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        hits = [(model(x).argmax(dim=1) == y).to(torch.float64) for x, y in loader]
    finally:
        if was_training:
            model.train()
    if not hits:
        raise ValueError("loader yielded no examples")
    return torch.cat(hits).numpy()


def paired_accuracy(model_a, model_b, loader, *, names: tuple[str, str] = ("a", "b"),
                    confidence: float = CONFIDENCE) -> PairedComparison:
    """Accuracy of ``model_a`` minus ``model_b`` on the same examples, with its t-interval.

    The loader must not shuffle: the pairs are its examples, in order. The interval is about
    the population of digits the test set is drawn from, for these two trained models.
    """
    return paired_difference(correct_per_example(model_a, loader), correct_per_example(model_b, loader),
                             names=names, unit="test examples", confidence=confidence)


# --- speed claims ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpeedClaim:
    """``t(over) / t(model)`` (the speed-up of ``model`` over ``over``) is above or below ``bound``.

    Build one with :func:`speedup`.
    """

    model: str
    over: str
    bound: float
    above: bool

    def __str__(self) -> str:
        return f"{self.model} vs {self.over} {'>' if self.above else '<'} {self.bound:g}x"


def speedup(model: str, *, over: str, above: float | None = None, below: float | None = None) -> SpeedClaim:
    """The claim that ``model`` runs more than ``above`` (or less than ``below``) times as fast as ``over``.

    ``speedup("int8", over="fp32", above=1.2)``: int8 is at least 1.2x as fast;
    ``speedup("int8", over="fp32", below=1.0)``: int8 is no faster. Exactly one bound, positive.
    """
    if (above is None) == (below is None):
        raise ValueError("give exactly one of above= and below=")
    bound = above if above is not None else below
    _check_positive("above" if above is not None else "below", bound)
    if model == over:
        raise ValueError(f"model and over must name two different models, got {model!r} twice")
    return SpeedClaim(model=model, over=over, bound=float(bound), above=above is not None)


#: the verdicts of a speed claim
SUPPORTED, REFUTED, UNDECIDED = "supported", "refuted", "undecided"


@dataclass(frozen=True)
class SpeedEvidence:
    """What the timing showed about one :class:`SpeedClaim`.

    ``ratio`` is the geometric mean over blocks of ``median t(over) / median t(model)``;
    ``low``/``high`` its confidence interval; ``verdict`` is ``supported`` (interval on the
    claimed side of the bound), ``refuted`` (on the other side) or ``undecided`` (the time limit
    came first). ``consistent`` is ``not refuted``: what a chapter asserts.
    """

    claim: SpeedClaim
    ratio: float
    low: float
    high: float
    blocks: int
    verdict: str

    @property
    def consistent(self) -> bool:
        return self.verdict != REFUTED

    def __str__(self) -> str:
        return (f"{self.claim.model} vs {self.claim.over}: {self.ratio:.2f}x "
                f"[{self.low:.2f}, {self.high:.2f}], {self.blocks} blocks; "
                f"claim {'>' if self.claim.above else '<'} {self.claim.bound:g}x: {self.verdict}")


def look_confidence(look: int, confidence: float) -> float:
    """The confidence of the interval at the ``look``-th look (1, 2, ...) of a sequential test.

    Looking at a 99% interval after every block and stopping as soon as it excludes the bound
    errs far more often than 1% of the time: each look is another chance for noise to decide.
    Spending the error ``alpha = 1 - confidence`` as ``alpha / (look (look + 1))`` per look
    (these sum to ``alpha``) bounds the chance that any look's interval misses the true ratio,
    and so the chance of a wrong verdict, by ``alpha`` however long the test runs (a union bound).
    """
    _check_confidence(confidence)
    check_int("look", look, minimum=1)
    return 1 - (1 - confidence) / (look * (look + 1))


def decide(log_ratios: Sequence[float], claim: SpeedClaim, confidence: float) -> tuple[str, float, float, float]:
    """The verdict on ``claim`` from per-block log speed-ups: ``(verdict, ratio, low, high)``.

    The t-interval of the mean log ratio, exponentiated, is compared with ``claim.bound``.
    """
    mean, low, high = t_interval(log_ratios, confidence)
    bound = math.log(claim.bound)
    if (low > bound) if claim.above else (high < bound):
        verdict = SUPPORTED
    elif (high < bound) if claim.above else (low > bound):
        verdict = REFUTED
    else:
        verdict = UNDECIDED
    return verdict, math.exp(mean), math.exp(low), math.exp(high)


def check_speedups(models: Mapping[str, Callable], example_input: torch.Tensor | None,
                   claims: Sequence[SpeedClaim], *, warmup: int = 5, block_calls: int = 10,
                   min_blocks: int = 6, time_limit_s: float = 20.0, confidence: float = 0.99,
                   num_threads: int | None = None, inference: bool = True) -> list[SpeedEvidence]:
    """Decide speed claims by timing the models interleaved, block after block, until each is clear.

    Each model gets ``warmup`` untimed calls; then blocks follow: in a block every model runs
    ``block_calls`` times, the models taking turns call by call (a slow spell of the machine, or
    a busy process on another core, lands on all of them). A block gives each claim one ratio
    of medians, ``median t(over) / median t(model)``. From ``min_blocks`` on, each claim's
    t-interval over its block log-ratios is compared with its bound after every block
    (:func:`decide`), and timing stops once every claim is ``supported`` or ``refuted``, or after
    ``time_limit_s`` seconds (claims still open are ``undecided``). ``confidence`` is the
    overall one, spent over the looks (:func:`look_confidence`): whatever the number of blocks,
    a claim's verdict is wrong with probability at most ``1 - confidence``, as far as the blocks'
    log ratios are independent and roughly normal. A bound set right at the true ratio is
    decided only by the machine's small systematic effects; keep a margin (the chapters use
    about 25% below the smallest ratio seen on any CPU).

    ``models`` maps names to modules or callables, called as ``m(example_input)``, or as ``m()``
    when ``example_input`` is None (to compare, say, one call at batch 256 with one at batch 1).
    Runs under ``torch.inference_mode()`` (``inference=False`` to time training steps) with
    ``num_threads`` intra-op threads (default: the current setting, restored afterwards). Raises
    ``ValueError`` for no claims, a claim naming a model not in ``models``, ``min_blocks < 3``,
    ``block_calls < 1``, ``warmup < 0`` or a non-positive ``time_limit_s`` (``TypeError`` for a
    non-number).
    """
    _check_confidence(confidence)
    _check_positive("time_limit_s", time_limit_s)
    for name, value, least in (("warmup", warmup, 0), ("block_calls", block_calls, 1),
                               ("min_blocks", min_blocks, 3)):
        check_int(name, value, minimum=least)
    if not claims:
        raise ValueError("claims must hold at least one speed claim (see speedup())")
    for claim in claims:
        if not isinstance(claim, SpeedClaim):
            raise ValueError(f"claims must be built with speedup(), got {claim!r}")
        for name in (claim.model, claim.over):
            if name not in models:
                raise ValueError(f"claim {claim} names {name!r}, which is not in models {list(models)}")
    names = sorted({c.model for c in claims} | {c.over for c in claims}, key=list(models).index)
    args = () if example_input is None else (example_input,)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    log_ratios: dict[SpeedClaim, list[float]] = {c: [] for c in claims}
    results: dict[SpeedClaim, tuple[str, float, float, float]] = {}
    try:
        with torch.inference_mode(inference):
            for name in names:
                for _ in range(warmup):
                    models[name](*args)
            start = time.perf_counter()
            blocks = 0
            while True:
                times: dict[str, list[int]] = {name: [] for name in names}
                for call in range(block_calls):
                    # rotate who goes first, so no model always runs right after the same one
                    for k in range(len(names)):
                        name = names[(k + call + blocks) % len(names)]
                        tic = time.perf_counter_ns()
                        models[name](*args)
                        times[name].append(time.perf_counter_ns() - tic)
                blocks += 1
                medians = {name: max(float(np.median(t)), 1.0) for name, t in times.items()}
                for claim in claims:
                    log_ratios[claim].append(math.log(medians[claim.over] / medians[claim.model]))
                if blocks < min_blocks:
                    continue
                level = look_confidence(blocks - min_blocks + 1, confidence)
                results = {c: decide(log_ratios[c], c, level) for c in claims}
                if all(r[0] != UNDECIDED for r in results.values()):
                    break
                if time.perf_counter() - start > time_limit_s:
                    break
    finally:
        torch.set_num_threads(previous_threads)
    return [SpeedEvidence(claim=c, ratio=results[c][1], low=results[c][2], high=results[c][3],
                          blocks=len(log_ratios[c]), verdict=results[c][0]) for c in claims]
