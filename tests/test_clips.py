"""The clip generator moves the camera as asked, and multi-shot clips are what they say."""

from __future__ import annotations

import math

import numpy as np
import torch

from hypersr.training.clips import Camera, multi_shot_clip, render


def still(h=200, w=240, seed=0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_still_camera_gives_exact_crops():
    src = still()
    frames = render(src, Camera(centre=(100.5, 80.5)), frames=3, size=32)  # even size: centre between pixels
    crop = src[:, 80 - 15 : 80 + 17, 100 - 15 : 100 + 17]
    for f in frames:
        torch.testing.assert_close(f, crop, atol=1e-5, rtol=0)


def test_integer_pan_moves_by_whole_pixels():
    src = still()
    frames = render(src, Camera(centre=(100.5, 80.5), velocity=(2.0, -1.0)), frames=4, size=32)
    for k in range(1, 4):
        # frame k is frame 0 moved by (2k, -k): its content starts 2k columns right, k rows up
        torch.testing.assert_close(frames[k][:, k:, : 32 - 2 * k], frames[0][:, : 32 - k, 2 * k :], atol=1e-5, rtol=0)


def test_sub_pixel_pan_adds_up():
    src = still()
    frames = render(src, Camera(centre=(100.5, 80.5), velocity=(0.5, 0.0)), frames=5, size=32)
    torch.testing.assert_close(frames[2][:, :, :31], frames[0][:, :, 1:], atol=1e-5, rtol=0)  # 2 x 0.5 px = 1 px
    assert (frames[1] - frames[0]).abs().mean() > 0.01  # the half-pixel frame is new content


def test_rotation_and_zoom():
    src = still()
    cam = Camera(centre=(100.5, 80.5), rotation_rate=math.pi / 2)
    frames = render(src, cam, frames=2, size=32)
    torch.testing.assert_close(frames[1], torch.rot90(frames[0], k=1, dims=(1, 2)), atol=1e-4, rtol=0)
    smooth = torch.nn.functional.avg_pool2d(still()[None], 9, 1, 4)[0]  # zooming smooth content is ~exact
    zoomed = render(smooth, Camera(centre=(120.0, 100.0), zoom_rate=1.0), frames=2, size=32)[1]  # x2 magnification
    expected = torch.nn.functional.interpolate(render(smooth, Camera(centre=(120.0, 100.0)), 1, 16)[:, :, :, :], scale_factor=2,
                                               mode="bilinear", align_corners=False)[0]
    assert (zoomed - expected)[:, 4:-4, 4:-4].abs().mean() < 0.01


def test_multi_shot_clip_shapes_ranges_and_cuts():
    rng = np.random.default_rng(3)
    scene = torch.nn.functional.avg_pool2d(still(400, 480)[None], 31, 1, 15)[0]  # smooth: motion changes it little
    scene = (scene - scene.min()) / (scene.max() - scene.min())
    clip = multi_shot_clip(scene, rng, frames=24, size=64, shots=3)
    assert clip.frames.shape == (24, 3, 64, 64)
    assert clip.frames.min() >= 0 and clip.frames.max() <= 1
    assert torch.equal(clip.frames, (clip.frames * 255).round() / 255)  # 8-bit values
    assert clip.cuts == [8, 16] and sorted(clip.magnifications)[-1] == 1.0
    assert all(0.3 <= m <= 0.6 for m in sorted(clip.magnifications)[:-1])
    assert [clip.shot_of(t) for t in (0, 7, 8, 23)] == [0, 0, 1, 2]
    within = (clip.frames[1] - clip.frames[0]).abs().mean()
    across = (clip.frames[8] - clip.frames[7]).abs().mean()
    assert across > within  # a cut changes the picture more than a frame of camera motion
