"""Build SAM2 from one of its YAML configs with the `sam2` package's own classes.

`sam2.build_sam.build_sam2` only finds configs inside the package (hydra's search path), and a
tiny checkpoint carries its own YAML, so the file is read with OmegaConf and instantiated with
hydra. The post-processing overrides are the three `build_sam2` applies by default; GLUS builds
SAM2 through `build_sam2`, so it runs with them (dynamic multimask via stability).
"""

from __future__ import annotations

from pathlib import Path

# What build_sam2(apply_postprocessing=True) adds for image models.
POSTPROCESSING_OVERRIDES = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


def load_sam2_cfg(yaml_path: str | Path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(yaml_path))
    if "model" not in cfg:
        raise ValueError(f"{yaml_path} is not a SAM2 config: it has no 'model' section")
    extra = cfg.model.get("sam_mask_decoder_extra_args") or {}
    cfg.model.sam_mask_decoder_extra_args = {**dict(extra), **POSTPROCESSING_OVERRIDES}
    OmegaConf.resolve(cfg)
    return cfg


def build_sam2_model(yaml_path: str | Path):
    """SAM2Base in eval mode with randomly initialised weights (the caller loads the real ones)."""
    from hydra.utils import instantiate

    cfg = load_sam2_cfg(yaml_path)
    model = instantiate(cfg.model, _recursive_=True)
    return model.eval()


def seg_prompted_decode(
    decoder, image_embed, image_pe, high_res: list, sparse, no_mask_embed, *, all_masks: bool = False
):
    """SAM2's mask decoder with GLUS's prompt: the [SEG] embedding as the sparse prompt ([B, N,
    C]: one token each for GLUS), the prompt encoder's no-mask embedding as the dense prompt,
    one image per row (repeat_image=False). The one place the decoder is called: the reference
    (GlusModel.decode), its ONNX graph (export/sam_graphs.py) and training (all four masks).

    Returns sam2's (low_res_masks, iou, sam_tokens, object_score) with multimask_output=False
    (the decoder's dynamic multimask-via-stability choice included); all_masks=True returns
    predict_masks' (masks, iou, mask_tokens, object_score), all four outputs before selection.
    """
    b = sparse.shape[0]
    dense = no_mask_embed.reshape(1, -1, 1, 1).expand(b, -1, *image_embed.shape[-2:])
    kwargs = dict(
        image_embeddings=image_embed,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        repeat_image=False,
        high_res_features=high_res,
    )
    if all_masks:
        return decoder.predict_masks(**kwargs)
    return decoder(**kwargs, multimask_output=False)
