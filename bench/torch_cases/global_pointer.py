# SPDX-License-Identifier: MIT
"""GlobalPointer scores (bench_global_pointer) against the PyTorch einsum formulation with masks:
9 heads, n = 512, head_size 64, fp32, from projected q/k, RoPE included (bert4keras semantics, SPEC 2.2)."""
import torch

from _case import Case

HEADS, N, D = 9, 512, 64


def rope_tables(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    omega = 10000.0 ** (-2.0 * torch.arange(d // 2, dtype=torch.float32) / d)
    ang = pos * omega
    cos = torch.cos(ang).repeat_interleave(2, -1)[None, :, None, :]  # [1, n, 1, d]
    sin = torch.sin(ang).repeat_interleave(2, -1)[None, :, None, :]
    return cos, sin


def apply_rope(x, cos, sin):
    x2 = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape(x.shape)
    return x * cos + x2 * sin


def gp_setup():
    q = torch.rand(1, N, HEADS, D) * 2 - 1   # [batch, n, heads, d]: the fused projection's layout
    k = torch.rand(1, N, HEADS, D) * 2 - 1
    pad = torch.ones(1, N, dtype=torch.bool)
    cos, sin = rope_tables(N, D)
    triu = torch.triu(torch.ones(N, N, dtype=torch.bool))
    ninf = torch.tensor(float("-inf"))

    def run():
        qr = apply_rope(q, cos, sin)
        kr = apply_rope(k, cos, sin)
        logits = torch.einsum("bmhd,bnhd->bhmn", qr, kr) / D ** 0.5
        keep = pad[:, None, :, None] & pad[:, None, None, :] & triu
        return torch.where(keep, logits, ninf)
    return run


CASES = [
    Case(f"global_pointer {HEADS}x{N}x{D} 1 thread", "bench_global_pointer", r"BM_global_pointer/1/", gp_setup, 1),
    Case(f"global_pointer {HEADS}x{N}x{D} 2 threads", "bench_global_pointer", r"BM_global_pointer/2/", gp_setup, 2),
]
