import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from ddpseg.data import ShardedSampler, build_dataloader, build_dataset, build_test_dataloader, collate
from ddpseg.data.loader import make_train_loader_fn
from tests.data.pipelines import CITYSCAPES, CITYSCAPES_TEST, CITYSCAPES_TRAIN, scaled


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("world_size", [1, 3])
def test_sharded_sampler_orders_epochs_like_the_distributed_sampler(world_size):
    data = list(range(10))
    for rank in range(world_size):
        ours = ShardedSampler(10, rank=rank, world_size=world_size, seed=7)
        it = iter(ours)
        for epoch in range(2):
            torch_sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=7)
            torch_sampler.set_epoch(epoch)
            assert [i for i, _ in _take(it, ours.num_samples)] == list(torch_sampler)


def test_ranks_get_disjoint_shards_covering_the_dataset():
    shards = [ShardedSampler(10, rank=r, world_size=4, seed=0, infinite=False) for r in range(4)]
    indices = [[i for i, _ in s] for s in shards]
    assert all(len(ix) == 3 for ix in indices)
    flat = sum(indices, [])
    assert set(flat) == set(range(10)) and len(flat) == 12  # two repeats pad to equal shares


def test_sample_seeds_are_fixed_by_seed_and_epoch():
    a = _take(iter(ShardedSampler(5, seed=3)), 10)
    b = _take(iter(ShardedSampler(5, seed=3)), 10)
    c = _take(iter(ShardedSampler(5, seed=4)), 10)
    assert a == b and a != c
    assert len({s for _, s in a}) == 10  # a new seed each time a sample comes round
    assert [i for i, _ in a[:5]] != [i for i, _ in a[5:]]  # reshuffled each epoch


def test_infinite_sampler_has_no_length_and_finite_one_stops():
    with pytest.raises(TypeError):
        len(ShardedSampler(4))
    assert len(list(ShardedSampler(4, shuffle=False, infinite=False))) == 4


def test_drop_last_ends_each_epoch_at_its_last_full_batch():
    sampler = ShardedSampler(5, seed=2, batch_size=2, drop_last=True)
    taken = _take(iter(sampler), 8)
    for epoch in range(2):
        assert taken[4 * epoch : 4 * epoch + 4] == list(zip(*sampler.epoch_indices(epoch)))[:4]
    with pytest.raises(ValueError, match="fewer than one batch"):
        ShardedSampler(3, world_size=2, batch_size=4, drop_last=True)


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_started_at_batch_k_continues_the_stream_of_one_started_at_zero(drop_last):
    for rank in range(2):
        full = _take(iter(ShardedSampler(7, rank=rank, world_size=2, seed=5, batch_size=3, drop_last=drop_last)), 30)
        for k in (1, 2, 5):
            started = ShardedSampler(7, rank=rank, world_size=2, seed=5, batch_size=3, drop_last=drop_last,
                                     start_batch=k)
            assert _take(iter(started), 30 - 3 * k) == full[3 * k :]


def _train_set(root):
    return build_dataset(dict(CITYSCAPES["train"], data_root=str(root), pipeline=scaled(CITYSCAPES_TRAIN, (256, 128), (64, 128))))


def test_training_batches_do_not_depend_on_worker_count(cityscapes_root):
    ds = _train_set(cityscapes_root)
    batches = {}
    for workers in (0, 2):
        it = iter(build_dataloader(ds, 2, workers, seed=5))
        batches[workers] = _take(it, 3)  # 6 samples: more than one epoch of 4
    for b0, b2 in zip(batches[0], batches[2]):
        assert b0["img"].shape == (2, 3, 64, 128) and b0["img"].dtype == torch.float32
        assert b0["gt_semantic_seg"].shape == (2, 1, 64, 128) and b0["gt_semantic_seg"].dtype == torch.int64
        assert isinstance(b0["img_metas"], list) and len(b0["img_metas"]) == 2
        torch.testing.assert_close(b0["img"], b2["img"], rtol=0, atol=0)
        torch.testing.assert_close(b0["gt_semantic_seg"], b2["gt_semantic_seg"], rtol=0, atol=0)


def test_distributed_loaders_give_each_rank_its_own_shard(cityscapes_root):
    ds = _train_set(cityscapes_root)
    names = []
    for rank in range(2):
        batch = next(iter(build_dataloader(ds, 2, 0, dist=True, rank=rank, world_size=2, seed=1)))
        names.append({m["ori_filename"] for m in batch["img_metas"]})
    assert not names[0] & names[1] and len(names[0] | names[1]) == 4
    with pytest.raises(ValueError, match="explicit seed"):
        build_dataloader(ds, 2, 0, dist=True, rank=0, world_size=2)


def test_test_loader_gives_one_image_at_its_own_size_per_augmentation(cityscapes_root):
    pipeline = scaled(CITYSCAPES_TEST, (512, 256), img_ratios=[0.5, 1.0], flip=True)
    ds = build_dataset(dict(CITYSCAPES["val"], data_root=str(cityscapes_root), pipeline=pipeline), dict(test_mode=True))
    batches = list(build_test_dataloader(ds, workers_per_gpu=0))
    assert len(batches) == len(ds) == 2
    batch = batches[0]
    assert [tuple(t.shape) for t in batch["img"]] == [(1, 3, 128, 256)] * 2 + [(1, 3, 256, 512)] * 2
    assert [len(m) for m in batch["img_metas"]] == [1] * 4
    meta = batch["img_metas"][1][0]
    assert {"ori_shape", "img_shape", "pad_shape", "scale_factor", "flip", "flip_direction", "filename", "ori_filename"} <= set(meta)
    assert meta["ori_shape"] == (128, 256, 3) and meta["flip"] is True
    assert batches[1]["img_metas"][0][0]["ori_filename"].endswith("000001_leftImg8bit.png")


def test_collate_pads_images_with_zero_and_labels_with_ignore():
    samples = [
        {"img": torch.ones(3, 2, 3), "gt_semantic_seg": torch.zeros(1, 2, 3, dtype=torch.int64), "img_metas": {"i": 0}},
        {"img": torch.ones(3, 4, 2), "gt_semantic_seg": torch.zeros(1, 4, 2, dtype=torch.int64), "img_metas": {"i": 1}},
    ]
    batch = collate(samples)
    assert batch["img"].shape == (2, 3, 4, 3) and batch["img_metas"] == [{"i": 0}, {"i": 1}]
    assert batch["img"][0, :, 2:].abs().sum() == 0 and batch["img"][1, :, :, 2:].abs().sum() == 0
    assert (batch["gt_semantic_seg"][0, :, 2:] == 255).all() and (batch["gt_semantic_seg"][1, :, :, 2:] == 255).all()
    assert (batch["gt_semantic_seg"][0, :, :2, :3] == 0).all()


def test_workers_seed_global_generators_by_rank_and_worker():
    from ddpseg.data.loader import seed_worker

    state, threads = np.random.get_state(), cv2.getNumThreads()
    draws = set()
    try:
        for rank in range(2):
            for worker in range(2):
                seed_worker(worker, seed=0, rank=rank)
                draws.add(float(np.random.random()))
    finally:
        np.random.set_state(state)
        cv2.setNumThreads(threads)
    assert len(draws) == 4


def test_train_loader_fn_started_at_iteration_k_yields_the_batches_from_the_kth_on(cityscapes_root):
    ds = _train_set(cityscapes_root)
    loader_fn = make_train_loader_fn(ds, 1, 0, rank=1, world_size=2)
    from_zero = _take(loader_fn(0, 9), 5)  # 4 images over 2 ranks: 2 batches per epoch, so this spans 3 epochs
    from_three = _take(loader_fn(3, 9), 2)
    for a, b in zip(from_zero[3:], from_three):
        assert a["img_metas"][0]["ori_filename"] == b["img_metas"][0]["ori_filename"]
        torch.testing.assert_close(a["img"], b["img"], rtol=0, atol=0)
        torch.testing.assert_close(a["gt_semantic_seg"], b["gt_semantic_seg"], rtol=0, atol=0)
    other_seed = _take(make_train_loader_fn(ds, 1, 0, rank=1, world_size=2)(3, 10), 1)[0]
    assert not torch.equal(other_seed["img"], from_three[0]["img"])
