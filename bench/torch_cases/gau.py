# SPDX-License-Identifier: MIT
"""GAU layer forward (bench_gau BM_gau) against the same layer written in PyTorch.

fp32, D = 768, e = 1536, s = 128, RoPE on, no biases (as the benchmark's weights), 1 thread. The PyTorch
version is the direct transcription of bert4keras' GatedAttentionUnit a user would write (as in
tests/reference/cases_gau.py): one fused Linear, SiLU, split, scale-offset, RoPE with a precomputed
interleaved table, the n x n logits, the normalisation, (u * (A v)) W_o.

The bf16 rows (issue 13) run the same transcription on bf16 tensors (x, weights, RoPE table): torch 1.13 on CPU
supports it (oneDNN's bf16 matmul; every intermediate is a bf16 tensor, as in a model cast with .to(bfloat16)),
beside BM_gau_bf16 with bf16 activations and bf16 out (the like-for-like form) and the float kexue/torch rows.
"""
import math

import torch

from _case import Case

D, E, S = 768, 1536, 128


def setup(n, norm="squared_relu", causal=False, dtype=torch.float32):
    def build():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, D, generator=g) * 2 - 1
        w_in = (torch.rand(D, 2 * E + S, generator=g) * 2 - 1) * math.sqrt(3 / D)
        w_out = (torch.rand(E, D, generator=g) * 2 - 1) * math.sqrt(3 / E)
        gamma_q = torch.ones(S)
        gamma_k = torch.ones(S)
        inv = 10000.0 ** (-2 * torch.arange(S // 2, dtype=torch.float64) / S)
        ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
        cos = torch.cos(ang).repeat_interleave(2, -1).float()
        sin = torch.sin(ang).repeat_interleave(2, -1).float()
        mask = torch.ones(n, n, dtype=torch.bool).triu(1) if causal else None
        rows = torch.arange(1, n + 1, dtype=torch.float32)[:, None]
        l = rows if causal else torch.full((n, 1), float(n))
        x, w_in, w_out, gamma_q, gamma_k, cos, sin, l = (t.to(dtype) for t in (x, w_in, w_out, gamma_q, gamma_k,
                                                                              cos, sin, l))

        def rope(t):
            t2 = torch.stack([-t[:, 1::2], t[:, ::2]], dim=-1).reshape(t.shape)
            return t * cos + t2 * sin

        def run():
            h = torch.nn.functional.silu(x @ w_in)
            u, v, z = h[:, :E], h[:, E:2 * E], h[:, 2 * E:]
            q = rope(z * gamma_q)
            k = rope(z * gamma_k)
            a = (q @ k.T) / math.sqrt(S)
            if mask is not None:
                a = a.masked_fill(mask, float("-inf"))
            if norm == "squared_relu":
                A = torch.relu(a) ** 2 / l
            elif norm == "softmax_plus":
                A = torch.softmax(a * torch.log(torch.clamp(l, min=16)) / math.log(512), dim=-1)
            else:
                A = torch.softmax(a, dim=-1)
            return (u * (A @ v)) @ w_out
        return run
    return build


NORM = {"softmax": 0, "softmax_plus": 1, "squared_relu": 2}


def row_bf16(n, norm, out16, act16):
    return f"BM_gau_bf16/n:{n}/norm:{NORM[norm]}/out16:{int(out16)}/act16:{int(act16)}/"


def row(n, norm, causal, threads):
    return f"BM_gau/n:{n}/norm:{NORM[norm]}/causal:{int(causal)}/threads:{threads}/"


CASES = [
    Case("GAU n=512 squared_relu", "bench_gau", row(512, "squared_relu", False, 1), setup(512)),
    Case("GAU n=2048 squared_relu", "bench_gau", row(2048, "squared_relu", False, 1), setup(2048)),
    Case("GAU n=2048 softmax_plus", "bench_gau", row(2048, "softmax_plus", False, 1), setup(2048, "softmax_plus")),
    Case("GAU n=2048 softmax", "bench_gau", row(2048, "softmax", False, 1), setup(2048, "softmax")),
    Case("GAU n=2048 softmax_plus causal", "bench_gau", row(2048, "softmax_plus", True, 1),
         setup(2048, "softmax_plus", True)),
    Case("GAU n=2048 squared_relu (kexue allocating each call)", "bench_gau", "BM_gau_alloc/n:2048/",
         setup(2048)),
    Case("GAU n=2048 squared_relu bf16 (kexue bf16 activations, bf16 out)", "bench_gau",
         row_bf16(2048, "squared_relu", True, True), setup(2048, dtype=torch.bfloat16)),
    Case("GAU n=2048 softmax bf16 (kexue bf16 activations, float out)", "bench_gau",
         row_bf16(2048, "softmax", False, True), setup(2048, "softmax", dtype=torch.bfloat16)),
    Case("GAU n=2048 squared_relu 2 threads", "bench_gau", row(2048, "squared_relu", False, 2), setup(2048),
         threads=2),
]
