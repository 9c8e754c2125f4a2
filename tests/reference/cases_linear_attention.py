# SPDX-License-Identifier: MIT
"""Reference values for linear attention (SPEC 5.2) and FLASH mixed-chunk attention (SPEC 3.5).

Linear attention is computed directly in float64 from the similarity matrix, sim[i, j] = phi(q_i) . phi(k_j)
with the causal (bottom-right aligned) and key-padding masks applied, o = (sim V) / (rowsum(sim) + eps): the
O(n m) form, independent of the chunked algorithm under test.

FLASH is a direct PyTorch implementation in the style of FLASH-pytorch: the sequence is padded to a multiple
of the chunk size, chunks are reshaped into a group axis, the quadratic part is relu(scale qk)^2 / quad_norm
(upper triangle masked when causal, padded keys masked), and the linear part is K_lin^T V summed over all
groups (non-causal) or an exclusive cumsum over groups (causal), divided by the valid length or by the number
of keys summed (Prefix; 0/0 := 0 for the first chunk).
"""
import torch
import torch.nn.functional as F

from generate import rand, randn

FEATURES = {
    "elu": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "identity": lambda x: x,
}


def linear_attention(q, k, v, feature, causal, eps, key_length):
    n, m = q.shape[0], k.shape[0]
    phi = FEATURES[feature]
    sim = phi(q) @ phi(k).T                                    # [n, m]
    keep = torch.ones(n, m, dtype=torch.bool)
    keep[:, key_length:] = False
    if causal:
        i = torch.arange(n)[:, None]
        j = torch.arange(m)[None, :]
        keep &= j <= i + (m - n)
    sim = torch.where(keep, sim, torch.zeros(()))
    den = sim.sum(-1, keepdim=True) + eps
    num = sim @ torch.where(keep.any(0)[:, None], v, torch.zeros(()))
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones(())), torch.zeros(()))


def flash(qq, kq, ql, kl, v, c, causal, scale, quad_norm, prefix, key_length):
    n, e = qq.shape[0], v.shape[1]
    g = (n + c - 1) // c
    pad = g * c - n
    valid = torch.arange(g * c) < key_length                   # padded keys (beyond key_length or n) masked

    def grp(x):
        return F.pad(x, (0, 0, 0, pad)).reshape(g, c, x.shape[1])

    qqg, kqg, qlg, klg = grp(qq), grp(kq), grp(ql), grp(kl)
    vg = grp(v) * valid.reshape(g, c, 1)
    klg = klg * valid.reshape(g, c, 1)
    a = F.relu(scale * (qqg @ kqg.transpose(-1, -2))) ** 2 / quad_norm      # [g, c, c]
    a = a * valid.reshape(g, 1, c)
    if causal:
        a = a * torch.ones(c, c).tril()
    quad = a @ vg
    kv = klg.transpose(-1, -2) @ vg                            # [g, s_lin, e]
    L = int(min(n, key_length))
    if causal:
        prev = kv.cumsum(0) - kv
        counts = valid.reshape(g, c).sum(-1).double()
        summed = counts.cumsum(0) - counts                    # keys summed before each chunk
        if prefix:
            norm = torch.where(summed > 0, 1.0 / torch.where(summed > 0, summed, torch.ones(())), torch.zeros(()))
        else:
            norm = torch.full((g,), 1.0 / L if L > 0 else 0.0)
        lin = qlg @ (prev * norm.reshape(g, 1, 1))
    else:
        lin = qlg @ (kv.sum(0, keepdim=True) / (L if L > 0 else 1))
    return (quad + lin).reshape(g * c, e)[:n]


def generate(w):
    seed = 700
    cases = []
    for feature in ["elu", "relu", "identity"]:
        for causal in [False, True]:
            # n != m for non-causal; causal uses n == m, plus one bottom-right case below.
            cases.append((feature, causal, 37, 37 if causal else 29, 19, 23, None, 1e-6))
    cases += [
        ("elu", False, 33, 41, 16, 8, 30, 1e-6),    # key padding, non-causal
        ("elu", True, 70, 70, 16, 24, 52, 1e-6),    # key padding, causal (crosses the 64-row chunk)
        ("relu", True, 20, 45, 9, 5, None, 1e-6),   # causal, m > n: bottom-right aligned (KV-cache prefix)
        ("elu", True, 45, 20, 9, 5, None, 0.0),     # causal, m < n: the first 25 queries see no key, eps = 0
        ("elu", True, 150, 150, 32, 32, None, 1e-6),  # several chunks
    ]
    for idx, (feature, causal, n, m, d, dv, key_length, eps) in enumerate(cases):
        seed += 10
        lo = 0.0 if feature == "identity" else -1.5  # identity: positive features keep denominators away from 0
        q = rand(n, d, seed=seed, lo=lo, hi=1.5)
        k = rand(m, d, seed=seed + 1, lo=lo, hi=1.5)
        v = randn(m, dv, seed=seed + 2)
        kl = m if key_length is None else key_length
        name = f"la{idx}"
        w.tensor(f"{name}/q", q)
        w.tensor(f"{name}/k", k)
        w.tensor(f"{name}/v", v)
        w.scalar(f"{name}/feature", ["elu", "relu", "identity"].index(feature))
        w.scalar(f"{name}/causal", int(causal))
        w.scalar(f"{name}/eps", eps)
        w.scalar(f"{name}/key_length", kl)
        w.tensor(f"{name}/out", linear_attention(q, k, v, feature, causal, eps, kl))
    w.scalar("la/count", len(cases))

    # FLASH: (n, chunk, s, s_lin, e, causal, scale, quad_norm, prefix, key_length)
    fcases = [
        (50, 16, 12, 10, 14, False, None, None, False, None),   # SPEC 3.5 defaults: relu^2(qk/sqrt(s))/c
        (50, 16, 12, 10, 14, True, None, None, False, None),    # causal, linear part / n
        (50, 16, 12, 10, 14, True, None, None, True, None),     # causal, linear part / keys summed (Su)
        (40, 8, 6, 6, 9, True, 1.0 / 8, 1.0, False, None),      # FLASH-pytorch: relu(qk/c)^2, lin / n
        (45, 16, 12, 10, 14, False, None, None, False, 37),     # key padding
        (45, 16, 12, 10, 14, True, None, None, True, 37),       # key padding, causal, prefix
        (70, 70, 8, 8, 8, True, None, None, True, None),        # one chunk: only the quadratic part
    ]
    for idx, (n, c, s, sl, e, causal, scale, quad_norm, prefix, key_length) in enumerate(fcases):
        seed += 10
        qq = randn(n, s, seed=seed)
        kq = randn(n, s, seed=seed + 1)
        ql = randn(n, sl, seed=seed + 2)
        kl = randn(n, sl, seed=seed + 3)
        v = randn(n, e, seed=seed + 4)
        sc = scale if scale is not None else 1.0 / s ** 0.5
        qn = quad_norm if quad_norm is not None else float(c)
        L = n if key_length is None else key_length
        name = f"flash{idx}"
        for t, x in [("qq", qq), ("kq", kq), ("ql", ql), ("kl", kl), ("v", v)]:
            w.tensor(f"{name}/{t}", x)
        w.scalar(f"{name}/chunk", c)
        w.scalar(f"{name}/causal", int(causal))
        w.scalar(f"{name}/scale", sc)
        w.scalar(f"{name}/quad_norm", qn)
        w.scalar(f"{name}/prefix", int(prefix))
        w.scalar(f"{name}/key_length", L)
        w.tensor(f"{name}/out", flash(qq, kq, ql, kl, v, c, causal, sc, qn, prefix, L))
    w.scalar("flash/count", len(fcases))
