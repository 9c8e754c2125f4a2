# SPDX-License-Identifier: MIT
"""Reference values for the masks of post 9529 in kexue::attention (SPEC 7.3), in torch float64 with explicit
n x n keep matrices: UniLM / prefix LM from segment ids (bert4keras' UniLM_Mask: c = cumsum(segment_ids),
keep[i, j] = c[j] <= c[i]), reverse causal (keep[i, j] = j >= i) and the mixed forward/backward heads (causal on
some heads, reverse causal on the others), each combined with key_length and a per-key mask and run through the
three normalisations of bert4keras' attention_normalize (cases_attention.py). A row with no visible key is 0.

Layout: inputs per head count H in {1, 3, 4}: h<H>/q, h<H>/k [H, n, d], h<H>/v [H, n, dv]; per case <name>/out
[H, n, dv], <name>/dirs [H] (0 bidirectional, 1 causal, 2 reverse causal), <name>/mixed (1: the heads are run as
one batched call with head_directions), options as scalars, <name>/segments [n] and <name>/mask [n] when used.
"""
import torch

from cases_attention import NORMS, attention_normalize
from generate import rand

SEGMENTS = {
    # bert4keras UniLM: source 0, target 1.
    "prefix": [0] * 21 + [1] * 30,
    # several ids > 0 and zeros after ones (padding tokens of id 0 after the target see all of it).
    "multi": [0] * 5 + [1, 1, 0, 2, 0, 0, 1] + [0] * 9 + [1] * 20 + [0] * 10,
    # all source: bidirectional.
    "zeros": [0] * 51,
}


def keep_matrix(n, direction, segments=None, key_length=None, mask=None):
    i = torch.arange(n).unsqueeze(1)
    j = torch.arange(n).unsqueeze(0)
    keep = torch.ones(n, n, dtype=torch.bool)
    if direction == 1:
        keep &= j <= i
    elif direction == 2:
        keep &= j >= i
    if segments is not None:
        c = torch.cumsum(torch.tensor(segments, dtype=torch.int64), 0)
        keep &= c.unsqueeze(0) <= c.unsqueeze(1)
    if key_length is not None:
        keep[:, key_length:] = False
    if mask is not None:
        keep &= torch.tensor(mask, dtype=torch.bool).unsqueeze(0)
    return keep


def generate(w):
    seed = 9529
    cases = []
    for method in ("softmax", "softmax_plus", "squared_relu"):
        for seg in ("prefix", "multi"):
            cases.append((f"unilm_{seg}_{method}", method, 51, [0], seg, None, False))
            cases.append((f"unilm_{seg}_keylen_mask_{method}", method, 51, [0], seg, 44, True))
        cases.append((f"unilm_zeros_{method}", method, 51, [0], "zeros", None, False))
        cases.append((f"reverse_{method}", method, 51, [2], None, None, False))
        cases.append((f"reverse_keylen_mask_{method}", method, 51, [2], None, 40, True))
        cases.append((f"reverse_unilm_{method}", method, 51, [2], "prefix", None, False))
        # Su's mixed attention: half of the heads causal, half reverse causal; plus one bidirectional head.
        cases.append((f"mixed_{method}", method, 51, [1, 2, 1, 2], None, None, False))
        cases.append((f"mixed_keylen_mask_{method}", method, 51, [2, 1, 0], None, 47, True))
    n, d, dv = 51, 16, 8
    inputs = {}
    for H in (1, 3, 4):
        seed += 10
        inputs[H] = (rand(H, n, d, seed=seed, lo=-2.0, hi=2.0), rand(H, n, d, seed=seed + 1, lo=-2.0, hi=2.0),
                     rand(H, n, dv, seed=seed + 2))
        for part, t in zip("qkv", inputs[H]):
            w.tensor(f"h{H}/{part}", t)
    names = []
    for name, method, n_, dirs, seg, key_length, use_mask in cases:
        seed += 10
        H = len(dirs)
        q, k, v = inputs[H]
        mask = None
        if use_mask:
            g = torch.Generator().manual_seed(seed + 3)
            mask = (torch.rand(n, generator=g) > 0.25).int().tolist()
        segments = SEGMENTS[seg] if seg else None
        out = torch.zeros(H, n, dv, dtype=torch.float64)
        for h, direction in enumerate(dirs):
            keep = keep_matrix(n, direction, segments, key_length, mask)
            a = q[h] @ k[h].T / d ** 0.5
            A = attention_normalize(a, keep, method)
            out[h] = A @ v[h]
        w.tensor(f"{name}/out", out)
        w.scalar(f"{name}/norm", NORMS[method])
        w.tensor(f"{name}/dirs", torch.tensor(dirs, dtype=torch.float64))
        w.scalar(f"{name}/mixed", int(len(dirs) > 1))
        w.scalar(f"{name}/key_length", -1 if key_length is None else key_length)
        if segments is not None:
            w.tensor(f"{name}/segments", torch.tensor(segments, dtype=torch.float64))
        if mask is not None:
            w.tensor(f"{name}/mask", torch.tensor(mask, dtype=torch.float64))
        names.append(name)
    w.scalar("count", len(names))
