# SPDX-License-Identifier: MIT
"""Reference bits for the 16-bit conversions (kexue/half.hpp): torch's `.to(torch.float16 / torch.bfloat16)`.

Every value is a raw bit pattern written as an integer (float32 bits < 2^32 and 16-bit patterns are exact in the
Writer's float64 text), so NaN payloads, signed zeros and subnormals survive the text format.
  narrow/f32     float32 bits, every class: normals over the whole exponent range, float subnormals, exact ties
                 of both formats (even and odd kept bit), +-0, +-inf, NaNs of both signs and many payloads,
                 fp16 overflow (around 65504 / 65520 / 65536) and values around fp16's smallest subnormal 2^-24
                 and smallest normal 2^-14
  narrow/f16, narrow/bf16   the 16-bit results
  widen_f16/h, widen_f16/f32; widen_bf16/h, widen_bf16/f32   16-bit patterns (every exponent, several mantissas,
                 both signs, signalling NaNs) and their float32 bits
"""
import numpy as np
import torch


def _f32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def _bits32(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.int64)


def _narrow_inputs():
    g = np.random.default_rng(1313)
    b = []
    # Random normals over every exponent, both signs.
    for e in range(1, 255):
        m = g.integers(0, 1 << 23, size=6, dtype=np.int64)
        b += list((e << 23) | m)
        b += list((1 << 31) | (e << 23) | m[:2])
    # Float subnormals: edges and random.
    b += [1, 2, 3, 0x7FFF, 0x8000, 0x8001, 0x18000, 0x10000, 0x7FFFFF, 0x400000, 0x7F8000, 0x7F7FFF]
    b += list(g.integers(1, 1 << 23, size=64, dtype=np.int64))
    b += [x | (1 << 31) for x in b[-40:]]
    # bf16 ties: low 16 bits exactly 0x8000, kept bit even and odd; and one ulp either side.
    for e in (1, 60, 126, 127, 128, 200, 254):
        for hi in (0x00, 0x01, 0x7E, 0x7F):
            base = (e << 23) | (hi << 16)
            b += [base | 0x8000, base | 0x7FFF, base | 0x8001]
    # fp16 ties in the normal range: low 13 bits exactly 0x1000.
    for e in range(113, 143):
        for m10 in (0, 1, 2, 0x3FE, 0x3FF):
            base = (e << 23) | (m10 << 13)
            b += [base | 0x1000, base | 0x0FFF, base | 0x1001]
    # Zeros, infinities, the largest float.
    b += [0, 1 << 31, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x80800000]
    # NaNs: quiet, signalling, every payload position, both signs.
    nans = [0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0x7FA00000, 0x7F812345, 0x7FBFFFFF, 0x7FC00001, 0x7FFFE000,
            0x7F802000, 0x7FC02000, 0x7F80FFFF, 0x7FFF8000]
    b += nans + [x | (1 << 31) for x in nans]
    b += [0x7F800000 | (1 << k) for k in range(23)]
    # fp16 overflow: around 65504 (max), 65520 (the tie that rounds to inf), 65536.
    for v in (65504.0, 65505.0, 65519.0, 65519.996, 65520.0, 65536.0, 1e5, 3.4e38, 65488.0, 65496.0, 65512.0):
        x = int(_bits32(np.float32(v)))
        b += [x - 1, x, x + 1, x | (1 << 31)]
    # Around fp16's smallest subnormal 2^-24 and smallest normal 2^-14 (and the subnormal ties k + 1/2).
    for v in (2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -24, 2.5 * 2.0 ** -24, 2.0 ** -26, 2.0 ** -14, 2.0 ** -15,
              (1023.5) * 2.0 ** -24, 1023.0 * 2.0 ** -24, 511.5 * 2.0 ** -24, 2.0 ** -14 - 2.0 ** -25):
        x = int(_bits32(np.float32(v)))
        b += [x - 1, x, x + 1, x | (1 << 31)]
    for k in range(0, 1024, 37):
        x = int(_bits32(np.float32((k + 0.5) * 2.0 ** -24)))
        b += [x - 1, x, x + 1]
    # Values whose bf16 rounding carries into the exponent or into inf.
    b += [0x3F7FFFFF, 0x3F7F8000, 0x7F7F8000, 0x7F7F7FFF, 0xFF7F8000]
    return np.array(b, dtype=np.int64) & 0xFFFFFFFF


def _to16(x, dtype):
    return torch.from_numpy(x).to(dtype).view(torch.int16).numpy().astype(np.int64) & 0xFFFF


def _widen_inputs(nan_exp_mask):
    hs = []
    for sign in (0, 0x8000):
        for hi in range(0, 1 << 10):  # sign + exponent + the top mantissa bits, for fp16; sampled for bf16
            for lo in (0, 1, 0x2A, 0x3F):
                hs.append(sign | (hi << 6) | lo)
    return np.array(sorted(set(hs)), dtype=np.int64)


def generate(w):
    bits = _narrow_inputs()
    x = _f32(bits.astype(np.uint32))
    # Long enough that torch's vectorised conversion runs (every length gives the same bits in torch 1.13).
    w.tensor("narrow/f32", bits.astype(np.float64))
    w.tensor("narrow/f16", _to16(x, torch.float16).astype(np.float64))
    w.tensor("narrow/bf16", _to16(x, torch.bfloat16).astype(np.float64))
    for name, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        h = _widen_inputs(0)
        t = torch.from_numpy(h.astype(np.uint16).view(np.int16)).view(dtype)
        f = t.to(torch.float32).view(torch.int32).numpy().astype(np.int64) & 0xFFFFFFFF
        w.tensor(f"widen_{name}/h", h.astype(np.float64))
        w.tensor(f"widen_{name}/f32", f.astype(np.float64))
