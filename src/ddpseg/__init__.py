"""ddpseg: DDP diffusion segmentation, faithful to the original, on current PyTorch."""

__version__ = "0.1.0"
