"""Synthetic referring-video datasets with exact ground truth.

Each video shows 3-5 textured shapes moving over a textured background. Objects differ by
colour, shape and motion; every video has a pair of same-shape objects (a distractor) so
that shape alone never names them, and often the pair also shares its colour so only the
motion tells them apart. Expressions are built from a small grammar over the three
attributes ("the red circle moving left", "the square that stops", "the two blue objects")
and each one is checked to denote exactly its target set in that video.

Ground-truth masks are the visible parts (later objects in z-order hide earlier ones),
clipped to the frame. Frames are JPEG (quality 95) named 00000.jpg, ...; the output follows
the MeViS and/or Ref-YouTube-VOS layout, plus <split>/synth_meta.json with every object's
attributes and trajectory and every expression's attributes (for training a model on it).
Everything is drawn from numpy generators seeded by (seed, video index): same seed, same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import cv2
import numpy as np

from .formats.common import Expression, VideoAnnotation, write_jpegs
from .formats.mevis import MevisWriter
from .formats.ytvos import YtvosWriter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 175, 55),
    "blue": (35, 75, 220),
    "yellow": (235, 215, 35),
    "purple": (145, 55, 195),
    "orange": (245, 135, 25),
    "cyan": (35, 205, 215),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURAL_SHAPES = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
MOTIONS = ("left", "right", "up", "down", "stop", "still", "bounce")
TRANSLATIONS = ("left", "right", "up", "down")
# Half extent of each shape in units of its size parameter s (all have area ~ pi s^2).
EXTENT = {"circle": 1.0, "square": 0.886, "triangle": 1.55, "diamond": 1.25, "cross": 1.2}
DIRECTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

# Motion phrases, (singular, plural) verb agreement.
MOTION_PHRASES: dict[str, list[tuple[str, str]]] = {
    "left": [
        ("moving left", "moving left"),
        ("that moves to the left", "that move to the left"),
        ("going left", "going left"),
    ],
    "right": [
        ("moving right", "moving right"),
        ("that moves to the right", "that move to the right"),
        ("going right", "going right"),
    ],
    "up": [("moving up", "moving up"), ("that moves upward", "that move upward"), ("going up", "going up")],
    "down": [
        ("moving down", "moving down"),
        ("that moves downward", "that move downward"),
        ("going down", "going down"),
    ],
    "stop": [
        ("that stops", "that stop"),
        ("that stops moving", "that stop moving"),
        ("that comes to a stop", "that come to a stop"),
    ],
    "still": [
        ("that stays still", "that stay still"),
        ("that does not move", "that do not move"),
        ("standing still", "standing still"),
    ],
    "bounce": [
        ("bouncing around", "bouncing around"),
        ("that bounces off the edges", "that bounce off the edges"),
        ("that keeps bouncing", "that keep bouncing"),
    ],
}
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}

MIN_FRAMES = 4
MIN_SIZE = 32


# --- attributes and the uniqueness check -----------------------------------------------------
def motion_matches(obj: dict, motion: str, loose: bool) -> bool:
    """Does `obj` do `motion`? The loose reading also accepts what a viewer could mistake for it
    (a stopping object moved that way first; a bouncing one moves both ways; stopping ~ still)."""
    m = obj["motion"]
    if m == motion:
        return True
    if not loose:
        return False
    if motion in TRANSLATIONS:
        horizontal = motion in ("left", "right")
        return (m == "stop" and obj["direction"] == motion) or (
            m == "bounce" and obj["direction"] == ("horizontal" if horizontal else "vertical")
        )
    return {motion, m} == {"stop", "still"}


def matches(obj: dict, attrs: dict, loose: bool = False) -> bool:
    if attrs.get("colour") is not None and obj["colour"] != attrs["colour"]:
        return False
    if attrs.get("shape") is not None and obj["shape"] != attrs["shape"]:
        return False
    if attrs.get("motion") is not None and not motion_matches(obj, attrs["motion"], loose):
        return False
    return True


def resolve(objects: Sequence[dict], attrs: dict) -> list[int] | None:
    """obj_ids an attribute set denotes, or None when it is ambiguous: some object outside the
    strict denotation could also be read as matching."""
    strict = [o["obj_id"] for o in objects if matches(o, attrs)]
    loose = [o["obj_id"] for o in objects if matches(o, attrs, loose=True)]
    if not strict or strict != loose:
        return None
    return strict


def expression_need(objects: Sequence[dict], attrs: dict, obj_ids) -> str:
    """What a viewer must read to find an expression's targets among `objects`: "colour" (its
    colour word alone names them), "shape" (colour and shape do) or "motion" (only the motion
    tells them from a look-alike). Evaluation splits scores by it; training can weight by it."""
    target = set(obj_ids)

    def named(*keys):
        return {o["obj_id"] for o in objects if matches(o, {k: attrs.get(k) for k in keys})}

    if named("colour", "shape") != target:
        return "motion"
    return "colour" if attrs.get("colour") is not None and named("colour") == target else "shape"


def phrase(attrs: dict, n_targets: int, phrasing: int, count_word: bool) -> str:
    """Text of an attribute set: [the|the two] [colour] shape|object(s) [motion phrase]."""
    plural = n_targets > 1
    colour, shape, motion = attrs.get("colour"), attrs.get("shape"), attrs.get("motion")
    if shape is None:
        noun = "objects" if plural else "object"
    else:
        noun = PLURAL_SHAPES[shape] if plural else shape
    words = ["the"]
    if plural and count_word and n_targets in COUNT_WORDS:
        words.append(COUNT_WORDS[n_targets])
    if motion == "bounce" and phrasing == 0:
        # "the bouncing red circle": the participle reads better in front
        words.append("bouncing")
        motion = None
    if colour is not None:
        words.append(colour)
    words.append(noun)
    if motion is not None:
        phrases = MOTION_PHRASES[motion]
        words.append(phrases[phrasing % len(phrases)][1 if plural else 0])
    return " ".join(words)


def attribute_sets() -> list[dict]:
    """Every non-empty choice among colour / shape / motion (values filled per object)."""
    out = []
    for use in product((False, True), repeat=3):
        if any(use):
            out.append(dict(zip(("colour", "shape", "motion"), use)))
    return out


# --- scene sampling -----------------------------------------------------------------------------
def _sample_attributes(rng: np.random.Generator, n: int, frames: int) -> list[dict]:
    motions = list(MOTIONS) if frames >= 6 else ["left", "right", "up", "down", "still"]
    colours = list(COLOURS)
    pair_shape = SHAPES[rng.integers(len(SHAPES))]
    pair_same_colour = rng.random() < 0.5
    objs = []
    for k in range(n):
        if k < 2:
            shape = pair_shape
            if k == 1 and pair_same_colour:
                colour = objs[0]["colour"]
            else:
                choices = [c for c in colours if not objs or c != objs[0]["colour"]]
                colour = choices[rng.integers(len(choices))]
        else:
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = colours[rng.integers(len(colours))]
        motion = motions[rng.integers(len(motions))]
        if motion in TRANSLATIONS or motion == "stop":
            direction = motion if motion in TRANSLATIONS else TRANSLATIONS[rng.integers(4)]
        elif motion == "bounce":
            direction = ("horizontal", "vertical")[rng.integers(2)]
        else:
            direction = None
        objs.append({"obj_id": k + 1, "colour": colour, "shape": shape, "motion": motion, "direction": direction})
    return objs


def _trajectory(rng: np.random.Generator, obj: dict, frames: int, h: int, w: int, e: float) -> np.ndarray:
    """(frames, 2) centre positions (x, y) for the object's motion."""
    t = np.arange(frames, dtype=np.float64)
    motion, direction = obj["motion"], obj["direction"]
    pos = np.empty((frames, 2))

    def inside(length):  # a centre keeping the whole shape in frame
        return rng.uniform(e, max(e, length - e))

    if motion == "still":
        pos[:] = (inside(w), inside(h))
        return pos
    if motion in TRANSLATIONS or motion == "stop":
        dx, dy = DIRECTION_VECTORS[direction]
        axis = 0 if dx else 1
        length = (w, h)[axis]
        sign = dx or dy
        other = inside((h, w)[axis])
        if motion == "stop":
            t_stop = round(rng.uniform(0.35, 0.6) * (frames - 1))
            travel = rng.uniform(0.25, 0.45) * length
            along = np.minimum(t, t_stop) / max(t_stop, 1) * travel
            end = inside(length) if length - 2 * e > travel else length / 2
            start = end - sign * travel
            p = start + sign * along
        else:
            travel = rng.uniform(0.35, 0.7) * length
            mode = rng.choice(["inside", "enter", "leave"], p=[0.5, 0.25, 0.25])
            if mode == "enter":  # starts partly or wholly outside, on the side it comes from
                first = rng.uniform(-e, 0.3 * e)
                start = first if sign > 0 else length - first
            elif mode == "leave":  # ends partly or wholly outside, on the side it goes to
                last = rng.uniform(length - 0.3 * e, length + e)
                start = last - travel if sign > 0 else (length - last) + travel
            else:
                travel = min(travel, max(length - 2 * e, 0.0))
                lo = e + (travel if sign < 0 else 0)
                hi = length - e - (travel if sign > 0 else 0)
                start = rng.uniform(lo, max(lo, hi))
            p = start + sign * travel * t / (frames - 1)
        pos[:, axis] = p
        pos[:, 1 - axis] = other
        return pos
    # bounce: the centre reflects between the walls, and travels more than the free span so it
    # turns at least once whatever the start.
    axis = 0 if direction == "horizontal" else 1
    length = (w, h)[axis]
    lo, hi = e, max(e + 1.0, length - e)
    span = hi - lo
    travel = rng.uniform(1.1, 1.8) * span
    sign = 1 if rng.random() < 0.5 else -1
    u0 = rng.uniform(0, span)
    u = (u0 + sign * travel * t / (frames - 1)) % (2 * span)
    pos[:, axis] = lo + np.where(u <= span, u, 2 * span - u)
    pos[:, 1 - axis] = inside((h, w)[1 - axis])
    return pos


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, s: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= s * s
    if shape == "square":
        a = EXTENT["square"] * s
        return (np.abs(dx) <= a) & (np.abs(dy) <= a)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= EXTENT["diamond"] * s
    if shape == "triangle":  # upward equilateral triangle, circumradius R, centroid at 0
        r = EXTENT["triangle"] * s
        return (dy <= r / 2) & (np.abs(dx) * np.sqrt(3) <= dy + r)
    if shape == "cross":
        length, arm = 1.2 * s, 0.4 * s
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= arm) & (ay <= length)) | ((ay <= arm) & (ax <= length))
    raise ValueError(f"unknown shape {shape!r}")


# --- rendering ----------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    grid = rng.random((cells, cells), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted, low-saturation texture: gradient + two octaves of smooth noise + grain."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(angle) * xx / w + np.sin(angle) * yy / h) * 0.5 + 0.5
    grey = 70 + 60 * grad + 40 * _smooth_noise(rng, h, w, 5) + 20 * _smooth_noise(rng, h, w, 17)
    grey += rng.normal(0, 4, size=(h, w)).astype(np.float32)
    tint = 1 + rng.uniform(-0.12, 0.12, size=3).astype(np.float32)
    return grey[..., None] * tint[None, None, :]


def _texture(rng: np.random.Generator) -> dict:
    kind = ("stripes", "checker", "noise")[rng.integers(3)]
    return {
        "kind": kind,
        "period": float(rng.uniform(5, 12)),
        "angle": float(rng.uniform(0, np.pi)),
        "tile": rng.random((32, 32), dtype=np.float32),
    }


def _texture_values(tex: dict, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Pattern in [0, 1] in the object's own coordinates, so it moves with the object."""
    if tex["kind"] == "stripes":
        u = dx * np.cos(tex["angle"]) + dy * np.sin(tex["angle"])
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / tex["period"])
    if tex["kind"] == "checker":
        p = tex["period"]
        return ((np.floor(dx / p) + np.floor(dy / p)) % 2).astype(np.float32)
    iy = np.round(dy).astype(np.int64) % 32
    ix = np.round(dx).astype(np.int64) % 32
    return tex["tile"][iy, ix]


@dataclass
class _Object:
    meta: dict
    size: float
    extent: float
    pos: np.ndarray
    texture: dict
    colour: np.ndarray


def _render(rng, objects: list[_Object], z_order: list[int], frames: int, h: int, w: int):
    """RGB uint8 frames and per-frame label maps (0 = background, else obj_id, visible part)."""
    bg = _background(rng, h, w)
    images = np.empty((frames, h, w, 3), dtype=np.uint8)
    labels = np.zeros((frames, h, w), dtype=np.uint8)
    for t in range(frames):
        img = bg + rng.normal(0, 2.5, size=(h, w, 1)).astype(np.float32)
        lab = labels[t]
        for k in z_order:  # back to front
            o = objects[k]
            cx, cy = o.pos[t]
            x0, x1 = max(int(np.floor(cx - o.extent)) - 1, 0), min(int(np.ceil(cx + o.extent)) + 2, w)
            y0, y1 = max(int(np.floor(cy - o.extent)) - 1, 0), min(int(np.ceil(cy + o.extent)) + 2, h)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dx, dy = xx - cx, yy - cy
            m = _shape_mask(o.meta["shape"], dx, dy, o.size)
            if not m.any():
                continue
            shade = 0.72 + 0.28 * _texture_values(o.texture, dx, dy)
            patch = o.colour[None, None, :] * shade[..., None]
            region = img[y0:y1, x0:x1]
            region[m] = patch[m]
            lab[y0:y1, x0:x1][m] = o.meta["obj_id"]
        images[t] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels


def _full_area(shape: str, s: float, extent: float) -> int:
    r = int(np.ceil(extent)) + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    return int(_shape_mask(shape, xx, yy, s).sum())


# --- expressions --------------------------------------------------------------------------------
def _choose_expressions(rng, objs: list[dict], per_object: int, plural_prob: float = 0.5) -> list[dict] | None:
    """Pick expressions: per object up to `per_object` singular ones (motion-bearing preferred),
    maybe one multi-object one. None when some object has no unambiguous description."""
    chosen = []
    for o in objs:
        options = []
        for use in attribute_sets():
            attrs = {k: (o[k] if use[k] else None) for k in ("colour", "shape", "motion")}
            if resolve(objs, attrs) == [o["obj_id"]]:
                options.append(attrs)
        if not options:
            return None
        weights = np.array([3.0 if a["motion"] is not None else 1.0 for a in options])
        k = min(per_object, len(options))
        picks = rng.choice(len(options), size=k, replace=False, p=weights / weights.sum())
        for i in sorted(picks):
            chosen.append({"attributes": options[i], "obj_ids": [o["obj_id"]]})
    if rng.random() < plural_prob:
        plural = []
        seen = set()
        for o in objs:
            for use in attribute_sets():
                attrs = {k: (o[k] if use[k] else None) for k in ("colour", "shape", "motion")}
                key = tuple(attrs.values())
                if key in seen:
                    continue
                seen.add(key)
                ids = resolve(objs, attrs)
                if ids is not None and len(ids) >= 2:
                    plural.append({"attributes": attrs, "obj_ids": ids})
        if plural:
            chosen.append(plural[rng.integers(len(plural))])
    for c in chosen:
        c["phrasing"] = int(rng.integers(3))
        c["count_word"] = bool(rng.random() < 0.5)
        c["exp"] = phrase(c["attributes"], len(c["obj_ids"]), c["phrasing"], c["count_word"])
    return chosen


# --- one video ----------------------------------------------------------------------------------
@dataclass
class SynthVideo:
    annotation: VideoAnnotation
    expressions: list[Expression]
    meta: dict


def make_video(seed: int, index: int, frames: int, size: tuple[int, int], per_object: int = 2) -> SynthVideo:
    """Render video `index` of the dataset seeded `seed` (independent of how many are made)."""
    h, w = size
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    name = f"synth_{index:05d}"
    frame_names = [f"{i:05d}" for i in range(frames)]
    for _attempt in range(200):
        n = int(rng.integers(3, 6))
        metas = _sample_attributes(rng, n, frames)
        exps = _choose_expressions(rng, metas, per_object)
        if exps is None:
            continue
        objects = []
        for m in metas:
            s = float(rng.uniform(0.07, 0.11) * min(h, w))
            extent = EXTENT[m["shape"]] * s
            pos = _trajectory(rng, m, frames, h, w, extent)
            colour = np.array(COLOURS[m["colour"]], dtype=np.float32)
            objects.append(_Object(m, s, extent, pos, _texture(rng), colour))
        z_order = [int(k) for k in rng.permutation(n)]
        images, labels = _render(rng, objects, z_order, frames, h, w)
        # Every object must be clearly visible in most frames, or its expression is unanswerable.
        counts = np.stack([(labels == o.meta["obj_id"]).sum(axis=(1, 2)) for o in objects])  # (n, T)
        full = np.array([_full_area(o.meta["shape"], o.size, o.extent) for o in objects])[:, None]
        visible = counts >= 0.3 * full
        if not np.all(visible.sum(axis=1) >= max(2, int(np.ceil(0.6 * frames)))):
            continue
        break
    else:
        raise RuntimeError(f"could not lay out video {index} of seed {seed} at {h}x{w} with {frames} frames")

    masks = {o.meta["obj_id"]: [labels[t] == o.meta["obj_id"] for t in range(frames)] for o in objects}
    masks = {k: [m if m.any() else None for m in v] for k, v in masks.items()}
    annotation = VideoAnnotation(name, frame_names, (h, w), masks, images)
    expressions = [
        Expression(name, str(i), c["exp"], tuple(c["obj_ids"]), tuple(frame_names)) for i, c in enumerate(exps)
    ]
    z_rank = {k: r for r, k in enumerate(z_order)}
    meta = {
        "objects": [
            {
                **o.meta,
                "size": round(o.size, 3),
                "z": z_rank[k],
                "texture": o.texture["kind"],
                "trajectory": np.round(o.pos, 3).tolist(),
                "visible_pixels": counts[k].tolist(),
            }
            for k, o in enumerate(objects)
        ],
        "expressions": {
            str(i): {
                "exp": c["exp"],
                "obj_ids": c["obj_ids"],
                "attributes": c["attributes"],
                "phrasing": c["phrasing"],
            }
            for i, c in enumerate(exps)
        },
    }
    return SynthVideo(annotation, expressions, meta)


# --- dataset ------------------------------------------------------------------------------------
@dataclass
class SynthSummary:
    out_dir: Path
    split: str
    formats: tuple[str, ...]
    videos: list[str]
    frames: int
    size: tuple[int, int]
    n_objects: int
    n_expressions: int
    n_multi_object: int
    meta_path: Path
    paths: dict[str, Path] = field(default_factory=dict)


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HxW (e.g. 256x256), got {text!r}") from None
    return h, w


def generate(
    out_dir: str | Path,
    videos: int,
    frames: int,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    split: str = "valid_u",
    formats: Sequence[str] = ("mevis",),
    expressions_per_object: int = 2,
) -> SynthSummary:
    """Write `videos` synthetic videos of `frames` frames at size (H, W) under out_dir.

    formats: any of "mevis" (meta_expressions.json + mask_dict.json, multi-object expressions
    kept) and "ytvos" (meta_expressions/<split> + palette Annotations, single-object
    expressions only). Both share <out_dir>/<split>/JPEGImages.
    """
    out_dir = Path(out_dir)
    h, w = size
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in ("mevis", "ytvos")]
    if unknown or not formats:
        raise ValueError(f"formats must be among mevis, ytvos; got {list(formats)}")
    if videos < 1:
        raise ValueError(f"videos must be at least 1, got {videos}")
    if frames < MIN_FRAMES:
        raise ValueError(f"frames must be at least {MIN_FRAMES}, got {frames}")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
    if expressions_per_object < 1:
        raise ValueError(f"expressions_per_object must be at least 1, got {expressions_per_object}")

    writers = {}
    if "mevis" in formats:
        writers["mevis"] = MevisWriter(out_dir, split)
    if "ytvos" in formats:
        writers["ytvos"] = YtvosWriter(out_dir, split)
    image_root = out_dir / split / "JPEGImages"
    meta_videos = {}
    names = []
    n_objects = n_exps = n_multi = 0
    for i in range(videos):
        v = make_video(seed, i, frames, (h, w), expressions_per_object)
        write_jpegs(image_root / v.annotation.name, v.annotation.frames, v.annotation.images)
        v.annotation.images = None  # written once, shared by both layouts
        for fmt, writer in writers.items():
            exps = v.expressions if fmt == "mevis" else [e for e in v.expressions if len(e.obj_ids) == 1]
            writer.add_video(v.annotation, exps)
        meta_videos[v.annotation.name] = v.meta
        names.append(v.annotation.name)
        n_objects += len(v.meta["objects"])
        n_exps += len(v.expressions)
        n_multi += sum(len(e.obj_ids) > 1 for e in v.expressions)
    for writer in writers.values():
        writer.close()

    meta_path = out_dir / split / "synth_meta.json"
    meta = {
        "generator": "evalkit.synth",
        "version": 1,
        "seed": seed,
        "split": split,
        "size": [h, w],
        "frames": frames,
        "vocabulary": {
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "motions": list(MOTIONS),
            "motion_phrases": {k: [p[0] for p in v] for k, v in MOTION_PHRASES.items()},
        },
        "videos": meta_videos,
    }
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, separators=(",", ":")))
    paths = {"images": image_root, "meta": meta_path}
    if "mevis" in formats:
        paths["mevis_meta"] = out_dir / split / "meta_expressions.json"
        paths["mevis_mask_dict"] = out_dir / split / "mask_dict.json"
    if "ytvos" in formats:
        paths["ytvos_meta"] = out_dir / "meta_expressions" / split / "meta_expressions.json"
        paths["ytvos_annotations"] = out_dir / split / "Annotations"
    return SynthSummary(out_dir, split, formats, names, frames, (h, w), n_objects, n_exps, n_multi, meta_path, paths)
