"""helpers.pruning: masks against torch.nn.utils.prune, exact amounts, schedules, channel surgery, storage."""
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from helpers.measure import count_parameters, size_bytes
from helpers.models import CNN, MLP
from helpers.plotting import read_scalars
from helpers.pruning import (
    apply_masks,
    channel_l1_norms,
    channels_to_keep,
    global_magnitude_prune,
    gradual_sparsity,
    iterative_magnitude_prune,
    layerwise_magnitude_prune,
    magnitude_mask,
    prunable_weights,
    prune_chain,
    prune_channels,
    random_masks,
    sparsity_report,
)
from helpers.sparse import dense_state_dict, sparse_size_bytes, sparse_state_dict


def seeded_cnn(seed=0):
    torch.manual_seed(seed)
    return CNN()


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.9, 0.97, 7, 0])
def test_magnitude_mask_equals_torch_l1_unstructured(amount):
    torch.manual_seed(1)
    layer = nn.Linear(37, 23)
    ours = magnitude_mask(layer.weight, amount)
    prune.l1_unstructured(layer, "weight", amount=amount)
    assert torch.equal(ours, layer.weight_mask.bool())


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.9, 0.333])
def test_amounts_are_exact(amount):
    torch.manual_seed(2)
    weight = torch.randn(32, 16, 3, 3)
    mask = magnitude_mask(weight, amount)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert int((~mask).sum()) == round(amount * weight.numel())
    # the pruned entries are exactly the smallest in magnitude
    assert weight[~mask].abs().max() <= weight[mask].abs().min()


def test_layerwise_prune_matches_torch_per_layer_and_zeroes_weights():
    model, reference = seeded_cnn(), seeded_cnn()
    masks = layerwise_magnitude_prune(model, 0.6)
    for name, module in (("conv1", reference.conv1), ("conv2", reference.conv2), ("fc1", reference.fc1)):
        prune.l1_unstructured(module, "weight", amount=0.6)
        assert torch.equal(masks[f"{name}.weight"], module.weight_mask.bool())
        assert torch.equal(getattr(model, name).weight, module.weight)


def test_global_prune_matches_torch_global_unstructured():
    model, reference = seeded_cnn(3), seeded_cnn(3)
    masks = global_magnitude_prune(model, 0.9)
    modules = [(reference.conv1, "weight"), (reference.conv2, "weight"), (reference.fc1, "weight")]
    prune.global_unstructured(modules, pruning_method=prune.L1Unstructured, amount=0.9)
    total = sum(m.weight.numel() for m, _ in modules)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    for name, (module, _) in zip(("conv1", "conv2", "fc1"), modules):
        assert torch.equal(masks[f"{name}.weight"], module.weight_mask.bool())
    # one global threshold: layers end up with different sparsities
    per_layer = [1 - float(m.float().mean()) for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.05


def test_apply_masks_keeps_pruned_weights_at_zero_through_training_steps():
    model = seeded_cnn()
    masks = global_magnitude_prune(model, 0.8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        apply_masks(model, masks)
    for name, w in prunable_weights(model).items():
        assert torch.all(w[~masks[name]] == 0)
    assert sparsity_report(model).loc["total", "sparsity"] == pytest.approx(0.8, abs=1e-4)


def test_random_masks_prune_the_exact_amount_and_leave_the_model_alone():
    model = seeded_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = random_masks(model, 0.75, seed=4)
    for name, w in prunable_weights(model).items():
        assert int((~masks[name]).sum()) == round(0.75 * w.numel())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(masks["fc1.weight"], random_masks(model, 0.75, seed=5)["fc1.weight"])


@pytest.mark.parametrize("amount", [1.0, -0.1, 1.5])
def test_bad_fraction_raises_naming_amount(amount):
    with pytest.raises(ValueError, match=r"amount must be a fraction in \[0, 1\)"):
        magnitude_mask(torch.randn(4, 4), amount)


def test_integer_amount_larger_than_tensor_raises():
    with pytest.raises(ValueError, match=r"amount as an integer count must be in \[0, 16\]"):
        magnitude_mask(torch.randn(4, 4), 17)
    with pytest.raises(TypeError, match="amount must be"):
        magnitude_mask(torch.randn(4, 4), "half")


def test_unknown_parameter_name_raises():
    with pytest.raises(ValueError, match=r"names \['fc2.weight'\] are not parameters"):
        global_magnitude_prune(CNN(), 0.5, names=["fc2.weight"])
    with pytest.raises(ValueError, match="masks names 'conv3.weight'"):
        apply_masks(CNN(), {"conv3.weight": torch.ones(1, dtype=torch.bool)})


def test_gradual_sparsity_follows_zhu_gupta_cubic():
    kwargs = dict(final_sparsity=0.9, begin_step=10, end_step=110, initial_sparsity=0.1)
    assert gradual_sparsity(0, **kwargs) == 0.1
    assert gradual_sparsity(10, **kwargs) == pytest.approx(0.1)
    assert gradual_sparsity(110, **kwargs) == pytest.approx(0.9)
    assert gradual_sparsity(500, **kwargs) == pytest.approx(0.9)
    # halfway: s_f + (s_i - s_f) * (1 - 0.5)^3
    assert gradual_sparsity(60, **kwargs) == pytest.approx(0.9 - 0.8 * 0.125)
    values = [gradual_sparsity(t, **kwargs) for t in range(0, 120)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    # with frequency 25 it only changes on pruning steps 10, 35, 60, 85
    stepped = [gradual_sparsity(t, frequency=25, **kwargs) for t in range(10, 110)]
    assert len(set(stepped)) == 4 and gradual_sparsity(59, frequency=25, **kwargs) == values[35]


def test_gradual_sparsity_bad_schedule_raises():
    with pytest.raises(ValueError, match=r"end_step \(5\) must be after begin_step \(10\)"):
        gradual_sparsity(0, final_sparsity=0.9, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match=r"final_sparsity must be in \[0, 1\)"):
        gradual_sparsity(0, final_sparsity=1.0, begin_step=0, end_step=5)
    with pytest.raises(ValueError, match="frequency must be"):
        gradual_sparsity(0, final_sparsity=0.5, begin_step=0, end_step=5, frequency=0)


def test_channel_norms_and_selection():
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 3, 3))
    assert torch.equal(channel_l1_norms(conv), torch.tensor([0.0, 18.0, 36.0, 54.0]))
    assert torch.equal(channels_to_keep(conv, 0.5), torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="would prune all 4 channels"):
        channels_to_keep(conv, 4)


def with_channels_zeroed(model, layer, keep):
    """A copy of the CNN ``model`` whose ``layer`` outputs zero on every channel not in ``keep``:
    the function a channel-pruned model must compute."""
    masked = CNN().eval()
    masked.load_state_dict(model.state_dict())
    conv = getattr(masked, layer)
    dropped = torch.ones(conv.out_channels, dtype=torch.bool)
    dropped[keep] = False
    with torch.no_grad():
        conv.weight[dropped] = 0
        conv.bias[dropped] = 0
    return masked


def test_prune_channels_computes_the_same_function_on_kept_channels():
    model = seeded_cnn(5).eval()
    pruned, keep = prune_channels(model, "conv2", "fc1", amount=0.5)
    assert pruned.conv2.out_channels == 16 and pruned.fc1.in_features == 16 * 49
    assert pruned.conv2.weight.shape == (16, 16, 3, 3) and count_parameters(pruned) < count_parameters(model)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        # the kept channels of conv2 are unchanged
        h = model.pool1(model.relu1(model.conv1(x)))
        assert torch.allclose(pruned.conv2(h), model.conv2(h)[:, keep], atol=1e-6)
        # and the whole network equals the original with the removed channels zeroed
        masked = with_channels_zeroed(model, "conv2", keep)
        assert torch.allclose(pruned(x), masked(x), atol=1e-5)
    # the original is untouched
    assert model.conv2.out_channels == 32


def test_prune_channels_conv_to_conv_and_linear_to_linear():
    model = seeded_cnn(6).eval()
    pruned, keep = prune_channels(model, "conv1", "conv2", keep=[0, 3, 5, 9])
    assert pruned.conv1.out_channels == 4 and pruned.conv2.in_channels == 4
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        masked = with_channels_zeroed(model, "conv1", keep)
        assert torch.allclose(pruned(x), masked(x), atol=1e-5)
    torch.manual_seed(0)
    mlp = MLP((20, 10)).eval()
    smaller, kept = prune_channels(mlp, "layers.1", "layers.3", amount=5)
    assert smaller.layers[1].out_features == 15 and smaller.layers[3].in_features == 15
    with torch.no_grad():
        hidden = torch.relu(mlp.layers[1](x.flatten(1)))
        assert torch.allclose(smaller.layers[1](x.flatten(1)), mlp.layers[1](x.flatten(1))[:, kept])
        zeroed = hidden.clone()
        zeroed[:, [i for i in range(20) if i not in set(kept.tolist())]] = 0
        assert torch.allclose(smaller.layers[3](hidden[:, kept]), mlp.layers[3](zeroed), atol=1e-6)


def test_prune_channels_bad_input():
    model = CNN()
    with pytest.raises(ValueError, match="would prune all 32 channels"):
        prune_channels(model, "conv2", "fc1", amount=32)
    with pytest.raises(ValueError, match=r"amount must be a fraction in \[0, 1\)"):
        prune_channels(model, "conv2", "fc1", amount=1.0)
    with pytest.raises(ValueError, match="layer 'conv3' is not a layer"):
        prune_channels(model, "conv3", "fc1", amount=0.5)
    with pytest.raises(ValueError, match="next_layer takes 1 input channels"):
        prune_channels(model, "conv2", "conv1", amount=0.5)
    with pytest.raises(ValueError, match="exactly one of amount"):
        prune_channels(model, "conv2", "fc1")
    with pytest.raises(ValueError, match="keep must hold distinct"):
        prune_channels(model, "conv2", "fc1", keep=[0, 40])


@pytest.mark.parametrize("fmt", ["bitmask", "csr"])
def test_sparse_state_dict_round_trips_and_is_smaller(fmt):
    model = seeded_cnn(7)
    global_magnitude_prune(model, 0.9)
    encoded = sparse_state_dict(model, fmt)
    buffer = io.BytesIO()
    torch.save(encoded, buffer)
    buffer.seek(0)
    decoded = dense_state_dict(torch.load(buffer, weights_only=True))
    original = model.state_dict()
    assert decoded.keys() == original.keys()
    assert all(torch.equal(decoded[k], original[k]) for k in original)
    dense, sparse = size_bytes(model), sparse_size_bytes(model, fmt)
    assert sparse == buffer.getbuffer().nbytes
    # payload formulas (the rest is torch.save's per-tensor overhead, a few hundred bytes each)
    weights = prunable_weights(model)
    nnz = sum(int(torch.count_nonzero(w)) for w in weights.values())
    if fmt == "bitmask":
        payload = sum((w.numel() + 7) // 8 for w in weights.values()) + 4 * nnz
    else:
        payload = sum(4 * (w.shape[0] + 1) for w in weights.values()) + 6 * nnz
    assert payload < sparse < payload + 12000
    assert sparse < dense / 3


def test_csr_size_agrees_with_torch_sparse_csr_layout():
    weight = torch.randn(10, 50)
    weight[weight.abs() < 1.5] = 0
    layer = nn.Linear(50, 10)
    with torch.no_grad():
        layer.weight.copy_(weight)
    encoded = sparse_state_dict(nn.Sequential(layer), "csr")
    with warnings.catch_warnings():  # torch's own CSR, the reference, warns that it is beta
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        csr = weight.to_sparse_csr()
    assert torch.equal(encoded["0.weight::crow_indices"].long(), csr.crow_indices())
    assert torch.equal(encoded["0.weight::col_indices"].long(), csr.col_indices())
    with pytest.raises(ValueError, match="format must be one of"):
        sparse_state_dict(layer, "coo")


@pytest.mark.parametrize("density, smaller", [(0.60, True), (0.72, False)])
def test_csr_breaks_even_with_dense_fp32_at_two_thirds_density(density, smaller):
    """An int16 column index and an fp32 value make 6 bytes per kept weight, against 4 bytes per
    weight dense: CSR is smaller only below about 2/3 density (less the row pointers)."""
    torch.manual_seed(0)
    layer = nn.Linear(400, 400)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < density)
    encoded = sparse_state_dict(nn.Sequential(layer), "csr")
    assert encoded["0.weight::col_indices"].dtype == torch.int16
    parts = [encoded[f"0.weight::{part}"] for part in ("crow_indices", "col_indices", "values")]
    csr_bytes = sum(part.numel() * part.element_size() for part in parts)
    assert (csr_bytes < 4 * layer.weight.numel()) is smaller


def test_gradual_pruner_reaches_the_final_sparsity_on_schedule():
    from helpers.pruning import GradualPruner
    model = seeded_cnn(8)
    pruner = GradualPruner(final_sparsity=0.8, begin_step=2, end_step=10, frequency=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner(model)
    assert [s for s, _ in pruner.history] == [2, 6, 10]
    assert [round(v, 4) for _, v in pruner.history] == [0.0, round(0.8 - 0.8 * 0.5 ** 3, 4), 0.8]
    assert sparsity_report(model).loc["total", "sparsity"] == pytest.approx(0.8, abs=1e-4)
    with pytest.raises(ValueError, match="end_step"):
        GradualPruner(final_sparsity=0.5, begin_step=5, end_step=5)


def test_gradual_pruner_masks_only_grow_under_adam():
    """A real training run with Adam, whose momentum moves pruned weights off zero after every
    step: each pruning step's mask must be a subset of the previous one (pruned stays pruned)."""
    from helpers import load_digits, make_loader, train
    from helpers.pruning import GradualPruner

    model = seeded_cnn(0)
    pruner = GradualPruner(final_sparsity=0.9, begin_step=0, end_step=40, frequency=1)
    snapshots = []

    def after_step(m):
        pruner(m)
        if pruner.history and (not snapshots or snapshots[-1][0] != pruner.history[-1][0]):
            snapshots.append((pruner.history[-1][0], {k: v.clone() for k, v in pruner.masks.items()}))

    data = load_digits()
    train(model, make_loader(data.train, 64, shuffle=True, seed=0), num_epochs=2, lr=1e-2,
          after_step=after_step, quiet=True)
    assert len(snapshots) >= 8
    for (_, before), (step, after) in zip(snapshots, snapshots[1:]):
        for name in before:
            assert not (after[name] & ~before[name]).any(), f"{name} regrew weights at step {step}"
    assert sparsity_report(model).loc["total", "sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_lottery_ticket_rewinds_survivors_to_their_initial_values():
    from helpers.pruning import lottery_ticket
    seen = []

    def make_model(seed):
        torch.manual_seed(seed)
        return MLP((12,), in_features=6, num_classes=3)

    def fit(model, masks):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():  # "training": move every surviving weight, then keep the mask
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        apply_masks(model, masks)
        return 0.5

    rows = lottery_ticket(make_model, fit, rounds=2, amount=0.5, amounts={"layers.3.weight": 0.25})
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[0]["reinit"] is None
    first, second = prunable_weights(make_model(0)), seen[1]  # seen[1] is the round-1 ticket
    kept = second["layers.1.weight"] != 0
    assert int(kept.sum()) == 36  # half of 72
    assert torch.equal(second["layers.1.weight"][kept], first["layers.1.weight"][kept])
    assert int((second["layers.3.weight"] != 0).sum()) == 27  # 36 minus a quarter
    assert rows[2]["remaining"] == pytest.approx((18 + 20) / 108)
    # the control has the same mask but different values
    assert torch.equal(seen[2]["layers.1.weight"] != 0, kept)
    assert not torch.equal(seen[2]["layers.1.weight"][kept], first["layers.1.weight"][kept])
    with pytest.raises(ValueError, match="amounts names"):
        lottery_ticket(make_model, fit, rounds=1, amount=0.5, amounts={"fc9.weight": 0.1})


def test_prune_chain_halves_both_convolutions_like_two_prune_channels_calls():
    model = seeded_cnn()
    pruned, kept = prune_chain(model, 0.5)
    step1, keep1 = prune_channels(model, "conv1", "conv2", amount=0.5)
    step2, keep2 = prune_channels(step1, "conv2", "fc1", amount=0.5)
    assert torch.equal(kept["conv1"], keep1) and torch.equal(kept["conv2"], keep2)
    for (name, a), (_, b) in zip(pruned.state_dict().items(), step2.state_dict().items()):
        assert torch.equal(a, b), name
    assert pruned.conv1.out_channels == model.conv1.out_channels // 2
    assert pruned.conv2.out_channels == model.conv2.out_channels // 2
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_iterative_magnitude_prune_reaches_the_target_and_keeps_zeros(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model = seeded_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = iterative_magnitude_prune(model, loader, 0.9, rounds=3, epochs_per_round=1)
    weights = prunable_weights(pruned)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert zeros == round(0.9 * total)  # the last round prunes to exactly the target, after training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    assert not any(isinstance(m, prune.BasePruningMethod) for m in pruned._forward_pre_hooks.values())
    # with zero training epochs it is one-shot global magnitude pruning to the target
    oneshot = seeded_cnn()
    global_magnitude_prune(oneshot, 0.9)
    no_training = iterative_magnitude_prune(seeded_cnn(), loader, 0.9, rounds=3, epochs_per_round=0)
    assert all(torch.equal(a, b) for a, b in zip(no_training.parameters(), oneshot.parameters()))
    # logged as one run: 3 rounds of 1 epoch of 2 steps, counted on from round to round
    iterative_magnitude_prune(model, loader, 0.9, rounds=3, epochs_per_round=1, log_dir=tmp_path)
    scalars = read_scalars(tmp_path)
    assert scalars["loss/train_step"][0] == list(range(6)) and scalars["accuracy/train"][0] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"rounds must be an integer >= 1, got 0"):
        iterative_magnitude_prune(model, loader, 0.5, rounds=0, epochs_per_round=1)
    with pytest.raises(TypeError, match=r"rounds must be an integer >= 1, got True"):
        iterative_magnitude_prune(model, loader, 0.5, rounds=True, epochs_per_round=1)
    with pytest.raises(ValueError, match=r"amount must be a fraction in \[0, 1\)"):
        iterative_magnitude_prune(model, loader, 1.0, rounds=2, epochs_per_round=1)
