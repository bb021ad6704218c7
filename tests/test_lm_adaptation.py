"""helpers.lm_adaptation against independent formulas and against PEFT's LoRA on the real model."""
import copy
import math

import pytest
import torch
from torch import nn

from helpers.lm_adaptation import (
    Int8Linear,
    LoRALinear,
    add_lora,
    batches,
    contrastive_loss,
    embed,
    embedding_distillation_loss,
    length_batches,
    peft_lora,
    shallow_student,
    train_steps,
    trainable_parameters,
    training_state_bytes,
)

TEXTS = ["Return the number of items in the queue.", "Open a file and return a stream.",
         "Compute the greatest common divisor of two integers."]


@pytest.fixture(scope="module")
def sentence_model():
    from helpers.embeddings import load_sentence_model

    return load_sentence_model()


def test_shallow_student_keeps_the_teachers_layers(sentence_model):
    student = shallow_student(sentence_model, keep=(0, 2, 4))
    teacher_layers = sentence_model[0].auto_model.encoder.layer
    student_layers = student[0].auto_model.encoder.layer
    assert len(teacher_layers) == 6 and len(student_layers) == 3  # the teacher is untouched
    assert student[0].auto_model.config.num_hidden_layers == 3
    for kept, original in zip(student_layers, (0, 2, 4)):
        for (name, a), (_, b) in zip(kept.state_dict().items(), teacher_layers[original].state_dict().items()):
            assert torch.equal(a, b), name
        query = kept.attention.self.query.weight
        assert query.data_ptr() != teacher_layers[original].attention.self.query.weight.data_ptr()  # a copy
    with torch.no_grad():
        # all six layers kept: the same encoder; three kept: a different one
        same = shallow_student(sentence_model, keep=range(6))
        assert torch.allclose(embed(same, TEXTS), embed(sentence_model, TEXTS), atol=1e-6)
        cos = torch.cosine_similarity(embed(student, TEXTS), embed(sentence_model, TEXTS))
        assert cos.max() < 0.99
    for bad in [(), (0, 0), (2, 0), (0, 6), (-1, 2), (0.0, 2), "024", (True,)]:
        with pytest.raises(ValueError, match=r"keep must be distinct, increasing layer indices in \[0, 5\]"):
            shallow_student(sentence_model, keep=bad)
    with pytest.raises(ValueError, match="sentence_model must be a SentenceTransformer"):
        shallow_student(nn.Linear(2, 2))


def test_embed_keeps_the_graph_and_matches_encode(sentence_model):
    out = embed(sentence_model, TEXTS)
    assert out.requires_grad and out.shape == (3, 384)
    reference = sentence_model.encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(out.detach(), reference, atol=1e-5)
    with pytest.raises(ValueError, match="texts must be a non-empty list"):
        embed(sentence_model, "one text")


def test_distillation_loss_is_one_minus_cosine():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7, requires_grad=True), torch.randn(5, 7, requires_grad=True)
    sd, td = s.detach(), t.detach()
    expected = sum(1 - float(sd[i] @ td[i]) / (sd[i].norm().item() * td[i].norm().item()) for i in range(5)) / 5
    loss = embedding_distillation_loss(s, t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert t.grad is None and s.grad is not None  # the teacher is a target, not trained
    # for unit vectors: half the squared distance
    su, tu = nn.functional.normalize(s.detach(), dim=1), nn.functional.normalize(t.detach(), dim=1)
    half_squared_distance = ((su - tu) ** 2).sum(1).mean().item() / 2
    assert embedding_distillation_loss(su, tu).item() == pytest.approx(half_squared_distance, rel=1e-5)
    with pytest.raises(ValueError, match="student and teacher must be non-empty 2-D tensors of the same shape"):
        embedding_distillation_loss(s, t[:4])


def test_contrastive_loss_against_the_formula():
    torch.manual_seed(1)
    q, d = torch.randn(4, 6).double(), torch.randn(4, 6).double()
    scale = 20.0
    cos = [[float(q[i] @ d[j]) / (q[i].norm().item() * d[j].norm().item()) for j in range(4)] for i in range(4)]
    expected = [-scale * cos[i][i] + math.log(sum(math.exp(scale * c) for c in cos[i])) for i in range(4)]
    assert contrastive_loss(q, d, scale).item() == pytest.approx(sum(expected) / 4, rel=1e-9)
    assert contrastive_loss(q, d, scale, reduction="none").tolist() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none', got 'sum'"):
        contrastive_loss(q, d, reduction="sum")
    # a batch whose own documents are the nearest by far has a loss near zero
    assert contrastive_loss(torch.eye(4), torch.eye(4)).item() < 1e-6
    with pytest.raises(ValueError, match="at least 2 pairs"):
        contrastive_loss(q[:1], d[:1])
    with pytest.raises(ValueError, match="scale must be a positive, finite number, got 0"):
        contrastive_loss(q, d, 0)
    with pytest.raises(ValueError, match="queries and documents must be"):
        contrastive_loss(q, d[:, :5])


def test_int8_linear_stores_int8_codes_within_half_a_step():
    torch.manual_seed(2)
    linear = nn.Linear(32, 8)
    q = Int8Linear(linear)
    assert q.codes.dtype == torch.int8 and q.scale.shape == (8, 1)
    step = linear.weight.abs().amax(1, keepdim=True) / 127
    assert torch.all((q.weight - linear.weight).abs() <= step / 2 + 1e-7)
    assert torch.equal(q.codes.abs().amax(1), torch.full((8,), 127, dtype=torch.int8))
    x = torch.randn(3, 32)
    assert torch.allclose(q(x), x @ q.weight.T + linear.bias)
    assert list(q.parameters()) == []
    with pytest.raises(ValueError, match="linear must be an nn.Linear"):
        Int8Linear(nn.Conv1d(1, 1, 1))


def _peft_like(peft_model, ours):
    """Copy PEFT's (randomized) A and B into our LoRA layers of the same names."""
    theirs = {n: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and hasattr(m.lora_A, "keys")}
    mine = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    assert len(theirs) == len(mine) > 0
    for name, layer in mine.items():
        peft_layer = theirs["base_model.model." + name]
        nn.init.normal_(peft_layer.lora_B["default"].weight)  # B = 0 would hide a wrong B
        layer.lora_A.data.copy_(peft_layer.lora_A["default"].weight)
        layer.lora_B.data.copy_(peft_layer.lora_B["default"].weight)
        assert layer.scaling == peft_layer.scaling["default"]


def test_lora_from_scratch_computes_what_peft_computes(sentence_model):
    bert = sentence_model[0].auto_model
    theirs = peft_lora(bert, ("query", "value"), r=8, alpha=16)
    ours = add_lora(copy.deepcopy(bert), ("query", "value"), r=8, alpha=16)
    ids = sentence_model.preprocess(TEXTS)
    with torch.no_grad():
        # B starts at zero: before training both compute the original model
        assert torch.equal(ours(**ids).last_hidden_state, bert(**ids).last_hidden_state)
        _peft_like(theirs, ours)
        mine, peft_out = ours(**ids).last_hidden_state, theirs(**ids).last_hidden_state
    assert not torch.allclose(mine, bert(**ids).last_hidden_state, atol=1e-2)
    assert torch.allclose(mine, peft_out, atol=1e-5)
    assert trainable_parameters(ours) == trainable_parameters(theirs)
    assert trainable_parameters(ours)[0] == 6 * 2 * 8 * (384 + 384)
    # only A and B train
    assert {n.split(".")[-1] for n, p in ours.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def test_lora_on_an_int8_base(sentence_model):
    bert = sentence_model[0].auto_model
    model = add_lora(copy.deepcopy(bert), ("query", "value"), int8_base=True)
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 37  # every Linear, pooler too
    trainable, total = trainable_parameters(model)
    assert trainable == 73_728 and total == sum(p.numel() for p in bert.parameters()) + trainable
    ids = sentence_model.preprocess(TEXTS)
    mask = ids["attention_mask"].unsqueeze(-1)

    def pooled(m):  # the sentence embedding: the mean over real tokens, not padding
        with torch.no_grad():
            return (m(**ids).last_hidden_state * mask).sum(1) / mask.sum(1)

    assert torch.cosine_similarity(pooled(model), pooled(bert)).min() > 0.999
    state = training_state_bytes(model)
    linear_weights = sum(m.weight.numel() for m in bert.modules() if isinstance(m, nn.Linear))
    fp32 = training_state_bytes(add_lora(copy.deepcopy(bert), ("query", "value")))
    # each Linear weight goes from 4 bytes to 1, plus one fp32 scale per row
    rows = sum(m.out_features for m in bert.modules() if isinstance(m, nn.Linear))
    assert fp32["weights"] - state["weights"] == 3 * linear_weights - 4 * rows
    assert state["gradients"] == 4 * trainable and state["Adam moments"] == 8 * trainable


def test_add_lora_and_lora_linear_reject_bad_arguments():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"match no nn.Linear of the model; its Linear layers end in \['0'\]"):
        add_lora(copy.deepcopy(model), ("query",))
    with pytest.raises(ValueError, match="target_modules must be a non-empty list"):
        add_lora(copy.deepcopy(model), "0")
    with pytest.raises(ValueError, match="r must be an integer >= 1, got 0"):
        LoRALinear(nn.Linear(4, 4), r=0)
    with pytest.raises(ValueError, match="alpha must be a positive, finite number"):
        LoRALinear(nn.Linear(4, 4), alpha=-1)
    with pytest.raises(ValueError, match="base must be an nn.Linear or an Int8Linear"):
        LoRALinear(nn.Conv1d(1, 1, 1))


def test_training_state_bytes_counts_weights_gradients_and_moments():
    model = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    model[1].weight.requires_grad_(False)
    params = 10 * 5 + 5 + 5 + 5
    trainable = params - 5
    # buffers: running mean and variance (fp32, 5 each), batches tracked (one int64)
    assert training_state_bytes(model) == {"weights": 4 * params + 4 * 10 + 8,
                                           "gradients": 4 * trainable, "Adam moments": 8 * trainable}


def test_length_batches_group_similar_lengths():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 3]
    out = length_batches(lengths, 3, epochs=2, seed=1)
    assert len(out) == 2 * (len(lengths) // 3)
    for epoch in (out[:3], out[3:]):
        items = torch.cat(epoch).tolist()
        assert len(set(items)) == 9  # each epoch: distinct items, the 2 left over dropped
        # the batches are consecutive runs of the length-sorted order: no two overlap in length
        spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in epoch)
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
    assert all(torch.equal(a, b) for a, b in zip(out, length_batches(lengths, 3, epochs=2, seed=1)))
    orders = {tuple(tuple(b.tolist()) for b in length_batches(lengths, 3, seed=s)) for s in range(8)}
    assert len(orders) > 1  # the seed shuffles
    left_out = {frozenset(range(11)) - {i for b in length_batches(lengths, 3, seed=s) for i in b.tolist()}
                for s in range(8)}
    assert len(left_out) > 1 and all(len(x) == 2 for x in left_out)  # not always the longest two
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 11\], got 12"):
        length_batches(lengths, 12)
    with pytest.raises(ValueError, match="lengths must not be empty"):
        length_batches([], 1)
    with pytest.raises(ValueError, match="lengths"):
        length_batches([3, 0, 2], 1)


def test_batches_partition_each_epoch():
    out = batches(10, 3, epochs=2, seed=5)
    assert len(out) == 6 and all(len(b) == 3 for b in out)
    first, second = torch.cat(out[:3]), torch.cat(out[3:])
    assert len(set(first.tolist())) == 9 and len(set(second.tolist())) == 9
    assert all(torch.equal(a, b) for a, b in zip(out, batches(10, 3, epochs=2, seed=5)))
    assert not all(torch.equal(a, b) for a, b in zip(out, batches(10, 3, epochs=2, seed=6)))
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 10\], got 11"):
        batches(10, 11)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        batches(10, 2, epochs=0)


def test_train_steps_lowers_the_loss_of_the_trainable_part_only():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    frozen = model[0].weight.clone()
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    seen_training = []

    def loss_of(batch):
        seen_training.append(model.training)
        return nn.functional.mse_loss(model(x[batch]), y[batch])

    losses = train_steps(model, loss_of, batches(64, 16, epochs=20), lr=1e-2)
    assert len(losses) == 80 and sum(losses[-8:]) < 0.8 * sum(losses[:8])
    assert all(seen_training) and not model.training
    assert torch.equal(model[0].weight, frozen)
    seen_training.clear()
    train_steps(model, loss_of, batches(64, 16), lr=1e-2, dropout=False)
    assert seen_training == [False] * 4 and not model.training
    with pytest.raises(TypeError, match="dropout must be True or False, got 0"):
        train_steps(model, loss_of, batches(64, 16), lr=1e-2, dropout=0)
    with pytest.raises(TypeError, match="dropout must be True or False"):  # checked before anything runs
        train_steps(nn.Linear(2, 2).requires_grad_(False), loss_of, [], lr=1e-2, dropout="no")
    with pytest.raises(ValueError, match="index_batches must hold at least one batch"):
        train_steps(model, loss_of, [], lr=1e-2)
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        train_steps(nn.Linear(2, 2).requires_grad_(False), loss_of, [torch.arange(2)], lr=1e-2)
    with pytest.raises(ValueError, match="lr must be a positive, finite number"):
        train_steps(model, loss_of, [torch.arange(2)], lr=0)
