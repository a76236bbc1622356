"""Triton kernels, installed as `twm_fast.kernels`. Depends on torch and triton only."""
