"""The book's models: the source document's CNN (corrected) and Hinton et al.'s MNIST MLPs.

The source's CNN (section 3.2.4) is two 3x3 convolutions with 16 and 32 channels, two 2x2
max-pools and ``Linear(32*7*7, 10)``, which only fits 28x28 inputs: its examples fed it 32x32 and
crashed. :class:`CNN` keeps those layer names (``conv1``, ``conv2``, ``fc1``) so the chapters can
point at them, uses module ReLUs and pools (so eager-mode quantization can fuse conv+relu), and
takes a ``channels`` pair so one class builds wider teachers and narrower students.
"""
from __future__ import annotations

import torch
from torch import nn

from helpers._checks import check_int


def _check_positive_ints(name: str, values) -> tuple[int, ...]:
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 1, got {values!r}")
    for i, value in enumerate(values):
        check_int(f"{name}[{i}]", value, minimum=1)
    return values


def _check_classes(num_classes: int) -> None:
    check_int("num_classes", num_classes, minimum=2)


class CNN(nn.Module):
    """conv3x3(c1)-ReLU-pool2 -> conv3x3(c2)-ReLU-pool2 -> Linear(c2*(s/4)^2, classes).

    ``CNN()`` is the source document's network (16 and 32 channels, 28x28 input, 10 classes).
    ``image_size`` must be divisible by 4 (two 2x2 pools). ``forward`` raises ``ValueError`` on an
    input of the wrong shape instead of PyTorch's opaque matrix-size error.
    """

    def __init__(self, channels: tuple[int, int] = (16, 32), num_classes: int = 10,
                 in_channels: int = 1, image_size: int = 28):
        super().__init__()
        channels = _check_positive_ints("channels", channels)
        if len(channels) != 2:
            raise ValueError(f"channels must be a pair (conv1, conv2), got {channels!r}")
        c1, c2 = channels
        _check_positive_ints("in_channels", (in_channels,))
        _check_classes(num_classes)
        if check_int("image_size", image_size, minimum=4) % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {image_size!r}")
        self.in_channels, self.image_size = in_channels, image_size
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, stride=1, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, stride=1, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * (image_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(x.shape)}")
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc1(self.flatten(x))


class MLP(nn.Module):
    """Flatten -> [Linear-ReLU(-Dropout)] per hidden layer -> Linear, as in Hinton et al. (2015).

    ``MLP((1200, 1200))`` and ``MLP((800, 800))`` are that paper's MNIST teacher and student sizes.
    The layers live in ``self.layers`` (an ``nn.Sequential``), so the ``Linear`` layers are
    ``layers.1``, ``layers.3``/``layers.4``, ... depending on dropout; ``linear_layers()`` lists them.
    """

    def __init__(self, hidden: tuple[int, ...] = (1200, 1200), num_classes: int = 10,
                 in_features: int = 28 * 28, dropout: float = 0.0):
        super().__init__()
        hidden = _check_positive_ints("hidden", hidden)
        _check_positive_ints("in_features", (in_features,))
        _check_classes(num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_features = in_features
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def linear_layers(self) -> list[nn.Linear]:
        """The ``Linear`` layers in order, input to output."""
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != self.in_features:
            raise ValueError(f"each example must have {self.in_features} values, "
                             f"got shape {tuple(x.shape)}")
        return self.layers(x)
