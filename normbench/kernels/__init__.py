"""Fused kernels (Triton) behind the `triton` implementation."""
