"""Plots."""

from ._reliability import reliability

__all__ = ["reliability"]
