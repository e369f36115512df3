"""Every downloaded image is decoded and checked before it is stored; a rejection names its reason."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# What the warehouse keeps (encoded, as downloaded); other formats are rejected rather than re-encoded.
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

REASONS = ("empty", "too_large", "not_an_image", "unsupported_format", "too_many_pixels", "too_small",
           "truncated", "corrupt")


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ImageLimits:
    min_side: int = 64
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class CheckedImage:
    mime_type: str
    width: int
    height: int


def check_image(data: bytes, limits: ImageLimits) -> CheckedImage:
    """The image's type and size if it decodes completely and fits the limits; Rejected(reason) otherwise."""
    if not data:
        raise Rejected("empty")
    if len(data) > limits.max_bytes:
        raise Rejected("too_large", f"{len(data)} bytes > {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its own pixel limit; we decide with ours before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise Rejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise Rejected("not_an_image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise Rejected("corrupt", str(exc)) from exc
    fmt = img.format or ""
    if fmt not in FORMATS:
        raise Rejected("unsupported_format", fmt)
    width, height = img.size  # from the header: checked before any pixel is decoded
    if width * height > limits.max_pixels:
        raise Rejected("too_many_pixels", f"{width}x{height}")
    if min(width, height) < limits.min_side:
        raise Rejected("too_small", f"{width}x{height}")
    try:
        img.verify()  # structure and checksums (PNG CRCs) without decoding
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data)).load()  # verify() leaves the image unusable: decode a fresh one
    except OSError as exc:
        raise Rejected("truncated" if "truncated" in str(exc).lower() else "corrupt", str(exc)) from exc
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise Rejected("corrupt", str(exc)) from exc
    return CheckedImage(FORMATS[fmt], width, height)
