"""Predictions in the submission layout: <pred>/<video>/<exp_id>/<frame>.png, binary 0/255.

Reading follows the official evaluators: the PNG is read as greyscale and any non-zero
pixel is foreground.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .common import FormatError


class MissingPredictionError(FileNotFoundError):
    """A frame the ground truth has is not in the prediction folder."""


def prediction_path(pred_root: Path, video: str, exp_id: str, frame: str) -> Path:
    return Path(pred_root) / video / str(exp_id) / f"{frame}.png"


def write_prediction(pred_root: Path, video: str, exp_id: str, frame: str, mask: np.ndarray) -> Path:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"prediction {video}/{exp_id}/{frame}: expected a 2-D mask, got shape {mask.shape}")
    path = prediction_path(pred_root, video, exp_id, frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.where(mask.astype(bool), 255, 0).astype(np.uint8)):
        raise OSError(f"could not write {path}")
    return path


def write_predictions(
    pred_root: Path, video: str, exp_id: str, frames: Sequence[str], masks: Sequence[np.ndarray]
) -> None:
    """All frames of one expression."""
    if len(frames) != len(masks):
        raise ValueError(f"{video}/{exp_id}: {len(masks)} masks for {len(frames)} frames")
    for frame, mask in zip(frames, masks):
        write_prediction(pred_root, video, exp_id, frame, mask)


def read_prediction(pred_root: Path, video: str, exp_id: str, frame: str) -> np.ndarray:
    """Bool HxW mask; MissingPredictionError when the PNG is absent, FormatError when unreadable."""
    path = prediction_path(pred_root, video, exp_id, frame)
    if not path.is_file():
        raise MissingPredictionError(f"missing prediction: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FormatError(f"unreadable prediction image: {path}")
    return img > 0
