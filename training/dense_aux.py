"""Dense attribute supervision of SAM2's features (not GLUS; training stages 0 and 1).

GLUS starts from a SAM2 pretrained on SA-V, whose image features already tell objects apart; our
SAM2 is trained from scratch, prompted by a scaffold token, and learns colour but plateaus on
shape and motion (TRAINING.md). This head asks the features the decoder attends to to say, per
cell, the colour and shape of the object there (the image encoder's lowest-resolution level) and
which way it is moving (the same level after memory attention: only the memory bank can see
motion). The head is a linear map (1x1 conv), so what it reads must be linearly present in the
features the decoder's token-to-image attention reads. Not saved: it only shapes training.
From scratch, per-cell shape appears only after ~1,400 steps of it, hence stage 0
(training.stages.pretrain_encoder), where those steps are cheap (models/glus-tiny/TRAINING.md).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from evalkit import synth

VELOCITIES = ("still", "left", "right", "up", "down")
IGNORE = -100


def velocity_class(trajectory: np.ndarray, t: int, still_px: float = 0.5) -> int:
    """Index in VELOCITIES of the motion between frame t-1 and t (t = 0: between 0 and 1), from a
    (T, 2) array of centres (x, y) in pixels; image y grows downwards."""
    a, b = (0, 1) if t == 0 else (t - 1, t)
    if len(trajectory) < 2:
        return 0
    dx, dy = trajectory[b] - trajectory[a]
    if max(abs(dx), abs(dy)) < still_px:
        return 0
    if abs(dx) >= abs(dy):
        return 1 if dx < 0 else 2
    return 3 if dy < 0 else 4


def cell_owners(video, frames: list[int], grid: int | tuple[int, int]) -> np.ndarray:
    """int64 [Q, rows, cols] (grid: an int for a square grid, or (rows, cols)): the obj_id covering
    half or more of each cell of each frame; 0 = background (objects cover under a fifth of the
    cell); IGNORE where the cell is mixed (no object covers half of it, yet objects cover a fifth or more)."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    ids = sorted(video.objects)
    out = np.full((len(frames), rows, cols), IGNORE, dtype=np.int64)
    for j, f in enumerate(frames):
        cover = np.stack(
            [
                cv2.resize(video.objects[o][f].astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA)
                for o in ids
            ]
        )  # [O, g, g]
        best, top = cover.argmax(0), cover.max(0)
        for k, o in enumerate(ids):
            out[j][(best == k) & (top >= 0.5)] = o
        out[j][cover.sum(0) < 0.2] = 0
    return out


def dense_labels(video, frames: list[int], grid: int | tuple[int, int]) -> np.ndarray:
    """int64 [3, Q, rows, cols] (grid: an int for a square grid, or (rows, cols)): colour, shape
    and velocity class (1-based; 0 = background) of the object covering each cell of each frame;
    IGNORE where a cell is mixed (cell_owners)."""
    owners = cell_owners(video, frames, grid)
    colours, shapes = list(synth.COLOURS), list(synth.SHAPES)
    out = np.where(owners[None] <= 0, owners[None], IGNORE).repeat(3, axis=0)
    for m in video.objects_meta:
        traj = np.asarray(m["trajectory"], dtype=np.float64)
        for j, f in enumerate(frames):
            cell = owners[j] == m["obj_id"]
            out[0, j][cell] = colours.index(m["colour"]) + 1
            out[1, j][cell] = shapes.index(m["shape"]) + 1
            out[2, j][cell] = velocity_class(traj, f) + 1
    return out


class DenseAttributeHead(torch.nn.Module):
    """Linear per-cell classifiers over a (HW, B, C) token map: colour, shape, velocity."""

    def __init__(self, dim: int):
        super().__init__()
        self.colour = torch.nn.Linear(dim, len(synth.COLOURS) + 1)
        self.shape = torch.nn.Linear(dim, len(synth.SHAPES) + 1)
        self.velocity = torch.nn.Linear(dim, len(VELOCITIES) + 1)

    @staticmethod
    def _ce(head, tokens: torch.Tensor, size: tuple[int, int], labels: torch.Tensor):
        """tokens (HW, B, C); labels [B, g, g] (the logits are resized to g x g)."""
        h, w = size
        logits = head(tokens).permute(1, 2, 0).reshape(tokens.shape[1], -1, h, w)
        logits = F.interpolate(logits, labels.shape[-2:], mode="bilinear", align_corners=False)
        valid = labels != IGNORE
        if not valid.any():
            return logits.sum() * 0, float("nan")
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
        obj = valid & (labels > 0)  # accuracy where an object is (background is most cells)
        acc = float((logits.argmax(1) == labels)[obj].float().mean()) if obj.any() else float("nan")
        return loss, acc

    def static_loss(self, tokens: torch.Tensor, size, labels: torch.Tensor):
        """Colour + shape CE on the frames' image features; tokens (HW, Q, C), labels [3, Q, g, g]."""
        lc, ac = self._ce(self.colour, tokens, size, labels[0])
        ls, as_ = self._ce(self.shape, tokens, size, labels[1])
        return lc + ls, {"d_col": ac, "d_shape": as_}

    def velocity_loss(self, cond: torch.Tensor, size, labels: torch.Tensor):
        """Velocity CE on memory-conditioned features (HW, K, C) of one frame; labels [g, g]."""
        return self._ce(self.velocity, cond, size, labels.expand(cond.shape[1], -1, -1))
