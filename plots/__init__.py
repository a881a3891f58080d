"""Matplotlib figures drawn from NumPy arrays (never tensors, never pyplot)."""
