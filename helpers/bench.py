"""The book's headline numbers, re-measured properly: ``python -m helpers.bench`` (``make bench``).

The chapters show single, readable runs. This benchmark repeats their recipes over several seeds
and times the resulting models interleaved, in one process, so that the README can quote them:

- quantization (chapters/04_practice/quantization.ipynb): int8 post-training quantization of the
  baseline CNN with ``torch.ao`` (eager, x86 qconfig) and with pt2e + ``X86InductorQuantizer``
  (compiled by Inductor), and quantization-aware training (``torch.ao`` eager);
- pruning (chapters/04_practice/pruning.ipynb): 90% global magnitude (unstructured) pruning in
  three prune-and-fine-tune rounds, and half the channels removed with
  :func:`helpers.pruning.prune_channels` then fine-tuned;
- distillation (chapters/04_practice/distillation.ipynb): Hinton et al.'s MLP pair on the jittered
  transfer set, student alone vs distilled vs teacher;
- transfer learning (chapters/03_algorithms/transfer.ipynb): MNIST -> scikit-learn digits with 10
  labels per class, scratch vs linear probe vs fine-tuning vs LP-FT;
- the end-to-end pipeline of the applications chapter (``helpers.deploy.budget_pipeline``: the
  baseline distilled into CNN(8, 16), conv2 pruned to 6 channels, int8 pt2e), with its own recipe.

How the figures are reported:

- accuracies are test accuracies, mean and standard deviation over the seeds (``--seeds``); the
  data split is fixed, the seed changes initialization, shuffling and the few-label subsets;
- latencies come from :func:`helpers.measure.latencies` (warm-up, then all models timed call by
  call, interleaved) at batch 1 and batch 256, repeated in ``blocks``; a speed-up is
  ``median(reference) / median(model)`` within one block, reported as the median over blocks with
  the smallest and largest block as its spread. References: fp32 eager and fp32 compiled
  (:func:`helpers.measure.compile_for_inference`) for the CNN, the teacher for distillation.
  Timed models come from the first seed (a model's speed does not depend on its seed).

The Markdown tables go to stdout and everything (machine, CPU, threads, versions, date, every
figure with its spread) to a JSON file, ``_build/bench/bench.json`` by default.
``--quick`` keeps every step but shrinks budgets and repeats so the whole run takes about a
minute; its numbers show that the pipeline works, not what the techniques achieve.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import inspect
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "_build" / "bench" / "bench.json"
BATCH_SIZES = (1, 256)


@dataclass(frozen=True)
class Budget:
    """Training budgets and timing repeats of one benchmark mode (the chapters' recipes in full)."""

    baseline_epochs: int = 8        # helpers.training.BASELINE_EPOCHS
    qat_epochs: int = 2             # quantization practice chapter
    prune_rounds: int = 3           # 90% reached in 3 rounds: keep 0.1 ** (1/3) each round
    prune_round_epochs: int = 2
    channel_epochs: int = 4         # fine-tuning after removing half the channels
    jitter_copies: int = 3          # distillation practice chapter, Hinton et al.'s MLP experiment
    teacher_epochs: int = 6
    student_epochs: int = 2
    transfer_steps: int = 100       # transfer algorithm chapter
    pipeline_epochs: int | None = None  # applications chapter: None = budget_pipeline's own recipe
    pipeline_finetune_epochs: int | None = None
    warmup: int = 10
    repeats: int = 50
    blocks: int = 5


QUICK = Budget(baseline_epochs=2, qat_epochs=1, prune_rounds=1, prune_round_epochs=1, channel_epochs=1,
               jitter_copies=1, teacher_epochs=1, student_epochs=1, transfer_steps=20,
               pipeline_epochs=1, pipeline_finetune_epochs=1,
               warmup=3, repeats=10, blocks=2)


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------
def mean_std(values) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def spread(values) -> dict:
    """Median of the per-block values, with the smallest and largest as the spread."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def time_models(models: dict[str, nn.Module], x: torch.Tensor, references: dict[str, str],
                budget: Budget) -> dict[str, dict]:
    """Interleaved latency of every model in ``blocks`` runs, and its speed-ups over the references.

    ``references`` maps a label (e.g. ``"fp32 eager"``) to the name of a model in ``models``.
    Returns, per model: median/p10/p90 milliseconds (median over blocks of each block's value) and,
    per reference, the speed-up ``t_reference / t_model`` per block summarized by :func:`spread`.
    """
    from helpers.measure import latencies

    blocks = [latencies(models, x, warmup=budget.warmup, repeats=budget.repeats) for _ in range(budget.blocks)]
    result = {}
    for name in models:
        result[name] = {
            "batch_size": len(x),
            "median_ms": statistics.median(b[name].median_ms for b in blocks),
            "p10_ms": statistics.median(b[name].p10_ms for b in blocks),
            "p90_ms": statistics.median(b[name].p90_ms for b in blocks),
            "speedup": {label: spread(b[ref].median_ms / b[name].median_ms for b in blocks)
                        for label, ref in references.items()},
        }
    return result


# ----------------------------------------------------------------------------------------------
# The techniques, as the chapters do them
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quantized_kernels():
    """``set_seed`` asks for deterministic kernels (warn-only); quantized CPU kernels are not on
    PyTorch's list, so each call would print a C++ notice. The quantization chapter switches the
    check off for the same reason; here it is off only around the int8 steps."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=True)


def ptq_eager(model: nn.Module, calibration_loader) -> nn.Module:
    """int8 static PTQ with ``torch.ao`` eager mode: fuse conv+ReLU, x86 qconfig, calibrate, convert."""
    import torch.ao.quantization as tq

    from helpers.quantization import taught_torch_ao_warnings

    int8 = tq.QuantWrapper(copy.deepcopy(model)).eval()
    tq.fuse_modules(int8.module, [["conv1", "relu1"], ["conv2", "relu2"]], inplace=True)
    int8.qconfig = tq.get_default_qconfig("x86")
    with taught_torch_ao_warnings(), _quantized_kernels():
        tq.prepare(int8, inplace=True)
        with torch.no_grad():
            for images, _ in calibration_loader:
                int8(images)
        tq.convert(int8, inplace=True)
    return int8


def qat_eager(model: nn.Module, train_loader, num_epochs: int, seed: int) -> nn.Module:
    """int8 QAT with ``torch.ao`` eager mode: fused fake-quantized copy, ``num_epochs`` at lr 1e-4, convert."""
    import torch.ao.quantization as tq

    from helpers.quantization import taught_torch_ao_warnings
    from helpers.training import train

    torch.manual_seed(seed)
    qat = tq.QuantWrapper(copy.deepcopy(model)).train()
    tq.fuse_modules_qat(qat.module, [["conv1", "relu1"], ["conv2", "relu2"]], inplace=True)
    qat.qconfig = tq.get_default_qat_qconfig("x86")
    with taught_torch_ao_warnings(), _quantized_kernels():
        tq.prepare_qat(qat, inplace=True)
        train(qat, train_loader, num_epochs=num_epochs, lr=1e-4, quiet=True)
        qat.eval()
        tq.convert(qat, inplace=True)
    return qat


def ptq_pt2e(model: nn.Module, calibration_loader, example: torch.Tensor) -> nn.Module:
    """int8 static PTQ with pt2e and ``X86InductorQuantizer`` (:func:`helpers.deploy.pt2e_quantize`),
    calibrated on every batch of ``calibration_loader``."""
    from helpers.deploy import pt2e_quantize

    return pt2e_quantize(model, (images for images, _ in calibration_loader), example)


def compile_int8(int8_pt2e: nn.Module, example: torch.Tensor) -> nn.Module:
    """A pt2e int8 graph compiled by Inductor (its int8 kernels): :func:`helpers.deploy.compile_for_batches`."""
    from helpers.deploy import compile_for_batches

    with _quantized_kernels():
        return compile_for_batches(int8_pt2e, example)


def unstructured_prune(model: nn.Module, train_loader, amount: float, rounds: int, epochs: int,
                       seed: int) -> nn.Module:
    """Global magnitude pruning to ``amount`` in ``rounds`` prune + fine-tune rounds, masks made permanent."""
    from torch.nn.utils import prune

    from helpers.training import set_seed, train

    sparse = copy.deepcopy(model)
    targets = [(sparse.conv1, "weight"), (sparse.conv2, "weight"), (sparse.fc1, "weight")]
    set_seed(seed)
    for _ in range(rounds):
        # keep (1 - amount) ** (1 / rounds) of the remaining weights each round
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured,
                                  amount=1 - (1 - amount) ** (1 / rounds))
        train(sparse, train_loader, num_epochs=epochs, quiet=True)
    for module, name in targets:
        prune.remove(module, name)
    return sparse.eval()


def channel_prune(model: nn.Module, train_loader, epochs: int, seed: int) -> nn.Module:
    """Half the channels of conv1 and conv2 removed (lowest L1 norm), then fine-tuned."""
    from helpers.pruning import prune_channels
    from helpers.training import set_seed, train

    half, _ = prune_channels(model, "conv1", "conv2", amount=0.5)
    half, _ = prune_channels(half, "conv2", "fc1", amount=0.5)
    set_seed(seed)
    train(half, train_loader, num_epochs=epochs, quiet=True)
    return half.eval()


def transfer_at_10_labels(source_model: nn.Module, target, seed: int, num_steps: int) -> dict[str, float]:
    """Test accuracy on scikit-learn digits with 10 labels per class: scratch and three transfer recipes."""
    from helpers.data import make_loader, take_per_class
    from helpers.models import CNN
    from helpers.training import evaluate, set_seed
    from helpers.transfer import fine_tune, linear_probe, lp_ft, replace_head

    subset = take_per_class(target.train, 10, seed)
    loader = make_loader(subset, 64, shuffle=True, seed=seed)
    test_loader = make_loader(target.test, 500)
    scores = {}
    for recipe in ("scratch", "linear probe", "fine-tune", "LP-FT"):
        set_seed(seed)
        model = CNN() if recipe == "scratch" else copy.deepcopy(source_model)
        if recipe == "scratch":
            fine_tune(model, loader, num_steps=num_steps)
        elif recipe == "linear probe":
            linear_probe(model, loader)
        elif recipe == "fine-tune":
            replace_head(model, 10)
            fine_tune(model, loader, num_steps=num_steps)
        else:
            lp_ft(model, loader, num_steps=num_steps)
        scores[recipe] = evaluate(model, test_loader).accuracy
    return scores


def distillation_run(splits, jittered, seed: int, budget: Budget) -> dict[str, nn.Module]:
    """Teacher MLP(1200, 1200) + dropout on the jittered set; MLP(800, 800) alone and distilled (T=20, alpha=0.9)."""
    from helpers.data import make_loader
    from helpers.distillation import distill
    from helpers.models import MLP
    from helpers.training import set_seed, train

    set_seed(seed)
    teacher = MLP((1200, 1200), dropout=0.2)
    train(teacher, make_loader(jittered, 64, shuffle=True, seed=100 + seed), num_epochs=budget.teacher_epochs,
          quiet=True)
    teacher.eval()
    models = {"teacher MLP(1200, 1200)": teacher}
    for name, use_teacher in (("student MLP(800, 800) alone", False), ("student MLP(800, 800) distilled", True)):
        set_seed(seed)
        student = MLP((800, 800))
        loader = make_loader(jittered, 64, shuffle=True, seed=seed)
        if use_teacher:
            distill(student, teacher, loader, num_epochs=budget.student_epochs, T=20.0, alpha=0.9)
        else:
            train(student, loader, num_epochs=budget.student_epochs, quiet=True)
        models[name] = student.eval()
    return models


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------
FP32, FP32_COMPILED = "fp32 eager", "fp32 compiled"
INT8_PTQ, INT8_PT2E, INT8_QAT = "int8 PTQ, eager (torch.ao)", "int8 PTQ, compiled (pt2e)", "int8 QAT, eager (torch.ao)"
SPARSE, SPARSE_COMPILED = "90% unstructured, eager", "90% unstructured, compiled"
CHANNELS, CHANNELS_COMPILED = "50% channels, eager", "50% channels, compiled"
CNN_ROWS = ((FP32, "baseline"), (FP32_COMPILED, "baseline"), (INT8_PTQ, "quantization"),
            (INT8_PT2E, "quantization"), (INT8_QAT, "quantization"), (SPARSE, "pruning"),
            (SPARSE_COMPILED, "pruning"), (CHANNELS, "pruning"), (CHANNELS_COMPILED, "pruning"))
PIPE_DISTILLED, PIPE_PRUNED, PIPE_INT8 = "2. distilled student, eager", "3. + conv2 pruned, eager", \
    "4. + int8 (pt2e), compiled"
PIPELINE_STEPS = {"distilled": PIPE_DISTILLED, "pruned": PIPE_PRUNED, "int8": PIPE_INT8}
#: Compiled rows are the same function as their eager model: same accuracy, size and weights.
COMPILED_FROM = {FP32_COMPILED: FP32, SPARSE_COMPILED: SPARSE, CHANNELS_COMPILED: CHANNELS}


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(seeds: int = 3, budget: Budget = Budget(), mode: str = "full") -> dict:
    """Run every measurement and return the JSON-ready results (see the module docstring)."""
    from helpers.data import load_digits, load_mnist, make_loader
    from helpers.deploy import budget_pipeline, size_bytes
    from helpers.distillation import transfer_set
    from helpers.measure import compile_for_inference, count_parameters, machine_info, model_size_bytes
    from helpers.pruning import sparse_size_bytes
    from helpers.training import evaluate, train_baseline

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    started = time.perf_counter()
    data = load_mnist()
    test_loader = make_loader(data.test, batch_size=1000)
    inputs = {b: data.test.tensors[0][:b] for b in BATCH_SIZES}
    target = load_digits()
    splits = load_mnist(val_size=0.2)
    jittered = transfer_set(splits.train, copies=budget.jitter_copies, max_shift=2.0, max_degrees=15.0, seed=0)
    kd_test = make_loader(splits.test, batch_size=500)

    pipeline_shape, epochs = None, {}
    rows = CNN_ROWS + tuple((name, "pipeline") for name in PIPELINE_STEPS.values())
    accuracy = {name: [] for name, _ in rows}
    size = {name: [] for name, _ in rows}
    nonzero = {name: [] for name, _ in rows}
    kd_accuracy: dict[str, list] = {}
    transfer: dict[str, list] = {}
    timed_cnns = timed_mlps = None
    for seed in range(seeds):
        _log(f"seed {seed}: baseline, int8, pruning")
        train_loader = make_loader(data.train, batch_size=64, shuffle=True, seed=seed)
        model, _ = train_baseline(train_loader, seed=seed, num_epochs=budget.baseline_epochs)
        int8_eager = ptq_eager(model, train_loader)
        int8_pt2e = ptq_pt2e(model, train_loader, data.train.tensors[0][:64])
        int8_qat = qat_eager(model, train_loader, budget.qat_epochs, seed)
        sparse = unstructured_prune(model, train_loader, 0.9, budget.prune_rounds, budget.prune_round_epochs, seed)
        half = channel_prune(model, train_loader, budget.channel_epochs, seed)
        eager = {FP32: model, INT8_PTQ: int8_eager, INT8_PT2E: int8_pt2e, INT8_QAT: int8_qat,
                 SPARSE: sparse, CHANNELS: half}
        with _quantized_kernels():
            scores = {name: evaluate(m, test_loader).accuracy for name, m in eager.items()}
        scores[FP32_COMPILED], scores[SPARSE_COMPILED], scores[CHANNELS_COMPILED] = (
            scores[FP32], scores[SPARSE], scores[CHANNELS])  # compiling does not change the function
        stored = {FP32: model_size_bytes(model), INT8_PTQ: model_size_bytes(int8_eager),
                  INT8_PT2E: size_bytes(int8_pt2e), INT8_QAT: model_size_bytes(int8_qat),
                  SPARSE: sparse_size_bytes(sparse, "bitmask"), CHANNELS: model_size_bytes(half)}
        stored[FP32_COMPILED], stored[SPARSE_COMPILED], stored[CHANNELS_COMPILED] = (
            stored[FP32], stored[SPARSE], stored[CHANNELS])
        weights = {FP32: count_parameters(model, nonzero=True), SPARSE: count_parameters(sparse, nonzero=True),
                   CHANNELS: count_parameters(half, nonzero=True)}
        _log(f"seed {seed}: end-to-end pipeline (helpers.deploy.budget_pipeline)")
        # the chapter's call, budget_pipeline(data.train, data.test, seed=seed), with this seed's
        # baseline (trained by the same recipe) passed in instead of trained a second time
        epochs = {key: value for key, value in (("num_epochs", budget.pipeline_epochs),
                                                ("finetune_epochs", budget.pipeline_finetune_epochs))
                  if value is not None}
        with _quantized_kernels():
            steps = budget_pipeline(data.train, data.test, seed=seed, teacher=model, **epochs)
        for step in steps:
            if step.name in PIPELINE_STEPS:
                name = PIPELINE_STEPS[step.name]
                eager[name], scores[name], stored[name] = step.model, step.accuracy, step.size_bytes
                if step.name != "int8":
                    weights[name] = count_parameters(step.model, nonzero=True)
                if step.name == "pruned":
                    pipeline_shape = f"CNN({step.model.conv1.out_channels}, {step.model.conv2.out_channels})"
        for name, _ in rows:
            accuracy[name].append(scores[name])
            size[name].append(stored[name])
            if COMPILED_FROM.get(name, name) in weights:
                nonzero[name].append(weights[COMPILED_FROM.get(name, name)])
        if seed == 0:
            timed_cnns = eager

        _log(f"seed {seed}: distillation")
        mlps = distillation_run(splits, jittered, seed, budget)
        for name, m in mlps.items():
            kd_accuracy.setdefault(name, []).append(evaluate(m, kd_test).accuracy)
        if seed == 0:
            timed_mlps = mlps

        _log(f"seed {seed}: transfer")
        for recipe, score in transfer_at_10_labels(model, target, seed, budget.transfer_steps).items():
            transfer.setdefault(recipe, []).append(score)

    _log("timing the CNNs (compiling first)")
    cnn_timing = {}
    for b, x in inputs.items():
        models = dict(timed_cnns)
        # one compiled copy per batch size: each gets static-shape kernels, the strongest baseline
        models[FP32_COMPILED] = compile_for_inference(copy.deepcopy(timed_cnns[FP32]), x)
        models[SPARSE_COMPILED] = compile_for_inference(copy.deepcopy(timed_cnns[SPARSE]), x)
        models[CHANNELS_COMPILED] = compile_for_inference(copy.deepcopy(timed_cnns[CHANNELS]), x)
        models[INT8_PT2E] = compile_int8(copy.deepcopy(timed_cnns[INT8_PT2E]), x)
        models[PIPE_INT8] = compile_int8(copy.deepcopy(timed_cnns[PIPE_INT8]), x)
        with _quantized_kernels():
            cnn_timing[b] = time_models({name: models[name] for name, _ in rows}, x,
                                        {"fp32 eager": FP32, "fp32 compiled": FP32_COMPILED}, budget)
        torch._dynamo.reset()
    _log("timing the MLPs")
    teacher_name = next(iter(timed_mlps))
    mlp_timing = {b: time_models(timed_mlps, x, {"teacher": teacher_name}, budget) for b, x in inputs.items()}

    fp32_size = statistics.fmean(size[FP32])
    cnn_rows = []
    for name, section in rows:
        cnn_rows.append({
            "section": section, "model": name,
            "accuracy": mean_std(accuracy[name]),
            "size_bytes": mean_std(size[name]),
            "size_ratio": mean_std(fp32 / s for fp32, s in zip(size[FP32], size[name])),
            # int8 weights live in packed buffers, not parameters: counted for the float models only
            "nonzero_weights": mean_std(nonzero[name]) if nonzero[name] else None,
            "latency": {str(b): cnn_timing[b][name] for b in BATCH_SIZES},
        })
    kd_rows = []
    for name, m in timed_mlps.items():
        kd_rows.append({
            "model": name, "accuracy": mean_std(kd_accuracy[name]), "parameters": count_parameters(m),
            "size_bytes": model_size_bytes(m),
            "latency": {str(b): mlp_timing[b][name] for b in BATCH_SIZES},
        })
    info = machine_info()
    return {
        "mode": mode,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "cpu": info["cpu"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seeds": list(range(seeds)),
        "budget": asdict(budget),
        "batch_sizes": list(BATCH_SIZES),
        "fp32_size_bytes": fp32_size,
        "cnn": cnn_rows,
        "distillation": {"transfer_set_images": len(jittered), "test_images": len(splits.test),
                         "T": 20.0, "alpha": 0.9, "rows": kd_rows,
                         # same seed, same loader: the difference distillation alone makes
                         "paired_gain": mean_std(kd - alone for kd, alone in zip(
                             kd_accuracy["student MLP(800, 800) distilled"], kd_accuracy["student MLP(800, 800) alone"]))},
        "transfer": {"labels_per_class": 10, "source": "MNIST (the baseline CNN of each seed)",
                     "target": "scikit-learn digits", "test_images": len(target.test),
                     "rows": [{"recipe": r, "accuracy": mean_std(v)} for r, v in transfer.items()],
                     "paired_gain_vs_scratch": {r: mean_std(a - b for a, b in zip(v, transfer["scratch"]))
                                                for r, v in transfer.items() if r != "scratch"}},
        "pipeline": {"steps": list(PIPELINE_STEPS.values()), "teacher": FP32, "pruned_model": pipeline_shape,
                     "defaults": {k: v.default for k, v in inspect.signature(budget_pipeline).parameters.items()
                                  if v.default is not inspect.Parameter.empty and k != "teacher"},
                     "epochs": epochs},
        "notes": [],
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------
def _pct(stat: dict) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}%"


def _ratio(stat: dict) -> str:
    return f"{stat['median']:.2f}x [{stat['min']:.2f}, {stat['max']:.2f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


CNN_HEADER = ["Technique", "Model", "Test accuracy", "Size vs fp32", "Nonzero weights",
              "b1 vs fp32 eager", "b1 vs fp32 compiled", "b256 vs fp32 eager", "b256 vs fp32 compiled"]
KD_HEADER = ["Model", "Test accuracy", "Parameters", "Size vs teacher", "b1 vs teacher", "b256 vs teacher"]
TRANSFER_HEADER = ["Recipe (10 labels per class)", "Test accuracy"]


def markdown(results: dict) -> str:
    """The results as Markdown: the CNN table, the distillation table, the transfer table, notes."""
    m = results["machine"]
    seeds = len(results["seeds"])
    out = [f"Benchmark ({results['mode']}), {results['date']}: {m['cpu']}, {m['cores']} cores, "
           f"{results['threads']} PyTorch threads, torch {results['torch']}, {seeds} seed(s); "
           f"{results['seconds']:.0f} s.", ""]
    out.append(f"Baseline CNN and its compressed versions. Accuracy: mean ± sd over {seeds} seed(s) on "
               f"1,000 MNIST test digits. Size: stored bytes, fp32 {results['fp32_size_bytes'] / 1024:.1f} KiB = 1x "
               "(90% unstructured: bitmask + values; pt2e: the tensors the int8 graph uses). Speed-up: "
               "t(reference) / t(model), median over timing blocks [min, max], batch 1 and 256.")
    if results["pipeline"]:
        p = results["pipeline"]
        out[-1] += (" Pipeline (applications chapter, helpers.deploy.budget_pipeline): step 1 is the fp32 "
                    "baseline, each later step builds on the one before: "
                    f"CNN{tuple(p['defaults']['student_channels'])} distilled from the baseline "
                    f"(T={p['defaults']['T']:.0f}), conv2 cut to {p['pruned_model']} and fine-tuned by "
                    "distillation, then int8 pt2e.")
    out.append("")
    rows = []
    for row in results["cnn"]:
        lat = row["latency"]
        rows.append([row["section"], row["model"], _pct(row["accuracy"]), f"{row['size_ratio']['mean']:.2f}x",
                     f"{row['nonzero_weights']['mean']:,.0f}" if row["nonzero_weights"] else "n/a",
                     *(_ratio(lat[str(b)]["speedup"][ref]) for b in BATCH_SIZES
                       for ref in ("fp32 eager", "fp32 compiled"))])
    out += [_table(CNN_HEADER, rows), ""]
    kd = results["distillation"]
    out.append(f"Distillation, Hinton et al.'s MLP pair (T={kd['T']:.0f}, alpha={kd['alpha']}), trained on "
               f"{kd['transfer_set_images']:,} jittered digits, tested on {kd['test_images']:,}. Speed-up vs the "
               "teacher, eager.")
    out.append("")
    teacher = kd["rows"][0]
    rows = [[r["model"], _pct(r["accuracy"]), f"{r['parameters']:,}", f"{teacher['size_bytes'] / r['size_bytes']:.2f}x",
             *(_ratio(r["latency"][str(b)]["speedup"]["teacher"]) for b in BATCH_SIZES)] for r in kd["rows"]]
    gain = kd["paired_gain"]
    out += [_table(KD_HEADER, rows), "",
            f"Distilled minus alone, paired by seed: {100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f} points.", ""]
    tr = results["transfer"]
    out.append(f"Transfer learning, {tr['source']} -> {tr['target']}, {tr['labels_per_class']} labels per class, "
               f"tested on {tr['test_images']} digits.")
    out.append("")
    out += [_table(TRANSFER_HEADER, [[r["recipe"], _pct(r["accuracy"])] for r in tr["rows"]]), "",
            "Minus scratch, paired by seed: " + ", ".join(
                f"{r} {100 * g['mean']:+.1f} ± {100 * g['std']:.1f}" for r, g in tr["paired_gain_vs_scratch"].items())
            + " points.", ""]
    out += [f"Note: {note}" for note in results["notes"]]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _positive_int(argument: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{argument} must be an integer >= 1, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{argument} must be an integer >= 1, got {value}")
        return value
    return parse


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 seed (unless --seeds), tiny budgets, few timing repeats: checks the pipeline")
    parser.add_argument("--seeds", type=_positive_int("--seeds"), default=None,
                        help="number of training seeds (default 3, or 1 with --quick)")
    parser.add_argument("--threads", type=_positive_int("--threads"), default=None,
                        help="PyTorch intra-op threads for everything (default: PyTorch's own choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.out.exists() and args.out.is_dir():
        parser.error(f"--out must be a file path, got the directory {args.out}")
    if args.threads:
        torch.set_num_threads(args.threads)  # before anything is compiled: Dynamo guards on it
    import helpers  # noqa: F401  (installs the known-noise filters of helpers/noise.py)

    seeds = args.seeds or (1 if args.quick else 3)
    results = run(seeds=seeds, budget=QUICK if args.quick else Budget(), mode="quick" if args.quick else "full")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(markdown(results))
    print(f"\nJSON: {args.out}")
    return results


if __name__ == "__main__":
    main()
