# SPDX-License-Identifier: MIT
"""Foundation helpers: row softmax (bench_core) against torch.softmax."""
import torch

from _case import Case


def softmax_setup(cols):
    def setup():
        x = torch.randn(64, cols)
        return lambda: torch.softmax(x, dim=-1)
    return setup


CASES = [
    Case(f"row softmax 64x{cols}", "bench_core", f"BM_softmax_rows/{cols}$", softmax_setup(cols))
    for cols in (128, 2048, 8192)
]
