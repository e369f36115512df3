"""Frame decoding as a property: any bytes either decode to the model's input or are rejected with a code."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.imaging import ImageRejected, decode_frame, validate_upload


def _jpeg(w: int, h: int, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "JPEG")
    return buf.getvalue()


SEED = _jpeg(64, 48, (200, 30, 30))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=2000),
                 st.binary(max_size=2000).map(lambda b: b"\xff\xd8\xff\xe0" + b),
                 st.integers(0, len(SEED)).map(lambda n: SEED[:n]),
                 st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=30).map(
                     lambda flips: bytes(_flip(SEED, flips)))))
def test_any_bytes_decode_or_are_rejected(data: bytes) -> None:
    try:
        frame = decode_frame(data, 32, 1_000_000)
    except ImageRejected as exc:
        assert exc.code in ("not_an_image", "too_large")
        return
    assert frame.tensor.shape == (3, 32, 32) and frame.tensor.dtype == np.float32
    assert float(frame.tensor.min()) >= 0.0 and float(frame.tensor.max()) <= 1.0


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytearray:
    out = bytearray(data)
    for i, v in flips:
        out[i] = v
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 700), st.integers(1, 500), st.sampled_from(["JPEG", "PNG", "WEBP"]))
def test_real_images_of_any_size_decode(w: int, h: int, fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 10)).save(buf, fmt)
    frame = decode_frame(buf.getvalue(), 64, 1_000_000)
    assert (frame.width, frame.height) == (w, h)
    assert abs(float(frame.tensor[1].mean()) - 200 / 255) < 0.05  # green channel survives
    upload = validate_upload(buf.getvalue(), 1_000_000)
    assert (upload.width, upload.height, upload.mime_type) == (w, h, f"image/{fmt.lower()}")


def test_pixel_limit_is_checked_before_decoding() -> None:
    try:
        decode_frame(_jpeg(2000, 1000, (1, 2, 3)), 32, 1_000_000)
    except ImageRejected as exc:
        assert exc.code == "too_large"
    else:
        raise AssertionError("2 megapixels passed a 1 megapixel limit")
