"""Progress of an extraction: the silent default, and the progress bar the command line shows."""

from __future__ import annotations

import sys


class Progress:
    """Progress callbacks; the library's default is silent."""

    def start(self, total: int) -> None: ...
    def engine(self, sizes) -> None: ...  # the featurebank.sizing.EngineSizes the run chose
    def advance(self, count: int) -> None: ...
    def finish(self) -> None: ...


class TqdmProgress(Progress):
    """A tqdm bar on stderr, and the engine's sizes as a line above it (`featurebank extract`)."""

    def __init__(self, unit: str = "img"):
        self.unit = unit
        self.bar = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def engine(self, sizes) -> None:
        print(f"engine: {sizes.describe()}", file=sys.stderr, flush=True)

    def advance(self, count: int) -> None:
        self.bar.update(count)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
