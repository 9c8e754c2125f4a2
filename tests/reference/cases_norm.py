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
