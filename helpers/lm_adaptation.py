"""Distilling and adapting a pretrained sentence encoder: the training methods chapters/09_transformer.ipynb leaves out.

Used by chapters/10_transformer_adapt.ipynb.

Written for all-MiniLM-L6-v2 (:mod:`helpers.embeddings`), a ``SentenceTransformer`` whose first
module wraps a ``BertModel``; the training steps here keep the graph (``model.encode`` does not).

- :func:`shallow_student`: a copy of the encoder that keeps only some of its layers, initialized
  from the teacher's, DistilBERT's recipe (Sanh et al. 2019, every other layer);
- :func:`embedding_distillation_loss`: ``1 - cos(student, teacher)`` per text, Eq. (ad-kd);
- :func:`contrastive_loss`: in-batch negatives for retrieval (InfoNCE, van den Oord et al. 2018;
  sentence-transformers' ``MultipleNegativesRankingLoss``), Eq. (ad-nce);
- :class:`LoRALinear` and :func:`add_lora`: LoRA from scratch (Hu et al. 2022), Eq. (ad-lora), on an
  fp32 ``nn.Linear`` or on an :class:`Int8Linear` (int8 codes in memory, one scale per row), the
  QLoRA idea (Dettmers et al. 2023) at the precision a CPU has; tests/test_lm_adaptation.py checks
  it against PEFT's LoRA to float precision;
- :func:`peft_lora`: the same adapters with PEFT, the maintained library;
- :func:`length_batches`: batches of texts of similar token length, so little of a batch is padding;
- :func:`train_steps`: AdamW over the trainable parameters, one batch after another;
- :func:`training_state_bytes`: what training holds besides activations (weights, gradients, Adam).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from helpers._checks import check_int, check_number
from helpers.noise import peft_notices_dropped


def _bert(sentence_model) -> nn.Module:
    try:
        return sentence_model[0].auto_model
    except (TypeError, AttributeError, IndexError) as error:
        raise ValueError("sentence_model must be a SentenceTransformer whose first module wraps a "
                         f"BERT model (helpers.embeddings.load_sentence_model), got {type(sentence_model).__name__}"
                         ) from error


def shallow_student(sentence_model, keep: Sequence[int] = (0, 2, 4)):
    """A copy of ``sentence_model`` with only the Transformer layers ``keep`` (in that order).

    The kept layers, the embeddings, pooling and normalization are the teacher's own weights
    (copied): DistilBERT's initialization, one layer out of two. ``keep`` must be distinct,
    increasing layer indices of the teacher (``ValueError`` otherwise).
    """
    layers = _bert(sentence_model).encoder.layer
    keep = list(keep) if not isinstance(keep, (str, bytes)) else None
    if (not keep or any(isinstance(i, bool) or not isinstance(i, int) for i in keep)
            or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= len(layers)):
        raise ValueError(f"keep must be distinct, increasing layer indices in [0, {len(layers) - 1}], "
                         f"got {keep!r}")
    student = copy.deepcopy(sentence_model)
    bert = _bert(student)
    bert.encoder.layer = nn.ModuleList([bert.encoder.layer[i] for i in keep])
    bert.config.num_hidden_layers = len(keep)
    return student


def embed(sentence_model, texts: Sequence[str]) -> torch.Tensor:
    """Embeddings of ``texts`` with the graph kept, for training (``encode`` runs without one)."""
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings")
    features = sentence_model.preprocess(list(texts))
    return sentence_model(features)["sentence_embedding"]


def _check_pair(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"{a_name} and {b_name} must be non-empty 2-D tensors of the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def embedding_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Eq. (ad-kd): the mean over texts of ``1 - cos(student_i, teacher_i)``.

    DistilBERT's cosine loss (Sanh et al. 2019), here on the sentence embeddings. For unit vectors
    ``||s - t||^2 = 2 (1 - cos)``, so it is also the MSE distillation of Reimers and Gurevych (2020)
    up to a factor.
    """
    _check_pair("student", student, "teacher", teacher)
    return (1 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()


def contrastive_loss(queries: torch.Tensor, documents: torch.Tensor, scale: float = 20.0,
                     reduction: str = "mean") -> torch.Tensor:
    """Eq. (ad-nce): cross-entropy of each query against every document of the batch.

    Row ``i`` of ``documents`` is query ``i``'s own document and every other row is a negative;
    the logits are ``scale`` times the cosine similarities (20, sentence-transformers' default).
    ``reduction="none"`` returns one loss per query (to pair two encoders query by query).
    """
    _check_pair("queries", queries, "documents", documents)
    if len(queries) < 2:
        raise ValueError("queries must hold at least 2 pairs: the other documents are the negatives")
    scale = check_number("scale", scale, 0, low_open=True)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    logits = scale * F.normalize(queries, dim=1) @ F.normalize(documents, dim=1).T
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device), reduction=reduction)


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` stored as int8 codes with one fp32 scale per output row (symmetric).

    ``w_hat = s * q`` with ``s = max|w_row| / 127``; ``forward`` dequantizes and calls ``F.linear``.
    The codes are what memory holds (1 byte per weight), the compute is fp32: the CPU analogue of
    QLoRA's 4-bit storage with bf16 compute. Nothing in it trains.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        self.register_buffer("codes", torch.round(weight / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.codes.float() * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LoRALinear(nn.Module):
    """Eq. (ad-lora): ``y = base(x) + (alpha / r) B A x``, with ``base`` frozen and ``A``, ``B`` trained.

    ``A`` (``r x in``) starts as PEFT's does (Kaiming-uniform with ``a = sqrt(5)``), ``B``
    (``out x r``) at zero, so before training the layer computes exactly what ``base`` does.
    """

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, Int8Linear)):
            raise ValueError(f"base must be an nn.Linear or an Int8Linear, got {type(base).__name__}")
        self.r = check_int("r", r, minimum=1)
        self.scaling = check_number("alpha", alpha, 0, low_open=True) / self.r
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(self.r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)


def add_lora(model: nn.Module, target_modules: Sequence[str] = ("query", "value"), r: int = 8,
             alpha: float = 16.0, int8_base: bool = False) -> nn.Module:
    """Freeze ``model`` (in place) and wrap each ``nn.Linear`` whose name ends in a target in :class:`LoRALinear`.

    With ``int8_base`` every ``nn.Linear`` of the model (targets or not) is first stored as
    :class:`Int8Linear`. Returns ``model``. ``ValueError`` if no ``nn.Linear`` matches a target.
    """
    if isinstance(target_modules, str) or not target_modules:
        raise ValueError(f"target_modules must be a non-empty list of layer-name endings, got {target_modules!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = [n for n in linears if n.split(".")[-1] in target_modules]
    if not targets:
        raise ValueError(f"target_modules {list(target_modules)!r} match no nn.Linear of the model; "
                         f"its Linear layers end in {sorted({n.split('.')[-1] for n in linears})}")
    for name in linears:
        layer = model.get_submodule(name)
        base = Int8Linear(layer) if int8_base else layer
        new = LoRALinear(base, r, alpha) if name in targets else base
        if new is not layer:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def peft_lora(bert: nn.Module, target_modules: Sequence[str] = ("query", "value"), r: int = 8,
              alpha: float = 16.0) -> nn.Module:
    """PEFT's LoRA (``get_peft_model`` with a ``LoraConfig``) on a copy of ``bert``, no dropout."""
    import peft  # lazy: only the adaptation chapter and its tests use PEFT

    config = peft.LoraConfig(r=check_int("r", r, minimum=1), lora_dropout=0.0,
                             lora_alpha=check_number("alpha", alpha, 0, low_open=True),
                             target_modules=list(target_modules))
    with peft_notices_dropped():
        return peft.get_peft_model(copy.deepcopy(bert), config)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts of ``model``; an :class:`Int8Linear`'s weights and bias count too."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stored = sum(m.codes.numel() + (0 if m.bias is None else m.bias.numel())
                 for m in model.modules() if isinstance(m, Int8Linear))
    return trainable, trainable + frozen + stored


def training_state_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes training holds besides activations: weights (as stored), gradients and AdamW's two moments.

    Weights count every parameter and buffer at its dtype's size; gradients and the two moments
    are fp32, one each per trainable parameter.
    """
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"weights": weights, "gradients": 4 * trainable, "Adam moments": 8 * trainable}


def batches(n: int, batch_size: int, epochs: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Shuffled index batches over ``range(n)``, ``epochs`` times, the last short batch of each epoch dropped."""
    n = check_int("n", n, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1, maximum=n)
    epochs = check_int("epochs", epochs, minimum=1)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    out = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        out += list(order[: n - n % batch_size].split(batch_size))
    return out


def length_batches(lengths: Sequence[int], batch_size: int, epochs: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Index batches of items of similar ``lengths``, in a shuffled order, ``epochs`` times.

    Each epoch shuffles the items, leaves out ``len(lengths) % batch_size`` of them (the first
    ones of the shuffle, so a different few each epoch), sorts the rest by length (a stable sort:
    equal lengths stay shuffled), cuts them into batches of ``batch_size`` and shuffles the order
    of the batches. A batch is padded to its longest text, so batching texts of similar length
    spends little of each step on padding.
    """
    lengths = list(lengths)
    for length in lengths:
        check_int("lengths", length, minimum=1)
    if not lengths:
        raise ValueError("lengths must not be empty")
    batch_size = check_int("batch_size", batch_size, minimum=1, maximum=len(lengths))
    epochs = check_int("epochs", epochs, minimum=1)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    out = []
    for _ in range(epochs):
        shuffled = torch.randperm(len(lengths), generator=generator).tolist()
        order = sorted(shuffled[len(lengths) % batch_size:], key=lengths.__getitem__)
        cut = torch.tensor(order).split(batch_size)
        out += [cut[i] for i in torch.randperm(len(cut), generator=generator).tolist()]
    return out


def train_steps(model: nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor],
                index_batches: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.01,
                dropout: bool = True) -> list[float]:
    """One AdamW step per batch on ``loss_of(batch)`` over ``model``'s trainable parameters.

    ``model`` is in train mode during the steps (dropout on) and in eval mode after; with
    ``dropout=False`` it stays in eval mode throughout (on a CPU a forward pass with dropout costs
    much more than one without, and a short run gains little from its regularization). Returns
    the losses. ``ValueError`` if nothing in ``model`` is trainable or there are no batches.
    """
    lr = check_number("lr", lr, 0, low_open=True)
    if not isinstance(dropout, bool):
        raise TypeError(f"dropout must be True or False, got {dropout!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses = []
    model.train(dropout)
    try:
        for batch in index_batches:
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        model.eval()
    if not losses:
        raise ValueError("index_batches must hold at least one batch")
    return losses
