"""Label agreement of reduced-precision inference with float32 on the parity fixture, next to how much labels
move under float32 perturbations of the same relative size.

    python benchmarks/precision_agreement.py [--device cpu|cuda] [--steps 3]

The parity fixture is the mini DDP with the original's (random) weights, its 128×256 input and initial
noise (tests/fixtures). Rows:

* on CUDA, float32 with TF32 allowed (cuDNN convolves in TF32 by default on Ampere and later; the float32
  reference itself is computed with TF32 off);
* autocast bf16 / fp16: ``torch.autocast`` over the whole prediction, argmax compared with float32;
* float32, input × (1 + ε·N(0, 1)): how many labels flip when only the input moves by ε relative — a floor
  for any mode whose rounding is of that size (bf16 rounds to 2⁻⁹ ≈ 0.2 % relative, fp16 to 2⁻¹² ≈ 0.02 %);
* the share of pixels whose top-2 logit margin is below a given fraction of that pixel's largest |logit|.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch

from ddpseg.runtime import device_argument

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", type=device_argument, default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ddpseg.convert import load_model_weights
    from ddpseg.models.build import build_model

    device = args.device
    golden = torch.load(FIXTURES / "mini_convnext_golden.pt", weights_only=True)
    model = build_model(runpy.run_path(str(FIXTURES / "mini_convnext_config.py"))["model"]).eval()
    load_model_weights(model, FIXTURES / "mini_convnext.pth")
    model.to(device)
    img, noise = golden["inputs"]["main"].to(device), golden["main"]["noise"].to(device)

    def predict(image, dtype=None, tf32=False):
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return model.sample_logits(image, steps=args.steps, noise=noise).float()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    ref = predict(img)  # full float32: TF32 off on CUDA
    labels = ref.argmax(1)
    rows = []
    if device.type == "cuda":  # cuDNN's default convolves in TF32 (10-bit mantissa inputs) on Ampere and later
        rows.append(("float32 with TF32 convolutions and matmuls", (predict(img, tf32=True).argmax(1) == labels).float().mean().item()))
    for name, dtype in (("autocast bf16", torch.bfloat16), ("autocast fp16", torch.float16)):
        try:
            rows.append((name, (predict(img, dtype).argmax(1) == labels).float().mean().item()))
        except RuntimeError as error:  # e.g. fp16 kernels missing on an old CPU build
            rows.append((f"{name} (failed: {str(error).splitlines()[0][:60]})", float("nan")))
    gen = torch.Generator().manual_seed(0)
    for eps in (2.0**-12, 1e-3, 2.0**-9):
        noisy = img * (1 + eps * torch.randn(img.shape, generator=gen).to(device))
        rows.append((f"float32, input × (1 + {eps:.2g}·N(0,1))", (predict(noisy).argmax(1) == labels).float().mean().item()))

    print(f"command: python benchmarks/precision_agreement.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"torch {torch.__version__}, device {device}, parity fixture {tuple(img.shape)}, {args.steps} DDIM steps\n")
    print("| prediction | label agreement with float32 |")
    print("|---|---:|")
    for name, agreement in rows:
        print(f"| {name} | {agreement * 100:.2f} % |")
    top2 = ref.topk(2, dim=1).values
    relative = (top2[:, 0] - top2[:, 1]) / ref.abs().amax(1).clamp_min(1e-12)
    print("\n| top-2 margin below (× largest |logit|) | share of pixels |")
    print("|---|---:|")
    for t in (1e-3, 2.0**-9, 1e-2):
        print(f"| {t:.3g} | {(relative < t).float().mean().item() * 100:.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
