"""Allmende: an open network that pools idle GPUs and CPUs into an inference service."""

__version__ = "0.1.0"
