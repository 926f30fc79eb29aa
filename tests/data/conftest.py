"""Small synthetic datasets in the exact Cityscapes and ADE20K layouts, made once per test session."""

from __future__ import annotations

import pytest

from ddpseg.data.synthetic import make_synthetic_ade20k, make_synthetic_cityscapes


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory):
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("cityscapes"), num_train=4, num_val=2, size=(128, 256))


@pytest.fixture(scope="session")
def ade_root(tmp_path_factory):
    return make_synthetic_ade20k(tmp_path_factory.mktemp("ade"), num_train=3, num_val=2, size=(96, 128))
