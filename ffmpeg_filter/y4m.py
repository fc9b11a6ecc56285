"""YUV4MPEG2 (y4m) streams: the header, and frame-by-frame reading and writing of planes.

Chroma tags follow FFmpeg's yuv4mpegpipe (de)muxer: C420jpeg / C420 (chroma centred), C420mpeg2
(left), C420paldv (top-left), C420p9…C420p16 (left), C422[pN], C444[pN], Cmono[N]; samples above 8 bits
are 16-bit little-endian. XCOLORRANGE=FULL|LIMITED carries the range; other tags pass through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from ..engine.errors import HypersrError

MAGIC = b"YUV4MPEG2"
FRAME = b"FRAME"
MAX_HEADER = 1024  # what hypersr reads
# What hypersr writes: FFmpeg's demuxer reads a header line of at most 96 bytes, newline included
# (libavformat/yuv4mpegdec.c, MAX_YUV4_HEADER); optional tags that do not fit are dropped.
MAX_OUTPUT_HEADER = 96
MAX_SIDE = 16384  # pixels a side: 16K; also what keeps frame sizes (and allocations) sane
MAX_INT32 = 2**31 - 1  # FFmpeg reads F and A as C ints
READ_CHUNK = 1 << 24  # a frame is read in chunks, so a short stream never allocates what its header claims

# VapourSynth's _ChromaLocation values
CHROMA_LEFT, CHROMA_CENTER, CHROMA_TOP_LEFT = 0, 1, 2

_CHROMA_RE = re.compile(r"^(420(jpeg|mpeg2|paldv)?|(420|422|444)(p(9|10|12|14|16))?|mono(9|10|12|16)?)$")


class Y4MError(HypersrError):
    pass


@dataclass(frozen=True)
class Y4MHeader:
    width: int
    height: int
    chroma: str = "420jpeg"
    fps: tuple[int, int] = (25, 1)
    interlace: str = "p"
    aspect: tuple[int, int] = (0, 0)
    color_range: str | None = None  # "FULL", "LIMITED" or unknown
    extra: tuple[str, ...] = field(default_factory=tuple)  # other X tags, passed through

    # -- the pixel layout the chroma tag names --------------------------------------------------
    @property
    def family(self) -> str:
        return "gray" if self.chroma.startswith("mono") else "yuv"

    @property
    def subsampling(self) -> tuple[int, int]:
        """(log2 horizontal, log2 vertical) chroma subsampling."""
        return {"420": (1, 1), "422": (1, 0), "444": (0, 0), "mon": (0, 0)}[self.chroma[:3]]

    @property
    def bits(self) -> int:
        m = re.fullmatch(r"(?:\d{3}p|mono)(\d+)", self.chroma)
        return int(m.group(1)) if m else 8

    @property
    def chroma_location(self) -> int:
        if self.chroma in ("420jpeg", "420"):
            return CHROMA_CENTER
        return CHROMA_TOP_LEFT if self.chroma == "420paldv" else CHROMA_LEFT

    @property
    def dtype(self):
        return np.dtype("<u2") if self.bits > 8 else np.dtype(np.uint8)

    def plane_shapes(self) -> list[tuple[int, int]]:
        if self.family == "gray":
            return [(self.height, self.width)]
        sw, sh = self.subsampling
        c = (-(-self.height // (1 << sh)), -(-self.width // (1 << sw)))
        return [(self.height, self.width), c, c]

    def frame_bytes(self) -> int:
        return sum(h * w for h, w in self.plane_shapes()) * self.dtype.itemsize

    # -- text form -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, line: bytes) -> Y4MHeader:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise Y4MError("the y4m header is not ASCII; is the input really a YUV4MPEG2 stream?") from None
        tokens = text.split()
        if not tokens or tokens[0] != "YUV4MPEG2":
            raise Y4MError("input is not a YUV4MPEG2 stream (no 'YUV4MPEG2' magic); in ffmpeg use -f yuv4mpegpipe")
        values: dict = {"extra": []}
        try:
            for tok in tokens[1:]:
                key, val = tok[0], tok[1:]
                if key == "W":
                    values["width"] = _number(val, "W")
                elif key == "H":
                    values["height"] = _number(val, "H")
                elif key == "C":
                    values["chroma"] = val
                elif key == "F":
                    n, d = _ratio(val, "F")
                    values["fps"] = (n, d) if n > 0 and d > 0 else (25, 1)
                elif key == "A":
                    values["aspect"] = _ratio(val, "A")
                elif key == "I":
                    if val not in ("p", "t", "b", "?"):
                        raise Y4MError(f"y4m interlace mode I{val} (mixed) is not supported; deinterlace first")
                    values["interlace"] = val
                elif key == "X":
                    if val.startswith("COLORRANGE="):
                        values["color_range"] = val[len("COLORRANGE=") :].upper()
                    elif not val.startswith("YSCSS="):  # regenerated from C on output
                        values["extra"].append(val)
                else:
                    raise ValueError(f"unknown field {tok!r}")
        except (ValueError, IndexError) as e:
            raise Y4MError(f"malformed y4m header ({e}); the stream must start with e.g. 'YUV4MPEG2 W640 H360 F25:1 C420jpeg'") from None
        if "width" not in values or "height" not in values:
            raise Y4MError("malformed y4m header: W (width) and H (height) are required")
        if values["width"] <= 0 or values["height"] <= 0:
            raise Y4MError(f"malformed y4m header: frame size {values['width']}x{values['height']}")
        if max(values["width"], values["height"]) > MAX_SIDE:
            raise Y4MError(f"y4m frame size {values['width']}x{values['height']} is beyond {MAX_SIDE} pixels a side, more than hypersr "
                           "upscales; check the stream's header, or crop or downscale it first")
        chroma = values.get("chroma", "420jpeg")
        if not _CHROMA_RE.match(chroma):
            raise Y4MError(
                f"y4m colour format C{chroma} is not supported; use 4:2:0, 4:2:2, 4:4:4 or mono at 8-16 bits "
                "(e.g. ffmpeg -pix_fmt yuv420p10le)"
            )
        values["chroma"] = chroma
        values["extra"] = tuple(values["extra"])
        return cls(**values)

    def line(self) -> bytes:
        """The header line as FFmpeg writes it (with XYSCSS for older readers), with the X tags passed
        through that fit in MAX_OUTPUT_HEADER bytes: see `fitted`."""
        yscss, kept, _ = self.fitted()
        return self._line(yscss, kept)

    def fitted(self) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
        """(whether XYSCSS fits, the extra X tags kept, those dropped) for a line FFmpeg can read: the
        passed-through tags go first, then XYSCSS (FFmpeg reads the C tag before it)."""
        kept = list(self.extra)
        dropped: list[str] = []
        while kept and len(self._line(True, kept)) > MAX_OUTPUT_HEADER:
            dropped.insert(0, kept.pop())
        yscss = len(self._line(True, kept)) <= MAX_OUTPUT_HEADER
        return yscss, tuple(kept), tuple(dropped)

    def _line(self, yscss: bool, extra) -> bytes:
        parts = [f"YUV4MPEG2 W{self.width} H{self.height} F{self.fps[0]}:{self.fps[1]} I{self.interlace}"]
        parts.append(f"A{self.aspect[0]}:{self.aspect[1]}")
        parts.append(f"C{self.chroma}")
        if self.family == "yuv" and yscss:
            parts.append(f"XYSCSS={self.chroma.upper()}")
        if self.color_range:
            parts.append(f"XCOLORRANGE={self.color_range}")
        parts += [f"X{x}" for x in extra]
        return (" ".join(parts) + "\n").encode("ascii")

    def resized(self, width: int, height: int) -> Y4MHeader:
        return replace(self, width=width, height=height)


def _number(text: str, key: str) -> int:
    """A y4m header number: plain decimal digits (no sign, spaces or underscores, which int() would take)."""
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"{key}{text} is not a whole number")
    if len(text) > 10:
        raise ValueError(f"{key}{text} is out of range")
    return int(text)


def _ratio(text: str, key: str) -> tuple[int, int]:
    """A y4m ratio n:d (F, A), each term a number FFmpeg reads as a C int."""
    m = re.fullmatch(r"([0-9]+):([0-9]+)", text)
    if not m:
        raise ValueError(f"{key}{text} is not a ratio n:d")
    if any(len(t) > 10 for t in m.groups()):
        raise ValueError(f"{key}{text} is out of range")
    n, d = int(m.group(1)), int(m.group(2))
    if n > MAX_INT32 or d > MAX_INT32:
        raise ValueError(f"{key}{text} has a term beyond {MAX_INT32}")
    return n, d


def chroma_tag(family: str, subsampling: tuple[int, int], bits: int, chroma_location: int = CHROMA_LEFT) -> str:
    """The y4m C tag for a planar layout (inverse of Y4MHeader's properties)."""
    if family == "gray":
        return "mono" if bits == 8 else f"mono{bits}"
    base = {(1, 1): "420", (1, 0): "422", (0, 0): "444"}.get(subsampling)
    if base is None or bits not in (8, 9, 10, 12, 14, 16):
        raise Y4MError(f"this video's pixel layout (subsampling {subsampling}, {bits} bits) cannot be written as y4m")
    if bits > 8:
        return f"{base}p{bits}"
    if base == "420":
        return {CHROMA_CENTER: "420jpeg", CHROMA_TOP_LEFT: "420paldv"}.get(chroma_location, "420mpeg2")
    return base


def _read_line(stream) -> bytes:
    """A line up to its newline, or what there is of it at the end of the stream or at MAX_HEADER bytes."""
    buf = bytearray()
    while len(buf) < MAX_HEADER:
        c = stream.read(1)
        if not c:
            break
        buf += c
        if c == b"\n":
            break
    return bytes(buf)


def frames_done(n: int) -> str:
    """'no complete frame was', 'the 1 complete frame was', 'the 5 complete frames were'."""
    return "no complete frame was" if n == 0 else f"the {n} complete frame{'s were' if n > 1 else ' was'}"


class Y4MReader:
    """Reads frames from a binary stream. `read()` gives a list of planes (numpy) or None at the end;
    an incomplete last frame also ends the stream and is recorded in `truncated`."""

    def __init__(self, stream, name: str = "input"):
        self.stream, self.name = stream, name
        first = _read_line(stream)
        if not first:
            raise Y4MError(f"{name} is empty: no y4m header and no frames")
        if not first.endswith(b"\n"):
            if len(first) >= MAX_HEADER:
                raise Y4MError(f"malformed y4m: the header line is longer than {MAX_HEADER} bytes; is {name} really a YUV4MPEG2 stream?")
            raise Y4MError(f"{name}: the y4m header is not terminated by a newline")
        self.header = Y4MHeader.parse(first[:-1])
        self.header_size = len(first)
        self.frames_read = 0
        self.truncated: str | None = None

    def read(self) -> list[np.ndarray] | None:
        if self.truncated:
            return None
        line = _read_line(self.stream)
        if not line:
            return None
        n = self.frames_read
        if line.startswith(MAGIC):
            self.truncated = (f"{self.name} starts a new y4m header after frame {n} (a format change mid-stream); "
                              f"{frames_done(n)} processed: split the stream there")
            return None
        if not line.startswith(FRAME) or not line.endswith(b"\n"):  # damaged, or missing (frame data where it should be)
            self.truncated = f"{self.name}: frame {n} has a damaged or missing 'FRAME' marker; {frames_done(n)} processed"
            return None
        size = self.header.frame_bytes()
        data = _read_exactly(self.stream, size)
        if len(data) < size:
            self.truncated = f"{self.name} ended in the middle of frame {n} ({len(data)} of {size} bytes); {frames_done(n)} processed"
            return None
        self.frames_read += 1
        return self._planes(data)

    def _planes(self, data: bytes) -> list[np.ndarray]:
        planes, offset = [], 0
        for h, w in self.header.plane_shapes():
            planes.append(np.frombuffer(data, self.header.dtype, h * w, offset).reshape(h, w))
            offset += h * w * self.header.dtype.itemsize
        return planes

    def read_at(self, n: int) -> list[np.ndarray]:
        """Frame n of a seekable file whose frames all have plain FRAME headers; the read position stays."""
        per_frame = len(FRAME) + 1 + self.header.frame_bytes()
        here = self.stream.tell()
        try:
            self.stream.seek(self.header_size + n * per_frame + len(FRAME) + 1)
            data = _read_exactly(self.stream, self.header.frame_bytes())
        finally:
            self.stream.seek(here)
        if len(data) < self.header.frame_bytes():
            raise Y4MError(f"{self.name}: frame {n} is incomplete")
        return self._planes(data)


def _read_exactly(stream, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(min(size - got, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class Y4MWriter:
    def __init__(self, stream, header: Y4MHeader):
        self.stream, self.header = stream, header
        stream.write(header.line())

    def write(self, planes) -> None:
        shapes = self.header.plane_shapes()
        out = [FRAME + b"\n"]
        for plane, shape in zip(planes, shapes, strict=True):
            arr = np.asarray(plane)
            if arr.shape != shape:
                raise ValueError(f"plane of shape {arr.shape}, header expects {shape}")
            out.append(np.ascontiguousarray(arr, dtype=self.header.dtype).tobytes())
        self.stream.write(b"".join(out))
