"""The app's icons, drawn with Pillow: a lower-case "r" in a rounded square.

Teams wants two PNGs in an app package: a full-colour 192x192 icon (here a white "r"
on a rounded square of the accent colour, its corners transparent) and a 32x32 outline
icon, white on a transparent background (the same square as a white outline, the "r"
inside). Shapes are drawn eight times larger and scaled down, so their edges are
smooth; every pixel of the outline icon is white, only its opacity varies.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

__all__ = ["color_icon", "outline_icon"]

_SCALE = 8  # drawn this many times larger, then reduced: smooth edges
_WHITE = (255, 255, 255)


def color_icon(accent: str, size: int = 192) -> bytes:
    """The colour icon as PNG bytes: a white "r" on a rounded square of ``accent``
    (``#RRGGBB``)."""
    big = size * _SCALE
    square = Image.new("L", (big, big), 0)
    ImageDraw.Draw(square).rounded_rectangle((0, 0, big - 1, big - 1), radius=big // 5, fill=255)
    mark = _letter(big, box=big * 9 // 16)
    image = Image.new("RGBA", (size, size), (*_rgb(accent), 0))
    image.putalpha(square.reduce(_SCALE))
    image.paste(Image.new("RGBA", (size, size), (*_WHITE, 255)), mask=mark.reduce(_SCALE))
    return _png(image)


def outline_icon(size: int = 32) -> bytes:
    """The outline icon as PNG bytes: a white rounded square's outline around a white
    "r", on a transparent background."""
    big = size * _SCALE
    mask = Image.new("L", (big, big), 0)
    stroke = 2 * _SCALE
    ImageDraw.Draw(mask).rounded_rectangle(
        (0, 0, big - 1, big - 1), radius=big // 4, outline=255, width=stroke
    )
    mask.paste(255, mask=_letter(big, box=big * 5 // 8))
    image = Image.new("RGBA", (size, size), (*_WHITE, 0))
    image.putalpha(mask.reduce(_SCALE))
    return _png(image)


def _letter(canvas: int, box: int) -> Image.Image:
    """A mask of a geometric lower-case "r" filling a ``box``-sized square at the centre
    of a ``canvas``-sized one: a straight stem and a shoulder curving up to the right."""
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    left = (canvas - box) // 2
    top = (canvas - box) // 2

    def at(x: float, y: float) -> tuple[int, int]:
        return left + round(x * box), top + round(y * box)

    stem = 0.17  # stroke width, as a part of the box
    x0, y_top, y_base = 0.24, 0.14, 0.90
    draw.rectangle((*at(x0, y_top), *at(x0 + stem, y_base)), fill=255)
    radius = 0.40
    draw.arc(
        (*at(x0, y_top), *at(x0 + 2 * radius, y_top + 2 * radius)),
        start=190,
        end=292,
        fill=255,
        width=round(stem * 0.9 * box),
    )
    return mask


def _rgb(color: str) -> tuple[int, int, int]:
    """``#RRGGBB`` as three integers."""
    value = int(color.removeprefix("#"), 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


def _png(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
