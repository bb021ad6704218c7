"""Pruning from scratch: magnitude masks, schedules, channel surgery, and the pruning recipes.

chapters/03_algorithms/pruning.ipynb explains every function here; chapters/04_practice/pruning.ipynb
compares them with ``torch.nn.utils.prune`` and Torch-Pruning. Three ideas, three groups:

- **Unstructured pruning** zeroes individual weights through a 0/1 mask, ``W ⊙ M`` (Eq. (p.1) of the
  algorithm chapter): :func:`magnitude_mask` (one tensor), :func:`layerwise_magnitude_prune` (the same
  fraction in every layer), :func:`global_magnitude_prune` (one threshold for all layers, Han et al.
  2015), :func:`apply_masks` (keep pruned weights at zero while fine-tuning) and the gradual schedule
  of Zhu & Gupta (2017), :func:`gradual_sparsity` (Eq. (p.3)) and :class:`GradualPruner`.
- **Structured pruning** removes whole output channels (filters) or neurons and rebuilds smaller dense
  layers: :func:`channel_l1_norms` (the criterion of Li et al. 2017) and :func:`prune_channels`.
- **Recipes** the chapters and the benchmark share: :func:`iterative_magnitude_prune` (prune and
  fine-tune in rounds) and :func:`prune_chain` (remove channels along a chain of layers).

A mask on a dense tensor saves no storage; a sparse *format* does: that is :mod:`helpers.sparse`.

Masks are boolean tensors (``True`` = keep) in a dict keyed by parameter name (``"conv2.weight"``).
"""
from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from helpers._checks import check_int, get_submodule, set_submodule
from helpers.training import train

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
    check_int("begin_step", begin_step, minimum=0)
    check_int("end_step", end_step)
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step})")
    check_int("frequency", frequency, minimum=1, maximum=end_step - begin_step)  # end_step - begin_step
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
    one and a pruned weight never returns. On every other step it re-applies the current masks.
    ``masks`` holds the current masks, ``history`` the ``(step, sparsity)`` pairs at which it pruned.
    Use ``scope="layer"`` for one fraction per tensor.
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
    check_int("rounds", rounds, minimum=1)
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
    first = get_submodule(model, layer, "layer", PRUNABLE_TYPES)
    second = get_submodule(model, next_layer, "next_layer", PRUNABLE_TYPES)
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
    set_submodule(pruned, layer, _slice_layer(first, out_index=keep))
    set_submodule(pruned, next_layer, _slice_layer(second, in_index=in_index))
    return pruned, keep


#: The chain of :class:`helpers.CNN`: conv1 feeds conv2, conv2 feeds fc1 (through a Flatten).
CNN_CHAIN = (("conv1", "conv2"), ("conv2", "fc1"))


def prune_chain(model: nn.Module, amount, chain=CNN_CHAIN):
    """:func:`prune_channels` along a chain of layers: ``amount`` of each ``layer``'s channels go.

    ``chain`` is a sequence of ``(layer, next_layer)`` pairs, applied in order; the default halves
    (``amount=0.5``) both convolutions of :class:`helpers.CNN`. Returns ``(pruned_model, kept)``
    with ``kept[layer]`` the indices of the channels kept (of the layer as it was then).
    """
    kept = {}
    for layer, next_layer in chain:
        model, kept[layer] = prune_channels(model, layer, next_layer, amount=amount)
    return model, kept


def iterative_magnitude_prune(model: nn.Module, train_loader, amount, *, rounds: int, epochs_per_round: int,
                              names=None, log_dir=None) -> nn.Module:
    """Prune-then-fine-tune in ``rounds`` rounds to global sparsity ``amount`` (Han et al. 2015).

    A copy of ``model``; round ``r`` of ``R`` prunes it to ``1 - (1 - amount)^(r / R)`` with
    :func:`global_magnitude_prune` (the same fraction of the surviving weights each round), then
    trains ``epochs_per_round`` epochs with :func:`helpers.train`, masks re-applied after every step
    (:func:`apply_masks`). The zeros are in the returned weights: no mask or hook stays behind.
    Seed before calling (:func:`helpers.set_seed`) for a repeatable run. With ``log_dir``, the
    rounds' training is logged to TensorBoard there as one run, steps and epochs counted on from
    round to round (:func:`helpers.train`'s ``first_step`` and ``first_epoch``).
    """
    check_int("rounds", rounds, minimum=1)
    check_int("epochs_per_round", epochs_per_round, minimum=0)
    _count_to_prune(amount, 1)  # validates amount as a fraction in [0, 1)
    pruned = copy.deepcopy(model)
    for r in range(1, rounds + 1):
        masks = global_magnitude_prune(pruned, 1 - (1 - amount) ** (r / rounds), names)
        if epochs_per_round:
            done = (r - 1) * epochs_per_round
            train(pruned, train_loader, num_epochs=epochs_per_round,
                  after_step=lambda m, masks=masks: apply_masks(m, masks), log_dir=log_dir,
                  first_step=done * len(train_loader), first_epoch=done)
    return pruned
