"""Attention U-Net segmentation for napari, with attention maps and fine-tuning."""

__version__ = "0.1.0"
