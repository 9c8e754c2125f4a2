# SPDX-License-Identifier: MIT
"""A comparison case: our benchmark row and the PyTorch formulation of the same work."""


class Case:
    def __init__(self, name, binary, bench, torch_setup, threads=1):
        self.name = name                # printed in the table
        self.binary = binary            # executable under <build>/bench
        self.bench = bench              # --benchmark_filter regex selecting exactly one row
        self.torch_setup = torch_setup  # () -> zero-argument callable doing the PyTorch work once
        self.threads = threads
        self.family = None
