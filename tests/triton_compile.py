"""Compiles ddpseg's Triton kernels ahead of time for CUDA GPUs, with no GPU present (Triton's own ptxas).

Run as a script (the test suite runs it in a fresh process, as the interpreter setting is fixed at import):
    python tests/triton_compile.py 80 90
prints one line per (kernel, architecture): the PTX instruction counts, registers and spill bytes that the
tests check.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.backends  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ddpseg import triton_msda  # noqa: E402

SIZES = dict(HEADS=8, POINTS=4, P2=4, DIM=32, D2=32, BLOCK=triton_msda.BLOCK_QUERIES)  # ddp_convnext_t's decoder


def signature(kernel) -> dict:
    """Argument types as the launcher would see them for ddpseg's calls."""
    types = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = "*fp32"
        else:
            types[name] = "i64" if name == "table_offset" else "i32"
    return types


# exit status where this Triton's ahead-of-time API differs from the one used here (older releases)
UNSUPPORTED = 3


def main(archs) -> None:
    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        print(f"triton {triton.__version__}: ASTSource takes no constexprs; not supported here", file=sys.stderr)
        sys.exit(UNSUPPORTED)
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        print(f"triton {triton.__version__} has no NVIDIA backend here", file=sys.stderr)
        sys.exit(UNSUPPORTED)
    for kernel_name in ("_msda_forward_kernel", "_msda_backward_kernel"):
        kernel = getattr(triton_msda, kernel_name)
        for arch in archs:
            source = ASTSource(fn=kernel, signature=signature(kernel), constexprs=dict(SIZES))
            compiled = triton.compile(source, target=GPUTarget("cuda", int(arch), 32),
                                      options={"enable_fp_fusion": False})
            ptx = compiled.asm["ptx"]
            counts = {op: ptx.count(op) for op in ("div.rn.f32", "div.full.f32", "div.approx.f32", "fma.rn.f32",
                                                   "atom.global", "red.global")}
            print(json.dumps({"kernel": kernel_name, "arch": int(arch), "cubin_bytes": len(compiled.asm["cubin"]),
                              **counts, **resources(compiled.asm["cubin"])}))


def resources(cubin: bytes) -> dict:
    """Registers and stack (spill) bytes per thread, from the cuobjdump bundled with Triton (empty without it)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.isfile(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        out = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return {"registers": int(found.group(1)), "stack_bytes": int(found.group(2))} if found else {}


if __name__ == "__main__":
    main(sys.argv[1:] or ["90"])
