"""Reading frames from a video file or a folder of images (RGB uint8), with OpenCV."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class VideoSourceError(ValueError):
    """A video source that cannot be opened or read."""


def frame_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoSourceError(f"no image frames ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_image(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VideoSourceError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def iter_frames(source: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(frame name, RGB frame) for a folder of images (sorted by name) or a video file."""
    import cv2

    path = Path(source)
    if path.is_dir():
        for f in frame_files(path):
            yield f.stem, read_image(f)
        return
    if not path.is_file():
        raise VideoSourceError(f"video source not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoSourceError(f"cannot open {path} as a video")
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield f"{i:05d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
        if i == 0:
            raise VideoSourceError(f"{path} holds no decodable frames")
    finally:
        cap.release()


def read_frames(source: str | Path) -> tuple[list[str], list[np.ndarray]]:
    names, frames = [], []
    for name, frame in iter_frames(source):
        names.append(name)
        frames.append(frame)
    return names, frames
