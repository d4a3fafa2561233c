"""Tools for scanpy users: annotate a query in one call."""

from ._annotate import annotate

__all__ = ["annotate"]
