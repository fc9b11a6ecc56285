"""`hypersr batch` with real files and a real ffmpeg: both passes and the encode, audio and subtitles
copied, resumption after the process is killed, one bad file among good ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import HYPERSR, SAMPLE, assert_clean_error, probe, run_hypersr


def make_clip(path, seconds: float = 0.8, source: str | None = None, subtitles: bool = False):
    """A short clip with AAC audio (and an SRT subtitle track): the sample film or a test pattern."""
    video = ["-i", str(source)] if source else ["-f", "lavfi", "-i", "testsrc2=size=128x72:rate=25"]
    scale = ["-vf", "scale=128:72"] if source else []
    cmd = ["ffmpeg", "-nostdin", "-v", "error", *video, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    maps = ["-map", "0:v", "-map", "1:a"]
    if subtitles:
        srt = path.with_suffix(".srt")
        srt.write_text("1\n00:00:00,000 --> 00:00:00,500\nhello\n")
        cmd += ["-i", str(srt)]
        maps += ["-map", "2:s"]
    cmd += [*maps, *scale, "-t", str(seconds), "-c:v", "libx264", "-c:a", "aac", "-c:s", "srt" if subtitles else "copy", "-y", str(path)]
    subprocess.run(cmd, check=True)
    return path


def decoded(path) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"]
    return np.frombuffer(subprocess.run(cmd, capture_output=True, check=True).stdout, np.uint8)


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "season"
    src.mkdir()
    make_clip(src / "e01.mkv", source=SAMPLE, subtitles=True)
    make_clip(src / "e02.mp4")
    return src


def test_batch_end_to_end(folder, tmp_path):
    job = tmp_path / "job"
    proc = run_hypersr("batch", folder, "-o", tmp_path / "out" / "{stem}.x2.mkv", "--job-dir", job, "--ffmpeg-args", "-c:v ffv1")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"hypersr batch" in proc.stderr and b"pass two" in proc.stderr  # progress for the batch and each file
    e01 = probe(tmp_path / "out" / "e01.x2.mkv")
    # srt: FFmpeg's SubRip decoder
    assert [(s["codec_type"], s["codec_name"]) for s in e01] == [("video", "ffv1"), ("audio", "aac"), ("subtitle", "srt")]
    assert (e01[0]["width"], e01[0]["height"], e01[0]["frames"]) == (256, 144, 20)
    record = json.loads((job / "job.json").read_text())
    assert [e["state"] for e in record["entries"]] == ["done", "done"]
    # the encoded video is exactly what `hypersr upscale --lora` makes from the same file and LoRA
    lora = job / "loras" / f"{record['entries'][0]['fingerprint']}.lora"
    assert run_hypersr("upscale", folder / "e01.mkv", "--lora", lora, "-o", tmp_path / "ref.y4m", "-q").returncode == 0
    assert np.array_equal(decoded(tmp_path / "out" / "e01.x2.mkv"), decoded(tmp_path / "ref.y4m"))


def test_batch_resumes_after_being_killed(folder, tmp_path):
    out, job = tmp_path / "out", tmp_path / "job"
    cmd = [HYPERSR, "batch", str(folder), "-o", str(out / "{stem}.mkv"), "--job-dir", str(job), "--ffmpeg-args", "-c:v ffv1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it (and its ffmpeg) as soon as the first file is done
        try:
            states = [e["state"] for e in json.loads((job / "job.json").read_text())["entries"]]
        except (OSError, ValueError):
            states = []
        if states and states[0] == "done":
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "e01.mkv").exists() and not (out / "e02.mkv").exists()  # no half-written output under a final name
    first = (out / "e01.mkv").stat().st_mtime_ns
    proc2 = subprocess.run(cmd, capture_output=True, timeout=300)
    assert proc2.returncode == 0, proc2.stderr.decode()
    assert (out / "e01.mkv").stat().st_mtime_ns == first  # the finished file was not redone
    assert probe(out / "e02.mkv")[0]["frames"] == 20
    assert sorted(p.name for p in out.iterdir()) == ["e01.mkv", "e02.mkv"]  # no partial files left


def test_one_bad_file_does_not_stop_the_others(folder, tmp_path):
    (folder / "e03.mkv").write_bytes(b"not a video at all")
    args = ["batch", folder, "-o", tmp_path / "out" / "{stem}.mkv", "--job-dir", tmp_path / "job", "--ffmpeg-args", "-c:v ffv1"]
    line = assert_clean_error(run_hypersr(*args), "1 of 3 files failed", "e03.mkv")
    assert "again" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["e01.mkv", "e02.mkv"]
    (folder / "e03.mkv").unlink()
    make_clip(folder / "e03.mkv")
    assert run_hypersr(*args).returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["e01.mkv", "e02.mkv", "e03.mkv"]


def test_batch_bad_arguments(folder, tmp_path):
    assert_clean_error(run_hypersr("batch", tmp_path / "nothing*.mkv", "-o", tmp_path / "{stem}.mkv"), "matches no file")
    assert_clean_error(run_hypersr("batch", folder, "-o", tmp_path / "same.mkv", "--job-dir", tmp_path / "j"), "same output")
    assert_clean_error(run_hypersr("batch", folder, "-o", tmp_path / "{nope}.mkv", "--job-dir", tmp_path / "j"), "template")
    assert_clean_error(run_hypersr("batch", folder, "-o", tmp_path / "o" / "{stem}.mkv", "--job-dir", tmp_path / "j",
                                   "--ffmpeg-args", "-c:v no-such-encoder"), "ffmpeg failed")
    assert [p.name for p in (tmp_path / "o").glob("*")] == []  # nothing half-written, no partial file left
