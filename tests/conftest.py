"""Shared fixtures: paths to the parity data and a ready mini DDP model with the original's weights."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, torch.get_num_threads()))

# Without CUDA, Triton's interpreter runs the GPU kernels (ddpseg.triton_msda) on CPU tensors, so their
# tests check them here too; it must be set before ddpseg imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def golden():
    return torch.load(FIXTURES / "mini_convnext_golden.pt", weights_only=True)


@pytest.fixture(scope="session")
def mini_model_cfg():
    return runpy.run_path(str(FIXTURES / "mini_convnext_config.py"))["model"]


@pytest.fixture(scope="session")
def mini_model(mini_model_cfg):
    """The mini ConvNeXt DDP of the parity set, original weights loaded, eval mode."""
    from ddpseg.convert import load_model_weights
    from ddpseg.models.build import build_model

    model = build_model(mini_model_cfg).eval()
    load_model_weights(model, FIXTURES / "mini_convnext.pth")
    return model
