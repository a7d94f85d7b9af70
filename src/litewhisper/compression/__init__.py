"""Compression: calibration statistics -> rank plan -> factors -> compressed model."""
