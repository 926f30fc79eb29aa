"""The parity criteria of test_parity.py, with the mini DDP on a CUDA device (Triton gather where Triton is
installed, else the portable path).

TF32 is switched off for these tests: cuDNN convolves in TF32 by default on Ampere and later (in the original's
torch 1.12 too), which rounds inputs to 10 mantissa bits, and the golden set was produced in full float32.
"""

from __future__ import annotations

import copy

import pytest
import torch

from .test_parity import check_full_resolution_logits

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def full_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def cuda_model(mini_model, full_float32):
    return copy.deepcopy(mini_model).cuda()


def test_backbone_and_neck_match_the_original_on_cuda(cuda_model, golden):
    with torch.no_grad():
        feats = cuda_model.backbone(golden["inputs"]["main"].cuda())
        for ours, ref in zip(feats, golden["main"]["backbone_outs"]):
            torch.testing.assert_close(ours.cpu(), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(cuda_model.neck(feats).cpu(), golden["main"]["neck_out"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_full_resolution_logits_match_the_original_on_cuda(cuda_model, golden, steps):
    ref = golden["main"][f"T{steps}"]
    img, noise = golden["inputs"]["main"].cuda(), golden["main"]["noise"].cuda()
    check_full_resolution_logits(cuda_model.sample_logits(img, steps=steps, noise=noise).cpu(), ref, steps)


def test_training_losses_match_the_original_on_cuda(cuda_model, golden):
    """The loss path on the GPU with the original's draws of times and noise (eval mode, as in test_parity)."""
    ref = golden["forward_train_eval_mode"]
    with torch.no_grad():
        losses = cuda_model.forward_train(
            golden["inputs"]["main"].cuda(), ref["gt_semantic_seg"].cuda(), times=ref["times"].cuda(), noise=ref["noise"].cuda()
        )
    assert set(losses) == set(ref["losses"])
    for key, value in ref["losses"].items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5), key
