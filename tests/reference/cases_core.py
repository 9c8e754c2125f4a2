# SPDX-License-Identifier: MIT
"""Reference values for the foundation helpers (row softmax, dot, max, sum)."""
import torch

from generate import rand


def generate(w):
    # Row softmax over odd widths, with -inf entries and huge logits mixed in.
    for n in [1, 7, 8, 9, 33, 100]:
        x = rand(5, n, seed=100 + n, lo=-4, hi=4)
        if n > 1:
            x[1, 0] = float("-inf")
        x[2] *= 1e4  # huge logits: softmax must subtract the max
        w.tensor(f"softmax_{n}/x", x)
        w.tensor(f"softmax_{n}/y", torch.softmax(x, dim=-1))
    a = rand(37, seed=1)
    b = rand(37, seed=2)
    w.tensor("dot/a", a)
    w.tensor("dot/b", b)
    w.scalar("dot/y", torch.dot(a, b))
