"""A frame index stamped into the pixels as a row of black/white blocks, readable after H.264.

Tests read it back to prove that the extracted image is the frame its index claims to be.
"""

from __future__ import annotations

import numpy as np

BITS = 16


def block_size(width: int) -> int:
    return max(6, width // 80)


def stamp_region(width: int) -> tuple[slice, slice]:
    """Rows and columns the stamp covers (a one-block border included)."""
    size = block_size(width)
    return slice(0, 3 * size), slice(0, (BITS + 2) * size)


def stamp_index(image: np.ndarray, index: int) -> None:
    """Write ``index`` (16 bits, most significant first) into the top-left corner, in place."""
    if not 0 <= index < 2**BITS:
        raise ValueError(f"frame index {index} does not fit in {BITS} bits")
    size = block_size(image.shape[1])
    rows, cols = stamp_region(image.shape[1])
    image[rows, cols] = 128
    for bit in range(BITS):
        value = 255 if (index >> (BITS - 1 - bit)) & 1 else 0
        x0 = (bit + 1) * size
        image[size: 2 * size, x0: x0 + size] = value


def read_index(image: np.ndarray) -> int:
    """Read back the stamped index from an RGB or BGR image (the stamp is grey, order is moot)."""
    size = block_size(image.shape[1])
    gray = image.mean(axis=2) if image.ndim == 3 else image
    index = 0
    for bit in range(BITS):
        x0 = (bit + 1) * size
        centre = gray[size + size // 4: 2 * size - size // 4, x0 + size // 4: x0 + size - size // 4]
        index = (index << 1) | int(centre.mean() > 128)
    return index
