"""helpers.distillation: the KD loss against an independent reference, its T^2 scaling, the loops."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from helpers.data import MNIST_MEAN, MNIST_STD, make_loader
from helpers.distillation import (
    HintLoss,
    distill,
    hint_train,
    jitter,
    kd_loss,
    mutual_learning,
    soft_targets,
    transfer_set,
)
from helpers.models import CNN, MLP
from helpers.training import set_seed, train


def logits_pair(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=torch.float64) * 3,
            torch.randn(n, c, generator=g, dtype=torch.float64) * 3,
            torch.randint(0, c, (n,), generator=g))


def reference_kd(s, t, y, T, alpha):
    """Hinton et al.'s loss written out with explicit sums over probabilities, in plain Python."""
    total = 0.0
    for i in range(s.shape[0]):
        zs, zt = s[i].tolist(), t[i].tolist()
        es = [math.exp(v / T) for v in zs]
        et = [math.exp(v / T) for v in zt]
        q = [v / sum(es) for v in es]
        p = [v / sum(et) for v in et]
        kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        e1 = [math.exp(v) for v in zs]
        ce = -math.log(e1[int(y[i])] / sum(e1))
        total += alpha * T * T * kl + (1 - alpha) * ce
    return total / s.shape[0]


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (20.0, 0.3), (0.5, 1.0), (2.0, 0.0)])
def test_kd_loss_matches_explicit_sums(T, alpha):
    s, t, y = logits_pair()
    assert kd_loss(s, t, y, T=T, alpha=alpha).item() == pytest.approx(reference_kd(s, t, y, T, alpha),
                                                                       rel=1e-9)


def test_alpha_extremes_reduce_to_the_pure_terms():
    s, t, y = logits_pair()
    assert torch.allclose(kd_loss(s, t, y, T=3.0, alpha=0.0), F.cross_entropy(s, y))
    T = 3.0
    p = F.softmax(t / T, dim=1)
    kl = (p * (p.log() - F.log_softmax(s / T, dim=1))).sum(1).mean()
    assert torch.allclose(kd_loss(s, t, y, T=T, alpha=1.0), T * T * kl)
    assert torch.allclose(kd_loss(s, t, None, T=T, alpha=1.0), T * T * kl)


def test_loss_is_zero_when_student_equals_teacher_and_alpha_one():
    s, _, y = logits_pair()
    assert kd_loss(s, s.clone(), y, T=5.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-12)


def test_teacher_gets_no_gradient():
    s, t, y = logits_pair()
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss(s, t, y, T=2.0, alpha=0.5).backward()
    assert s.grad is not None and t.grad is None


def test_soft_term_gradient_is_p_minus_q_over_T_times_T_squared():
    """d/dz_s [T^2 KL(p_T || q_T)] = T (q_T - p_T) / N, exactly (Eq. (kd-grad))."""
    s, t, y = logits_pair()
    for T in (1.0, 4.0, 20.0):
        z = s.clone().requires_grad_(True)
        kd_loss(z, t, y, T=T, alpha=1.0).backward()
        expected = T * (F.softmax(s / T, 1) - F.softmax(t / T, 1)) / s.shape[0]
        assert torch.allclose(z.grad, expected, atol=1e-12)


def test_t_squared_keeps_gradient_scale_at_high_temperature():
    """With zero-mean logits, T (q - p) -> (z_s - z_t) / C as T grows: same scale for any large T."""
    s, t, y = logits_pair(c=10)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    norms = {}
    for T in (10.0, 100.0, 1000.0):
        z = s.clone().requires_grad_(True)
        kd_loss(z, t, y, T=T, alpha=1.0).backward()
        norms[T] = z.grad.norm().item()
    limit = ((s - t) / 10 / s.shape[0]).norm().item()
    assert norms[1000.0] == pytest.approx(limit, rel=1e-3)
    assert norms[100.0] == pytest.approx(limit, rel=0.05)
    # Without the T^2 factor the gradient would shrink like 1/T^2: 100x smaller from T=10 to 100.
    assert 0.5 < norms[100.0] / norms[10.0] < 2


@pytest.mark.parametrize("T, error", [(0, ValueError), (-1.0, ValueError), (float("inf"), ValueError),
                                      (float("nan"), ValueError), (True, TypeError), ("4", TypeError)])
def test_rejects_bad_temperature(T, error):
    s, t, y = logits_pair()
    with pytest.raises(error, match=r"T \(temperature\) must be a positive, finite number"):
        kd_loss(s, t, y, T=T, alpha=0.5)


@pytest.mark.parametrize("alpha, error", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                          (None, TypeError)])
def test_rejects_bad_alpha(alpha, error):
    s, t, y = logits_pair()
    with pytest.raises(error, match=r"alpha must be a number in \[0, 1\]"):
        kd_loss(s, t, y, T=2.0, alpha=alpha)


def test_rejects_mismatched_shapes_and_bad_labels():
    s, t, y = logits_pair()
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(s, t[:, :4], y)
    with pytest.raises(ValueError, match="student_logits"):
        kd_loss(s[0], t[0], y)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\]"):
        kd_loss(s, t, torch.tensor([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="labels must be in"):
        kd_loss(s, t, torch.tensor([0, 1, 2, 3, 4, -1]))
    with pytest.raises(ValueError, match="labels must be 6"):
        kd_loss(s, t, y[:5])
    with pytest.raises(ValueError, match="labels must be 6"):
        kd_loss(s, t, y.double())
    with pytest.raises(ValueError, match="labels may be None"):
        kd_loss(s, t, None, alpha=0.5)


def test_soft_targets_flatten_with_temperature():
    z = torch.tensor([[8.0, 2.0, 0.0]])
    p1, p20 = soft_targets(z, 1.0), soft_targets(z, 20.0)
    assert torch.allclose(p1.sum(), torch.tensor(1.0)) and p1.argmax() == p20.argmax() == 0
    assert p20.max() < p1.max() and p20.min() > p1.min()
    with pytest.raises(ValueError, match="T"):
        soft_targets(z, 0.0)


def blobs(n=240, seed=0, c=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    centres = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]])[:c]
    return TensorDataset(torch.randn(n, 2, generator=g) * 0.6 + centres[y], y)


def test_distill_teaches_student_and_freezes_teacher():
    data = blobs()
    loader = make_loader(data, 32, shuffle=True, seed=0)
    set_seed(0)
    teacher = MLP((16,), num_classes=3, in_features=2)
    train(teacher, loader, num_epochs=15, quiet=True)
    teacher.train()  # distill must switch it to eval mode and back
    before = [p.clone() for p in teacher.parameters()]
    student = MLP((4,), num_classes=3, in_features=2)
    history = distill(student, teacher, loader, num_epochs=15, T=4.0, alpha=1.0, lr=1e-2)
    assert teacher.training
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert history.train_loss[-1] < history.train_loss[0]
    # alpha=1: no label was used, yet the student agrees with the teacher on most points.
    x = data.tensors[0]
    agree = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agree > 0.9
    with pytest.raises(ValueError, match="different"):
        distill(student, student, loader, num_epochs=1)
    with pytest.raises(ValueError, match="alpha"):
        distill(student, teacher, loader, num_epochs=1, alpha=2.0)


def test_distill_with_alpha_zero_equals_plain_training():
    data = blobs()
    teacher = MLP((16,), num_classes=3, in_features=2)
    set_seed(1)
    a = MLP((4,), num_classes=3, in_features=2)
    train(a, make_loader(data, 32, shuffle=True, seed=0), num_epochs=2, quiet=True)
    set_seed(1)
    b = MLP((4,), num_classes=3, in_features=2)
    distill(b, teacher, make_loader(data, 32, shuffle=True, seed=0), num_epochs=2, alpha=0.0)
    assert all(torch.allclose(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_mutual_learning_trains_every_peer_and_pulls_them_together():
    data = blobs()
    loader = make_loader(data, 32, shuffle=True, seed=0)
    set_seed(0)
    peers = [MLP((8,), num_classes=3, in_features=2) for _ in range(3)]
    histories = mutual_learning(peers, loader, num_epochs=10, lr=1e-2, val_loader=loader)
    assert len(histories) == 3
    for h in histories:
        assert h.train_loss[-1] < h.train_loss[0] and h.val_accuracy[-1] > 0.9
    with pytest.raises(ValueError, match="at least 2"):
        mutual_learning(peers[:1], loader, num_epochs=1)
    with pytest.raises(ValueError, match="distinct"):
        mutual_learning([peers[0], peers[0]], loader, num_epochs=1)
    with pytest.raises(ValueError, match="T"):
        mutual_learning(peers, loader, num_epochs=1, T=-1.0)


def test_mutual_learning_gradient_reaches_only_its_own_peer():
    """Peer k's objective must not push gradients into the other peers (their outputs are targets)."""
    x = torch.randn(4, 2)
    a, b = MLP((3,), num_classes=3, in_features=2), MLP((3,), num_classes=3, in_features=2)
    za, zb = a(x), b(x)
    kd_loss(za, zb, None, T=1.0, alpha=1.0).backward()
    assert all(p.grad is None for p in b.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in a.parameters())


def test_hint_loss_matches_definition_and_checks_shapes():
    hint = HintLoss((4, 7, 7), (8, 7, 7))
    s, t = torch.randn(2, 4, 7, 7), torch.randn(2, 8, 7, 7)
    expected = 0.5 * ((t - hint.adapter(s)) ** 2).mean()
    assert torch.allclose(hint(s, t), expected)
    assert isinstance(HintLoss((5,), (9,)).adapter, torch.nn.Linear)
    with pytest.raises(ValueError, match="spatial"):
        HintLoss((4, 7, 7), (8, 14, 14))
    with pytest.raises(ValueError, match="student_shape"):
        HintLoss((4, 7, 7), (8,))


def test_hint_train_reduces_the_hint_loss_and_names_bad_layers():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    loader = make_loader(data, 16, shuffle=True, seed=0)
    set_seed(0)
    teacher, student = CNN((8, 16)), CNN((4, 8))
    fc_before = student.fc1.weight.clone()
    hint, losses = hint_train(student, teacher, loader, student_layer="relu2", teacher_layer="relu2",
                              num_epochs=5, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    assert hint.adapter.in_channels == 8 and hint.adapter.out_channels == 16
    assert torch.equal(fc_before, student.fc1.weight)  # layers after the hint get no gradient
    with pytest.raises(ValueError, match="layer 'conv9' is not a layer of the model"):
        hint_train(student, teacher, loader, student_layer="conv9", teacher_layer="relu2", num_epochs=1)


def test_jitter_is_seeded_keeps_background_and_moves_pixels():
    from helpers.data import load_mnist  # real digits: background must stay background

    images = load_mnist().train.tensors[0][:8]
    a = jitter(images, generator=torch.Generator().manual_seed(0))
    b = jitter(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == images.shape
    background = -MNIST_MEAN / MNIST_STD
    assert a[:, :, 0, :].sub(background).abs().max() < 1e-5  # the border stays blank
    assert not torch.allclose(a, images)
    same = jitter(images, max_shift=0.0, max_degrees=0.0)
    assert torch.allclose(same, images, atol=1e-5)
    with pytest.raises(ValueError, match="max_degrees"):
        jitter(images, max_degrees=200)
    with pytest.raises(ValueError, match="images"):
        jitter(images[0])


def test_transfer_set_size_labels_and_seed():
    data = TensorDataset(torch.randn(10, 1, 28, 28), torch.arange(10))
    ts = transfer_set(data, 3, seed=1)
    assert len(ts) == 40 and torch.equal(ts.tensors[1], torch.arange(10).repeat(4))
    assert torch.equal(ts.tensors[0][:10], data.tensors[0])
    assert torch.equal(ts.tensors[0], transfer_set(data, 3, seed=1).tensors[0])
    assert len(transfer_set(data, 2, include_original=False)) == 20
    with pytest.raises(ValueError, match="copies"):
        transfer_set(data, -1)

