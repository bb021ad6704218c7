"""Fitting a model to a device budget: chapters/05_applications/deployment.ipynb.

- **The budget.** :class:`Budget` states what the device allows relative to the fp32 baseline
  (storage ratio, batch-1 latency ratio, accuracy drop); :func:`check_budget` compares a candidate
  with the baseline, constraint by constraint, and says which part is missed and by how much.
- **The pipeline.** :func:`budget_pipeline` chains the book's own techniques: distillation into a
  narrower :class:`helpers.CNN` (Hinton et al., 2015; chapters/03_algorithms/distillation.ipynb),
  structured channel pruning that really shrinks the tensors (:func:`helpers.pruning.prune_channels`,
  chapters/03_algorithms/pruning.ipynb) with a short distillation fine-tune, and int8 post-training
  quantization through PyTorch 2 export (:func:`helpers.quantization.pt2e_quantize`, as in
  chapters/04_practice/quantization.ipynb). It returns one :class:`PipelineStep` per stage.

Running the result in a device runtime (ExecuTorch, ONNX Runtime) is :mod:`helpers.runtimes`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from helpers._checks import check_fraction, check_int, check_number
from helpers.data import make_loader
from helpers.distillation import distill
from helpers.measure import size_bytes
from helpers.models import CNN
from helpers.pruning import prune_channels
from helpers.quantization import pt2e_quantize
from helpers.training import evaluate, set_seed, train_baseline

# ----------------------------------------------------------------------------------------------
# The budget
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What a device allows, relative to the fp32 baseline.

    - ``max_size_ratio``: candidate storage / baseline storage, in (0, 1] (0.1 = a tenth).
    - ``max_latency_ratio``: candidate batch-1 latency / baseline batch-1 latency, in (0, 1].
    - ``max_accuracy_drop``: baseline accuracy minus candidate accuracy, a fraction in [0, 1)
      (0.01 = one percentage point).

    Invalid values raise ``ValueError`` (``TypeError`` for a non-number) naming the field and its
    allowed range.
    """

    max_size_ratio: float = 0.1
    max_latency_ratio: float = 1.0
    max_accuracy_drop: float = 0.01

    def __post_init__(self):
        for name in ("max_size_ratio", "max_latency_ratio"):
            check_number(name, getattr(self, name), 0, 1, low_open=True)
        check_fraction("max_accuracy_drop", self.max_accuracy_drop)  # 0.01 = one point


@dataclass(frozen=True)
class Measurement:
    """What the budget is checked on: test accuracy (fraction), storage (bytes), batch-1 latency (ms)."""

    accuracy: float
    size_bytes: int
    latency_ms: float

    def __post_init__(self):
        if not 0 <= self.accuracy <= 1:
            raise ValueError(f"accuracy must be a fraction in [0, 1], got {self.accuracy!r}")
        if not self.size_bytes > 0:
            raise ValueError(f"size_bytes must be positive, got {self.size_bytes!r}")
        if not self.latency_ms > 0:
            raise ValueError(f"latency_ms must be positive, got {self.latency_ms!r}")


class BudgetMissedError(ValueError):
    """Raised by :meth:`BudgetReport.raise_if_missed`; the message lists every missed constraint."""


@dataclass(frozen=True)
class Constraint:
    """One line of a budget check. ``margin`` is how far inside the limit the value is, in the
    constraint's unit (bytes, ms, accuracy points as a fraction); negative when missed."""

    name: str
    limit: float
    value: float
    margin: float
    unit: str

    @property
    def met(self) -> bool:
        return self.margin >= 0

    def __str__(self) -> str:
        fmt = {"bytes": lambda v: f"{v / 1024:.1f} KiB", "ms": lambda v: f"{v:.3f} ms",
               "points": lambda v: f"{100 * v:.1f} pt"}[self.unit]
        verdict = "met" if self.met else "MISSED"
        side = "under the limit by" if self.met else "over the limit by"
        return (f"{self.name:<9} {verdict:<6} {fmt(self.value)} vs limit {fmt(self.limit)} "
                f"({side} {fmt(abs(self.margin))})")


@dataclass(frozen=True)
class BudgetReport:
    """The result of :func:`check_budget`: one :class:`Constraint` per budget field."""

    constraints: tuple[Constraint, ...]

    @property
    def met(self) -> bool:
        return all(c.met for c in self.constraints)

    @property
    def missed(self) -> tuple[Constraint, ...]:
        return tuple(c for c in self.constraints if not c.met)

    def __getitem__(self, name: str) -> Constraint:
        for constraint in self.constraints:
            if constraint.name == name:
                return constraint
        raise KeyError(f"no constraint named {name!r}; have {[c.name for c in self.constraints]}")

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.constraints)

    def raise_if_missed(self) -> None:
        """Raise :class:`BudgetMissedError` naming each missed constraint and by how much."""
        if not self.met:
            raise BudgetMissedError("the budget is missed: " + "; ".join(str(c) for c in self.missed))


def check_budget(budget: Budget, baseline: Measurement, candidate: Measurement) -> BudgetReport:
    """Check ``candidate`` against ``budget`` relative to ``baseline``, constraint by constraint.

    storage: ``candidate.size_bytes <= max_size_ratio * baseline.size_bytes``;
    latency: ``candidate.latency_ms <= max_latency_ratio * baseline.latency_ms``;
    accuracy: ``candidate.accuracy >= baseline.accuracy - max_accuracy_drop``.
    Never raises for a missed budget (call :meth:`BudgetReport.raise_if_missed` for that); raises
    ``TypeError`` if the arguments are not a :class:`Budget` and two :class:`Measurement`.
    """
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a Budget, got {type(budget).__name__}")
    for name, value in (("baseline", baseline), ("candidate", candidate)):
        if not isinstance(value, Measurement):
            raise TypeError(f"{name} must be a Measurement, got {type(value).__name__}")
    size_limit = budget.max_size_ratio * baseline.size_bytes
    latency_limit = budget.max_latency_ratio * baseline.latency_ms
    accuracy_limit = baseline.accuracy - budget.max_accuracy_drop
    return BudgetReport((
        Constraint("storage", size_limit, candidate.size_bytes, size_limit - candidate.size_bytes, "bytes"),
        Constraint("latency", latency_limit, candidate.latency_ms, latency_limit - candidate.latency_ms, "ms"),
        Constraint("accuracy", accuracy_limit, candidate.accuracy, candidate.accuracy - accuracy_limit, "points"),
    ))


# ----------------------------------------------------------------------------------------------
# The pipeline: distill -> prune -> quantize
# ----------------------------------------------------------------------------------------------


@dataclass
class PipelineStep:
    """One stage of :func:`budget_pipeline`: its name, the model, test accuracy and storage bytes."""

    name: str
    model: nn.Module
    accuracy: float
    size_bytes: int
    notes: dict = field(default_factory=dict)


def budget_pipeline(train_set, test_set, *, seed: int = 0, teacher: nn.Module | None = None,
                    student_channels: tuple[int, int] = (8, 16), keep_channels: int = 6,
                    num_epochs: int = 12, finetune_epochs: int = 3, T: float = 4.0, alpha: float = 0.9,
                    batch_size: int = 64, calibration_batches: int = 16) -> list[PipelineStep]:
    """Baseline -> distilled student -> channel-pruned student -> int8: one :class:`PipelineStep` each.

    Arguments: ``train_set``/``test_set`` are datasets of ``(N, 1, 28, 28)`` digits (``load_mnist()``);
    ``seed`` seeds every training run and loader, so two calls with the same seed give the same
    models (on the same machine and thread count); ``teacher`` is the fp32 baseline (trained with
    :func:`helpers.train_baseline` if ``None``).

    1. ``"fp32 baseline"``: the teacher, :class:`helpers.CNN` with 16 and 32 channels.
    2. ``"distilled"``: ``CNN(student_channels)`` trained ``num_epochs`` with :func:`helpers.distillation.distill`
       (temperature ``T``, soft-target weight ``alpha``).
    3. ``"pruned"``: conv2 of the student cut to its ``keep_channels`` filters of largest L1 norm with
       :func:`helpers.pruning.prune_channels` (conv2 and fc1 shrink), then ``finetune_epochs`` of
       distillation from the same teacher to recover.
    4. ``"int8"``: :func:`helpers.quantization.pt2e_quantize` of the pruned model, calibrated on ``calibration_batches``
       training batches.

    ``accuracy`` is on ``test_set``; ``size_bytes`` is :func:`helpers.measure.size_bytes`. Latency is not measured
    here: time the models of all steps together in one run (:func:`helpers.latencies`).
    """
    check_int("keep_channels", keep_channels, minimum=1, maximum=student_channels[1])  # conv2's channels
    check_int("calibration_batches", calibration_batches, minimum=1)
    test_loader = make_loader(test_set, batch_size=1000)
    if teacher is None:
        teacher, _ = train_baseline(make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed), seed=seed)
    teacher.eval()
    steps = [PipelineStep("fp32 baseline", teacher, evaluate(teacher, test_loader).accuracy, size_bytes(teacher))]

    set_seed(seed)
    student = CNN(channels=student_channels)
    distill(student, teacher, make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed),
            num_epochs=num_epochs, T=T, alpha=alpha)
    student.eval()
    steps.append(PipelineStep("distilled", student, evaluate(student, test_loader).accuracy, size_bytes(student)))

    pruned, keep = prune_channels(student, "conv2", "fc1", keep=torch.topk(
        student.conv2.weight.detach().abs().sum(dim=(1, 2, 3)), keep_channels).indices)
    before = evaluate(pruned, test_loader).accuracy
    set_seed(seed)
    distill(pruned, teacher, make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed + 1),
            num_epochs=finetune_epochs, T=T, alpha=alpha)
    pruned.eval()
    steps.append(PipelineStep("pruned", pruned, evaluate(pruned, test_loader).accuracy, size_bytes(pruned),
                              notes={"accuracy_before_finetune": before, "kept_channels": keep.tolist()}))

    calibration_loader = make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed)
    batches = [x for _, (x, _) in zip(range(calibration_batches), calibration_loader)]
    int8 = pt2e_quantize(pruned, batches, batches[0])
    steps.append(PipelineStep("int8", int8, evaluate(int8, test_loader).accuracy, size_bytes(int8)))
    return steps
