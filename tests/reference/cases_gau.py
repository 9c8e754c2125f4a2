# SPDX-License-Identifier: MIT
"""Reference values for the GAU layer (include/kexue/gau.hpp), SPEC.md 3.1-3.3.

The model below is a line-by-line PyTorch transcription of bert4keras' `GatedAttentionUnit.call` and
`attention_normalize` (bojone/bert4keras c1ae0dc, layers.py / backend.py), in float64:

    x -> swish(x W_i + b_i) split [u (e) | v (e) | z (s)]
    q = z * gamma_q + beta_q,  k = z * gamma_k + beta_k         (ScaleOffset; no beta when use_bias=False)
    q, k <- RoPE(sinusoidal(arange(n), s), q / k)                (p_bias='rotary', interleaved pairs)
    a = q k^T (/ sqrt(s) when attention_scale)
    A = attention_normalize(a, key mask [and causal LM mask], method)
    o = (u * (A v)) W_o + b_o

attention_normalize (current bert4keras): masked logits become -inf; l = number of kept keys of the row
(the last dimension when there is no mask); softmax; squared_relu = relu(a)^2 / l; softmax_plus =
softmax(a * ln(max(l, 16)) / ln(512)). Two kexue extensions are covered as well: a fixed squared-ReLU
length (post 9019) and rows with no visible key, which we define as zeros (bert4keras gives NaN).
"""
import math

import torch

from generate import rand, randn

D, E, S = 24, 40, 16      # hidden, units (e), key_size (s): odd-ish sizes that cross SIMD lanes
N = 37                    # sequence length of most cases


def sinusoidal_embeddings(pos, dim, base=10000.0):
    """bert4keras backend.sinusoidal_embeddings: interleaved [sin, cos] pairs."""
    idx = torch.arange(0, dim // 2, dtype=torch.float64)
    idx = torch.pow(torch.tensor(base, dtype=torch.float64), -2 * idx / dim)
    emb = pos.double()[:, None] * idx[None, :]
    return torch.stack([torch.sin(emb), torch.cos(emb)], dim=-1).flatten(-2)


def apply_rotary(sinusoidal, x):
    """bert4keras backend.apply_rotary_position_embeddings for one tensor."""
    cos_pos = sinusoidal[..., 1::2].repeat_interleave(2, dim=-1)
    sin_pos = sinusoidal[..., ::2].repeat_interleave(2, dim=-1)
    x2 = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
    return x * cos_pos + x2 * sin_pos


def attention_normalize(a, keep, method, relu2_length=None, train_length=512, min_length=16):
    """a: [n, m] logits; keep: [n, m] bool or None."""
    if keep is not None:
        a = torch.where(keep, a, torch.tensor(float("-inf"), dtype=a.dtype))
        l = keep.double().sum(-1, keepdim=True)
    else:
        l = torch.full((a.shape[0], 1), float(a.shape[-1]), dtype=a.dtype)
    if method == "softmax":
        A = torch.softmax(a, dim=-1)
    elif method == "squared_relu":
        L = torch.full_like(l, float(relu2_length)) if relu2_length is not None else l
        A = torch.relu(a) ** 2 / L
    elif method == "softmax_plus":
        A = torch.softmax(a * torch.log(torch.clamp(l, min=min_length)) / math.log(train_length), dim=-1)
    else:
        raise ValueError(method)
    # kexue's definition for a row that sees no key: zeros (bert4keras: NaN).
    return torch.where(l > 0, A, torch.zeros_like(A))


def gau(wts, x, method, rope, key_length=None, causal=False, attention_scale=True, relu2_length=None):
    n = x.shape[0]
    h = x @ wts["w_in"]
    if wts["b_in"] is not None:
        h = h + wts["b_in"]
    h = torch.nn.functional.silu(h)
    u, v, z = h[:, :E], h[:, E:2 * E], h[:, 2 * E:]
    q = z * wts["gamma_q"]
    k = z * wts["gamma_k"]
    if wts["beta_q"] is not None:
        q = q + wts["beta_q"]
        k = k + wts["beta_k"]
    if rope:
        pos = sinusoidal_embeddings(torch.arange(n), S)
        q = apply_rotary(pos, q)
        k = apply_rotary(pos, k)
    a = q @ k.T
    if attention_scale:
        a = a / math.sqrt(S)
    keep = None
    if key_length is not None or causal:
        keep = torch.ones(n, n, dtype=torch.bool)
        if key_length is not None:
            keep[:, key_length:] = False
        if causal:
            keep &= torch.ones(n, n, dtype=torch.bool).tril()
    A = attention_normalize(a, keep, method, relu2_length)
    o = (u * (A @ v)) @ wts["w_out"]
    if wts["b_out"] is not None:
        o = o + wts["b_out"]
    return o


def make_weights(seed, bias):
    # Glorot-like scales keep swish in its curved range and the logits O(1), so every normalisation
    # produces a non-trivial A (neither uniform nor one-hot).
    w = {
        "w_in": randn(D, 2 * E + S, seed=seed, std=1.0 / math.sqrt(D)),
        "gamma_q": rand(S, seed=seed + 1, lo=0.5, hi=1.5),
        "gamma_k": rand(S, seed=seed + 2, lo=0.5, hi=1.5),
        "w_out": randn(E, D, seed=seed + 3, std=1.0 / math.sqrt(E)),
        "b_in": None, "beta_q": None, "beta_k": None, "b_out": None,
    }
    if bias:
        w["b_in"] = rand(2 * E + S, seed=seed + 4, lo=-0.5, hi=0.5)
        w["beta_q"] = rand(S, seed=seed + 5, lo=-0.5, hi=0.5)
        w["beta_k"] = rand(S, seed=seed + 6, lo=-0.5, hi=0.5)
        w["b_out"] = rand(D, seed=seed + 7, lo=-0.5, hi=0.5)
    return w


# name, weights, n, method, rope, key_length, causal, attention_scale, relu2_length, x scale
CASES = [
    ("relu2_bias_rope", "bias", N, "squared_relu", True, None, False, True, None, 1.0),
    ("relu2_bias", "bias", N, "squared_relu", False, None, False, True, None, 1.0),
    ("relu2_nobias_rope", "nobias", N, "squared_relu", True, None, False, True, None, 1.0),
    ("relu2_bias_rope_keylen", "bias", N, "squared_relu", True, 23, False, True, None, 1.0),
    ("relu2_fixed_length", "bias", N, "squared_relu", True, 23, False, True, 512, 1.0),
    ("relu2_noscale", "nobias", N, "squared_relu", False, None, False, False, None, 1.0),
    ("softmax_bias_rope", "bias", N, "softmax", True, None, False, True, None, 1.0),
    ("softmax_nobias", "nobias", N, "softmax", False, None, False, True, None, 1.0),
    ("softmax_nobias_rope_keylen", "nobias", N, "softmax", True, 9, False, True, None, 1.0),
    ("softmax_huge", "bias", N, "softmax", True, None, False, True, None, 32.0),
    ("softmax_plus_nobias_rope", "nobias", N, "softmax_plus", True, None, False, True, None, 1.0),  # GAU-alpha
    ("softmax_plus_bias_keylen", "bias", N, "softmax_plus", False, 30, False, True, None, 1.0),
    ("softmax_plus_short", "nobias", 7, "softmax_plus", True, 5, False, True, None, 1.0),  # l < min_length
    ("softmax_plus_causal", "nobias", N, "softmax_plus", True, None, True, True, None, 1.0),
    ("relu2_causal_keylen", "bias", N, "squared_relu", True, 30, True, True, None, 1.0),
    ("softmax_single", "bias", 1, "softmax", True, None, False, True, None, 1.0),
]

BATCH_LENGTHS = [N, 20, 5]


def generate(w):
    weights = {"bias": make_weights(11, True), "nobias": make_weights(21, False)}
    for tag, wt in weights.items():
        for key, val in wt.items():
            if val is not None:
                w.tensor(f"{tag}/{key}", val)
    w.scalar("dims/D", D)
    w.scalar("dims/e", E)
    w.scalar("dims/s", S)
    for i, (name, tag, n, method, rope, key_length, causal, scale, relu2_length, xs) in enumerate(CASES):
        x = randn(n, D, seed=1000 + i) * xs
        w.tensor(f"{name}/x", x)
        w.scalar(f"{name}/rope", int(rope))
        w.scalar(f"{name}/key_length", -1 if key_length is None else key_length)
        w.scalar(f"{name}/causal", int(causal))
        w.scalar(f"{name}/attention_scale", int(scale))
        w.scalar(f"{name}/relu2_length", -1 if relu2_length is None else relu2_length)
        w.scalar(f"{name}/method", {"softmax": 0, "softmax_plus": 1, "squared_relu": 2}[method])
        w.tensor(f"{name}/out", gau(weights[tag], x, method, rope, key_length, causal, scale, relu2_length))
    # Batched [batch, n, D] with one key length per sequence: bert4keras' padded batch (GAU-alpha settings).
    xb = randn(len(BATCH_LENGTHS), N, D, seed=2000)
    w.tensor("batch/x", xb)
    w.tensor("batch/lengths", torch.tensor(BATCH_LENGTHS, dtype=torch.float64))
    w.tensor("batch/out", torch.stack([
        gau(weights["nobias"], xb[b], "softmax_plus", True, BATCH_LENGTHS[b]) for b in range(len(BATCH_LENGTHS))]))
