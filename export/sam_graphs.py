"""ONNX graphs of GLUS's SAM2 part: image encoder, memory attention, mask decoder, memory encoder.

Every graph takes and returns maps [B, C, H, W] (the runtime's layout); the conversion to and
from sam2's (HW, B, C) token layout happens inside. Input-independent tensors (position
encodings) are baked into the graphs as constants; the ones the runtime itself needs come from
`sam_constants`.

    SamImageGraph(model)         image [F,3,S,S] -> high_res0, high_res1, image_feat (F frames)
    MemoryAttentionGraph(model)  image_feat [1,C,h,w], memory [M,64,h,w] -> conditioned
    MaskDecoderGraph(model)      conditioned, high_res0, high_res1, seg_embedding [B,256]
                                 -> low_res_logits [B,1,4h,4w], iou [B,1], object_score [B,1]
    MemoryEncoderGraph(model)    conditioned [B,C,h,w], low_res_logits -> memory [B,64,h,w]
    sam_constants(model)         -> {"image_pos", "memory_pos", "no_mem_embed", "image_pe"}
    sam_specs(model)             -> GraphSpecs "sam_image", "memory_attention", "mask_decoder",
                                    "memory_encoder"

The image graph has a batch axis F so that a server stacks the frames of several cameras into one
call (serving/cameras.py, batch_images). In fp32 a stacked row equals that frame encoded alone by
the same graph, bit for bit (tests/test_sam_image_batch.py); a stream encodes one frame at F=1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernels.rope_attention import patch_memory_attention
from reference.sam import seg_prompted_decode

from .onnx_utils import GraphSpec


def _require_float32(model) -> None:
    """The graphs, their constants and the runtime are float32; a bf16/fp16 model would export
    mixed-precision graphs that no longer match the constants."""
    dtypes = {p.dtype for p in model.sam.parameters()}
    if dtypes != {torch.float32}:
        got = sorted(map(str, dtypes))
        raise TypeError(f"SAM2 export needs a float32 model (got {got}); call .float() first")


def _sizes(model) -> tuple[list[tuple[int, int]], int, int]:
    """Feature sizes of the three levels, d_model C, memory dim."""
    _require_float32(model)
    sam = model.sam
    return model.feat_sizes, int(sam.hidden_dim), int(sam.mem_dim)


def _sine_pos(encoding: nn.Module, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """[1, channels, h, w] from a sam2 PositionEmbeddingSine (depends on the shape only).

    Calling it on a real tensor also fills the module's per-shape cache, so tracing the graphs
    only ever reads that cache: sam2 writes to it on a miss, and a tensor written during
    tracing must never end up in the reference model (torch 2.13 does not keep such writes;
    tests/test_export_sam.py checks it).
    """
    with torch.no_grad():
        return encoding(torch.zeros(1, channels, *size)).float()


def _warm_pos_caches(model) -> None:
    sizes, c, mem_dim = _sizes(model)
    for size in sizes:
        _sine_pos(model.sam.image_encoder.neck.position_encoding, c, size)
    _sine_pos(model.sam.memory_encoder.position_encoding, mem_dim, sizes[-1])


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> (hw, B, C), sam2's layout."""
    return x.flatten(2).permute(2, 0, 1)


def _map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(hw, B, C) -> [B, C, h, w]."""
    return tokens.permute(1, 2, 0).unflatten(-1, size)


# ---------------------------------------------------------------------------------------------
class SamImageGraph(nn.Module):
    """image [F,3,S,S] (ImageNet-normalised) -> (high_res0, high_res1, image_feat) maps, F frames.

    The same levels as GlusModel.encode_image (conv_s0/conv_s1 applied by sam2's
    forward_image), without the flatten to tokens; position encodings are in sam_constants.
    """

    def __init__(self, model):
        super().__init__()
        _warm_pos_caches(model)  # also checks float32
        self.sam = model.sam
        self.levels = int(model.sam.num_feature_levels)
        if self.levels != 3:
            raise ValueError(f"GLUS's SAM2 uses 3 feature levels, this one {self.levels}")

    def forward(self, image: torch.Tensor):
        fpn = self.sam.forward_image(image)["backbone_fpn"][-self.levels :]
        return fpn[0], fpn[1], fpn[2]


# ---------------------------------------------------------------------------------------------
class MemoryAttentionGraph(nn.Module):
    """image_feat [1,C,h,w], memory [M,64,h,w] (M = 1..7 frames) -> conditioned [1,C,h,w].

    As GlusModel.condition: curr_pos is the image position encoding, memory_pos the memory
    encoder's position encoding tiled over frames (frame-major), no temporal encoding, no
    object pointers. sam2's complex-valued RoPE is replaced by kernels.rope_attention's
    real-valued one (same math, exportable); its key rotation handles any M.
    """

    def __init__(self, model):
        super().__init__()
        sizes, _c, _mem_dim = _sizes(model)
        self.size = sizes[-1]
        h, w = self.size
        # RoPE grid is (end_x, end_y) = (w, h), as sam2's feat_sizes.
        self.attention = patch_memory_attention(model.sam.memory_attention, feat_sizes=(w, h))
        consts = sam_constants(model)
        self.register_buffer("curr_pos", _tokens(torch.from_numpy(consts["image_pos"])))
        self.register_buffer("memory_pos", torch.from_numpy(consts["memory_pos"]))  # [1,64,h,w]

    def forward(self, image_feat: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # [M,64,h,w] -> (M*hw, 1, 64), frame-major: the order condition() concatenates in.
        mem = memory.flatten(2).transpose(1, 2).flatten(0, 1).unsqueeze(1)
        pos = self.memory_pos.expand(memory.shape[0], -1, -1, -1)
        mem_pos = pos.flatten(2).transpose(1, 2).flatten(0, 1).unsqueeze(1)
        out = self.attention(
            curr=[_tokens(image_feat)],
            curr_pos=[self.curr_pos],
            memory=mem,
            memory_pos=mem_pos,
            num_obj_ptr_tokens=0,
        )
        return _map(out, self.size)


# ---------------------------------------------------------------------------------------------
class MaskDecoderGraph(nn.Module):
    """(conditioned, high_res0, high_res1 maps, seg_embedding [B,256]) ->
    (low_res_logits [B,1,4h,4w], iou [B,1], object_score [B,1]).

    sam2's own mask decoder with GLUS's prompt: the [SEG] embedding as the only sparse token,
    the no-mask embedding as dense prompt, multimask_output=False. The decoder keeps its
    dynamic-multimask-via-stability setting; that selection is torch.where/argmax/gather in
    sam2, so it stays a per-row, data-dependent choice in the graph.
    """

    def __init__(self, model):
        super().__init__()
        _require_float32(model)
        self.decoder = model.sam.sam_mask_decoder
        self.dim = int(model.sam.hidden_dim)
        pe = model.sam.sam_prompt_encoder
        with torch.no_grad():
            self.register_buffer("image_pe", pe.get_dense_pe().float())  # [1,C,h,w]
            self.register_buffer("no_mask_embed", pe.no_mask_embed.weight.reshape(1, -1, 1, 1).clone())

    def forward(self, conditioned, high_res0, high_res1, seg_embedding):
        seg = seg_embedding.reshape(-1, 1, self.dim)
        low_res, iou, _, object_score = seg_prompted_decode(
            self.decoder, conditioned, self.image_pe, [high_res0, high_res1], seg, self.no_mask_embed
        )
        return low_res, iou, object_score


# ---------------------------------------------------------------------------------------------
class MemoryEncoderGraph(nn.Module):
    """(conditioned [B,C,h,w], low_res_logits [B,1,4h,4w]) -> memory [B,64,h,w].

    As GlusModel.encode_memory: logits upsampled to the model's image size (bilinear,
    align_corners False), sigmoid, scale and bias, then sam2's memory encoder with
    skip_mask_sigmoid=True. Its position encoding output is constant (sam_constants).
    """

    def __init__(self, model):
        super().__init__()
        _warm_pos_caches(model)
        self.encoder = model.sam.memory_encoder
        self.image_size = int(model.sam_image_size)
        self.scale = float(model.sam.sigmoid_scale_for_mem_enc)
        self.bias = float(model.sam.sigmoid_bias_for_mem_enc)

    def forward(self, conditioned, low_res_logits):
        s = self.image_size
        mask = F.interpolate(low_res_logits, (s, s), mode="bilinear", align_corners=False)
        mask = torch.sigmoid(mask) * self.scale + self.bias
        return self.encoder(conditioned, mask, skip_mask_sigmoid=True)["vision_features"]


# ---------------------------------------------------------------------------------------------
def sam_constants(model) -> dict[str, np.ndarray]:
    """Input-independent tensors the runtime needs, float32:

    image_pos [1,C,h,w]     position encoding of the lowest level (image_feat)
    memory_pos [1,64,h,w]   memory encoder's position encoding (per memory frame)
    no_mem_embed [1,C]      conditioned = image_feat + no_mem_embed when there are no memories
    image_pe [1,C,h,w]      the prompt encoder's dense PE (already inside mask_decoder)
    """
    sizes, c, mem_dim = _sizes(model)
    sam = model.sam
    image_pos = _sine_pos(sam.image_encoder.neck.position_encoding, c, sizes[-1])
    memory_pos = _sine_pos(sam.memory_encoder.position_encoding, mem_dim, sizes[-1])
    with torch.no_grad():
        image_pe = sam.sam_prompt_encoder.get_dense_pe().float()
        no_mem = sam.no_mem_embed.detach().float().reshape(1, c)
    out = {"image_pos": image_pos, "memory_pos": memory_pos, "no_mem_embed": no_mem, "image_pe": image_pe}
    return {k: np.ascontiguousarray(v.cpu().numpy(), dtype=np.float32) for k, v in out.items()}


def sam_specs(model, memories: int = 3, batch: int = 2) -> list[GraphSpec]:
    """The four SAM2 graphs with example inputs; dynamic M (memory frames) and B (expressions).

    Example inputs are random but of roughly realistic scale; only their shapes matter.
    """
    if memories < 2 or batch < 2:
        raise ValueError("example sizes of dynamic axes must be >= 2 (a 1 would be baked in)")
    sizes, c, mem_dim = _sizes(model)
    s = int(model.sam_image_size)
    (h0, w0), (h1, w1), (h, w) = sizes
    c0 = model.sam.sam_mask_decoder.conv_s0.out_channels
    c1 = model.sam.sam_mask_decoder.conv_s1.out_channels
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    return [
        GraphSpec(
            name="sam_image",
            module=SamImageGraph(model),
            inputs={"image": rand(batch, 3, s, s)},
            outputs=["high_res0", "high_res1", "image_feat"],
            dynamic={"image": {0: "F"}},
            dim_min={"F": 1},
        ),
        GraphSpec(
            name="memory_attention",
            module=MemoryAttentionGraph(model),
            inputs={"image_feat": rand(1, c, h, w), "memory": rand(memories, mem_dim, h, w)},
            outputs=["conditioned"],
            dynamic={"memory": {0: "M"}},
            dim_min={"M": 1},
        ),
        GraphSpec(
            name="mask_decoder",
            module=MaskDecoderGraph(model),
            inputs={
                "conditioned": rand(batch, c, h, w),
                "high_res0": rand(batch, c0, h0, w0),
                "high_res1": rand(batch, c1, h1, w1),
                "seg_embedding": rand(batch, c),
            },
            outputs=["low_res_logits", "iou", "object_score"],
            dynamic={n: {0: "B"} for n in ("conditioned", "high_res0", "high_res1", "seg_embedding")},
            dim_min={"B": 1},
        ),
        GraphSpec(
            name="memory_encoder",
            module=MemoryEncoderGraph(model),
            inputs={"conditioned": rand(batch, c, h, w), "low_res_logits": rand(batch, 1, 4 * h, 4 * w)},
            outputs=["memory"],
            dynamic={"conditioned": {0: "B"}, "low_res_logits": {0: "B"}},
            dim_min={"B": 1},
        ),
    ]
