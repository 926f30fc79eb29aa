"""Run by ``torchrun --nproc_per_node 2`` from test_distributed.py: train the toy model for 4 iterations on CPU
(gloo), interrupted after iteration 3 and resumed, then save this rank's final weights as ``rank<r>.pt``."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from engine_toys import SimulatedKill, build_toy, make_loader_fn, toy_config  # noqa: E402
from ddpseg.engine.distributed import destroy_distributed, exit_worker, init_distributed  # noqa: E402
from ddpseg.engine.rng import seed_everything  # noqa: E402
from ddpseg.engine.trainer import train  # noqa: E402

PER_RANK_BATCH = 2


def dist_config() -> dict:
    # No dropout: every rank would draw the same mask, which a single process with the whole batch cannot match.
    return toy_config(
        max_iters=4,
        model=dict(type="ToySegmentor", width=8, dropout=0.0),
        checkpoint_config=dict(by_epoch=False, interval=2),
        evaluation=dict(interval=2, metric="mIoU", save_best="mIoU"),
    )


def eval_fn(model, iteration):
    return {"mIoU": float(iteration)}


def main(work_dir: str) -> None:
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    seed = seed_everything(3)
    cfg = dist_config()
    loader_fn = make_loader_fn(batch=PER_RANK_BATCH, rank=info.rank, world_size=info.world_size, kill_at=3)
    try:
        train(build_toy(cfg), cfg, loader_fn, work_dir=work_dir, seed=seed, eval_fn=eval_fn, tensorboard=False,
              progress=False)
        raise AssertionError("the simulated kill did not happen")
    except SimulatedKill:
        pass
    model = train(build_toy(cfg), cfg, make_loader_fn(batch=PER_RANK_BATCH, rank=info.rank, world_size=2),
                  work_dir=work_dir, seed=seed, resume="auto", eval_fn=eval_fn, tensorboard=False, progress=False)
    torch.save(model.state_dict(), Path(work_dir) / f"rank{info.rank}.pt")
    destroy_distributed()
    exit_worker(0)  # as `ddpseg train` ends its workers: gloo's C++ teardown sometimes aborts at interpreter exit


if __name__ == "__main__":
    main(sys.argv[1])
