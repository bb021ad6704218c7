"""helpers.distributed: DDP over two spawned processes agrees with one process, bytes are counted,
a busy port and bad arguments fail at once with clear messages, nothing hangs."""
import functools
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

from helpers.distributed import (
    AllReduceCounter,
    DataParallelConfig,
    check_port_free,
    find_free_port,
    launch_data_parallel,
    local_batch,
    train_single_process,
)
from helpers.models import MLP
from helpers.training import global_batches

os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = functools.partial(MLP, hidden=(8,), in_features=16, num_classes=10)


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 10, (n,), generator=g))


def configs():
    # 64 examples, global batch 16: 4 steps, enough for PowerSGD to start compressing (step 2).
    base = dict(world_size=2, num_epochs=1, batch_size=16, lr=0.05, optimizer="sgd", timeout=30)
    return [DataParallelConfig(comm_hook=hook, **base) for hook in ("allreduce", "fp16", "powersgd")]


@pytest.fixture(scope="module")
def ddp_results():
    # One launch trains all three hooks, so the module pays one process start-up.
    return launch_data_parallel(TINY, tiny_data(), configs(), join_timeout=120)


def test_ddp_matches_single_process_training(ddp_results):
    single = train_single_process(TINY, tiny_data(), configs()[0])
    ddp = ddp_results[0]
    assert ddp.world_size == 2 and len(ddp.bytes_per_step) == 4
    for name, value in single.state_dict.items():
        torch.testing.assert_close(ddp.state_dict[name], value, rtol=1e-5, atol=1e-6)
    assert single.bytes_per_step == [0, 0, 0, 0]          # no process group, nothing sent


def test_bytes_per_step_follow_the_hook_format(ddp_results):
    model = TINY()
    numel = sum(p.numel() for p in model.parameters())
    assert ddp_results[0].bytes_per_step == [4 * numel] * 4      # fp32 gradients
    assert ddp_results[1].bytes_per_step == [2 * numel] * 4      # fp16 gradients
    # PowerSGD, rank 1: plain fp32 for the first 2 steps, then P (m x 1) and Q (n x 1) per weight
    # matrix (both compress >= 2x here), and the biases uncompressed.
    compressed = sum(p.shape[0] + p[0].numel() for p in model.parameters() if p.dim() > 1)
    biases = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert ddp_results[2].bytes_per_step == [4 * numel] * 2 + [4 * (compressed + biases)] * 2


def test_compressed_runs_stay_close_to_uncompressed(ddp_results):
    plain, fp16, powersgd = (r.state_dict for r in ddp_results)
    for name, value in plain.items():
        assert (fp16[name] - value).abs().max() < 1e-3           # fp16 rounding only
        assert (powersgd[name] - value).abs().max() < 0.1        # rank-1 gradients, 2 steps
    assert any(not torch.equal(powersgd[n], v) for n, v in plain.items())


def test_all_reduce_counter_counts_bytes_in_a_process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{find_free_port()}", rank=0,
                            world_size=1, timeout=timedelta(seconds=10))
    try:
        tensor = torch.arange(6, dtype=torch.float16)
        with AllReduceCounter() as counter:
            dist.all_reduce(tensor)
            dist.all_reduce(torch.ones(3))
        assert counter.bytes == 6 * 2 + 3 * 4
        assert dist.all_reduce is not counter._counting      # restored on exit
        torch.testing.assert_close(tensor, torch.arange(6, dtype=torch.float16))
    finally:
        dist.destroy_process_group()


def test_port_in_use_fails_before_any_process_starts():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} .*already in use"):
            check_port_free(port)
        with pytest.raises(ValueError, match=f"port {port} "):
            launch_data_parallel(TINY, tiny_data(), configs()[0], port=port)
    check_port_free(port)                                      # free again once closed


def test_join_timeout_terminates_the_workers_instead_of_hanging():
    with pytest.raises(TimeoutError, match="join_timeout=0.01"):
        launch_data_parallel(TINY, tiny_data(), configs()[0], join_timeout=0.01)


@pytest.mark.parametrize("kwargs, message", [
    (dict(world_size=0), "world_size must be an integer >= 1"),
    (dict(num_epochs=0), "num_epochs"),
    (dict(batch_size=15), "batch_size must be divisible by world_size=2"),
    (dict(lr=0), "lr must be a positive"),
    (dict(optimizer="lamb"), "optimizer must be one of"),
    (dict(comm_hook="int8"), "comm_hook must be one of"),
    (dict(powersgd_rank=0), "powersgd_rank"),
    (dict(powersgd_start=1), "powersgd_start must be an integer >= 2"),
    (dict(timeout=0), "timeout must be a positive"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataParallelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(world_size=True), "world_size must be an integer >= 1, got True"),
    (dict(num_epochs=2.0), "num_epochs must be an integer >= 1, got 2.0"),
    (dict(lr="0.1"), "lr must be a positive"),
])
def test_config_wrong_types_raise_type_error(kwargs, message):
    with pytest.raises(TypeError, match=message):
        DataParallelConfig(**kwargs)


def test_launch_validation():
    with pytest.raises(ValueError, match="port must be an integer in"):
        check_port_free(80)
    with pytest.raises(ValueError, match="world_size must be >= 2"):
        launch_data_parallel(TINY, tiny_data(), DataParallelConfig(world_size=1))
    with pytest.raises(ValueError, match="share one world_size"):
        launch_data_parallel(TINY, tiny_data(), [DataParallelConfig(world_size=2),
                                                 DataParallelConfig(world_size=4)])
    with pytest.raises(ValueError, match="fewer than batch_size=128"):
        launch_data_parallel(TINY, tiny_data(), DataParallelConfig(batch_size=128))
    with pytest.raises(TypeError, match="configs must be"):
        launch_data_parallel(TINY, tiny_data(), [])
    with pytest.raises(ValueError, match="join_timeout"):
        launch_data_parallel(TINY, tiny_data(), DataParallelConfig(batch_size=16), join_timeout=-1)


def test_global_batches_and_local_slices_partition_the_data():
    batches = global_batches(70, 16, seed=0, epoch=0)
    assert len(batches) == 4 and all(len(b) == 16 for b in batches)     # last 6 dropped
    assert len(torch.cat(batches).unique()) == 64
    assert not torch.equal(batches[0], global_batches(70, 16, seed=0, epoch=1)[0])
    halves = [local_batch(batches[0], r, 2) for r in range(2)]
    assert torch.equal(torch.cat(halves), batches[0])
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 1\]"):
        local_batch(batches[0], 2, 2)
    with pytest.raises(ValueError, match="cannot be split evenly"):
        local_batch(batches[0], 0, 3)
    with pytest.raises(ValueError, match="num_examples must be >= batch_size"):
        global_batches(8, 16, seed=0, epoch=0)
