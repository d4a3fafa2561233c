"""Global settings in the manner of ``scvi.settings``: how much cellformer says, how many threads."""

from __future__ import annotations

import logging

from cellformer._errors import ParameterError

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class CellformerSettings:
    """cellformer's global settings, as ``cf.settings``.

    Examples
    --------
    >>> import cellformer as cf
    >>> cf.settings.verbosity = "warning"  # only warnings and errors; no progress bars
    >>> cf.settings.num_threads = 1  # one CPU thread for torch (and BLAS in benchmarks)
    """

    def __init__(self) -> None:
        self._num_threads: int | None = None

    @property
    def logger(self) -> logging.Logger:
        """The ``cellformer`` logger, whose level :attr:`verbosity` sets."""
        return logging.getLogger("cellformer")

    @property
    def verbosity(self) -> int:
        """The lowest level of message cellformer shows, as a :mod:`logging` level.

        Set it to a level's name (``"debug"``, ``"info"``, ``"warning"``, ``"error"``,
        ``"critical"``, any case) or a :mod:`logging` level number. At ``"info"`` (the default)
        cellformer logs what it does (gene coverage, early stopping, the epoch kept) and shows
        progress bars; above it, only warnings and errors: no info lines, no progress bars
        (training, benchmarks, the command line's summary tables).
        """
        return self.logger.getEffectiveLevel()

    @verbosity.setter
    def verbosity(self, level: int | str) -> None:
        if isinstance(level, str) and level.lower() in _LEVELS:
            value = _LEVELS[level.lower()]
        elif isinstance(level, int) and not isinstance(level, bool) and 0 < level <= 50:
            value = level
        else:
            raise ParameterError(
                f"verbosity must be one of {list(_LEVELS)} or a logging level (10-50), "
                f"got {level!r}."
            )
        self.logger.setLevel(value)

    @property
    def shows_info(self) -> bool:
        """Whether info lines, progress bars and summary tables are shown (verbosity ≤ info)."""
        return self.verbosity <= logging.INFO

    @property
    def num_threads(self) -> int | None:
        """CPU threads for PyTorch's operations (``None``: PyTorch's own default).

        Setting it calls :func:`torch.set_num_threads`, as ``scvi.settings.num_threads`` does:
        training, prediction and latent passes run on that many threads. On a machine whose few
        cores other processes share, 1 is often fastest (see the installation page).
        """
        return self._num_threads

    @num_threads.setter
    def num_threads(self, n: int | None) -> None:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ParameterError(f"num_threads must be a whole number ≥ 1 or None, got {n!r}.")
        if n is not None:
            import torch

            torch.set_num_threads(n)
        self._num_threads = n

    def __repr__(self) -> str:
        level = logging.getLevelName(self.verbosity).lower()
        return f"CellformerSettings(verbosity={level!r}, num_threads={self.num_threads})"


#: The global settings object (``cf.settings``).
settings = CellformerSettings()
