"""ddpseg: DDP diffusion segmentation, faithful to the original, on current PyTorch.

    model = ddpseg.init_model("configs/cityscapes/ddp_convnext_t_4x4_512x1024_160k_cityscapes.py", "ckpt.pth")
    logits = model.sample_logits(normalised_images, steps=3)
    result = ddpseg.inference(model, "street.png")  # .labels, .entropy, .step_disagreement
"""

__version__ = "0.1.0"

from .api import init_model, load_config  # noqa: E402
from .inference import SegResult, inference, show_result  # noqa: E402
from .runtime import tune_cpu_allocator  # noqa: E402

__all__ = ["init_model", "load_config", "inference", "show_result", "SegResult", "tune_cpu_allocator", "__version__"]
