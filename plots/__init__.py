"""Matplotlib figures drawn from NumPy arrays (never tensors, never pyplot)."""

# figure file formats by suffix (here, so that checking a path does not import Matplotlib)
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
