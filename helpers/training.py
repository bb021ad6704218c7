"""Seeding, the training loop and evaluation shared by every chapter, and the cost of a training step.

``train`` is deliberately plain (one optimizer, cross-entropy by default, no tricks) so that a
chapter's technique is the only thing that changes between two runs it compares. Hooks let the
technique chapters reuse it: ``loss_fn`` (e.g. a distillation loss) and ``after_step`` (e.g. re-apply
a pruning mask after every optimizer step).

The cost of one training step (chapters/05_applications/training.ipynb): :func:`make_train_step`
with bf16 autocast and ``torch.compile``, compared interleaved epoch by epoch by
:func:`compare_training_precision` on the same batches (:func:`global_batches`, which the
data-parallel loop of :mod:`helpers.distributed` also uses).
"""
from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from helpers._checks import check_int
from helpers.models import CNN

OPTIMIZERS = ("adam", "sgd")

#: Where the book writes TensorBoard runs: under _build/ (never committed), next to the HTML.
RUNS_ROOT = Path(__file__).resolve().parents[1] / "_build" / "runs"


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch, and ask PyTorch for deterministic kernels.

    Together with :func:`helpers.data.make_loader` (which seeds its own shuffling) this makes a
    training run repeatable on the same machine and thread count.
    """
    check_int("seed", seed, minimum=0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def tensorboard_dir(name: str) -> Path:
    """A fresh, empty TensorBoard log directory ``_build/runs/<name>`` for one training run.

    Emptied first, so curves read back with :func:`helpers.plotting.read_scalars` come from this
    run only. ``name`` may contain ``/`` (e.g. ``"background/baseline"``) but not ``..``.
    """
    if not name or ".." in Path(name).parts or Path(name).is_absolute():
        raise ValueError(f"name must be a relative path without '..', got {name!r}")
    path = RUNS_ROOT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass
class History:
    """Per-epoch metrics of one :func:`train` run (validation lists stay empty without a loader)."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluation:
    """Accuracy (fraction in [0, 1]) and mean cross-entropy of a model on a data set."""

    accuracy: float
    loss: float

    def __str__(self) -> str:
        return f"accuracy {self.accuracy:.1%}, loss {self.loss:.3f}"


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> Evaluation:
    """Accuracy and mean cross-entropy loss of ``model`` over ``loader``, in eval mode.

    The model's train/eval mode is restored afterwards. Raises ``ValueError`` on an empty loader.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    if count == 0:
        raise ValueError("loader yielded no examples")
    return Evaluation(accuracy=correct / count, loss=loss_sum / count)


def make_optimizer(model: nn.Module, name: str, lr: float,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam or SGD with momentum 0.9 over the parameters that require gradients."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters that require gradients")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


#: The one switch for progress bars: :func:`train` shows a tqdm bar per epoch when a person runs a
#: cell, and none when this environment variable is ``"0"``, which ``make execute``, ``make nbval``,
#: ``make robustness`` and ``make book`` set, so stored outputs and nbval's runs carry no bars.
PROGRESS_ENV = "BOOK_PROGRESS"


def progress_enabled() -> bool:
    """Whether :func:`train` shows progress bars by default (see :data:`PROGRESS_ENV`)."""
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def train(model: nn.Module, train_loader: DataLoader, *, num_epochs: int, lr: float = 1e-3,
          optimizer: str | torch.optim.Optimizer = "adam", weight_decay: float = 0.0,
          val_loader: DataLoader | None = None,
          loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          after_step: Callable[[nn.Module], None] | None = None,
          log_dir: str | os.PathLike | None = None, quiet: bool | None = None,
          max_steps: int | None = None, first_step: int = 0, first_epoch: int = 0) -> History:
    """Train ``model`` in place for ``num_epochs`` and return its :class:`History`.

    - ``optimizer``: ``"adam"`` or ``"sgd"`` (built with ``lr`` and ``weight_decay``), or a ready
      ``torch.optim.Optimizer`` (then ``lr`` and ``weight_decay`` are ignored).
    - ``loss_fn(logits, y, x)``: the loss to minimise; default cross-entropy on ``(logits, y)``.
      ``x`` is passed so a distillation loss can run a teacher on the same batch.
    - ``after_step(model)``: called after every optimizer step (e.g. to re-apply pruning masks).
    - ``log_dir``: if given, TensorBoard scalars are written there: ``loss/train_step`` every step,
      and ``loss/train``, ``accuracy/train`` (and ``loss/val``, ``accuracy/val``) every epoch.
      :func:`helpers.plotting.read_scalars` reads them back. ``first_step`` and ``first_epoch``
      are where this call's steps and epochs start counting in the log, so that successive calls
      (rounds of pruning, say) continue one curve in one ``log_dir``.
    - ``quiet``: ``True`` hides the tqdm progress bar, ``False`` shows it; ``None`` (the default)
      shows it unless :data:`PROGRESS_ENV` is ``"0"`` (how the book's stored outputs are made).
    - ``max_steps``: stop after this many optimizer steps, in the middle of an epoch if need be
      (that last epoch's metrics then cover the batches it ran); ``None`` runs every epoch in full.

    Training accuracy is measured on the fly (in train mode, while the weights move), as
    frameworks usually report it; validation metrics come from :func:`evaluate`.
    """
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("first_step", first_step, minimum=0)
    check_int("first_epoch", first_epoch, minimum=0)
    if max_steps is not None:
        check_int("max_steps", max_steps, minimum=1)
    opt = (optimizer if isinstance(optimizer, torch.optim.Optimizer)
           else make_optimizer(model, optimizer, lr, weight_decay))
    if quiet is None:
        quiet = not progress_enabled()
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(log_dir))
    history = History()
    step = 0
    model.train()
    try:
        for epoch in range(num_epochs):
            loss_sum, correct, count = 0.0, 0, 0
            batches = tqdm(train_loader, desc=f"epoch {epoch + 1}/{num_epochs}", disable=quiet,
                           leave=False)
            for x, y in batches:
                logits = model(x)
                loss = loss_fn(logits, y, x) if loss_fn is not None else F.cross_entropy(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step(model)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(dim=1) == y).sum().item()
                count += len(y)
                if writer is not None:
                    writer.add_scalar("loss/train_step", loss.item(), first_step + step)
                step += 1
                if step == max_steps:
                    break
            history.train_loss.append(loss_sum / count)
            history.train_accuracy.append(correct / count)
            scalars = {"loss/train": history.train_loss[-1],
                       "accuracy/train": history.train_accuracy[-1]}
            if val_loader is not None:
                result = evaluate(model, val_loader)
                history.val_loss.append(result.loss)
                history.val_accuracy.append(result.accuracy)
                scalars.update({"loss/val": result.loss, "accuracy/val": result.accuracy})
            if writer is not None:
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, first_epoch + epoch + 1)
            if step == max_steps:
                break
    finally:
        if writer is not None:
            writer.close()
    return history


#: The recipe of the book's baseline CNN (chapters/01_background.ipynb trains and measures it).
BASELINE_EPOCHS = 8
BASELINE_LR = 1e-3


def train_baseline(train_loader: DataLoader, *, seed: int = 0, num_epochs: int = BASELINE_EPOCHS,
                   lr: float = BASELINE_LR, val_loader: DataLoader | None = None,
                   log_dir: str | os.PathLike | None = None) -> tuple[nn.Module, History]:
    """The fp32 baseline every later chapter compresses: ``CNN()`` trained with Adam.

    Seeds with ``seed`` before building the model, so the same loader state gives the same
    weights. Takes a few seconds on two cores, which is why no checkpoint is cached.
    """
    set_seed(seed)
    model = CNN()
    history = train(model, train_loader, num_epochs=num_epochs, lr=lr, val_loader=val_loader,
                    log_dir=log_dir)
    model.eval()
    return model, history


def global_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The shuffled global batches of one epoch, identical on every rank (seeded by seed, epoch).

    The last, incomplete batch is dropped so every step has exactly ``batch_size`` examples.
    """
    check_int("batch_size", batch_size, minimum=1)
    if num_examples < batch_size:
        raise ValueError(f"num_examples must be >= batch_size={batch_size}, got {num_examples}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=generator)
    steps = num_examples // batch_size
    return list(order[: steps * batch_size].view(steps, batch_size))


# ----------------------------------------------------------------------------------------------
# The cost of a training step: bf16 autocast and torch.compile (chapters/05_applications/training.ipynb)
# ----------------------------------------------------------------------------------------------

PRECISIONS = ("fp32", "bf16")


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, precision: str = "fp32",
                    compile: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One training step ``step(x, y) -> loss``: forward (optionally under bf16 autocast), backward,
    optimizer step.

    ``precision="bf16"`` runs the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``:
    matmuls and convolutions in bfloat16, weights, gradients and the optimizer state stay fp32
    (the master-weights scheme of Micikevicius et al. 2018; bf16 keeps fp32's exponent range, so
    no loss scaling is needed). ``compile=True`` wraps the model in ``torch.compile``, which
    traces forward and backward and generates fused CPU kernels (Ansel et al. 2024).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    net = torch.compile(model) if compile else model

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


@dataclass
class TrainingCost:
    """One variant of :func:`compare_training_precision`: its trained model and epoch times.

    ``epoch_seconds[0]`` includes ``torch.compile``'s tracing and code generation for compiled
    variants; :attr:`steady_epoch_seconds` is the median of the later epochs.
    """

    model: nn.Module
    precision: str
    compiled: bool
    epoch_seconds: list[float]
    train_loss: list[float]

    @property
    def steady_epoch_seconds(self) -> float:
        later = sorted(self.epoch_seconds[1:] or self.epoch_seconds)
        return later[len(later) // 2]


def compare_training_precision(model_fn: Callable[[], nn.Module], dataset: TensorDataset,
                               variants: dict[str, tuple[str, bool]], *, num_epochs: int = 3,
                               batch_size: int = 64, lr: float = 1e-3,
                               seed: int = 0) -> dict[str, TrainingCost]:
    """Train one model per variant ``name -> (precision, compile)``, interleaved epoch by epoch.

    Every variant starts from the same weights (``model_fn()`` after seeding with ``seed``), sees
    the same batches in the same order (:func:`global_batches`) and uses Adam with ``lr``. Epoch
    ``e`` of every variant runs before epoch ``e + 1`` of any, so a slow spell of a shared machine
    lands on all of them. Uses :func:`make_train_step`.
    """
    if not variants:
        raise ValueError("variants must name at least one (precision, compile) pair")
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    x_all, y_all = dataset.tensors
    costs, steps = {}, {}
    for name, (precision, compiled) in variants.items():
        set_seed(seed)
        model = model_fn()
        steps[name] = make_train_step(model, torch.optim.Adam(model.parameters(), lr=lr),
                                      precision, compile=compiled)
        costs[name] = TrainingCost(model, precision, compiled, [], [])
    for epoch in range(num_epochs):
        batches = global_batches(len(y_all), batch_size, seed, epoch)
        for name, cost in costs.items():
            cost.model.train()
            start, loss_sum = time.perf_counter(), 0.0
            for index in batches:
                loss_sum += steps[name](x_all[index], y_all[index]).item()
            cost.epoch_seconds.append(time.perf_counter() - start)
            cost.train_loss.append(loss_sum / len(batches))
    for cost in costs.values():
        cost.model.eval()
    return costs
