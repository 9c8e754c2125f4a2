# SPDX-License-Identifier: MIT
"""Reference values for the three models of examples/models (issue 14 item 5), computed in float64 PyTorch.

Each model is transcribed here from its sources, independently of the C++ (no kexue code is mirrored):
  * encoder: bert4keras GAU_alpha (ZhuiyiTechnology/GAU-alpha models.py on bert4keras' RoFormerV2): token +
    segment embeddings, Embedding-Norm (x / sqrt(mean(x^2) + 1e-7)), per layer x = Norm(x + GAU(x)) with
    GatedAttentionUnit(use_bias=False, normalization='softmax_plus', p_bias='rotary'), then bert4keras'
    GlobalPointer(heads, head_size) with RoPE and the current -inf masks, and bojone/GlobalPointer's decoding
    (cells > 0, [CLS] / [SEP] rows and columns excluded);
  * decoder: HF transformers' LlamaForCausalLM forward (LlamaRMSNorm, rotate_half RoPE with rope_type
    "llama3" inverse frequencies, repeat_kv GQA, causal softmax attention, SwiGLU MLP), and greedy decoding
    by rerunning the full sequence each step;
  * denoiser: Keras-DDPM ddpm-gau.py (patchify by Reshape/Permute/Reshape, Dense without bias + time Embedding,
    Pre-Norm GatedAttentionUnit(normalization='softmax') with its default biases and 2-D RoPE (base 1000),
    LayerNormalization(zero_mean=False, offset=False), unpatchify), inside diffusers' DDPMScheduler.step with
    variance 'fixed_large', no clipping and noise at the last step too (Su's sampler, SPEC 6.3), for the
    proportional schedule beta_t = 0.02 t / T and 'leading' timesteps. The noise is torch.manual_seed(s) +
    torch.randn(..., dtype=float64) (x_T first, then one call per step), which kexue::TorchGenerator reproduces.
Weights are multiples of 1/256 (exact in float32, short in text) so float and double tests see the same values.
"""
import math

import torch

from generate import randn

F64 = torch.float64


def q8(x):
    """Rounds to a multiple of 1/256: exact in float32 and short in the data file."""
    return torch.round(x * 256) / 256


def w_(rows, cols, seed, std):
    return q8(randn(rows, cols, seed=seed, std=std))


def v_(n, seed, std, mean=0.0):
    return q8(randn(n, seed=seed, std=std) + mean)


def rms_norm(x, eps, gamma=None):
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y * gamma if gamma is not None else y


def silu(x):
    return x * torch.sigmoid(x)


def sinusoidal(pos, dim, base):
    """bert4keras sinusoidal_embeddings: interleaved [sin, cos] pairs."""
    idx = torch.pow(torch.tensor(base, dtype=F64), -2 * torch.arange(dim // 2, dtype=F64) / dim)
    ang = pos.double()[:, None] * idx[None, :]
    return torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)


def rotary(p, x):
    """bert4keras apply_rotary_position_embeddings (interleaved pairs)."""
    cos = p[..., 1::2].repeat_interleave(2, dim=-1)
    sin = p[..., ::2].repeat_interleave(2, dim=-1)
    x2 = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
    return x * cos + x2 * sin


def gau(x, w, p, keep, normalization):
    """bert4keras GatedAttentionUnit on one sequence x [n, D]; keep [n, n] bool (key mask)."""
    e, s = w["w_out"].shape[0], w["gamma_q"].shape[0]
    h = x @ w["w_in"]
    if "b_in" in w:
        h = h + w["b_in"]
    h = silu(h)
    u, v, z = h[:, :e], h[:, e:2 * e], h[:, 2 * e:]
    q = z * w["gamma_q"] + (w["beta_q"] if "beta_q" in w else 0)
    k = z * w["gamma_k"] + (w["beta_k"] if "beta_k" in w else 0)
    q, k = p(q), p(k)
    a = q @ k.T / math.sqrt(s)
    a = torch.where(keep, a, torch.tensor(float("-inf"), dtype=F64))
    l = keep.double().sum(-1, keepdim=True)
    if normalization == "softmax_plus":
        A = torch.softmax(a * torch.log(torch.clamp(l, min=16)) / math.log(512), dim=-1)
    else:
        A = torch.softmax(a, dim=-1)
    o = (u * (A @ v)) @ w["w_out"]
    return o + w["b_out"] if "b_out" in w else o


# ---- a. GAU-alpha encoder + GlobalPointer ------------------------------------------------------------------

def encoder(w):
    V, SEG, D, E, S, LAYERS, TYPES, HS = 32, 2, 32, 64, 16, 2, 2, 16
    N, LENGTH = 20, 18
    eps = 1e-7
    tag = "encoder"
    params = {"token_embedding": w_(V, D, 1001, 1.0), "segment_embedding": w_(SEG, D, 1002, 1.0)}
    layers = []
    std = 1.0 / math.sqrt(D) * LAYERS ** (-1 / 3)  # GAU-alpha's initialiser scale (untruncated here)
    for l in range(LAYERS):
        layers.append({"w_in": w_(D, 2 * E + S, 1010 + l, std),
                       "gamma_q": v_(S, 1020 + l, 0.1, 1.0), "gamma_k": v_(S, 1030 + l, 0.1, 1.0),
                       "w_out": w_(E, D, 1040 + l, 1.0 / math.sqrt(E))})
    gp_w, gp_b = w_(D, 2 * TYPES * HS, 1050, 1.0 / math.sqrt(D)), v_(2 * TYPES * HS, 1051, 0.1)

    g = torch.Generator().manual_seed(1060)
    tokens = [1] + torch.randint(3, V, (LENGTH - 2,), generator=g).tolist() + [2] + [0] * (N - LENGTH)
    segments = [0] * 10 + [1] * (LENGTH - 10) + [0] * (N - LENGTH)

    x = params["token_embedding"][tokens] + params["segment_embedding"][segments]
    x = rms_norm(x, eps)
    keep = torch.zeros(N, N, dtype=torch.bool)
    keep[:, :LENGTH] = True  # bert4keras' key mask: token ids != 0
    pos = sinusoidal(torch.arange(N), S, 10000.0)
    for layer in layers:
        x = rms_norm(x + gau(x, layer, lambda t: rotary(pos, t), keep, "softmax_plus"), eps)
    hidden = x

    y = hidden @ gp_w + gp_b
    gp_pos = sinusoidal(torch.arange(N), HS, 10000.0)
    valid = torch.zeros(N, dtype=torch.bool)
    valid[:LENGTH] = True
    keep_gp = valid[:, None] & valid[None, :] & torch.ones(N, N, dtype=torch.bool).triu()
    scores = []
    for a in range(TYPES):
        qa = rotary(gp_pos, y[:, 2 * HS * a: 2 * HS * a + HS])
        ka = rotary(gp_pos, y[:, 2 * HS * a + HS: 2 * HS * (a + 1)])
        s = qa @ ka.T / math.sqrt(HS)
        scores.append(torch.where(keep_gp, s, torch.tensor(float("-inf"), dtype=F64)))
    scores = torch.cat(scores, 0)
    spans = []
    for a in range(TYPES):
        for i in range(1, LENGTH - 1):  # recognize(): -inf on [CLS] (0) and [SEP] (length - 1)
            for j in range(i, LENGTH - 1):
                if scores[a * N + i, j] > 0:
                    spans.append([a, i, j])
    return tag, {
        "config": torch.tensor([V, SEG, D, E, S, LAYERS, TYPES, HS, N, LENGTH], dtype=F64),
        "tokens": torch.tensor(tokens, dtype=F64), "segments": torch.tensor(segments, dtype=F64),
        **params,
        **{f"layer{l}/{k}": v for l, layer in enumerate(layers) for k, v in layer.items()},
        "pointer/w": gp_w, "pointer/b": gp_b,
        "hidden": hidden, "scores": scores, "spans": torch.tensor(spans, dtype=F64).reshape(-1, 3),
    }


# ---- b. LLaMA-style decoder ---------------------------------------------------------------------------------

def llama3_inv_freq(hd, base, factor, low, high, l0):
    """HF modeling_rope_utils._compute_llama3_parameters."""
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=F64) / hd))
    low_wavelen, high_wavelen = l0 / low, l0 / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (l0 / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, inv_freq_llama)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def llama_forward(p, c, tokens):
    V, D, HQ, HK, HD, FF, LAYERS = c["V"], c["D"], c["HQ"], c["HK"], c["HD"], c["FF"], c["LAYERS"]
    n = len(tokens)
    x = p["embedding"][tokens]
    inv = llama3_inv_freq(HD, c["base"], c["factor"], c["low"], c["high"], c["l0"])
    ang = torch.arange(n, dtype=F64)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = torch.cos(emb), torch.sin(emb)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for l in range(LAYERS):
        lp = {k[len(f"layer{l}/"):]: v for k, v in p.items() if k.startswith(f"layer{l}/")}
        h = rms_norm(x, c["eps"], lp["attn_norm"])
        q = (h @ lp["wq"]).reshape(n, HQ, HD).transpose(0, 1)
        k = (h @ lp["wk"]).reshape(n, HK, HD).transpose(0, 1)
        v = (h @ lp["wv"]).reshape(n, HK, HD).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(HQ // HK, dim=0)  # repeat_kv
        v = v.repeat_interleave(HQ // HK, dim=0)
        a = q @ k.transpose(1, 2) / math.sqrt(HD)
        a = torch.where(causal, a, torch.tensor(float("-inf"), dtype=F64))
        o = (torch.softmax(a, dim=-1) @ v).transpose(0, 1).reshape(n, HQ * HD)
        x = x + o @ lp["wo"]
        h = rms_norm(x, c["eps"], lp["mlp_norm"])
        x = x + (silu(h @ lp["w_gate"]) * (h @ lp["w_up"])) @ lp["w_down"]
    return rms_norm(x, c["eps"], p["final_norm"]) @ p["lm_head"]


def decoder(w):
    c = dict(V=32, D=32, HQ=4, HK=2, HD=8, FF=64, LAYERS=2, base=500000.0, factor=8.0, low=1.0, high=4.0,
             l0=256, eps=1e-6)
    PROMPT, STEPS = 6, 10
    D, HQ, HK, HD, FF = c["D"], c["HQ"], c["HK"], c["HD"], c["FF"]
    p = {"embedding": w_(c["V"], D, 2001, 1.0), "final_norm": v_(D, 2002, 0.1, 1.0),
         "lm_head": w_(D, c["V"], 2003, 2.0 / math.sqrt(D))}
    for l in range(c["LAYERS"]):
        s = 2010 + 20 * l
        p.update({f"layer{l}/attn_norm": v_(D, s, 0.1, 1.0), f"layer{l}/mlp_norm": v_(D, s + 1, 0.1, 1.0),
                  f"layer{l}/wq": w_(D, HQ * HD, s + 2, 1.0 / math.sqrt(D)),
                  f"layer{l}/wk": w_(D, HK * HD, s + 3, 1.0 / math.sqrt(D)),
                  f"layer{l}/wv": w_(D, HK * HD, s + 4, 1.0 / math.sqrt(D)),
                  f"layer{l}/wo": w_(HQ * HD, D, s + 5, 1.0 / math.sqrt(HQ * HD)),
                  f"layer{l}/w_gate": w_(D, FF, s + 6, 1.0 / math.sqrt(D)),
                  f"layer{l}/w_up": w_(D, FF, s + 7, 1.0 / math.sqrt(D)),
                  f"layer{l}/w_down": w_(FF, D, s + 8, 1.0 / math.sqrt(FF))})
    g = torch.Generator().manual_seed(2090)
    prompt = torch.randint(0, c["V"], (PROMPT,), generator=g).tolist()
    seq = list(prompt)
    generated = []
    for _ in range(STEPS):
        logits = llama_forward(p, c, seq)
        top2 = torch.topk(logits[-1], 2).values
        assert top2[0] - top2[1] > 1e-3, "greedy step too close to a tie for the float test"
        nxt = int(torch.argmax(logits[-1]))
        generated.append(nxt)
        seq.append(nxt)
    logits = llama_forward(p, c, seq[:-1])  # every position the generation computed logits for
    cfg = [c[k] for k in ("V", "D", "HQ", "HK", "HD", "FF", "LAYERS", "base", "factor", "low", "high", "l0", "eps")]
    return "decoder", {
        "config": torch.tensor(cfg, dtype=F64), "prompt": torch.tensor(prompt, dtype=F64),
        "generated": torch.tensor(generated, dtype=F64),
        "inv_freq": llama3_inv_freq(HD, c["base"], c["factor"], c["low"], c["high"], c["l0"]),
        **p, "logits": logits,
    }


# ---- c. patch-diffusion GAU denoiser in a DDPM loop ----------------------------------------------------------

def denoiser(w):
    B, H, W, C, P = 2, 8, 8, 3, 2
    D, E, S, LAYERS, T, STEPS, SEED = 32, 64, 16, 2, 1000, 4, 9984
    eps = 1e-7
    gh, gw = H // P, W // P
    L = gh * gw
    PV = P * P * C
    p = {"patch_in": w_(PV, D, 3001, 1.0 / math.sqrt(PV)), "final_gamma": v_(D, 3002, 0.1, 1.0),
         "patch_out": w_(D, PV, 3003, 1.0 / math.sqrt(D))}
    layers = []
    for l in range(LAYERS):
        s = 3010 + 20 * l
        layers.append({"norm_gamma": v_(D, s, 0.1, 1.0),
                       "w_in": w_(D, 2 * E + S, s + 1, 1.0 / math.sqrt(D)), "b_in": v_(2 * E + S, s + 2, 0.1),
                       "gamma_q": v_(S, s + 3, 0.1, 1.0), "beta_q": v_(S, s + 4, 0.1),
                       "gamma_k": v_(S, s + 5, 0.1, 1.0), "beta_k": v_(S, s + 6, 0.1),
                       "w_out": w_(E, D, s + 7, 1.0 / math.sqrt(E)), "b_out": v_(D, s + 8, 0.1)})
    # diffusers 'leading' spacing and the proportional schedule (kexue.fm/archives/9119)
    timesteps = [i * (T // STEPS) for i in range(STEPS)][::-1]
    time_rows = w_(STEPS, D, 3004, 0.05)  # the time embedding rows of timesteps[0..STEPS)
    betas = torch.tensor([0.02 * (i + 1) / T for i in range(T)], dtype=F64)
    ab = torch.cumprod(1 - betas, 0)

    # ddpm-gau.py's rope_2d: sinusoidal(row, S/2, 1000) ++ sinusoidal(col, S/2, 1000) per patch
    patch = torch.arange(L)
    pos_r, pos_c = sinusoidal(patch // gw, S // 2, 1000.0), sinusoidal(patch % gw, S // 2, 1000.0)

    def rope2d(t):
        return torch.cat([rotary(pos_r, t[:, :S // 2]), rotary(pos_c, t[:, S // 2:])], dim=-1)

    keep = torch.ones(L, L, dtype=torch.bool)

    def eps_model(x, step):
        t = x.reshape(B, gh, P, gw, P, C).permute(0, 1, 3, 2, 4, 5).reshape(B, L, PV)
        out = []
        for b in range(B):
            h = t[b] @ p["patch_in"] + time_rows[step]
            for layer in layers:
                h = h + gau(rms_norm(h, eps, layer["norm_gamma"]), layer, rope2d, keep, "softmax")
            out.append(rms_norm(h, eps, p["final_gamma"]) @ p["patch_out"])
        y = torch.stack(out)
        return y.reshape(B, gh, gw, P, P, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)

    torch.manual_seed(SEED)
    x = torch.randn(B, H, W, C, dtype=F64)
    x_T = x.clone()
    eps_first = None
    for i, t in enumerate(timesteps):
        e = eps_model(x, i)
        if eps_first is None:
            eps_first = e
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab_t, ab_prev = ab[t], (ab[prev] if prev >= 0 else torch.tensor(1.0, dtype=F64))
        alpha, beta = ab_t / ab_prev, 1 - ab_t / ab_prev
        x0 = (x - torch.sqrt(1 - ab_t) * e) / torch.sqrt(ab_t)
        mean = torch.sqrt(ab_prev) * beta / (1 - ab_t) * x0 + torch.sqrt(alpha) * (1 - ab_prev) / (1 - ab_t) * x
        x = mean + torch.sqrt(beta) * torch.randn(B, H, W, C, dtype=F64)  # fixed_large; noise at the end too
    return "denoiser", {
        "config": torch.tensor([B, H, W, C, P, D, E, S, LAYERS, T, STEPS, SEED], dtype=F64),
        "timesteps": torch.tensor(timesteps, dtype=F64), "time_rows": time_rows, **p,
        **{f"layer{l}/{k}": v for l, layer in enumerate(layers) for k, v in layer.items()},
        "x_T": x_T, "eps_first": eps_first, "sample": x,
    }


def generate(w):
    for model in (encoder, decoder, denoiser):
        tag, tensors = model(w)
        for name, value in tensors.items():
            w.tensor(f"{tag}/{name}", value)
