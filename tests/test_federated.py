"""helpers.federated: FedAvg checked against a hand-computed weighted average, exact byte counts,
packing round trips, the non-IID split, and bad input."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from helpers.data import make_loader
from helpers.federated import (
    QPARAM_BYTES,
    _pack,
    _unpack,
    client_labels,
    compress_update,
    fedavg,
    shard_split,
    uplink_ratio,
)
from helpers.models import CNN
from helpers.quantization import calculate_qparams, fake_quantize


def toy_dataset(n_per_class=20, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 1, 28, 28, generator=g) + y.view(-1, 1, 1, 1) * 0.1
    return TensorDataset(x, y)


def test_shard_split_is_non_iid_disjoint_and_seeded():
    data = toy_dataset()
    clients = shard_split(data, num_clients=10, shards_per_client=2, seed=0)
    indices = [i for c in clients for i in c.indices]
    assert len(indices) == len(set(indices)) == 200  # disjoint, nothing lost (200 divides into 20 shards)
    assert all(len(c) == 20 for c in clients)
    assert all(1 <= len(client_labels(c)) <= 2 for c in clients)  # each shard holds one digit here
    again = shard_split(data, num_clients=10, shards_per_client=2, seed=0)
    assert [c.indices for c in clients] == [c.indices for c in again]
    assert [c.indices for c in clients] != [c.indices for c in shard_split(data, 10, 2, seed=1)]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_round_trip(bits):
    codes = torch.randint(0, 2 ** bits, (37,), dtype=torch.int32)
    packed = _pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(37 * bits / 8)
    assert torch.equal(_unpack(packed, bits, 37), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_compress_update_matches_fake_quantize_and_counts_bytes(bits):
    g = torch.Generator().manual_seed(0)
    update = {"w": torch.randn(16, 9, generator=g) * 1e-2, "b": torch.randn(5, generator=g) * 1e-3}
    decoded, sent = compress_update(update, bits)
    for name, delta in update.items():
        scale, zp = calculate_qparams(delta.min(), delta.max(), bits=bits)
        assert torch.allclose(decoded[name], fake_quantize(delta, scale, zp, bits=bits), atol=1e-9)
        # PyTorch's own fake quantizer agrees
        ref = torch.fake_quantize_per_tensor_affine(delta, float(scale), int(zp), 0, 2 ** bits - 1)
        assert torch.allclose(decoded[name], ref, atol=1e-9)
    per_byte = 8 // bits
    assert sent == math.ceil(144 / per_byte) + math.ceil(5 / per_byte) + 2 * QPARAM_BYTES
    assert uplink_ratio([144, 5], bits) == pytest.approx(4 * 149 / sent)


def test_uncompressed_update_is_exact_and_four_bytes_per_element():
    update = {"w": torch.randn(3, 4)}
    decoded, sent = compress_update(update, None)
    assert torch.equal(decoded["w"], update["w"]) and sent == 48


def test_fedavg_one_round_equals_weighted_average_of_client_models():
    """One round, one local epoch, uncompressed: the new global model is sum_k n_k/n * w_k."""
    data = toy_dataset(n_per_class=6)
    clients = [torch.utils.data.Subset(data, list(range(0, 24))), torch.utils.data.Subset(data, list(range(24, 60)))]
    test_loader = make_loader(data, batch_size=60)
    torch.manual_seed(0)
    model = CNN(channels=(4, 8))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    fedavg(model, clients, test_loader, rounds=1, lr=0.1, batch_size=8, seed=3)
    # replay the two clients by hand with the same loaders and optimizer
    from helpers.training import train
    expected = {k: torch.zeros_like(v) for k, v in start.items()}
    for k, client in enumerate(clients):
        local = CNN(channels=(4, 8))
        local.load_state_dict(start)
        loader = make_loader(client, batch_size=8, shuffle=True, seed=3 * 1_000_003 + 0 * 1_009 + k)
        train(local, loader, num_epochs=1, optimizer=torch.optim.SGD(local.parameters(), lr=0.1), quiet=True)
        for name, p in local.state_dict().items():
            expected[name] += len(client) / 60 * p
    for name, p in model.state_dict().items():
        assert torch.allclose(p, expected[name], atol=1e-6), name


def test_fedavg_history_bytes_and_fraction():
    data = toy_dataset(n_per_class=4)
    clients = shard_split(data, num_clients=4, shards_per_client=2, seed=0)
    test_loader = make_loader(data, batch_size=40)
    model = CNN(channels=(2, 4))
    numel = [p.numel() for p in model.parameters()]
    history = fedavg(model, clients, test_loader, rounds=2, fraction=0.5, bits=8, seed=0)
    per_client = sum(math.ceil(n) + QPARAM_BYTES for n in numel)
    assert history.uplink_bytes == [2 * per_client, 4 * per_client]
    assert len(history.accuracy) == 2 and all(0 <= a <= 1 for a in history.accuracy)


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 3}, "bits must be one of"),
    ({"bits": 16}, "bits must be one of"),
    ({"rounds": 0}, "rounds must be an integer >= 1"),
    ({"local_epochs": 0}, "local_epochs must be an integer >= 1"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"fraction": 0.0}, r"fraction must be in \(0, 1\]"),
    ({"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
    ({"lr": 0.0}, "lr must be positive"),
])
def test_fedavg_bad_input(kwargs, match):
    data = toy_dataset(n_per_class=2)
    clients = shard_split(data, num_clients=2, seed=0)
    arguments = {"rounds": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        fedavg(CNN(channels=(2, 4)), clients, make_loader(data, 20), **arguments)


def test_bad_split_and_model_input():
    data = toy_dataset(n_per_class=1)
    with pytest.raises(ValueError, match="num_clients must be an integer >= 1"):
        shard_split(data, num_clients=0)
    with pytest.raises(TypeError, match="num_clients must be an integer"):
        shard_split(data, num_clients=2.5)
    with pytest.raises(ValueError, match="at most the 10 examples"):
        shard_split(data, num_clients=6, shards_per_client=2)
    with pytest.raises(ValueError, match="clients must hold at least one"):
        fedavg(CNN(), [], make_loader(data, 10), rounds=1)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.BatchNorm1d(10))
    with pytest.raises(ValueError, match="model must have no buffers"):
        fedavg(bn, shard_split(data, 2, 1), make_loader(data, 10), rounds=1)
    with pytest.raises(ValueError, match="bits must be one of"):
        compress_update({"w": torch.zeros(2)}, 1)
