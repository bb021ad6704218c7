"""Figures the chapters share, and training curves read back from TensorBoard event files.

A static book cannot embed a live TensorBoard, so :func:`read_scalars` reads the same event files
TensorBoard would show (written by :func:`helpers.training.train` with ``log_dir=...``) and
:func:`plot_training_curves` draws them. A reader can still run ``tensorboard --logdir`` on them.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

#: Colours the chapters use for the same roles everywhere (colour-blind-safe, Okabe-Ito).
COLORS = {"fp32": "#0072B2", "optimized": "#D55E00", "teacher": "#009E73", "student": "#CC79A7",
          "baseline": "#0072B2", "other": "#E69F00", "grey": "#999999"}

BOOK_STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "legend.frameon": False,
}


#: How a notebook stores its figures: PNGs at twice the pixels of ``figure.dpi``, marked with the
#: size to show them at, so they are sharp on high-density screens (a plain 110-dpi PNG is blurry
#: there). Not SVG: nbval compares SVG outputs as text, and their ids change from run to run.
INLINE_FORMAT = "retina"


def use_book_style() -> None:
    """Apply the book's matplotlib settings (called by ``import helpers``); inside IPython, also
    store inline figures as high-density PNGs (:data:`INLINE_FORMAT`)."""
    plt.rcParams.update(BOOK_STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # plain Python without IPython: nothing shows figures inline
        return
    if get_ipython() is not None:
        set_matplotlib_formats(INLINE_FORMAT)


def read_scalars(log_dir: str | os.PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series in the TensorBoard event files under ``log_dir``.

    Returns ``{tag: (steps, values)}`` with steps ascending. Raises ``FileNotFoundError`` if
    ``log_dir`` holds no event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(log_dir)
    if not path.is_dir() or not any(path.rglob("events.out.tfevents.*")):
        raise FileNotFoundError(f"no TensorBoard event files under {str(log_dir)!r}")
    scalars: dict[str, tuple[list[int], list[float]]] = {}
    for run in sorted({p.parent for p in path.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events = sorted(accumulator.Scalars(tag), key=lambda e: e.step)
            scalars[tag] = ([e.step for e in events], [e.value for e in events])
    return scalars


def plot_training_curves(log_dir: str | os.PathLike, title: str | None = None):
    """Loss (per step and per epoch) and accuracy (per epoch) from a TensorBoard log directory.

    Returns the matplotlib ``Figure``; the notebook shows it with ``plt.show()``.
    """
    scalars = read_scalars(log_dir)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    if "loss/train_step" in scalars:
        steps, values = scalars["loss/train_step"]
        ax_loss.plot(steps, values, color=COLORS["grey"], lw=0.8, label="train (per step)")
    steps_per_epoch = None
    if "loss/train_step" in scalars and "loss/train" in scalars:
        steps_per_epoch = len(scalars["loss/train_step"][0]) / max(len(scalars["loss/train"][0]), 1)
    for split, color in (("train", COLORS["fp32"]), ("val", COLORS["optimized"])):
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            tag = f"{metric}/{split}"
            if tag not in scalars:
                continue
            epochs, values = scalars[tag]
            if ax is ax_loss and steps_per_epoch:
                x = [e * steps_per_epoch for e in epochs]  # end of each epoch, in steps
            else:
                x = epochs
            ax.plot(x, values, marker="o", color=color, label=f"{split} (per epoch)")
    ax_loss.set(xlabel="optimizer step", ylabel="cross-entropy loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    ax_acc.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    for ax in (ax_loss, ax_acc):
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_runs(runs: dict[str, str | os.PathLike], tags=("loss/train", "accuracy/val"), title: str | None = None):
    """One panel per scalar ``tag``, one line per run: TensorBoard's comparison of runs, as a figure.

    ``runs`` maps a label to a log directory written by :func:`helpers.training.train` (``log_dir=...``).
    Raises ``KeyError`` naming the run and the tags it has when a run lacks a tag, ``ValueError`` for
    no runs. Returns the matplotlib ``Figure``.
    """
    if not runs:
        raise ValueError("runs must name at least one log directory")
    scalars = {label: read_scalars(log_dir) for label, log_dir in runs.items()}
    for label, found in scalars.items():
        missing = [tag for tag in tags if tag not in found]
        if missing:
            raise KeyError(f"run {label!r} has no {missing} (it has {sorted(found)})")
    palette = [COLORS[key] for key in ("fp32", "optimized", "teacher", "student", "other", "grey")]
    fig, axes = plt.subplots(1, len(tags), figsize=(4.5 * len(tags), 3.4), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for (label, found), color in zip(scalars.items(), palette * len(scalars)):
            steps, values = found[tag]
            ax.plot(steps, values, color=color, lw=0.8 if "step" in tag else 1.5,
                    marker=None if "step" in tag else "o", markersize=3, label=label)
        kind, _, split = tag.partition("/")
        ax.set(xlabel="optimizer step" if "step" in split else "epoch", ylabel=f"{kind} ({split.replace('_', ' ')})")
        # steps and epochs are whole numbers: no 1.5 on a three-epoch axis
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
