"""The book's headline numbers, re-measured properly: ``python -m benchmarks.bench`` (``make bench``).

The chapters show single, readable runs. This benchmark repeats their recipes, as ``helpers`` implements
them, over several seeds and times the resulting models interleaved, in one process, so that the README
can quote them:

- quantization (chapters/04_practice/quantization.ipynb): int8 post-training quantization of the
  baseline CNN with ``torch.ao`` (eager, x86 qconfig; :func:`helpers.quantization.ptq_eager`) and with
  pt2e + ``X86InductorQuantizer`` (:func:`helpers.quantization.pt2e_quantize`, compiled by Inductor),
  and quantization-aware training (:func:`helpers.quantization.qat_eager`);
- pruning (chapters/04_practice/pruning.ipynb): 90% global magnitude (unstructured) pruning of conv1,
  conv2 and fc1 in three prune-and-fine-tune rounds (:func:`helpers.pruning.iterative_magnitude_prune`),
  and half the channels of both convolutions removed (:func:`helpers.pruning.prune_chain`), then fine-tuned;
- distillation (chapters/04_practice/distillation.ipynb): Hinton et al.'s MLP pair on the jittered
  transfer set, student alone vs distilled vs teacher;
- transfer learning (chapters/03_algorithms/transfer.ipynb): MNIST -> scikit-learn digits with 10
  labels per class, the four recipes of :data:`helpers.transfer.RECIPES` (:func:`helpers.transfer.run_recipe`);
- the end-to-end pipeline of the applications chapter (:func:`helpers.budget.budget_pipeline`: the
  baseline distilled into CNN(8, 16), conv2 pruned to 6 channels, int8 pt2e), with its own recipe;
- the speed of chapters/10_transformer_adapt.ipynb's 3-layer student of all-MiniLM-L6-v2 against the
  6-layer encoder, eager and compiled, on 8 test documents (:func:`encoder_rows`; the chapter itself
  times them eager only, because compiling both would cost it about 30 seconds).

How the figures are reported:

- accuracies are test accuracies, mean and standard deviation over the seeds (``--seeds``); the
  data split is fixed, the seed changes initialization, shuffling and the few-label subsets;
- latencies come from :func:`helpers.measure.latencies` (warm-up, then all models timed call by
  call, interleaved) at batch 1 and batch 256, repeated in ``blocks``; a speed-up is
  ``median(reference) / median(model)`` within one block, reported as the median over blocks with
  the smallest and largest block as its spread. References: fp32 eager and fp32 compiled
  (:func:`helpers.measure.compile_for_inference`) for the CNN, the teacher for distillation, the
  6-layer encoder eager and compiled for the student encoder.
  Timed models come from the first seed (a model's speed does not depend on its seed).

The Markdown tables go to stdout and everything (machine, CPU, threads, versions, date, every
figure with its spread) to a JSON file, ``_build/bench/bench.json`` by default.
``--quick`` keeps every step but shrinks budgets and repeats so the whole run takes a minute or
two; its numbers show that the pipeline works, not what the techniques achieve.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import inspect
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from helpers.budget import budget_pipeline
from helpers.data import load_digits, load_mnist, make_loader
from helpers.distillation import distill, transfer_set
from helpers.docstrings import load_docstring_pairs
from helpers.embeddings import SentenceEncoder, load_sentence_model, tokenize
from helpers.lm_adaptation import shallow_student
from helpers.measure import compile_for_inference, count_parameters, latencies, machine_info, size_bytes
from helpers.models import MLP
from helpers.noise import int8_kernels
from helpers.pruning import iterative_magnitude_prune, prune_chain
from helpers.quantization import CNN_FUSION, pt2e_quantize, ptq_eager, qat_eager
from helpers.sparse import sparse_size_bytes
from helpers.training import PROGRESS_ENV, evaluate, set_seed, train, train_baseline
from helpers.transfer import RECIPES, run_recipe

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "_build" / "bench" / "bench.json"
BATCH_SIZES = (1, 256)


@dataclass(frozen=True)
class Effort:
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

    def pipeline_arguments(self) -> dict[str, int]:
        """The epoch arguments this mode gives :func:`helpers.budget.budget_pipeline` (none: its defaults)."""
        given = {"num_epochs": self.pipeline_epochs, "finetune_epochs": self.pipeline_finetune_epochs}
        return {key: value for key, value in given.items() if value is not None}


QUICK = Effort(baseline_epochs=2, qat_epochs=1, prune_rounds=1, prune_round_epochs=1, channel_epochs=1,
               jitter_copies=1, teacher_epochs=1, student_epochs=1, transfer_steps=20,
               pipeline_epochs=1, pipeline_finetune_epochs=1,
               warmup=3, repeats=10, blocks=2)

# The rows of the CNN table ("Model" column), in the order the section functions return them.
FP32, FP32_COMPILED = "fp32 eager", "fp32 compiled"
INT8_PTQ, INT8_PT2E, INT8_QAT = "int8 PTQ, eager (torch.ao)", "int8 PTQ, compiled (pt2e)", "int8 QAT, eager (torch.ao)"
SPARSE, SPARSE_COMPILED = "90% unstructured, eager", "90% unstructured, compiled"
CHANNELS, CHANNELS_COMPILED = "50% channels, eager", "50% channels, compiled"
#: the steps of helpers.budget.budget_pipeline after its fp32 baseline (which is the FP32 row) -> their rows
PIPELINE_STEPS = {"distilled": "2. distilled student, eager", "pruned": "3. + conv2 pruned, eager",
                  "int8": "4. + int8 (pt2e), compiled"}
# The rows of the distillation table.
TEACHER, ALONE, DISTILLED = "teacher MLP(1200, 1200)", "student MLP(800, 800) alone", "student MLP(800, 800) distilled"

# The rows of the encoder table.
ENCODER, STUDENT_ENCODER = "all-MiniLM-L6-v2 (6 layers)", "student (3 layers)"
ENCODER_TEXTS = 8           # test documents per call, as chapter 10 times them
STUDENT_LAYERS = (0, 2, 4)  # speed does not depend on which 3 layers, nor on their weights

UNSTRUCTURED_SPARSITY = 0.9
PRUNED_WEIGHTS = ["conv1.weight", "conv2.weight", "fc1.weight"]
KD_T, KD_ALPHA = 20.0, 0.9
LABELS_PER_CLASS = 10

# How a row's model is timed.
EAGER = "eager"
COMPILED = "compiled"            # fp32, compile_for_inference per batch size
INT8_COMPILED = "int8 compiled"  # a pt2e int8 graph: compiled with dynamic=False, Inductor's int8 kernels


# ----------------------------------------------------------------------------------------------
# Rows: one model of one seed, and a row over the seeds
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    """One model of one seed: its table, its row name, and what was measured on it."""

    section: str
    name: str
    model: nn.Module
    accuracy: float
    size_bytes: int | None = None       # None where the table does not report it (transfer)
    nonzero_weights: int | None = None  # None for int8 (weights in packed buffers) and where not reported
    timing: str | None = EAGER          # EAGER, COMPILED or INT8_COMPILED; None: not timed


def compiled(row: Measured, name: str) -> Measured:
    """The row of ``row``'s model compiled by Inductor: the same function, so the same accuracy, size and weights."""
    return dataclasses.replace(row, name=name, timing=COMPILED)


@dataclass
class Series:
    """One table row over the seeds: the first seed's measurement (its model is timed) and each seed's values."""

    first: Measured
    accuracy: list[float] = field(default_factory=list)
    size_bytes: list[int] = field(default_factory=list)
    nonzero_weights: list[int] = field(default_factory=list)


def gather(table: dict[str, Series], rows: list[Measured]) -> None:
    """Add one seed's ``rows`` to ``table`` (row name -> :class:`Series`, in the first seed's order)."""
    for row in rows:
        series = table.setdefault(row.name, Series(row))
        series.accuracy.append(row.accuracy)
        if row.size_bytes is not None:
            series.size_bytes.append(row.size_bytes)
        if row.nonzero_weights is not None:
            series.nonzero_weights.append(row.nonzero_weights)


# ----------------------------------------------------------------------------------------------
# The sections: the chapters' recipes from helpers, one seed each
# ----------------------------------------------------------------------------------------------
def baseline_rows(model: nn.Module, test_loader) -> list[Measured]:
    """The fp32 baseline CNN, eager and compiled."""
    fp32 = Measured("baseline", FP32, model, evaluate(model, test_loader).accuracy, size_bytes(model),
                    count_parameters(model, nonzero=True))
    return [fp32, compiled(fp32, FP32_COMPILED)]


def quantization_rows(model: nn.Module, train_loader, test_loader, example: torch.Tensor, seed: int,
                      effort: Effort) -> list[Measured]:
    """int8 PTQ (``torch.ao`` eager), int8 PTQ (pt2e, timed compiled) and int8 QAT (``torch.ao`` eager).

    Both PTQ recipes calibrate on every batch of ``train_loader``; pt2e exports with ``example``.
    """
    ptq = ptq_eager(model, train_loader, fuse=CNN_FUSION)
    pt2e = pt2e_quantize(model, train_loader, example)
    qat = qat_eager(model, train_loader, effort.qat_epochs, seed=seed, lr=1e-4)
    with int8_kernels():
        return [Measured("quantization", name, int8, evaluate(int8, test_loader).accuracy, size_bytes(int8),
                         timing=timing)
                for name, int8, timing in ((INT8_PTQ, ptq, EAGER), (INT8_PT2E, pt2e, INT8_COMPILED),
                                           (INT8_QAT, qat, EAGER))]


def pruning_rows(model: nn.Module, train_loader, test_loader, seed: int, effort: Effort) -> list[Measured]:
    """90% unstructured (global magnitude, iterative) and 50% of the channels removed; each eager and compiled.

    The unstructured model's size is its bitmask + values encoding (:func:`helpers.sparse.sparse_size_bytes`).
    """
    set_seed(seed)
    sparse = iterative_magnitude_prune(model, train_loader, UNSTRUCTURED_SPARSITY, rounds=effort.prune_rounds,
                                       epochs_per_round=effort.prune_round_epochs, names=PRUNED_WEIGHTS).eval()
    half, _ = prune_chain(model, amount=0.5)
    set_seed(seed)
    train(half, train_loader, num_epochs=effort.channel_epochs, quiet=True)
    half.eval()
    unstructured = Measured("pruning", SPARSE, sparse, evaluate(sparse, test_loader).accuracy,
                            sparse_size_bytes(sparse, "bitmask"), count_parameters(sparse, nonzero=True))
    channels = Measured("pruning", CHANNELS, half, evaluate(half, test_loader).accuracy, size_bytes(half),
                        count_parameters(half, nonzero=True))
    return [unstructured, compiled(unstructured, SPARSE_COMPILED), channels, compiled(channels, CHANNELS_COMPILED)]


def pipeline_rows(model: nn.Module, data, seed: int, effort: Effort) -> list[Measured]:
    """The applications chapter's distill -> prune -> int8 pipeline, steps 2 to 4 (step 1 is the FP32 row).

    The chapter's call, ``budget_pipeline(data.train, data.test, seed=seed)``, with this seed's baseline
    (trained by the same recipe) passed in as the teacher instead of trained a second time.
    """
    with int8_kernels():
        steps = budget_pipeline(data.train, data.test, seed=seed, teacher=model, **effort.pipeline_arguments())
    rows = []
    for step in steps:
        if step.name not in PIPELINE_STEPS:
            continue
        int8 = step.name == "int8"
        rows.append(Measured("pipeline", PIPELINE_STEPS[step.name], step.model, step.accuracy, step.size_bytes,
                             None if int8 else count_parameters(step.model, nonzero=True),
                             INT8_COMPILED if int8 else EAGER))
    return rows


def distillation_rows(jittered, test_loader, seed: int, effort: Effort) -> list[Measured]:
    """Teacher MLP(1200, 1200) + dropout on the jittered set; MLP(800, 800) alone and distilled (T=20, alpha=0.9)."""
    set_seed(seed)
    teacher = MLP((1200, 1200), dropout=0.2)
    train(teacher, make_loader(jittered, 64, shuffle=True, seed=100 + seed), num_epochs=effort.teacher_epochs,
          quiet=True)
    models = {TEACHER: teacher.eval()}
    for name, use_teacher in ((ALONE, False), (DISTILLED, True)):
        set_seed(seed)
        student = MLP((800, 800))
        loader = make_loader(jittered, 64, shuffle=True, seed=seed)
        if use_teacher:
            distill(student, teacher, loader, num_epochs=effort.student_epochs, T=KD_T, alpha=KD_ALPHA)
        else:
            train(student, loader, num_epochs=effort.student_epochs, quiet=True)
        models[name] = student.eval()
    return [Measured("distillation", name, m, evaluate(m, test_loader).accuracy, size_bytes(m))
            for name, m in models.items()]


def transfer_rows(source_model: nn.Module, target, seed: int, effort: Effort) -> list[Measured]:
    """Each recipe of :data:`helpers.transfer.RECIPES` with 10 labels per class of scikit-learn digits,
    tested on the digits' test set (not timed)."""
    test_loader = make_loader(target.test, 500)
    rows = []
    for recipe in RECIPES:
        model = run_recipe(recipe, source_model, target.train, LABELS_PER_CLASS, seed,
                           num_steps=effort.transfer_steps)
        rows.append(Measured("transfer", recipe, model, evaluate(model, test_loader).accuracy, timing=None))
    return rows


# ----------------------------------------------------------------------------------------------
# Statistics and timing
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


def paired_gain(better: Series, reference: Series) -> dict:
    """:func:`mean_std` of the accuracy difference seed by seed (same seed, same data order)."""
    return mean_std(a - b for a, b in zip(better.accuracy, reference.accuracy))


@dataclass(frozen=True)
class Timing:
    """One model at one batch size: median over blocks of each block's median/p10/p90, and its speed-ups."""

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    speedup: dict[str, dict]  # reference label -> spread() of t_reference / t_model over the blocks


def time_models(models: dict[str, nn.Module], x: torch.Tensor, references: dict[str, str],
                effort: Effort) -> dict[str, Timing]:
    """Interleaved latency of every model in ``effort.blocks`` runs, and its speed-ups over the references.

    ``references`` maps a label (e.g. ``"fp32 eager"``) to the name of a model in ``models``.
    """
    blocks = [latencies(models, x, warmup=effort.warmup, repeats=effort.repeats) for _ in range(effort.blocks)]
    return {name: Timing(batch_size=len(x),
                         median_ms=statistics.median(b[name].median_ms for b in blocks),
                         p10_ms=statistics.median(b[name].p10_ms for b in blocks),
                         p90_ms=statistics.median(b[name].p90_ms for b in blocks),
                         speedup={label: spread(b[ref].median_ms / b[name].median_ms for b in blocks)
                                  for label, ref in references.items()})
            for name in models}


def runnable(row: Measured, x: torch.Tensor) -> nn.Module:
    """``row``'s model as it is timed on ``x``: eager, or a compiled copy warmed up on ``x``'s shape."""
    if row.timing == COMPILED:
        return compile_for_inference(copy.deepcopy(row.model), x)
    if row.timing == INT8_COMPILED:
        with int8_kernels():
            return compile_for_inference(copy.deepcopy(row.model), x, dynamic=False)
    return row.model


def time_rows(rows: list[Series], inputs: dict[int, torch.Tensor], references: dict[str, str],
              effort: Effort) -> dict[str, dict[int, Timing]]:
    """Row name -> batch size -> :class:`Timing` of the first seed's models, all timed together.

    One compiled copy per batch size: each gets static-shape kernels, the strongest baseline.
    """
    timings: dict[str, dict[int, Timing]] = {series.first.name: {} for series in rows}
    for batch_size, x in inputs.items():
        models = {series.first.name: runnable(series.first, x) for series in rows}
        with int8_kernels():
            for name, timing in time_models(models, x, references, effort).items():
                timings[name][batch_size] = timing
        torch._dynamo.reset()
    return timings


def encoder_rows(effort: Effort) -> dict:
    """The 6-layer encoder and a 3-layer student (:func:`helpers.lm_adaptation.shallow_student`),
    each eager and compiled, timed together on ``ENCODER_TEXTS`` test documents cut to 128 tokens.

    The student is not distilled: distillation changes its weights, not its work, so its speed is
    that of chapter 10's distilled student.
    """
    teacher = load_sentence_model()
    teacher.max_seq_length = 128  # as in chapters 09-11
    student = shallow_student(teacher, STUDENT_LAYERS)
    ids = tokenize(teacher, load_docstring_pairs("test").documents[:ENCODER_TEXTS])
    models, sizes = {}, {}
    for name, encoder in ((ENCODER, teacher), (STUDENT_ENCODER, student)):
        models[f"{name}, eager"] = SentenceEncoder(encoder).eval()
        models[f"{name}, compiled"] = compile_for_inference(SentenceEncoder(copy.deepcopy(encoder)), ids)
        sizes[f"{name}, eager"] = sizes[f"{name}, compiled"] = (count_parameters(encoder), size_bytes(encoder))
    references = {"eager": f"{ENCODER}, eager", "compiled": f"{ENCODER}, compiled"}
    timing = time_models(models, ids, references, effort)
    torch._dynamo.reset()
    return {"texts": ENCODER_TEXTS, "token_ids": list(ids.shape), "student_layers": list(STUDENT_LAYERS),
            "rows": [{"model": name, "parameters": sizes[name][0], "size_bytes": sizes[name][1],
                      "latency": asdict(timing[name])} for name in models]}


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------
def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _latency(timings: dict[int, Timing]) -> dict[str, dict]:
    return {str(batch_size): asdict(timing) for batch_size, timing in timings.items()}


def run(seeds: int = 3, effort: Effort = Effort(), mode: str = "full") -> dict:
    """Run every measurement and return the JSON-ready results (see the module docstring)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    started = time.perf_counter()
    data = load_mnist()
    test_loader = make_loader(data.test, batch_size=1000)
    inputs = {b: data.test.tensors[0][:b] for b in BATCH_SIZES}
    example = data.train.tensors[0][:64]
    target = load_digits()
    splits = load_mnist(val_size=0.2)
    jittered = transfer_set(splits.train, copies=effort.jitter_copies, max_shift=2.0, max_degrees=15.0, seed=0)
    kd_test = make_loader(splits.test, batch_size=500)

    cnn: dict[str, Series] = {}
    kd: dict[str, Series] = {}
    transfer: dict[str, Series] = {}
    for seed in range(seeds):
        _log(f"seed {seed}: baseline, int8, pruning")
        train_loader = make_loader(data.train, batch_size=64, shuffle=True, seed=seed)
        model, _ = train_baseline(train_loader, seed=seed, num_epochs=effort.baseline_epochs)
        gather(cnn, baseline_rows(model, test_loader))
        gather(cnn, quantization_rows(model, train_loader, test_loader, example, seed, effort))
        gather(cnn, pruning_rows(model, train_loader, test_loader, seed, effort))
        _log(f"seed {seed}: end-to-end pipeline (helpers.budget.budget_pipeline)")
        gather(cnn, pipeline_rows(model, data, seed, effort))
        _log(f"seed {seed}: distillation")
        gather(kd, distillation_rows(jittered, kd_test, seed, effort))
        _log(f"seed {seed}: transfer")
        gather(transfer, transfer_rows(model, target, seed, effort))

    _log("timing the CNNs (compiling first)")
    cnn_timing = time_rows(list(cnn.values()), inputs, {"fp32 eager": FP32, "fp32 compiled": FP32_COMPILED}, effort)
    _log("timing the MLPs")
    kd_timing = time_rows(list(kd.values()), inputs, {"teacher": TEACHER}, effort)
    _log("timing the sentence encoder and its 3-layer student (compiling first)")
    encoder = encoder_rows(effort)

    fp32_sizes = cnn[FP32].size_bytes
    cnn_json = [{
        "section": s.first.section, "model": name,
        "accuracy": mean_std(s.accuracy),
        "size_bytes": mean_std(s.size_bytes),
        "size_ratio": mean_std(fp32 / size for fp32, size in zip(fp32_sizes, s.size_bytes)),
        # int8 weights live in packed buffers, not parameters: counted for the float models only
        "nonzero_weights": mean_std(s.nonzero_weights) if s.nonzero_weights else None,
        "latency": _latency(cnn_timing[name]),
    } for name, s in cnn.items()]
    kd_json = [{"model": name, "accuracy": mean_std(s.accuracy), "parameters": count_parameters(s.first.model),
                "size_bytes": s.first.size_bytes, "latency": _latency(kd_timing[name])} for name, s in kd.items()]
    pruned = cnn[PIPELINE_STEPS["pruned"]].first.model
    info = machine_info()
    return {
        "mode": mode,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "cpu": info["cpu"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seeds": list(range(seeds)),
        "budget": asdict(effort),
        "batch_sizes": list(BATCH_SIZES),
        "fp32_size_bytes": statistics.fmean(fp32_sizes),
        "cnn": cnn_json,
        "distillation": {"transfer_set_images": len(jittered), "test_images": len(splits.test),
                         "T": KD_T, "alpha": KD_ALPHA, "rows": kd_json,
                         # same seed, same loader: the difference distillation alone makes
                         "paired_gain": paired_gain(kd[DISTILLED], kd[ALONE])},
        "transfer": {"labels_per_class": LABELS_PER_CLASS, "source": "MNIST (the baseline CNN of each seed)",
                     "target": "scikit-learn digits", "test_images": len(target.test),
                     "rows": [{"recipe": recipe, "accuracy": mean_std(s.accuracy)} for recipe, s in transfer.items()],
                     "paired_gain_vs_scratch": {recipe: paired_gain(s, transfer["scratch"])
                                                for recipe, s in transfer.items() if recipe != "scratch"}},
        "pipeline": {"steps": list(PIPELINE_STEPS.values()), "teacher": FP32,
                     "pruned_model": f"CNN({pruned.conv1.out_channels}, {pruned.conv2.out_channels})",
                     "defaults": {k: v.default for k, v in inspect.signature(budget_pipeline).parameters.items()
                                  if v.default is not inspect.Parameter.empty and k != "teacher"},
                     "epochs": effort.pipeline_arguments()},
        "encoder": encoder,
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
ENCODER_HEADER = ["Encoder", "Parameters", "Median ms", "vs 6 layers eager", "vs 6 layers compiled"]


def markdown(results: dict) -> str:
    """The results (as :func:`run` returns them or bench.json holds them) as Markdown: the CNN table,
    the distillation, transfer and encoder tables, each with its caption."""
    m = results["machine"]
    seeds = len(results["seeds"])
    p = results["pipeline"]
    out = [f"Benchmark ({results['mode']}), {results['date']}: {m['cpu']}, {m['cores']} cores, "
           f"{results['threads']} PyTorch threads, torch {results['torch']}, {seeds} seed(s); "
           f"{results['seconds']:.0f} s.", ""]
    out += [f"Baseline CNN and its compressed versions. Accuracy: mean ± sd over {seeds} seed(s) on "
            f"1,000 MNIST test digits. Size: stored bytes, fp32 {results['fp32_size_bytes'] / 1024:.1f} KiB = 1x "
            "(90% unstructured: bitmask + values; pt2e: the tensors the int8 graph uses). Speed-up: "
            "t(reference) / t(model), median over timing blocks [min, max], batch 1 and 256. "
            "Pipeline (applications chapter, helpers.budget.budget_pipeline): step 1 is the fp32 "
            "baseline, each later step builds on the one before: "
            f"CNN{tuple(p['defaults']['student_channels'])} distilled from the baseline "
            f"(T={p['defaults']['T']:.0f}), conv2 cut to {p['pruned_model']} and fine-tuned by "
            "distillation, then int8 pt2e.", ""]
    rows = []
    for row in results["cnn"]:
        lat = row["latency"]
        rows.append([row["section"], row["model"], _pct(row["accuracy"]), f"{row['size_ratio']['mean']:.2f}x",
                     f"{row['nonzero_weights']['mean']:,.0f}" if row["nonzero_weights"] else "n/a",
                     *(_ratio(lat[str(b)]["speedup"][ref]) for b in BATCH_SIZES
                       for ref in ("fp32 eager", "fp32 compiled"))])
    out += [_table(CNN_HEADER, rows), ""]
    kd = results["distillation"]
    out += [f"Distillation, Hinton et al.'s MLP pair (T={kd['T']:.0f}, alpha={kd['alpha']}), trained on "
            f"{kd['transfer_set_images']:,} jittered digits, tested on {kd['test_images']:,}. Speed-up vs the "
            "teacher, eager.", ""]
    teacher = kd["rows"][0]
    rows = [[r["model"], _pct(r["accuracy"]), f"{r['parameters']:,}", f"{teacher['size_bytes'] / r['size_bytes']:.2f}x",
             *(_ratio(r["latency"][str(b)]["speedup"]["teacher"]) for b in BATCH_SIZES)] for r in kd["rows"]]
    gain = kd["paired_gain"]
    out += [_table(KD_HEADER, rows), "",
            f"Distilled minus alone, paired by seed: {100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f} points.", ""]
    tr = results["transfer"]
    out += [f"Transfer learning, {tr['source']} -> {tr['target']}, {tr['labels_per_class']} labels per class, "
            f"tested on {tr['test_images']} digits.", ""]
    out += [_table(TRANSFER_HEADER, [[r["recipe"], _pct(r["accuracy"])] for r in tr["rows"]]), "",
            "Minus scratch, paired by seed: " + ", ".join(
                f"{r} {100 * g['mean']:+.1f} ± {100 * g['std']:.1f}" for r, g in tr["paired_gain_vs_scratch"].items())
            + " points.", ""]
    enc = results["encoder"]
    out += [f"Sentence encoder, {enc['texts']} test documents per call (token ids {tuple(enc['token_ids'])}), and a "
            f"student keeping layers {tuple(enc['student_layers'])} (chapter 10; its speed does not depend on "
            "which layers, or on distillation). Speed-up: t(6 layers) / t(model), median over blocks [min, max].", ""]
    out += [_table(ENCODER_HEADER, [[r["model"], f"{r['parameters']:,}", f"{r['latency']['median_ms']:.1f}",
                                     _ratio(r["latency"]["speedup"]["eager"]),
                                     _ratio(r["latency"]["speedup"]["compiled"])] for r in enc["rows"]]), ""]
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 seed (unless --seeds), tiny budgets, few timing repeats: checks the pipeline")
    parser.add_argument("--seeds", type=_positive_int("--seeds"), default=None,
                        help="number of training seeds (default 3, or 1 with --quick)")
    parser.add_argument("--threads", type=_positive_int("--threads"), default=None,
                        help="PyTorch intra-op threads for everything (default: PyTorch's own choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    # the benchmark reports its own progress ("[bench ...]" lines on stderr); training's progress bars,
    # on by default for a reader, would bury them
    os.environ.setdefault(PROGRESS_ENV, "0")
    if args.out.exists() and args.out.is_dir():
        parser.error(f"--out must be a file path, got the directory {args.out}")
    if args.threads:
        torch.set_num_threads(args.threads)  # before anything is compiled: Dynamo guards on it

    seeds = args.seeds or (1 if args.quick else 3)
    results = run(seeds=seeds, effort=QUICK if args.quick else Effort(), mode="quick" if args.quick else "full")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(markdown(results))
    print(f"\nJSON: {args.out}")
    return results


if __name__ == "__main__":
    main()
