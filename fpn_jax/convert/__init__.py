"""Conversion of PyTorch checkpoints (the original FPN code) into fpn-jax models."""
