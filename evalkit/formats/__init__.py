"""Readers and writers for the referring-video dataset layouts and the prediction layout."""

from __future__ import annotations

from pathlib import Path

from .common import Dataset, Expression, FormatError, VideoAnnotation
from .davis import DavisDataset, DavisWriter, load_davis, write_davis, write_davis_mask_dict
from .maskdict import decode_rle, encode_rle
from .mevis import MevisDataset, MevisWriter, load_mevis, write_mevis
from .predictions import (
    MissingPredictionError,
    prediction_path,
    read_prediction,
    write_prediction,
    write_predictions,
)
from .revos import RevosDataset, RevosWriter, load_revos, write_revos
from .ytvos import YtvosDataset, YtvosWriter, load_ytvos, write_ytvos

FORMATS = ("mevis", "ytvos", "davis", "revos")
DEFAULT_SPLITS = {"mevis": "valid_u", "ytvos": "valid", "davis": "valid", "revos": "valid"}
_LOADERS = {"mevis": load_mevis, "ytvos": load_ytvos, "davis": load_davis, "revos": load_revos}


def load_dataset(fmt: str, root: str | Path, split: str | None = None) -> Dataset:
    """Open a dataset of layout `fmt` at `root` (the dataset's own folder, e.g. .../mevis)."""
    if fmt not in _LOADERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    return _LOADERS[fmt](root, split or DEFAULT_SPLITS[fmt])


__all__ = [
    "DEFAULT_SPLITS",
    "FORMATS",
    "Dataset",
    "DavisDataset",
    "DavisWriter",
    "Expression",
    "FormatError",
    "MevisDataset",
    "MevisWriter",
    "MissingPredictionError",
    "RevosDataset",
    "RevosWriter",
    "VideoAnnotation",
    "YtvosDataset",
    "YtvosWriter",
    "decode_rle",
    "encode_rle",
    "load_dataset",
    "load_davis",
    "load_mevis",
    "load_revos",
    "load_ytvos",
    "prediction_path",
    "read_prediction",
    "write_davis",
    "write_davis_mask_dict",
    "write_mevis",
    "write_prediction",
    "write_predictions",
    "write_revos",
    "write_ytvos",
]
