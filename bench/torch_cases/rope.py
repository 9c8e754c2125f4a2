# SPDX-License-Identifier: MIT
"""RoPE of q and k (bench_rope): kexue's in-place batched rope(table, q, k) against the PyTorch formulation
`x*cos + rotate(x)*sin` with precomputed full-width cos/sin, as HF transformers writes it (apply_rotary_pos_emb
with rotate_half for the Half layout; GPT-J's rotate_every_two with repeat_interleave'd cos/sin for Interleaved).
Shapes: [batch, 8 heads, 2048 positions, 64 dims] fp32; batch 1 is 2 x 4 MiB, batch 8 is 2 x 32 MiB = 64 MiB."""
import torch

from _case import Case

HEADS, SEQ, DIM = 8, 2048, 64


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rotate_every_two(x):
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def rope_setup(layout, batch, bias=False):
    """q and k rotated in place; with bias, RoPE + bias (post 9577) as HF-style code writes it:
    (x + b) cos + rotate(x + b) sin, a per-head q bias [heads, dim] and a shared k bias [dim]."""
    def setup():
        q = torch.randn(batch, HEADS, SEQ, DIM)
        k = torch.randn(batch, HEADS, SEQ, DIM)
        q_bias = torch.randn(HEADS, 1, DIM) * 1e-3
        k_bias = torch.randn(DIM) * 1e-3
        inv_freq = 1.0 / (10000 ** (torch.arange(0, DIM, 2).float() / DIM))
        freqs = torch.arange(SEQ).float()[:, None] * inv_freq[None, :]
        if layout == "half":
            emb, rotate = torch.cat((freqs, freqs), dim=-1), rotate_half
        else:
            emb, rotate = torch.repeat_interleave(freqs, 2, dim=-1), rotate_every_two
        cos, sin = emb.cos(), emb.sin()

        def run():
            qb, kb = (q + q_bias, k + k_bias) if bias else (q, k)
            return qb * cos + rotate(qb) * sin, kb * cos + rotate(kb) * sin
        return run
    return setup


CASES = []
for bench, label, bias in (("BM_rope_qk", "rope q+k", False), ("BM_rope_qk_bias", "rope+bias q+k", True)):
    for threads in (1, 2):
        for batch, what in ((1, "8x2048x64"), (8, "64 MiB")):
            for layout, code in (("interleaved", 0), ("half", 1)):
                CASES.append(Case(f"{label} {what} {layout}", "bench_rope", f"{bench}/{code}/{batch}/{threads}/",
                                  rope_setup(layout, batch, bias), threads))
