# SPDX-License-Identifier: MIT
"""kexue::convert (bench_half) against torch's Tensor.to() on 2^24 values (64 MiB of floats), one thread: float ->
fp16 / bf16 (round to nearest even; kexue's tests check the bits against this very call) and back."""
import torch

from _case import Case

N = 1 << 24


def to_setup(src_dtype, dst_dtype):
    def build():
        x = (torch.arange(N, dtype=torch.float32) % 1000) * 0.37 - 100.0
        x = x.to(src_dtype)
        return lambda: x.to(dst_dtype)
    return build


CASES = [
    Case("convert float -> fp16, 2^24 values", "bench_half", "BM_convert_narrow<Eigen::half>/real_time$",
         to_setup(torch.float32, torch.float16)),
    Case("convert float -> bf16, 2^24 values", "bench_half", "BM_convert_narrow<Eigen::bfloat16>/real_time$",
         to_setup(torch.float32, torch.bfloat16)),
    Case("convert fp16 -> float, 2^24 values", "bench_half", "BM_convert_widen<Eigen::half>/real_time$",
         to_setup(torch.float16, torch.float32)),
    Case("convert bf16 -> float, 2^24 values", "bench_half", "BM_convert_widen<Eigen::bfloat16>/real_time$",
         to_setup(torch.bfloat16, torch.float32)),
]
