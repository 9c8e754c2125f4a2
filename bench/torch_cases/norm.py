# SPDX-License-Identifier: MIT
"""Norms (bench_norm): kexue's layer_norm / rms_norm and the fused residual forms against PyTorch's F.layer_norm
and the LlamaRMSNorm expression, on [4096, 4096], 1 thread.
BM_norm/<form>/<threads> (float) and BM_norm_bf16/<form>/<threads> (bf16 storage, bf16 gamma / beta): form 0
layer_norm, 1 rms_norm, 2 add_layer_norm (Pre-Norm, writes the sum), 3 add_rms_norm (Pre-Norm), 4 add_layer_norm
(Post-Norm), 5 add_rms_norm (Post-Norm). The PyTorch residual forms are x + r followed by the norm (two ops; the
sum is a tensor either way). bf16: F.layer_norm on bf16 tensors (torch 1.13 CPU: bf16 weights) and HF's
LlamaRMSNorm (float statistics, the row rounded to bf16, times the bf16 weight)."""
import torch
import torch.nn.functional as F

from _case import Case

N = D = 4096


def setup(kind, dtype=torch.float32):
    def s():
        x, r = torch.randn(N, D).to(dtype), torch.randn(N, D).to(dtype)
        g, b = torch.rand(D).to(dtype), torch.rand(D).to(dtype)

        def rms(v):
            if dtype == torch.float32:
                return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * g
            h = v.to(torch.float32)
            return g * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)

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
    Case("add_layer_norm (Post-Norm), 4096 x 4096", "bench_norm", "BM_norm/4/1/real_time$", setup("add_layer")),
    Case("add_rms_norm (Post-Norm), 4096 x 4096", "bench_norm", "BM_norm/5/1/real_time$", setup("add_rms")),
    Case("bf16 layer_norm, 4096 x 4096", "bench_norm", "BM_norm_bf16/0/1/real_time$",
         setup("layer", torch.bfloat16)),
    Case("bf16 rms_norm, 4096 x 4096", "bench_norm", "BM_norm_bf16/1/1/real_time$", setup("rms", torch.bfloat16)),
    Case("bf16 add_layer_norm (Post-Norm), 4096 x 4096", "bench_norm", "BM_norm_bf16/4/1/real_time$",
         setup("add_layer", torch.bfloat16)),
    Case("bf16 add_rms_norm (Post-Norm), 4096 x 4096", "bench_norm", "BM_norm_bf16/5/1/real_time$",
         setup("add_rms", torch.bfloat16)),
]
