"""Frame sources and the overlay video writer (RGB uint8 frames), torch-free.

`open_source(spec)` opens, eagerly so that a bad source fails before any work is done:
- a video file (mp4, avi, mkv, webm, mov, ...): decoded with PyAV. A corrupt or truncated file
  yields what can be decoded; the frames that could not be are listed in `source.failed`;
- a folder of images (jpg, png, bmp), in natural name order ("2.jpg" before "10.jpg"), or one image;
- a camera index ("0"): OpenCV VideoCapture;
- a stream URL (rtsp://, http://, ...): PyAV, with open and read time-outs.
Every problem with the source itself raises VideoSourceError (one line, for the user).

Frame names: a folder's frames keep their file stems; a video file's frames are "00000",
"00001", ... by their position in the video (from the timestamps, so a frame lost to corruption
leaves a gap instead of shifting every later name); live frames are numbered as they arrive.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import GlusError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts")
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
DEFAULT_TIMEOUT_S = 10.0
# FFmpeg decoders that render text files (ANSI art, binary text) as frames: not videos here
TEXT_CODECS = ("ansi", "bintext", "xbin", "idf")


class VideoSourceError(GlusError, ValueError):
    """A video source that cannot be opened or read."""


def frame_name(index: int) -> str:
    return f"{index:05d}"


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def frame_files(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_natural_key
    )
    if not files:
        raise VideoSourceError(f"no image frames ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    stems = [f.stem for f in files]
    dup = next((f for f in files if stems.count(f.stem) > 1), None)
    if dup is not None:  # both would write the same <frame>.png mask
        raise VideoSourceError(f"two frames named {dup.stem!r} in {folder} (e.g. {dup.name})")
    return files


def read_image(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VideoSourceError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FrameSource:
    """Iterate `(frame name, RGB frame)`; `failed` lists the names of frames that were lost."""

    kind = "source"
    live = False  # a camera or URL: no end known in advance, processed as it arrives

    def __init__(self, name: str, fps: float | None = None, expected: int | None = None):
        self.name = name  # the video's name in the outputs
        self.fps = fps
        self.expected = expected  # frame count when the container says so
        self.failed: list[str] = []
        self.notes: list[str] = []  # why reading stopped early, when it did

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ImageFolderSource(FrameSource):
    kind = "folder"

    def __init__(self, files: list[Path], name: str):
        super().__init__(name, fps=None, expected=len(files))
        self.files = files

    def __iter__(self):
        for f in self.files:
            try:
                yield f.stem, read_image(f)
            except VideoSourceError:
                self.failed.append(f.stem)


class AvSource(FrameSource):
    """A video file or a network stream, decoded by PyAV (FFmpeg)."""

    def __init__(self, container, name: str, kind: str):
        self.container = container
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate
        frames = int(self.stream.frames or 0)
        super().__init__(name, fps=float(rate) if rate else None, expected=frames or None)
        self.kind = kind
        self.live = kind == "url"

    def _index(self, frame, last: int) -> int:
        """A file frame's position from its timestamp (gaps show lost frames); else the next one."""
        s = self.stream
        rate = s.average_rate or s.guessed_rate
        if self.live or frame.pts is None or not rate or s.time_base is None:
            return last + 1
        pos = round(float((frame.pts - (s.start_time or 0)) * s.time_base * rate))
        return max(pos, last + 1)

    def _decoded(self) -> Iterator:
        import av

        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:  # a truncated file or a dropped connection
                self.notes.append(f"reading stopped early: {e}")
                break
            try:
                yield from packet.decode()
            except av.error.FFmpegError:
                continue  # this packet's frame is lost; the timestamps of later frames show it
        try:  # drain what the decoder still holds after an early stop
            yield from self.stream.codec_context.decode(None)
        except av.error.FFmpegError:
            pass

    def __iter__(self):
        last = -1
        for frame in self._decoded():
            index = self._index(frame, last)
            self.failed.extend(frame_name(i) for i in range(last + 1, index))
            last = index
            yield frame_name(index), frame.to_ndarray(format="rgb24")
        if self.expected and not self.live:
            self.failed.extend(frame_name(i) for i in range(last + 1, self.expected))

    def close(self) -> None:
        self.container.close()


class CameraSource(FrameSource):
    kind = "camera"
    live = True

    def __init__(self, cap, index: int, first: np.ndarray, fps: float | None):
        super().__init__(f"camera{index}", fps=fps)
        self.cap = cap
        self.first = first

    def __iter__(self):
        import cv2

        i = 0
        frame = self.first
        while frame is not None:
            yield frame_name(i), frame
            i += 1
            ok, bgr = self.cap.read()
            frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok else None
        self.notes.append(f"the camera stopped delivering frames after {i}")

    def close(self) -> None:
        self.cap.release()


# ---- opening -------------------------------------------------------------------------------
def is_url(spec: str) -> bool:
    scheme, sep, _ = str(spec).partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


def is_camera(spec: str) -> bool:
    return str(spec).isdigit()


def _url_name(url: str) -> str:
    """A file-system-safe video name for a stream: its last path part or its host."""
    rest = url.partition("://")[2].split("?")[0].rstrip("/")
    part = rest.rsplit("/", 1)[-1] if "/" in rest else rest.split("@")[-1]
    stem = Path(part).stem if "." in part and "/" in rest else part
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "stream"


def _open_file(path: Path) -> AvSource:
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise VideoSourceError(f"cannot read {path}: corrupt or truncated video ({e.strerror})") from None
        raise VideoSourceError(f"{path} is not a video ({e.strerror})") from None
    if not container.streams.video:
        container.close()
        raise VideoSourceError(f"{path} is not a video (no video stream)")
    if container.streams.video[0].codec_context.name in TEXT_CODECS:
        container.close()
        raise VideoSourceError(f"{path} is not a video (it reads as text)")
    return AvSource(container, path.stem, "file")


def _open_url(url: str, timeout: float) -> AvSource:
    import av

    options = {"rtsp_transport": "tcp"} if url.lower().startswith("rtsp") else {}
    t0 = time.monotonic()
    try:
        container = av.open(url, timeout=(timeout, timeout), options=options)
    except av.error.FFmpegError as e:
        # a time-out shows as ExitError (the interrupt callback) or, for RTSP, as bad data
        if isinstance(e, av.error.ExitError) or time.monotonic() - t0 >= timeout:
            raise VideoSourceError(f"cannot open {url}: no answer within {timeout:g} s") from None
        raise VideoSourceError(f"cannot open {url}: {e.strerror}") from None
    if not container.streams.video:
        container.close()
        raise VideoSourceError(f"{url} has no video stream")
    return AvSource(container, _url_name(url), "url")


def _open_camera(index: int, timeout: float) -> CameraSource:
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our message is enough
    try:
        ms = int(timeout * 1000)
        cap = cv2.VideoCapture(
            index, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        )
        if not cap.isOpened():
            raise VideoSourceError(f"camera {index} is not available (no such device, or it is busy)")
        ok, bgr = cap.read()
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not ok:
        cap.release()
        raise VideoSourceError(f"camera {index} opened but delivered no frame")
    fps = cap.get(cv2.CAP_PROP_FPS)
    return CameraSource(cap, index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), fps if fps > 0 else None)


def open_source(spec: str | Path, timeout: float = DEFAULT_TIMEOUT_S) -> FrameSource:
    """A frame source for a video file, a folder of frames, one image, a camera index or a URL."""
    spec_s = str(spec)
    if is_url(spec_s):
        return _open_url(spec_s, timeout)
    if is_camera(spec_s):
        return _open_camera(int(spec_s), timeout)
    path = Path(spec_s)
    if path.is_dir():
        return ImageFolderSource(frame_files(path), path.resolve().name)
    if not path.exists():
        raise VideoSourceError(f"video source not found: {path}")
    if not path.is_file():
        raise VideoSourceError(f"{path} is neither a file nor a folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        read_image(path)  # fail now, not mid-run
        return ImageFolderSource([path], path.stem)
    return _open_file(path)


def iter_frames(source: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(frame name, RGB frame) of a folder of images (natural name order) or a video file.

    Frames that cannot be decoded are skipped with a warning (their names are left out)."""
    import warnings

    with open_source(source) as src:
        n = 0
        for item in src:
            n += 1
            yield item
        if n == 0:
            raise VideoSourceError(f"{source} holds no decodable frames")
        if src.failed or src.notes:
            warnings.warn(
                f"{source}: {len(src.failed)} frame(s) could not be decoded "
                f"{src.failed[:10]} {' '.join(src.notes)}".rstrip(),
                stacklevel=2,
            )


def read_frames(source: str | Path) -> tuple[list[str], list[np.ndarray]]:
    names, frames = [], []
    for name, frame in iter_frames(source):
        names.append(name)
        frames.append(frame)
    return names, frames


# ---- writing -------------------------------------------------------------------------------
class VideoWriter:
    """An H.264 (or MPEG-4 part 2) mp4 written with PyAV; the size is fixed by the first frame.

    Later frames of another size are resized to it. `close()` flushes the encoder and writes
    the index, so a video closed after an interruption still plays.
    """

    def __init__(self, path: str | Path, fps: float | None = None):
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 10.0
        self.container = None
        self.stream = None
        self.size: tuple[int, int] | None = None  # (h, w) of the source frames
        self.frames = 0

    def _open(self, h: int, w: int) -> None:
        import av

        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.container = av.open(str(self.path), "w", format="mp4")
        rate = Fraction(self.fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        # yuv420p needs even sides: one replicated row/column where needed
        self.stream.height, self.stream.width = h + h % 2, w + w % 2
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": "20", "preset": "veryfast"}
        self.size = (h, w)

    def write(self, rgb: np.ndarray) -> None:
        import av
        import cv2

        try:
            if self.container is None:
                self._open(*rgb.shape[:2])
            h, w = self.size
            if rgb.shape[:2] != (h, w):
                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
            if h % 2 or w % 2:
                rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except av.error.FFmpegError as e:
            raise OSError(f"cannot write {self.path}: {e.strerror}") from None
        self.frames += 1

    def close(self) -> None:
        import av

        if self.container is None:
            return
        container, self.container = self.container, None
        try:
            for packet in self.stream.encode(None):
                container.mux(packet)
        except av.error.FFmpegError as e:
            raise OSError(f"cannot finish {self.path}: {e.strerror}") from None
        finally:
            container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
