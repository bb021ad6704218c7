"""Data-parallel training (DDP) on one machine, measured: chapters/05_applications/training.ipynb.

(The bf16 and ``torch.compile`` training step of that chapter is in :mod:`helpers.training`.) This is the code a
reader would run on a cluster: :func:`train_data_parallel` is the per-process training loop
(one process per GPU or machine), :func:`launch_data_parallel` starts ``world_size`` such processes
on this machine with ``torch.multiprocessing`` and the gloo backend, and :func:`train_single_process`
runs the *same* loop in the current process as the reference DDP must reproduce.

Why DDP reproduces single-process training (Li et al. 2020): every rank takes its own slice of the
same global batch (:func:`global_batches`, :func:`local_batch`), computes the mean loss of that slice,
and DDP averages the gradients over ranks, so each step applies the gradient of the mean loss over
the global batch, as one process would with that batch. Only float summation order differs.

Gradient compression uses PyTorch's DDP communication hooks (``COMM_HOOKS``): ``"fp16"`` sends the
gradients in half precision, ``"powersgd"`` sends a rank-r factorization P Q^T of each gradient matrix
(Vogels et al. 2019). Bytes are *measured*: inside each worker ``torch.distributed.all_reduce`` is
wrapped to add up the bytes of every tensor the hook all-reduces (:class:`AllReduceCounter`).

Results come back through a file in a temporary directory, read with ``weights_only=True``; worker
output goes to per-rank log files there (shown in the error if a rank fails), so a notebook's
stored outputs only carry what the parent prints. Every wait has a time limit: the process group's
``timeout`` and the parent's join deadline, after which the workers are terminated.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from helpers._checks import check_int, check_number
from helpers.training import OPTIMIZERS, global_batches, make_optimizer, set_seed

COMM_HOOKS = ("allreduce", "fp16", "powersgd")
HOST = "127.0.0.1"


# ----------------------------------------------------------------------------------------------
# Ports and arguments
# ----------------------------------------------------------------------------------------------

def find_free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(port: int, host: str = HOST) -> None:
    """Raise ``ValueError`` naming ``port`` if it is out of range or already in use on ``host``.

    Checked before any process starts, so a busy port fails at once with a clear message instead
    of rank 0 failing to bind its rendezvous store while rank 1 waits for it.
    """
    check_int("port", port, minimum=1024, maximum=65535)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as error:
            raise ValueError(f"port {port} on {host} is already in use ({error.strerror}); "
                             "pass another port, or port=None to pick a free one") from None


@dataclass(frozen=True)
class DataParallelConfig:
    """Everything one training run needs besides the model and the data (picklable, for spawn).

    ``batch_size`` is the *global* batch: each of ``world_size`` ranks takes
    ``batch_size // world_size`` examples of it, so it must be divisible by ``world_size``.
    ``comm_hook`` is one of :data:`COMM_HOOKS`; ``powersgd_rank`` is PowerSGD's matrix rank r and
    ``powersgd_start`` the step from which it compresses (it sends plain gradients before that;
    PyTorch requires at least 2 with error feedback). ``timeout`` (seconds) bounds every collective.
    """

    world_size: int = 2
    num_epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    comm_hook: str = "allreduce"
    powersgd_rank: int = 1
    powersgd_start: int = 2
    timeout: float = 60.0

    def __post_init__(self):
        check_int("world_size", self.world_size, minimum=1)
        check_int("num_epochs", self.num_epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size must be divisible by world_size={self.world_size}, "
                             f"got {self.batch_size}")
        check_number("lr", self.lr, 0, low_open=True)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check_int("seed", self.seed, minimum=0)
        if self.comm_hook not in COMM_HOOKS:
            raise ValueError(f"comm_hook must be one of {COMM_HOOKS}, got {self.comm_hook!r}")
        check_int("powersgd_rank", self.powersgd_rank, minimum=1)
        check_int("powersgd_start", self.powersgd_start, minimum=2)
        check_number("timeout", self.timeout, 0, low_open=True)


@dataclass
class DataParallelResult:
    """What a run returns: rank 0's final weights and its measurements.

    ``bytes_per_step[i]`` is the number of bytes rank 0 handed to all-reduce in step i (0 without
    a process group); ``epoch_seconds`` the wall time of each epoch on rank 0; ``train_loss`` the
    mean loss of each epoch over rank 0's slices.
    """

    state_dict: dict[str, torch.Tensor]
    world_size: int
    comm_hook: str
    bytes_per_step: list[int] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the trained weights into ``model`` (built like the trained one), in eval mode."""
        model.load_state_dict(self.state_dict)
        return model.eval()


# ----------------------------------------------------------------------------------------------
# The per-process training loop (the code each GPU / machine runs)
# ----------------------------------------------------------------------------------------------

def local_batch(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a global batch (what DistributedSampler does per epoch)."""
    check_int("world_size", world_size, minimum=1)
    check_int("rank", rank, minimum=0, maximum=world_size - 1)
    if len(batch) % world_size:
        raise ValueError(f"batch of {len(batch)} cannot be split evenly over world_size={world_size}")
    size = len(batch) // world_size
    return batch[rank * size:(rank + 1) * size]


class AllReduceCounter:
    """Count the bytes of every tensor passed to ``torch.distributed.all_reduce`` while active.

    DDP's communication hooks call ``dist.all_reduce`` through the module attribute, so wrapping it
    sees exactly what each hook sends (the payload; a ring all-reduce moves about
    ``2 (W-1)/W`` times that per rank over the wire).
    """

    def __init__(self):
        self.bytes = 0
        self._original = None

    def _counting(self, tensor, *args, **kwargs):
        self.bytes += tensor.numel() * tensor.element_size()
        return self._original(tensor, *args, **kwargs)

    def __enter__(self) -> "AllReduceCounter":
        self._original = dist.all_reduce
        dist.all_reduce = self._counting
        return self

    def __exit__(self, *exc) -> None:
        dist.all_reduce = self._original


def register_comm_hook(ddp_model: nn.Module, comm_hook: str, powersgd_rank: int = 1,
                       powersgd_start: int = 2, seed: int = 0) -> None:
    """Register one of :data:`COMM_HOOKS` on a ``DistributedDataParallel`` model.

    ``"allreduce"`` is PyTorch's Python twin of DDP's built-in averaging (registered explicitly so
    its bytes are counted the same way as the compressed hooks').
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

    if comm_hook == "allreduce":
        ddp_model.register_comm_hook(None, default_hooks.allreduce_hook)
    elif comm_hook == "fp16":
        ddp_model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif comm_hook == "powersgd":
        state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=powersgd_rank,
                                       start_powerSGD_iter=powersgd_start, random_seed=seed)
        ddp_model.register_comm_hook(state, powersgd.powerSGD_hook)
    else:
        raise ValueError(f"comm_hook must be one of {COMM_HOOKS}, got {comm_hook!r}")


def train_data_parallel(model: nn.Module, dataset: TensorDataset, config: DataParallelConfig,
                        rank: int = 0) -> DataParallelResult:
    """Train ``model`` in place on this rank's slices of the global batches; return rank's result.

    With ``config.world_size > 1`` the default process group must already be initialized (see
    :func:`launch_data_parallel`); the model is wrapped in ``DistributedDataParallel`` with the
    configured communication hook. With ``world_size == 1`` it is plain single-process training
    on the same batches.
    """
    x_all, y_all = dataset.tensors
    ws = config.world_size
    net: nn.Module = model
    if ws > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model)
        register_comm_hook(net, config.comm_hook, config.powersgd_rank, config.powersgd_start,
                           config.seed)
    opt = make_optimizer(model, config.optimizer, config.lr)
    result = DataParallelResult(state_dict={}, world_size=ws, comm_hook=config.comm_hook)
    counter = AllReduceCounter()
    net.train()
    with counter:
        for epoch in range(config.num_epochs):
            start, loss_sum, steps = time.perf_counter(), 0.0, 0
            for batch in global_batches(len(y_all), config.batch_size, config.seed, epoch):
                index = local_batch(batch, rank, ws)
                before = counter.bytes
                loss = F.cross_entropy(net(x_all[index]), y_all[index])
                opt.zero_grad()
                loss.backward()          # DDP all-reduces (through the hook) during backward
                opt.step()
                result.bytes_per_step.append(counter.bytes - before)
                loss_sum += loss.item()
                steps += 1
            result.epoch_seconds.append(time.perf_counter() - start)
            result.train_loss.append(loss_sum / steps)
    result.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result


def train_single_process(model_fn: Callable[[], nn.Module], dataset: TensorDataset,
                         config: DataParallelConfig) -> DataParallelResult:
    """The reference: :func:`train_data_parallel` in this process, one rank holding the whole batch.

    ``config.world_size`` is ignored (treated as 1); the model is built by ``model_fn()`` after
    seeding with ``config.seed``, exactly as every DDP worker builds it.
    """
    from dataclasses import replace

    config = replace(config, world_size=1)
    set_seed(config.seed)
    return train_data_parallel(model_fn(), dataset, config)


# ----------------------------------------------------------------------------------------------
# Launching workers on this machine
# ----------------------------------------------------------------------------------------------

def _redirect_output(log_path: Path) -> None:
    """Send this worker's stdout and stderr (Python and C++ level) to its log file."""
    import sys

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _worker(rank: int, model_fn: Callable[[], nn.Module], dataset: TensorDataset,
            configs: list[DataParallelConfig], port: int, run_dir: str) -> None:
    """Entry point of one spawned rank: one thread, join the group, train each config in turn;
    rank 0 saves each result to ``result{i}.pt``."""
    run = Path(run_dir)
    _redirect_output(run / f"rank{rank}.log")
    torch.set_num_threads(1)           # world_size ranks share the machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://{HOST}:{port}", rank=rank,
                            world_size=configs[0].world_size,
                            timeout=timedelta(seconds=max(c.timeout for c in configs)))
    try:
        for i, config in enumerate(configs):
            set_seed(config.seed)      # same initial weights on every rank (DDP also broadcasts)
            result = train_data_parallel(model_fn(), dataset, config, rank=rank)
            if rank == 0:
                torch.save({"state_dict": result.state_dict,
                            "bytes_per_step": result.bytes_per_step,
                            "epoch_seconds": result.epoch_seconds,
                            "train_loss": result.train_loss}, run / f"result{i}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _log_tail(run: Path, lines: int = 15) -> str:
    tails = []
    for log in sorted(run.glob("rank*.log")):
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
        if text:
            tails.append(f"--- {log.name} ---\n" + "\n".join(text))
    return "\n".join(tails)


def launch_data_parallel(model_fn: Callable[[], nn.Module], dataset: TensorDataset,
                         configs: DataParallelConfig | list[DataParallelConfig],
                         port: int | None = None, join_timeout: float | None = None
                         ) -> DataParallelResult | list[DataParallelResult]:
    """Train with ``world_size`` spawned processes (gloo, one thread each); rank 0's result(s).

    ``configs``: one :class:`DataParallelConfig`, or a list of them with the same ``world_size``
    trained one after the other by the same processes (this saves a process start-up per run,
    several seconds each); the return value is then a list in the same order.
    ``model_fn`` must be picklable (a class such as ``CNN``, or a ``functools.partial`` of one).
    ``port``: the rendezvous port on 127.0.0.1, checked free first (``None`` picks a free one).
    ``join_timeout``: seconds to wait for all ranks (default: 60 plus the configs' timeouts); past
    it the workers are terminated and ``TimeoutError`` is raised, so a caller never hangs. A
    failing rank raises ``RuntimeError`` with the tail of the ranks' logs.
    """
    single = isinstance(configs, DataParallelConfig)
    configs = [configs] if single else list(configs)
    if not configs or not all(isinstance(c, DataParallelConfig) for c in configs):
        raise TypeError("configs must be a DataParallelConfig or a non-empty list of them")
    world_size = configs[0].world_size
    if any(c.world_size != world_size for c in configs):
        raise ValueError(f"configs must share one world_size, got "
                         f"{sorted({c.world_size for c in configs})}")
    if world_size < 2:
        raise ValueError("world_size must be >= 2 to launch processes; use "
                         "train_single_process for world_size=1")
    if not isinstance(dataset, TensorDataset):
        raise TypeError(f"dataset must be a TensorDataset, got {type(dataset).__name__}")
    if len(dataset) < max(c.batch_size for c in configs):
        raise ValueError(f"dataset has {len(dataset)} examples, fewer than batch_size="
                         f"{max(c.batch_size for c in configs)}")
    port = find_free_port() if port is None else port
    check_port_free(port)
    if join_timeout is None:
        join_timeout = 60 + sum(c.timeout for c in configs)
    check_number("join_timeout", join_timeout, 0, low_open=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="ddp-") as run_dir:
        run = Path(run_dir)
        context = mp.start_processes(_worker, args=(model_fn, dataset, configs, port, run_dir),
                                     nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + join_timeout
        try:
            while not context.join(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"data-parallel run on port {port} did not finish within "
                                       f"join_timeout={join_timeout} s; workers terminated\n"
                                       + _log_tail(run))
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
            raise RuntimeError(f"a rank of the data-parallel run on port {port} failed: "
                               f"{error}\n{_log_tail(run)}") from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
                    process.join(5)
        for i, config in enumerate(configs):
            path = run / f"result{i}.pt"
            if not path.exists():
                raise RuntimeError(f"the data-parallel run on port {port} ended without result "
                                   f"{i}\n" + _log_tail(run))
            saved = torch.load(path, weights_only=True)
            results.append(DataParallelResult(world_size=world_size, comm_hook=config.comm_hook,
                                              **saved))
    return results[0] if single else results
