"""Vectors as Redis stores them: raw little-endian FLOAT32 bytes, never JSON."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_FLOAT32_LE = np.dtype("<f4")


def encode_vector(vector: npt.ArrayLike, dimension: int) -> bytes:
    """Encode a vector as FLOAT32 bytes, refusing a wrong dimension or non-finite values.

    RediSearch silently leaves a vector of the wrong byte length out of the index, so the
    dimension is checked here rather than discovered as missing hits later.
    """
    array = np.asarray(vector, dtype=_FLOAT32_LE)
    if array.ndim != 1 or array.shape[0] != dimension:
        raise ValueError(f"expected a vector of {dimension} floats, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("vector holds NaN or infinity")
    return array.tobytes()


def decode_vector(blob: bytes, dimension: int) -> npt.NDArray[np.float32]:
    """Decode FLOAT32 bytes written by encode_vector."""
    if len(blob) != dimension * _FLOAT32_LE.itemsize:
        raise ValueError(f"expected {dimension * 4} bytes, got {len(blob)}")
    return np.frombuffer(blob, dtype=_FLOAT32_LE).astype(np.float32)
