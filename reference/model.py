"""GLUS assembled from well-kept parts: transformers' LLaMA and CLIP, the sam2 package's SAM2.

Each method is one stage of GLUS inference, so export wraps the same code the reference runs:
`encode_clip` (vision tokens), `seg_embedding` (LLM prefill → [SEG] embedding), `encode_image`,
`condition`, `decode`, `encode_memory` (SAM2 with its memory bank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime import rules

from .config import GlusConfig
from .sam import build_sam2_model, seg_prompted_decode

POOL = 4  # AvgPool1d(kernel=4, stride=4) over CLIP's patch tokens: 256 → 64 per frame


@dataclass
class LlmOutput:
    seg_embedding: torch.Tensor  # [out_dim] text_hidden_fcs(final-normed hidden at the last position)
    hidden: torch.Tensor  # [hidden] final-normed last-layer hidden state at the last position
    logits: torch.Tensor  # [vocab] next-token logits at the last position
    next_token: int


@dataclass
class ImageFeatures:
    """SAM2 backbone output of one frame, in sam2's (HW, B, C) token layout."""

    tokens: list[torch.Tensor]  # three levels, conv_s0/conv_s1 already applied to the first two
    pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]


@dataclass
class DecoderOutput:
    low_res_logits: torch.Tensor  # [B, 1, 4h, 4w]
    iou: torch.Tensor  # [B, 1]
    object_score: torch.Tensor  # [B, 1] (computed, not used by GLUS)


class GlusModel(nn.Module):
    def __init__(self, cfg: GlusConfig, clip_config):
        super().__init__()
        from transformers import CLIPVisionModel, LlamaForCausalLM

        self.cfg = cfg
        self.llm = LlamaForCausalLM(cfg.llama_config())
        self.clip = CLIPVisionModel(clip_config)
        self.mm_projector = nn.Linear(cfg.mm_hidden_size, cfg.hidden_size)
        self.text_hidden_fcs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(cfg.hidden_size, cfg.hidden_size),
                    nn.ReLU(inplace=True),
                    nn.Linear(cfg.hidden_size, cfg.out_dim),
                    nn.Dropout(0.0),
                )
            ]
        )
        self.sam = build_sam2_model(cfg.sam2_config_path())
        if clip_config.hidden_size != cfg.mm_hidden_size:
            raise ValueError(f"CLIP hidden size {clip_config.hidden_size} != mm_hidden_size {cfg.mm_hidden_size}")
        if self.sam.hidden_dim != cfg.out_dim:
            raise ValueError(f"SAM2 prompt dim {self.sam.hidden_dim} != out_dim {cfg.out_dim}")
        self.eval()

    # ---- sizes -------------------------------------------------------------------------
    @property
    def sam_image_size(self) -> int:
        return int(self.sam.image_size)

    @property
    def clip_image_size(self) -> int:
        return int(self.clip.config.image_size)

    @property
    def feat_sizes(self) -> list[tuple[int, int]]:
        s = self.sam_image_size
        return [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]

    # ---- vision tokens for the LLM -------------------------------------------------------
    def encode_clip(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] CLIP-normalised → [B, 64, hidden] projected image tokens."""
        out = self.clip(pixel_values, output_hidden_states=True)
        patches = out.hidden_states[self.cfg.mm_vision_select_layer][:, 1:]  # drop CLS
        pooled = F.avg_pool1d(patches.transpose(1, 2), POOL, POOL).transpose(1, 2)
        return self.mm_projector(pooled)

    # ---- LLM ----------------------------------------------------------------------------
    def embed_prompt(self, input_ids: list[int], image_tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings with each IMAGE_TOKEN_INDEX placeholder replaced by 64 image tokens."""
        n_images = sum(1 for t in input_ids if t == rules.IMAGE_TOKEN_INDEX)
        if n_images != image_tokens.shape[0]:
            raise ValueError(f"prompt has {n_images} images but {image_tokens.shape[0]} were given")
        embed = self.llm.get_input_embeddings()
        pieces, text, k = [], [], 0
        for t in input_ids:
            if t == rules.IMAGE_TOKEN_INDEX:
                if text:
                    pieces.append(embed(torch.tensor(text, device=embed.weight.device)))
                    text = []
                pieces.append(image_tokens[k].to(embed.weight.dtype))
                k += 1
            else:
                text.append(t)
        if text:
            pieces.append(embed(torch.tensor(text, device=embed.weight.device)))
        return torch.cat(pieces, 0)[None]

    def seg_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.text_hidden_fcs[0](hidden)

    def seg_embedding(self, input_ids: list[int], image_tokens: torch.Tensor) -> LlmOutput:
        """One prefill of the whole prompt; [SEG] embedding and next token from the last position."""
        embeds = self.embed_prompt(input_ids, image_tokens)
        out = self.llm.model(inputs_embeds=embeds, use_cache=False)
        hidden = out.last_hidden_state[0, -1]  # after the final RMSNorm
        logits = self.llm.lm_head(hidden)
        return LlmOutput(
            seg_embedding=self.seg_head(hidden),
            hidden=hidden,
            logits=logits,
            next_token=int(torch.argmax(logits)),
        )

    # ---- SAM2 ---------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        """[B, 3, S, S] ImageNet-normalised → three feature levels and their position encodings."""
        backbone = self.sam.forward_image(image)
        _, tokens, pos, sizes = self.sam._prepare_backbone_features(backbone)
        return ImageFeatures(tokens=list(tokens), pos=list(pos), sizes=list(sizes))

    def condition(
        self,
        feats: ImageFeatures,
        memories: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """The lowest-resolution level after GLUS's memory conditioning, (HW, B, C).

        No memories: + no_mem_embed. Otherwise memory attention over the memories' features with
        the memory encoder's position encoding only (GLUS adds no temporal encoding and no
        object pointers).
        """
        curr, curr_pos = feats.tokens[-1], feats.pos[-1]
        if not memories:
            return curr + self.sam.no_mem_embed
        memory = torch.cat([m.flatten(2).permute(2, 0, 1) for m, _ in memories], 0)
        memory_pos = torch.cat([p.flatten(2).permute(2, 0, 1) for _, p in memories], 0)
        return self.sam.memory_attention(
            curr=[curr],
            curr_pos=[curr_pos],
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=0,
        )

    def _to_map(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return tokens.permute(1, 2, 0).reshape(tokens.shape[1], tokens.shape[2], *size)

    def decode(self, feats: ImageFeatures, conditioned: torch.Tensor, seg_embedding: torch.Tensor) -> DecoderOutput:
        """SAM2 mask decoder prompted by the [SEG] embedding (one sparse token, no-mask dense)."""
        seg = seg_embedding.reshape(-1, 1, self.sam.hidden_dim)
        image_embed = self._to_map(conditioned, feats.sizes[-1])
        high_res = [self._to_map(t, s) for t, s in zip(feats.tokens[:-1], feats.sizes[:-1])]
        pe = self.sam.sam_prompt_encoder
        low_res, iou, _, object_score = seg_prompted_decode(
            self.sam.sam_mask_decoder, image_embed, pe.get_dense_pe(), high_res, seg, pe.no_mask_embed.weight
        )
        return DecoderOutput(low_res_logits=low_res, iou=iou, object_score=object_score)

    def encode_memory(
        self, feats: ImageFeatures, conditioned: torch.Tensor, low_res_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GLUS's memory of a frame: the *conditioned* feature and the upsampled mask logits."""
        s = self.sam_image_size
        mask = F.interpolate(low_res_logits.float(), (s, s), mode="bilinear", align_corners=False)
        mask = torch.sigmoid(mask) * self.sam.sigmoid_scale_for_mem_enc + self.sam.sigmoid_bias_for_mem_enc
        pix = self._to_map(conditioned, feats.sizes[-1])
        out = self.sam.memory_encoder(pix, mask.to(pix.dtype), skip_mask_sigmoid=True)
        return out["vision_features"], out["vision_pos_enc"][0]
