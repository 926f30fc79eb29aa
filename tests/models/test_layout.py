"""Every published config builds a model whose state dict is the original's, key for key and in its order,
after conversion."""

from __future__ import annotations

import json

import pytest
import torch

from ddpseg.config import Config
from ddpseg.convert import convert_official_state_dict
from ddpseg.models.build import build_model

from ..conftest import FIXTURES, REPO

LAYOUTS = sorted((FIXTURES / "keys").glob("keys_*.json"))


def _config_path(name: str):
    found = list((REPO / "configs").rglob(f"{name}.py"))
    assert len(found) == 1, f"config {name}.py not found exactly once under configs/ ({found})"
    return found[0]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda p: p.stem[len("keys_"):])
def test_published_config_maps_one_to_one_onto_the_original_state_dict(layout):
    ref = json.loads(layout.read_text())
    cfg = Config.fromfile(_config_path(layout.stem[len("keys_"):]))
    with torch.device("meta"):
        model = build_model(cfg.model)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    converted = convert_official_state_dict(ref["state_dict"])
    missing = sorted(set(ours) - set(converted))
    extra = sorted(set(converted) - set(ours))
    assert not missing and not extra, f"ours only: {missing[:10]}; original only: {extra[:10]}"
    mis_shaped = {k: (ours[k], converted[k]) for k in ours if ours[k] != list(converted[k])}
    assert not mis_shaped, mis_shaped
    # the same order too: parameters() then lists them as the original does, which fixes the summation order of
    # gradient clipping (clip_grad_norm_ over model.parameters()) and of DDP's all-reduce buckets
    assert list(ours) == list(converted)
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ref["num_trainable_params"]
