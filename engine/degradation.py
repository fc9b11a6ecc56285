"""The model of real sources: one degradation per clip, the same for each of its frames, as a real source
has one camera, one scaler, one noise and one encode. Training draws from it (training/degradation.py),
the benchmarks score its fixed chains, and pass one's refine on a real-source preset degrades the clip's
own frames once more the way its declared SOURCE_KIND degrades.

    HR clip -> optical blur -> downscale by the preset's scale -> noise -> 4:2:0 chroma -> codec -> LR

- blur: Gaussian, isotropic or anisotropic (sigmas in HR pixels, rotated by theta), or none;
- downscaler: bicubic with and without antialiasing, bilinear, area, Lanczos (3 lobes, antialiased)
  or point (aliased);
- noise: Gaussian on luma and on chroma (sigma in 0..1 units), a new pattern per frame or one static
  pattern for the whole clip (grain);
- chroma: 4:2:0 subsampling and back (always so when a codec runs: it encodes yuv420p);
- codec: a real encoder through PyAV (FFmpeg's libraries), run on the LR clip as a video so that its
  inter-frame artefacts are real: H.264 (libx264, CRF), MPEG-2 (constant quantiser) or MJPEG
  (constant quantiser).

`sample()` draws the training mixture, the BI degradation (antialiased bicubic, nothing else) among it;
CHAINS are the named, fixed degradations the real-source benchmark scores. SOURCE_KINDS split the mixture
into what a user can tell about their source: clean (BI), the codec that encoded it, aliased
(point-sampled), blur-noise (blurred or noisy, no codec).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .bi import bi_downscale, quantise_8bit

DOWNSCALERS = ("bicubic-aa", "bicubic", "bilinear", "area", "lanczos", "point")
CODECS = {"h264": ("libx264", "yuv420p"), "mpeg2": ("mpeg2video", "yuv420p"), "mjpeg": ("mjpeg", "yuvj420p")}
# BT.601 full-range YCbCr: what the codecs' yuv420p (via swscale) and the chroma step work in
_RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC_TO_RGB = torch.linalg.inv(_RGB_TO_YCC)


@dataclass(frozen=True)
class Degradation:
    """One clip's degradation. Its fields are what the hypernet's auxiliary head and the analysis of the
    memory compare against (to_dict)."""

    blur: tuple[float, float, float] | None = None  # (sigma_x, sigma_y, theta) in HR pixels
    downscaler: str = "bicubic-aa"
    noise: float = 0.0  # luma sigma, 0..1 units
    chroma_noise: float = 0.0
    static_noise: bool = False
    chroma420: bool = False
    codec: str | None = None  # h264, mpeg2, mjpeg
    quality: int = 0  # H.264 CRF, or the MPEG-2 / MJPEG quantiser (qscale)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_bi(self) -> bool:
        return self == Degradation()


BI = Degradation()

# The real-source benchmark's chains (name -> degradation): fixed, so every run scores the same inputs.
CHAINS: dict[str, Degradation] = {
    "bi": BI,
    "h264-crf23": Degradation(codec="h264", quality=23),
    "h264-crf33": Degradation(codec="h264", quality=33),
    "mpeg2-q8": Degradation(downscaler="bicubic", codec="mpeg2", quality=8),
    "mjpeg-q6": Degradation(downscaler="bilinear", codec="mjpeg", quality=6),
    "blur-noise": Degradation(blur=(1.2, 1.2, 0.0), noise=5 / 255, chroma_noise=3 / 255),
    "lanczos-grain-h264": Degradation(downscaler="lanczos", noise=4 / 255, static_noise=True, codec="h264", quality=26),
    "point-h264": Degradation(downscaler="point", codec="h264", quality=20),
    "aniso-area-mpeg2": Degradation(blur=(1.8, 0.6, 0.6), downscaler="area", chroma420=True, codec="mpeg2", quality=5),
}


def _mild(rng: np.random.Generator, low: float, high: float) -> float:
    """A value in [low, high], mild ones more often (density falling towards `high`), as in real sources."""
    return float(low + (high - low) * rng.random() ** 2)


def sample(rng: np.random.Generator) -> Degradation:
    """A training clip's degradation: a fifth are the clean BI case, the rest a random chain whose
    strengths lean mild. (A first run with uniform strengths, 70 % blurred and 60 % noisy clips, lost
    3-8 dB on clean input after 1,000 steps: the network learnt to sharpen and denoise everything.)"""
    if rng.random() < 0.2:
        return BI
    blur = None
    if rng.random() < 0.5:
        if rng.random() < 0.6:
            s = _mild(rng, 0.2, 2.5)
            blur = (s, s, 0.0)
        else:
            blur = (_mild(rng, 0.2, 2.5), _mild(rng, 0.2, 2.5), float(rng.uniform(0, math.pi)))
    noisy = rng.random() < 0.4
    noise = _mild(rng, 0, 10 / 255) if noisy else 0.0
    chroma_noise = _mild(rng, 0, 10 / 255) if noisy and rng.random() < 0.5 else 0.0
    codec = rng.choice(["h264", "h264", "h264", "mpeg2", "mjpeg", "none", "none"])
    quality = {"h264": int(rng.integers(18, 39)), "mpeg2": int(rng.integers(2, 16)), "mjpeg": int(rng.integers(2, 16)), "none": 0}[codec]
    return Degradation(blur=blur, downscaler=str(rng.choice(DOWNSCALERS)), noise=noise, chroma_noise=chroma_noise,
                       static_noise=bool(noisy and rng.random() < 0.3), chroma420=bool(codec != "none" or rng.random() < 0.5),
                       codec=None if codec == "none" else str(codec), quality=quality)


# --- the operations ------------------------------------------------------------------------------

def gaussian_kernel(sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel [k, k], its axes sigma_x, sigma_y rotated by theta."""
    radius = max(1, math.ceil(3 * max(sigma_x, sigma_y)))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    y, x = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).float()


def blur(frames: torch.Tensor, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """[..., 3, H, W] blurred by the Gaussian (edges reflected)."""
    k = gaussian_kernel(sigma_x, sigma_y, theta)
    shape = frames.shape
    x = frames.reshape(-1, 1, *shape[-2:])
    pad = k.shape[-1] // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < min(shape[-2:]) else "replicate")
    return F.conv2d(x, k[None, None]).reshape(shape)


def _lanczos_weights(in_size: int, out_size: int, a: int = 3) -> torch.Tensor:
    """[out, in] Lanczos-a resampling matrix for downscaling (the kernel stretched by the factor: antialiased)."""
    factor = in_size / out_size
    centres = (torch.arange(out_size, dtype=torch.float64) + 0.5) * factor - 0.5
    x = (torch.arange(in_size, dtype=torch.float64)[None] - centres[:, None]) / factor
    w = torch.where(x.abs() < a, torch.sinc(x) * torch.sinc(x / a), torch.zeros_like(x))
    return (w / w.sum(1, keepdim=True)).float()


def downscale(frames: torch.Tensor, scale: int, method: str) -> torch.Tensor:
    """[..., 3, H, W] -> [..., 3, H/scale, W/scale] with one of DOWNSCALERS."""
    shape = frames.shape
    h, w = shape[-2] // scale, shape[-1] // scale
    x = frames.reshape(-1, *shape[-3:])
    if method == "bicubic-aa":
        out = bi_downscale(x, scale)
    elif method in ("bicubic", "bilinear"):
        out = F.interpolate(x, size=(h, w), mode=method, antialias=False, align_corners=False)
    elif method == "area":
        out = F.interpolate(x, size=(h, w), mode="area")
    elif method == "point":
        out = x[..., scale // 2 :: scale, scale // 2 :: scale][..., :h, :w]
    elif method == "lanczos":
        out = torch.einsum("oh,nchw,pw->ncop", _lanczos_weights(shape[-2], h), x, _lanczos_weights(shape[-1], w))
    else:
        raise ValueError(f"unknown downscaler {method!r}; one of {', '.join(DOWNSCALERS)}")
    return out.reshape(*shape[:-2], h, w)


def to_ycc(rgb: torch.Tensor) -> torch.Tensor:
    ycc = torch.einsum("ij,...jhw->...ihw", _RGB_TO_YCC, rgb)
    return ycc + torch.tensor([0.0, 0.5, 0.5]).view(3, 1, 1)


def to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", _YCC_TO_RGB, ycc - torch.tensor([0.0, 0.5, 0.5]).view(3, 1, 1))


def add_noise(clip: torch.Tensor, luma: float, chroma: float, static: bool, rng: np.random.Generator) -> torch.Tensor:
    """[T, 3, H, W] RGB plus Gaussian noise of sigma `luma` on Y and `chroma` on Cb, Cr; one pattern for
    every frame when `static` (grain), else a new one per frame."""
    if luma <= 0 and chroma <= 0:
        return clip
    shape = (1 if static else clip.shape[0], 3, *clip.shape[-2:])
    noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) * torch.tensor([luma, chroma, chroma]).view(3, 1, 1)
    return to_rgb(to_ycc(clip) + noise)


def chroma_420(clip: torch.Tensor) -> torch.Tensor:
    """Chroma halved in both directions (averaging) and brought back (bilinear), luma untouched."""
    ycc = to_ycc(clip)
    y, c = ycc[:, :1], ycc[:, 1:]
    h, w = c.shape[-2:]
    small = F.interpolate(c, size=(-(-h // 2), -(-w // 2)), mode="area")
    return to_rgb(torch.cat([y, F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)], 1))


def encode(clip: torch.Tensor, codec: str, quality: int) -> torch.Tensor:
    """[T, 3, h, w] RGB in 0..1 through a real encoder and decoder (PyAV), as a 25 fps video."""
    import av

    name, pix_fmt = CODECS[codec]
    t, _, h, w = clip.shape
    even = F.pad(clip, (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else clip  # 4:2:0 needs even sizes
    frames = (even.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream(name, rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.thread_count = 1  # the same bytes on every machine and run
        if codec == "h264":
            # x264's macroblock tree gave a different first frame in about 1 run of 15 on small frames (64x64)
            stream.options = {"crf": str(quality), "preset": "fast", "x264-params": "mbtree=0"}
        else:  # a constant quantiser, as ffmpeg's -q:v
            stream.codec_context.qmin = stream.codec_context.qmax = quality
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=pix_fmt, threads=1)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buf.seek(0)
    with av.open(buf) as inp:
        inp.streams.video[0].codec_context.thread_count = 1
        decoded = np.stack([frame.to_ndarray(format="rgb24", threads=1) for frame in inp.decode(video=0)])
    if len(decoded) != t:
        raise RuntimeError(f"{codec} gave back {len(decoded)} of {t} frames")
    return torch.from_numpy(decoded[:, :h, :w]).permute(0, 3, 1, 2).float() / 255


quantise = quantise_8bit


def apply(hr: torch.Tensor, scale: int, d: Degradation, rng: np.random.Generator) -> torch.Tensor:
    """One clip [T, 3, H, W] (HR, 0..1) -> its LR clip [T, 3, H/scale, W/scale], 8-bit quantised."""
    x = hr
    if d.blur is not None:
        x = blur(x, *d.blur)
    x = downscale(x, scale, d.downscaler).clamp(0, 1)
    x = add_noise(x, d.noise, d.chroma_noise, d.static_noise, rng).clamp(0, 1)
    if d.codec is not None:
        return encode(x, d.codec, d.quality)  # 8-bit 4:2:0 already
    if d.chroma420:
        x = chroma_420(x)
    return quantise(x)


SOURCE_KINDS = ("clean", "h264", "mpeg2", "mjpeg", "aliased", "blur-noise")


def kind_of(d: Degradation) -> str:
    """Which of SOURCE_KINDS a degradation belongs to: clean (BI), aliased (point-sampled, with a codec
    or not), the codec that encoded it, else blur-noise (blurred, resampled or noisy, no codec)."""
    if d.is_bi:
        return "clean"
    if d.downscaler == "point":
        return "aliased"
    return d.codec if d.codec is not None else "blur-noise"


def sample_where(keep, rng: np.random.Generator) -> Degradation:
    """A draw from the mixture (sample), not BI, for which keep(degradation) holds."""
    while (d := sample(rng)).is_bi or not keep(d):
        pass
    return d


def sample_kind(kind: str, rng: np.random.Generator) -> Degradation:
    """A draw from the mixture restricted to one of SOURCE_KINDS (clean: BI)."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r}; one of {', '.join(SOURCE_KINDS)}")
    return BI if kind == "clean" else sample_where(lambda d: kind_of(d) == kind, rng)
