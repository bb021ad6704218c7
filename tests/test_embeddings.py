"""helpers.embeddings on the real packaged all-MiniLM-L6-v2: offline load, the plain-module wrapper
against sentence-transformers' own encode, fidelity and search helpers against brute force, bad input."""
import copy
import socket

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers.embeddings import (
    SentenceEncoder,
    after_layernorm,
    cosine_fidelity,
    encode,
    load_sentence_model,
    named_linears,
    network_blocked,
    replace_linears,
    search_top1,
    tokenize,
    with_linear_weights,
)

SENTENCES = ["How do I quantize a model?", "Pruning removes weights.", "Distillation trains a small student.",
             "Transfer learning reuses a pretrained network for a new task with few labels."]


@pytest.fixture(scope="module")
def sentence_model():
    return load_sentence_model()


def test_network_blocked_refuses_connections_and_restores():
    with network_blocked():
        with pytest.raises(ConnectionRefusedError, match="network access blocked"):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
    assert socket.socket.connect.__name__ == "connect"


def test_loads_offline_and_wrapper_matches_encode(sentence_model):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert not sentence_model.training
    ids = tokenize(sentence_model, SENTENCES)
    assert ids.shape[0] == 4 and (ids[:, 0] == 101).all()  # [CLS] first; the shortest rows are padded with 0
    with torch.inference_mode():
        ours = SentenceEncoder(sentence_model)(ids)
    reference = sentence_model.encode(SENTENCES, convert_to_tensor=True)
    assert ours.shape == (4, 384)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(ours.norm(dim=1), torch.ones(4), atol=1e-5)


def test_encode_is_sentence_transformers_encode_in_fp32_without_a_graph(sentence_model):
    ours = encode(sentence_model, SENTENCES, batch_size=2)
    assert ours.dtype == torch.float32 and not ours.requires_grad and ours.is_inference()
    with torch.no_grad():
        reference = sentence_model.encode(SENTENCES, convert_to_tensor=True)
    assert torch.allclose(ours, reference, atol=1e-5)
    bf16 = copy.deepcopy(sentence_model).to(torch.bfloat16)
    in_bf16 = encode(bf16, SENTENCES)
    assert in_bf16.dtype == torch.float32 and cosine_fidelity(reference, in_bf16).min() > 0.99


def test_named_linears_replace_linears_and_after_layernorm(sentence_model):
    linears = named_linears(sentence_model)
    # 6 per Transformer layer, and the BERT pooler's (whose output mean pooling does not use)
    assert len(linears) == 37 and all(isinstance(m, nn.Linear) for m in linears.values())
    smoothable = [n for n in linears if after_layernorm(n)]
    assert len(smoothable) == 24  # query, key, value and intermediate.dense in each of 6 layers
    assert not any(n.endswith(("attention.output.dense", ".output.dense")) for n in smoothable)
    first = next(iter(linears))
    assert list(named_linears(sentence_model, [first])) == [first]
    with pytest.raises(ValueError, match=r"names \['nope'\] are not nn.Linear"):
        named_linears(sentence_model, ["nope", first])

    seen = []

    def make(name, layer):
        seen.append(name)
        return nn.Identity() if name == first else layer

    copied = replace_linears(sentence_model, make, names=[first, smoothable[1]])
    assert seen == [first, smoothable[1]]
    assert isinstance(copied.get_submodule(first), nn.Identity)
    assert isinstance(sentence_model.get_submodule(first), nn.Linear)  # the original is untouched
    assert copied.get_submodule(smoothable[1]) is not sentence_model.get_submodule(smoothable[1])
    assert len(named_linears(copied)) == 36


def test_with_linear_weights_sets_weights_in_a_copy_only(sentence_model):
    names = list(named_linears(sentence_model))[:2]
    copied = with_linear_weights(sentence_model, lambda name, layer: torch.zeros_like(layer.weight), names)
    for name, layer in named_linears(copied).items():
        original = sentence_model.get_submodule(name)
        assert torch.equal(layer.bias, original.bias)
        assert (layer.weight == 0).all() == (name in names)
        assert original.weight.abs().sum() > 0  # the original is untouched
    with pytest.raises(ValueError, match=r"has shape \(3,\), the layer's weight \(384, 384\)"):
        with_linear_weights(sentence_model, lambda name, layer: torch.zeros(3), names)


def test_cosine_fidelity_and_search_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    expected = torch.tensor([float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(6)])
    assert torch.allclose(cosine_fidelity(a, b), expected, atol=1e-6)
    assert torch.allclose(cosine_fidelity(a, 3 * a), torch.ones(6), atol=1e-6)
    docs = torch.randn(5, 8, generator=g)
    brute = torch.tensor([max(range(5), key=lambda j: float(F.cosine_similarity(a[i], docs[j], dim=0)))
                          for i in range(6)])
    assert torch.equal(search_top1(a, docs), brute)


def test_bad_input(sentence_model):
    with pytest.raises(ValueError, match="input_ids must be a 2-D"):
        SentenceEncoder(sentence_model)(torch.tensor([101, 102]))
    with pytest.raises(ValueError, match="sentences must be a non-empty list"):
        tokenize(sentence_model, "one string")
    with pytest.raises(ValueError, match="texts must be a non-empty list"):
        encode(sentence_model, [])
    with pytest.raises(ValueError, match="same shape"):
        cosine_fidelity(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="same width"):
        search_top1(torch.zeros(2, 3), torch.zeros(4, 5))
