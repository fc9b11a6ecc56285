"""The source side of the y4m pipe and of batch: a y4m stream or any video file as a VapourSynth clip, the
two passes over it (vsplugin/passes.py), and the upscaled RGB back in the source's pixel layout.

    ffmpeg -i in.mkv -f yuv4mpegpipe - | hypersr upscale - -o - | ffmpeg -f yuv4mpegpipe -i - out.mkv

A y4m stream becomes a VapourSynth clip whose frames are read from the stream on demand, in order,
keeping a short look-back; its length is unknown until the end, so requests past the last frame get
the last frame marked with the PAST_END property, which ends the output. Memory is bounded by the
window and VapourSynth's prefetch, never by the clip.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import numpy as np
import vapoursynth as vs

from ..engine.errors import HypersrError
from ..engine.files import readable_file
from ..vsplugin.io import default_matrix, is_full_range, open_video, range_props, source_matrix, to_rgb
from ..vsplugin.passes import PAST_END, analyse_clip, upscale_clip, upscaler_for
from .y4m import Y4MHeader, Y4MReader, chroma_tag

core = vs.core

CHROMALOC_NAMES = {0: "left", 1: "center", 2: "top_left"}  # _ChromaLocation -> resize's chromaloc_s
UNKNOWN_LENGTH = 1 << 30  # a y4m stream's length is known only at its end
LOOK_BACK = 16  # decoded frames kept for requests behind the newest one (window + prefetch)


def vs_format(h: Y4MHeader) -> vs.VideoFormat:
    sample = vs.INTEGER
    if h.family == "gray":
        return core.query_video_format(vs.GRAY, sample, h.bits, 0, 0)
    sw, sh = h.subsampling
    return core.query_video_format(vs.YUV, sample, h.bits, sw, sh)


class _StreamFrames:
    """Frames of a y4m stream, read in order on demand from VapourSynth's threads.

    Frames already read are served without waiting on the reader, so a thread blocked on the next
    input frame never holds up output that is ready."""

    def __init__(self, reader: Y4MReader, seekable: bool = False):
        self.reader, self.seekable = reader, seekable  # seekable: frames left behind are read again
        self.read_lock = threading.Lock()
        first = reader.read()
        if first is None:
            raise HypersrError(reader.truncated or f"{reader.name} holds no frames (a y4m header only); nothing to upscale")
        self.frames: dict[int, list[np.ndarray]] = {0: first}
        self.next = 1
        self.end: int | None = None  # frame count, once the stream has ended

    def get(self, n: int) -> tuple[list[np.ndarray], bool]:
        """Frame n's planes and whether n lies past the end (then the last frame's planes)."""
        while True:
            planes = self.frames.get(n)
            if planes is not None:
                return planes, False
            end = self.end
            if end is not None and n >= end:
                return self.frames[end - 1], True
            with self.read_lock:
                if n in self.frames or self.end is not None:
                    continue
                if n < self.next:
                    if self.seekable:
                        return self.reader.read_at(n), False
                    raise RuntimeError(f"frame {n} was requested after it left the look-back buffer of a pipe")
                planes = self.reader.read()
                if planes is None:
                    self.end = self.next
                else:
                    self.frames[self.next] = planes
                    self.frames.pop(self.next - LOOK_BACK, None)
                    self.next += 1


@dataclass
class Source:
    clip: vs.VideoNode  # the input as decoded (YUV or GRAY)
    header: Y4MHeader  # what the output header looks like, before resizing
    matrix: int
    total: int | None  # frame count if known
    stream: _StreamFrames | None = None
    pad: tuple[int, int] = (0, 0)  # columns, rows added to odd-size subsampled frames (see open_y4m)

    @property
    def truncated(self) -> str | None:
        return self.stream.reader.truncated if self.stream else None

    def rgb(self) -> vs.VideoNode:
        """The source as the RGBS clip the networks read."""
        return to_rgb(self.clip, "RGBS", self.matrix)


def open_y4m(binary_stream, name: str, matrix: int | None = None, size: int | None = None) -> Source:
    """A y4m stream as a clip. `size` (bytes, for files) gives the length when every frame header is a
    plain FRAME; otherwise the length is learnt at the end of the stream."""
    reader = Y4MReader(binary_stream, name)
    h = reader.header
    total = None
    if size is not None:
        payload, per_frame = size - reader.header_size, len(b"FRAME\n") + h.frame_bytes()
        total = payload // per_frame if payload % per_frame == 0 and payload > 0 else None
    frames = _StreamFrames(reader, seekable=total is not None)
    fmt = vs_format(h)
    # VapourSynth needs subsampled frames to be a whole number of chroma samples wide and high; FFmpeg writes
    # odd sizes with chroma planes rounded up (65x49 4:2:0 has 33x25 chroma). So the luma is padded by
    # repeating its last column/row to the chroma's size, and output_clip crops the padding off again.
    # An interlaced frame is resized as two fields, each of which must hold whole chroma rows too.
    fields = 2 if h.interlace in ("t", "b") else 1
    pad = (-h.width % (1 << fmt.subsampling_w), -h.height % (fields << fmt.subsampling_h))
    width, height = h.width + pad[0], h.height + pad[1]
    blank = core.std.BlankClip(format=fmt.id, width=width, height=height, length=total or UNKNOWN_LENGTH, fpsnum=h.fps[0], fpsden=h.fps[1], keep=True)
    matrix = matrix or default_matrix(h.width, h.height)
    props = {"_FieldBased": {"t": 2, "b": 1}.get(h.interlace, 0)}
    if h.family == "yuv":
        props.update(_Matrix=matrix, _ChromaLocation=h.chroma_location)
    props.update(range_props(h.color_range == "FULL"))
    if h.aspect[0] > 0 and h.aspect[1] > 0:
        props.update(_SARNum=h.aspect[0], _SARDen=h.aspect[1])

    def fill(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        planes, past_end = frames.get(n)
        fout = f.copy()
        for p, plane in enumerate(planes):
            dst = np.asarray(fout[p])
            ph, pw = plane.shape
            dst[:ph, :pw] = plane
            dst[:ph, pw:] = plane[:, -1:]
            dst[ph:] = dst[ph - 1]
        fout.props.update(props)
        if past_end:
            fout.props[PAST_END] = 1
        return fout

    clip = core.std.ModifyFrame(blank, blank, fill)
    return Source(clip, h, matrix, total, frames, pad)


def open_file(path: str, matrix: int | None = None) -> Source:
    """A video file through bestsource; the output keeps its pixel layout (RGB sources become 4:4:4)."""
    clip = open_video(path)
    fmt = clip.format
    if fmt is None or clip.width == 0:
        raise HypersrError(f"{path} changes format or size mid-stream; convert it to one format first")
    props = clip.get_frame(0).props
    matrix = matrix or source_matrix(clip)
    if fmt.color_family == vs.RGB:
        clip = core.resize.Bicubic(clip, format=core.query_video_format(vs.YUV, vs.INTEGER, fmt.bits_per_sample, 0, 0).id, matrix=matrix)
        fmt = clip.format
    if fmt.sample_type == vs.FLOAT:
        raise HypersrError(f"{path} has float samples, which y4m cannot carry; convert it to an integer format first")
    family = "gray" if fmt.color_family == vs.GRAY else "yuv"
    tag = chroma_tag(family, (fmt.subsampling_w, fmt.subsampling_h), fmt.bits_per_sample, props.get("_ChromaLocation", 0))
    sar = (props.get("_SARNum", 0), props.get("_SARDen", 0))
    header = Y4MHeader(
        clip.width, clip.height, tag, (clip.fps.numerator or 25, clip.fps.denominator or 1),
        {1: "b", 2: "t"}.get(props.get("_FieldBased", 0), "p"), sar,
        "FULL" if is_full_range(props) else "LIMITED",
    )
    return Source(clip, header, matrix, clip.num_frames)


def open_input(path: str, matrix: int | None = None) -> Source:
    """`-` is stdin (y4m); a file starting with the y4m magic is read as y4m; anything else via bestsource."""
    if path == "-":
        return open_y4m(sys.stdin.buffer, "stdin", matrix)
    p = readable_file(path, "input")
    with open(p, "rb") as f:
        is_y4m = f.read(9) == b"YUV4MPEG2"
    if is_y4m:
        return open_y4m(open(p, "rb"), str(p), matrix, p.stat().st_size)
    return open_file(str(p), matrix)


def output_clip(source: Source, upscaled_rgb: vs.VideoNode) -> vs.VideoNode:
    """The upscaled RGB back in the source's pixel layout, range and chroma siting."""
    h = source.header
    fmt = vs_format(h)
    rng = "full" if h.color_range == "FULL" else "limited"  # resize's range_s
    if h.family == "gray":
        y = core.resize.Bicubic(upscaled_rgb, format=vs.YUV444PS, matrix=source.matrix)
        return core.resize.Point(core.std.ShufflePlanes(y, 0, vs.GRAY), format=fmt.id, range_in_s="full", range_s=rng)
    out = core.resize.Bicubic(upscaled_rgb, format=fmt.id, matrix=source.matrix, range_s=rng, chromaloc_s=CHROMALOC_NAMES[h.chroma_location])
    if any(source.pad):
        s = upscaled_rgb.width // source.clip.width
        out = core.std.Crop(out, right=source.pad[0] * s, bottom=source.pad[1] * s)
    return out


def analyse_source(source: Source, preset, refine: int = 0, device: str | None = None, progress: bool = True,
                   desc: str = "hypersr analyse", position: int | None = None, source_kind: str | None = None):
    """Pass one over a whole source: its LoRA. A truncated input gives none: a LoRA of part of a clip would
    be silently wrong for the rest."""
    lora = analyse_clip(source.rgb(), preset, refine, device, source.total, progress, desc, position, source_kind)
    if source.truncated:
        raise HypersrError(f"{source.truncated}; no LoRA written (analyse the complete clip)")
    return lora


def upscale_source(source: Source, preset, lora=None, backend=None) -> vs.VideoNode:
    """Pass two over a source, in the source's pixel layout (what sink.write_y4m writes)."""
    rgb = source.rgb()
    return output_clip(source, upscale_clip(rgb, upscaler_for(rgb, preset, lora, backend)))
