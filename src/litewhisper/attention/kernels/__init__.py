"""Triton kernels (optional: everything falls back to PyTorch when triton or a GPU is missing).

`reduced_attention` is imported lazily by `litewhisper.attention`, so importing litewhisper never needs triton.
"""
