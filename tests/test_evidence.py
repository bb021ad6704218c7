"""helpers.evidence: paired intervals checked against SciPy's paired t-test, verdicts on synthetic
effects (one that is there, one that is not, one on the edge that needs more samples), the
speed-claim checker on workloads of known duration and, with a seeded fake clock, on a claim it
cannot settle, and the sequential test's error rate when it looks after every block."""
import math
import time

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from helpers.data import make_loader
from helpers.evidence import (
    REFUTED,
    SUPPORTED,
    UNDECIDED,
    check_speedups,
    correct_per_example,
    decide,
    look_confidence,
    paired_accuracy,
    paired_difference,
    speedup,
    t_interval,
)


def test_interval_matches_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    a = rng.normal(0.95, 0.01, size=7)
    b = a - rng.normal(0.004, 0.003, size=7)
    result = paired_difference(a, b, confidence=0.9)
    reference = stats.ttest_rel(a, b).confidence_interval(confidence_level=0.9)
    assert math.isclose(result.low, reference.low, rel_tol=1e-9)
    assert math.isclose(result.high, reference.high, rel_tol=1e-9)
    assert math.isclose(result.mean, float(np.mean(a - b)), rel_tol=1e-12)
    assert result.n == 7 and result.unit == "seeds"


def test_a_real_effect_is_better_and_no_effect_is_no_detectable_difference():
    rng = np.random.default_rng(1)
    base = rng.normal(0.9, 0.02, size=10)  # seed-to-seed spread shared by both recipes
    real = paired_difference(base + 0.03 + rng.normal(0, 0.005, 10), base)
    assert real.better and not real.worse and real.verdict() == "better"
    none = paired_difference(base + rng.normal(0, 0.005, 10), base)
    assert not none.better and not none.worse
    assert none.verdict() == "no detectable difference"
    assert none.within(0.01) and none.verdict(margin=0.01) == "within 1 points"
    assert paired_difference(base, base + 0.03 + rng.normal(0, 0.005, 10)).worse


def test_an_edge_effect_needs_more_pairs():
    rng = np.random.default_rng(2)
    diffs = rng.normal(0.003, 0.01, size=400)  # a real but small effect: 0.3 points, sd 1 point
    few = paired_difference(diffs[:5], np.zeros(5))
    many = paired_difference(diffs, np.zeros(400))
    assert few.verdict() == "no detectable difference"
    assert many.better
    assert many.high - many.low < (few.high - few.low) / 5


def test_non_inferiority_is_one_sided():
    result = paired_difference([-0.004, -0.001, 0.0, -0.003, -0.002], [0.0] * 5)
    assert result.worse and result.no_worse_than(0.01) and not result.no_worse_than(0.001)


def test_pairs_by_key_and_refuses_bad_pairs():
    by_seed = paired_difference({0: 0.9, 1: 0.95, 2: 0.92}, {2: 0.91, 0: 0.88, 1: 0.94})
    assert np.allclose(sorted(by_seed.differences), sorted([0.02, 0.01, 0.01]))
    with pytest.raises(ValueError, match="same keys"):
        paired_difference({0: 0.9, 1: 0.9}, {0: 0.9, 2: 0.9})
    with pytest.raises(ValueError, match="same keys"):
        paired_difference({0: 0.9, 1: 0.9}, [0.9, 0.9])
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([0.9, 0.8, 0.7], [0.9, 0.8])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_difference([0.9], [0.8])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([0.9, float("nan")], [0.8, 0.8])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([0.9, 0.8], [0.8, 0.8], confidence=1.5)
    with pytest.raises(ValueError, match="margin"):
        by_seed.within(-0.01)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])


def test_paired_accuracy_agrees_with_counting():
    torch.manual_seed(0)
    x = torch.randn(300, 5)
    y = (x[:, 0] > 0).long()
    loader = make_loader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    good, bad = nn.Linear(5, 2), nn.Linear(5, 2)
    with torch.no_grad():
        good.weight.zero_()
        good.bias.zero_()
        good.weight[1, 0] = 1.0  # predicts x0 > 0: right on every example
    good.train()
    result = paired_accuracy(good, bad, loader, names=("good", "bad"))
    hits_bad = correct_per_example(bad, loader)
    assert good.training  # mode restored
    assert math.isclose(result.mean, 1 - hits_bad.mean())
    assert result.better and result.unit == "test examples"
    same = paired_accuracy(bad, bad, loader)
    assert same.mean == same.low == same.high == 0.0


class Sleeper(nn.Module):
    """A workload of known duration: busy-waits ``ms`` milliseconds (sleep is too coarse)."""

    def __init__(self, ms: float):
        super().__init__()
        self.ns = int(ms * 1e6)

    def forward(self, x=None):
        end = time.perf_counter_ns() + self.ns
        while time.perf_counter_ns() < end:
            pass
        return x


def test_speed_claims_supported_and_refuted():
    models = {"slow": Sleeper(0.6), "fast": Sleeper(0.3), "twin": Sleeper(0.3)}
    claims = [speedup("fast", over="slow", above=1.5),   # true ratio 2: supported
              speedup("fast", over="slow", above=3.0),   # refuted
              speedup("fast", over="slow", below=1.0),   # "no faster": refuted
              speedup("twin", over="fast", below=1.5)]   # same speed, "less than 1.5x": supported
    evidence = check_speedups(models, torch.zeros(1), claims, time_limit_s=10)
    verdicts = [e.verdict for e in evidence]
    assert verdicts == [SUPPORTED, REFUTED, REFUTED, SUPPORTED], [str(e) for e in evidence]
    assert 1.7 < evidence[0].ratio < 2.3 and evidence[0].low < evidence[0].ratio < evidence[0].high
    assert evidence[0].consistent and not evidence[1].consistent


class FakeClock:
    """A clock that only the models move: each call lasts a random, seeded duration."""

    def __init__(self, seed: int):
        self.now, self.rng = 0, np.random.default_rng(seed)

    def __call__(self) -> int:
        return self.now

    def model(self, ms: float):
        def call(x=None):
            self.now += int(ms * 1e6 * self.rng.lognormal(0, 0.3))
        return call


def test_a_claim_the_evidence_cannot_settle_is_undecided_and_does_not_fail(monkeypatch):
    # two models of the same speed, noisy; the claim sits right at their true ratio of 1
    clock = FakeClock(seed=0)
    monkeypatch.setattr("helpers.evidence.time.perf_counter_ns", clock)
    models = {"a": clock.model(1.0), "b": clock.model(1.0)}
    (edge,) = check_speedups(models, None, [speedup("a", over="b", above=1.0)], time_limit_s=1e-9)
    assert edge.verdict == UNDECIDED and edge.consistent and edge.blocks == 6  # the time limit ended it
    assert edge.low < 1.0 < edge.high


def test_looking_after_every_block_keeps_the_error_rate():
    # 400 sequential tests of a claim exactly at the true ratio (the worst case), 60 looks each:
    # a fixed 99% per look would decide many of them; spending the error keeps it under 1%
    rng = np.random.default_rng(4)
    claim = speedup("a", over="b", above=1.0)
    wrong_fixed = wrong_spent = 0
    for _ in range(400):
        logs = rng.normal(0, 0.05, size=65)
        fixed = [decide(logs[:n], claim, 0.99)[0] for n in range(6, 66)]
        spent = [decide(logs[:n], claim, look_confidence(n - 5, 0.99))[0] for n in range(6, 66)]
        wrong_fixed += any(v != UNDECIDED for v in fixed)
        wrong_spent += any(v != UNDECIDED for v in spent)
    assert wrong_spent <= 4 < 20 <= wrong_fixed, (wrong_spent, wrong_fixed)
    assert look_confidence(1, 0.99) == pytest.approx(0.995)
    assert sum(1 - look_confidence(k, 0.99) for k in range(1, 10_000)) < 0.01


def test_decide_needs_more_blocks_near_the_bound():
    rng = np.random.default_rng(3)
    claim = speedup("a", over="b", above=1.2)
    logs = np.log(1.26) + rng.normal(0, 0.08, size=300)  # true speed-up 1.26x, noisy blocks
    assert decide(logs[:6], claim, 0.99)[0] == UNDECIDED
    assert decide(logs, claim, 0.99)[0] == SUPPORTED
    verdict, ratio, low, high = decide(logs, speedup("a", over="b", below=1.2), 0.99)
    assert verdict == REFUTED and low < ratio < high


def test_speed_claims_refuse_bad_input():
    models = {"a": Sleeper(0.01), "b": Sleeper(0.01)}
    with pytest.raises(ValueError, match="time_limit_s"):
        check_speedups(models, None, [speedup("a", over="b", above=1.0)], time_limit_s=0)
    with pytest.raises(ValueError, match="not in models"):
        check_speedups(models, None, [speedup("a", over="c", above=1.0)])
    with pytest.raises(ValueError, match="at least one"):
        check_speedups(models, None, [])
    with pytest.raises(ValueError, match="min_blocks"):
        check_speedups(models, None, [speedup("a", over="b", above=1.0)], min_blocks=2)
    with pytest.raises(ValueError, match="exactly one"):
        speedup("a", over="b", above=1.0, below=2.0)
    with pytest.raises(ValueError, match="below"):
        speedup("a", over="b", below=-1.0)
    with pytest.raises(ValueError, match="two different"):
        speedup("a", over="a", above=1.0)
    with pytest.raises(ValueError, match="look"):
        look_confidence(0, 0.99)
