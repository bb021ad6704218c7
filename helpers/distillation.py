"""Knowledge distillation: the Hinton et al. loss, offline and online (mutual) training, FitNets hints.

- :func:`kd_loss` is Eq. (kd-loss) of chapters/03_algorithms/distillation.ipynb,
  ``alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(y, softmax(z_s))``
  (Hinton, Vinyals and Dean 2015). The ``T^2`` keeps the soft term's gradients on the same scale
  whatever the temperature (Eq. (kd-grad) there).
- :func:`distill` trains a student against a frozen teacher with :func:`helpers.training.train`
  and its ``loss_fn(logits, y, x)`` hook (offline distillation).
- :func:`mutual_learning` trains peers together, each also matching the others' predictions
  (deep mutual learning, Zhang et al. 2018: online distillation).
- :class:`HintLoss` and :func:`hint_train` are the FitNets first stage (Romero et al. 2015): a
  small adapter maps a student's intermediate features onto a teacher's, trained by squared error.
- :func:`jitter` and :func:`transfer_set` build a seeded, augmented transfer set cheaply on tensors
  (chapters/04_practice/distillation.ipynb uses it to find where distillation pays).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from helpers._checks import check_fraction, check_int, check_number, get_submodule
from helpers.data import MNIST_MEAN, MNIST_STD
from helpers.training import History, evaluate, make_optimizer, train


def _check_temperature(T: float) -> float:
    return check_number("T (temperature)", T, 0, low_open=True)


def _check_alpha(alpha: float) -> float:
    return check_fraction("alpha", alpha, allow_one=True)


def soft_targets(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """``softmax(logits / T)`` along the last dimension: Eq. (soft-targets) of the algorithm chapter."""
    T = _check_temperature(T)
    return F.softmax(logits / T, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            labels: torch.Tensor | None, T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch (Eq. (kd-loss)).

    ``alpha * T**2 * KL(p_T || q_T) + (1 - alpha) * CE(labels, q_1)``, where
    ``p_T = softmax(teacher_logits / T)``, ``q_T = softmax(student_logits / T)`` and ``q_1`` is the
    student's ordinary softmax. The teacher's logits are detached: no gradient reaches the teacher.
    ``labels`` may be ``None`` only when ``alpha == 1`` (a transfer set labelled by the teacher).

    Raises ``ValueError`` when the two logits differ in shape or are not ``(N, C)``, ``T <= 0``,
    ``alpha`` is outside [0, 1], or ``labels`` is not ``N`` integers in ``[0, C)``.
    """
    T = _check_temperature(T)
    alpha = _check_alpha(alpha)
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be (N, C), got shape {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits "
                         f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}")
    n, c = student_logits.shape
    if labels is None:
        if alpha != 1.0:
            raise ValueError(f"labels may be None only when alpha == 1, got alpha={alpha!r}")
    else:
        if labels.shape != (n,) or labels.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise ValueError(f"labels must be {n} integer class indices (shape ({n},)), got "
                             f"shape {tuple(labels.shape)} and dtype {labels.dtype}")
        if n and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"labels must be in [0, {c - 1}], got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / T, dim=1)
    # kl_div(input=log q, target=log p, log_target=True) = sum p (log p - log q); 'batchmean'
    # divides the sum by N, which is the mathematical KL averaged over the batch.
    soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    loss = alpha * T * T * soft
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels.long())
    return loss


def distill(student: nn.Module, teacher: nn.Module, train_loader: DataLoader, *, num_epochs: int,
            T: float = 4.0, alpha: float = 0.9, lr: float = 1e-3,
            optimizer: str | torch.optim.Optimizer = "adam", weight_decay: float = 0.0,
            val_loader: DataLoader | None = None, log_dir: str | os.PathLike | None = None,
            quiet: bool | None = None) -> History:
    """Offline distillation: train ``student`` in place on :func:`kd_loss` against a frozen teacher.

    The teacher runs in eval mode (no dropout, frozen batch-norm statistics) under ``no_grad`` on
    every batch the student sees, so augmented batches get the teacher's view of the same images.
    Its mode is restored afterwards. Everything else is :func:`helpers.training.train`, so a student
    trained alone with the same loader, epochs and ``lr`` differs only in the loss.
    """
    if student is teacher:
        raise ValueError("student and teacher must be different modules")
    T = _check_temperature(T)
    alpha = _check_alpha(alpha)
    was_training = teacher.training
    teacher.eval()

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        return kd_loss(logits, teacher_logits, y, T=T, alpha=alpha)

    try:
        return train(student, train_loader, num_epochs=num_epochs, lr=lr, optimizer=optimizer,
                     weight_decay=weight_decay, val_loader=val_loader, loss_fn=loss_fn,
                     log_dir=log_dir, quiet=quiet)
    finally:
        teacher.train(was_training)


def mutual_learning(models: Sequence[nn.Module], train_loader: DataLoader, *, num_epochs: int,
                    T: float = 1.0, lr: float = 1e-3, val_loader: DataLoader | None = None
                    ) -> list[History]:
    """Deep mutual learning (Zhang et al. 2018): peers trained together, each from the others.

    Peer ``k`` minimises ``CE(y, q_k) + 1/(K-1) * sum_{l != k} T^2 KL(q_l || q_k)`` (Eq. (dml)),
    with the other peers' predictions ``q_l`` detached (treated as targets). ``T = 1`` is the paper's
    setting. All peers are updated from one forward pass of the batch; Zhang et al.'s Algorithm 1
    updates them in turn and recomputes predictions in between, which differs by one optimizer step
    of staleness. Each peer has its own Adam optimizer. Returns one :class:`History` per peer
    (train loss is the peer's own objective; validation lists are filled if ``val_loader`` is given).
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"models must hold at least 2 peers, got {len(models)}")
    if len({id(m) for m in models}) != len(models):
        raise ValueError("models must be distinct modules")
    check_int("num_epochs", num_epochs, minimum=1)
    T = _check_temperature(T)
    optimizers = [make_optimizer(m, "adam", lr) for m in models]
    histories = [History() for _ in models]
    k_peers = len(models)
    for m in models:
        m.train()
    for _ in range(num_epochs):
        sums = [0.0] * k_peers
        correct = [0] * k_peers
        count = 0
        for x, y in train_loader:
            logits = [m(x) for m in models]
            total = 0.0
            for k in range(k_peers):
                peer_term = sum(kd_loss(logits[k], logits[j], None, T=T, alpha=1.0)
                                for j in range(k_peers) if j != k) / (k_peers - 1)
                loss_k = F.cross_entropy(logits[k], y) + peer_term
                total = total + loss_k
                sums[k] += loss_k.item() * len(y)
                correct[k] += (logits[k].argmax(1) == y).sum().item()
            for opt in optimizers:
                opt.zero_grad()
            # Peers' targets are detached inside kd_loss, so each loss_k only reaches model k.
            total.backward()
            for opt in optimizers:
                opt.step()
            count += len(y)
        for k, m in enumerate(models):
            histories[k].train_loss.append(sums[k] / count)
            histories[k].train_accuracy.append(correct[k] / count)
            if val_loader is not None:
                result = evaluate(m, val_loader)
                histories[k].val_loss.append(result.loss)
                histories[k].val_accuracy.append(result.accuracy)
    return histories


def _layer(model: nn.Module, name: str) -> nn.Module:
    return get_submodule(model, name, "layer")


class _Capture:
    """Forward hook that keeps the last output of one layer."""

    def __init__(self, layer: nn.Module):
        self.output: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.output = output

    def remove(self):
        self.handle.remove()


class HintLoss(nn.Module):
    """FitNets hint loss: ``1/2 * mean((teacher_features - adapter(student_features))^2)`` (Eq. (hint)).

    The adapter (Romero et al.'s "regressor") is a 1x1 convolution for ``(N, C, H, W)`` features or a
    linear layer for ``(N, D)`` features, mapping the student's width onto the teacher's. Spatial
    sizes must already match. The teacher's features are detached.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]):
        super().__init__()
        student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
        if len(student_shape) != len(teacher_shape) or len(student_shape) not in (1, 3):
            raise ValueError(f"student_shape and teacher_shape must both be (C, H, W) or (D,), "
                             f"got {student_shape} and {teacher_shape}")
        if student_shape[1:] != teacher_shape[1:]:
            raise ValueError(f"spatial sizes must match, got student {student_shape[1:]} and "
                             f"teacher {teacher_shape[1:]}")
        if len(student_shape) == 3:
            self.adapter = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
        else:
            self.adapter = nn.Linear(student_shape[0], teacher_shape[0])

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        guess = self.adapter(student_features)
        if guess.shape != teacher_features.shape:
            raise ValueError(f"adapted student features {tuple(guess.shape)} do not match teacher "
                             f"features {tuple(teacher_features.shape)}")
        return 0.5 * F.mse_loss(guess, teacher_features.detach())


def hint_train(student: nn.Module, teacher: nn.Module, train_loader: DataLoader, *,
               student_layer: str, teacher_layer: str, num_epochs: int, lr: float = 1e-3
               ) -> tuple[HintLoss, list[float]]:
    """FitNets stage 1: train ``student`` (up to ``student_layer``) and an adapter on the hint loss.

    Layers are named as in ``model.named_modules()`` (e.g. ``"relu2"`` of :class:`helpers.CNN`).
    Only parameters that receive a gradient move, i.e. the student's layers up to the hint layer
    and the adapter. Stage 2 is ordinary :func:`distill`. Returns the trained :class:`HintLoss` and
    the mean hint loss of each epoch.
    """
    if student is teacher:
        raise ValueError("student and teacher must be different modules")
    check_int("num_epochs", num_epochs, minimum=1)
    s_cap = _Capture(_layer(student, student_layer))
    t_cap = _Capture(_layer(teacher, teacher_layer))
    was_training = teacher.training
    teacher.eval()
    try:
        x0, _ = next(iter(train_loader))
        with torch.no_grad():
            student(x0[:1])
            teacher(x0[:1])
        hint = HintLoss(s_cap.output.shape[1:], t_cap.output.shape[1:])
        params = [p for p in student.parameters() if p.requires_grad] + list(hint.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        student.train()
        losses = []
        for _ in range(num_epochs):
            total, count = 0.0, 0
            for x, _ in train_loader:
                with torch.no_grad():
                    teacher(x)
                student(x)
                loss = hint(s_cap.output, t_cap.output)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(x)
                count += len(x)
            losses.append(total / count)
    finally:
        s_cap.remove()
        t_cap.remove()
        teacher.train(was_training)
    return hint, losses


def jitter(images: torch.Tensor, *, max_shift: float = 2.0, max_degrees: float = 15.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly shifted and rotated copies of normalized ``(N, C, H, W)`` images (bilinear).

    Each image gets its own shift, uniform in ``[-max_shift, max_shift]`` pixels on each axis, and
    rotation, uniform in ``[-max_degrees, max_degrees]``. Pixels moved in from outside take the
    background value (0 before MNIST normalization), not zero.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not max_shift >= 0:
        raise ValueError(f"max_shift must be >= 0 pixels, got {max_shift!r}")
    if not 0 <= max_degrees <= 180:
        raise ValueError(f"max_degrees must be in [0, 180], got {max_degrees!r}")
    n, _, h, w = images.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    # affine_grid works in [-1, 1] coordinates: one pixel is 2/W horizontally, 2/H vertically.
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    background = -MNIST_MEAN / MNIST_STD
    moved = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return moved + background


def transfer_set(dataset: Dataset, copies: int, *, max_shift: float = 2.0,
                 max_degrees: float = 15.0, include_original: bool = True,
                 seed: int = 0) -> TensorDataset:
    """A larger transfer set: ``copies`` jittered versions of every image (plus the originals).

    Labels are carried along (a hard-label baseline needs them; a distilled student with
    ``alpha = 1`` ignores them and learns only from the teacher). Seeded and built once, so every
    model that trains on it sees exactly the same images.
    """
    check_int("copies", copies, minimum=0)
    if copies == 0 and not include_original:
        raise ValueError("copies=0 with include_original=False would give an empty set")
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[0], dataset.tensors[1]
    else:
        pairs = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([p[0] for p in pairs])
        labels = torch.as_tensor([int(p[1]) for p in pairs])
    generator = torch.Generator().manual_seed(seed)
    parts = [images] if include_original else []
    parts += [jitter(images, max_shift=max_shift, max_degrees=max_degrees, generator=generator)
              for _ in range(copies)]
    repeats = len(parts)
    return TensorDataset(torch.cat(parts), labels.repeat(repeats))
