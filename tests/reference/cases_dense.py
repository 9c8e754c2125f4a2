# SPDX-License-Identifier: MIT
"""Dense layers (kexue/dense.hpp): torch.nn.functional.linear with W given as [in, out] (torch's weight is its
transpose), F.silu for DenseActivation::Swish, and SwiGLU's silu(x W1) * (x W3) for dense_gated. Inputs are
multiples of 1/256 (exact in float32, short in the data file); expected outputs are computed in float64.
"""
import torch
import torch.nn.functional as F

# (name, m, in, out, bias, activation, gated); shapes cross the GEMM's 6-row and 16/32-column tiles, its 384-deep
# k blocks and the single-row (decoding) path.
CASES = [
    ("plain", 13, 40, 37, False, "none", False),
    ("bias_swish", 12, 400, 24, True, "swish", False),
    ("row", 1, 390, 70, True, "none", False),
    ("rows5_swiglu", 5, 64, 40, False, "swish", True),
    ("swiglu", 31, 48, 50, False, "swish", True),
    ("gated_bias", 7, 33, 17, True, "none", True),
]


def q(t):
    return (t * 256).round() / 256


def generate(w):
    g = torch.Generator().manual_seed(9984)
    for name, m, fin, fout, bias, act, gated in CASES:
        x = q(torch.randn(m, fin, generator=g)).float()
        wt = q(torch.randn(fin, fout, generator=g) / fin ** 0.5).float()
        b = q(torch.randn(fout, generator=g) * 0.5).float() if bias else None
        gate = q(torch.randn(m, fout, generator=g)).float() if gated else None
        w.tensor(f"{name}/x", x)
        w.tensor(f"{name}/w", wt)
        if bias:
            w.tensor(f"{name}/b", b)
        if gated:
            w.tensor(f"{name}/gate", gate)
        y = F.linear(x.double(), wt.double().t(), None if b is None else b.double())
        if act == "swish":
            y = F.silu(y)
        if gated:
            y = y * gate.double()
        w.tensor(f"{name}/out", y)
