"""The ``irg_param`` settings the layers and nets are compared in.

A setting is the triple of options every IRG layer takes; the comparisons enumerate all of
them so that no combination of normalizer, squaring and backward goes unchecked.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

NORMALIZE = ("MAX", "MEAN", "NONE")
SQUARED = (True, False)
BACKWARD = ("EXACT", "RELEASED")
LAYERS = ("BatchEuclideanMap", "BatchEuclideanVector")


@dataclass(frozen=True)
class Mode:
    """One ``irg_param`` setting."""

    normalize: str = "MAX"
    squared: bool = True
    backward: str = "EXACT"

    @property
    def label(self) -> str:
        return f"{self.normalize}/{'sq' if self.squared else 'nosq'}/{self.backward}"


ALL_MODES = tuple(Mode(*m) for m in itertools.product(NORMALIZE, SQUARED, BACKWARD))
DEFAULT_MODE = Mode()
