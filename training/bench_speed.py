"""`hypersr bench speed`: pass two's speed per preset x backend x size, next to vs-mlrt on the same network
and the peers a user would pick instead (training/peers.py: Lanczos, nnedi3, LIIF).

Every row runs in its own child process (so its peak memory is its own), inside VapourSynth the way users
run it: hypersr.vsplugin.upscale, vs-mlrt's `core.ort.Model` on the ONNX that `hypersr export onnx`
writes for the same preset, or the peer's own VapourSynth function. Achieved GFLOP/s is the network's FLOPs per frame over the time per frame,
against the machine's measured peak (a large float32 matmul on the CPU, float16 on a GPU).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SIZES = {2: [(960, 540), (1920, 1080)], 4: [(480, 270)]}  # LR sizes: 540p->1080p, 1080p->2160p; 270p->1080p
PEERS = ("lanczos", "nnedi3")  # measured by default; LIIF takes minutes a frame on a CPU: --peer liif


def peak_gflops(device: str) -> float:
    import torch

    n = 4096 if device == "cuda" else 2048
    dtype = torch.float16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _noise_clip(w: int, h: int, length: int):
    import numpy as np
    import vapoursynth as vs

    from ..vsplugin.io import clip_from_array

    frames = np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)
    return vs.core.std.Loop(clip_from_array(frames), length // 2 + 1)[:length]


def _seconds_per_frame(out, frames: int) -> float:
    out.get_frame(0)  # warm-up (and, for ORT, session creation)
    t0 = time.perf_counter()
    for n in range(1, frames + 1):
        out.get_frame(n)
    return (time.perf_counter() - t0) / frames


def run_peer(name: str, w: int, h: int, frames: int, scale: int) -> dict:
    """A peer's pass (it has only one) in this process: `frames` frames after one warm-up frame."""
    from . import peers

    seconds = _seconds_per_frame(peers.upscale(name, _noise_clip(w, h, frames + 1), scale), frames)
    return {"ms_per_frame": seconds * 1e3, "fps": 1 / seconds, "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_row(preset: str, backend: str, w: int, h: int, frames: int) -> dict:
    """One measurement in this process: `frames` frames after one warm-up frame."""
    import numpy as np
    import torch
    import vapoursynth as vs

    from ..engine import preset_registry
    from ..engine.backends import backend_from_names, bf16_parts
    from ..vsplugin import upscale, window_clips

    p = preset_registry.get(preset)
    clip = _noise_clip(w, h, frames + 1)
    if backend == "vs-mlrt-ort":
        from ..engine.export import export_onnx

        onnx = os.path.join(tempfile.mkdtemp(), "model.onnx")
        export_onnx(onnx, preset)
        out = vs.core.ort.Model(window_clips(clip, p.window // 2), network_path=onnx, provider="CPU")
    else:
        options = backend_from_names("cpu", None, bf16=False) if backend == "cpu-fp32" else backend_from_names(backend, None)
        out = upscale(clip, preset=p, backend=options)
    seconds = _seconds_per_frame(out, frames)
    macs = preset_registry.complexity(p)["macs_per_input_pixel"]
    row = {"ms_per_frame": seconds * 1e3, "fps": 1 / seconds, "gflops": 2 * macs * w * h / seconds / 1e9}
    if backend in ("cpu", "cpu-fp32"):
        row["bf16"] = options.uses_bf16() and bool(bf16_parts(p.build()))
    gpu = backend in ("cuda", "trt")
    if gpu:
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        row["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if backend != "vs-mlrt-ort":  # pass one on the same frames
        from ..engine.analyse import Analyser

        analyser = Analyser(preset, device="cuda" if gpu else "cpu")
        lr = np.random.default_rng(1).random((frames + 1, 3, h, w), dtype=np.float32)
        analyser.update(lr[0])
        t0 = time.perf_counter()
        for f in lr[1:]:
            analyser.update(f)
        row["pass_one_fps"] = frames / (time.perf_counter() - t0)
    return row


def measure(preset: str, backend: str, w: int, h: int, frames: int, scale: int = 0) -> dict:
    """run_row (run_peer for backend "peer", by `scale`) in a child process (its own peak memory, a cold
    start like a user's)."""
    cmd = [sys.executable, "-m", "hypersr.training.bench_speed", preset, backend, str(w), str(h), str(frames), str(scale)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict], peaks: dict[str, float]) -> str:
    lines = ["| preset | backend | LR -> HR | ms/frame | fps | GFLOP/s (% of peak) | peak memory | pass one fps | vs vs-mlrt ORT |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['w']}x{r['h']} -> {r['w'] * r['scale']}x{r['h'] * r['scale']}"
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['backend']} | {size} | {r['error']} | | | | | |")
            continue
        peak = peaks.get("cuda" if r["backend"] in ("cuda", "trt") else "cpu")
        backend = {True: "cpu bf16", False: "cpu fp32"}[r["bf16"]] if "bf16" in r else r["backend"]
        pct = f" ({r['gflops'] / peak:.0%})" if peak and "gflops" in r else ""
        one = f"{r['pass_one_fps']:.1f}" if "pass_one_fps" in r else ""
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        flops = f"{r['gflops']:.1f}{pct}" if "gflops" in r else ""
        lines.append(f"| {r['preset']} | {backend} | {size} | {r['ms_per_frame']:.0f} | {r['fps']:.2f} | {flops} | "
                     f"{r['peak_memory_mb']:.0f} MB | {one} | {ratio} |")
    return "\n".join(lines)


def bench(presets_: list[str], backends: list[str], frames: int, sizes: dict | None = None, progress=print,
          peer_names: tuple[str, ...] = PEERS) -> tuple[list[dict], dict]:
    from ..engine import preset_registry
    from ..engine.backends import bf16_parts
    from . import peers

    peaks = {b: peak_gflops(b) for b in {"cpu", *(["cuda"] if {"cuda", "trt"} & set(backends) else [])}}
    rows = []
    for name in presets_:
        p = preset_registry.get(name)
        for w, h in (sizes or SIZES)[p.scale]:
            by_backend = {}
            same = "cpu" in backends and not bf16_parts(p.build())  # then cpu-fp32 would time the same thing again
            ort = ["vs-mlrt-ort"] if {"cpu", "cpu-fp32"} & set(backends) else []
            for backend in [*(b for b in backends if not (same and b == "cpu-fp32")), *ort]:
                r = {"preset": name, "backend": backend, "w": w, "h": h, "scale": p.scale, **measure(name, backend, w, h, frames)}
                by_backend[backend] = r
                rows.append(r)
                progress(f"  {name} {backend} {w}x{h}: " + (r.get("error") or f"{r['ms_per_frame']:.0f} ms/frame"))
            ort_row = by_backend.get("vs-mlrt-ort", {})
            for cpu in (by_backend.get("cpu", {}), by_backend.get("cpu-fp32", {})):
                if "fps" in ort_row and "fps" in cpu:
                    cpu["ratio"] = cpu["fps"] / ort_row["fps"]
    for scale in sorted({preset_registry.get(n).scale for n in presets_}):
        for w, h in (sizes or SIZES)[scale]:
            for name in dict.fromkeys([*peer_names, *peers.SLOW]):  # a slow peer not asked for: a row saying how
                if name not in peer_names:
                    r = {"error": f"not measured: slow on a CPU (minutes a frame); add --peer {name}"}
                elif not peers.installed(name):
                    r = {"error": peers.NOT_INSTALLED[name]}
                else:
                    r = measure(name, "peer", w, h, frames if name not in peers.SLOW else 1, scale)
                rows.append({"preset": name, "backend": "peer", "w": w, "h": h, "scale": scale, **r})
                progress(f"  {name} {w}x{h}: " + (r.get("error") or f"{r['ms_per_frame']:.0f} ms/frame"))
    return rows, peaks


ABLATION = {"full": {}, "without positional encoding": {"posenc": False}, "without STCSA": {"stcsa": False},
            "without BOFF (a per-frame feed-forward, no flow)": {"boff": False}, "without STCSA and BOFF": {"stcsa": False, "boff": False}}


def ablation(preset: str, w: int, h: int, frames: int) -> list[dict]:
    """CPU time per frame of a vsrt preset's network with its parts switched off, run as pass two runs it
    (CpuRunner; the backbone once per new frame, the transformer once per window), next to the backbone
    alone: timing only, so a part no trained network has (BOFF's replacement) runs with its initial weights."""
    import torch

    from ..engine import preset_registry
    from ..engine.backends import CpuRunner
    from ..engine.errors import HypersrError
    from ..engine.networks.registry import build_model, macs_per_lr_pixel
    from ..engine.networks.vsrt import VSRT

    arch = preset_registry.get(preset).card.architecture.as_dict()
    if arch.get("type") != "vsrt":
        raise HypersrError(f"--ablation times a vsrt preset's parts; {preset} is a {arch.get('type')} network")
    lr = torch.rand(frames + arch["window"], 3, h, w, generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.inference_mode():
        backbone = CpuRunner(build_model(VSRT.backbone_architecture(arch)).eval())
        backbone.forward(lr[:1, None], None)  # warm-up
        t0 = time.perf_counter()
        for n in range(frames):
            backbone.forward(lr[n : n + 1, None], None)
        base_ms = (time.perf_counter() - t0) / frames * 1e3
        rows.append({"variant": "the backbone alone, one frame at a time", "ms_per_frame": base_ms, "macs": macs_per_lr_pixel(backbone.model)})
        for name, change in ABLATION.items():
            runner = CpuRunner(build_model({**arch, **change}).eval())
            t = arch["window"]
            features = [runner.frame_features(lr[i : i + 1], None) for i in range(t)]

            def window(start: int, features=features, runner=runner, t=t):
                partial, deep = zip(*features[start : start + t])
                return runner.aggregate(lr[None, start : start + t], partial[t // 2], torch.stack(deep, 1), None)

            window(0)  # warm-up
            t0 = time.perf_counter()
            for n in range(1, frames + 1):
                features.append(runner.frame_features(lr[n + t - 1 : n + t], None))
                window(n)
            ms = (time.perf_counter() - t0) / frames * 1e3
            rows.append({"variant": name, "ms_per_frame": ms, "macs": macs_per_lr_pixel(runner.model), "over_backbone": ms / base_ms - 1})
    return rows


def ablation_table(rows: list[dict]) -> str:
    lines = ["| network | ms/frame | over the backbone | multiply-adds per LR pixel |", "|---|---|---|---|"]
    for r in rows:
        share = f"+{r['over_backbone']:.0%}" if "over_backbone" in r else ""
        lines.append(f"| {r['variant']} | {r['ms_per_frame']:.0f} | {share} | {r['macs']:,} |")
    return "\n".join(lines)


if __name__ == "__main__":  # one row, for measure()
    name, backend, w, h, frames, scale = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    from ..engine.runtime import keep_large_buffers

    keep_large_buffers()
    print(json.dumps(run_peer(name, w, h, frames, scale) if backend == "peer" else run_row(name, backend, w, h, frames)))
