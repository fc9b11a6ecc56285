"""VapourSynth functions for .vpy scripts:

    from hypersr import vsplugin as hsr
    rgb = core.resize.Bicubic(src, format=vs.RGBS, matrix_in_s="709")
    lora = hsr.analyse(rgb, cache="movie.lora")  # pass one: reads the whole clip once, then reuses the cache
    out = hsr.upscale(rgb, lora=lora)            # pass two: x2 with the default preset
    out = hsr.upscale(rgb, lora=lora, backend=hsr.Backend.CUDA(num_streams=2))

The passes themselves are in passes.py; this module checks a script's arguments and turns errors into
vapoursynth.Error. torch is imported only when a function is called, so importing this module costs nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import vapoursynth as vs

from ..engine.backends import Backend
from ..engine.errors import HypersrError
from .passes import frame_array, window_clips

__all__ = ["Backend", "analyse", "upscale", "window_clips"]

def _cache_problem(path: Path, clip: vs.VideoNode, preset: str | None, refine: int, source_kind: str) -> str | None:
    """Why the LoRA cached at `path` is not the one for this clip and these settings (None: it is)."""
    from ..engine import preset_registry
    from ..engine.analyse import clip_fingerprint, fingerprint_indices, frame_digest
    from ..engine.lora import load_lora

    try:
        lora = load_lora(path)
    except HypersrError as e:
        return f"cache {path} is unreadable ({e})"
    p = preset_registry.get(preset)
    hypernet_sha = p.card.hypernet.weights.sha256 if p.card.has_hypernet else None
    if (lora.preset, lora.upscale_factor, lora.base_sha256) != (p.name, p.scale, p.sha256):
        return f"cache {path} was made for preset {lora.preset} (x{lora.upscale_factor}), not {p.name} (x{p.scale}) with the installed weights"
    if lora.made_by.get("hypernet_sha256") != hypernet_sha or lora.made_by.get("refine") != refine:
        return f"cache {path} was made by another hypernet or refine setting (refine={lora.made_by.get('refine')})"
    if refine and lora.made_by.get("source_kind", "clean") != source_kind:
        return f"cache {path} was refined for another kind of source ({lora.made_by.get('source_kind', 'clean')})"
    n = clip.num_frames
    digests = {i: frame_digest(frame_array(clip.get_frame(i)).astype("float32")) for i in fingerprint_indices(n)}
    if lora.clip_fingerprint != clip_fingerprint(n, clip.width, clip.height, digests):
        return f"cache {path} was made for another clip"
    return None


def analyse(clip: vs.VideoNode, cache: str | None = None, preset: str | None = None, refine: int = 0, backend=None, progress: bool = True,
            source_kind: str | None = None):
    """Pass one: read every frame of an RGBS / RGBH clip once and return its LoRA (for upscale(lora=...)).

    cache: a LoRA file. When it holds the LoRA for this clip, preset and refine setting it is returned at
    once; otherwise the clip is analysed and the file (re)written atomically, with a one-line notice when
    an existing file is replaced. refine: steps of self-supervised test-time training (0 = the hypernet's
    prediction alone). source_kind: what the source went through, which refine on a real-source preset
    needs: "clean", "h264", "mpeg2", "mjpeg", "aliased" (point-resized) or "blur-noise". backend: where the
    hypernet runs (Backend.CPU() or Backend.CUDA(device_index=...); default: the GPU when there is one).
    Progress goes to stderr.
    """
    from ..engine.analyse import checked_refine, checked_source_kind
    from ..engine.backends import as_backend
    from ..engine.files import check_writable
    from ..engine.lora import load_lora, save_lora
    from .passes import analyse_clip, check_rgb

    try:
        check_rgb(clip)
        refine = checked_refine(preset, refine)  # before a cache made by an older hypersr could be reused
        kind = checked_source_kind(preset, refine, source_kind)
        device = str(as_backend(backend).device())
        if cache is not None:
            check_writable(cache)
        if cache is not None and Path(cache).exists():
            problem = _cache_problem(Path(cache), clip, preset, refine, kind)
            if problem is None:
                return load_lora(cache)
            print(f"hypersr.analyse: {problem}; analysing again", file=sys.stderr)
        lora = analyse_clip(clip, preset, refine, device, progress=progress, source_kind=source_kind)
        if cache is not None:
            save_lora(lora, cache)
        return lora
    except HypersrError as e:
        raise vs.Error(f"hypersr.analyse: {e}") from None


def upscale(clip: vs.VideoNode, lora=None, preset: str | None = None, backend=None, tile: int | None = None,
            tile_pad: int | None = None) -> vs.VideoNode:
    """Upscale an RGBS / RGBH clip by the preset's scale; frame n sees frames n-k..n+k.

    lora: a LoRA file path (from `hypersr analyse`) or a loaded LoRA. backend: Backend.CPU(num_streams, bf16),
    Backend.CUDA(device_index, num_streams, cuda_graphs) or Backend.TRT(device_index, num_streams,
    cache_dir); default: CUDA on the first GPU when there is one, else the CPU. num_streams: frames in
    flight at once (on a GPU, one CUDA stream each). bf16: on the CPU, SPAN's blocks in bf16 (None: where the
    CPU has bf16 instructions; False: all fp32). tile / tile_pad: process frames in tiles of tile x tile
    LR pixels that overlap by tile_pad (default: the network's receptive radius, 21 for the quality
    presets, else 16), for frames that do not fit in GPU memory; for the fast and quality presets the
    output is the same. Frame properties of each source frame are kept.
    """
    from .passes import upscale_clip, upscaler_for

    try:
        return upscale_clip(clip, upscaler_for(clip, preset, lora, backend, tile, tile_pad))
    except HypersrError as e:
        raise vs.Error(f"hypersr.upscale: {e}") from None
