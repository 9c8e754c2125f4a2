# SPDX-License-Identifier: MIT
"""Linear attention and FLASH mixed-chunk attention (bench_linear_attention) against PyTorch formulations.

fp32, 8 heads, d = dv = 64, 2 threads (the issue's shapes). The PyTorch side is what a user would write:
  * non-causal: phi(q) (phi(k)^T v) / (phi(q) sum_j phi(k_j) + eps);
  * causal, cumsum: the parallel form, a cumsum over the n x d x dv outer products (O(n d dv) memory);
  * causal, chunked (chunk 64): intra-chunk masked products plus an exclusive cumsum of per-chunk states;
  * FLASH mixed-chunk (chunk 256): relu^2 within chunks plus linear attention across chunks.
"""
import torch
import torch.nn.functional as F

from _case import Case

HEADS, D, DV, EPS = 8, 64, 64, 1e-6


def phi(x):
    return F.elu(x) + 1


def inputs(n, m=None):
    m = n if m is None else m
    q = torch.randn(HEADS, n, D)
    k = torch.randn(HEADS, m, D)
    v = torch.randn(HEADS, m, DV)
    return q, k, v


def noncausal_setup(n):
    def setup():
        q, k, v = inputs(n)

        def run():
            pq, pk = phi(q), phi(k)
            s = pk.transpose(1, 2) @ v                      # [h, d, dv]
            z = pk.sum(dim=1)                               # [h, d]
            den = (pq @ z.unsqueeze(-1)) + EPS              # [h, n, 1]
            return (pq @ s) / den
        return run
    return setup


def causal_cumsum_setup(n):
    def setup():
        q, k, v = inputs(n)

        def run():
            pq, pk = phi(q), phi(k)
            kv = torch.einsum("hnd,hne->hnde", pk, v).cumsum(dim=1)   # [h, n, d, dv]
            num = torch.einsum("hnd,hnde->hne", pq, kv)
            den = (pq * pk.cumsum(dim=1)).sum(-1, keepdim=True) + EPS
            return num / den
        return run
    return setup


def causal_chunked_setup(n, c=64):
    def setup():
        q, k, v = inputs(n)
        g = n // c
        mask = torch.ones(c, c).tril()

        def run():
            pq = phi(q).reshape(HEADS, g, c, D)
            pk = phi(k).reshape(HEADS, g, c, D)
            vc = v.reshape(HEADS, g, c, DV)
            a = (pq @ pk.transpose(-1, -2)) * mask            # [h, g, c, c]
            kv = pk.transpose(-1, -2) @ vc                    # [h, g, d, dv]
            kv = kv.cumsum(dim=1) - kv                        # exclusive prefix of the chunk states
            z = pk.sum(dim=2)                                 # [h, g, d]
            z = z.cumsum(dim=1) - z
            num = a @ vc + pq @ kv
            den = a.sum(-1, keepdim=True) + (pq @ z.unsqueeze(-1)) + EPS
            return (num / den).reshape(HEADS, n, DV)
        return run
    return setup


def flash_setup(n, causal, c=256, s=64, e=64):
    def setup():
        qq, kq, ql, kl = (torch.randn(HEADS, n, s) for _ in range(4))
        v = torch.randn(HEADS, n, e)
        g = n // c
        mask = torch.ones(c, c).tril()

        def run():
            a = F.relu((qq.reshape(HEADS, g, c, s) @ kq.reshape(HEADS, g, c, s).transpose(-1, -2)) / s ** 0.5) ** 2 / c
            if causal:
                a = a * mask
            vg = v.reshape(HEADS, g, c, e)
            quad = a @ vg
            kv = kl.reshape(HEADS, g, c, s).transpose(-1, -2) @ vg          # [h, g, s, e]
            if causal:
                kv = (kv.cumsum(dim=1) - kv) / n
                lin = ql.reshape(HEADS, g, c, s) @ kv
            else:
                lin = ql.reshape(HEADS, g, c, s) @ (kv.sum(dim=1, keepdim=True) / n)
            return (quad + lin).reshape(HEADS, n, e)
        return run
    return setup


CASES = [
    Case("linear non-causal 8x8192x64 elu+1", "bench_linear_attention", r"BM_linear_noncausal/8192/2/real_time$",
         noncausal_setup(8192), threads=2),
    Case("linear causal 8x8192x64 vs chunked(64)", "bench_linear_attention", r"BM_linear_causal/8192/2/real_time$",
         causal_chunked_setup(8192), threads=2),
    Case("linear causal 8x8192x64 vs cumsum", "bench_linear_attention", r"BM_linear_causal/8192/2/real_time$",
         causal_cumsum_setup(8192), threads=2),
    Case("linear causal 8x2048x64 vs chunked(64)", "bench_linear_attention", r"BM_linear_causal/2048/2/real_time$",
         causal_chunked_setup(2048), threads=2),
    Case("FLASH non-causal 8x8192 s=e=64 c=256", "bench_linear_attention", r"BM_flash_noncausal/8192/2/real_time$",
         flash_setup(8192, False), threads=2),
    Case("FLASH causal 8x8192 s=e=64 c=256", "bench_linear_attention", r"BM_flash_causal/8192/2/real_time$",
         flash_setup(8192, True), threads=2),
]
