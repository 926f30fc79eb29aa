import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dist_worker import PER_RANK_BATCH, dist_config, eval_fn
from engine_toys import build_toy, make_loader_fn
from ddpseg.engine.checkpoint import load_checkpoint
from ddpseg.engine.distributed import (
    all_reduce_mean,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    prepare_batchnorm,
)
from ddpseg.engine.rng import get_rng_state, seed_everything, set_rng_state
from ddpseg.engine.trainer import train


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.device) == (0, 1, False, torch.device("cpu"))
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    assert all_reduce_mean({"loss": torch.tensor([1.0, 3.0]), "acc": 5}) == {"loss": 2.0, "acc": 5.0}


def test_more_processes_than_gpus_on_a_machine_is_a_clear_error_before_nccl(monkeypatch):
    from ddpseg.engine import distributed
    from ddpseg.runtime import DeviceError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(DeviceError, match=r"^2 processes on this machine \(LOCAL_WORLD_SIZE\) but 1 visible CUDA "
                                          r"device\(s\).*start at most 1 per machine, or run on the CPU \(gloo\) with --device cpu$"):
        distributed._check_one_gpu_per_process(world_size=2)
    distributed._check_one_gpu_per_process(world_size=1)  # one process: nothing to share
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    distributed._check_one_gpu_per_process(world_size=4)  # one process per machine, four machines


def test_one_gpu_named_for_every_process_is_a_clear_error_before_nccl(monkeypatch):
    """``--device cuda:0`` under torchrun with two processes on a 2-GPU machine would put both on GPU 0."""
    from ddpseg.engine import distributed
    from ddpseg.runtime import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail(f"set_device({device}) reached"))
    for name, value in (("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    with pytest.raises(DeviceError, match=r"^device cuda:0 with 2 processes on this machine \(LOCAL_WORLD_SIZE\): "
                                          r"every process would use GPU 0.*pass --device cuda .*local rank 1: cuda:1\)$"):
        distributed.init_distributed("cuda:0")
    distributed._check_one_gpu_per_process(2, index=1, local_rank=1)  # its own GPU, named (init_distributed().device)
    distributed._check_one_gpu_per_process(2, index=None, local_rank=1)  # 'cuda': cuda:LOCAL_RANK
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    distributed._check_one_gpu_per_process(2, index=0, local_rank=0)  # one process per machine: any GPU of it


def test_sync_batchnorm_is_reverted_outside_accelerator_ddp_and_keeps_its_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4))
    weight = model[1].weight
    prepared = prepare_batchnorm(model, distributed=True, device=torch.device("cpu"))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in prepared.modules())
    assert prepared[1].weight is weight
    assert prepared(torch.randn(2, 3, 5, 5)).shape == (2, 4, 5, 5)
    assert list(prepared.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                           "1.running_var", "1.num_batches_tracked"]


def test_seeding_is_mmsegs_default_and_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    assert seed_everything(5) == 5  # rank 0: no rank offset, with or without diff_seed
    torch_draw, np_draw, py_draw = torch.rand(1), np.random.rand(), random.random()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    assert torch.equal(torch_draw, torch.rand(1))
    assert np_draw == np.random.rand()
    assert py_draw == random.random()
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.randn(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.randn(3), expected[1])
    assert random.random() == expected[2]


def test_two_process_gloo_training_with_resume_matches_one_process_with_the_global_batch(tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    # --standalone: the launcher binds a free port itself (no window in which another process can take it)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               str(tmp_path / "dist")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    rank0 = torch.load(tmp_path / "dist" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "dist" / "rank1.pt", weights_only=True)
    cfg = dist_config()
    single = train(build_toy(cfg), cfg, make_loader_fn(batch=2 * PER_RANK_BATCH), work_dir=tmp_path / "single",
                   seed=3, eval_fn=eval_fn, tensorboard=False, progress=False).state_dict()
    for key, value in single.items():
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], value, rtol=0, atol=1e-5, msg=key)
    assert not torch.equal(rank0["stem.weight"], build_toy(cfg).stem.weight.detach())  # it did train

    ckpt = load_checkpoint(tmp_path / "dist", with_training_state=True)
    assert ckpt["iter"] == 4 and len(ckpt["training_state"]["rng"]) == 2
    assert (tmp_path / "dist" / "best_mIoU_iter_4.json").is_file()
