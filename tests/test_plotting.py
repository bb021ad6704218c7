"""helpers.plotting: TensorBoard read-back and the shared figures."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from helpers.plotting import BOOK_STYLE, plot_runs, plot_training_curves, read_scalars, use_book_style  # noqa: E402


def write_run(path):
    with SummaryWriter(log_dir=str(path)) as writer:
        for step in range(6):
            writer.add_scalar("loss/train_step", 1.0 / (step + 1), step)
        for epoch in (1, 2):
            writer.add_scalar("loss/train", 0.5 / epoch, epoch)
            writer.add_scalar("accuracy/train", 0.8 + 0.05 * epoch, epoch)
            writer.add_scalar("accuracy/val", 0.7 + 0.1 * epoch, epoch)


def test_read_scalars_round_trips_what_was_written(tmp_path):
    write_run(tmp_path)
    scalars = read_scalars(tmp_path)
    steps, values = scalars["loss/train_step"]
    assert steps == list(range(6)) and values == pytest.approx([1.0 / (s + 1) for s in range(6)])
    assert scalars["accuracy/val"] == ([1, 2], pytest.approx([0.8, 0.9]))


def test_read_scalars_without_events_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path)


def test_plot_training_curves_draws_every_series(tmp_path):
    write_run(tmp_path)
    fig = plot_training_curves(tmp_path, title="run")
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 2  # per-step and per-epoch train loss
    assert len(acc_ax.lines) == 2  # train and val accuracy
    # per-epoch losses are placed at the end of their epoch, in optimizer steps
    assert list(loss_ax.lines[1].get_xdata()) == [3.0, 6.0]


def test_plot_runs_compares_runs_tag_by_tag(tmp_path):
    write_run(tmp_path / "a")
    write_run(tmp_path / "b")
    fig = plot_runs({"run a": tmp_path / "a", "run b": tmp_path / "b"},
                    tags=("loss/train_step", "accuracy/val"))
    steps_ax, val_ax = fig.axes
    assert [line.get_label() for line in val_ax.lines[:2]] == ["run a", "run b"]
    assert list(val_ax.lines[0].get_xdata()) == [1, 2] and len(steps_ax.lines) == 2
    assert steps_ax.get_xlabel() == "optimizer step" and val_ax.get_xlabel() == "epoch"
    # two epochs: the ticks are whole epochs, not 1.25, 1.5, ...
    fig.canvas.draw()
    ticks = [t for t in val_ax.get_xticks() if val_ax.get_xlim()[0] <= t <= val_ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    with pytest.raises(KeyError, match=r"run 'run a' has no \['loss/val_step'\]"):
        plot_runs({"run a": tmp_path / "a"}, tags=("loss/val_step",))
    with pytest.raises(ValueError, match="runs must name at least one log directory"):
        plot_runs({})


def test_use_book_style_sets_rcparams():
    matplotlib.rcParams["axes.grid"] = False
    use_book_style()
    assert all(matplotlib.rcParams[k] == v for k, v in BOOK_STYLE.items() if k != "figure.figsize")


def test_inside_ipython_figures_are_stored_at_twice_their_pixels():
    """What a notebook stores for a figure: a PNG of 2x the pixels, with the size to show it at."""
    import base64
    import struct

    import matplotlib.pyplot as plt
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.display_formatter.active_types = ["text/plain", "image/png"]  # as in a Jupyter kernel
    try:
        use_book_style()
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [1, 0])  # IPython shows no empty figure
        data, metadata = shell.display_formatter.format(fig)
        plt.close(fig)
    finally:
        InteractiveShell.clear_instance()
    png = base64.b64decode(data["image/png"])
    pixel_width, pixel_height = struct.unpack(">II", png[16:24])  # the PNG header's IHDR chunk
    shown = metadata["image/png"]
    assert (pixel_width // 2, pixel_height // 2) == (shown["width"], shown["height"])
    # shown at figure.dpi (cropped to what was drawn: bbox_inches="tight")
    assert 0.8 * 3 * BOOK_STYLE["figure.dpi"] < shown["width"] <= 3 * BOOK_STYLE["figure.dpi"]
