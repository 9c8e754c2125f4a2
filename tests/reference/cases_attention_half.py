# SPDX-License-Identifier: MIT
"""Reference values for kexue::attention with 16-bit storage (issue 13 item 2), in torch float64.

Storage-only cases (kv_<type>_<norm>_<mask>): q float32, k and v rounded to float16 / bfloat16 by torch's .to()
(round to nearest even), stored widened (exact); out = bert4keras' attention (cases_attention.py) in float64 on
those values. The C++ test expects the float kernel's tolerance.

bf16 compute cases (bf16_<norm>_<mask>): q, k and v rounded to bfloat16; out64 = the float64 result on those
values; torch_err = relative RMS error of PyTorch's own bf16 formulation (q k^T, the normalisation and P V in
bfloat16 tensors, as a bf16 model runs it) against out64. The C++ test checks kexue's relative RMS error
<= 1e-2 and <= 2 * torch_err, for float and bfloat16 outputs.

Layout: kv/q [n, d]; kv/<type>/k [m, d], kv/<type>/v [m, dv]; kv/mask [m]; per case <name>/out and the options as
scalars (norm, causal, key_length (-1: none), use_mask). bf16/q, bf16/k, bf16/v; per case <name>/out64,
<name>/torch_err, norm, causal, key_length, use_mask. decode/...: one query row against m = 300 keys, d = 64.
"""
import math

import torch

from cases_attention import NORMS, attention, attention_normalize, keep_matrix
from generate import randn

TYPES = {"f16": torch.float16, "bf16": torch.bfloat16}
MASKS = {"none": (False, None, False), "causal": (True, None, False), "keylen_mask": (False, 71, True),
         "causal_keylen_mask": (True, 71, True)}


def rounded(x, dtype):
    return x.float().to(dtype).double()


def put_opts(w, name, method, causal, key_length, use_mask):
    w.scalar(f"{name}/norm", NORMS[method])
    w.scalar(f"{name}/causal", int(causal))
    w.scalar(f"{name}/key_length", -1 if key_length is None else key_length)
    w.scalar(f"{name}/use_mask", int(use_mask))


def rel_rms(x, ref):
    return float(torch.sqrt(torch.mean((x - ref) ** 2)) / torch.sqrt(torch.mean(ref ** 2)))


def generate(w):
    # Storage only: n = 37 query rows (two float sub-tiles on AVX2 and one on AVX-512, plus tails), m = 83 keys
    # (one 64-key tile and a partial one), d = 24, dv = 16.
    n, m, d, dv = 37, 83, 24, 16
    q = randn(n, d, seed=1301)
    w.tensor("kv/q", q)
    g = torch.Generator().manual_seed(1302)
    mask = (torch.rand(m, generator=g) > 0.3).double()
    w.tensor("kv/mask", mask)
    names = []
    for tname, dtype in TYPES.items():
        k = rounded(randn(m, d, seed=1303, std=1.5), dtype)
        v = rounded(randn(m, dv, seed=1304), dtype)
        w.tensor(f"kv/{tname}/k", k)
        w.tensor(f"kv/{tname}/v", v)
        for method in NORMS:
            for mname, (causal, key_length, use_mask) in MASKS.items():
                name = f"kv_{tname}_{method}_{mname}"
                out, _ = attention(q, k, v, method, causal=causal, key_length=key_length,
                                   mask=mask if use_mask else None)
                w.tensor(f"{name}/out", out)
                put_opts(w, name, method, causal, key_length, use_mask)
                names.append(name)
    w.scalar("kv/count", len(names))

    # Decode: one row, m = 200 (three 64-key chunks and a partial one), d = dv = 32, both types, softmax.
    m2, d2 = 200, 32
    qd = randn(1, d2, seed=1310)
    w.tensor("decode/q", qd)
    for tname, dtype in TYPES.items():
        k = rounded(randn(m2, d2, seed=1311, std=1.5), dtype)
        v = rounded(randn(m2, d2, seed=1312), dtype)
        w.tensor(f"decode/{tname}/k", k)
        w.tensor(f"decode/{tname}/v", v)
        out, _ = attention(qd, k, v, "softmax", key_length=171)
        w.tensor(f"decode/{tname}/out", out)

    # bf16 compute: n = 48, m = 130, d = dv = 64 (the head size of the benchmarks), logits of order 1-3.
    n3, m3, d3 = 48, 130, 64
    qb = rounded(randn(n3, d3, seed=1320, std=1.2), torch.bfloat16)
    kb = rounded(randn(m3, d3, seed=1321, std=1.2), torch.bfloat16)
    vb = rounded(randn(m3, d3, seed=1322), torch.bfloat16)
    w.tensor("bf16/q", qb)
    w.tensor("bf16/k", kb)
    w.tensor("bf16/v", vb)
    g = torch.Generator().manual_seed(1323)
    maskb = (torch.rand(m3, generator=g) > 0.3).double()
    w.tensor("bf16/mask", maskb)
    names = []
    s = 1.0 / math.sqrt(d3)
    for method in NORMS:
        for mname, (causal, key_length, use_mask) in (("none", (False, None, False)), ("causal", (True, None, False)),
                                                      ("keylen_mask", (False, 111, True))):
            name = f"bf16_{method}_{mname}"
            mk = maskb if use_mask else None
            out64, _ = attention(qb, kb, vb, method, causal=causal, key_length=key_length, mask=mk)
            # PyTorch's bf16 formulation: every tensor op in bfloat16 (CPU kernels accumulate in float inside).
            q16, k16, v16 = (t.to(torch.bfloat16) for t in (qb, kb, vb))
            a16 = (q16 @ k16.T) * torch.tensor(s, dtype=torch.bfloat16)
            keep = keep_matrix(n3, m3, causal, key_length, mk)
            A16 = attention_normalize(a16, keep, method)
            out16 = (A16.to(torch.bfloat16) @ v16).double()
            w.tensor(f"{name}/out64", out64)
            w.scalar(f"{name}/torch_err", rel_rms(out16, out64))
            put_opts(w, name, method, causal, key_length, use_mask)
            names.append(name)
    w.scalar("bf16/count", len(names))
