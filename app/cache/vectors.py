"""Vectors as Redis stores them: raw little-endian FLOAT16 or FLOAT32 bytes, never JSON.

FLOAT16 is the default: it halves both copies of a vector (the entry hash's field and the HNSW
index's own copy), about 1.5 KB per 384-d entry, and changes no served answer: a unit vector
rounded to half precision moves a cosine by about 1e-4 (bench/knn-study.md), far inside the
gap between a threshold and its neighbours.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

VectorDtype = Literal["float16", "float32"]
DEFAULT_VECTOR_DTYPE: VectorDtype = "float16"

_LITTLE_ENDIAN: dict[VectorDtype, np.dtype[np.floating]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
}


def redis_type(dtype: VectorDtype) -> str:
    """The RediSearch vector TYPE for a dtype (FLOAT16, FLOAT32)."""
    return dtype.upper()


def encode_vector(vector: npt.ArrayLike, dimension: int, *, dtype: VectorDtype) -> bytes:
    """Encode a vector as FLOAT16/FLOAT32 bytes, refusing a wrong dimension or non-finite values.

    RediSearch silently leaves a vector of the wrong byte length out of the index, so the
    dimension is checked here rather than discovered as missing hits later.
    """
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.shape[0] != dimension:
        raise ValueError(f"expected a vector of {dimension} floats, got shape {array.shape}")
    with np.errstate(over="ignore"):  # an overflow is refused just below, not warned about
        stored = array.astype(_LITTLE_ENDIAN[dtype])
    # Checked after the cast: a finite float32 beyond half precision's range becomes infinite.
    if not np.all(np.isfinite(stored)):
        raise ValueError(f"vector holds NaN or infinity (as {dtype})")
    return stored.tobytes()


def decode_vector(blob: bytes, dimension: int, *, dtype: VectorDtype) -> npt.NDArray[np.float32]:
    """Decode bytes written by encode_vector with the same dtype, as float32."""
    stored = _LITTLE_ENDIAN[dtype]
    if len(blob) != dimension * stored.itemsize:
        raise ValueError(f"expected {dimension * stored.itemsize} bytes, got {len(blob)}")
    return np.frombuffer(blob, dtype=stored).astype(np.float32)
