"""Metrics must equal mmseg 0.x's: hand-worked cases, cross-checks, streaming parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from ddpseg.evaluation import (
    SegEvaluator,
    eval_metrics,
    format_metric_tables,
    intersect_and_union,
    mean_dice,
    mean_fscore,
    mean_iou,
    pre_eval_to_metrics,
    total_intersect_and_union,
)

IGNORE = 255

# Hand-worked case, K = 3. Pixel (1, 0) is ignored; of the other 5 pixels 3 are right.
#   class 0: pred 2, label 2, intersect 1 -> IoU 1/3, Acc 1/2, Dice 1/2, P 1/2, R 1/2
#   class 1: pred 1, label 2, intersect 1 -> IoU 1/2, Acc 1/2, Dice 2/3, P 1,   R 1/2
#   class 2: pred 2, label 1, intersect 1 -> IoU 1/2, Acc 1,   Dice 2/3, P 1/2, R 1
PRED = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.int64)
GT = np.array([[0, 1, 1], [IGNORE, 2, 0]], dtype=np.uint8)


def test_hand_worked_counts_drop_ignored_pixels():
    inter, union, pred_area, label_area = intersect_and_union(PRED, GT, 3, IGNORE)
    for area in (inter, union, pred_area, label_area):
        assert area.dtype == torch.float64 and area.shape == (3,)
    assert inter.tolist() == [1, 1, 1]
    assert union.tolist() == [3, 2, 2]
    assert pred_area.tolist() == [2, 1, 2]  # the ignored pixel's prediction (1) is not counted
    assert label_area.tolist() == [2, 2, 1]


def test_hand_worked_iou_acc_aacc_dice_fscore():
    ret = eval_metrics([PRED], [GT], 3, IGNORE, ["mIoU", "mDice", "mFscore"])
    assert list(ret) == ["aAcc", "IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"]
    assert ret["aAcc"] == pytest.approx(3 / 5)
    np.testing.assert_allclose(ret["IoU"], [1 / 3, 1 / 2, 1 / 2])
    np.testing.assert_allclose(ret["Acc"], [1 / 2, 1 / 2, 1])
    np.testing.assert_allclose(ret["Dice"], [1 / 2, 2 / 3, 2 / 3])
    np.testing.assert_allclose(ret["Precision"], [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(ret["Recall"], [1 / 2, 1 / 2, 1])
    np.testing.assert_allclose(ret["Fscore"], [1 / 2, 2 / 3, 2 / 3])


def test_fscore_beta_weights_recall():
    # F_beta = (1 + b^2) P R / (b^2 P + R); with b = 2: class 1 (P=1, R=1/2) -> 5/9.
    ret = mean_fscore([PRED], [GT], 3, IGNORE, beta=2)
    np.testing.assert_allclose(ret["Fscore"], [1 / 2, 5 / 9, 5 / 6])


def test_mean_wrappers_return_their_metric_keys():
    assert list(mean_iou([PRED], [GT], 3, IGNORE)) == ["aAcc", "IoU", "Acc"]
    assert list(mean_dice([PRED], [GT], 3, IGNORE)) == ["aAcc", "Dice", "Acc"]
    assert list(mean_fscore([PRED], [GT], 3, IGNORE)) == ["aAcc", "Fscore", "Precision", "Recall"]


def test_absent_class_is_nan_and_left_out_of_the_mean():
    ret = eval_metrics([PRED], [GT], 4, IGNORE)  # class 3 is neither predicted nor labelled
    assert np.isnan(ret["IoU"][3]) and np.isnan(ret["Acc"][3])
    assert np.nanmean(ret["IoU"]) == pytest.approx(4 / 9)
    replaced = eval_metrics([PRED], [GT], 4, IGNORE, nan_to_num=-1)
    assert replaced["IoU"][3] == -1 and replaced["Acc"][3] == -1


def test_class_predicted_but_never_labelled_gets_zero_iou_and_nan_acc():
    pred = np.array([[0, 1]])
    gt = np.array([[0, 0]])
    ret = eval_metrics([pred], [gt], 2, IGNORE)
    assert ret["IoU"][1] == 0 and np.isnan(ret["Acc"][1])


def test_reduce_zero_label_ignores_zero_and_shifts_classes():
    gt = np.array([[0, 1, 2], [3, IGNORE, 1]], dtype=np.uint8)  # -> [[255,0,1],[2,255,0]]
    pred = np.array([[2, 0, 1], [2, 0, 1]])
    gt_before = gt.copy()
    ret = eval_metrics([pred], [gt], 3, IGNORE, reduce_zero_label=True)
    assert ret["aAcc"] == pytest.approx(3 / 4)
    np.testing.assert_allclose(ret["IoU"], [1 / 2, 1 / 2, 1])
    np.testing.assert_array_equal(gt, gt_before)


def test_label_map_uses_original_values_and_does_not_cascade():
    gt = np.array([[0, 1, 2], [2, 1, 0]])
    pred = np.array([[0, 2, 1], [1, 2, 0]])  # equals gt after swapping 1 and 2
    ret = eval_metrics([pred], [gt], 3, IGNORE, label_map={1: 2, 2: 1})
    np.testing.assert_array_equal(ret["IoU"], [1, 1, 1])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_inputs_are_never_modified(as_tensor):
    gt = np.array([[0, 1, 2], [3, IGNORE, 1]], dtype=np.uint8)
    pred = np.array([[2, 0, 1], [2, 0, 1]], dtype=np.uint8)
    gt_in = torch.from_numpy(gt.copy()) if as_tensor else gt.copy()
    pred_in = torch.from_numpy(pred.copy()) if as_tensor else pred.copy()
    intersect_and_union(pred_in, gt_in, 3, IGNORE, label_map={1: 3, 3: 1}, reduce_zero_label=True)
    np.testing.assert_array_equal(np.asarray(gt_in), gt)
    np.testing.assert_array_equal(np.asarray(pred_in), pred)


def test_dataset_metrics_sum_counts_instead_of_averaging_images():
    # Image A: class 0 IoU 5/6, class 1 IoU 0. Image B: class 1 IoU 1, class 0 absent.
    pred_a, gt_a = np.zeros((2, 3), np.int64), np.array([[0, 0, 0], [0, 0, 1]])
    pred_b, gt_b = np.ones((2, 3), np.int64), np.ones((2, 3), np.int64)
    ret = eval_metrics([pred_a, pred_b], [gt_a, gt_b], 2, IGNORE)
    np.testing.assert_allclose(ret["IoU"], [5 / 6, 6 / 7])
    images = [(pred_a, gt_a), (pred_b, gt_b)]
    per_image_miou = [np.nanmean(eval_metrics([p], [g], 2, IGNORE)["IoU"]) for p, g in images]
    np.testing.assert_allclose(per_image_miou, [5 / 12, 1])  # their mean, 17/24, is not mIoU
    assert np.nanmean(ret["IoU"]) == pytest.approx((5 / 6 + 6 / 7) / 2)


def test_file_inputs_match_array_inputs(tmp_path):
    Image.fromarray(GT).save(tmp_path / "gt.png")
    np.save(tmp_path / "pred.npy", PRED)
    Image.fromarray(PRED.astype(np.uint8)).save(tmp_path / "pred.png")
    from_arrays = intersect_and_union(PRED, GT, 3, IGNORE)
    for pred_path in ("pred.npy", "pred.png"):
        from_files = intersect_and_union(str(tmp_path / pred_path), tmp_path / "gt.png", 3, IGNORE)
        for a, b in zip(from_arrays, from_files):
            assert torch.equal(a, b)


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="mAP"):
        eval_metrics([PRED], [GT], 3, IGNORE, metrics=["mIoU", "mAP"])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        intersect_and_union(PRED, GT.T, 3, IGNORE)
    with pytest.raises(ValueError, match="different lengths"):
        eval_metrics([PRED, PRED], [GT], 3, IGNORE)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        intersect_and_union(PRED, tmp_path / "missing.png", 3, IGNORE)
    with pytest.raises(ValueError, match="non-integer"):
        intersect_and_union(PRED + 0.5, GT, 3, IGNORE)


def _random_maps(seed: int, num_images: int, num_classes: int, shape=(17, 23)):
    rng = np.random.default_rng(seed)
    preds = [rng.integers(0, num_classes, shape) for _ in range(num_images)]
    gts = []
    for _ in range(num_images):
        gt = rng.integers(0, num_classes, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.15] = IGNORE
        gts.append(gt)
    return preds, gts


def test_confusion_matrix_cross_check_on_random_data():
    num_classes = 7
    preds, gts = _random_maps(seed=0, num_images=4, num_classes=num_classes)
    pred_all = np.concatenate([p.ravel() for p in preds])
    gt_all = np.concatenate([g.ravel() for g in gts]).astype(np.int64)
    valid = gt_all != IGNORE
    confusion = np.bincount(
        gt_all[valid] * num_classes + pred_all[valid], minlength=num_classes**2
    ).reshape(num_classes, num_classes)  # rows: label, columns: prediction
    tp = np.diag(confusion).astype(np.float64)
    label_count, pred_count = confusion.sum(1), confusion.sum(0)

    ret = eval_metrics(preds, gts, num_classes, IGNORE, ["mIoU", "mDice", "mFscore"])
    np.testing.assert_allclose(ret["aAcc"], tp.sum() / confusion.sum())
    np.testing.assert_allclose(ret["IoU"], tp / (label_count + pred_count - tp))
    np.testing.assert_allclose(ret["Acc"], tp / label_count)
    np.testing.assert_allclose(ret["Dice"], 2 * tp / (label_count + pred_count))
    np.testing.assert_allclose(ret["Precision"], tp / pred_count)


def test_streaming_accumulator_equals_eval_metrics():
    preds, gts = _random_maps(seed=1, num_images=6, num_classes=5)
    expected = eval_metrics(preds, gts, 5, IGNORE, ["mIoU", "mDice", "mFscore"])
    evaluator = SegEvaluator(5)
    evaluator.update(preds[0], gts[0])
    evaluator.update(torch.from_numpy(preds[1]), torch.from_numpy(gts[1]))
    evaluator.update(np.stack(preds[2:]), np.stack(gts[2:]))  # a batch counts like its images
    assert evaluator.num_samples == 6
    got = evaluator.compute(["mIoU", "mDice", "mFscore"])
    assert list(got) == list(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_pre_eval_results_give_the_same_metrics():
    preds, gts = _random_maps(seed=2, num_images=3, num_classes=4)
    pre_eval = [intersect_and_union(p, g, 4, IGNORE) for p, g in zip(preds, gts)]
    expected = eval_metrics(preds, gts, 4, IGNORE)
    for key, value in pre_eval_to_metrics(pre_eval).items():
        np.testing.assert_array_equal(value, expected[key])
    totals = total_intersect_and_union(iter(preds), iter(gts), 4, IGNORE)
    for total, column in zip(totals, zip(*pre_eval)):
        assert torch.equal(total, sum(column))


def test_summary_tables_look_like_mmseg_prettytable():
    evaluator = SegEvaluator(3)
    evaluator.update(PRED, GT)
    class_table, summary_table, flat = evaluator.summary(["road", "sidewalk", "building"])
    # Expected text as prettytable (mmseg's renderer) prints these values.
    assert class_table == "\n".join([
        "+----------+-------+-------+",
        "|  Class   |  IoU  |  Acc  |",
        "+----------+-------+-------+",
        "|   road   | 33.33 |  50.0 |",
        "| sidewalk |  50.0 |  50.0 |",
        "| building |  50.0 | 100.0 |",
        "+----------+-------+-------+",
    ])
    assert summary_table == "\n".join([
        "+------+-------+-------+",
        "| aAcc |  mIoU |  mAcc |",
        "+------+-------+-------+",
        "| 60.0 | 44.44 | 66.67 |",
        "+------+-------+-------+",
    ])
    # mmseg rounds the percentage to 2 decimals, then divides by 100.
    assert list(flat)[:3] == ["aAcc", "mIoU", "mAcc"]
    assert flat["mIoU"] == 44.44 / 100.0 and flat["aAcc"] == 60.0 / 100.0
    assert flat["IoU.road"] == 33.33 / 100.0 and flat["Acc.building"] == 1.0


def test_summary_prints_nan_and_defaults_to_index_names():
    evaluator = SegEvaluator(4)
    evaluator.update(PRED, GT)
    class_table, _, flat = evaluator.summary()
    assert "|   3   |  nan  |  nan  |" in class_table.splitlines()
    assert np.isnan(flat["IoU.3"]) and flat["mIoU"] == 44.44 / 100.0
    with pytest.raises(ValueError, match="2 class names"):
        format_metric_tables(evaluator.compute(), ["a", "b"])


def test_all_reduce_without_process_group_is_a_no_op():
    evaluator = SegEvaluator(3)
    evaluator.update(PRED, GT)
    before = evaluator.areas.clone()
    evaluator.all_reduce()
    assert torch.equal(evaluator.areas, before)
    evaluator.update(PRED, GT)  # still allowed: nothing was reduced


def test_all_reduce_single_process_group(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        evaluator = SegEvaluator(3)
        evaluator.update(PRED, GT)
        before = evaluator.areas.clone()
        evaluator.all_reduce()
        assert torch.equal(evaluator.areas, before) and evaluator.num_samples == 1
        with pytest.raises(RuntimeError, match="twice"):
            evaluator.all_reduce()
        with pytest.raises(RuntimeError, match="reset"):
            evaluator.update(PRED, GT)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_the_same_counts():
    preds, gts = _random_maps(seed=3, num_images=1, num_classes=6)
    cpu = intersect_and_union(preds[0], gts[0], 6, IGNORE)
    pred, gt = torch.from_numpy(preds[0]).cuda(), torch.from_numpy(gts[0]).cuda()
    gpu = intersect_and_union(pred, gt, 6, IGNORE)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b)


def _two_rank_worker(rank: int, store_path: str, result_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    preds, gts = _random_maps(seed=4, num_images=4, num_classes=5)
    evaluator = SegEvaluator(5)
    for pred, gt in zip(preds[rank::2], gts[rank::2]):  # each rank sees half the images
        evaluator.update(pred, gt)
    evaluator.all_reduce()
    if rank == 0:
        torch.save({"areas": evaluator.areas, "num_samples": evaluator.num_samples}, result_path)
    dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_counts_over_two_ranks(tmp_path):
    result_path = tmp_path / "result.pt"
    torch.multiprocessing.start_processes(
        _two_rank_worker, args=(str(tmp_path / "store"), str(result_path)), nprocs=2,
        start_method="fork",
    )
    result = torch.load(result_path)
    preds, gts = _random_maps(seed=4, num_images=4, num_classes=5)
    expected = torch.stack(total_intersect_and_union(preds, gts, 5, IGNORE))
    assert torch.equal(result["areas"], expected) and result["num_samples"] == 4
