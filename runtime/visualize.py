"""Drawing masks on frames: blended colour + outline per expression, a legend, a contact sheet.

All drawing works on whole arrays (numpy masks, OpenCV morphology and text); frames are RGB uint8.
OpenCV's fonts are ASCII-only: other characters of a label are drawn as '?'.
"""

from __future__ import annotations

import colorsys

import numpy as np

# Distinct, readable colours (RGB) for the first expressions; more are spread around the hue circle.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (145, 30, 180),
    (70, 240, 240),
    (245, 130, 48),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]
GOLDEN = 0.618033988749895
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def colours(n: int) -> list[tuple[int, int, int]]:
    out = list(PALETTE[:n])
    for k in range(n - len(out)):
        r, g, b = colorsys.hsv_to_rgb((k * GOLDEN) % 1.0, 0.85, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _font(h: int, w: int) -> tuple[float, int]:
    """Text scale and stroke for a frame of this size (readable on 64 px and on 4K)."""
    scale = float(np.clip(min(h, w) / 640, 0.3, 1.2))
    return scale, 1 if scale < 0.8 else 2


def _fit(text: str, width: int, scale: float, thick: int) -> str:
    """The text, shortened with '...' to fit `width` pixels."""
    import cv2

    text = _ascii(text)
    if cv2.getTextSize(text, FONT, scale, thick)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", FONT, scale, thick)[0][0] > width:
        text = text[:-1]
    return text + "..."


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The mask's boundary band (inside and outside), `thickness` pixels on each side."""
    import cv2

    m = mask.astype(np.uint8)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    return cv2.morphologyEx(m, cv2.MORPH_GRADIENT, kernel).astype(bool)


def legend(image: np.ndarray, labels, colours_, *, alpha: float = 0.6, font=None) -> np.ndarray:
    """A dark box in the top-left corner: a colour swatch and the text of each label.

    font: (scale, stroke); by default it follows the image's size."""
    import cv2

    h, w = image.shape[:2]
    scale, thick = font or _font(h, w)
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, thick)
    pad = max(2, th // 3)
    row = th + base + pad
    sw = th  # swatch side
    texts = [_fit(t, w - sw - 4 * pad, scale, thick) for t in labels]
    box_w = min(w, max(cv2.getTextSize(t, FONT, scale, thick)[0][0] for t in texts) + sw + 3 * pad)
    box_h = min(h, len(texts) * row + pad)
    region = image[:box_h, :box_w]
    region[:] = (region.astype(np.float32) * (1 - alpha)).astype(np.uint8)  # darken under the text
    for k, (text, colour) in enumerate(zip(texts, colours_)):
        y = pad + k * row
        if y + th > h:
            break
        cv2.rectangle(image, (pad, y), (pad + sw - 1, y + sw - 1), tuple(int(c) for c in colour), -1)
        cv2.putText(image, text, (2 * pad + sw, y + th), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return image


def overlay(
    frame: np.ndarray, masks, colours_, labels=None, *, alpha: float = 0.45, draw_outline: bool = True
) -> np.ndarray:
    """A copy of `frame` with each mask blended in its colour, outlined, and a legend of `labels`.

    The outline is the mask's colour inside a thin white halo, so a mask stays visible on an
    object of its own colour (a red mask on a red ball)."""
    frame = np.asarray(frame)
    h, w = frame.shape[:2]
    out = frame.astype(np.float32)
    thickness = max(1, round(min(h, w) / 160))
    edges = []
    for mask, colour in zip(masks, colours_):
        m = np.asarray(mask, dtype=bool)
        if m.shape != (h, w):
            raise ValueError(f"mask of shape {m.shape} for a frame of {(h, w)}")
        c = np.asarray(colour, np.float32)
        out[m] = out[m] * (1 - alpha) + c * alpha
        if draw_outline:
            edges.append((outline(m, thickness), outline(m, thickness + 1), c))
    for _, halo, _ in edges:  # after every fill, so no fill covers another mask's outline
        out[halo] = 255
    for edge, _, c in edges:
        out[edge] = c
    out = np.rint(out).astype(np.uint8)
    if labels:
        legend(out, labels, colours_)
    return out


def pick_evenly(n: int, k: int) -> list[int]:
    """k (or n, if fewer) indices evenly spread over 0..n-1, first and last included."""
    if n <= 0 or k <= 0:
        return []
    return sorted({round(x) for x in np.linspace(0, n - 1, min(n, k))})


class EvenSampler:
    """Keeps about `k` evenly spaced items of a sequence, holding at most 2k at any time.

    With `total` (the sequence's length) known, exactly the items pick_evenly(total, k) are kept.
    Otherwise every item is kept while at most 2k are held; beyond, every other one is dropped
    and the stride doubles; `picked()` returns k of those, evenly spread.
    """

    def __init__(self, k: int = 6, total: int | None = None):
        self.k = k
        self.wanted = set(pick_evenly(total, k)) if total else None
        self.stride = 1
        self.items: list[tuple[int, object]] = []
        self.seen = 0

    def offer(self, make) -> None:
        """The next item of the sequence; `make()` builds it, and is only called if it is kept."""
        i = self.seen
        self.seen += 1
        if (i not in self.wanted) if self.wanted is not None else (i % self.stride):
            return
        self.items.append((i, make()))
        if len(self.items) > 2 * self.k:
            self.stride *= 2
            self.items = [(j, x) for j, x in self.items if j % self.stride == 0]

    def picked(self) -> list:
        return [self.items[p][1] for p in pick_evenly(len(self.items), self.k)]


def thumbnail(frame: np.ndarray, masks, colours_, width: int = 320) -> np.ndarray:
    """An overlay drawn at `width` pixels wide (crisp outlines in a contact sheet), no legend."""
    import cv2

    h, w = frame.shape[:2]
    th = max(1, round(h * width / w))
    interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    small = cv2.resize(np.asarray(frame), (width, th), interpolation=interp)
    small_masks = [cv2.resize(np.asarray(m, np.uint8), (width, th), interpolation=cv2.INTER_NEAREST) for m in masks]
    return overlay(small, small_masks, colours_)


def _letterbox(image: np.ndarray, h: int, w: int, background) -> np.ndarray:
    import cv2

    ih, iw = image.shape[:2]
    s = min(h / ih, w / iw)
    nh, nw = max(1, round(ih * s)), max(1, round(iw * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (nw, nh), interpolation=interp)
    tile = np.empty((h, w, 3), np.uint8)
    tile[:] = background
    y, x = (h - nh) // 2, (w - nw) // 2
    tile[y : y + nh, x : x + nw] = small
    return tile


def contact_sheet(
    frames,
    captions=None,
    *,
    labels=None,
    colours_=None,
    columns: int = 3,
    tile_width: int = 320,
    gap: int = 4,
    background=(24, 24, 24),
) -> np.ndarray:
    """The frames side by side in a grid (tiles of the first frame's aspect), each captioned,
    under a legend band of `labels` in `colours_` when given."""
    import cv2

    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("a contact sheet needs at least one frame")
    h0, w0 = frames[0].shape[:2]
    tw = tile_width
    th = max(1, round(tw * h0 / w0))
    cols = min(columns, len(frames))
    rows = -(-len(frames) // cols)
    sheet = np.empty((rows * th + (rows + 1) * gap, cols * tw + (cols + 1) * gap, 3), np.uint8)
    sheet[:] = background
    scale, thick = _font(th, tw)
    for k, frame in enumerate(frames):
        r, c = divmod(k, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        tile = _letterbox(frame[..., :3], th, tw, background)
        if captions is not None:
            text = _fit(str(captions[k]), tw - 8, scale, thick)
            (_cw, ch), base = cv2.getTextSize(text, FONT, scale, thick)
            strip = tile[max(0, th - ch - base - 6) :]
            strip[:] = (strip.astype(np.float32) * 0.4).astype(np.uint8)
            cv2.putText(tile, text, (4, th - base - 3), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
        sheet[y : y + th, x : x + tw] = tile
    if labels:
        sheet = np.concatenate([_legend_band(labels, colours_, sheet.shape[1], background), sheet], 0)
    return sheet


def _legend_band(labels, colours_, width: int, background) -> np.ndarray:
    import cv2

    font = _font(480, width)
    (_, th), base = cv2.getTextSize("Ag", FONT, *font)
    pad = max(2, th // 3)
    band = np.empty((len(labels) * (th + base + pad) + pad, width, 3), np.uint8)
    band[:] = background
    return legend(band, labels, colours_, alpha=0.0, font=font)
