# SPDX-License-Identifier: MIT
"""Reference values for kexue/norm.hpp, computed in float64 with PyTorch.

The norms are written the way the peer code writes them, not the way kexue computes them:
  * layer_norm: torch.nn.functional.layer_norm(x, (d,), gamma, beta, eps) (biased variance);
  * rms_norm: HF transformers' LlamaRMSNorm expression x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gamma;
  * the fused residual forms: the same expressions applied to x + residual (sum is x + residual itself);
  * bert4keras' LayerNormalization(zero_mean=False, scale=False, offset=False) of RoFormerV2: rms_norm without
    gamma at eps = 1e-7 (K.epsilon()).
Case names: <case>/x, <case>/residual (fused forms), <case>/gamma, <case>/beta (empty when absent),
<case>/eps, <case>/y (expected out) and <case>/sum (fused forms).
Run: /usr/bin/python3 tests/reference/generate.py norm
"""
import torch
import torch.nn.functional as F

from generate import rand, randn


def rms(x, gamma, eps):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * gamma if gamma.numel() else y


def layer(x, gamma, beta, eps):
    d = x.shape[-1]
    return F.layer_norm(x, (d,), gamma if gamma.numel() else None, beta if beta.numel() else None, eps)


def generate(w):
    seed = 1400
    empty = torch.zeros(0, dtype=torch.float64)
    cases = [
        # name, kind, rows, d, gamma, beta, eps, residual, mean offset of x
        ("ln64", "layer", 9, 64, True, True, 1e-5, False, 0.0),
        ("ln100_nobeta", "layer", 5, 100, True, False, 1e-5, False, 0.0),
        ("ln7_noparams", "layer", 6, 7, False, False, 1e-12, False, 0.0),
        ("ln1", "layer", 3, 1, True, True, 1e-5, False, 0.0),              # d = 1: out = beta
        ("ln_offset", "layer", 4, 257, True, True, 1e-5, False, 300.0),    # large mean: cancellation
        ("rms64", "rms", 9, 64, True, False, 1e-6, False, 0.0),
        ("rms33_noparams", "rms", 7, 33, False, False, 1e-7, False, 0.0),  # bert4keras RoFormerV2 norm
        ("rms1000", "rms", 3, 1000, True, False, 1e-6, False, 0.5),
        ("add_ln48", "layer", 8, 48, True, True, 1e-5, True, 0.0),
        ("add_ln19_nogamma", "layer", 5, 19, False, True, 1e-12, True, 2.0),
        ("add_rms40", "rms", 8, 40, True, False, 1e-6, True, 0.0),
        ("add_rms129_noparams", "rms", 4, 129, False, False, 1e-7, True, 0.0),
    ]
    for name, kind, n, d, has_gamma, has_beta, eps, has_residual, offset in cases:
        seed += 10
        x = randn(n, d, seed=seed, std=1.5) + offset
        x = x.float().double()
        gamma = rand(d, seed=seed + 1, lo=0.5, hi=1.5) if has_gamma else empty
        beta = rand(d, seed=seed + 2, lo=-0.5, hi=0.5) if has_beta else empty
        w.tensor(f"{name}/x", x)
        w.tensor(f"{name}/gamma", gamma)
        w.tensor(f"{name}/beta", beta)
        w.scalar(f"{name}/eps", eps)
        src = x
        if has_residual:
            residual = randn(n, d, seed=seed + 3)
            w.tensor(f"{name}/residual", residual)
            src = x + residual
            w.tensor(f"{name}/sum", src)
        y = layer(src, gamma, beta, eps) if kind == "layer" else rms(src, gamma, eps)
        w.tensor(f"{name}/y", y)
    generate_16bit(w)


# ---- 16-bit storage (Eigen::half / Eigen::bfloat16) ------------------------------------------------------------
# Inputs are rounded to the 16-bit type (and gamma / beta too, unless the case keeps them in float32); written
# as their exact values. <case>/y is the exact (float64) norm of those values, of the sum as PyTorch's 16-bit `+`
# rounds it for the residual forms (<case>/sum: torch's own 16-bit x + residual). <case>/torch_y, where torch
# 1.13's CPU has the 16-bit op: F.layer_norm on bf16 tensors (bf16 weights; it keeps the row mean and 1/std in
# bf16, so it is off by up to ~0.03 absolute at unit scale) and HF's LlamaRMSNorm expression in bf16 (float
# statistics, the normalised row rounded to bf16, then times the bf16 weight: two roundings). torch 1.13 has no
# CPU fp16 layer_norm or rsqrt: fp16 cases have the exact values only.
def hf_llama_rms(x, weight, eps):
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype) if weight.numel() else h.to(dtype)


def generate_16bit(w):
    seed = 1600
    cases = [
        # name, dtype, kind, rows, d, gamma, beta, params in float32, eps, residual, mean offset of x
        ("bf16_ln64", torch.bfloat16, "layer", 9, 64, True, True, False, 1e-5, False, 0.0),
        ("bf16_ln257_offset", torch.bfloat16, "layer", 4, 257, True, True, False, 1e-5, False, 30.0),
        ("bf16_ln100_f32params", torch.bfloat16, "layer", 5, 100, True, True, True, 1e-5, False, 0.5),
        ("bf16_rms64", torch.bfloat16, "rms", 9, 64, True, False, False, 1e-6, False, 0.0),
        ("bf16_rms33_noparams", torch.bfloat16, "rms", 7, 33, False, False, False, 1e-7, False, 0.0),
        ("bf16_add_ln48", torch.bfloat16, "layer", 8, 48, True, True, False, 1e-5, True, 0.0),
        ("bf16_add_rms130_f32gamma", torch.bfloat16, "rms", 6, 130, True, False, True, 1e-6, True, 0.0),
        ("f16_ln64", torch.float16, "layer", 9, 64, True, True, False, 1e-5, False, 0.0),
        ("f16_ln257_offset", torch.float16, "layer", 4, 257, True, True, False, 1e-5, False, 30.0),
        ("f16_rms100_f32gamma", torch.float16, "rms", 5, 100, True, False, True, 1e-6, False, 0.0),
        ("f16_add_ln40_nogamma", torch.float16, "layer", 6, 40, False, True, False, 1e-5, True, 1.0),
        ("f16_add_rms129", torch.float16, "rms", 4, 129, True, False, False, 1e-6, True, 0.0),
    ]
    empty = torch.zeros(0, dtype=torch.float64)
    for name, dt, kind, n, d, has_gamma, has_beta, f32_params, eps, has_residual, offset in cases:
        seed += 10
        x = (randn(n, d, seed=seed, std=1.5) + offset).to(dt)
        pdt = torch.float32 if f32_params else dt
        gamma = rand(d, seed=seed + 1, lo=0.5, hi=1.5).to(pdt) if has_gamma else empty.to(pdt)
        beta = rand(d, seed=seed + 2, lo=-0.5, hi=0.5).to(pdt) if has_beta else empty.to(pdt)
        w.tensor(f"{name}/x", x)
        w.tensor(f"{name}/gamma", gamma)
        w.tensor(f"{name}/beta", beta)
        w.scalar(f"{name}/eps", eps)
        src = x
        if has_residual:
            residual = randn(n, d, seed=seed + 3).to(dt)
            w.tensor(f"{name}/residual", residual)
            src = x + residual  # torch's 16-bit add: float sum, rounded once
            w.tensor(f"{name}/sum", src)
        g64, b64 = gamma.double(), beta.double()
        exact = layer(src.double(), g64, b64, eps) if kind == "layer" else rms(src.double(), g64, eps)
        w.tensor(f"{name}/y", exact)
        if dt == torch.bfloat16 and not f32_params:
            if kind == "layer":
                torch_y = F.layer_norm(src, (d,), gamma if has_gamma else None, beta if has_beta else None, eps)
            else:
                torch_y = hf_llama_rms(src, gamma, eps)
            w.tensor(f"{name}/torch_y", torch_y)
