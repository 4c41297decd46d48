"""How long-running library calls report progress, without knowing who listens.

The library calls these methods; the CLI passes an object that draws a
progress bar on stderr. The default does nothing, so library use stays quiet.
"""

from __future__ import annotations


class Progress:
    """Receiver of progress events; subclass and override what you need."""

    def start(self, description: str, total: int, unit: str = "images") -> None:
        """A phase of ``total`` steps, counted in ``unit``, begins."""

    def status(self, message: str) -> None:
        """A step whose length cannot be counted begins (loading a model, say);
        it lasts until the next :meth:`start` or :meth:`stop`."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps are done."""

    def stop(self) -> None:
        """The phase is over (also called when it is interrupted)."""


SILENT = Progress()
