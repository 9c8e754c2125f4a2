# SPDX-License-Identifier: MIT
"""Norms (bench_norm): kexue's layer_norm / rms_norm and the Pre-Norm fused residual forms (which also write
x + residual) against PyTorch's F.layer_norm and the LlamaRMSNorm expression, on [4096, 4096] fp32, 1 thread.
BM_norm/<form>/<threads>: form 0 layer_norm, 1 rms_norm, 2 add_layer_norm (Pre-Norm), 3 add_rms_norm (Pre-Norm)."""
import torch
import torch.nn.functional as F

from _case import Case

N = D = 4096


def setup(kind):
    def s():
        x, r = torch.randn(N, D), torch.randn(N, D)
        g, b = torch.rand(D), torch.rand(D)

        def rms(v):
            return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * g

        return {"layer": lambda: F.layer_norm(x, (D,), g, b, 1e-5),
                "rms": lambda: rms(x),
                "add_layer": lambda: F.layer_norm(x + r, (D,), g, b, 1e-5),
                "add_rms": lambda: rms(x + r)}[kind]
    return s


CASES = [
    Case("layer_norm, 4096 x 4096", "bench_norm", "BM_norm/0/1/real_time$", setup("layer")),
    Case("rms_norm, 4096 x 4096", "bench_norm", "BM_norm/1/1/real_time$", setup("rms")),
    Case("add_layer_norm (Pre-Norm, writes the sum), 4096 x 4096", "bench_norm", "BM_norm/2/1/real_time$",
         setup("add_layer")),
    Case("add_rms_norm (Pre-Norm, writes the sum), 4096 x 4096", "bench_norm", "BM_norm/3/1/real_time$",
         setup("add_rms")),
]
