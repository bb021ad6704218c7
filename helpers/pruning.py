"""Pruning from scratch: magnitude masks, schedules, channel surgery and sparse storage.

chapters/03_algorithms/pruning.ipynb explains every function here; chapters/04_practice/pruning.ipynb
compares them with ``torch.nn.utils.prune`` and Torch-Pruning. Three ideas, three groups:

- **Unstructured pruning** zeroes individual weights through a 0/1 mask, ``W ⊙ M`` (Eq. (p.1) of the
  algorithm chapter): :func:`magnitude_mask` (one tensor), :func:`layerwise_magnitude_prune` (the same
  fraction in every layer), :func:`global_magnitude_prune` (one threshold for all layers, Han et al.
  2015), :func:`apply_masks` (keep pruned weights at zero while fine-tuning) and the gradual schedule
  of Zhu & Gupta (2017), :func:`gradual_sparsity` (Eq. (p.3)) and :class:`GradualPruner`.
- **Structured pruning** removes whole output channels (filters) or neurons and rebuilds smaller dense
  layers: :func:`channel_l1_norms` (the criterion of Li et al. 2017) and :func:`prune_channels`.
- **Storage**: a mask on a dense tensor saves nothing; a sparse *format* does.
  :func:`sparse_state_dict` encodes the weights as a bitmask plus values or as CSR, :func:`sparse_size_bytes`
  measures the bytes of that encoding with ``torch.save``, and :func:`dense_state_dict` decodes it.

Masks are boolean tensors (``True`` = keep) in a dict keyed by parameter name (``"conv2.weight"``).
"""
from __future__ import annotations

import copy
import io
import math
import numbers

import numpy as np
import torch
from torch import nn

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SPARSE_FORMATS = ("bitmask", "csr")


# ----------------------------------------------------------------------------------------------
# Unstructured: magnitude masks
# ----------------------------------------------------------------------------------------------
def _count_to_prune(amount, numel: int, name: str = "amount") -> int:
    """Number of entries to prune: ``round(amount * numel)`` for a fraction, ``amount`` for an int.

    The rounding is Python's ``round``, as in ``torch.nn.utils.prune``, so both prune the same count.
    """
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"{name} must be a float fraction in [0, 1) or an int count, got {amount!r}")
    if isinstance(amount, numbers.Integral):
        if not 0 <= amount <= numel:
            raise ValueError(f"{name} as an integer count must be in [0, {numel}] (the number of "
                             f"weights), got {amount}")
        return int(amount)
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {amount!r}")
    return round(amount * numel)


def magnitude_mask(weight: torch.Tensor, amount) -> torch.Tensor:
    """Boolean mask that prunes the ``amount`` smallest-magnitude entries of ``weight`` (Eq. (p.2)).

    ``amount`` is a fraction in ``[0, 1)`` (``round(amount * numel)`` entries are pruned) or an int
    count in ``[0, numel]``. Exactly that many entries are ``False``; ties are broken by
    ``torch.topk``, as in ``torch.nn.utils.prune.l1_unstructured``, whose mask this equals.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    k = _count_to_prune(amount, weight.numel())
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if k:
        smallest = torch.topk(weight.detach().abs().reshape(-1), k=k, largest=False).indices
        mask[smallest] = False
    return mask.view_as(weight)


def prunable_weights(model: nn.Module, names=None) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` to prune: by default the ``weight`` of every Conv/Linear layer.

    ``names`` selects parameters by their ``named_parameters()`` name (e.g. ``["fc1.weight"]``);
    a name the model lacks raises ``ValueError`` listing the valid names.
    """
    params = dict(model.named_parameters())
    if names is None:
        selected = {f"{module_name}.weight" if module_name else "weight": module.weight
                    for module_name, module in model.named_modules()
                    if isinstance(module, PRUNABLE_TYPES)}
        if not selected:
            raise ValueError("model has no Conv or Linear layer to prune")
        return selected
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("names must list at least one parameter")
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"names {missing} are not parameters of the model; valid names: {sorted(params)}")
    return {n: params[n] for n in names}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Multiply each masked parameter by its mask in place: ``W ← W ⊙ M`` (Eq. (p.1)).

    Use it as ``train(..., after_step=lambda m: apply_masks(m, masks))`` so that fine-tuning cannot
    bring pruned weights back (Adam's momentum would otherwise move them off zero).
    """
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"masks names {name!r}, which is not a parameter of the model")
        if mask.shape != params[name].shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, "
                             f"parameter has {tuple(params[name].shape)}")
        params[name].mul_(mask.to(params[name].dtype))


def layerwise_magnitude_prune(model: nn.Module, amount, names=None) -> dict[str, torch.Tensor]:
    """Prune the same fraction ``amount`` of every selected tensor, each by its own threshold.

    Zeroes the weights in place and returns the masks. ``amount`` as in :func:`magnitude_mask`.
    """
    weights = prunable_weights(model, names)
    masks = {name: magnitude_mask(w, amount) for name, w in weights.items()}
    apply_masks(model, masks)
    return masks


def global_magnitude_prune(model: nn.Module, amount, names=None) -> dict[str, torch.Tensor]:
    """Prune the ``amount`` smallest-magnitude weights over all selected tensors together.

    One threshold for the whole model (Han et al. 2015), so layers with many small weights (a big
    ``Linear``) lose more than small, sensitive ones. Equals ``torch.nn.utils.prune.global_unstructured``
    with ``L1Unstructured``. Zeroes the weights in place and returns the masks.
    """
    weights = prunable_weights(model, names)
    flat = torch.cat([w.detach().reshape(-1) for w in weights.values()])
    flat_mask = magnitude_mask(flat, amount)
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = flat_mask[start:start + w.numel()].view_as(w)
        start += w.numel()
    apply_masks(model, masks)
    return masks


def random_masks(model: nn.Module, amount, names=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Masks that prune a random ``amount`` of each selected tensor (a control for magnitude pruning).

    Does not touch the model.
    """
    weights = prunable_weights(model, names)
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, w in weights.items():
        k = _count_to_prune(amount, w.numel())
        mask = torch.ones(w.numel(), dtype=torch.bool)
        mask[torch.randperm(w.numel(), generator=generator)[:k]] = False
        masks[name] = mask.view_as(w)
    return masks


def gradual_sparsity(step: int, *, final_sparsity: float, begin_step: int, end_step: int,
                     initial_sparsity: float = 0.0, frequency: int = 1) -> float:
    """Sparsity at ``step`` under the cubic schedule of Zhu & Gupta (2017), Eq. (p.3).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt))**3`` with ``t0 = begin_step``,
    ``n Δt = end_step - begin_step`` and ``Δt = frequency``: the sparsity only moves on pruning steps
    ``t0, t0 + Δt, ...``, so ``t`` is rounded down to the last one. Before ``begin_step`` it is
    ``initial_sparsity``, from ``end_step`` on ``final_sparsity``. Pruning fast while many redundant
    weights remain and slowly near the end is the point of the cubic.
    """
    for name, value in (("initial_sparsity", initial_sparsity), ("final_sparsity", final_sparsity)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if initial_sparsity > final_sparsity:
        raise ValueError(f"final_sparsity ({final_sparsity}) must be >= initial_sparsity ({initial_sparsity})")
    if not (isinstance(begin_step, int) and isinstance(end_step, int)) or begin_step < 0:
        raise ValueError(f"begin_step must be a non-negative int and end_step an int, "
                         f"got {begin_step!r}, {end_step!r}")
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step})")
    if not isinstance(frequency, int) or not 1 <= frequency <= end_step - begin_step:
        raise ValueError(f"frequency must be an int in [1, end_step - begin_step = "
                         f"{end_step - begin_step}], got {frequency!r}")
    if step < begin_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(final_sparsity)
    t = begin_step + (step - begin_step) // frequency * frequency
    progress = (t - begin_step) / (end_step - begin_step)
    return float(final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3)


class GradualPruner:
    """An ``after_step`` hook for :func:`helpers.train` that prunes along :func:`gradual_sparsity`.

    Counts optimizer steps; on each pruning step (every ``frequency`` steps from ``begin_step`` to
    ``end_step``) it first re-applies the current masks (the optimizer step just taken has moved
    pruned weights off zero: Adam's momentum does), then re-computes global magnitude masks at the
    scheduled sparsity and keeps pruned what was pruned, so each mask is a subset of the previous
    one and a pruned weight never returns. On every other step it re-applies the current masks. ``masks`` holds the current masks, ``history`` the
    ``(step, sparsity)`` pairs at which it pruned. Use ``scope="layer"`` for one fraction per tensor.
    """

    def __init__(self, *, final_sparsity: float, begin_step: int, end_step: int,
                 initial_sparsity: float = 0.0, frequency: int = 1, names=None, scope: str = "global"):
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.schedule = dict(final_sparsity=final_sparsity, begin_step=begin_step, end_step=end_step,
                             initial_sparsity=initial_sparsity, frequency=frequency)
        gradual_sparsity(begin_step, **self.schedule)  # validate the schedule now, not mid-training
        self.names, self.scope = names, scope
        self.step, self.masks, self.history = 0, None, []
        self._current = None

    def __call__(self, model: nn.Module) -> None:
        target = gradual_sparsity(self.step, **self.schedule)
        if target != self._current and self.step >= self.schedule["begin_step"]:
            prune = global_magnitude_prune if self.scope == "global" else layerwise_magnitude_prune
            if self.masks is not None:
                apply_masks(model, self.masks)  # pruned weights back to exactly zero: the smallest
            masks = prune(model, target, self.names)
            if self.masks is not None:  # a tie at zero could pick a kept zero instead: keep both
                masks = {name: mask & self.masks[name] for name, mask in masks.items()}
                apply_masks(model, masks)
            self.masks = masks
            self._current = target
            self.history.append((self.step, target))
        elif self.masks is not None:
            apply_masks(model, self.masks)
        self.step += 1


def lottery_ticket(make_model, fit, *, rounds: int, amount: float, amounts=None, seed: int = 0):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019) and its random re-init control.

    - ``make_model(seed)`` builds a fresh model whose initial weights depend only on ``seed``.
    - ``fit(model, masks)`` trains ``model`` in place keeping ``masks`` applied (e.g. with
      ``after_step=lambda m: apply_masks(m, masks)``) and returns its test accuracy.

    Round 0 trains the dense network from ``make_model(seed)``. Each later round removes ``amount``
    of the weights still alive in every prunable tensor (``amounts`` overrides it per tensor name,
    e.g. half the rate for the output layer as in the paper), judged by their magnitude after the
    previous round's training; the survivors are *rewound* to their initial values from
    ``make_model(seed)`` and trained again (the "ticket"). The control trains the same mask from a
    new random initialisation, ``make_model(seed + 1000 + round)``. Returns a list of dicts with
    ``round``, ``remaining`` (fraction of prunable weights alive), ``ticket`` and ``reinit``
    accuracies (``reinit`` is ``None`` in round 0).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    _count_to_prune(amount, 1)  # validates amount as a fraction in [0, 1)
    amounts = dict(amounts or {})
    model = make_model(seed)
    names = list(prunable_weights(model))
    unknown = set(amounts) - set(names)
    if unknown:
        raise ValueError(f"amounts names {sorted(unknown)}, which are not prunable weights {names}")
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()}
    total = sum(m.numel() for m in masks.values())
    rows = []
    for round_ in range(rounds + 1):
        ticket = make_model(seed)
        apply_masks(ticket, masks)
        ticket_accuracy = fit(ticket, masks)
        reinit_accuracy = None
        if round_ > 0:
            control = make_model(seed + 1000 + round_)
            apply_masks(control, masks)
            reinit_accuracy = fit(control, masks)
        rows.append({"round": round_, "remaining": sum(int(m.sum()) for m in masks.values()) / total,
                     "ticket": ticket_accuracy, "reinit": reinit_accuracy})
        if round_ == rounds:
            break
        trained = prunable_weights(ticket)
        for name, mask in masks.items():
            alive = int(mask.sum())
            k = round(amounts.get(name, amount) * alive)
            if k >= alive:
                raise ValueError(f"amount would prune every remaining weight of {name!r}")
            # rank only the surviving weights: pruned ones get a score below any magnitude
            scores = torch.where(mask, trained[name].detach().abs(), torch.full_like(mask, -1.0, dtype=torch.float32))
            new_mask = mask.clone().reshape(-1)
            if k:
                alive_index = torch.nonzero(mask.reshape(-1)).squeeze(1)
                order = torch.argsort(scores.reshape(-1)[alive_index], stable=True)
                new_mask[alive_index[order[:k]]] = False
            masks[name] = new_mask.view_as(mask)
    return rows


def sparsity_report(model: nn.Module, names=None):
    """Per-tensor parameters, non-zeros and sparsity, plus a ``total`` row (a ``pandas.DataFrame``).

    Reads the parameters themselves, so apply the masks (or ``prune.remove``) first.
    """
    import pandas as pd

    rows = []
    for name, w in prunable_weights(model, names).items():
        nonzero = int(torch.count_nonzero(w))
        rows.append({"tensor": name, "parameters": w.numel(), "nonzero": nonzero})
    table = pd.DataFrame(rows).set_index("tensor")
    table.loc["total"] = table.sum()
    table["sparsity"] = (1 - table["nonzero"] / table["parameters"]).round(4)
    return table


# ----------------------------------------------------------------------------------------------
# Structured: remove whole channels and rebuild smaller layers
# ----------------------------------------------------------------------------------------------
def channel_l1_norms(layer: nn.Module) -> torch.Tensor:
    """L1 norm of each output channel's weights (filter ``i`` is ``layer.weight[i]``), Li et al. (2017)."""
    if not isinstance(layer, PRUNABLE_TYPES):
        raise TypeError(f"layer must be a Conv or Linear layer, got {type(layer).__name__}")
    return layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).sum(dim=1)


def channels_to_keep(layer: nn.Module, amount) -> torch.Tensor:
    """Sorted indices of the output channels that survive pruning ``amount`` of them by L1 norm.

    ``amount``: fraction in ``[0, 1)`` or int count; pruning every channel raises ``ValueError``.
    """
    norms = channel_l1_norms(layer)
    k = _count_to_prune(amount, len(norms))
    if k >= len(norms):
        raise ValueError(f"amount would prune all {len(norms)} channels of the layer; "
                         f"at least one must remain (amount < {len(norms)})")
    keep = torch.topk(norms, k=len(norms) - k, largest=True).indices
    return torch.sort(keep).values


def _get_module(model: nn.Module, name: str, argument: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        layers = [n for n, m in modules.items() if isinstance(m, PRUNABLE_TYPES)]
        raise ValueError(f"{argument} {name!r} is not a layer of the model; layers: {layers}")
    return modules[name]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@torch.no_grad()
def _slice_layer(layer: nn.Module, out_index=None, in_index=None) -> nn.Module:
    """A new layer of the same type holding only the given output rows and/or input columns."""
    weight = layer.weight.detach()
    if out_index is not None:
        weight = weight[out_index]
    if in_index is not None:
        weight = weight[:, in_index]
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias)
    else:
        if layer.groups != 1:
            raise ValueError("prune_channels supports only groups=1 convolutions")
        new = type(layer)(weight.shape[1], weight.shape[0], kernel_size=layer.kernel_size,
                          stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                          bias=has_bias, padding_mode=layer.padding_mode)
    new.weight.copy_(weight)
    if has_bias:
        bias = layer.bias.detach()
        new.bias.copy_(bias[out_index] if out_index is not None else bias)
    return new.to(layer.weight.device)


def prune_channels(model: nn.Module, layer: str, next_layer: str, amount=None, keep=None):
    """Physically remove output channels of ``layer`` and the matching inputs of ``next_layer``.

    Returns ``(pruned_model, keep)``: a deep copy of ``model`` in which ``layer`` is rebuilt as a
    smaller ``Conv``/``Linear`` with only the ``keep`` output channels (filters, or neurons), and
    ``next_layer`` as one with only the inputs those channels fed. It is a genuinely smaller dense
    model: fewer parameters, fewer MACs, no mask. ``model`` itself is not changed.

    Choose the channels with ``amount`` (prune that fraction/count with the lowest L1 norm,
    :func:`channels_to_keep`) or pass ``keep`` (indices) directly. ``next_layer`` may be a ``Conv``
    (its input channels are sliced) or a ``Linear`` after a channel-major ``Flatten``: its
    ``in_features`` must be a multiple of ``layer``'s channels, each channel owning a contiguous block
    of ``in_features / channels`` inputs (e.g. ``7*7`` in :class:`helpers.CNN`). Only element-wise
    layers (ReLU, pooling, Flatten) may sit between the two; a BatchNorm or a skip connection needs
    a dependency graph (Torch-Pruning, chapters/04_practice/pruning.ipynb).
    """
    first = _get_module(model, layer, "layer")
    second = _get_module(model, next_layer, "next_layer")
    for argument, module in (("layer", first), ("next_layer", second)):
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise ValueError(f"{argument} must name a Conv or Linear layer, got {type(module).__name__}")
    channels = first.weight.shape[0]
    if (amount is None) == (keep is None):
        raise ValueError("give exactly one of amount (fraction or count to prune) and keep (indices)")
    if keep is None:
        keep = channels_to_keep(first, amount)
    else:
        keep = torch.as_tensor(keep, dtype=torch.long).reshape(-1)
        if len(keep) == 0:
            raise ValueError(f"keep must name at least one of the {channels} channels of the layer")
        if int(keep.min()) < 0 or int(keep.max()) >= channels or len(torch.unique(keep)) != len(keep):
            raise ValueError(f"keep must hold distinct channel indices in [0, {channels - 1}]")
        keep = torch.sort(keep).values
    second_inputs = second.weight.shape[1]
    if isinstance(second, nn.Linear) and not isinstance(first, nn.Linear):
        if second_inputs % channels:
            raise ValueError(f"next_layer has {second_inputs} inputs, not a multiple of the "
                             f"{channels} channels of layer")
        block = second_inputs // channels
        in_index = (keep[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
    else:
        if second_inputs != channels:
            raise ValueError(f"next_layer takes {second_inputs} input channels but layer "
                             f"produces {channels}")
        in_index = keep
    pruned = copy.deepcopy(model)
    _set_module(pruned, layer, _slice_layer(first, out_index=keep))
    _set_module(pruned, next_layer, _slice_layer(second, in_index=in_index))
    return pruned, keep


# ----------------------------------------------------------------------------------------------
# Storage: what a sparse model costs in a sparse format
# ----------------------------------------------------------------------------------------------
def _pack_bitmask(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    mask = (tensor != 0).reshape(-1).cpu().numpy()
    return {"format": torch.tensor([0], dtype=torch.uint8),
            "shape": torch.tensor(tensor.shape, dtype=torch.int64),
            "bits": torch.from_numpy(np.packbits(mask)),
            "values": tensor.reshape(-1)[torch.from_numpy(mask)].clone()}


def _pack_csr(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    # Built by hand (same layout as ``Tensor.to_sparse_csr``, which warns that CSR is beta).
    matrix = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1)
    nonzero = matrix != 0
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(nonzero.sum(dim=1), 0)])
    index_dtype = torch.int16 if matrix.shape[1] <= torch.iinfo(torch.int16).max else torch.int32
    return {"format": torch.tensor([1], dtype=torch.uint8),
            "shape": torch.tensor(tensor.shape, dtype=torch.int64),
            "crow_indices": crow.to(torch.int32),
            "col_indices": nonzero.nonzero()[:, 1].to(index_dtype),
            "values": matrix[nonzero].clone()}


def sparse_state_dict(model: nn.Module, format: str = "bitmask", names=None) -> dict:
    """The model's ``state_dict`` with the selected weights stored in a sparse format.

    - ``"bitmask"``: one bit per weight (``numpy.packbits`` of ``W != 0``) plus the non-zero values:
      ``numel/8 + 4·nnz`` bytes for fp32.
    - ``"csr"``: the weight as a ``(C_out, rest)`` matrix in compressed sparse rows: row pointers
      (int32), column indices (int16 when the rows are short enough, else int32) and the values:
      ``4·(rows+1) + 2·nnz + 4·nnz`` bytes. Against dense fp32 (``4·numel``) it breaks even at
      about 2/3 density (6 bytes per kept weight against 4 per weight), less the row pointers.

    Every other entry (biases, buffers) stays dense. :func:`dense_state_dict` decodes it exactly.
    """
    if format not in SPARSE_FORMATS:
        raise ValueError(f"format must be one of {SPARSE_FORMATS}, got {format!r}")
    selected = prunable_weights(model, names)
    pack = _pack_bitmask if format == "bitmask" else _pack_csr
    encoded = {}
    for name, value in model.state_dict().items():
        if name in selected:
            for key, part in pack(value.detach()).items():
                encoded[f"{name}::{key}"] = part
        else:
            encoded[name] = value.detach().clone()
    return encoded


def dense_state_dict(encoded: dict) -> dict[str, torch.Tensor]:
    """Decode :func:`sparse_state_dict` back to an ordinary ``state_dict`` (bit-exact)."""
    dense, parts = {}, {}
    for key, value in encoded.items():
        if "::" in key:
            name, part = key.split("::", 1)
            parts.setdefault(name, {})[part] = value
        else:
            dense[key] = value
    for name, p in parts.items():
        shape = tuple(int(s) for s in p["shape"])
        numel = math.prod(shape)
        if int(p["format"][0]) == 0:
            mask = np.unpackbits(p["bits"].numpy(), count=numel).astype(bool)
            flat = torch.zeros(numel, dtype=p["values"].dtype)
            flat[torch.from_numpy(mask)] = p["values"]
            dense[name] = flat.view(shape)
        else:
            rows = shape[0] if len(shape) > 1 else 1
            counts = p["crow_indices"].long().diff()
            row_index = torch.repeat_interleave(torch.arange(rows), counts)
            matrix = torch.zeros(rows, numel // rows, dtype=p["values"].dtype)
            matrix[row_index, p["col_indices"].long()] = p["values"]
            dense[name] = matrix.reshape(shape)
    return dense


def sparse_size_bytes(model: nn.Module, format: str = "bitmask", names=None) -> int:
    """Bytes of ``torch.save(sparse_state_dict(model, format))``: the measured sparse file size.

    Compare with :func:`helpers.model_size_bytes` (the dense ``state_dict``). Masks must be applied
    (weights really zero); a model still carrying ``torch.nn.utils.prune`` hooks should be
    ``prune.remove``d first.
    """
    buffer = io.BytesIO()
    torch.save(sparse_state_dict(model, format, names), buffer)
    return buffer.getbuffer().nbytes
