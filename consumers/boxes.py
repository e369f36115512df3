"""Vision bounding polygons -> boxes normalised to 0..1, as the labels table stores them."""

from __future__ import annotations

from collections.abc import Sequence

Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in 0..1


def normalise_box(vertices: Sequence[tuple[float | None, float | None]], width: int, height: int,
                  normalised: bool = False, min_pixels: float = 1.0) -> Box | None:
    """The axis-aligned box around a polygon, divided by the image size and clipped to the image.

    `vertices` are pixels (boundingPoly.vertices) unless `normalised` (boundingPoly.normalizedVertices). A missing
    coordinate is 0: proto3 JSON leaves zero fields out. Returns None for a box that is degenerate (under
    `min_pixels` wide or high once clipped, e.g. a point, a line, or a polygon wholly outside the image), since
    training cannot use it.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not vertices:
        return None
    xs = [float(x or 0) for x, _ in vertices]
    ys = [float(y or 0) for _, y in vertices]
    sx, sy = (1.0, 1.0) if normalised else (float(width), float(height))
    x_min, x_max = _clip(min(xs) / sx), _clip(max(xs) / sx)
    y_min, y_max = _clip(min(ys) / sy), _clip(max(ys) / sy)
    if (x_max - x_min) * width < min_pixels or (y_max - y_min) * height < min_pixels:
        return None
    return (x_min, y_min, x_max, y_max)


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))
