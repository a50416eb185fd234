"""A PyTorch implementation of Cosmos-Tokenize1-CV8x8x8 (docs/tokenizer-t5.md §1), written for the tests under the
release's module names, so that its state dicts carry the release's keys (Appendix A); `write_release` traces it
into encoder.jit / decoder.jit the way the release was made (§3.1) and writes a mean_std.pt (§3.4)."""

import collections
import math
import os

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv3d(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride=1, time_stride=1, padding=0):
        super().__init__()
        self.time_pad = (kernel_size[0] - 1) + (1 - time_stride)
        self.spatial_pad = (padding,) * 4 + (0, 0)
        self.conv3d = nn.Conv3d(cin, cout, kernel_size, stride=(time_stride, stride, stride))

    def forward(self, x):
        x = torch.cat([x[:, :, :1].repeat(1, 1, self.time_pad, 1, 1), x], dim=2)
        return self.conv3d(F.pad(x, self.spatial_pad, mode="constant", value=0.0))


def pair(cin, cout):
    return nn.Sequential(CausalConv3d(cin, cout, (1, 3, 3), padding=1), CausalConv3d(cout, cout, (3, 1, 1)))


class CausalNormalize(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.GroupNorm(1, c, eps=1e-6, affine=True)

    def forward(self, x):  # time folded into batch
        b = x.shape[0]
        y = self.norm(x.transpose(1, 2).flatten(0, 1))
        return y.unflatten(0, (b, -1)).transpose(1, 2)


def swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = CausalNormalize(cin), pair(cin, cout)
        self.norm2, self.dropout, self.conv2 = CausalNormalize(cout), nn.Dropout(0.0), pair(cout, cout)
        self.nin_shortcut = CausalConv3d(cin, cout, (1, 1, 1)) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class Attn(nn.Module):
    def __init__(self, c, temporal):
        super().__init__()
        self.temporal, self.norm = temporal, CausalNormalize(c)
        self.q, self.k, self.v, self.proj_out = (CausalConv3d(c, c, (1, 1, 1)) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, t, hh, ww = x.shape
        perm = (0, 3, 4, 2, 1) if self.temporal else (0, 2, 3, 4, 1)  # tokens over T per pixel, or over HW per frame
        q, k, v = (m(h).permute(*perm).reshape(-1, t if self.temporal else hh * ww, c)
                   for m in (self.q, self.k, self.v))
        w = torch.bmm(q, k.transpose(1, 2)) * (int(c) ** (-0.5))
        if self.temporal:
            w = w.masked_fill(torch.tril(torch.ones_like(w)) == 0, float("-inf"))
        o = torch.bmm(F.softmax(w, dim=2), v)
        if self.temporal:
            o = o.reshape(b, hh, ww, t, c).permute(0, 4, 3, 1, 2)
        else:
            o = o.reshape(b, t, hh, ww, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(o)


class HybridDown(nn.Module):  # cosmos-predict1: conv1/conv2 only where needed (all three with `old`)
    def __init__(self, c, spatial, temporal, old=False):
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        self.conv1 = CausalConv3d(c, c, (1, 3, 3), stride=2) if spatial or old else nn.Identity()
        self.conv2 = CausalConv3d(c, c, (3, 1, 1), time_stride=2) if temporal or old else nn.Identity()
        self.conv3 = CausalConv3d(c, c, (1, 1, 1)) if spatial or temporal or old else nn.Identity()

    def forward(self, x):
        if not (self.spatial or self.temporal):
            return x
        if self.spatial:
            x = F.pad(x, (0, 1, 0, 1, 0, 0), mode="constant", value=0)
            x = self.conv1(x) + F.avg_pool3d(x, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        if self.temporal:
            x = torch.cat([x[:, :, :1], x], dim=2)
            x = self.conv2(x) + F.avg_pool3d(x, kernel_size=(2, 1, 1), stride=(2, 1, 1))
        return self.conv3(x)


class HybridUp(nn.Module):
    def __init__(self, c, spatial, temporal, old=False):
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        self.conv1 = CausalConv3d(c, c, (3, 1, 1)) if temporal or old else nn.Identity()
        self.conv2 = CausalConv3d(c, c, (1, 3, 3), padding=1) if spatial or old else nn.Identity()
        self.conv3 = CausalConv3d(c, c, (1, 1, 1)) if spatial or temporal or old else nn.Identity()

    def forward(self, x):
        if not (self.spatial or self.temporal):
            return x
        if self.temporal:
            f = 2 if x.shape[2] > 1 else 1
            x = x.repeat_interleave(f, dim=2)[:, :, f - 1:]
            x = self.conv1(x) + x
        if self.spatial:
            x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
            x = self.conv2(x) + x
        return self.conv3(x)


class Haar(nn.Module):
    """Patcher3D / UnPatcher3D as upstream: reflect pad, grouped stride-2 convs with the wavelet buffers."""

    def __init__(self, patch_size, inverse):
        super().__init__()
        self.patch_size, self.inverse = patch_size, inverse
        self.register_buffer("wavelets", torch.tensor([0.7071067811865476, 0.7071067811865476]))
        self.register_buffer("_arange", torch.arange(2))
        if not inverse:
            self.register_buffer("patch_size_buffer", patch_size * torch.ones([1], dtype=torch.int32))

    def filters(self, g, axis):
        shape, stride = [g, 1, 1, 1, 1], [1, 1, 1]
        shape[axis], stride[axis - 2] = 2, 2
        hl = self.wavelets.flip(0).reshape(1, 1, -1).repeat(g, 1, 1).reshape(shape)
        hh = (self.wavelets * ((-1) ** self._arange)).reshape(1, 1, -1).repeat(g, 1, 1).reshape(shape)
        return hl, hh, stride

    def dwt(self, x):
        g, xs = x.shape[1], [F.pad(x, (0, 1, 0, 1, 0, 1), mode="reflect")]
        for axis in (2, 3, 4):
            hl, hh, stride = self.filters(g, axis)
            xs = [F.conv3d(y, f, groups=g, stride=stride) for y in xs for f in (hl, hh)]
        return torch.cat(xs, dim=1) / (2 * torch.sqrt(torch.tensor(2.0)))

    def idwt(self, x):
        g, xs = x.shape[1] // 8, list(torch.chunk(x, 8, dim=1))
        for axis in (4, 3, 2):
            hl, hh, stride = self.filters(g, axis)
            xs = [F.conv_transpose3d(xs[2 * i], hl, groups=g, stride=stride)
                  + F.conv_transpose3d(xs[2 * i + 1], hh, groups=g, stride=stride) for i in range(len(xs) // 2)]
        return xs[0] * (2 * torch.sqrt(torch.tensor(2.0)))

    def forward(self, x):
        levels = int(math.log2(self.patch_size))
        if self.inverse:
            for _ in range(levels):
                x = self.idwt(x)
            return x[:, :, self.patch_size - 1:]
        x = torch.cat([x[:, :, :1].repeat_interleave(self.patch_size, dim=2), x[:, :, 1:]], dim=2)
        for _ in range(levels):
            x = self.dwt(x)
        return x


def level(blocks, name=None, resample=None):
    m = nn.Module()
    m.block, m.attn = nn.ModuleList(blocks), nn.ModuleList()
    if name:
        setattr(m, name, resample)
    return m


def mid(c):
    m = nn.Module()
    m.block_1, m.attn_1, m.block_2 = ResnetBlock(c, c), nn.Sequential(Attn(c, False), Attn(c, True)), ResnetBlock(c, c)
    return m


class Encoder(nn.Module):
    def __init__(self, cfg, old=False):
        super().__init__()
        ch, n, p = cfg.channels, len(cfg.channels_mult), cfg.patch_size
        self.patcher3d, self.conv_in = Haar(p, inverse=False), pair(cfg.in_channels * p**3, ch)
        self.down, cin = nn.ModuleList(), ch
        for i, m in enumerate(cfg.channels_mult):
            blocks = [ResnetBlock(cin if j == 0 else ch * m, ch * m) for j in range(cfg.num_res_blocks)]
            cin = ch * m
            down = HybridDown(cin, i < cfg.num_spatial_downs, i < cfg.num_temporal_downs, old) if i < n - 1 else None
            self.down.append(level(blocks, "downsample" if down else None, down))
        self.mid, self.norm_out, self.conv_out = mid(cin), CausalNormalize(cin), pair(cin, cfg.z_channels)

    def forward(self, x):
        h = self.conv_in(self.patcher3d(x))
        for lv in self.down:
            for b in lv.block:
                h = b(h)
            if hasattr(lv, "downsample"):
                h = lv.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg, old=False):
        super().__init__()
        ch, n, p = cfg.channels, len(cfg.channels_mult), cfg.patch_size
        cin = ch * cfg.channels_mult[-1]
        self.unpatcher3d, self.conv_in, self.mid = Haar(p, inverse=True), pair(cfg.z_channels, cin), mid(cin)
        self.up = nn.ModuleList()
        for i in reversed(range(n)):
            blocks = [ResnetBlock(cin if j == 0 else ch * cfg.channels_mult[i], ch * cfg.channels_mult[i])
                      for j in range(cfg.num_res_blocks + 1)]
            cin = ch * cfg.channels_mult[i]
            up = None
            if i != 0:
                i_rev = n - i - 1
                temporal = 0 < i_rev < cfg.num_temporal_downs + 1
                spatial = temporal or (i_rev < cfg.num_spatial_downs and cfg.num_spatial_downs > cfg.num_temporal_downs)
                up = HybridUp(cin, spatial, temporal, old)
            self.up.insert(0, level(blocks, "upsample" if up else None, up))
        self.norm_out, self.conv_out = CausalNormalize(cin), pair(cin, cfg.out_channels * p**3)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i in reversed(range(len(self.up))):
            for b in self.up[i].block:
                h = b(h)
            if hasattr(self.up[i], "upsample"):
                h = self.up[i].upsample(h)
        return self.unpatcher3d(self.conv_out(swish(self.norm_out(h))))


class IdentityDistribution(nn.Module):
    def forward(self, p):
        return p, (torch.tensor([0.0]), torch.tensor([0.0]))


def torch_networks(cfg, seed=0, old=False):
    torch.manual_seed(seed)
    enc = nn.Sequential(collections.OrderedDict(
        encoder=Encoder(cfg, old), quant_conv=CausalConv3d(cfg.z_channels, cfg.latent_channels, (1, 1, 1)),
        distribution=IdentityDistribution()))
    dec = nn.Sequential(collections.OrderedDict(
        post_quant_conv=CausalConv3d(cfg.latent_channels, cfg.z_channels, (1, 1, 1)), decoder=Decoder(cfg, old)))
    for m in (enc, dec):
        for name, p in m.named_parameters():
            if ".norm.weight" in name:
                p.data = 1 + 0.2 * torch.randn_like(p)
            elif ".norm.bias" in name:
                p.data = 0.2 * torch.randn_like(p)
    return enc.eval(), dec.eval()


def write_release(path, cfg, seed=0, old=False):
    """encoder.jit / decoder.jit traced at [1, 3, 17, 32, 32] (upstream traces once and generalises) + mean_std.pt."""
    os.makedirs(path, exist_ok=True)
    enc, dec = torch_networks(cfg, seed, old)
    x = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(enc, x), os.path.join(path, "encoder.jit"))
        torch.jit.save(torch.jit.trace(dec, enc(x)[0]), os.path.join(path, "decoder.jit"))
    g = torch.Generator().manual_seed(seed)
    mean_std = (0.3 * torch.randn(256, generator=g), 0.5 + torch.rand(256, generator=g))  # 16 ch x 16 frames
    torch.save(mean_std, os.path.join(path, "mean_std.pt"))
    return enc, dec
