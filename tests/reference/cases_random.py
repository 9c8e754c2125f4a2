# SPDX-License-Identifier: MIT
"""torch.randn values for kexue::TorchGenerator (bit-compatibility) on the CPU.

float32 values are written as float64 reprs of the float32 numbers, so the C++ test can compare bits.
The float32 n >= 16 path depends on the CPU capability torch dispatches to (AVX2 here); see random.hpp.
"""
import torch

SEEDS = [0, 1, 42, 123, 2**32 + 7]
SIZES = [1, 2, 3, 7, 15, 16, 17, 23, 31, 32, 33, 100, 257]


def generate(w):
    w.scalar("cpu_capability_avx2", 1.0 if "AVX2" in torch.__config__.show() else 0.0)
    for seed in SEEDS:
        for n in SIZES:
            torch.manual_seed(seed)
            w.tensor(f"seed{seed}/n{n}", torch.randn(n, dtype=torch.float32))
    # One long draw: every lane position and many chunks.
    torch.manual_seed(7)
    w.tensor("seed7/n5003", torch.randn(5003, dtype=torch.float32))
    # Consecutive calls on one generator: the n < 16 path caches the second Box-Muller value across calls,
    # the n >= 16 path does not touch that cache.
    sizes = [3, 20, 5, 1, 16, 2, 40, 7]
    torch.manual_seed(2024)
    for i, n in enumerate(sizes):
        w.tensor(f"sequence/{i}_n{n}", torch.randn(n, dtype=torch.float32))
    # float64 randn (dtype=torch.float64), both paths.
    for n in [1, 5, 15, 16, 17, 40]:
        torch.manual_seed(99)
        w.tensor(f"double/n{n}", torch.randn(n, dtype=torch.float64))
