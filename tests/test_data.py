"""helpers.data: real offline data, stratified seeded splits, loaders and bad-argument errors."""
import pytest
import torch

from helpers.data import MNIST_MEAN, MNIST_STD, load_digits, load_mnist, make_loader, random_batches, take_per_class


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_mnist_default_split_is_4000_1000_stratified(mnist):
    assert len(mnist.train) == 4000 and len(mnist.test) == 1000 and mnist.val is None
    x, y = mnist.train.tensors
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [400] * 10
    assert torch.bincount(mnist.test.tensors[1]).tolist() == [100] * 10


def test_mnist_is_normalized_with_full_mnist_constants(mnist):
    x = mnist.train.tensors[0]
    assert x.min().item() == pytest.approx((0 - MNIST_MEAN) / MNIST_STD, abs=1e-5)
    assert x.max().item() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, abs=1e-5)
    # the subset's statistics are close to full MNIST's, which is why the constants fit it
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


def test_mnist_unnormalized_is_in_unit_range():
    x = load_mnist(normalize=False).train.tensors[0]
    assert x.min().item() == 0.0 and x.max().item() == 1.0


def test_split_is_deterministic_and_depends_on_seed(mnist):
    again = load_mnist()
    assert torch.equal(again.test.tensors[0], mnist.test.tensors[0])
    other = load_mnist(seed=1)
    assert not torch.equal(other.test.tensors[0], mnist.test.tensors[0])


def test_validation_split_is_disjoint_and_sized():
    splits = load_mnist(test_size=0.2, val_size=0.1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3500, 500, 1000)
    images = {name: {v.numpy().tobytes() for v in part.tensors[0]}
              for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    assert not images["val"] & images["test"] and not images["train"] & images["val"]
    assert not images["train"] & images["test"]


@pytest.mark.parametrize("kwargs, name", [
    ({"test_size": 0.0}, "test_size"), ({"test_size": 1.0}, "test_size"),
    ({"test_size": -0.1}, "test_size"), ({"val_size": 1.2}, "val_size"),
    ({"val_size": -0.5}, "val_size"), ({"test_size": 0.6, "val_size": 0.5}, "test_size \\+ val_size"),
    ({"source": "internet"}, "source"),
])
def test_bad_mnist_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        load_mnist(**kwargs)


def test_digits_resized_in_mnist_layout():
    digits = load_digits()
    x, y = digits.train.tensors
    assert x.shape[1:] == (1, 28, 28) and len(digits.train) + len(digits.test) == 1797
    raw = x * MNIST_STD + MNIST_MEAN
    # MNIST layout: the digit sits in the central 20x20 box, the 4-pixel border is background
    assert raw[:, :, :4].abs().max().item() < 1e-5 and raw[:, :, :, -4:].abs().max().item() < 1e-5
    assert raw[:, :, 4:24, 4:24].max().item() > 0.9
    assert sorted(torch.unique(y).tolist()) == list(range(10))


def test_digits_stretch_layout_and_size():
    x = load_digits(size=16, layout="stretch", normalize=False).train.tensors[0]
    assert x.shape[1:] == (1, 16, 16) and x[:, :, 0].max().item() >= 0
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0


@pytest.mark.parametrize("kwargs, name", [({"size": 4}, "size"), ({"layout": "center"}, "layout"),
                                          ({"test_size": 1.5}, "test_size")])
def test_bad_digits_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        load_digits(**kwargs)


@pytest.mark.parametrize("kwargs, message", [({"size": 28.0}, "size must be an integer >= 8, got 28.0"),
                                             ({"size": True}, "size must be an integer >= 8, got True"),
                                             ({"test_size": "0.2"}, "test_size must be a number in")])
def test_digits_arguments_of_the_wrong_type(kwargs, message):
    with pytest.raises(TypeError, match=message):
        load_digits(**kwargs)


def test_take_per_class_is_exact_and_seeded(mnist):
    subset = take_per_class(mnist.train, 5, seed=3)
    labels = torch.tensor([int(mnist.train[i][1]) for i in subset.indices])
    assert torch.bincount(labels).tolist() == [5] * 10
    assert take_per_class(mnist.train, 5, seed=3).indices == subset.indices
    assert take_per_class(mnist.train, 5, seed=4).indices != subset.indices


@pytest.mark.parametrize("n, error", [(0, ValueError), (-1, ValueError), (401, ValueError), (2.5, TypeError)])
def test_take_per_class_rejects_bad_n(mnist, n, error):
    with pytest.raises(error, match="n"):
        take_per_class(mnist.train, n)


def test_make_loader_shuffle_depends_only_on_seed(mnist):
    first = [y for _, y in make_loader(mnist.train, 100, shuffle=True, seed=7)]
    again = [y for _, y in make_loader(mnist.train, 100, shuffle=True, seed=7)]
    other = [y for _, y in make_loader(mnist.train, 100, shuffle=True, seed=8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    ordered = next(iter(make_loader(mnist.train, 10)))[1]
    assert torch.equal(ordered, mnist.train.tensors[1][:10])


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-4, ValueError), (1.5, TypeError)])
def test_make_loader_rejects_bad_batch_size(mnist, batch_size, error):
    with pytest.raises(error, match="batch_size must be an integer >= 1"):
        make_loader(mnist.train, batch_size)


def test_random_batches_sample_every_class_unlike_the_first_images(mnist):
    labels = mnist.train.tensors[1]
    assert set(labels[:1000].tolist()) == {0, 1, 2}  # the trap random_batches avoids
    batches = random_batches(mnist.train, num_batches=16, batch_size=64, seed=0)
    assert [tuple(b.shape) for b in batches] == [(64, 1, 28, 28)] * 16
    images = torch.cat(batches)
    # every drawn image is a distinct training image, and all ten digits are represented
    distance, match = torch.cdist(images.flatten(1), mnist.train.tensors[0].flatten(1),
                                  compute_mode="donot_use_mm_for_euclid_dist").min(1)
    assert distance.max() == 0
    assert len(set(match.tolist())) == 1024
    assert set(labels[match].tolist()) == set(range(10))
    again = random_batches(mnist.train, num_batches=16, batch_size=64, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = random_batches(mnist.train, num_batches=16, batch_size=64, seed=1)
    assert not torch.equal(batches[0], other[0])


@pytest.mark.parametrize("kwargs, name", [({"num_batches": 0}, "num_batches"),
                                          ({"num_batches": 2, "batch_size": 0}, "batch_size"),
                                          ({"num_batches": 100, "batch_size": 64}, "exceeds")])
def test_random_batches_rejects_bad_sizes(mnist, kwargs, name):
    with pytest.raises(ValueError, match=name):
        random_batches(mnist.train, **kwargs)
