"""`hypersr batch --ray` on a real local Ray cluster (a head and a second node on this machine, loopback
only): the same LoRA and the same frames as one machine, and a killed worker does not spoil the result."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HYPERSR, SAMPLE, run_hypersr
from test_batch import decoded, make_clip

from hypersr.engine.lora import load_lora

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common], check=True, env=env, capture_output=True)
    try:
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], check=True, env=env, capture_output=True)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, check=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("films")
    make_clip(src / "a.mkv", seconds=1.2, source=SAMPLE)
    make_clip(src / "b.mp4")
    return src


def batch(folder, out, job, *extra):
    proc = run_hypersr("batch", folder, "-o", out / "{stem}.mkv", "--job-dir", job, "--ffmpeg-args", "-c:v ffv1", *extra)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads((job / "job.json").read_text())["entries"]


@pytest.fixture(scope="module")
def single_machine(folder, tmp_path_factory):
    base = tmp_path_factory.mktemp("single")
    return base / "out", base / "job", batch(folder, base / "out", base / "job")


def assert_same_results(single_machine, out, job):
    s_out, s_job, _ = single_machine
    for entry in json.loads((job / "job.json").read_text())["entries"]:
        a = load_lora(s_job / "loras" / f"{entry['fingerprint']}.lora")
        b = load_lora(job / "loras" / f"{entry['fingerprint']}.lora")
        assert a.clip_fingerprint == b.clip_fingerprint and a.made_by == b.made_by
        for name in a.factors:
            for x, y in zip(a.factors[name], b.factors[name]):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
        name = Path(entry["output"]).name
        assert np.array_equal(decoded(s_out / name), decoded(out / name)), name


def test_ray_batch_equals_one_machine(cluster, folder, single_machine, tmp_path):
    entries = batch(folder, tmp_path / "out", tmp_path / "job", "--ray", cluster)
    assert [e["state"] for e in entries] == ["done", "done"]
    assert_same_results(single_machine, tmp_path / "out", tmp_path / "job")
    assert not list((tmp_path / "job" / "segments").rglob("*.mkv"))  # lossless intermediates are cleaned up


def test_ray_batch_survives_a_killed_worker(cluster, folder, single_machine, tmp_path):
    out, job = tmp_path / "out", tmp_path / "job"
    cmd = [HYPERSR, "batch", str(folder), "-o", str(out / "{stem}.mkv"), "--job-dir", str(job), "--ffmpeg-args", "-c:v ffv1", "--ray", cluster]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        busy = [p for p in _ray_workers() if _cpu_seconds(p) > 1.0]  # a worker in the middle of its work
        if busy:
            killed = int(busy[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    err = proc.communicate(timeout=600)[1].decode()
    assert killed is not None, "no busy worker was seen to kill"
    assert proc.returncode == 0, err
    assert_same_results(single_machine, out, job)


def _ray_workers() -> list[str]:
    """PIDs of the processes Ray titles `ray::Worker...` (our actors)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(b"ray::Worker"):
                pids.append(d.name)
        except OSError:
            pass
    return pids


def _cpu_seconds(pid: str) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0
