# SPDX-License-Identifier: MIT
"""kexue's packed GEMM (bench_gemm BM_gemm<float>) against torch.matmul (OpenBLAS here), fp32.

Square 1024^3 on 1 and 2 threads, and the four products of a GAU layer at D = 768, e = 1536, s = 128,
n = 2048 on 1 thread: x W_in [2048, 768] x [768, 3200] (plain, and with the bias + swish epilogue as
silu(addmm)), g W_out [2048, 1536] x [1536, 768], q k^T [2048, 128] x [2048, 128]^T, A v [2048, 2048] x
[2048, 1536]. Outputs are preallocated (out=) so both sides only compute.
Dense layers (bench_gemm BM_dense, kexue::dense with W packed once) on the decoder's MLP shape, x [m, 512] and
W [512, 1408] for m = 1 (decoding) and 128 (prefill): x W, and SwiGLU's silu(x W_gate) * up, as
torch.matmul(out=) then silu_ and mul_ in place.
"""
import torch

from _case import Case


def matmul_setup(m, k, n, bt=False, epilogue=False):
    def setup():
        g = torch.Generator().manual_seed(0)
        a = torch.rand(m, k, generator=g) * 2 - 1
        b = torch.rand(n, k, generator=g) * 2 - 1 if bt else torch.rand(k, n, generator=g) * 2 - 1
        bias = torch.full((n,), 0.01)
        c = torch.empty(m, n)
        if epilogue:
            def run():
                torch.addmm(bias, a, b, out=c)
                return torch.nn.functional.silu(c, inplace=True)
            return run
        if bt:
            return lambda: torch.matmul(a, b.T, out=c)
        return lambda: torch.matmul(a, b, out=c)
    return setup


def dense_setup(m, k, n, gated):
    def setup():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(m, k, generator=g) * 2 - 1
        w = torch.rand(k, n, generator=g) * 2 - 1
        up = torch.rand(m, n, generator=g) * 2 - 1
        c = torch.empty(m, n)
        if gated:
            def run():
                torch.matmul(x, w, out=c)
                return torch.nn.functional.silu(c, inplace=True).mul_(up)
            return run
        return lambda: torch.matmul(x, w, out=c)
    return setup


def dense_row(m, k, n, gated):
    return f"BM_dense/m:{m}/k:{k}/n:{n}/gated:{gated}/"


def row(m, k, n, bt, threads, epi):
    return f"BM_gemm<float>/m:{m}/k:{k}/n:{n}/bt:{bt}/threads:{threads}/epi:{epi}/"


CASES = [
    Case("GEMM 1024^3", "bench_gemm", row(1024, 1024, 1024, 0, 1, 0), matmul_setup(1024, 1024, 1024)),
    Case("GEMM 1024^3 2 threads", "bench_gemm", row(1024, 1024, 1024, 0, 2, 0), matmul_setup(1024, 1024, 1024),
         threads=2),
    Case("GEMM GAU x W_in 2048x768x3200", "bench_gemm", row(2048, 768, 3200, 0, 1, 0),
         matmul_setup(2048, 768, 3200)),
    Case("GEMM GAU swish(x W_in + b) 2048x768x3200", "bench_gemm", row(2048, 768, 3200, 0, 1, 1),
         matmul_setup(2048, 768, 3200, epilogue=True)),
    Case("GEMM GAU g W_out 2048x1536x768", "bench_gemm", row(2048, 1536, 768, 0, 1, 0),
         matmul_setup(2048, 1536, 768)),
    Case("GEMM GAU q k^T 2048x128x2048", "bench_gemm", row(2048, 128, 2048, 1, 1, 0),
         matmul_setup(2048, 128, 2048, bt=True)),
    Case("GEMM GAU A v 2048x2048x1536", "bench_gemm", row(2048, 2048, 1536, 0, 1, 0),
         matmul_setup(2048, 2048, 1536)),
    Case("dense x W 1x512x1408 (decoding row)", "bench_gemm", dense_row(1, 512, 1408, 0),
         dense_setup(1, 512, 1408, False)),
    Case("dense SwiGLU 1x512x1408", "bench_gemm", dense_row(1, 512, 1408, 1), dense_setup(1, 512, 1408, True)),
    Case("dense x W 128x512x1408", "bench_gemm", dense_row(128, 512, 1408, 0),
         dense_setup(128, 512, 1408, False)),
    Case("dense SwiGLU 128x512x1408", "bench_gemm", dense_row(128, 512, 1408, 1),
         dense_setup(128, 512, 1408, True)),
]
