"""helpers.training: seeding, the training loop and its hooks, evaluation, the baseline recipe, the
bf16/compiled training step and its interleaved comparison."""
import functools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from helpers.data import make_loader
from helpers.models import MLP
from helpers.plotting import read_scalars
from helpers.training import (
    Evaluation,
    TrainingCost,
    compare_training_precision,
    evaluate,
    make_optimizer,
    make_train_step,
    progress_enabled,
    set_seed,
    train,
    train_baseline,
)

TINY = functools.partial(MLP, hidden=(8,), in_features=16, num_classes=10)


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 10, (n,), generator=g))


def blobs(n=200, seed=0):
    """Two well-separated Gaussian blobs in 2-D: learnable to ~100% in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.5 + (y[:, None] * 2 - 1) * 2.0
    return TensorDataset(x, y)


def tiny():
    return MLP((8,), num_classes=2, in_features=2)


def test_set_seed_makes_runs_repeatable():
    set_seed(3)
    a = torch.randn(5)
    set_seed(3)
    assert torch.equal(a, torch.randn(5))


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (1.5, TypeError), ("0", TypeError)])
def test_set_seed_rejects_bad_seed(seed, error):
    with pytest.raises(error, match="seed must be an integer >= 0"):
        set_seed(seed)


def test_train_learns_and_records_history():
    set_seed(0)
    model = tiny()
    loader = make_loader(blobs(), 32, shuffle=True)
    history = train(model, loader, num_epochs=5, lr=0.05, val_loader=make_loader(blobs(seed=1), 50),
                    quiet=True)
    assert len(history.train_loss) == 5 and len(history.val_accuracy) == 5
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_accuracy[-1] > 0.95


def test_train_is_deterministic_given_seed():
    def run():
        set_seed(1)
        model = tiny()
        train(model, make_loader(blobs(), 32, shuffle=True, seed=1), num_epochs=2, quiet=True)
        return torch.cat([p.flatten() for p in model.parameters()])
    assert torch.equal(run(), run())


def test_train_hooks_loss_fn_and_after_step_are_used():
    set_seed(0)
    model = tiny()
    calls = {"loss": 0, "after": 0}

    def loss_fn(logits, y, x):
        calls["loss"] += 1
        assert x.shape[1] == 2
        return nn.functional.cross_entropy(logits, y)

    def after_step(m):
        calls["after"] += 1
        with torch.no_grad():
            m.layers[1].weight[0].zero_()  # a "mask" that must stay applied

    train(model, make_loader(blobs(), 50), num_epochs=2, loss_fn=loss_fn, after_step=after_step,
          quiet=True)
    assert calls == {"loss": 8, "after": 8}
    assert torch.count_nonzero(model.layers[1].weight[0]) == 0


def test_train_accepts_a_ready_optimizer_and_only_trains_what_requires_grad():
    set_seed(0)
    model = tiny()
    first = model.layers[1]
    first.weight.requires_grad_(False)
    frozen = first.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train(model, make_loader(blobs(), 50), num_epochs=1, optimizer=opt, quiet=True)
    assert torch.equal(first.weight, frozen)


def test_train_writes_tensorboard_scalars(tmp_path):
    set_seed(0)
    train(tiny(), make_loader(blobs(), 50), num_epochs=3, val_loader=make_loader(blobs(), 100),
          log_dir=tmp_path, quiet=True)
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"loss/train_step", "loss/train", "accuracy/train", "loss/val",
                            "accuracy/val"}
    assert scalars["loss/train_step"][0] == list(range(12))
    assert scalars["accuracy/val"][0] == [1, 2, 3]


def test_successive_trains_continue_one_tensorboard_curve(tmp_path):
    set_seed(0)
    model, loader = tiny(), make_loader(blobs(), 50)  # 4 steps an epoch
    train(model, loader, num_epochs=2, log_dir=tmp_path, quiet=True)
    train(model, loader, num_epochs=1, log_dir=tmp_path, quiet=True, first_step=8, first_epoch=2)
    scalars = read_scalars(tmp_path)
    assert scalars["loss/train_step"][0] == list(range(12))
    assert scalars["accuracy/train"][0] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"first_step must be an integer >= 0, got -1"):
        train(model, loader, num_epochs=1, first_step=-1)
    with pytest.raises(TypeError, match=r"first_epoch must be an integer >= 0, got 1.5"):
        train(model, loader, num_epochs=1, first_epoch=1.5)


def test_train_max_steps_stops_mid_epoch():
    set_seed(0)
    steps = []
    history = train(tiny(), make_loader(blobs(), 50), num_epochs=3, max_steps=6, quiet=True,
                    after_step=lambda m: steps.append(1))
    assert len(steps) == 6  # 4 batches per epoch: one full epoch, then 2 batches of the second
    assert len(history.train_loss) == 2


@pytest.mark.parametrize("kwargs, name, error", [({"num_epochs": 0}, "num_epochs", ValueError),
                                                 ({"num_epochs": 2.0}, "num_epochs", TypeError),
                                                 ({"num_epochs": True}, "num_epochs", TypeError),
                                                 ({"num_epochs": 1, "max_steps": 0}, "max_steps", ValueError),
                                                 ({"num_epochs": 1, "max_steps": True}, "max_steps", TypeError),
                                                 ({"num_epochs": 1, "lr": 0.0}, "lr", ValueError),
                                                 ({"num_epochs": 1, "optimizer": "lbfgs"}, "optimizer", ValueError)])
def test_train_rejects_bad_arguments(kwargs, name, error):
    with pytest.raises(error, match=name):
        train(tiny(), make_loader(blobs(), 50), quiet=True, **kwargs)


def test_make_optimizer_rejects_a_fully_frozen_model():
    model = tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters that require gradients"):
        make_optimizer(model, "adam", 1e-3)


def test_evaluate_matches_a_hand_count_and_restores_mode():
    model = tiny()
    data = blobs(n=60)
    model.train()
    result = evaluate(model, make_loader(data, 7))
    with torch.no_grad():
        logits = model(data.tensors[0])
    expected_acc = (logits.argmax(1) == data.tensors[1]).float().mean().item()
    expected_loss = nn.functional.cross_entropy(logits, data.tensors[1]).item()
    assert result.accuracy == pytest.approx(expected_acc)
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert model.training
    assert str(Evaluation(0.9512, 0.1234)) == "accuracy 95.1%, loss 0.123"


def test_evaluate_rejects_an_empty_loader():
    with pytest.raises(ValueError, match="no examples"):
        evaluate(tiny(), make_loader(TensorDataset(torch.zeros(0, 2), torch.zeros(0).long()), 4))


def test_train_baseline_reaches_the_books_accuracy():
    from helpers.data import load_mnist

    data = load_mnist()
    model, history = train_baseline(make_loader(data.train, 64, shuffle=True), num_epochs=2)
    assert not model.training and len(history.train_loss) == 2
    assert evaluate(model, make_loader(data.test, 1000)).accuracy > 0.9


def test_tensorboard_dir_is_fresh_and_under_build(tmp_path, monkeypatch):
    import helpers.training as training

    monkeypatch.setattr(training, "RUNS_ROOT", tmp_path / "runs")
    first = training.tensorboard_dir("chapter/run")
    (first / "old.txt").write_text("stale")
    again = training.tensorboard_dir("chapter/run")
    assert again == tmp_path / "runs" / "chapter" / "run" and list(again.iterdir()) == []
    for bad in ("", "../escape", "/abs"):
        with pytest.raises(ValueError, match="name"):
            training.tensorboard_dir(bad)


def test_train_step_bf16_and_compiled_match_fp32_eager():
    data = tiny_data()
    x, y = data.tensors
    losses = {}
    for precision, compiled in [("fp32", False), ("bf16", False), ("fp32", True)]:
        torch.manual_seed(0)
        model = TINY()
        step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), precision,
                               compile=compiled)
        losses[precision, compiled] = [step(x, y).item() for _ in range(3)]
    torch.testing.assert_close(losses["fp32", True], losses["fp32", False], rtol=1e-4, atol=1e-5)
    # bf16 keeps ~3 significant digits: close to fp32, but not equal.
    torch.testing.assert_close(losses["bf16", False], losses["fp32", False], rtol=2e-2, atol=2e-2)
    assert losses["bf16", False] != losses["fp32", False]
    with pytest.raises(ValueError, match="precision must be one of"):
        make_train_step(TINY(), torch.optim.SGD(TINY().parameters(), lr=0.1), "fp16")


def test_compare_training_precision_same_start_same_batches_interleaved():
    data = tiny_data(96)
    variants = {"fp32": ("fp32", False), "bf16": ("bf16", False)}
    costs = compare_training_precision(TINY, data, variants, num_epochs=3, batch_size=32, lr=1e-2, seed=1)
    assert list(costs) == ["fp32", "bf16"]
    for name, cost in costs.items():
        assert isinstance(cost, TrainingCost) and cost.precision == variants[name][0] and not cost.compiled
        assert len(cost.epoch_seconds) == len(cost.train_loss) == 3 and all(t > 0 for t in cost.epoch_seconds)
        assert cost.steady_epoch_seconds == sorted(cost.epoch_seconds[1:])[1]
        assert not cost.model.training
    # same initial weights and batches: the first epoch's mean losses differ only by bf16 rounding
    assert abs(costs["fp32"].train_loss[0] - costs["bf16"].train_loss[0]) < 0.05
    assert costs["fp32"].train_loss[-1] < costs["fp32"].train_loss[0]
    # the same call again reproduces the fp32 run exactly (seeded start and batch order)
    again = compare_training_precision(TINY, data, {"fp32": ("fp32", False)}, num_epochs=3, batch_size=32,
                                       lr=1e-2, seed=1)
    assert again["fp32"].train_loss == costs["fp32"].train_loss
    with pytest.raises(ValueError, match="variants must name"):
        compare_training_precision(TINY, data, {})
    with pytest.raises(ValueError, match="precision must be one of"):
        compare_training_precision(TINY, data, {"x": ("fp16", False)}, num_epochs=1)
    with pytest.raises(TypeError, match="num_epochs must be an integer >= 1"):
        compare_training_precision(TINY, data, variants, num_epochs=True)


def test_progress_bars_follow_the_one_switch(monkeypatch, capsys):
    loader = make_loader(blobs(), 50)
    monkeypatch.setenv("BOOK_PROGRESS", "0")  # how make execute / make nbval run the notebooks
    train(tiny(), loader, num_epochs=2)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("BOOK_PROGRESS", "1")  # a person running a cell
    train(tiny(), loader, num_epochs=2)
    assert "epoch 2/2" in capsys.readouterr().err
    train(tiny(), loader, num_epochs=1, quiet=True)  # an explicit choice wins
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("BOOK_PROGRESS")
    assert progress_enabled()
