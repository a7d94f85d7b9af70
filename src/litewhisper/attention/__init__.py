"""Reduced-dimension self-attention (PyTorch path and Triton kernel) for low-rank q/k/v."""
