"""The quality family's video model (`vsrt-x2`): the Video Super-Resolution Transformer (Cao et al., 2021)
over the pretrained SPAN backbone's per-frame features.

    every frame of the window -> SPAN's head and blocks (frame_features: the tail's share of the shallow
    features, and the deep features b_6), once per frame
    deep features of all T frames -> LayerNorm, 1x1 to `dim` channels -> layers x (STCSA, then BOFF) ->
    the centre frame's -> `merge` (1x1 back to SPAN's channels, starting at zero) -> times each pixel's
    spread over the centre frame's channels -> added to its own b_6 -> SPAN's tail (conv_2, fusion, upsampler)

At step 0 `merge` is zero, so the network *is* the single-frame SPAN, and training learns only what the
neighbouring frames add. The transformer's parts:
- STCSA (spatial-temporal convolutional self-attention): Q, K and V are three 3x3 convolutions of the
  feature maps of all T frames. Each map is cut into patches of `patch` x `patch` pixels, one token of
  C*patch*patch values per patch, and one attention head runs over the patches of all T frames. The
  result is folded back, passed through a 3x3 output conv and added to the input, then layer-normalised.
  The paper attends over whole frames; here attention runs inside `region` x `region` squares (the same
  square of every frame of the window), so that cost is linear in frame area as well as clip length.
- Spatio-temporal positional encoding: sinusoidal over t, y and x, a third of the channels each, added
  before Q and K. y and x are positions inside the attention square, so the encoding (and the network)
  is the same wherever a square falls in the frame.
- BOFF (bidirectional optical-flow feed-forward): a SPyNet-style pyramid flow network, trained with the
  model, estimates flow between neighbouring LR frames; a backward and a forward recurrent residual
  network propagate features along the window, each warping the previous state by the flow, and a 1x1
  conv fuses both directions. The last layer only needs the centre frame, so it propagates from each end
  of the window to the centre and estimates only the T-1 flows that this uses.

Every convolution outside the flow network is a LoRAConv2d, so clip LoRAs and the hypernet adapt it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..lora import LoRAConv2d
from ..losses import charbonnier
from .blocks import ResBlock, conv3x3
from .registry import register
from .span import SPAN


def positional_parts(frames: int, height: int, width: int, channels: int, region: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The encoding's three factors: t [frames, d], y [d, height], x [d, width] (d = channels/3), each as sin
    of d/2 frequencies then cos of the same, frequency k being 1 / 1000^(2k/d); y and x count inside the
    attention square."""
    if channels % 6:
        raise ValueError(f"positional encoding needs channels divisible by 6, not {channels}")
    d = channels // 3
    freq = 1000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d/2]

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [L] -> [d, L]
        angle = freq[:, None] * pos[None].float()
        return torch.cat([angle.sin(), angle.cos()])

    return encode(torch.arange(frames)).T.contiguous(), encode(torch.arange(height) % region), encode(torch.arange(width) % region)


def with_position(x: torch.Tensor, parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], n: int) -> torch.Tensor:
    """x [N*T, channels, H, W] plus the positional encoding: channels [0, d) get t's, [d, 2d) y's and [2d, 3d)
    x's, each broadcast over the other coordinates, so the [T, channels, H, W] encoding is never built (at
    540p that took longer than adding it)."""
    t_enc, y_enc, x_enc = (p.to(x) for p in parts)
    t, d = t_enc.shape
    _, c, h, w = x.shape
    x = x.reshape(n, t, c, h, w)
    return torch.cat([x[:, :, :d] + t_enc[None, :, :, None, None], x[:, :, d : 2 * d] + y_enc[None, None, :, :, None],
                      x[:, :, 2 * d :] + x_enc[None, None, :, None, :]], dim=2).reshape(n * t, c, h, w)


def positional_encoding(frames: int, height: int, width: int, channels: int, region: int) -> torch.Tensor:
    """[frames, channels, height, width]: the encoding with_position adds, built whole."""
    return with_position(torch.zeros(frames, channels, height, width), positional_parts(frames, height, width, channels, region), 1)


def layer_norm_2d(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of each pixel of [B, C, H, W]."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class STCSA(nn.Module):
    def __init__(self, channels: int, patch: int, region: int):
        super().__init__()
        if region % patch:
            raise ValueError(f"the attention region ({region}) must be a multiple of the patch size ({patch})")
        self.patch, self.region = patch, region
        self.q, self.k, self.v, self.out = (conv3x3(channels, channels) for _ in range(4))
        self.norm = nn.LayerNorm(channels)

    def tokens(self, x: torch.Tensor, n: int, t: int) -> torch.Tensor:
        """[N*T, C, H, W] -> [N * squares, T * patches per square, C*p*p] (H and W multiples of region)."""
        _, c, h, w = x.shape
        p, r = self.patch, self.region
        x = x.reshape(n, t, c, h // r, r // p, p, w // r, r // p, p)
        x = x.permute(0, 3, 6, 1, 4, 7, 2, 5, 8)  # n, sy, sx | t, py, px | c, y, x
        return x.reshape(n * (h // r) * (w // r), t * (r // p) ** 2, c * p * p)

    def untokens(self, x: torch.Tensor, n: int, t: int, c: int, h: int, w: int) -> torch.Tensor:
        p, r = self.patch, self.region
        x = x.reshape(n, h // r, w // r, t, r // p, r // p, c, p, p)
        x = x.permute(0, 3, 6, 1, 4, 7, 2, 5, 8)  # n, t, c | sy, py, y | sx, px, x
        return x.reshape(n * t, c, h, w)

    def forward(self, x: torch.Tensor, pos: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, n: int, t: int) -> torch.Tensor:
        qk_in = x if pos is None else with_position(x, pos, n)
        q, k, v = (self.tokens(f, n, t) for f in (self.q(qk_in), self.k(qk_in), self.v(x)))
        weights = torch.softmax(q @ k.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1)  # one head, all T frames
        y = self.untokens(weights @ v, n, t, *x.shape[1:])
        return layer_norm_2d(self.norm, x + self.out(y))


def flow_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample x at (pixel + flow): flow [B, 2, H, W] in pixels (x then y); outside the frame, the border."""
    h, w = x.shape[-2:]
    gy, gx = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device), torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij")
    px = (gx + flow[:, 0]) * (2 / max(w - 1, 1)) - 1
    py = (gy + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    return F.grid_sample(x, torch.stack([px, py], -1), mode="bilinear", padding_mode="border", align_corners=True)


class PyramidFlow(nn.Module):
    """SPyNet-style: coarse to fine, each level refines the upsampled flow from (reference, support warped by
    it, the flow). Flow from `ref` to `supp`: ref's pixel p matches supp at p + flow. The last conv of each
    level starts at zero, so an untrained network says "no motion"."""

    def __init__(self, levels: int = 3, width: int = 24):
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, width, 5, padding=2), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(width, 2, 3, padding=1))
            for _ in range(levels)
        )
        for level in self.levels:
            nn.init.zeros_(level[-1].weight)
            nn.init.zeros_(level[-1].bias)

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        refs, supps = [ref], [supp]
        for _ in range(len(self.levels) - 1):
            refs.append(F.avg_pool2d(refs[-1], 2))
            supps.append(F.avg_pool2d(supps[-1], 2))
        flow = torch.zeros_like(refs[-1][:, :2])
        for level, r, s in zip(self.levels, reversed(refs), reversed(supps)):
            if flow.shape[-1] != r.shape[-1]:
                flow = 2 * F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=False)
            flow = flow + level(torch.cat([r, flow_warp(s, flow), flow], 1))
        return flow


class Propagation(nn.Module):
    """One direction of BOFF: state = ResBlock(conv(frame features ++ warped previous state))."""

    def __init__(self, channels: int):
        super().__init__()
        self.merge = conv3x3(2 * channels, channels)
        self.block = ResBlock(channels)

    def forward(self, feat: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.block(F.relu(self.merge(torch.cat([feat, state], 1))))


class BOFF(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.backward_net, self.forward_net = Propagation(channels), Propagation(channels)
        self.fuse = LoRAConv2d(2 * channels, channels, 1)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, flow, frames: list[int], t: int) -> torch.Tensor:
        """x [N, T, C, H, W]; flow(a, b) gives the flow from frame a to frame b; returns the listed frames
        [N, len(frames), C, H, W]. Only the propagation that reaches those frames is computed. (t is passed
        as a Python int: under tracing for export, shapes are tensors.)"""
        back, fwd = {}, {}
        state = torch.zeros_like(x[:, 0])
        for i in range(t - 1, min(frames) - 1, -1):  # from the last frame back to the first one asked for
            state = self.backward_net(x[:, i], flow_warp(state, flow(i, i + 1)) if i < t - 1 else state)
            back[i] = state
        state = torch.zeros_like(x[:, 0])
        for i in range(max(frames) + 1):
            state = self.forward_net(x[:, i], flow_warp(state, flow(i, i - 1)) if i > 0 else state)
            fwd[i] = state
        out = [layer_norm_2d(self.norm, x[:, i] + self.fuse(torch.cat([back[i], fwd[i]], 1))) for i in frames]
        return torch.stack(out, 1)


class FeedForward(nn.Module):
    """The ablation without BOFF: the same place, a per-frame convolutional feed-forward, no flow."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = ResBlock(channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, flow, frames: list[int], t: int) -> torch.Tensor:
        n, _, c, h, w = x.shape
        sel = x[:, frames].reshape(-1, c, h, w)
        return layer_norm_2d(self.norm, self.block(sel)).reshape(n, len(frames), c, h, w)


@register("vsrt")
class VSRT(nn.Module):
    """Same interface as the other base models: window [N, T, 3, H, W] -> centre frame [N, 3, sH, sW].
    channels and blocks are the backbone's (SPAN's), dim the transformer's width; stcsa / boff / posenc switch
    the transformer's parts off for the ablation. The runtime may call frame_features once per frame and aggregate per window instead."""

    def __init__(self, scale: int = 2, window: int = 5, channels: int = 48, blocks: int = 6, dim: int = 24, layers: int = 1, patch: int = 4,
                 region: int = 16, flow_levels: int = 3, flow_width: int = 24, stcsa: bool = True, boff: bool = True, posenc: bool = True):
        super().__init__()
        if window % 2 != 1:
            raise ValueError("window must be odd (2k+1 frames)")
        self.scale, self.window, self.region = scale, window, region
        self.posenc = posenc and stcsa
        self.multiple = max(region, 2 ** (flow_levels - 1))  # the transformer pads frames to a multiple of this
        self.backbone = SPAN(scale, 1, channels, blocks)
        # LR pixels that reach a tile's output: the backbone's, an attention square and the flow's coarsest level
        self.receptive_radius = self.backbone.receptive_radius + self.multiple
        self.entry_norm = nn.LayerNorm(channels)  # SPAN's features are on a 0..255 scale
        self.entry = LoRAConv2d(channels, dim, 1)
        self.attention = nn.ModuleList(STCSA(dim, patch, region) if stcsa else nn.Identity() for _ in range(layers))
        self.feed_forward = nn.ModuleList(BOFF(dim) if boff else FeedForward(dim) for _ in range(layers))
        self.flow = PyramidFlow(flow_levels, flow_width) if boff else None
        self.merge = LoRAConv2d(dim, channels, 1)
        nn.init.zeros_(self.merge.weight)
        nn.init.zeros_(self.merge.bias)
        self.dim = dim
        self.transformer_dtype: torch.dtype | None = None  # its precision at run time (low_precision)

    def low_precision(self, dtype: torch.dtype) -> None:
        """Run the transformer (entry to merge) under autocast to `dtype`; the backbone's tail after it stays
        float32 (the backbone's blocks have their own low_precision)."""
        self.transformer_dtype = dtype

    @staticmethod
    def backbone_architecture(arch: dict) -> dict:
        """The architecture entry of the single-frame SPAN inside a vsrt architecture entry: the preset
        whose weights a training run may start the backbone from."""
        return {"type": "span", "scale": arch.get("scale", 2), "window": 1, "channels": arch.get("channels", 48), "blocks": arch.get("blocks", 6)}

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> the backbone's (tail share, deep features) per frame: what a window of frames shares."""
        return self.backbone.frame_features(frames)

    def aggregate(self, window: torch.Tensor, partial: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        """window [N, T, 3, H, W] (for the flow), the centre frame's tail share [N, C, H, W] and every frame's deep
        features [N, T, C, H, W] -> the centre frame upscaled [N, 3, sH, sW]."""
        if self.transformer_dtype is None:
            return self.backbone.reconstruct(partial, self.refined(window, deep))
        with torch.autocast(window.device.type, dtype=self.transformer_dtype):
            refined = self.refined(window, deep)
        return self.backbone.reconstruct(partial, refined.float())

    def refined(self, window: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        """aggregate's transformer: the centre frame's deep features [N, C, H, W] with what the window adds."""
        n, _, c, h, w = window.shape
        t = self.window  # a Python int, also when tracing for export
        centre = t // 2
        m = self.multiple
        ph, pw = (m - h % m) % m, (m - w % m) % m
        hp, wp = h + ph, w + pw
        x = self.entry(layer_norm_2d(self.entry_norm, deep.reshape(n * t, -1, h, w)))
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        lr = F.pad(window.reshape(n * t, c, h, w), (0, pw, 0, ph), mode="replicate").reshape(n, t, c, hp, wp)
        pos = positional_parts(t, hp, wp, self.dim, self.region) if self.posenc else None
        flows: dict[tuple[int, int], torch.Tensor] = {}

        def flow(a: int, b: int) -> torch.Tensor:
            if (a, b) not in flows:
                flows[a, b] = self.flow(lr[:, a], lr[:, b])
            return flows[a, b]

        last = len(self.attention) - 1
        for i, (attention, feed_forward) in enumerate(zip(self.attention, self.feed_forward)):
            x = x if isinstance(attention, nn.Identity) else attention(x, pos, n, t)
            wanted = [centre] if i == last else list(range(t))
            x = feed_forward(x.reshape(n, t, -1, hp, wp), flow, wanted, t).reshape(n * len(wanted), -1, hp, wp)
        # merge speaks in units of each pixel's spread over the centre frame's channels (what entry_norm divides
        # by): SPAN's features are on a 0..255 scale, where a unit change would be lost
        own = deep[:, centre]
        spread = own.var(1, keepdim=True, unbiased=False).add(self.entry_norm.eps).sqrt()
        return own + spread * self.merge(x)[..., :h, :w]

    def flow_loss(self, window: torch.Tensor) -> torch.Tensor:
        """Training's self-supervised signal for the flow network (its only other signal passes through `merge`,
        which starts at zero): each frame warped by the flow from its neighbour must look like that neighbour
        (Charbonnier), in both directions along the window, with a small penalty on the flow's roughness."""
        n, t, c, h, w = window.shape
        loss = window.new_zeros(())
        for a, b in [(i, i + 1) for i in range(t - 1)] + [(i + 1, i) for i in range(t - 1)]:
            f = self.flow(window[:, a], window[:, b])
            loss = loss + charbonnier(flow_warp(window[:, b], f), window[:, a])
            loss = loss + 0.01 * ((f[..., 1:, :] - f[..., :-1, :]).abs().mean() + (f[..., 1:] - f[..., :-1]).abs().mean())
        return loss / (2 * (t - 1))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = window.shape
        partial, deep = self.frame_features(window.reshape(n * t, c, h, w))
        partial = partial.reshape(n, t, -1, h, w)[:, self.window // 2]
        return self.aggregate(window, partial, deep.reshape(n, t, -1, h, w))
