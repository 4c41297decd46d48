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


class ProportionalBar:
    """Several computations shown as one phase of ``total`` steps, each its
    share in proportion to its ``work`` (a tile-by-tile search, say, whose
    rows do not finish at an even pace)."""

    def __init__(self, progress: Progress, description: str, total: int, work: list[int], unit: str = "images"):
        self.progress, self.total, self.shown = progress, total, 0
        whole = max(sum(work), 1)
        self.starts = [sum(work[:i]) / whole for i in range(len(work))]
        self.shares = [w / whole for w in work]
        progress.start(description, total, unit)

    def part(self, number: int):
        """Computation ``number``'s callback: ``report(fraction of it done)``."""

        def report(fraction: float) -> None:
            now = int(self.total * (self.starts[number] + self.shares[number] * fraction))
            if now > self.shown:
                self.progress.advance(now - self.shown)
                self.shown = now

        return report
