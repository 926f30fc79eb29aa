"""How the commands report a user's mistake: one line naming what is wrong, exit status 1, no traceback.

Set ``DDPSEG_TRACEBACK=1`` to get the traceback as well. Programming errors (TypeError, KeyError, ...)
always show theirs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from ..convert import CheckpointError as ConvertCheckpointError
from ..engine.checkpoint import CheckpointError as EngineCheckpointError

# ValueError covers DataError, ConfigError and runtime.DeviceError (a --device that names no usable device);
# OSError covers unwritable or missing outputs and inputs; the CheckpointErrors cover files that cannot be read as
# checkpoints (missing, empty, not a checkpoint, corrupt, pickled objects) or do not fit the model.
USER_ERRORS = (ValueError, OSError, ConvertCheckpointError, EngineCheckpointError)


def report_user_errors(prog: str, main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return main(args)
    except USER_ERRORS as err:
        if os.environ.get("DDPSEG_TRACEBACK"):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
