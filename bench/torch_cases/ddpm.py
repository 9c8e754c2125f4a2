# SPDX-License-Identifier: MIT
"""One DDPM reverse step (diffusers' DDPMScheduler.step formulation: epsilon prediction, fixed_small, clip to
[-1, 1], noise from torch.randn) against kexue's fused Philox step (bench_ddpm), and the noiseless step
(prev_t = -1) against its PyTorch formulation. Also normal numbers: torch.randn vs kexue's generators.
"""
import math

import torch

from _case import Case

T = 1000
STEP_T = 500


def _schedule():
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def step_setup(shape, noise=True):
    def setup():
        acp = _schedule()
        ab = acp[STEP_T].item()
        ab_prev = acp[STEP_T - 1].item() if noise else 1.0
        cur_alpha = ab / ab_prev
        cur_beta = 1 - cur_alpha
        c0 = math.sqrt(ab_prev) * cur_beta / (1 - ab)
        c1 = math.sqrt(cur_alpha) * (1 - ab_prev) / (1 - ab)
        std = math.sqrt(max((1 - ab_prev) / (1 - ab) * cur_beta, 1e-20))
        m = torch.randn(*shape)
        x = torch.randn(*shape)

        def run():
            # diffusers DDPMScheduler.step, line by line (float32 tensors, Python-float coefficients)
            x0 = (x - (1 - ab) ** 0.5 * m) / ab ** 0.5
            x0 = x0.clamp(-1.0, 1.0)
            prev = c0 * x0 + c1 * x
            if noise:
                z = torch.randn(shape, dtype=m.dtype)
                prev = prev + std * z
            return prev
        return run
    return setup


def randn_setup(n):
    def setup():
        return lambda: torch.randn(n)
    return setup


SMALL, LARGE = (4, 64, 64), (3, 256, 256)
CASES = [
    Case("step+noise 4x64x64 (philox fused)", "bench_ddpm", r"BM_ddpm_step_philox/16384/1/", step_setup(SMALL)),
    Case("step+noise 3x256x256 (philox fused)", "bench_ddpm", r"BM_ddpm_step_philox/196608/1/", step_setup(LARGE)),
    Case("step+noise 3x256x256 2 threads", "bench_ddpm", r"BM_ddpm_step_philox/196608/2/", step_setup(LARGE), threads=2),
    Case("step+noise 4x64x64 (torch-compatible noise)", "bench_ddpm", r"BM_ddpm_step_torchgen/16384/1/",
         step_setup(SMALL)),
    Case("step+noise 3x256x256 (torch-compatible noise)", "bench_ddpm", r"BM_ddpm_step_torchgen/196608/1/",
         step_setup(LARGE)),
    Case("step no noise 4x64x64", "bench_ddpm", r"BM_ddpm_step_nonoise/16384/1/", step_setup(SMALL, noise=False)),
    Case("step no noise 3x256x256", "bench_ddpm", r"BM_ddpm_step_nonoise/196608/1/", step_setup(LARGE, noise=False)),
    Case("randn 2^20 vs Philox", "bench_random", r"BM_normal_philox/1048576/1/", randn_setup(1 << 20)),
    Case("randn 2^20 vs TorchGenerator", "bench_random", r"BM_normal_torch/1048576/1/", randn_setup(1 << 20)),
]
