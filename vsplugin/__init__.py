"""VapourSynth functions for .vpy scripts:

    from hypersr import vsplugin as hsr
    rgb = core.resize.Bicubic(src, format=vs.RGBS, matrix_in_s="709")
    lora = hsr.analyse(rgb, cache="movie.lora")  # pass one: reads the whole clip once, then reuses the cache
    out = hsr.upscale(rgb, lora=lora)            # pass two: x2 with the default preset

torch is imported only when a function is called, so importing this module costs nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import vapoursynth as vs

from ..engine.errors import HypersrError

core = vs.core

PAST_END = "HypersrPastEnd"  # set by streaming sources on requests beyond the last frame


def error_message(e: vs.Error, context: str = "") -> str:
    """A vapoursynth.Error as one line. When a Python frame callback raised, VapourSynth puts the whole
    traceback in the message: keep its last line. hypersr's own errors give their text alone; any other
    error is prefixed with `context` (e.g. "processing failed")."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown VapourSynth error"
    kind, sep, text = last.partition(": ")
    if sep and kind.startswith("hypersr.") and kind.endswith("Error"):
        return text
    return f"{context}: {last}" if context else last


def window_clips(clip: vs.VideoNode, k: int = 1) -> list[vs.VideoNode]:
    """Clips shifted by -k..k frames, clip ends repeating: frame n of clip j is frame n+j-k.

    Also the input for an exported ONNX model in vs-mlrt: core.ort.Model(window_clips(rgb), "model.onnx")."""
    n = clip.num_frames
    shifted = []
    for off in range(-k, k + 1):
        d = min(abs(off), n - 1)
        if off < 0 and d:
            shifted.append(clip[0] * d + clip[: n - d])
        elif off > 0 and d:
            shifted.append(clip[d:] + clip[-1] * d)
        else:
            shifted.append(clip)
    return shifted


def _window_frames(frames: list[vs.VideoFrame], k: int) -> list[vs.VideoFrame]:
    """Stop the window at scene changes and at the stream's end: the nearest frame repeats instead."""
    win = list(frames)
    for j in range(k - 1, -1, -1):  # backwards from the centre
        inner = win[j + 1]
        if inner.props.get("_SceneChangePrev", 0) or win[j].props.get(PAST_END, 0):
            win[j] = inner
    for j in range(k + 1, 2 * k + 1):
        inner = win[j - 1]
        if inner.props.get("_SceneChangeNext", 0) or win[j].props.get(PAST_END, 0):
            win[j] = inner
    return win


def _check_rgb(clip, func: str) -> None:
    if not isinstance(clip, vs.VideoNode):
        raise vs.Error(f"hypersr.{func}: clip must be a VideoNode")
    if clip.format is None or clip.width == 0 or clip.height == 0:
        raise vs.Error(f"hypersr.{func}: variable-format or variable-size clips are not supported; resize to one format first")
    if clip.format.id not in (vs.RGBS, vs.RGBH):
        raise vs.Error(
            f"hypersr.{func}: clip is {clip.format.name}, expected RGBS or RGBH; convert first, e.g. "
            'core.resize.Bicubic(clip, format=vs.RGBS, matrix_in_s="709")'
        )


def _frame_array(f: vs.VideoFrame):
    import numpy as np

    return np.stack([np.asarray(f[p], dtype=np.float32) for p in range(3)])


TRIM_EVERY = 32  # frames between returns of freed memory to the system (engine.runtime.release_free_memory)


def read_frames(clip: vs.VideoNode, total: int | None = None, progress: bool = True, desc: str = "hypersr analyse", position: int | None = None):
    """The clip's frames as [3, H, W] float32 arrays, in order, up to `total` or a PAST_END marker."""
    from tqdm import tqdm

    from ..engine.runtime import release_free_memory

    limit = clip.num_frames if total is None else total
    with tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, disable=not progress, dynamic_ncols=True,
              position=position, leave=position is None) as bar:
        for n, f in enumerate(clip.frames(prefetch=max(2, core.num_threads), close=True)):
            if n >= limit or f.props.get(PAST_END, 0):
                break
            yield _frame_array(f)
            bar.update()
            if n % TRIM_EVERY == TRIM_EVERY - 1:
                release_free_memory()


def _cache_problem(path: Path, clip: vs.VideoNode, preset: str | None, refine: int) -> str | None:
    """Why the LoRA cached at `path` is not the one for this clip and these settings (None: it is)."""
    from ..engine import preset_registry
    from ..engine.analyse import clip_fingerprint, fingerprint_indices, frame_digest
    from ..engine.lora import load_lora

    try:
        lora = load_lora(path)
    except HypersrError as e:
        return f"cache {path} is unreadable ({e})"
    p = preset_registry.get(preset)
    hypernet_sha = (p.card.get("hypernet") or {}).get("weights", {}).get("sha256")
    if (lora.preset, lora.upscale_factor, lora.base_sha256) != (p.name, p.scale, p.sha256):
        return f"cache {path} was made for preset {lora.preset} (x{lora.upscale_factor}), not {p.name} (x{p.scale}) with the installed weights"
    if lora.made_by.get("hypernet_sha256") != hypernet_sha or lora.made_by.get("refine") != refine:
        return f"cache {path} was made by another hypernet or refine setting (refine={lora.made_by.get('refine')})"
    n = clip.num_frames
    digests = {i: frame_digest(_frame_array(clip.get_frame(i))) for i in fingerprint_indices(n)}
    if lora.clip_fingerprint != clip_fingerprint(n, clip.width, clip.height, digests):
        return f"cache {path} was made for another clip"
    return None


def analyse(
    clip: vs.VideoNode,
    cache: str | None = None,
    preset: str | None = None,
    refine: int = 0,
    device_index: int | None = None,
    device: str | None = None,
    progress: bool = True,
):
    """Pass one: read every frame of an RGBS / RGBH clip once and return its LoRA (for upscale(lora=...)).

    cache: a LoRA file. When it holds the LoRA for this clip, preset and refine setting it is returned at
    once; otherwise the clip is analysed and the file (re)written atomically, with a one-line notice when
    an existing file is replaced. refine: steps of self-supervised test-time training (0 = the hypernet's
    prediction alone). Progress goes to stderr.
    """
    from ..engine.analyse import analyse_frames
    from ..engine.files import check_writable
    from ..engine.lora import load_lora, save_lora

    _check_rgb(clip, "analyse")
    if device_index is not None:
        device = f"cuda:{device_index}"
    try:
        if cache is not None:
            check_writable(cache)
        if cache is not None and Path(cache).exists():
            problem = _cache_problem(Path(cache), clip, preset, refine)
            if problem is None:
                return load_lora(cache)
            print(f"hypersr.analyse: {problem}; analysing again", file=sys.stderr)
        lora = analyse_frames(read_frames(clip, progress=progress), preset, refine, device, (clip.width, clip.height))
        if cache is not None:
            save_lora(lora, cache)
        return lora
    except HypersrError as e:
        raise vs.Error(f"hypersr.analyse: {e}") from None


def upscale(
    clip: vs.VideoNode,
    lora=None,
    preset: str | None = None,
    device_index: int | None = None,
    num_streams: int = 1,
    trt: bool = False,
    trt_cache_dir: str | None = None,
    tile: int | None = None,
    tile_pad: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    cuda_graphs: bool = False,
) -> vs.VideoNode:
    """Upscale an RGBS / RGBH clip by the preset's scale; frame n sees frames n-k..n+k.

    lora: a LoRA file path (from `hypersr analyse`) or a loaded LoRA. device_index: the CUDA GPU to use;
    by default the first GPU when there is one, else the CPU (device="cpu" forces the CPU). backend:
    auto, cpu, cuda or trt (trt=True is the same as backend="trt"; engines are cached in trt_cache_dir).
    num_streams: frames in flight at once (on a GPU, one CUDA stream each). cuda_graphs: replay the
    network as a CUDA graph (backend cuda). tile / tile_pad: process frames in tiles of tile x tile LR
    pixels that overlap by tile_pad (default: the network's receptive radius, 21 for the quality presets,
    else 16), for frames that do not fit in GPU memory; for the fast and quality presets the output is the
    same. Frame properties of each source frame are kept.
    """
    import numpy as np

    from ..engine.runtime import Upscaler

    _check_rgb(clip, "upscale")
    if trt:
        backend = "trt"
    if device_index is not None:
        device = f"cuda:{device_index}"
    try:
        engine = Upscaler(preset, lora, device=device, backend=backend, num_streams=num_streams, tile=tile, tile_pad=tile_pad,
                          frame_size=(clip.width, clip.height), trt_cache_dir=trt_cache_dir, cuda_graphs=cuda_graphs)
        engine.check_size(clip.width, clip.height)
    except HypersrError as e:
        raise vs.Error(f"hypersr.upscale: {e}") from None

    k, s = engine.window // 2, engine.scale
    out_blank = core.std.BlankClip(clip, width=clip.width * s, height=clip.height * s, keep=True)
    sources = window_clips(clip, k)

    def infer(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        *window, blank = f
        centre = window[k]
        fout = blank.copy()
        fout.props.update(centre.props)
        if centre.props.get(PAST_END, 0):
            return fout  # nobody will use it; do not spend the model on it
        win = _window_frames(window, k)
        frames = np.empty((len(win), 3, clip.height, clip.width), np.float32)  # one copy of the window
        for t, fr in enumerate(win):
            for p in range(3):
                np.copyto(frames[t, p], np.asarray(fr[p]), casting="unsafe")  # RGBH: half -> float
        result = engine(frames)
        for p in range(3):
            np.copyto(np.asarray(fout[p]), result[p], casting="unsafe")
        return fout

    return core.std.ModifyFrame(out_blank, sources + [out_blank], infer)
