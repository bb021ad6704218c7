"""Tests of helpers.budget: the budget, its check, and the distill -> prune -> int8 pipeline."""
import pytest
from torch.utils.data import Subset

from helpers import CNN, load_mnist, make_loader, set_seed, size_bytes, train
from helpers.budget import Budget, BudgetMissedError, Measurement, budget_pipeline, check_budget


@pytest.mark.parametrize("field, value", [
    ("max_size_ratio", 0), ("max_size_ratio", 1.5), ("max_size_ratio", -0.1),
    ("max_latency_ratio", 0), ("max_latency_ratio", 2.0),
    ("max_accuracy_drop", -0.01), ("max_accuracy_drop", 1.0),
])
def test_budget_rejects_out_of_range_fields(field, value):
    with pytest.raises(ValueError, match=field):
        Budget(**{field: value})


@pytest.mark.parametrize("field, value", [("max_latency_ratio", "1"), ("max_size_ratio", True)])
def test_budget_rejects_non_numbers_with_type_error(field, value):
    with pytest.raises(TypeError, match=field):
        Budget(**{field: value})


def test_budget_accepts_edges_of_its_ranges():
    Budget(max_size_ratio=1, max_latency_ratio=1, max_accuracy_drop=0)
    Budget(max_size_ratio=1e-6, max_latency_ratio=1e-6, max_accuracy_drop=0.999)


@pytest.mark.parametrize("field, value", [("accuracy", 1.2), ("size_bytes", 0), ("latency_ms", -1.0)])
def test_measurement_rejects_impossible_values(field, value):
    values = {"accuracy": 0.9, "size_bytes": 100, "latency_ms": 1.0} | {field: value}
    with pytest.raises(ValueError, match=field):
        Measurement(**values)


def test_check_budget_met_and_margins():
    baseline = Measurement(accuracy=0.96, size_bytes=100_000, latency_ms=0.2)
    candidate = Measurement(accuracy=0.955, size_bytes=9_000, latency_ms=0.05)
    report = check_budget(Budget(0.1, 1.0, 0.01), baseline, candidate)
    assert report.met and report.missed == ()
    assert report["storage"].margin == pytest.approx(1_000)
    assert report["latency"].margin == pytest.approx(0.15)
    assert report["accuracy"].margin == pytest.approx(0.005)
    report.raise_if_missed()  # does not raise
    assert "met" in str(report) and "MISSED" not in str(report)


def test_check_budget_names_each_missed_part_and_by_how_much():
    baseline = Measurement(accuracy=0.96, size_bytes=102_400, latency_ms=0.2)
    candidate = Measurement(accuracy=0.94, size_bytes=20_480, latency_ms=0.1)
    report = check_budget(Budget(0.1, 1.0, 0.01), baseline, candidate)
    assert not report.met
    assert [c.name for c in report.missed] == ["storage", "accuracy"]
    assert report["storage"].margin == pytest.approx(-10_240)
    assert report["accuracy"].margin == pytest.approx(-0.01)
    with pytest.raises(BudgetMissedError, match=r"storage .*over the limit by 10\.0 KiB.*accuracy .*1\.0 pt"):
        report.raise_if_missed()
    assert isinstance(BudgetMissedError("x"), ValueError)


def test_check_budget_type_errors():
    m = Measurement(accuracy=0.9, size_bytes=1, latency_ms=1.0)
    with pytest.raises(TypeError, match="budget"):
        check_budget({"max_size_ratio": 0.1}, m, m)
    with pytest.raises(TypeError, match="candidate"):
        check_budget(Budget(), m, (0.9, 1, 1.0))


def test_budget_pipeline_steps_shrink_the_model():
    splits = load_mnist()
    train_set = Subset(splits.train, range(1000))
    test_set = Subset(splits.test, range(500))
    set_seed(0)
    teacher = CNN(channels=(8, 16))
    train(teacher, make_loader(train_set, 64, shuffle=True, seed=0), num_epochs=1, quiet=True)
    steps = budget_pipeline(train_set, test_set, seed=0, teacher=teacher, num_epochs=1, finetune_epochs=1,
                            student_channels=(4, 8), keep_channels=5, calibration_batches=2)
    assert [s.name for s in steps] == ["fp32 baseline", "distilled", "pruned", "int8"]
    assert steps[0].model is teacher
    sizes = [s.size_bytes for s in steps]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert all(s.size_bytes == size_bytes(s.model) for s in steps)
    pruned = steps[2].model
    assert pruned.conv2.out_channels == 5 and pruned.fc1.in_features == 5 * 7 * 7
    assert len(steps[2].notes["kept_channels"]) == 5 and 0 <= steps[2].notes["accuracy_before_finetune"] <= 1
    assert all(0 <= s.accuracy <= 1 for s in steps)
    with pytest.raises(ValueError, match=r"keep_channels must be an integer in \[1, 8\], got 9"):
        budget_pipeline(train_set, test_set, teacher=teacher, student_channels=(4, 8), keep_channels=9)
    with pytest.raises(TypeError, match=r"calibration_batches must be an integer >= 1, got True"):
        budget_pipeline(train_set, test_set, teacher=teacher, calibration_batches=True)
