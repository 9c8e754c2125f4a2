# SPDX-License-Identifier: MIT
"""Fused attention (bench_attention) against PyTorch's plain formulation softmax(q k^T * scale) v.

fp32, 8 heads, d = dv = 64. PyTorch 1.13 has no fused CPU attention (scaled_dot_product_attention arrived in
2.0), so what a user writes is the materialising form below; for n = 8192 it runs head by head (one
8192 x 8192 score matrix, 256 MiB, at a time) rather than materialising all eight heads (2 GiB per temporary).
"""
import math

import torch

from _case import Case

H, D = 8, 64


def make(n, m=None, kv_heads=H):
    m = n if m is None else m
    g = torch.Generator().manual_seed(0)
    q = torch.rand(H, n, D, generator=g) * 2 - 1
    k = torch.rand(kv_heads, m, D, generator=g) * 2 - 1
    v = torch.rand(kv_heads, m, D, generator=g) * 2 - 1
    return q, k, v


def post9529_mask(n, kind):
    """The masks of post 9529 as a PyTorch user builds them: True = hidden. kind: causal, reverse, unilm (source
    n/4, bert4keras' UniLM_Mask: c = cumsum(segment ids), hidden where c[j] > c[i]) or mixed (a [H, n, n] mask:
    causal on even heads, reverse causal on odd heads)."""
    if kind == "causal":
        return torch.ones(n, n, dtype=torch.bool).triu(1)
    if kind == "reverse":
        return torch.ones(n, n, dtype=torch.bool).tril(-1)
    if kind == "unilm":
        seg = torch.zeros(n, dtype=torch.int64)
        seg[n // 4:] = 1
        c = torch.cumsum(seg, 0)
        return c.unsqueeze(0) > c.unsqueeze(1)
    causal, reverse = post9529_mask(n, "causal"), post9529_mask(n, "reverse")
    return torch.stack([causal if h % 2 == 0 else reverse for h in range(H)])


def setup(n, norm="softmax", causal=False, per_head=False, kv_heads=H, mask_kind=None):
    def build():
        q, k, v = make(n, kv_heads=kv_heads)
        if kv_heads != H:  # GQA as a PyTorch 1.13 model writes it: the KV heads repeated to every query head
            k, v = k.repeat_interleave(H // kv_heads, dim=0), v.repeat_interleave(H // kv_heads, dim=0)
        scale = 1.0 / math.sqrt(D)
        mask = torch.ones(n, n, dtype=torch.bool).triu(1) if causal else None
        if mask_kind is not None:
            mask = post9529_mask(n, mask_kind)
        lf = math.log(max(n, 16)) / math.log(512)

        def one(q, k, v):
            s = torch.matmul(q, k.transpose(-1, -2)) * scale
            if mask is not None:
                s = s.masked_fill(mask, float("-inf"))
            if norm == "softmax":
                a = torch.softmax(s, dim=-1)
            elif norm == "softmax_plus":
                a = torch.softmax(s * lf, dim=-1)  # no mask: l = n for every row
            else:
                a = torch.relu(s) ** 2 / n
            return torch.matmul(a, v)

        if per_head:
            return lambda: [one(q[h], k[h], v[h]) for h in range(H)]
        return lambda: one(q, k, v)
    return build


def decode_setup(m, kv_heads=2):
    def build():
        q, k, v = make(1, m, kv_heads)
        scale = 1.0 / math.sqrt(D)
        rep = H // kv_heads

        def run():
            kk = k.repeat_interleave(rep, dim=0) if rep > 1 else k
            vv = v.repeat_interleave(rep, dim=0) if rep > 1 else v
            a = torch.softmax(torch.matmul(q, kk.transpose(-1, -2)) * scale, dim=-1)
            return torch.matmul(a, vv)
        return run
    return build


def row(n, norm, causal, threads):
    return f"BM_attention/n:{n}/norm:{norm}/causal:{causal}/threads:{threads}/real_time$"


CASES = [
    Case("attention softmax n=2048 8h d=64", "bench_attention", row(2048, 0, 0, 1), setup(2048)),
    Case("attention softmax_plus n=2048", "bench_attention", row(2048, 1, 0, 1), setup(2048, "softmax_plus")),
    Case("attention squared_relu n=2048", "bench_attention", row(2048, 2, 0, 1), setup(2048, "squared_relu")),
    Case("attention softmax causal n=2048", "bench_attention", row(2048, 0, 1, 1), setup(2048, causal=True)),
    # GQA prefill 8/2 (ORT's GroupQueryAttention sits beside it with compare_torch.py --ort; a build from before
    # bench_attention had this row prints "-" for kexue).
    # The masks of post 9529 (a build from before bench_attention had these rows prints "-" for kexue).
    Case("attention softmax reverse causal n=2048", "bench_attention",
         "BM_attention_reverse_causal/n:2048/mask:1/real_time$", setup(2048, mask_kind="reverse")),
    Case("attention softmax UniLM (source n/4) n=2048", "bench_attention",
         "BM_attention_unilm/n:2048/mask:2/real_time$", setup(2048, mask_kind="unilm")),
    Case("attention softmax mixed causal/reverse heads n=2048", "bench_attention",
         "BM_attention_masks/n:2048/mask:3/real_time$", setup(2048, mask_kind="mixed")),
    Case("attention softmax causal n=2048 GQA 8/2 prefill", "bench_attention",
         "BM_attention_gqa_prefill/kv_heads:2/n:2048/real_time$", setup(2048, causal=True, kv_heads=2)),
    Case("attention softmax n=8192 (torch per head)", "bench_attention", row(8192, 0, 0, 1),
         setup(8192, per_head=True)),
    Case("attention softmax n=2048, 2 threads", "bench_attention", row(2048, 0, 0, 2), setup(2048), threads=2),
    Case("attention decode n=1 m=4096 GQA 8/2", "bench_attention", "BM_attention_decode/4096/real_time$",
         decode_setup(4096)),
]


def decode_row(kv_heads, m):
    return f"BM_attention_decode_heads/kv_heads:{kv_heads}/m:{m}/real_time$"


# One decoding step for GQA 8/2, MQA 8/1 and MHA 8/8 (torch: repeat_interleave of the cache to 8 heads, as a
# PyTorch 1.13 GQA model does, then the plain softmax(q k^T) v; MHA needs no repeat).
for _m in (4096, 32768):
    for _kv, _tag in ((2, "GQA 8/2"), (1, "MQA 8/1"), (8, "MHA 8/8")):
        CASES.append(Case(f"attention decode m={_m} {_tag} (decode_heads)", "bench_attention", decode_row(_kv, _m),
                          decode_setup(_m, _kv)))



# 16-bit storage (issue 13; bench_attention_half, kv: 1 fp16, 2 bf16). What a PyTorch 1.13 CPU user writes:
# - a bf16 model computes in bf16 (q k^T, softmax and P V all bfloat16: matmul and softmax exist on CPU for it);
# - an fp16 cache has no CPU matmul in torch 1.13 ("addmm_impl_cpu_" not implemented for 'Half'), so the cache is
#   widened to float for the step and the float formulation runs.
# kexue computes in float in both (K and V widened in L1 / registers), so its results are the more accurate ones.
def half_decode_setup(m, dtype, kv_heads=2):
    def build():
        q, k, v = make(1, m, kv_heads)
        k16, v16 = k.to(dtype), v.to(dtype)
        scale = 1.0 / math.sqrt(D)
        rep = H // kv_heads

        def run():
            if dtype == torch.bfloat16:
                qq, kk, vv = q.to(dtype), k16, v16
            else:
                qq, kk, vv = q, k16.float(), v16.float()
            kk, vv = kk.repeat_interleave(rep, dim=0), vv.repeat_interleave(rep, dim=0)
            a = torch.softmax(torch.matmul(qq, kk.transpose(-1, -2)) * scale, dim=-1)
            return torch.matmul(a, vv)
        return run
    return build


def bf16_prefill_setup(n):
    def build():
        q, k, v = make(n)
        q, k, v = q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)
        scale = 1.0 / math.sqrt(D)
        return lambda: torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1), v)
    return build


for _m in (4096, 32768):
    CASES.append(Case(f"attention decode m={_m} GQA 8/2, fp16 cache (torch: widened to float)",
                      "bench_attention_half", f"BM_attention_half_decode/kv:1/m:{_m}/real_time$",
                      half_decode_setup(_m, torch.float16)))
    CASES.append(Case(f"attention decode m={_m} GQA 8/2, bf16 cache (torch: bf16 compute)",
                      "bench_attention_half", f"BM_attention_half_decode/kv:2/m:{_m}/real_time$",
                      half_decode_setup(_m, torch.bfloat16)))
CASES.append(Case("attention n=2048 q, k, v bf16 (torch: bf16 compute)", "bench_attention_half",
                  "BM_attention_half_qkv/kv:2/n:2048/real_time$", bf16_prefill_setup(2048)))
