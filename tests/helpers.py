"""Test helpers: real ffmpeg-made y4m streams and the real `hypersr` console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "bbb_640x360.mp4"
HYPERSR = str(Path(sys.executable).parent / "hypersr")


def ffmpeg_y4m(path: Path, pix_fmt: str = "yuv420p", size: str = "96x64", frames: int = 5, extra: list[str] | None = None) -> Path:
    """A y4m file of FFmpeg's moving colour test pattern."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration=10", "-frames:v", str(frames)]
    cmd += (extra or []) + ["-pix_fmt", pix_fmt, "-strict", "-1", "-f", "yuv4mpegpipe", "-y", str(path)]
    subprocess.run(cmd, check=True)
    return path


def run_hypersr(*args, stdin=None, input_bytes=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([HYPERSR, *map(str, args)], stdin=stdin, input=input_bytes, capture_output=True, timeout=300, **kw)


def assert_clean_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Non-zero exit, a one-line `hypersr: error:` message containing `words`, and no traceback."""
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("hypersr: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    return lines[0]


def random_lora(model, rank=4, seed=0) -> dict:
    """Random LoRA factors (A, B) for every adapted layer of a model."""
    import torch

    from hypersr.engine.lora import lora_layers

    g = torch.Generator().manual_seed(seed)
    return {
        name: (torch.randn(rank, layer.fan_in, generator=g) * 0.1, torch.randn(layer.out_channels, rank, generator=g) * 0.1)
        for name, layer in lora_layers(model).items()
    }


def preset_lora(p, **overrides):
    """A LoRA made for preset p (a preset_registry.Preset); overrides change its metadata."""
    from hypersr.engine.lora import LoRA

    fields = dict(preset=p.name, base_sha256=p.sha256, upscale_factor=p.scale, rank=4, factors=random_lora(p.build()), strength=0.5)
    fields.update(overrides)
    return LoRA(**fields)


def probe(path) -> list[dict]:
    """A media file's streams as FFmpeg's libraries (PyAV) see them; video streams are decoded to count frames."""
    import av

    with av.open(str(path)) as container:
        found = [{"codec_type": s.type, "codec_name": s.codec_context.name, "width": getattr(s.codec_context, "width", None),
                  "height": getattr(s.codec_context, "height", None), "pix_fmt": getattr(s.codec_context, "pix_fmt", None)}
                 for s in container.streams]
    for i, info in enumerate(found):
        if info["codec_type"] == "video":
            with av.open(str(path)) as container:
                info["frames"] = sum(1 for _ in container.decode(video=i))
    return found
