"""Tests of helpers.transfer: freezing, heads, layer-wise learning rates, probing, fine-tuning,
safe checkpoint loading and SWA, on tiny synthetic data so they run in seconds."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from helpers import CNN, make_loader, set_seed, take_per_class, train
from helpers.transfer import (
    RECIPES,
    extract_features,
    fine_tune,
    freeze,
    layerwise_lrs,
    linear_probe,
    load_pretrained,
    lp_ft,
    param_groups,
    replace_head,
    run_recipe,
    train_swa,
    trainable_layers,
    unfreeze,
)


def tiny_data(n=40, seed=0, classes=4):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 28, 28, generator=g) * 0.3
    for c in range(classes):  # a bright square whose position encodes the class: learnable
        x[y == c, :, 4 + 5 * c:9 + 5 * c, 4:9] += 2.0
    return TensorDataset(x, y)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_freeze_and_unfreeze_named_layers():
    model = CNN()
    freeze(model, ["conv1", "conv2"])
    assert not model.conv1.weight.requires_grad and not model.conv2.bias.requires_grad
    assert model.fc1.weight.requires_grad
    assert trainable_layers(model) == ["fc1"]
    unfreeze(model, "conv2")
    assert trainable_layers(model) == ["conv2", "fc1"]
    freeze(model)
    assert trainable_layers(model) == []
    unfreeze(model)
    assert trainable_layers(model) == ["conv1", "conv2", "fc1"]


def test_unknown_layer_name_is_named_in_the_error():
    model = CNN()
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['conv3'\].*conv1"):
        freeze(model, ["conv1", "conv3"])
    with pytest.raises(ValueError, match="fc2"):
        unfreeze(model, "fc2")
    with pytest.raises(TypeError, match="names"):
        freeze(model, [1])
    assert model.conv1.weight.requires_grad  # nothing was frozen by the failing call


def test_frozen_parameters_stay_unchanged_after_a_training_step():
    set_seed(0)
    model = CNN(num_classes=4)
    before = snapshot(model)
    loader = make_loader(tiny_data(), batch_size=20)
    fine_tune(model, loader, num_steps=2, lr=1e-2, frozen=["conv1"])
    after = model.state_dict()
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert torch.equal(before["conv1.bias"], after["conv1.bias"])
    assert not torch.equal(before["conv2.weight"], after["conv2.weight"])
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])


def test_fine_tune_refuses_to_freeze_the_head():
    with pytest.raises(ValueError, match="head"):
        fine_tune(CNN(), make_loader(tiny_data(), 20), frozen=["fc1"])


def test_replace_head_with_a_class_count_keeps_the_input_width():
    model = CNN()
    freeze(model)
    replace_head(model, 3)
    assert isinstance(model.fc1, nn.Linear)
    assert (model.fc1.in_features, model.fc1.out_features) == (32 * 7 * 7, 3)
    assert model.fc1.weight.requires_grad and not model.conv1.weight.requires_grad
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_replace_head_accepts_a_module_and_rejects_a_mismatched_one():
    model = CNN()
    head = nn.Sequential(nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 5))
    replace_head(model, head)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 5)
    with pytest.raises(ValueError, match=r"head expects 100 input features .* 1568 features"):
        replace_head(CNN(), nn.Linear(100, 10))
    with pytest.raises(ValueError, match="fc9"):
        replace_head(CNN(), 10, name="fc9")
    with pytest.raises(ValueError, match="number of classes"):
        replace_head(CNN(), 1)
    with pytest.raises(TypeError, match="head"):
        replace_head(CNN(), "fc1")


def test_layerwise_lrs_follow_the_ulmfit_decay():
    lrs = layerwise_lrs(["conv1", "conv2", "fc1"], lr=1e-3, decay=2.0)
    assert lrs == pytest.approx({"conv1": 2.5e-4, "conv2": 5e-4, "fc1": 1e-3})
    assert set(layerwise_lrs(["a", "b"], 1e-3, decay=1.0).values()) == {1e-3}
    with pytest.raises(ValueError, match="decay"):
        layerwise_lrs(["a"], 1e-3, decay=0.5)
    with pytest.raises(ValueError, match="lr"):
        layerwise_lrs(["a"], 0.0)


def test_param_groups_give_each_layer_its_rate_and_skip_frozen_parameters():
    model = CNN()
    freeze(model, "conv1")
    groups = param_groups(model, {"conv2": 1e-4, "fc1": 1e-3})
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"conv2", "fc1"}
    assert by_name["conv2"]["lr"] == 1e-4 and len(by_name["conv2"]["params"]) == 2
    opt = torch.optim.SGD(groups)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]
    unfreeze(model)
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        param_groups(model, {"conv2": 1e-4, "fc1": 1e-3})
    groups = param_groups(model, {"fc1": 1e-3}, default_lr=1e-5)
    assert {g["name"]: g["lr"] for g in groups} == {"fc1": 1e-3, "default": 1e-5}
    with pytest.raises(ValueError, match="conv7"):
        param_groups(model, {"conv7": 1e-3})
    with pytest.raises(ValueError, match=r"lrs\['fc1'\]"):
        param_groups(model, {"fc1": -1.0})


def capture_optimizer(monkeypatch):
    """Run helpers.transfer's training as usual, keeping the optimizer fine_tune built."""
    import helpers.transfer

    seen = {}

    def spy(model, loader, **kwargs):
        seen["optimizer"] = kwargs["optimizer"]
        return train(model, loader, **kwargs)

    monkeypatch.setattr(helpers.transfer, "train", spy)
    return seen


def test_fine_tune_layerwise_rates_follow_eq_tl_lr(monkeypatch):
    """Eq. (tl-lr): the head (layer L) at lr, conv2 at lr / decay, conv1 at lr / decay**2."""
    seen = capture_optimizer(monkeypatch)
    fine_tune(CNN(num_classes=4), make_loader(tiny_data(), 20), num_steps=1, lr=1e-3, decay=2.0)
    rates = {g["name"]: g["lr"] for g in seen["optimizer"].param_groups}
    assert rates == pytest.approx({"fc1": 1e-3, "conv2": 5e-4, "conv1": 2.5e-4})
    fine_tune(CNN(num_classes=4), make_loader(tiny_data(), 20), num_steps=1, lr=1e-3, decay=2.0,
              head_lr=1e-2, frozen=["conv1"])
    rates = {g["name"]: g["lr"] for g in seen["optimizer"].param_groups}
    assert rates == pytest.approx({"fc1": 1e-2, "conv2": 5e-4})


def test_fine_tune_runs_exactly_num_steps(monkeypatch):
    seen = capture_optimizer(monkeypatch)
    model = CNN(num_classes=4)
    fine_tune(model, make_loader(tiny_data(), 16), num_steps=7)  # 3 batches an epoch: 7 is not a multiple
    assert {int(state["step"]) for state in seen["optimizer"].state.values()} == {7}


def test_layerwise_rates_move_lower_layers_less():
    """With a tiny rate for conv1 and a large one for fc1, Adam's first step moves each weight by
    about its own lr (Adam's step is lr * sign-like), so the measured moves must follow the rates."""
    set_seed(0)
    model = CNN(num_classes=4)
    before = snapshot(model)
    opt = torch.optim.Adam(param_groups(model, {"conv1": 1e-6, "conv2": 1e-4, "fc1": 1e-2}))
    x, y = tiny_data().tensors
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    move = {n: (model.state_dict()[n + ".weight"] - before[n + ".weight"]).abs().max().item()
            for n in ("conv1", "conv2", "fc1")}
    assert move["conv1"] == pytest.approx(1e-6, rel=0.05)
    assert move["conv2"] == pytest.approx(1e-4, rel=0.05)
    assert move["fc1"] == pytest.approx(1e-2, rel=0.05)


def test_extract_features_returns_what_the_head_sees():
    model = CNN().eval()
    ds = tiny_data(n=8)
    features, labels = extract_features(model, make_loader(ds, 3))
    x, y = ds.tensors
    with torch.no_grad():
        expected = model.flatten(model.pool2(model.relu2(model.conv2(model.pool1(model.relu1(model.conv1(x)))))))
    assert torch.allclose(features, expected) and torch.equal(labels, y)
    assert torch.allclose(model.fc1(features), model(x), atol=1e-6)


def test_linear_probe_trains_only_the_head_and_learns():
    set_seed(0)
    model = CNN(num_classes=4)
    body_before = {k: v for k, v in snapshot(model).items() if not k.startswith("fc1")}
    ds = tiny_data()
    losses = linear_probe(model, make_loader(ds, 16), num_steps=100, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in body_before.items())
    assert trainable_layers(model) == ["fc1"]
    x, y = ds.tensors
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() > 0.9


def test_linear_probe_matches_a_reference_logistic_regression():
    """The probe minimizes softmax cross-entropy + wd/2 ||W||^2 on fixed features (a convex
    problem): its objective must match an independent L-BFGS solution of the same problem."""
    set_seed(0)
    model = CNN(num_classes=4)
    loader = make_loader(tiny_data(), 40)
    wd = 1.0
    features, labels = extract_features(model, loader)
    linear_probe(model, loader, num_steps=500, lr=1e-2, weight_decay=wd)

    def objective(w, b):
        return nn.functional.cross_entropy(features @ w.T + b, labels) + 0.5 * wd * w.pow(2).sum()

    w = torch.zeros(4, features.shape[1], requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective(w, b)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        probed = objective(model.fc1.weight, model.fc1.bias).item()
        reference = objective(w, b).item()
    assert probed == pytest.approx(reference, rel=1e-3)


def test_lp_ft_starts_fine_tuning_from_the_probed_head():
    set_seed(0)
    model = CNN(num_classes=4)
    loader = make_loader(tiny_data(), 20)
    history = lp_ft(model, loader, probe_steps=100, num_steps=2, lr=1e-4)
    # after the probe the task is nearly solved, so fine-tuning starts at high training accuracy
    assert history.train_accuracy[0] > 0.9
    assert trainable_layers(model) == ["conv1", "conv2", "fc1"]


def test_bad_arguments_name_the_argument():
    loader = make_loader(tiny_data(), 20)
    with pytest.raises(ValueError, match="num_steps"):
        fine_tune(CNN(), loader, num_steps=0)
    with pytest.raises(ValueError, match="lr"):
        linear_probe(CNN(), loader, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        linear_probe(CNN(), loader, weight_decay=-1.0)
    with pytest.raises(ValueError, match="head"):
        linear_probe(CNN(), loader, head="classifier")


def test_load_pretrained_round_trip(tmp_path):
    source = CNN()
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    target = load_pretrained(CNN(), path)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())


def test_load_pretrained_names_missing_unexpected_and_mismatched_keys(tmp_path):
    state = CNN().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["conv2.bias"]
    state["fc1.weight"] = torch.zeros(3, 32 * 7 * 7)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(CNN(), path)
    message = str(info.value)
    assert "missing keys" in message and "conv2.bias" in message
    assert "unexpected keys" in message and "extra.weight" in message
    assert "fc1.weight: checkpoint (3, 1568) vs model (10, 1568)" in message


def test_load_pretrained_can_exclude_a_replaced_head(tmp_path):
    source = CNN(num_classes=10)
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    target = CNN(num_classes=3)
    head_before = target.fc1.weight.detach().clone()
    load_pretrained(target, path, exclude=["fc1."])
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert torch.equal(target.fc1.weight, head_before)
    with pytest.raises(ValueError, match="fc1.weight"):
        load_pretrained(CNN(num_classes=3), path)


def test_load_pretrained_refuses_pickled_code_and_non_state_dicts(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(CNN(), path)  # a whole pickled module, not a state_dict: weights_only refuses it
    with pytest.raises(Exception, match="[Ww]eights only load failed|weights_only"):
        load_pretrained(CNN(), path)
    torch.save({"state_dict": CNN().state_dict()}, path)
    with pytest.raises(ValueError, match="state_dict"):
        load_pretrained(CNN(), path)
    with pytest.raises(FileNotFoundError, match="path"):
        load_pretrained(CNN(), tmp_path / "absent.pt")


def test_train_swa_averages_the_weights_of_the_last_epochs():
    set_seed(0)
    ds = tiny_data()
    loader = make_loader(ds, 20, shuffle=True, seed=0)
    model, swa_model = train_swa(CNN(num_classes=4), loader, num_epochs=4, swa_start=2, lr=0.01,
                                 swa_lr=0.01)
    assert int(swa_model.n_averaged) == 2
    # re-run the same training by hand and average the epoch-end weights of epochs 3 and 4
    set_seed(0)
    reference = CNN(num_classes=4)
    loader = make_loader(ds, 20, shuffle=True, seed=0)
    opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)
    ends = []
    for epoch in range(4):
        for x, y in loader:
            loss = nn.functional.cross_entropy(reference(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch >= 2:
            ends.append(reference.conv1.weight.detach().clone())
    assert torch.allclose(swa_model.module.conv1.weight, (ends[0] + ends[1]) / 2, atol=1e-6)
    assert torch.allclose(model.conv1.weight, ends[1], atol=1e-6)
    with pytest.raises(ValueError, match="swa_start"):
        train_swa(CNN(num_classes=4), loader, num_epochs=2, swa_start=2)


def test_train_swa_update_bn_recomputes_batchnorm_statistics():
    set_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    loader = make_loader(tiny_data(), 20)
    _, swa_model = train_swa(model, loader, num_epochs=3, swa_start=1, lr=0.01, swa_lr=0.01)
    bn = swa_model.module[1]
    x = tiny_data().tensors[0]
    with torch.no_grad():
        h = swa_model.module[0](x)
    # update_bn uses momentum=None (a cumulative average over the batches): equal batches -> exact mean
    assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)


def test_run_recipe_is_each_recipe_on_the_seeded_subset():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(200, 1, 28, 28, generator=g), torch.arange(200) % 10)
    torch.manual_seed(0)
    source = CNN()
    models = {recipe: run_recipe(recipe, source, data, 3, seed=1, num_steps=2) for recipe in RECIPES}
    assert all(m.fc1.out_features == 10 for m in models.values())
    # the probe trains only the head; the body stays the source's
    assert torch.equal(models["linear probe"].conv1.weight, source.conv1.weight)
    assert not torch.equal(models["fine-tune"].conv1.weight, source.conv1.weight)
    assert not torch.equal(models["scratch"].conv1.weight, source.conv1.weight)
    # same seed, same run; a by-hand fine-tune on the same subset and loader gives the same weights
    again = run_recipe("fine-tune", source, data, 3, seed=1, num_steps=2)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), models["fine-tune"].parameters()))
    subset = take_per_class(data, 3, 1)
    set_seed(1)
    by_hand = replace_head(copy.deepcopy(source), 10)
    fine_tune(by_hand, make_loader(subset, 30, shuffle=True, seed=1), num_steps=2)
    assert all(torch.equal(a, b) for a, b in zip(by_hand.parameters(), models["fine-tune"].parameters()))
    with pytest.raises(ValueError, match="recipe must be one of"):
        run_recipe("distill", source, data, 3, seed=1)
