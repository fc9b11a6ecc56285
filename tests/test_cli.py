"""The `hypersr upscale` and `analyse` commands with real y4m streams and real ffmpeg processes on both sides."""

from __future__ import annotations

import dataclasses
import io
import subprocess

import numpy as np
import pytest
from helpers import HYPERSR, SAMPLE, assert_clean_error, ffmpeg_y4m, probe, run_hypersr

from hypersr.engine import preset_registry
from hypersr.engine.lora import LoRA, load_lora, lora_layers, save_lora
from hypersr.ffmpeg_filter.y4m import Y4MReader


def read_all(data: bytes):
    reader = Y4MReader(io.BytesIO(data))
    frames = []
    while (planes := reader.read()) is not None:
        frames.append(planes)
    assert reader.truncated is None
    return reader.header, frames


def plane_means(frames) -> np.ndarray:
    return np.array([[p.astype(np.float64).mean() for p in f] for f in frames]).mean(0)


@pytest.mark.parametrize(
    "pix_fmt, tag",
    [("yuv420p", "420jpeg"), ("yuv420p10le", "420p10"), ("yuv422p", "422"), ("yuv444p12le", "444p12"), ("gray", "mono"), ("gray16le", "mono16")],
)
def test_upscale_keeps_layout_and_colours(tmp_path, pix_fmt, tag):
    src = ffmpeg_y4m(tmp_path / "in.y4m", pix_fmt, size="64x48", frames=4)
    proc = run_hypersr("upscale", src, "-o", tmp_path / "out.y4m", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr.decode()
    h_in, f_in = read_all(src.read_bytes())
    h_out, f_out = read_all((tmp_path / "out.y4m").read_bytes())
    assert (h_out.width, h_out.height, h_out.chroma, h_out.fps, h_out.aspect, h_out.color_range) == (
        128, 96, tag, h_in.fps, h_in.aspect, h_in.color_range)
    assert len(f_out) == len(f_in) == 4
    # Matrix, range and chroma handled right: every plane keeps its average level (within 1.5% of full scale).
    full_scale = (1 << h_in.bits) - 1
    assert np.abs(plane_means(f_out) - plane_means(f_in)).max() < 0.015 * full_scale


def test_full_range_and_chroma_siting_tags_survive(tmp_path):
    src = ffmpeg_y4m(tmp_path / "in.y4m", "yuvj420p", size="64x48", frames=2)  # full range
    data = src.read_bytes().replace(b"C420jpeg", b"C420mpeg2", 1)
    (tmp_path / "mpeg2.y4m").write_bytes(data)
    proc = run_hypersr("upscale", tmp_path / "mpeg2.y4m", "-o", "-", "-q")
    h_out, f_out = read_all(proc.stdout)
    h_in, f_in = read_all(data)
    assert h_in.color_range == h_out.color_range == "FULL" and h_out.chroma == "420mpeg2"
    assert np.abs(plane_means(f_out) - plane_means(f_in)).max() < 0.015 * 255


def test_two_pass_recipe_between_real_ffmpeg_processes(tmp_path):
    """The README's recipe: ffmpeg | hypersr analyse, then ffmpeg | hypersr upscale --lora | ffmpeg."""
    out, lora = tmp_path / "out.mkv", tmp_path / "in.lora"
    decode = f"ffmpeg -v error -i {SAMPLE} -vf scale=160:96 -frames:v 12 -f yuv4mpegpipe -pix_fmt yuv420p10le -strict -1 -"
    passes = [
        f"{decode} | {HYPERSR} analyse - -o {lora}",
        f"{decode} | {HYPERSR} upscale - --lora {lora} -o - | ffmpeg -v error -f yuv4mpegpipe -i - -c:v ffv1 -y {out}",
    ]
    for cmd in passes:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"frame" in proc.stderr  # progress went to stderr, the video alone to stdout
    video = probe(out)[0]
    assert (video["width"], video["height"], video["pix_fmt"], video["frames"]) == (320, 192, "yuv420p10le", 12)
    assert load_lora(lora).made_by["frames"] == 12
    # the pipe applies the LoRA: at full strength it changes the video (pass one's check may have set this clip's
    # LoRA to strength 0, the base unchanged, which then reproduces the plain pipe exactly)
    made = load_lora(lora)
    full = tmp_path / "full.lora"
    save_lora(dataclasses.replace(made, strength=1.0), full)

    def pipe(extra: str) -> bytes:
        cmd = f"{decode} | {HYPERSR} upscale - {extra} -o - -q"
        return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=300).stdout

    plain, with_lora, with_full = pipe(""), pipe(f"--lora {lora}"), pipe(f"--lora {full}")
    assert len(plain) == len(with_lora) == len(with_full) and plain != with_full
    assert (with_lora == plain) == (made.strength == 0)


def test_video_file_input(tmp_path):
    proc = run_hypersr("upscale", SAMPLE, "-o", tmp_path / "out.y4m", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    h, frames = read_all((tmp_path / "out.y4m").read_bytes())
    assert (h.width, h.height, h.chroma, len(frames)) == (1280, 720, "420mpeg2", 60)


# --- bad input: one clear line, non-zero exit, nothing half-written --------------------------------

def test_truncated_input_keeps_complete_frames(tmp_path):
    data = ffmpeg_y4m(tmp_path / "in.y4m", size="64x48", frames=5).read_bytes()
    proc = run_hypersr("upscale", "-", "-o", tmp_path / "out.y4m", input_bytes=data[:-1000])
    assert_clean_error(proc, "middle of frame 4")
    h, frames = read_all((tmp_path / "out.y4m").read_bytes())
    assert len(frames) == 4 and h.width == 128
    # and with stdout as output, FFmpeg can read every frame that was written
    proc = run_hypersr("upscale", "-", "-o", "-", input_bytes=data[:-1000])
    assert proc.returncode != 0 and len(read_all(proc.stdout)[1]) == 4


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"YUV4MPEG2 W64 H48 Cfoo\nFRAME\n", "Cfoo"),
        (b"YUV4MPEG2 W64 H48 C411\nFRAME\n", "C411"),
        (b"YUV4MPEG2 W64 Q48\n", "malformed"),
        (b"NOTAY4M W64 H48\n", "YUV4MPEG2"),
        (b"YUV4MPEG2 W64 H48 F25:1 C420jpeg\n", "no frames"),
        (b"", "empty"),
        (b"YUV4MPEG2 W8 H8 C444\nFRAME\n" + bytes(8 * 8 * 3), "minimum"),
    ],
    ids=["bad-chroma", "unsupported-411", "malformed", "not-y4m", "zero-frames", "empty", "too-small"],
)
def test_bad_streams(tmp_path, payload, words):
    out = tmp_path / "out.y4m"
    proc = run_hypersr("upscale", "-", "-o", out, input_bytes=payload)
    assert_clean_error(proc, words)
    assert list(tmp_path.iterdir()) == []  # no output, no temp file


@pytest.fixture(scope="module")
def small_y4m(tmp_path_factory):
    return ffmpeg_y4m(tmp_path_factory.mktemp("in") / "in.y4m", size="64x48", frames=3)


def test_unknown_preset(small_y4m, tmp_path):
    assert_clean_error(run_hypersr("upscale", small_y4m, "-o", tmp_path / "o.y4m", "--preset", "nope"), "unknown preset", "fast-x2")
    assert list(tmp_path.iterdir()) == []


def _lora_file(path, preset: str, scale: int, corrupt: bool = False):
    p = preset_registry.get("fast-x2")
    model = p.build()
    factors = {n: (np.zeros((2, layer.fan_in), np.float32), np.zeros((layer.out_channels, 2), np.float32))
               for n, layer in lora_layers(model).items()}
    import torch

    lora = LoRA(preset, p.sha256, scale, 2, {n: (torch.from_numpy(a), torch.from_numpy(b)) for n, (a, b) in factors.items()})
    save_lora(lora, path)
    if corrupt:
        path.write_bytes(path.read_bytes()[:200])
    return path


def test_lora_for_another_preset(small_y4m, tmp_path):
    lora = _lora_file(tmp_path / "x4.lora", "fast-x4", 4)
    proc = run_hypersr("upscale", small_y4m, "-o", tmp_path / "o.y4m", "--lora", lora)
    assert_clean_error(proc, "fast-x4", "fast-x2")
    assert not (tmp_path / "o.y4m").exists()


def test_corrupt_lora(small_y4m, tmp_path):
    lora = _lora_file(tmp_path / "bad.lora", "fast-x2", 2, corrupt=True)
    proc = run_hypersr("upscale", small_y4m, "-o", tmp_path / "o.y4m", "--lora", lora)
    assert_clean_error(proc, "bad.lora")
    assert not (tmp_path / "o.y4m").exists()


def test_matching_lora_is_used(small_y4m, tmp_path):
    lora = _lora_file(tmp_path / "ok.lora", "fast-x2", 2)  # zero factors: output must equal the base model's
    a = run_hypersr("upscale", small_y4m, "-o", "-", "-q", "--lora", lora)
    b = run_hypersr("upscale", small_y4m, "-o", "-", "-q")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_unwritable_output(small_y4m, tmp_path):
    proc = run_hypersr("upscale", small_y4m, "-o", tmp_path / "no" / "such" / "dir" / "o.y4m")
    assert_clean_error(proc, "cannot write")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = run_hypersr("upscale", small_y4m, "-o", ro / "o.y4m")
        if proc.returncode != 0:  # root may write anywhere; then there is nothing to refuse
            assert_clean_error(proc, "cannot write")
            assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_missing_input(tmp_path):
    assert_clean_error(run_hypersr("upscale", tmp_path / "nope.y4m", "-o", tmp_path / "o.y4m"), "does not exist")


def test_broken_downstream_pipe_ends_quietly(tmp_path):
    src = ffmpeg_y4m(tmp_path / "in.y4m", size="64x48", frames=40)
    cmd = f"{HYPERSR} upscale {src} -o - -q | head -c 100 >/dev/null; echo ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=300)
    assert int(proc.stdout.split()[-1]) != 0
    assert b"Traceback" not in proc.stderr


def test_streams_frames_before_the_input_ends(tmp_path):
    """Output frames come out while the input is still open: memory is bounded by the window."""
    import threading

    data = ffmpeg_y4m(tmp_path / "in.y4m", size="64x48", frames=6).read_bytes()
    header, rest = data.split(b"\n", 1)
    frame_len = len(rest) // 6
    proc = subprocess.Popen([HYPERSR, "upscale", "-", "-o", "-", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = bytearray()
    first_frame = threading.Event()
    out_header_len = len(b"YUV4MPEG2 W128 H96 F25:1 Ip A1:1 C420jpeg XYSCSS=420JPEG\n")
    out_frame_len = len(b"FRAME\n") + 128 * 96 * 3 // 2

    def reader():
        while chunk := proc.stdout.read1(65536):
            got.extend(chunk)
            if len(got) >= out_header_len + out_frame_len:
                first_frame.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    proc.stdin.write(header + b"\n" + rest[: 3 * frame_len])  # three frames, stdin stays open
    proc.stdin.flush()
    try:
        assert first_frame.wait(120), proc.stderr.read1(4096) if proc.poll() is not None else "no output frame while input was open"
    finally:
        proc.stdin.write(rest[3 * frame_len :])
        proc.stdin.close()
        proc.wait(120)
        t.join(10)
    assert proc.returncode == 0
    assert len(read_all(bytes(got))[1]) == 6


def test_x4_preset(small_y4m, tmp_path):
    proc = run_hypersr("upscale", small_y4m, "-o", tmp_path / "o.y4m", "--preset", "fast-x4", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    h, frames = read_all((tmp_path / "o.y4m").read_bytes())
    assert (h.width, h.height, len(frames)) == (256, 192, 3)


def test_header_change_mid_stream(tmp_path):
    a = ffmpeg_y4m(tmp_path / "a.y4m", size="64x48", frames=2).read_bytes()
    b = ffmpeg_y4m(tmp_path / "b.y4m", size="80x48", frames=2).read_bytes()
    proc = run_hypersr("upscale", "-", "-o", "-", "-q", input_bytes=a + b)
    assert_clean_error(proc, "new y4m header after frame 2")
    assert len(read_all(proc.stdout)[1]) == 2
