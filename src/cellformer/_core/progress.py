"""Progress bars of long passes over data (prediction, the latent representation)."""

from __future__ import annotations

import contextlib

from cellformer._settings import settings

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True):
    """Show a rich progress bar on stderr for ``total`` steps; yield ``advance()`` (one step).

    Shown only when ``enabled``, with more than one step, and while cellformer shows info
    (``cf.settings.verbosity`` at info or below); otherwise ``advance`` does nothing.
    """
    if not (enabled and total > 1 and settings.shows_info):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
