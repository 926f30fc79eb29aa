"""Stand-ins for numpy.random.Generator that record or script the draws a transform makes."""

from __future__ import annotations

import numpy as np


class RecordingRng:
    """A real generator that logs each call as (method, args)."""

    def __init__(self, seed: int = 0) -> None:
        self._g = np.random.default_rng(seed)
        self.calls: list[tuple] = []

    def _draw(self, method, *args):
        self.calls.append((method, args))
        return getattr(self._g, method)(*args)

    def integers(self, *args):
        return self._draw("integers", *args)

    def uniform(self, *args):
        return self._draw("uniform", *args)

    def random(self, *args):
        return self._draw("random", *args)


class ScriptedRng:
    """Returns scripted values and fails if the transform asks in another order or for more."""

    def __init__(self, script: list[tuple]) -> None:
        self.script = list(script)  # (method, expected args or None, value)
        self.calls: list[tuple] = []

    def _next(self, method, args):
        assert self.script, f"unexpected extra draw {method}{args}"
        want_method, want_args, value = self.script.pop(0)
        assert method == want_method, f"draw #{len(self.calls)}: expected {want_method}, got {method}{args}"
        if want_args is not None:
            assert tuple(args) == tuple(want_args), f"{method}: expected args {want_args}, got {args}"
        self.calls.append((method, args))
        return value

    def integers(self, *args):
        return self._next("integers", args)

    def uniform(self, *args):
        return self._next("uniform", args)

    def random(self, *args):
        return self._next("random", args)
