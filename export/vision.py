"""The "vision" graph: CLIP ViT → drop CLS → average-pool 256→64 tokens → mm_projector.

The wrapper calls GlusModel.encode_clip itself, so the graph is the reference's own code path.
"""

from __future__ import annotations

import torch
from torch import nn

from .onnx_utils import GraphSpec

EXAMPLE_BATCH = 2  # >= 2, or the exporter bakes the batch size in as a constant


class VisionGraph(nn.Module):
    """pixel_values [B, 3, S, S] (CLIP-normalised, S = 224) → image_tokens [B, 64, hidden]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_clip(pixel_values)


def vision_spec(model) -> GraphSpec:
    size = model.clip_image_size
    # A fixed seed: the example only fixes shapes/dtypes; parity is checked on fresh inputs.
    g = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, 3, size, size, generator=g)
    return GraphSpec(
        name="vision",
        module=VisionGraph(model).eval(),
        inputs={"pixel_values": example},
        outputs=["image_tokens"],
        dynamic={"pixel_values": {0: "B"}},
    )
