# SPDX-License-Identifier: MIT
"""The three models of examples/models (bench_models) against the same models written in PyTorch.

fp32, the sizes of bench/bench_models.cpp, random weights. Each PyTorch version is the direct transcription a
user would write (the same as tests/reference/cases_models.py, batched where the model is):
  * encoder: token embedding, RMSNorm without parameters, 4 GAU-alpha layers (fused Linear, SiLU, split,
    scale, interleaved RoPE from a precomputed table, softmax_plus, (u * (A v)) W_o) with Post-Norm, then
    GlobalPointer (Linear, RoPE per head, q k^T / sqrt(d), triangle mask) and span decoding (nonzero of the
    cells above the threshold): one sentence per call;
  * decoder: HF LLaMA's forward (RMSNorm, rotate_half RoPE with precomputed llama3 cos/sin, repeat_kv GQA,
    causal softmax attention, SwiGLU) writing into a preallocated KV cache; prefill of n tokens, and one
    decoding step against `context` cached positions;
  * denoiser: patchify by reshape/permute, Linear + time embedding, 4 Pre-Norm GAU layers with biases, 2-D RoPE
    and softmax, batched over images with bmm, final RMSNorm + Linear, unpatchify, then one DDPM step with
    torch.randn noise.
torch 1.13 has no scaled_dot_product_attention, so attention is matmul + softmax + matmul.
"""
import math

import torch

from _case import Case

SPAN_THRESHOLD = 3.0  # bench_models decodes spans above this score (random weights put half the cells above 0)


def rms(x, eps, gamma=None):
    y = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    return y * gamma if gamma is not None else y


def interleaved_table(n, dim, base):
    inv = base ** (-2 * torch.arange(dim // 2, dtype=torch.float64) / dim)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).repeat_interleave(2, -1).float(), torch.sin(ang).repeat_interleave(2, -1).float()


def rope_interleaved(t, cos, sin):
    t2 = torch.stack([-t[..., 1::2], t[..., ::2]], dim=-1).reshape(t.shape)
    return t * cos + t2 * sin


def encoder_setup(n):
    V, D, E, S, LAYERS, TYPES, HS = 8192, 512, 1024, 128, 4, 4, 64

    def build():
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(V, D, generator=g) / math.sqrt(D)
        layers = [((torch.randn(D, 2 * E + S, generator=g) / math.sqrt(D)),
                   torch.ones(S), torch.ones(S), torch.randn(E, D, generator=g) / math.sqrt(E)) for _ in range(LAYERS)]
        gp_w = torch.randn(D, 2 * TYPES * HS, generator=g) / math.sqrt(D)
        gp_b = torch.zeros(2 * TYPES * HS)
        tokens = torch.tensor([3 + (i * 7919 + 17) % (V - 3) for i in range(n)])
        cos, sin = interleaved_table(n, S, 10000.0)
        gcos, gsin = interleaved_table(n, HS, 10000.0)
        scale = math.log(max(n, 16)) / math.log(512) / math.sqrt(S)
        tril = torch.ones(n, n, dtype=torch.bool).tril(-1)

        def run():
            x = rms(emb[tokens], 1e-7)
            for w_in, gq, gk, w_out in layers:
                h = torch.nn.functional.silu(x @ w_in)
                u, v, z = h[:, :E], h[:, E:2 * E], h[:, 2 * E:]
                q = rope_interleaved(z * gq, cos, sin)
                k = rope_interleaved(z * gk, cos, sin)
                A = torch.softmax((q @ k.T) * scale, dim=-1)
                x = rms(x + (u * (A @ v)) @ w_out, 1e-7)
            y = (x @ gp_w + gp_b).reshape(n, TYPES, 2, HS)
            q = rope_interleaved(y[:, :, 0].transpose(0, 1), gcos, gsin)
            k = rope_interleaved(y[:, :, 1].transpose(0, 1), gcos, gsin)
            s = (q @ k.transpose(1, 2)) / math.sqrt(HS)
            s = s.masked_fill(tril, float("-inf"))
            return torch.nonzero(s > SPAN_THRESHOLD)
        return run
    return build


def llama3_cos_sin(n, hd, base=500000.0, factor=8.0, low=1.0, high=4.0, l0=8192):
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > l0 / low, inv / factor, inv)
    smooth = (l0 / wavelen - low) / (high - low)
    medium = ~(wavelen < l0 / high) & ~(wavelen > l0 / low)
    inv = torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], -1)
    return torch.cos(emb).float(), torch.sin(emb).float()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Llama:
    V, D, HQ, HK, HD, FF, LAYERS = 4096, 512, 8, 2, 64, 1408, 4

    def __init__(self, capacity):
        g = torch.Generator().manual_seed(0)
        D, HQ, HK, HD, FF = self.D, self.HQ, self.HK, self.HD, self.FF
        r = lambda a, b: torch.randn(a, b, generator=g) * 0.02
        self.emb = r(self.V, D)
        self.layers = [dict(n1=torch.ones(D), n2=torch.ones(D), wq=r(D, HQ * HD), wk=r(D, HK * HD), wv=r(D, HK * HD),
                            wo=r(HQ * HD, D), wg=r(D, FF), wu=r(D, FF), wd=r(FF, D)) for _ in range(self.LAYERS)]
        self.norm = torch.ones(D)
        self.head = r(D, self.V)
        self.cos, self.sin = llama3_cos_sin(capacity, HD)
        self.kc = [torch.zeros(HK, capacity, HD) for _ in range(self.LAYERS)]
        self.vc = [torch.zeros(HK, capacity, HD) for _ in range(self.LAYERS)]

    def forward(self, tokens, first):
        n, m = tokens.shape[0], first + tokens.shape[0]
        HQ, HK, HD = self.HQ, self.HK, self.HD
        x = self.emb[tokens]
        cos, sin = self.cos[first:m], self.sin[first:m]
        mask = torch.ones(n, m, dtype=torch.bool).tril(first).logical_not() if n > 1 else None
        for l, p in enumerate(self.layers):
            h = rms(x, 1e-6, p["n1"])
            q = (h @ p["wq"]).reshape(n, HQ, HD).transpose(0, 1)
            k = (h @ p["wk"]).reshape(n, HK, HD).transpose(0, 1)
            v = (h @ p["wv"]).reshape(n, HK, HD).transpose(0, 1)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            self.kc[l][:, first:m] = k
            self.vc[l][:, first:m] = v
            kk = self.kc[l][:, :m].repeat_interleave(HQ // HK, dim=0)
            vv = self.vc[l][:, :m].repeat_interleave(HQ // HK, dim=0)
            a = (q @ kk.transpose(1, 2)) / math.sqrt(HD)
            if mask is not None:
                a = a.masked_fill(mask, float("-inf"))
            o = (torch.softmax(a, -1) @ vv).transpose(0, 1).reshape(n, HQ * HD)
            x = x + o @ p["wo"]
            h = rms(x, 1e-6, p["n2"])
            x = x + (torch.nn.functional.silu(h @ p["wg"]) * (h @ p["wu"])) @ p["wd"]
        return rms(x, 1e-6, self.norm) @ self.head


def prefill_setup(n):
    def build():
        model = Llama(n)
        tokens = torch.tensor([3 + (i * 7919 + 17) % (Llama.V - 3) for i in range(n)])
        return lambda: model.forward(tokens, 0)
    return build


def decode_setup(context):
    def build():
        model = Llama(context + 1)
        model.forward(torch.tensor([3 + (i * 7919 + 17) % (Llama.V - 3) for i in range(context)]), 0)
        token = torch.tensor([42])
        return lambda: model.forward(token, context)
    return build


def denoiser_setup(batch):
    H = W = 64
    C, P, D, E, S, LAYERS, T = 3, 4, 256, 512, 64, 4, 1000
    gh, gw = H // P, W // P
    L, PV = gh * gw, P * P * C

    def build():
        g = torch.Generator().manual_seed(0)
        r = lambda a, b, fan: torch.randn(a, b, generator=g) / math.sqrt(fan)
        patch_in, patch_out = r(PV, D, PV), r(D, PV, D)
        time_emb = torch.rand(T, D, generator=g) * 0.1 - 0.05
        layers = [dict(gamma=torch.ones(D), w_in=r(D, 2 * E + S, D), b_in=torch.zeros(2 * E + S),
                       gq=torch.ones(S), bq=torch.zeros(S), gk=torch.ones(S), bk=torch.zeros(S),
                       w_out=r(E, D, E), b_out=torch.zeros(D)) for _ in range(LAYERS)]
        final = torch.ones(D)
        patch = torch.arange(L)
        rc, rs = interleaved_table(gh, S // 2, 1000.0)
        cos = torch.cat([rc[patch // gw], rc[patch % gw]], -1)
        sin = torch.cat([rs[patch // gw], rs[patch % gw]], -1)
        betas = torch.tensor([0.02 * (i + 1) / T for i in range(T)], dtype=torch.float64)
        ab = torch.cumprod(1 - betas, 0)
        t, prev = 500, 499
        ab_t, ab_p = float(ab[t]), float(ab[prev])
        beta = 1 - ab_t / ab_p
        c0 = math.sqrt(ab_p) * beta / (1 - ab_t)
        c1 = math.sqrt(1 - beta) * (1 - ab_p) / (1 - ab_t)
        x_t = torch.randn(batch, H, W, C, generator=g)

        def run():
            x = x_t.clone()
            h = x.reshape(batch, gh, P, gw, P, C).permute(0, 1, 3, 2, 4, 5).reshape(batch, L, PV)
            h = h @ patch_in + time_emb[t]
            for p in layers:
                y = torch.nn.functional.silu(rms(h, 1e-7, p["gamma"]) @ p["w_in"] + p["b_in"])
                u, v, z = y[..., :E], y[..., E:2 * E], y[..., 2 * E:]
                q = rope_interleaved(z * p["gq"] + p["bq"], cos, sin)
                k = rope_interleaved(z * p["gk"] + p["bk"], cos, sin)
                A = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(S), -1)
                h = h + (u * torch.bmm(A, v)) @ p["w_out"] + p["b_out"]
            e = rms(h, 1e-7, final) @ patch_out
            e = e.reshape(batch, gh, gw, P, P, C).permute(0, 1, 3, 2, 4, 5).reshape(batch, H, W, C)
            x0 = (x - math.sqrt(1 - ab_t) * e) / math.sqrt(ab_t)
            return c0 * x0 + c1 * x + math.sqrt(beta) * torch.randn(batch, H, W, C)
        return run
    return build


CASES = [
    Case("model encoder n=128 (sentences)", "bench_models", "BM_model_encoder/n:128/threads:1/", encoder_setup(128)),
    Case("model encoder n=512 (sentences)", "bench_models", "BM_model_encoder/n:512/threads:1/", encoder_setup(512)),
    Case("model decoder prefill n=128", "bench_models", "BM_model_prefill/n:128/threads:1/", prefill_setup(128)),
    Case("model decoder prefill n=512", "bench_models", "BM_model_prefill/n:512/threads:1/", prefill_setup(512)),
    Case("model decoder decode context=128", "bench_models", "BM_model_decode/context:128/threads:1/",
         decode_setup(128)),
    Case("model decoder decode context=512", "bench_models", "BM_model_decode/context:512/threads:1/",
         decode_setup(512)),
    Case("model denoiser step batch=1 (64x64x3)", "bench_models", "BM_model_denoiser/batch:1/threads:1/",
         denoiser_setup(1)),
    Case("model denoiser step batch=8 (64x64x3)", "bench_models", "BM_model_denoiser/batch:8/threads:1/",
         denoiser_setup(8)),
    Case("model encoder n=512 2 threads", "bench_models", "BM_model_encoder/n:512/threads:2/", encoder_setup(512),
         threads=2),
    Case("model decoder prefill n=512 2 threads", "bench_models", "BM_model_prefill/n:512/threads:2/",
         prefill_setup(512), threads=2),
    Case("model denoiser step batch=8 2 threads", "bench_models", "BM_model_denoiser/batch:8/threads:2/",
         denoiser_setup(8), threads=2),
]
