from __future__ import annotations

import numpy as np
import pytest

from app.cache.metrics import bucket_of, bucket_value, percentile
from app.cache.vectors import VectorDtype, decode_vector, encode_vector


def test_vector_roundtrip_is_float32_bytes() -> None:
    vector = np.linspace(-1, 1, 384, dtype=np.float64)
    blob = encode_vector(vector, 384, dtype="float32")
    assert isinstance(blob, bytes)
    assert len(blob) == 384 * 4
    assert blob == vector.astype("<f4").tobytes()
    back = decode_vector(blob, 384, dtype="float32")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, vector, atol=1e-7)


def test_float16_roundtrip_is_half_the_bytes_and_keeps_cosines() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, 384))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for vector in vectors:
        blob = encode_vector(vector, 384, dtype="float16")
        assert len(blob) == 384 * 2
        assert blob == vector.astype("<f2").tobytes()  # little-endian IEEE half, as RediSearch
        back = decode_vector(blob, 384, dtype="float16")
        assert back.dtype == np.float32
        # half precision keeps 11 significant bits: each component within 2^-11 relative
        np.testing.assert_allclose(back, vector, rtol=2**-11, atol=2**-24)
    # what the service derives from the stored vectors: a cosine moves by far less than the
    # margins a threshold works with (0.005 is the dispute margin)
    halves = np.array(
        [
            decode_vector(encode_vector(v, 384, dtype="float16"), 384, dtype="float16")
            for v in vectors
        ]
    )
    exact = vectors @ vectors[0]
    assert np.max(np.abs(halves @ halves[0] - exact)) < 1e-3


def test_float16_refuses_what_half_precision_cannot_hold() -> None:
    with pytest.raises(ValueError, match="infinity"):
        encode_vector(np.full(4, 1e6), 4, dtype="float16")  # finite as float32, not as half
    assert len(encode_vector(np.full(4, 1e6), 4, dtype="float32")) == 16


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("shape", [(383,), (385,), (2, 384), ()])
def test_wrong_dimension_is_refused(shape: tuple[int, ...], dtype: VectorDtype) -> None:
    with pytest.raises(ValueError, match="384"):
        encode_vector(np.zeros(shape), 384, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_non_finite_vector_is_refused(dtype: VectorDtype) -> None:
    vector = np.zeros(4)
    vector[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        encode_vector(vector, 4, dtype=dtype)


def test_decode_checks_length_for_its_dtype() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        decode_vector(b"\x00" * 12, 4, dtype="float32")
    with pytest.raises(ValueError, match="8 bytes"):
        decode_vector(b"\x00" * 16, 4, dtype="float16")  # a float32 blob read as float16
    assert decode_vector(b"\x00" * 8, 4, dtype="float16").shape == (4,)


@pytest.mark.parametrize("latency", [0.01, 0.3, 1.0, 2.5, 15.0, 800.0, 30_000.0])
def test_bucket_value_is_within_ten_percent(latency: float) -> None:
    value = bucket_value(bucket_of(latency))
    assert abs(value - latency) / latency <= 0.1 or latency < 0.05


def test_percentile_from_histogram() -> None:
    histogram: dict[int, int] = {}
    for latency in [1.0] * 50 + [10.0] * 45 + [100.0] * 5:
        index = bucket_of(latency)
        histogram[index] = histogram.get(index, 0) + 1
    p50 = percentile(histogram, 50)
    p95 = percentile(histogram, 95)
    p99 = percentile(histogram, 99)
    assert p50 is not None
    assert abs(p50 - 1.0) < 0.1
    assert p95 is not None
    assert abs(p95 - 10.0) < 1.0
    assert p99 is not None
    assert abs(p99 - 100.0) < 10.0
    assert percentile({}, 50) is None
