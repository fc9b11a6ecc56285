"""Opening video files in VapourSynth and converting between YUV and the models' RGB.

Colour handling follows what encoders expect: the matrix, range and chroma siting come from the
source's frame properties; where a source leaves the matrix unspecified, HD (width >= 1280 or
height >= 720) means BT.709 and anything smaller BT.601.
"""

from __future__ import annotations

import vapoursynth as vs

from ..engine.errors import HypersrError

core = vs.core

MATRIX_709, MATRIX_601, MATRIX_UNSPECIFIED = 1, 6, 2


# Newer cores name the range `_Range` (1 = full, 0 = limited); older ones `_ColorRange` (0 = full, 1 = limited).
_NEW_RANGE = hasattr(vs, "RANGE_FULL")


def range_props(full: bool) -> dict:
    return {"_Range": int(full)} if _NEW_RANGE else {"_ColorRange": int(not full)}


def is_full_range(props) -> bool:
    if "_Range" in props:
        return int(props["_Range"]) == 1
    return int(props.get("_ColorRange", 1)) == 0


def default_matrix(width: int, height: int) -> int:
    return MATRIX_709 if width >= 1280 or height >= 720 else MATRIX_601


def open_video(path: str) -> vs.VideoNode:
    """Any video file FFmpeg can decode, through vapoursynth-bestsource."""
    if not hasattr(core, "bs"):
        raise HypersrError("reading video files needs the vapoursynth-bestsource plugin: pip install vapoursynth-bestsource")
    try:
        return core.bs.VideoSource(path)
    except vs.Error as e:
        raise HypersrError(f"cannot open {path} as video ({str(e).strip().splitlines()[-1]}); pass a y4m stream or another video file") from None


def source_matrix(clip: vs.VideoNode) -> int:
    """The YUV matrix a clip's first frame declares, or the HD/SD default when it declares none."""
    m = clip.get_frame(0).props.get("_Matrix", MATRIX_UNSPECIFIED)
    return default_matrix(clip.width, clip.height) if m in (MATRIX_UNSPECIFIED, 0, 3) else m


def to_rgb(clip: vs.VideoNode, fmt: str = "RGBS", matrix: int | None = None) -> vs.VideoNode:
    """YUV, gray or RGB -> RGB in the given format, honouring the clip's range and chroma siting."""
    target = getattr(vs, fmt)
    if clip.format.color_family == vs.RGB:
        return core.resize.Point(clip, format=target)
    if clip.format.color_family == vs.GRAY:
        gray = core.resize.Point(clip, format=vs.GRAYS)  # limited-range Y becomes 0..1
        rgb = core.std.RemoveFrameProps(core.std.ShufflePlanes(gray, [0, 0, 0], vs.RGB), "_Matrix")
        return core.resize.Point(rgb, format=target)
    # A frame's _Matrix property outranks resize's matrix_in argument, so the choice is set as the property.
    clip = core.std.SetFrameProps(clip, _Matrix=matrix if matrix is not None else source_matrix(clip))
    return core.resize.Bicubic(clip, format=target)


def clip_from_array(frames, fps: tuple[int, int] = (25, 1)) -> vs.VideoNode:
    """[T, 3, H, W] float32 RGB (numpy) -> an RGBS clip."""
    import numpy as np

    frames = np.ascontiguousarray(frames, dtype=np.float32)
    t, _, h, w = frames.shape
    blank = core.std.BlankClip(format=vs.RGBS, width=w, height=h, length=t, fpsnum=fps[0], fpsden=fps[1], keep=True)

    def fill(n, f):
        fout = f.copy()
        for p in range(3):
            np.copyto(np.asarray(fout[p]), frames[n, p])
        return fout

    return core.std.ModifyFrame(blank, blank, fill)


def clip_to_array(clip: vs.VideoNode):
    """An RGBS clip -> [T, 3, H, W] float32 (numpy)."""
    import numpy as np

    clip = core.resize.Point(clip, format=vs.RGBS) if clip.format.id != vs.RGBS else clip
    out = np.empty((clip.num_frames, 3, clip.height, clip.width), np.float32)
    for n, f in enumerate(clip.frames(close=True)):
        for p in range(3):
            out[n, p] = np.asarray(f[p])
    return out
