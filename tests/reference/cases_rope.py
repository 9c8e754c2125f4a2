# SPDX-License-Identifier: MIT
"""Reference values for kexue/rope.hpp, computed in float64 with PyTorch.

The rotations are written the way the peer code writes them, not the way kexue computes them:
  * Interleaved: bert4keras `sinusoidal_embeddings` + `apply_rotary_position_embeddings`
    (sin at even, cos at odd slots, repeat each twice, x2 = [-x1, x0, -x3, x2, ...]), i.e. GPT-J's
    rotate_every_two;
  * Half: HF transformers' LLaMA `rotate_half` with emb = cat(freqs, freqs);
  * partial rotation: the first rotary_dim dims are rotated, the rest concatenated unchanged (HF / GPT-J);
  * frequency scaling: transcriptions of HF transformers' modeling_rope_utils (_compute_linear_scaling_rope_parameters,
    _compute_dynamic_ntk_parameters, _compute_yarn_parameters, _compute_llama3_parameters), in float64;
  * 2-D RoPE: SPEC 1.3's concat(sinusoidal(row, d/2, base), sinusoidal(col, d/2, base)) fed to the bert4keras rotation.
Case names: <case>/x (input rows), <case>/y (expected), plus <case>/positions, <case>/bias, ... where used.
"""
import math

import torch

from generate import rand


# ---- frequencies ---------------------------------------------------------------------------------------------

def default_inv_freq(r, base):
    return 1.0 / (base ** (torch.arange(0, r, 2, dtype=torch.float64) / r))


def linear_inv_freq(r, base, factor):
    return default_inv_freq(r, base) / factor


def dynamic_ntk_inv_freq(r, base, factor, original, seq_len):
    seq_len = max(seq_len, original)
    base = base * ((factor * seq_len / original) - (factor - 1)) ** (r / (r - 2))
    return default_inv_freq(r, base)


def yarn_get_mscale(scale, mscale=1.0):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(r, base, factor, original, beta_fast=32.0, beta_slow=1.0, truncate=True, mscale=None,
                  mscale_all_dim=None, attention_factor=None):
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)

    def find_correction_dim(num_rotations):
        return (r * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = find_correction_dim(beta_fast)
    high = find_correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, r - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(r // 2, dtype=torch.float64) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv, attention_factor


def llama3_inv_freq(r, base, factor, original, low_freq_factor=1.0, high_freq_factor=4.0):
    inv_freq = default_inv_freq(r, base)
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


# ---- rotations -----------------------------------------------------------------------------------------------

def bert4keras_sinusoidal(pos, inv_freq):
    """bert4keras sinusoidal_embeddings: [n, r] with sin at even and cos at odd slots."""
    angles = pos[:, None] * inv_freq[None, :]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(pos.shape[0], -1)


def bert4keras_apply(sinusoidal, x, amp=1.0):
    """bert4keras apply_rotary_position_embeddings on the first sinusoidal.shape[-1] dims."""
    r = sinusoidal.shape[-1]
    rot, rest = x[:, :r], x[:, r:]
    cos_pos = torch.repeat_interleave(sinusoidal[:, 1::2], 2, dim=-1) * amp
    sin_pos = torch.repeat_interleave(sinusoidal[:, 0::2], 2, dim=-1) * amp
    x2 = torch.stack([-rot[:, 1::2], rot[:, 0::2]], dim=-1).reshape(rot.shape)
    return torch.cat([rot * cos_pos + x2 * sin_pos, rest], dim=-1)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def hf_half_apply(pos, inv_freq, x, amp=1.0):
    """HF LLaMA: emb = cat(freqs, freqs); q * cos + rotate_half(q) * sin on the first rotary dims."""
    r = 2 * inv_freq.shape[0]
    freqs = pos[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos() * amp, emb.sin() * amp
    rot, rest = x[:, :r], x[:, r:]
    return torch.cat([rot * cos + rotate_half(rot) * sin, rest], dim=-1)


def apply(layout, pos, inv_freq, x, amp=1.0):
    if layout == "interleaved":
        return bert4keras_apply(bert4keras_sinusoidal(pos, inv_freq), x, amp)
    return hf_half_apply(pos, inv_freq, x, amp)


def generate(w):
    seed = 300

    # Plain, offset and partial rotation in both layouts; odd widths that are not multiples of the lanes.
    plain = [
        # name, layout, dim, rotary_dim (0 = all), rows, first_position, base
        ("inter64", "interleaved", 64, 0, 37, 0, 10000.0),
        ("inter40_off", "interleaved", 40, 0, 19, 100, 10000.0),
        ("inter6", "interleaved", 6, 0, 5, 3, 10000.0),
        ("half64_off", "half", 64, 0, 23, 7, 10000.0),
        ("half20", "half", 20, 0, 13, 1, 500000.0),
        ("inter_partial", "interleaved", 72, 24, 11, 5, 10000.0),   # GPT-J: rotary_dim < head size
        ("half_partial", "half", 80, 32, 9, 2, 10000.0),            # NeoX / Phi: partner i + rotary_dim/2
        ("half_partial_odd", "half", 45, 18, 6, 0, 10000.0),        # odd head size, pass-through tail
    ]
    for name, layout, dim, rot, n, first, base in plain:
        seed += 1
        r = rot or dim
        x = rand(n, dim, seed=seed, lo=-2, hi=2)
        pos = torch.arange(first, first + n, dtype=torch.float64)
        w.tensor(f"{name}/x", x)
        w.tensor(f"{name}/y", apply(layout, pos, default_inv_freq(r, base), x))
        w.scalar(f"{name}/first", first)

    # Explicit positions (packed batches: several sequences restarting at 0, and arbitrary positions).
    for name, layout, dim in [("pos_inter", "interleaved", 48), ("pos_half", "half", 48)]:
        seed += 1
        pos = torch.cat([torch.arange(0, 5), torch.arange(0, 3), torch.tensor([511, 17, 17, 250])]).double()
        x = rand(pos.shape[0], dim, seed=seed, lo=-2, hi=2)
        w.tensor(f"{name}/x", x)
        w.tensor(f"{name}/positions", pos)
        w.tensor(f"{name}/y", apply(layout, pos, default_inv_freq(dim, 10000.0), x))

    # RoPE + bias (SPEC 4): q = RoPE(W x + b); also with a pass-through tail that must get the bias too.
    for name, layout, dim, rot in [("bias_inter", "interleaved", 64, 0), ("bias_half_partial", "half", 40, 24)]:
        seed += 1
        r = rot or dim
        x = rand(15, dim, seed=seed, lo=-2, hi=2)
        b = rand(dim, seed=seed + 1000, lo=-1, hi=1)
        pos = torch.arange(4, 19, dtype=torch.float64)
        w.tensor(f"{name}/x", x)
        w.tensor(f"{name}/bias", b)
        w.tensor(f"{name}/y", apply(layout, pos, default_inv_freq(r, 10000.0), x + b[None, :]))

    # Frequency scaling (HF definitions), at explicit positions well past the original context.
    scalings = []
    scalings.append(("linear", "half", 64, 10000.0, linear_inv_freq(64, 10000.0, 4.0), 1.0, 2048,
                     dict(factor=4.0)))
    scalings.append(("dynamic", "half", 64, 10000.0, dynamic_ntk_inv_freq(64, 10000.0, 2.0, 512, 1500), 1.0, 1500,
                     dict(factor=2.0, original=512)))
    inv, att = yarn_inv_freq(64, 10000.0, 8.0, 4096)
    scalings.append(("yarn", "half", 64, 10000.0, inv, att, 20000, dict(factor=8.0, original=4096)))
    inv, att = yarn_inv_freq(64, 10000.0, 4.0, 2048, beta_fast=16.0, beta_slow=2.0, truncate=False, mscale=0.707,
                             mscale_all_dim=1.0)
    scalings.append(("yarn_deepseek", "interleaved", 64, 10000.0, inv, att, 9000,
                     dict(factor=4.0, original=2048, beta_fast=16.0, beta_slow=2.0, mscale=0.707, mscale_all_dim=1.0)))
    scalings.append(("llama3", "half", 128, 500000.0, llama3_inv_freq(128, 500000.0, 8.0, 8192), 1.0, 12000,
                     dict(factor=8.0, original=8192)))
    scalings.append(("llama3_custom", "interleaved", 64, 10000.0,
                     llama3_inv_freq(64, 10000.0, 4.0, 1024, low_freq_factor=2.0, high_freq_factor=8.0), 1.0, 4000,
                     dict(factor=4.0, original=1024)))
    for name, layout, dim, base, inv, att, max_pos, _ in scalings:
        seed += 1
        g = torch.Generator().manual_seed(seed)
        pos = torch.cat([torch.tensor([0, 1, max_pos - 1]), torch.randint(0, max_pos, (9,), generator=g)]).double()
        x = rand(pos.shape[0], dim, seed=seed, lo=-2, hi=2)
        w.tensor(f"{name}/x", x)
        w.tensor(f"{name}/positions", pos)
        w.tensor(f"{name}/inv_freq", inv)
        w.scalar(f"{name}/attention_factor", att)
        w.scalar(f"{name}/max_positions", max_pos)
        w.tensor(f"{name}/y", apply(layout, pos, inv, x, amp=att))
        if att != 1.0:
            w.tensor(f"{name}/y_unfolded", apply(layout, pos, inv, x, amp=1.0))

    # 2-D RoPE (SPEC 1.3): head 128, table dim 64, base 1000, patches of a 5-wide grid from patch 2.
    seed += 1
    width, first, n, half = 5, 2, 23, 64
    x = rand(n, 2 * half, seed=seed, lo=-2, hi=2)
    p = torch.arange(first, first + n)
    rows, cols = (p // width).double(), (p % width).double()
    inv = default_inv_freq(half, 1000.0)
    p2d = torch.cat([bert4keras_sinusoidal(rows, inv), bert4keras_sinusoidal(cols, inv)], dim=-1)
    # bert4keras's rotation over the concatenation rotates pairs (2i, 2i+1) inside each half.
    w.tensor("rope2d/x", x)
    w.tensor("rope2d/y", bert4keras_apply(p2d, x))
    w.tensor("rope2d/rows", rows)
    w.tensor("rope2d/cols", cols)
