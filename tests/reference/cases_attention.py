# SPDX-License-Identifier: MIT
"""Reference values for kexue::attention (SPEC 3.3): bert4keras' attention_normalize re-done in torch float64.

Layout: one input set per group (q has more rows than k, so the C++ test takes q's first n rows for the
n < m, n = m and n > m causal cases). Every case stores its options as scalars and its expected output.
Masking follows bert4keras: logits of invisible keys are -inf; l = per-row count of visible keys. The one
documented deviation: a row with no visible key is 0 (bert4keras gives NaN from 0/0 or softmax of all -inf).
"""
import math

import torch

from generate import rand, randn

NORMS = {"softmax": 0, "softmax_plus": 1, "squared_relu": 2}


def attention_normalize(a, keep, method, train_length=512, min_length=16, relu2_length=None):
    """bert4keras.layers attention_normalize (since commit 988e899), rows [n, m]; keep: bool [n, m]."""
    ninf = torch.tensor(float("-inf"), dtype=a.dtype)
    l = keep.sum(-1, keepdim=True).to(a.dtype)
    if method == "softmax":
        A = torch.softmax(torch.where(keep, a, ninf), dim=-1)
    elif method == "squared_relu":
        L = l if relu2_length is None else torch.full_like(l, float(relu2_length))
        A = torch.relu(torch.where(keep, a, ninf)) ** 2 / L
    else:
        scale = torch.log(torch.clamp(l, min=float(min_length))) / math.log(train_length)
        # Scale first, then mask: with min_length 1 a row with l = 1 has scale 0, and -inf * 0 would be NaN
        # (bert4keras between 2022-04-29 and 2023-03-04 guarded this the same way with "* mask + 1 - mask").
        A = torch.softmax(torch.where(keep, a * scale, ninf), dim=-1)
    empty = (l == 0).expand_as(A)
    return torch.where(empty, torch.zeros_like(A), A)


def keep_matrix(n, m, causal, key_length=None, mask=None):
    keep = torch.ones(n, m, dtype=torch.bool)
    if key_length is not None:
        keep[:, key_length:] = False
    if mask is not None:
        keep &= mask.bool().unsqueeze(0)
    if causal:
        i = torch.arange(n).unsqueeze(1)
        j = torch.arange(m).unsqueeze(0)
        keep &= j <= i + (m - n)  # bottom-right aligned
    return keep


def attention(q, k, v, method, causal=False, key_length=None, mask=None, scale=None, **kw):
    n, m = q.shape[0], k.shape[0]
    s = (1.0 / math.sqrt(q.shape[1])) if scale is None else scale
    A = attention_normalize(q @ k.T * s, keep_matrix(n, m, causal, key_length, mask), method, **kw)
    return A @ v, A


def put_case(w, name, group, n, method, out, causal=False, key_length=None, use_mask=False, scale=None,
             train_length=512, min_length=16, relu2_length=None):
    w.scalar(f"{name}/n", n)
    w.scalar(f"{name}/norm", NORMS[method])
    w.scalar(f"{name}/causal", int(causal))
    w.scalar(f"{name}/key_length", -1 if key_length is None else key_length)
    w.scalar(f"{name}/use_mask", int(use_mask))
    w.scalar(f"{name}/scale", 0.0 if scale is None else scale)
    w.scalar(f"{name}/train_length", train_length)
    w.scalar(f"{name}/min_length", min_length)
    w.scalar(f"{name}/relu2_length", 0 if relu2_length is None else relu2_length)
    w.scalar(f"{name}/group", group)
    w.tensor(f"{name}/out", out)


def generate(w):
    cases = []
    # Group 0: odd sizes across the 64-key tile and the 24-row (float) / 12-row (double) query tile.
    # Group 1: d = 64 (the benchmark's head size), m = 70 = one full key tile + 6.
    # Group 2: huge logits (|a| up to ~1e4): online softmax must never overflow.
    groups = [
        dict(nq=90, m=75, d=19, dv=13, seed=10, std=1.0),
        dict(nq=40, m=70, d=64, dv=24, seed=20, std=1.0),
        dict(nq=30, m=70, d=16, dv=8, seed=30, std=40.0),
    ]
    for g, spec in enumerate(groups):
        q = randn(spec["nq"], spec["d"], seed=spec["seed"], std=spec["std"])
        k = randn(spec["m"], spec["d"], seed=spec["seed"] + 1, std=spec["std"])
        v = randn(spec["m"], spec["dv"], seed=spec["seed"] + 2)
        mask = (rand(spec["m"], seed=spec["seed"] + 3) > -0.4).double()  # ~70% visible
        mask[: spec["m"] // 3 + 2] = 0  # an all-masked prefix: early rows of causal cases see nothing
        w.tensor(f"g{g}/q", q)
        w.tensor(f"g{g}/k", k)
        w.tensor(f"g{g}/v", v)
        w.tensor(f"g{g}/mask", mask)
        m = spec["m"]
        variants = [
            dict(tag="plain", n=min(37, spec["nq"])),
            dict(tag="keylen", n=min(37, spec["nq"]), key_length=m - 11),
            dict(tag="keymask", n=min(37, spec["nq"]), use_mask=True),
            dict(tag="causal_lt", n=min(37, m - 5, spec["nq"]), causal=True),
            dict(tag="causal_eq", n=m if spec["nq"] >= m else spec["nq"], causal=True),
            dict(tag="causal_gt", n=spec["nq"], causal=True, key_length=m - 3),
            dict(tag="causal_mask", n=spec["nq"], causal=True, use_mask=True),
        ]
        if g == 2:
            variants = [variants[0], variants[3], variants[6]]
        for method in NORMS:
            for var in variants:
                n = var["n"]
                out, _ = attention(q[:n], k, v, method, causal=var.get("causal", False),
                                   key_length=var.get("key_length"), mask=mask if var.get("use_mask") else None)
                put_case(w, f"g{g}_{method}_{var['tag']}", g, n, method, out, causal=var.get("causal", False),
                         key_length=var.get("key_length"), use_mask=var.get("use_mask", False))
    # Option variants on group 0: explicit scale, fixed relu2 length (post 9019), other train/min lengths
    # (GAU-alpha ports: no floor, i.e. min_length 1), SoftmaxPlus with the causal l = i + 1 per row.
    q, k, v = randn(90, 19, seed=10), randn(75, 19, seed=11), randn(75, 13, seed=12)
    out, _ = attention(q[:37], k, v, "softmax", scale=0.3)
    put_case(w, "opt_scale", 0, 37, "softmax", out, scale=0.3)
    out, _ = attention(q[:37], k, v, "squared_relu", relu2_length=512)
    put_case(w, "opt_relu2_fixed", 0, 37, "squared_relu", out, relu2_length=512)
    out, _ = attention(q[:75], k, v, "squared_relu", causal=True, relu2_length=64)
    put_case(w, "opt_relu2_fixed_causal", 0, 75, "squared_relu", out, causal=True, relu2_length=64)
    out, _ = attention(q[:75], k, v, "softmax_plus", causal=True, train_length=64, min_length=1)
    put_case(w, "opt_plus_nofloor", 0, 75, "softmax_plus", out, causal=True, train_length=64, min_length=1)
