"""The small package the book's notebooks stand on.

One module per idea (CONTRIBUTING.md lists them and their layers): ``data``, ``models``,
``training``, ``measure``, ``plotting``, one per technique, and the applications built on them.
The most used names are re-exported here, so a chapter's setup cell reads
``from helpers import load_mnist, CNN, train, evaluate, set_seed``.
"""
from helpers import noise as _noise

_noise.install()  # first: importing the modules below may log a known notice

# ruff: noqa: E402
from helpers.data import load_digits, load_mnist, make_loader, random_batches, take_per_class
from helpers.measure import (
                             compare,
                             compile_for_inference,
                             count_parameters,
                             cpu_features,
                             latencies,
                             latency,
                             layer_costs,
                             machine_info,
                             size_bytes,
                             sparsity,
)
from helpers.models import CNN, MLP
from helpers.notebook import short_tracebacks
from helpers.plotting import plot_runs, plot_training_curves, read_scalars, use_book_style
from helpers.training import evaluate, set_seed, tensorboard_dir, train, train_baseline

use_book_style()
short_tracebacks()

__all__ = [
    "CNN", "MLP", "compare", "compile_for_inference", "count_parameters", "cpu_features", "evaluate", "latencies",
    "latency", "layer_costs", "load_digits", "load_mnist", "machine_info", "make_loader", "size_bytes",
    "plot_runs", "plot_training_curves", "random_batches", "read_scalars", "set_seed", "short_tracebacks", "sparsity",
    "take_per_class",
    "tensorboard_dir", "train", "train_baseline", "use_book_style",
]
