"""Test helper: the native deformable-attention kernel, required wherever a C++ compiler exists."""

from __future__ import annotations

import pytest

from ddpseg import native


def require_native_kernel():
    """The loaded kernel. Skips where it cannot exist (no compiler, or DDPSEG_NATIVE=0); a compiler
    whose build fails is a test failure, not a skip."""
    if not native.native_enabled():
        pytest.skip("DDPSEG_NATIVE=0")
    if native._compiler() is None:
        pytest.skip("no C++ compiler: the native kernel cannot be built here")
    lib = native.msda_library()
    assert lib is not None, "a C++ compiler exists but the native kernel did not build (see the RuntimeWarning)"
    return lib
