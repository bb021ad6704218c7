"""benchmarks.bench: `python -m benchmarks.bench --quick` runs end to end and writes well-formed output.

This checks the shape of the output only (tables, JSON keys and types, spreads that are spreads,
accuracies that are fractions), never that a technique reaches a number: the quick mode's budgets
are too small for that, and timings are not asserted in tests at all.
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from benchmarks import bench

ROOT = Path(__file__).resolve().parents[1]

#: the CNN table's rows before the pipeline's, (model, technique), in the table's order
CNN_ROWS = [(bench.FP32, "baseline"), (bench.FP32_COMPILED, "baseline"), (bench.INT8_PTQ, "quantization"),
            (bench.INT8_PT2E, "quantization"), (bench.INT8_QAT, "quantization"), (bench.SPARSE, "pruning"),
            (bench.SPARSE_COMPILED, "pruning"), (bench.CHANNELS, "pruning"), (bench.CHANNELS_COMPILED, "pruning")]
TOP_LEVEL_KEYS = {"mode", "date", "machine", "cpu", "threads", "torch", "seeds", "budget", "batch_sizes",
                  "fp32_size_bytes", "cnn", "distillation", "transfer", "pipeline", "encoder", "seconds"}


def _table(stdout: str, header: list[str]) -> list[list[str]]:
    """The body rows of the Markdown table whose header row is ``header``."""
    lines = stdout.splitlines()
    head = "| " + " | ".join(header) + " |"
    assert head in lines, f"no table with header {head!r} in:\n{stdout}"
    start = lines.index(head)
    assert set(lines[start + 1].strip("|")) <= {"-", "|"}
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(cells)
    assert rows, f"table {header[0]!r} has no rows"
    return rows


def _check_stat(stat: dict, low: float = 0.0, high: float = float("inf")) -> None:
    assert set(stat) == {"mean", "std", "values"}
    assert all(isinstance(v, float) for v in stat["values"]) and stat["values"]
    assert stat["std"] >= 0
    assert all(low <= v <= high for v in stat["values"]) and low <= stat["mean"] <= high


def _check_latency(latency: dict, references: set[str], batches=frozenset({"1", "256"})) -> None:
    assert set(latency) == batches
    for batch, timing in latency.items():
        assert timing["batch_size"] == int(batch)
        assert 0 < timing["p10_ms"] <= timing["median_ms"] <= timing["p90_ms"]
        assert set(timing["speedup"]) == references
        for ratio in timing["speedup"].values():
            assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
            assert len(ratio["values"]) == bench.QUICK.blocks


def test_quick_benchmark_prints_tables_and_writes_well_formed_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    # stderr carries only the benchmark's own progress lines: no warning slipped through
    assert all(line.startswith("[bench ") for line in done.stderr.splitlines()), done.stderr

    cnn = _table(done.stdout, bench.CNN_HEADER)
    assert [(row[1], row[0]) for row in cnn][:len(CNN_ROWS)] == CNN_ROWS
    assert [(row[1], row[0]) for row in cnn[len(CNN_ROWS):]] == [
        (name, "pipeline") for name in bench.PIPELINE_STEPS.values()]
    kd = _table(done.stdout, bench.KD_HEADER)
    assert len(kd) == 3 and kd[0][0].startswith("teacher")
    transfer = _table(done.stdout, bench.TRANSFER_HEADER)
    assert [row[0] for row in transfer] == ["scratch", "linear probe", "fine-tune", "LP-FT"]
    encoder = _table(done.stdout, bench.ENCODER_HEADER)
    assert [row[0] for row in encoder] == [f"{name}, {how}" for name in (bench.ENCODER, bench.STUDENT_ENCODER)
                                           for how in ("eager", "compiled")]

    results = json.loads(out.read_text())
    assert set(results) == TOP_LEVEL_KEYS
    assert results["mode"] == "quick" and results["seeds"] == [0]
    assert results["budget"] == dataclasses.asdict(bench.QUICK)
    assert isinstance(results["date"], str) and isinstance(results["cpu"], str) and results["cpu"]
    assert isinstance(results["threads"], int) and results["threads"] >= 1
    assert results["torch"].startswith("2.") and results["machine"]["torch"] == results["torch"]
    assert results["batch_sizes"] == [1, 256]
    for row in results["cnn"]:
        _check_stat(row["accuracy"], 0.0, 1.0)
        _check_stat(row["size_bytes"], 1.0)
        _check_stat(row["size_ratio"], 0.1, 100.0)
        if row["nonzero_weights"] is not None:
            _check_stat(row["nonzero_weights"], 1.0)
        _check_latency(row["latency"], {"fp32 eager", "fp32 compiled"})
    sections = {"baseline", "quantization", "pruning"}
    assert {row["section"] for row in results["cnn"]} - {"pipeline"} == sections
    assert [(r["model"], r["section"]) for r in results["cnn"]][:len(CNN_ROWS)] == CNN_ROWS
    assert [r["model"] for r in results["cnn"] if r["section"] == "pipeline"] == results["pipeline"]["steps"]
    assert results["pipeline"]["pruned_model"].startswith("CNN(")
    assert results["pipeline"]["epochs"] == {"num_epochs": 1, "finetune_epochs": 1}
    for row in results["distillation"]["rows"]:
        _check_stat(row["accuracy"], 0.0, 1.0)
        assert row["parameters"] > 0 and row["size_bytes"] > 0
        _check_latency(row["latency"], {"teacher"})
    for row in results["transfer"]["rows"]:
        _check_stat(row["accuracy"], 0.0, 1.0)
    _check_stat(results["distillation"]["paired_gain"], -1.0, 1.0)
    assert set(results["transfer"]["paired_gain_vs_scratch"]) == {"linear probe", "fine-tune", "LP-FT"}
    for gain in results["transfer"]["paired_gain_vs_scratch"].values():
        _check_stat(gain, -1.0, 1.0)
    encoder = results["encoder"]
    assert encoder["texts"] == encoder["token_ids"][0] == bench.ENCODER_TEXTS
    assert encoder["student_layers"] == list(bench.STUDENT_LAYERS)
    parameters = [row["parameters"] for row in encoder["rows"]]
    # the student keeps the embedding table and half the Transformer layers
    assert parameters[0] == parameters[1] > parameters[2] == parameters[3] > parameters[0] / 2
    for row in encoder["rows"]:
        assert row["size_bytes"] > 0
        _check_latency({str(row["latency"]["batch_size"]): row["latency"]}, {"eager", "compiled"}, batches={"8"})
    assert results["seconds"] > 0


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "two"], ["--threads", "-1"]])
def test_bad_arguments_are_rejected_by_name(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_run_rejects_a_bad_seed_count():
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        bench.run(seeds=0)


def test_rows_are_gathered_over_seeds_by_name_in_the_first_seeds_order():
    model = nn.Linear(2, 2)
    table = {}
    for seed, accuracy in enumerate((0.5, 0.75)):
        fp32 = bench.Measured("baseline", bench.FP32, model, accuracy, 100 + seed, 10 + seed)
        int8 = bench.Measured("quantization", bench.INT8_PTQ, model, accuracy / 2, 30, timing=bench.EAGER)
        bench.gather(table, [fp32, bench.compiled(fp32, bench.FP32_COMPILED), int8])
    assert list(table) == [bench.FP32, bench.FP32_COMPILED, bench.INT8_PTQ]
    fp32, fp32_compiled, int8 = table.values()
    assert fp32.accuracy == fp32_compiled.accuracy == [0.5, 0.75]
    assert fp32.size_bytes == fp32_compiled.size_bytes == [100, 101]
    assert fp32.nonzero_weights == fp32_compiled.nonzero_weights == [10, 11]
    assert (fp32.first.timing, fp32_compiled.first.timing) == (bench.EAGER, bench.COMPILED)
    assert fp32_compiled.first.model is model and fp32.first.accuracy == 0.5  # the first seed's model is timed
    assert int8.nonzero_weights == [] and int8.accuracy == [0.25, 0.375]
    assert bench.paired_gain(fp32, int8) == bench.mean_std([0.25, 0.375])


def test_statistics_report_their_values_and_spread():
    assert bench.mean_std([1, 3]) == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "values": [1.0, 3.0]}
    assert bench.mean_std([0.5])["std"] == 0.0
    assert bench.spread([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [3.0, 1.0, 2.0]}
    assert bench.Effort().pipeline_arguments() == {}  # the full mode runs budget_pipeline's own recipe
    assert bench.QUICK.pipeline_arguments() == {"num_epochs": 1, "finetune_epochs": 1}
