"""glus-segment: masks of the objects that sentences describe, in a video, a folder, a camera or a stream.

    python -m runtime.segment SOURCE --expression TEXT [--expression TEXT ...] --out DIR
        [--engine DIR | --precision int8|fp32|fp16] [--kf auto] [--stream] [--llm-every K|auto] [--batch-llm]
        [--device cpu|cuda:0] [--backend auto|onnxruntime|tensorrt] [--threads N]
        [--name NAME] [--max-frames N] [--timeout SECONDS]

SOURCE: a video file (mp4, avi, mkv, webm, ...), a folder of frames (jpg/png, in name order),
one image, a camera index ("0") or a stream URL (rtsp://, http://, ...).
Files and folders are segmented offline (all frames read, then GLUS's whole-video inference,
`--kf auto` allowed); with --stream, and always for cameras and URLs, frames are pushed one by
one through the causal stream and outputs are written as they come. Ctrl-C stops cleanly.

Outputs, for the video NAME (the file's stem, the folder's name, "camera0", ...):
    OUT/NAME/<exp_id>/<frame>.png   binary masks (0/255), the submission layout; exp_id "0",
                                    "1", ... in the order the expressions were given
    OUT/NAME/expressions.json       {exp_id: expression}
    OUT/NAME_overlay.mp4            the frames with every mask drawn, one colour per expression
    OUT/NAME_contact.png            ~6 evenly spaced overlay frames in a grid

Exit codes:
    0    done
    2    usage or input: bad arguments, an empty, duplicated or too long expression
    3    engine: engine directory missing, corrupt or of another version; backend/device unavailable
    4    source: not found, not a video, nothing decodable, camera or URL unreachable
    5    output: the output directory or a file in it cannot be written
    6    partly done: some frames of the source could not be decoded (corrupt or truncated
         video, unreadable image); they are named in a warning, every other frame is written
    130  interrupted (Ctrl-C): what was written is kept, the overlay video is finalised
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import rules
from .manifest import MANIFEST
from .paths import default_engine_dir

PROG = "glus-segment"
EXIT_OK, EXIT_USAGE, EXIT_ENGINE, EXIT_SOURCE, EXIT_OUTPUT, EXIT_PARTIAL = 0, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130
CONTACT_FRAMES = 6
THUMB_WIDTH = 320


class CliError(Exception):
    """A user error: printed as one line on stderr, exits with `code`, never a traceback."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


# ---- arguments -----------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("source", help="video file, frame folder, image, camera index or stream URL")
    p.add_argument(
        "-e",
        "--expression",
        action="append",
        required=True,
        help="a sentence naming what to segment (repeat for several)",
    )
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--engine", help="engine directory (default: the default engine of --precision)")
    p.add_argument(
        "--precision",
        default="int8",
        choices=("fp32", "fp16", "int8"),
        help="which default engine to use when --engine is not given (default int8)",
    )
    p.add_argument("--kf", choices=("auto",), help="self-refined key frames (offline only)")
    p.add_argument(
        "--llm-every",
        default="1",
        metavar="K|auto",
        help="the LLM answers on every K-th frame, SAM2's memory carries the frames between (default 1: GLUS);"
        " auto: when SAM2's confidence drops, the scene changes or 4 frames went by",
    )
    p.add_argument(
        "--sticky-seg",
        action="store_true",
        help="where the LLM answers 'no [SEG]', keep prompting SAM2 with the last [SEG] while the object is seen",
    )
    p.add_argument(
        "--batch-llm",
        action="store_true",
        help="the expressions that ask the LLM on a frame run as one call (an engine built with --batched-llm)",
    )
    p.add_argument("--stream", action="store_true", help="causal frame-by-frame mode")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime or tensorrt")
    p.add_argument("--threads", type=int, help="CPU threads per graph (default: ONNX Runtime's)")
    p.add_argument("--name", help="the video's name in the outputs (default: from SOURCE)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a camera or URL (default 10)")
    a = p.parse_args(argv)
    if a.threads is not None and a.threads < 1:
        raise CliError(f"--threads must be >= 1, got {a.threads}", EXIT_USAGE)
    if a.max_frames is not None and a.max_frames < 1:
        raise CliError(f"--max-frames must be >= 1, got {a.max_frames}", EXIT_USAGE)
    if a.llm_every != "auto":
        try:
            a.llm_every = int(a.llm_every)
        except ValueError:
            raise CliError(
                f"--llm-every must be a positive integer or 'auto', got {a.llm_every!r}", EXIT_USAGE
            ) from None
        if a.llm_every < 1:
            raise CliError(f"--llm-every must be >= 1, got {a.llm_every}", EXIT_USAGE)
    if not a.timeout > 0:
        raise CliError(f"--timeout must be > 0, got {a.timeout}", EXIT_USAGE)
    if a.name is not None and (not a.name or a.name in (".", "..") or "/" in a.name or "\\" in a.name):
        raise CliError(f"--name must be a plain file name, got {a.name!r}", EXIT_USAGE)
    return a


def check_expressions(expressions: list[str]) -> None:
    """GLUS's own rules (empty, '<image>', '[SEG]'), before any slow work; length needs the engine."""
    for e in expressions:
        try:
            rules.normalize_expression(e)
        except ValueError as err:
            raise CliError(f"bad expression {e!r}: {err}", EXIT_USAGE) from None
    dup = {e for e in expressions if expressions.count(e) > 1}
    if dup:
        raise CliError(f"expression given more than once: {sorted(dup)[0]!r}", EXIT_USAGE)


# ---- engine --------------------------------------------------------------------------------
def engine_dir(args) -> Path:
    d = Path(args.engine) if args.engine else default_engine_dir(args.precision)
    build = f"`python -m export.build --precision {args.precision} --out {d}`"
    if not args.engine and not (d / MANIFEST).is_file():
        raise CliError(f"no {args.precision} engine at {d}: build it with {build} (or pass --engine DIR)", EXIT_ENGINE)
    if not d.exists():
        raise CliError(f"engine directory not found: {d} (build one with {build})", EXIT_ENGINE)
    return d


def load_engine(path: Path, args):
    from runtime import GlusEngine, GlusError

    try:
        return GlusEngine.load(path, backend=args.backend, device=args.device, threads=args.threads)
    except GlusError as e:
        raise CliError(str(e), EXIT_ENGINE) from None


def describe_device(engine) -> str:
    backend = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}.get(engine.backend, engine.backend)
    where = "the CPU" if engine.device == "cpu" else f"the GPU {engine.device}"
    return f"running on {where} ({backend})"


def describe_source(source) -> str:
    kind = {"file": "video file", "folder": "frames", "camera": "camera", "url": "stream"}[source.kind]
    count = f", {source.expected} frames" if source.expected else ""
    fps = f" at {source.fps:g} fps" if source.fps else ""
    return f"{source.name} ({kind}{count}{fps})"


# ---- outputs -------------------------------------------------------------------------------
def check_output_dir(out: Path) -> None:
    """Fail before any slow work if `out` cannot be created or written to."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise output_error(f"cannot write to the output directory {out}", e) from None


def output_error(what: str, e: OSError) -> CliError:
    return CliError(f"{what}: {e.strerror or e}", EXIT_OUTPUT)


class Outputs:
    """Writes masks, the overlay video and the contact sheet of one video as frames come."""

    def __init__(self, out: Path, video: str, expressions: list[str], fps: float | None):
        from runtime.video import VideoWriter
        from runtime.visualize import EvenSampler, colours

        self.root = out
        self.video = video
        self.dir = out / video
        self.expressions = expressions
        self.colours = colours(len(expressions))
        self.labels = [f"{i}: {e}" for i, e in enumerate(expressions)]
        self.overlay_path = out / f"{video}_overlay.mp4"
        self.contact_path = out / f"{video}_contact.png"
        self.frames = 0
        self.skipped: list[str] = []  # frames decoded but not segmented
        self.sampler = EvenSampler(CONTACT_FRAMES)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            table = {str(i): e for i, e in enumerate(expressions)}
            (self.dir / "expressions.json").write_text(
                json.dumps(table, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        except OSError as e:
            raise output_error(f"cannot write to the output directory {out}", e) from None
        self.writer = VideoWriter(self.overlay_path, fps)

    def expect(self, total: int) -> None:
        """The number of frames to come, when known: the contact sheet's frames are then exact."""
        from runtime.visualize import EvenSampler

        if self.frames == 0:
            self.sampler = EvenSampler(CONTACT_FRAMES, total=total)

    def add(self, name: str, frame: np.ndarray, masks: list[np.ndarray]) -> None:
        from evalkit.formats.predictions import write_prediction
        from runtime.visualize import overlay, thumbnail

        try:
            for exp_id, mask in enumerate(masks):
                write_prediction(self.root, self.video, str(exp_id), name, mask)
            drawn = overlay(frame, masks, self.colours, self.labels)
            self.writer.write(drawn)
        except OSError as e:
            raise output_error(f"cannot write frame {name} to {self.dir}", e) from None
        self.sampler.offer(lambda: (name, thumbnail(frame, masks, self.colours, THUMB_WIDTH)))
        self.frames += 1

    def close(self) -> None:
        """Finalise the overlay video and write the contact sheet (also after an interruption)."""
        import cv2

        from runtime.visualize import contact_sheet

        try:
            self.writer.close()
            picked = self.sampler.picked()
            if picked:
                sheet = contact_sheet(
                    [t for _, t in picked],
                    captions=[n for n, _ in picked],
                    labels=self.labels,
                    colours_=self.colours,
                    tile_width=THUMB_WIDTH,
                )
                if not cv2.imwrite(str(self.contact_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
                    raise OSError(f"could not write {self.contact_path}")
        except OSError as e:
            raise output_error(f"cannot finish the outputs in {self.root}", e) from None


def name_ranges(names: list[str], limit: int = 8) -> str:
    """'00004-00007, 00010' for frame names; runs of consecutive numbers are joined."""
    groups: list[list[str]] = []
    for n in names:
        if groups and n.isdigit() and groups[-1][-1].isdigit() and int(n) == int(groups[-1][-1]) + 1:
            groups[-1].append(n)
        else:
            groups.append([n])
    parts = [g[0] if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in groups]
    return ", ".join(parts[:limit]) + (f", ... ({len(parts) - limit} more)" if len(parts) > limit else "")


def report_source_problems(source) -> None:
    if source.failed:
        warn(
            f"{len(source.failed)} frame(s) of {source.name} could not be decoded and have no "
            f"masks: {name_ranges(source.failed)}"
        )
    for note in source.notes:
        warn(note)


# ---- the two modes -------------------------------------------------------------------------
def _bar(total, desc):
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in a log file
    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)


def run_offline(engine, source, outputs: Outputs, args) -> None:
    names, frames = [], []
    with _bar(source.expected, "reading") as bar:
        for name, frame in source:
            names.append(name)
            frames.append(frame)
            bar.update(1)
            if args.max_frames and len(frames) >= args.max_frames:
                break
    report_source_problems(source)
    if not frames:
        raise CliError(f"no frame of {args.source} could be decoded", EXIT_SOURCE)
    total = None if args.kf else len(frames)  # kf=auto: a scoring pass, then passes from each key frame
    with _bar(total, "segmenting") as bar:
        results = engine.segment_video(
            frames,
            outputs.expressions,
            key_frames=args.kf,
            llm_every=args.llm_every,
            sticky_seg=args.sticky_seg,
            batch_llm=args.batch_llm,
            progress=lambda: bar.update(1),
        )
    outputs.expect(len(frames))
    with _bar(len(frames), "writing") as bar:
        for i, (name, frame) in enumerate(zip(names, frames)):
            outputs.add(name, frame, [r.masks[i] for r in results])
            bar.update(1)


def run_stream(engine, source, outputs: Outputs, args) -> None:
    from runtime import InputError

    stream = engine.stream(
        outputs.expressions, llm_every=args.llm_every, sticky_seg=args.sticky_seg, batch_llm=args.batch_llm
    )
    total = args.max_frames or source.expected
    with _bar(total, "segmenting") as bar:
        for name, frame in source:
            try:
                masks = stream.push(frame)
            except InputError as e:  # e.g. a frame of another size: skip it, the stream is intact
                warn(f"frame {name} skipped: {e}")
                outputs.skipped.append(name)
                continue
            outputs.add(name, frame, [masks[e] for e in outputs.expressions])
            bar.update(1)
            if args.max_frames and outputs.frames >= args.max_frames:
                break
    report_source_problems(source)
    if outputs.frames == 0:
        raise CliError(f"no frame of {args.source} could be segmented", EXIT_SOURCE)


# ---- main ----------------------------------------------------------------------------------
def run(args) -> int:
    from runtime import video

    check_expressions(args.expression)
    live = video.is_camera(args.source) or video.is_url(args.source)
    if args.kf and (args.stream or live):
        raise CliError("--kf auto needs the whole video: not with --stream, a camera or a URL", EXIT_USAGE)
    path = engine_dir(args)
    try:
        source = video.open_source(args.source, timeout=args.timeout)
    except video.VideoSourceError as e:
        raise CliError(str(e), EXIT_SOURCE) from None
    with source:
        check_output_dir(Path(args.out))
        print(f"source: {describe_source(source)}", flush=True)
        engine = prepare_engine(path, args)
        outputs = Outputs(Path(args.out), args.name or source.name, args.expression, source.fps)
        mode = "stream" if (args.stream or source.live) else "offline"
        t0 = time.perf_counter()
        try:
            (run_stream if mode == "stream" else run_offline)(engine, source, outputs, args)
        except KeyboardInterrupt:
            outputs.close()
            print(
                f"{PROG}: interrupted: {outputs.frames} frame(s) written to {outputs.dir}, overlay video finalised",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except BaseException:
            try:  # what was written stays usable; the first error is the one reported
                outputs.close()
            except CliError:
                pass
            raise
        outputs.close()
        return summary(source, outputs, mode, time.perf_counter() - t0)


def prepare_engine(path: Path, args):
    from runtime import InputError

    engine = load_engine(path, args)
    print(f"{describe_device(engine)}; engine {path} ({engine.manifest.precision})", flush=True)
    for e in args.expression:
        try:
            engine.check_expression(e)
        except InputError as err:  # too long for the engine's LLM
            raise CliError(str(err), EXIT_USAGE) from None
    if args.batch_llm:
        try:
            engine.stream([], batch_llm=True)  # the engine has the batched graph
        except InputError as err:
            raise CliError(str(err), EXIT_ENGINE) from None
    return engine


def summary(source, outputs: Outputs, mode: str, seconds: float) -> int:
    n, k = outputs.frames, len(outputs.expressions)
    print(
        f"{n} frame{'s' * (n != 1)} x {k} expression{'s' * (k != 1)} ({mode}, "
        f"{n / max(seconds, 1e-9):.1f} frames/s) -> {outputs.dir}"
    )
    print(f"overlay: {outputs.overlay_path}\ncontact sheet: {outputs.contact_path}")
    missing = len(source.failed) + len(outputs.skipped)
    if missing or (source.notes and not source.live):  # a file that ended in a read error
        print(
            f"{PROG}: the source was not read in full: {missing or 'some'} frame(s) have no masks "
            f"(see the warnings above)",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        return run(args)
    except SystemExit as e:  # argparse: it has printed its usage message (2), or --help (0)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:  # before any output existed
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
