# SPDX-License-Identifier: MIT
"""Reference values for GlobalPointer / Efficient GlobalPointer / the multi-label loss (SPEC section 2).

The formulas below follow bert4keras (layers.py GlobalPointer / EfficientGlobalPointer, backend.py
multilabel_categorical_crossentropy / sparse_multilabel_categorical_crossentropy) as SPEC 2.2-2.6 describes
them, written in PyTorch float64; gradients come from torch autograd. The legacy masking conventions are
SPEC 2.3's. Running this family also rewrites examples/data/ner_spans.txt (the NER example's data).
"""
import math
import os

import torch

from generate import rand, randn

NEG_INF = float("-inf")


def sinusoidal(n, d, base=10000.0):
    """SPEC 1.1: P[pos, 2i] = sin(pos w_i), P[pos, 2i+1] = cos(pos w_i)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    omega = base ** (-2.0 * torch.arange(d // 2, dtype=torch.float64) / d)
    ang = pos * omega
    return torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).reshape(n, d)


def apply_rope(x):
    """SPEC 1.2 (bert4keras apply_rotary_position_embeddings), x: [n, d] at positions 0..n-1."""
    n, d = x.shape
    p = sinusoidal(n, d)
    cos_pos = p[:, 1::2].repeat_interleave(2, dim=-1)
    sin_pos = p[:, 0::2].repeat_interleave(2, dim=-1)
    x2 = torch.stack([-x[:, 1::2], x[:, 0::2]], dim=-1).reshape(x.shape)
    return x * cos_pos + x2 * sin_pos


def masks(n, length):
    valid = (torch.arange(n) < length).double()
    return valid


def mask_current(logits, length, tril, fill):
    """bert4keras since 2023-03-06: where(keep, S, fill), keep = pad_row & pad_col & (j >= i)."""
    n = logits.shape[-1]
    v = masks(n, length).bool()
    keep = v[:, None] & v[None, :]
    if tril:
        keep = keep & torch.triu(torch.ones(n, n, dtype=torch.bool))
    return torch.where(keep, logits, torch.full_like(logits, fill))


def mask_bert4keras_legacy(x, length, tril, magnitude):
    """bert4keras 2021-04-23 .. 2023-03-06: sequence_masking with value -M on axis 2 then axis 3
    (x * mask + value * (1 - mask)), then the triangle as x - (1 - triu) * M."""
    n = x.shape[-1]
    v = masks(n, length)
    x = x * v[:, None] + (-magnitude) * (1 - v[:, None])
    x = x * v[None, :] + (-magnitude) * (1 - v[None, :])
    if tril:
        x = x - (1 - torch.triu(torch.ones(n, n, dtype=torch.float64))) * magnitude
    return x


def mask_torch_port(x, length, tril, magnitude):
    """gaohongkui-style PyTorch ports: the padding mask only on the column axis, -M via x*pad - (1-pad)*M,
    then the strict lower triangle minus M."""
    n = x.shape[-1]
    v = masks(n, length)
    x = x * v[None, :] - (1 - v[None, :]) * magnitude
    if tril:
        x = x - torch.tril(torch.ones(n, n, dtype=torch.float64), -1) * magnitude
    return x


def gp_head(q, k, length, convention="current", tril=True, scale=True, fill=NEG_INF, magnitude=1e12, rope=True):
    d = q.shape[-1]
    s = apply_rope(q) @ apply_rope(k).T if rope else q @ k.T
    sc = 1.0 / math.sqrt(d) if scale else 1.0
    if convention == "current":
        return mask_current(s * sc, length, tril, fill)
    if convention == "bert4keras2021":
        return mask_bert4keras_legacy(s, length, tril, magnitude) * sc
    if convention == "torch_port":
        return mask_torch_port(s, length, tril, magnitude) * sc
    raise ValueError(convention)


def gp_layer(h, w, b, heads, d, length, **kw):
    y = h @ w + b
    out = []
    for a in range(heads):
        q = y[:, 2 * d * a: 2 * d * a + d]
        k = y[:, 2 * d * a + d: 2 * d * (a + 1)]
        out.append(gp_head(q, k, length, **kw))
    return torch.stack(out)  # [heads, n, n]


def egp_layer(h, wp, bp, wc, bc, heads, d, length, convention="current", tril=True, scale=True, fill=NEG_INF,
              magnitude=1e12):
    p = h @ wp + bp                      # [n, 2d]
    q, k = p[:, 0::2], p[:, 1::2]        # interleaved split
    sc = 1.0 / math.sqrt(d) if scale else 1.0
    dot = apply_rope(q) @ apply_rope(k).T * sc
    c = (p @ wc + bc) / 2                # [n, 2A] from the un-rotated projection
    out = []
    for a in range(heads):
        s = dot + c[:, 2 * a + 1][:, None] + c[:, 2 * a][None, :]
        if convention == "current":
            out.append(mask_current(s, length, tril, fill))
        elif convention == "bert4keras2021":
            out.append(mask_bert4keras_legacy(s, length, tril, magnitude))
        elif convention == "torch_port":
            out.append(mask_torch_port(s, length, tril, magnitude))
    return torch.stack(out)


def mlce_soft(s, t):
    """SPEC 2.4 soft form, row-wise: lse([s + log(1-t), 0]) + lse([-s + log t, 0]); -inf cells are -inf in
    both sets. Returns the per-row losses."""
    masked = torch.isinf(s) & (s < 0)
    s_safe = torch.where(masked, torch.zeros_like(s), s)
    ninf = torch.full_like(s, NEG_INF)
    neg = torch.where(masked, ninf, s_safe + torch.log(1 - t))
    pos = torch.where(masked, ninf, -s_safe + torch.log(t))
    zeros = torch.zeros_like(s[..., :1])
    return torch.logsumexp(torch.cat([neg, zeros], -1), -1) + torch.logsumexp(torch.cat([pos, zeros], -1), -1)


def sparse_mlce(s, pos_idx, mask_zero=False):
    """bert4keras sparse_multilabel_categorical_crossentropy, per row."""
    zeros = torch.zeros_like(s[..., :1])
    y_pred = torch.cat([s, zeros], -1)
    if mask_zero:
        infs = zeros + float("inf")
        y_pred = torch.cat([infs, y_pred[..., 1:]], -1)
    y_pos_2 = torch.gather(y_pred, -1, pos_idx)
    y_pos_1 = torch.cat([y_pos_2, zeros], -1)
    if mask_zero:
        y_pred = torch.cat([-infs, y_pred[..., 1:]], -1)
        y_pos_2 = torch.gather(y_pred, -1, pos_idx)
    pos_loss = torch.logsumexp(-y_pos_1, -1)
    all_loss = torch.logsumexp(y_pred, -1)
    aux_loss = torch.logsumexp(y_pos_2, -1) - all_loss
    aux_loss = torch.clamp(1 - torch.exp(aux_loss), 1e-7, 1)
    return pos_loss + all_loss + torch.log(aux_loss)


def loss_case(w, name, s, t, soft=False, block=None):
    """Mean over rows (or over n x n blocks, SPEC 2.5) and its gradient by autograd."""
    s = s.clone().requires_grad_(True)
    if block is None:
        rows = mlce_soft(s, t)
    else:
        rows = mlce_soft(s.reshape(-1, block * block), t.reshape(-1, block * block))
    loss = rows.mean()
    loss.backward()
    w.tensor(f"{name}/scores", s.detach())
    w.tensor(f"{name}/labels", t)
    w.scalar(f"{name}/loss", loss.detach())
    w.tensor(f"{name}/grad", s.grad)


def generate(w):
    # ---- one head from projected q, k ----------------------------------------------------------------------
    for n, d, length, tag in [(13, 8, 9, "a"), (13, 8, 13, "b"), (21, 16, 17, "c"), (5, 4, 0, "d")]:
        q = randn(n, d, seed=10 + n + d)
        k = randn(n, d, seed=20 + n + d)
        w.tensor(f"head_{tag}/q", q)
        w.tensor(f"head_{tag}/k", k)
        w.scalar(f"head_{tag}/length", length)
        w.tensor(f"head_{tag}/current", gp_head(q, k, length))
        w.tensor(f"head_{tag}/current_fill", gp_head(q, k, length, fill=-1e4))
        w.tensor(f"head_{tag}/current_noscale_notril", gp_head(q, k, length, tril=False, scale=False))
        w.tensor(f"head_{tag}/bert4keras2021", gp_head(q, k, length, convention="bert4keras2021"))
        w.tensor(f"head_{tag}/torch_port", gp_head(q, k, length, convention="torch_port"))
        w.tensor(f"head_{tag}/current_norope", gp_head(q, k, length, rope=False))

    # ---- the layer from hidden states --------------------------------------------------------------------
    n, hidden, heads, d = 11, 12, 3, 8
    h = randn(n, hidden, seed=31)
    wgt = randn(hidden, 2 * heads * d, seed=32, std=0.4)
    b = randn(2 * heads * d, seed=33, std=0.2)
    w.tensor("layer/h", h)
    w.tensor("layer/w", wgt)
    w.tensor("layer/b", b)
    w.scalar("layer/heads", heads)
    w.scalar("layer/head_size", d)
    for length in (7, 11):
        w.tensor(f"layer/len{length}/current", gp_layer(h, wgt, b, heads, d, length))
        w.tensor(f"layer/len{length}/fill", gp_layer(h, wgt, b, heads, d, length, fill=-1e12))
        w.tensor(f"layer/len{length}/bert4keras2021",
                 gp_layer(h, wgt, b, heads, d, length, convention="bert4keras2021"))

    # ---- Efficient GlobalPointer --------------------------------------------------------------------------
    n, hidden, heads, d = 11, 12, 4, 8
    h = randn(n, hidden, seed=41)
    wp = randn(hidden, 2 * d, seed=42, std=0.4)
    bp = randn(2 * d, seed=43, std=0.2)
    wc = randn(2 * d, 2 * heads, seed=44, std=0.4)
    bc = randn(2 * heads, seed=45, std=0.2)
    for nm, t in [("h", h), ("w_p", wp), ("b_p", bp), ("w_c", wc), ("b_c", bc)]:
        w.tensor(f"efficient/{nm}", t)
    w.scalar("efficient/heads", heads)
    w.scalar("efficient/head_size", d)
    for length in (6, 11):
        w.tensor(f"efficient/len{length}/current", egp_layer(h, wp, bp, wc, bc, heads, d, length))
        w.tensor(f"efficient/len{length}/fill", egp_layer(h, wp, bp, wc, bc, heads, d, length, fill=-1e12))
        w.tensor(f"efficient/len{length}/bert4keras2021",
                 egp_layer(h, wp, bp, wc, bc, heads, d, length, convention="bert4keras2021"))
        w.tensor(f"efficient/len{length}/torch_port",
                 egp_layer(h, wp, bp, wc, bc, heads, d, length, convention="torch_port"))

    # ---- multi-label loss ----------------------------------------------------------------------------------
    # SPEC 2.4's derived vector.
    loss_case(w, "loss_spec", torch.tensor([[2.0, -1.0, 0.5, -3.0]]), torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    loss_case(w, "loss_spec_soft", torch.tensor([[2.0, -1.0, 0.5, -3.0]]), torch.tensor([[0.9, 0.1, 0.0, 1.0]]),
              soft=True)
    # Hard labels over a GlobalPointer-like score matrix with masked cells, a fully masked row and a row
    # without positives.
    rows, cols = 9, 13
    s = rand(rows, cols, seed=51, lo=-6, hi=6)
    t = (rand(rows, cols, seed=52) > 0.6).double()
    s[0, :5] = NEG_INF
    t[0, :5] = 0.0
    s[3, :] = NEG_INF          # every cell masked
    t[3, :] = 0.0
    t[5, :] = 0.0              # no positive label
    s[6] *= 20                 # huge logits
    loss_case(w, "loss_hard", s, t)
    soft = rand(rows, cols, seed=53, lo=0, hi=1)
    soft[1, :4] = 0.0
    soft[2, :4] = 1.0
    soft[3, :] = 0.3
    loss_case(w, "loss_soft", s, soft, soft=True)
    # SPEC 2.5: one problem per n x n block (the reference scripts' global_pointer_crossentropy).
    n, blocks = 6, 4
    gs = gp_layer(randn(n, 5, seed=61), randn(5, 2 * blocks * 4, seed=62), randn(2 * blocks * 4, seed=63), blocks,
                  4, 5).reshape(blocks * n, n)
    gt = torch.zeros(blocks, n, n)
    gt[0, 1, 2] = gt[0, 2, 4] = gt[1, 0, 0] = gt[2, 3, 3] = 1.0
    loss_case(w, "loss_blocks", gs, gt.reshape(blocks * n, n), block=n)

    # Sparse form (positives as indices).
    rows, cols, kpos = 5, 11, 3
    s = rand(rows, cols, seed=71, lo=-5, hi=5).requires_grad_(True)
    idx = torch.tensor([[0, 3, 7], [1, 2, 10], [4, 5, 6], [9, 8, 0], [2, 10, 5]])
    loss = sparse_mlce(s, idx).mean()
    loss.backward()
    w.tensor("sparse/scores", s.detach())
    w.tensor("sparse/positives", idx.double())
    w.scalar("sparse/loss", loss.detach())
    w.tensor("sparse/grad", s.grad)
    s2 = s.detach().clone().requires_grad_(True)
    idx0 = torch.tensor([[3, 7, 0], [1, 0, 0], [4, 5, 6], [0, 0, 0], [2, 10, 5]])  # 0 = padding
    loss = sparse_mlce(s2, idx0, mask_zero=True).mean()
    loss.backward()
    w.tensor("sparse_mask_zero/positives", idx0.double())
    w.scalar("sparse_mask_zero/loss", loss.detach())
    w.tensor("sparse_mask_zero/grad", s2.grad)

    write_example_data()


# ---- data for examples/ner_spans.cpp ------------------------------------------------------------------------
def write_example_data():
    """A hand-built GlobalPointer (not trained) over a short sentence, so the example's output is readable:
    hidden state dims 0..S-1 mark 'an entity of slot s starts here', dims S..2S-1 'ends here', and the dense
    weights map them to q/k coordinates of the lowest-frequency RoPE pairs (which barely rotate over a short
    sentence), so s(i, j) ~ [slot at i == slot at j] - 0.5. Small random noise rides on every hidden unit."""
    tokens = ["[CLS]", "张", "三", "和", "李", "四", "在", "北", "京", "大", "学", "读", "书", "[SEP]"]
    types = ["PER", "LOC", "ORG"]
    # (type, start, end), inclusive; 北京 is a LOC nested inside the ORG 北京大学.
    entities = [(0, 1, 2), (0, 4, 5), (1, 7, 8), (2, 7, 10)]
    n, heads, d = len(tokens), len(types), 64
    slots = len(entities)
    hidden = 2 * slots + 8
    gen = torch.Generator().manual_seed(81)
    h = (torch.randn(n, hidden, generator=gen, dtype=torch.float32) * 0.05).double()
    for e, (_, st, en) in enumerate(entities):
        h[st, e] += 1.0
        h[en, slots + e] += 1.0
    h[:, hidden - 1] = 1.0  # a constant unit, as a bias-like feature
    wgt = torch.zeros(hidden, 2 * heads * d)
    b = torch.zeros(2 * heads * d)
    for e, (ty, st, en) in enumerate(entities):
        qc = 2 * d * ty + (d - 2 * slots - 2) + 2 * e   # a low-frequency pair's first dim, per slot
        kc = qc + d
        wgt[e, qc] = 3.0                     # q of a start token of slot e
        wgt[slots + e, kc] = 3.0             # k of an end token of slot e
    for ty in range(heads):
        qc = 2 * d * ty + d - 2               # the lowest-frequency pair: constant -0.5 * 64 offset term
        b[qc] = 1.0
        b[qc + d] = -4.0
    wgt = wgt.float().double()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "data", "ner_spans.txt")
    lines = [
        "# kexue example data for examples/ner_spans.cpp, written by tests/reference/cases_global_pointer.py",
        "# A hand-built (not trained) GlobalPointer layer: heads = entity types, head_size 64, RoPE on.",
        "$ tokens " + " ".join(tokens),
        "$ types " + " ".join(types),
    ]

    def put(name, t):
        t = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
        lines.append("@ " + name + " " + " ".join(str(x) for x in t.shape))
        for row in t.tolist():
            lines.append(" ".join(repr(float(x)) for x in row))

    put("h", h)
    put("w", wgt)
    put("b", b)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    # Sanity: the spans this data should produce, with the [CLS]/[SEP] rows/cols excluded.
    scores = gp_layer(h, wgt, b, heads, d, n)
    found = [(a, i, j) for a in range(heads) for i in range(1, n - 1) for j in range(1, n - 1) if scores[a, i, j] > 0]
    want = sorted((ty, st, en) for ty, st, en in entities)
    assert found == want, (found, want)
