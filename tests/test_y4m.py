"""y4m streams: every supported layout reads and writes back unchanged, through our reader/writer and
through the VapourSynth clip the pipe builds; headers keep their tags; bad headers are refused."""

from __future__ import annotations

import io
import re
import subprocess

import numpy as np
import pytest
from helpers import ffmpeg_y4m

from hypersr.ffmpeg_filter.sink import write_y4m
from hypersr.ffmpeg_filter.source import open_input
from hypersr.ffmpeg_filter.y4m import Y4MError, Y4MHeader, Y4MReader, Y4MWriter
from hypersr.vsplugin.io import clip_to_array, to_rgb

# FFmpeg pixel format -> the C tag FFmpeg writes for it
FORMATS = {
    "yuv420p": "420jpeg",
    "yuv422p": "422",
    "yuv444p": "444",
    "gray": "mono",
    "yuv420p10le": "420p10",
    "yuv420p12le": "420p12",
    "yuv420p16le": "420p16",
    "yuv422p10le": "422p10",
    "yuv444p10le": "444p10",
    "yuv444p16le": "444p16",
    "gray10le": "mono10",
    "gray16le": "mono16",
}


def relabel(data: bytes, old: str, new: str) -> bytes:
    """Same samples under another chroma-siting tag (C420jpeg -> C420mpeg2 ...)."""
    header, rest = data.split(b"\n", 1)
    header = header.replace(f"C{old}".encode(), f"C{new}".encode()).replace(f"XYSCSS={old.upper()}".encode(), b"")
    return header + b"\n" + rest


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    d = tmp_path_factory.mktemp("y4m")
    out = {}
    for pix_fmt, tag in FORMATS.items():
        data = ffmpeg_y4m(d / f"{pix_fmt}.y4m", pix_fmt, size="66x38", frames=3).read_bytes()  # odd chroma sizes too
        out[tag] = data
    for siting in ("420mpeg2", "420paldv", "420"):
        out[siting] = relabel(out["420jpeg"], "420jpeg", siting)
    return out


@pytest.mark.parametrize("tag", list(FORMATS.values()) + ["420mpeg2", "420paldv", "420"])
def test_reader_writer_round_trip(streams, tag):
    data = streams[tag]
    reader = Y4MReader(io.BytesIO(data))
    assert reader.header.chroma == tag
    out = io.BytesIO()
    writer = Y4MWriter(out, reader.header)
    n = 0
    while (planes := reader.read()) is not None:
        writer.write(planes)
        n += 1
    assert n == 3 and reader.truncated is None
    original_frames = data.split(b"\n", 1)[1]
    assert out.getvalue().split(b"\n", 1)[1] == original_frames
    # what we write, FFmpeg reads back as the same pixels
    to_raw = ["ffmpeg", "-nostdin", "-v", "error", "-f", "yuv4mpegpipe", "-i", "-", "-f", "rawvideo", "-"]
    decoded = subprocess.run(to_raw, input=out.getvalue(), capture_output=True, check=True).stdout
    expected = subprocess.run(to_raw, input=data, capture_output=True, check=True).stdout
    assert decoded == expected


@pytest.mark.parametrize("tag", list(FORMATS.values()) + ["420mpeg2", "420paldv"])
def test_vapoursynth_clip_round_trip(streams, tag, tmp_path):
    """The clip the pipe builds from a y4m file carries the exact samples and writes them back unchanged."""
    path = tmp_path / "in.y4m"
    path.write_bytes(streams[tag])
    source = open_input(str(path))
    assert source.total == 3 and source.clip.width == 66 and source.clip.height == 38
    out = io.BytesIO()
    assert write_y4m(source.clip, source.header, out, source.total, progress=False) == 3
    assert out.getvalue().split(b"\n", 1)[1] == streams[tag].split(b"\n", 1)[1]
    header = Y4MReader(io.BytesIO(out.getvalue())).header
    assert header.chroma == tag and header.fps == (25, 1)


def test_header_fields_pass_through():
    h = Y4MHeader.parse(b"YUV4MPEG2 W720 H480 F30000:1001 It A10:11 C420mpeg2 XYSCSS=420MPEG2 XCOLORRANGE=FULL XFOO=bar")
    assert (h.width, h.height, h.fps, h.interlace, h.aspect, h.chroma, h.color_range, h.extra) == (
        720, 480, (30000, 1001), "t", (10, 11), "420mpeg2", "FULL", ("FOO=bar",))
    again = Y4MHeader.parse(h.resized(1440, 960).line().strip())
    assert again == Y4MHeader(1440, 960, "420mpeg2", (30000, 1001), "t", (10, 11), "FULL", ("FOO=bar",))


@pytest.mark.parametrize(
    "line, words",
    [
        (b"YUV4MPEG3 W64 H64", "magic"),
        (b"YUV4MPEG2 H64 C420", "W (width)"),
        (b"YUV4MPEG2 W64 H64 F25", "malformed"),
        (b"YUV4MPEG2 W64 H64 C411", "C411"),
        (b"YUV4MPEG2 W64 H64 C444alpha", "C444alpha"),
        (b"YUV4MPEG2 W64 H64 C420p11", "C420p11"),
        (b"YUV4MPEG2 W0 H64", "frame size"),
        (b"YUV4MPEG2 W64 H64 Im", "mixed"),
    ],
)
def test_bad_headers_are_refused(line, words):
    with pytest.raises(Y4MError, match=re.escape(words)):
        Y4MHeader.parse(line)


def test_truncated_stream_keeps_complete_frames(streams):
    data = streams["420jpeg"]
    reader = Y4MReader(io.BytesIO(data[: len(data) - 100]))
    frames = []
    while (planes := reader.read()) is not None:
        frames.append(planes)
    assert len(frames) == 2
    assert "middle of frame 2" in reader.truncated


def test_planes_have_the_header_layout(streams):
    reader = Y4MReader(io.BytesIO(streams["420p10"]))
    y, u, v = reader.read()
    assert y.shape == (38, 66) and u.shape == (19, 33) and y.dtype == np.dtype("<u2") and y.max() < 1024


@pytest.mark.parametrize("size, matrix", [("320x240", "bt601"), ("1280x720", "bt709")])
def test_matrix_defaults_follow_frame_size(tmp_path, size, matrix):
    """y4m carries no matrix: SD is read as BT.601 and HD as BT.709, the way FFmpeg made them here."""
    path = tmp_path / "in.y4m"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-frames:v", "1",
                    "-vf", f"scale=out_color_matrix={matrix}:out_range=tv", "-pix_fmt", "yuv444p", "-f", "yuv4mpegpipe", "-y", str(path)], check=True)
    w, h = map(int, size.split("x"))
    decoded = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vf", f"scale=in_color_matrix={matrix}:in_range=tv",
                              "-pix_fmt", "gbrpf32le", "-f", "rawvideo", "-"], capture_output=True, check=True).stdout
    g, b, r = np.frombuffer(decoded, np.float32).reshape(3, h, w)
    theirs = np.stack([r, g, b])
    source = open_input(str(path))
    ours = clip_to_array(to_rgb(source.clip, "RGBS", source.matrix)[:1])[0]
    assert np.abs(ours - theirs).mean() < 1.6 / 255  # FFmpeg rounds its float output differently
    other = {"bt601": 1, "bt709": 6}[matrix]  # the wrong matrix is clearly told apart
    wrong = clip_to_array(to_rgb(source.clip, "RGBS", other)[:1])[0]
    assert np.abs(wrong - theirs).mean() > 4 / 255


def test_y4m_file_clip_allows_random_access(streams, tmp_path):
    """A y4m *file* opened as a clip can be read again from the start (a pipe cannot)."""
    path = tmp_path / "in.y4m"
    data = ffmpeg_y4m(path, "yuv420p", size="32x16", frames=40).read_bytes()
    source = open_input(str(path))
    first = [np.asarray(f[0]).copy() for f in source.clip.frames(close=True)]
    again = [np.asarray(source.clip.get_frame(n)[0]).copy() for n in (0, 3, 39, 1)]
    for n, plane in zip((0, 3, 39, 1), again):
        np.testing.assert_array_equal(plane, first[n])
    assert len(first) == 40 and data
