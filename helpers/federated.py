"""Federated averaging (FedAvg) simulated on one machine, with compressed client updates.

chapters/07_federated.ipynb uses it. McMahan et al. (2017): in every round the server sends the
global weights ``w_t`` to a fraction ``C`` of the ``K`` clients; client ``k`` trains them for ``E``
local epochs of minibatch SGD on its own ``n_k`` examples, giving ``w_{t+1}^k``, and the server
averages (equation ``fl-fedavg`` of the chapter)::

    w_{t+1} = w_t + sum_k (n_k / n) * Delta_k,      Delta_k = w_{t+1}^k - w_t,  n = sum of n_k (clients of the round)

which equals the weighted average of the client weights. Uploading ``Delta_k`` instead of the
weights lets a client compress it: here each tensor of the update is quantized to ``bits`` bits
with the book's uniform affine quantizer (:func:`helpers.quantization.quantize`, per tensor,
min-max range), codes packed ``8 // bits`` per byte, plus one fp32 scale and one 1-byte zero-point
per tensor. The uplink bytes are counted exactly from what would be sent.

The clients' data is non-IID in McMahan et al.'s "pathological" way (:func:`shard_split`):
examples sorted by label, cut into ``shards_per_client * K`` equal shards, each client given
``shards_per_client`` random shards, so most clients see only two digits.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from helpers._checks import check_int
from helpers.data import make_loader
from helpers.quantization import calculate_qparams, dequantize, quantize
from helpers.training import evaluate, train

#: Bit widths an update can be quantized to: codes pack into whole bytes (8 // bits per byte).
UPDATE_BITS = (2, 4, 8)
#: Bytes sent per quantized tensor besides its codes: an fp32 scale and an 8-bit zero-point.
QPARAM_BYTES = 4 + 1
FP32_BYTES = 4


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    check_int(name, value, minimum=low, maximum=high)


def _check_bits(bits) -> None:
    if bits is not None and (isinstance(bits, bool) or bits not in UPDATE_BITS):
        raise ValueError(f"bits must be one of {UPDATE_BITS} or None (uncompressed fp32), got {bits!r}")


def shard_split(dataset: Dataset, num_clients: int, shards_per_client: int = 2,
                seed: int = 0) -> list[Subset]:
    """Non-IID split: sort by label, cut into ``num_clients * shards_per_client`` equal shards,
    give every client ``shards_per_client`` shards drawn at random (McMahan et al. 2017, Sec. 3).

    ``dataset`` yields ``(x, label)``. Leftover examples (when the shards do not divide the data)
    are dropped. Raises ``ValueError`` if ``num_clients`` or ``shards_per_client`` is < 1 or there
    are fewer examples than shards.
    """
    _check_int("num_clients", num_clients, 1)
    _check_int("shards_per_client", shards_per_client, 1)
    num_shards = num_clients * shards_per_client
    labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
    if len(labels) < num_shards:
        raise ValueError(f"num_clients * shards_per_client = {num_shards} must be at most the "
                         f"{len(labels)} examples of dataset")
    order = torch.sort(labels, stable=True).indices
    shard_size = len(labels) // num_shards
    shards = order[:num_shards * shard_size].reshape(num_shards, shard_size)
    generator = torch.Generator().manual_seed(seed)
    assignment = torch.randperm(num_shards, generator=generator).reshape(num_clients, shards_per_client)
    return [Subset(dataset, shards[row].flatten().sort().values.tolist()) for row in assignment]


def client_labels(client: Subset) -> list[int]:
    """The distinct labels a client holds, sorted."""
    return sorted({int(client.dataset[i][1]) for i in client.indices})


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit codes packed into a flat uint8 tensor, ``8 // bits`` codes per byte."""
    per_byte = 8 // bits
    flat = codes.flatten().to(torch.uint8)
    pad = (-flat.numel()) % per_byte
    flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, per_byte)
    packed = torch.zeros(flat.shape[0], dtype=torch.uint8)
    for slot in range(per_byte):
        packed |= flat[:, slot] << (slot * bits)
    return packed


def _unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    slots = [(packed >> (slot * bits)) & mask for slot in range(per_byte)]
    return torch.stack(slots, dim=1).flatten()[:numel].to(torch.int32)


def compress_update(update: dict[str, torch.Tensor], bits: int | None
                    ) -> tuple[dict[str, torch.Tensor], int]:
    """What the server receives from one client, and how many bytes it took to send.

    ``bits=None`` sends every tensor as fp32 (4 bytes per element). ``bits`` in :data:`UPDATE_BITS`
    quantizes each tensor per tensor (min-max range, asymmetric, unsigned codes, round half to
    even), packs the codes ``8 // bits`` per byte and adds :data:`QPARAM_BYTES` per tensor; the
    server unpacks and dequantizes. Returns ``(decoded update, bytes sent)``.
    """
    _check_bits(bits)
    decoded, sent = {}, 0
    for name, delta in update.items():
        delta = delta.detach().to(torch.float32)
        if bits is None:
            decoded[name] = delta.clone()
            sent += FP32_BYTES * delta.numel()
            continue
        scale, zero_point = calculate_qparams(delta.min(), delta.max(), bits=bits)
        packed = _pack(quantize(delta, scale, zero_point, bits=bits), bits)
        codes = _unpack(packed, bits, delta.numel()).reshape(delta.shape)
        decoded[name] = dequantize(codes, scale, zero_point)
        sent += packed.numel() + QPARAM_BYTES
    return decoded, sent


@dataclass
class FedAvgHistory:
    """Per round: test accuracy of the global model and uplink bytes sent by all clients so far."""

    accuracy: list[float] = field(default_factory=list)
    uplink_bytes: list[int] = field(default_factory=list)


def fedavg(model: nn.Module, clients: list[Dataset], test_loader, *, rounds: int, local_epochs: int = 1,
           batch_size: int = 32, lr: float = 0.05, fraction: float = 1.0, bits: int | None = None,
           seed: int = 0) -> FedAvgHistory:
    """Train ``model`` in place with federated averaging; return its :class:`FedAvgHistory`.

    Each round samples ``max(1, round(fraction * K))`` of the ``K`` clients (seeded), each trains a
    copy of the global model with plain SGD (``lr``, no momentum, a fresh optimizer every round as
    in McMahan et al.) for ``local_epochs`` epochs of batches of ``batch_size``, and uploads its
    update, compressed by :func:`compress_update` with ``bits``. The server adds the
    ``n_k``-weighted mean of the decoded updates to the global weights and the global model is
    evaluated on ``test_loader``. Only parameters are averaged, so a model with buffers (BatchNorm
    statistics) is refused. Raises ``ValueError`` for ``rounds``, ``local_epochs`` or ``batch_size``
    < 1, ``fraction`` outside (0, 1], ``lr <= 0``, unsupported ``bits``, an empty ``clients`` or a
    model with buffers.
    """
    _check_int("rounds", rounds, 1)
    _check_int("local_epochs", local_epochs, 1)
    _check_int("batch_size", batch_size, 1)
    _check_bits(bits)
    if not clients:
        raise ValueError("clients must hold at least one client dataset")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if any(True for _ in model.buffers()):
        raise ValueError("model must have no buffers (e.g. BatchNorm statistics): fedavg averages parameters only")
    per_round = max(1, round(fraction * len(clients)))
    generator = torch.Generator().manual_seed(seed)
    history, total_bytes = FedAvgHistory(), 0
    for round_ in range(rounds):
        chosen = torch.randperm(len(clients), generator=generator)[:per_round].sort().values.tolist()
        global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params = dict(model.named_parameters())
        sizes = [len(clients[k]) for k in chosen]
        total = sum(sizes)
        aggregate = {name: torch.zeros_like(p) for name, p in params.items()}
        for k, n_k in zip(chosen, sizes):
            local = copy.deepcopy(model)
            optimizer = torch.optim.SGD(local.parameters(), lr=lr)
            loader = make_loader(clients[k], batch_size=batch_size, shuffle=True,
                                 seed=seed * 1_000_003 + round_ * 1_009 + k)
            train(local, loader, num_epochs=local_epochs, optimizer=optimizer, quiet=True)
            update = {name: p.detach() - global_state[name] for name, p in local.named_parameters()}
            decoded, sent = compress_update(update, bits)
            total_bytes += sent
            for name in aggregate:
                aggregate[name] += (n_k / total) * decoded[name]
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(global_state[name] + aggregate[name])
        history.accuracy.append(evaluate(model, test_loader).accuracy)
        history.uplink_bytes.append(total_bytes)
    return history


def uplink_ratio(numel_per_tensor: list[int], bits: int) -> float:
    """fp32 bytes over quantized bytes for one update of tensors of these sizes (exact, with overhead)."""
    _check_bits(bits)
    if bits is None:
        raise ValueError("bits must be one of (2, 4, 8) here")
    fp32 = FP32_BYTES * sum(numel_per_tensor)
    quantized = sum(math.ceil(n / (8 // bits)) + QPARAM_BYTES for n in numel_per_tensor)
    return fp32 / quantized
