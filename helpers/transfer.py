"""Transfer learning: reuse a model trained on a source task to learn a target task with few labels.

The four recipes chapters/03_algorithms/transfer.ipynb compares, on any model whose last layer
(the *head*, ``fc1`` in :class:`helpers.CNN`) maps the *body*'s features to class scores:

- from scratch: a fresh model trained on the target labels only (no transfer, the reference);
- :func:`linear_probe` (feature extraction): the pretrained body frozen, only a new head trained;
- :func:`fine_tune`: every (unfrozen) parameter trained, usually with a smaller learning rate,
  optionally with layer-wise (discriminative) learning rates from :func:`param_groups`;
- :func:`lp_ft` (linear probe, then fine-tune; Kumar et al., 2022): fine-tuning started from the
  probed head, so the early gradients do not come from a random head and distort the features.

Building blocks: :func:`freeze`, :func:`unfreeze`, :func:`replace_head`, :func:`param_groups`,
:func:`load_pretrained` (a local checkpoint, loaded safely). Bad names, sizes or checkpoints raise
``ValueError`` naming what is wrong, instead of PyTorch's silent partial load or shape error later.
:func:`train_swa` is stochastic weight averaging (Izmailov et al., 2018), which the source document's
"transfer learning" example really was; chapters/04_practice/transfer.ipynb teaches it.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from helpers._checks import check_int, check_number, set_submodule
from helpers.data import make_loader, take_per_class
from helpers.models import CNN
from helpers.training import History, set_seed, train

#: The head of :class:`helpers.CNN`; everything before it (conv1 .. flatten) is the body.
DEFAULT_HEAD = "fc1"


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if name}


def _resolve(model: nn.Module, names: str | Iterable[str], argument: str = "names") -> list[nn.Module]:
    """The submodules called ``names`` (dotted names as in ``model.named_modules()``)."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"{argument} must be a layer name or a sequence of layer names, got {names!r}")
    modules = _modules(model)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"{argument}: unknown layer name(s) {unknown}; "
                         f"the model's layers are {list(modules)}")
    return [modules[n] for n in names]


def freeze(model: nn.Module, names: str | Iterable[str] | None = None) -> nn.Module:
    """Stop gradients for the parameters of the layers ``names`` (all layers when ``None``).

    A frozen parameter has ``requires_grad=False``: no gradient is computed for it and an
    optimizer built from the trainable parameters (``helpers.train``, :func:`param_groups`) never
    changes it. Returns ``model``. Raises ``ValueError`` naming any unknown layer.
    """
    params = model.parameters() if names is None else (
        p for module in _resolve(model, names) for p in module.parameters())
    for p in params:
        p.requires_grad_(False)
    return model


def unfreeze(model: nn.Module, names: str | Iterable[str] | None = None) -> nn.Module:
    """Let gradients flow again into the layers ``names`` (all layers when ``None``)."""
    params = model.parameters() if names is None else (
        p for module in _resolve(model, names) for p in module.parameters())
    for p in params:
        p.requires_grad_(True)
    return model


def trainable_layers(model: nn.Module) -> list[str]:
    """Names of the leaf layers that own at least one trainable parameter, input to output."""
    return [name for name, m in _modules(model).items()
            if not list(m.children()) and any(p.requires_grad for p in m.parameters(recurse=False))]


def _in_features(module: nn.Module) -> int | None:
    """Input width of a head: its own ``in_features`` or that of its first ``Linear``."""
    if hasattr(module, "in_features"):
        return int(module.in_features)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return int(m.in_features)
    return None


def replace_head(model: nn.Module, head: nn.Module | int, name: str = DEFAULT_HEAD) -> nn.Module:
    """Put a new, trainable head in place of the layer ``name`` (in place; returns ``model``).

    ``head`` is either a module or a number of classes, which builds a fresh
    ``nn.Linear(in_features, head)`` with the old head's input width (PyTorch's default init).
    Raises ``ValueError`` if ``name`` is not a layer of ``model``, or if the new head expects a
    different number of input features than the body produces (read from the old head).
    """
    (old,) = _resolve(model, [name], argument="name")
    width = _in_features(old)
    if isinstance(head, bool) or not isinstance(head, (int, nn.Module)):
        raise TypeError(f"head must be an nn.Module or a number of classes, got {type(head).__name__}")
    if isinstance(head, int):
        if head < 2:
            raise ValueError(f"head (number of classes) must be an integer >= 2, got {head}")
        if width is None:
            raise ValueError(f"cannot infer the input width of layer {name!r}; pass a module as head")
        head = nn.Linear(width, head)
    new_width = _in_features(head)
    if width is not None and new_width is not None and new_width != width:
        raise ValueError(f"head expects {new_width} input features but the body feeds layer "
                         f"{name!r} {width} features")
    set_submodule(model, name, head)
    for p in head.parameters():
        p.requires_grad_(True)
    return model


def layerwise_lrs(names: Sequence[str], lr: float, decay: float = 2.6) -> dict[str, float]:
    """Discriminative learning rates (Howard & Ruder, 2018): ``lr`` for the last of ``names``
    (the head), divided by ``decay`` for each step down towards the input,
    ``lr_l = lr / decay ** (L - l)`` (Eq. (tl-lr) of chapters/03_algorithms/transfer.ipynb).

    ``names`` lists layers input to output. Raises ``ValueError`` for ``lr <= 0`` or ``decay < 1``.
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not decay >= 1:
        raise ValueError(f"decay must be >= 1 (1 = one learning rate for all layers), got {decay!r}")
    names = list(names)
    if not names:
        raise ValueError("names must list at least one layer")
    return {n: lr / decay ** (len(names) - 1 - i) for i, n in enumerate(names)}


def param_groups(model: nn.Module, lrs: dict[str, float],
                 default_lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups with one learning rate per layer: ``{"params", "lr", "name"}``.

    ``lrs`` maps layer names to learning rates; a trainable parameter of a layer not in ``lrs``
    gets ``default_lr``, or raises ``ValueError`` when ``default_lr`` is ``None`` (so a layer is
    never trained by accident). Frozen parameters are left out. Pass the result to any
    ``torch.optim`` optimizer, e.g. ``torch.optim.Adam(param_groups(model, lrs))``.
    """
    for n, lr in lrs.items():
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lrs[{n!r}] must be a positive learning rate, got {lr!r}")
    if default_lr is not None and not default_lr > 0:
        raise ValueError(f"default_lr must be positive or None, got {default_lr!r}")
    modules = dict(zip(lrs, _resolve(model, list(lrs), argument="lrs")))
    owner: dict[int, str] = {}
    for n, module in modules.items():  # a parameter belongs to the most specific layer named
        for p in module.parameters():
            if id(p) not in owner or len(n) > len(owner[id(p)]):
                owner[id(p)] = n
    groups: dict[str, list[torch.Tensor]] = {}
    rest = []
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in owner:
            groups.setdefault(owner[id(p)], []).append(p)
        else:
            rest.append((pname, p))
    if rest and default_lr is None:
        raise ValueError(f"lrs has no learning rate for trainable parameter(s) {[n for n, _ in rest]}; "
                         f"add their layers to lrs or pass default_lr")
    result = [{"params": ps, "lr": float(lrs[n]), "name": n} for n, ps in groups.items()]
    if rest:
        result.append({"params": [p for _, p in rest], "lr": float(default_lr), "name": "default"})
    if not result:
        raise ValueError("model has no trainable parameters (all frozen?)")
    return result


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader, head: str = DEFAULT_HEAD
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs the layer ``head`` receives (the body's features) for every example, and labels.

    Runs ``model`` in eval mode with a forward hook on ``head``; the model's mode is restored.
    """
    (layer,) = _resolve(model, [head], argument="head")
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda m, inputs, output: captured.append(inputs[0].detach()))
    was_training = model.training
    model.eval()
    labels = []
    try:
        for x, y in loader:
            model(x)
            labels.append(y)
    finally:
        hook.remove()
        model.train(was_training)
    if not captured:
        raise ValueError("loader yielded no examples")
    return torch.cat(captured), torch.cat(labels)


def linear_probe(model: nn.Module, train_loader: DataLoader, *, num_steps: int = 100,
                 lr: float = 1e-2, weight_decay: float = 1e-2, head: str = DEFAULT_HEAD,
                 num_classes: int | None = None) -> list[float]:
    """Feature extraction: train only a new linear head on the frozen body's features.

    Minimizes Eq. (tl-probe) of chapters/03_algorithms/transfer.ipynb, the cross-entropy of a linear
    classifier (multinomial logistic regression) on the body's features, plus ``weight_decay``
    times half the squared norm of the head's weights, full-batch with Adam for ``num_steps``.
    The features are computed once (the body is frozen, so they never change), which is what makes
    probing cheap. The head ``head`` is replaced by a fresh ``nn.Linear``
    (``num_classes`` outputs, default: the old head's) and left trainable; the body is frozen.
    Returns the training loss per step.
    """
    _check_steps_lr(num_steps, lr)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    (old,) = _resolve(model, [head], argument="head")
    if num_classes is None:
        num_classes = getattr(old, "out_features", None)
        if num_classes is None:
            raise ValueError(f"cannot infer num_classes from layer {head!r}; pass num_classes")
    features, labels = extract_features(model, train_loader, head)
    freeze(model)
    replace_head(model, num_classes, name=head)
    (linear,) = _resolve(model, [head], argument="head")
    opt = torch.optim.Adam(linear.parameters(), lr=lr)
    losses = []
    for _ in range(num_steps):
        loss = F.cross_entropy(linear(features), labels)
        total = loss + 0.5 * weight_decay * linear.weight.pow(2).sum()
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _check_steps_lr(num_steps: int, lr: float) -> None:
    check_int("num_steps", num_steps, minimum=1)
    check_number("lr", lr, 0, low_open=True)


def fine_tune(model: nn.Module, train_loader: DataLoader, *, num_steps: int = 50, lr: float = 1e-3,
              head_lr: float | None = None, decay: float = 1.0, frozen: Iterable[str] = (),
              head: str = DEFAULT_HEAD, weight_decay: float = 0.0) -> History:
    """Fine-tuning: train every parameter except those of the layers ``frozen``, with Adam.

    The head is layer ``L`` and learns at ``head_lr`` (default ``lr``); the trainable layers below
    it, input to output, learn at ``lr / decay ** (L - l)``: the top body layer at ``lr / decay``,
    the one below at ``lr / decay**2`` (:func:`layerwise_lrs`, Eq. (tl-lr) of
    chapters/03_algorithms/transfer.ipynb; ``decay=1`` is one rate for the whole body, Eq. (tl-ft)).
    ``frozen`` layers are frozen first and the rest unfrozen, so the call says exactly what trains.
    Training runs for exactly ``num_steps`` optimizer steps (the last pass over ``train_loader``
    may stop mid-epoch), via :func:`helpers.train`. Returns its :class:`~helpers.training.History`.
    """
    _check_steps_lr(num_steps, lr)
    if head_lr is not None and not head_lr > 0:
        raise ValueError(f"head_lr must be positive or None, got {head_lr!r}")
    _resolve(model, [head], argument="head")
    unfreeze(model)
    frozen = [frozen] if isinstance(frozen, str) else list(frozen)
    if head in frozen:
        raise ValueError(f"frozen must not contain the head {head!r}: nothing would learn the task")
    freeze(model, frozen)
    body = [n for n in trainable_layers(model) if n != head and not n.startswith(head + ".")]
    lrs = layerwise_lrs([*body, head], lr, decay)  # the head is the top layer, L
    lrs[head] = head_lr if head_lr is not None else lr
    optimizer = torch.optim.Adam(param_groups(model, lrs), weight_decay=weight_decay)
    batches = len(train_loader)
    if batches == 0:
        raise ValueError("train_loader yields no batches")
    return train(model, train_loader, num_epochs=math.ceil(num_steps / batches), optimizer=optimizer,
                 quiet=True, max_steps=num_steps)  # a short run: no bar per (partial) epoch


def lp_ft(model: nn.Module, train_loader: DataLoader, *, probe_steps: int = 100,
          probe_lr: float = 1e-2, num_steps: int = 50, lr: float = 1e-3,
          head: str = DEFAULT_HEAD, **fine_tune_kwargs) -> History:
    """Linear probing then fine-tuning (LP-FT, Kumar et al., 2022): :func:`linear_probe`, then
    :func:`fine_tune` of everything starting from the probed head. Returns the fine-tuning history.
    """
    linear_probe(model, train_loader, num_steps=probe_steps, lr=probe_lr, head=head)
    return fine_tune(model, train_loader, num_steps=num_steps, lr=lr, head=head, **fine_tune_kwargs)


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, exclude: Iterable[str] = (),
                    map_location: str = "cpu") -> nn.Module:
    """Load a local checkpoint (a ``state_dict`` saved with ``torch.save``) into ``model``, safely.

    The file is read with ``torch.load(path, weights_only=True)``, which unpickles only tensors and
    plain containers, so a malicious checkpoint cannot run code. Every key must match: missing
    keys, unexpected keys and shape mismatches raise one ``ValueError`` that lists them all
    (``load_state_dict(strict=False)`` would skip them silently and leave random weights behind).
    ``exclude`` lists key prefixes (e.g. ``["fc1."]``) that are neither loaded nor required, for a
    head that will be replaced anyway. Returns ``model``.

    With internet, torchvision's ImageNet weights are used the same way, except that torchvision
    downloads and checks them itself (the book never does)::

        from torchvision.models import resnet18, ResNet18_Weights
        weights = ResNet18_Weights.DEFAULT           # the best available ImageNet weights
        model = resnet18(weights=weights)            # downloaded once to ~/.cache/torch
        preprocess = weights.transforms()            # the resize/normalization they expect
        freeze(model); replace_head(model, 10, name="fc")  # then linear_probe / fine_tune

    or, to reuse them in your own copy of the architecture,
    ``torch.save(resnet18(weights=weights).state_dict(), path)`` once and ``load_pretrained`` after.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint file at {path!r}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"path: {path!r} does not hold a state_dict (a dict of tensors); "
                         f"save one with torch.save(model.state_dict(), path)")
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)

    def kept(key: str) -> bool:
        return not any(key.startswith(prefix) for prefix in exclude)

    own = {k: v for k, v in model.state_dict().items() if kept(k)}
    state = {k: v for k, v in state.items() if kept(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing keys (in the model, not in the checkpoint): {missing}")
        if unexpected:
            problems.append(f"unexpected keys (in the checkpoint, not in the model): {unexpected}")
        if shapes:
            problems.append(f"shape mismatches: {shapes}")
        raise ValueError(f"checkpoint {os.path.basename(path)!r} does not fit the model; "
                         + "; ".join(problems) + ". Use exclude=[prefix] for layers you replace.")
    model.load_state_dict(state, strict=not exclude)
    return model


def train_swa(model: nn.Module, train_loader: DataLoader, *, num_epochs: int, swa_start: int,
              lr: float = 0.05, swa_lr: float = 0.01, anneal_epochs: int = 1,
              momentum: float = 0.9) -> tuple[nn.Module, torch.optim.swa_utils.AveragedModel]:
    """Stochastic weight averaging (Izmailov et al., 2018) with ``torch.optim.swa_utils``, done right.

    SGD (with ``momentum``) at ``lr`` for the first ``swa_start`` epochs; from then on ``SWALR`` (a
    learning-rate *scheduler* wrapped around that optimizer, not an optimizer) anneals to the constant
    ``swa_lr`` over ``anneal_epochs`` epochs, and the running average of the weights is updated
    once per epoch, Eq. (swa-avg) of chapters/04_practice/transfer.ipynb. Finally ``update_bn``
    recomputes BatchNorm running statistics for the averaged weights (a no-op for a model without
    BatchNorm). Returns ``(model, swa_model)``: the last SGD iterate and the ``AveragedModel``.
    """
    from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

    check_int("num_epochs", num_epochs, minimum=1)
    check_int("swa_start", swa_start, minimum=0, maximum=num_epochs - 1)
    if not (lr > 0 and swa_lr > 0):
        raise ValueError(f"lr and swa_lr must be positive, got {lr!r} and {swa_lr!r}")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    swa_model = AveragedModel(model)
    swa_scheduler = SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=anneal_epochs)
    model.train()
    for epoch in range(num_epochs):
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch >= swa_start:
            swa_model.update_parameters(model)
            swa_scheduler.step()
    update_bn(train_loader, swa_model)
    model.eval()
    swa_model.eval()
    return model, swa_model


#: The four few-label recipes chapters/03_algorithms/transfer.ipynb compares (Kumar et al. 2022).
RECIPES = ("scratch", "linear probe", "fine-tune", "LP-FT")


def run_recipe(recipe: str, source_model: nn.Module, train_set, labels_per_class: int | str, seed: int, *,
               num_steps: int = 100, make_model=CNN) -> nn.Module:
    """One of :data:`RECIPES` on ``labels_per_class`` labelled examples per class of ``train_set``.

    The labelled subset is :func:`helpers.data.take_per_class` with ``seed`` (``"all"``: the whole
    set), in batches of up to 64 shuffled with ``seed``; :func:`helpers.set_seed` with ``seed`` before
    the model is built. ``"scratch"`` trains ``make_model()`` for ``num_steps`` steps
    (:func:`fine_tune`); ``"linear probe"`` is :func:`linear_probe` on a copy of ``source_model``;
    ``"fine-tune"`` gives a copy a new 10-class head (:func:`replace_head`) and fine-tunes it
    ``num_steps`` steps; ``"LP-FT"`` is :func:`lp_ft` with ``num_steps``. Returns the trained model.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    subset = train_set if labels_per_class == "all" else take_per_class(train_set, labels_per_class, seed)
    loader = make_loader(subset, min(len(subset), 64), shuffle=True, seed=seed)
    set_seed(seed)
    model = make_model() if recipe == "scratch" else copy.deepcopy(source_model)
    if recipe == "scratch":
        fine_tune(model, loader, num_steps=num_steps)
    elif recipe == "linear probe":
        linear_probe(model, loader)
    elif recipe == "fine-tune":
        replace_head(model, 10)
        fine_tune(model, loader, num_steps=num_steps)
    else:
        lp_ft(model, loader, num_steps=num_steps)
    return model
