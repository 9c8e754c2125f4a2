# SPDX-License-Identifier: MIT
"""An ONNX Runtime comparison case: a small ONNX graph doing the work of one kexue benchmark row.

The inputs are the bench row's own values (the same fill formula as bench/bench_<family>.cpp), laid out as the
ORT operator wants them. kexue's bench binaries print no outputs, so ORT's output is checked against a float64
PyTorch reference computed from those same inputs (kexue's tests check kexue against the same mathematics);
the check is relative RMSE ||ort - ref|| / ||ref|| with a stated threshold.
"""
import numpy as np


class OrtCase:
    def __init__(self, name, family, binary, bench, beside, model, inputs, reference, shared=None, tol=1e-5,
                 note=""):
        self.name = name            # printed in the table, e.g. "ORT MultiHeadAttention (MLAS flash)"
        self.family = family        # bench family (attention, rope)
        self.binary = binary        # kexue benchmark binary under <build>/bench
        self.bench = bench          # --benchmark_filter regex selecting kexue's row (it may not exist yet)
        self.beside = beside        # name of the torch_cases Case printed on the same line, or None
        self.model = model          # () -> onnx.ModelProto
        self.inputs = inputs        # () -> dict input name -> numpy array (graph input order)
        self.reference = reference  # (inputs) -> dict output name -> float64 numpy array of ORT's output shape
        self.shared = shared or {}  # output name -> input name sharing one buffer (a KV cache updated in place)
        self.tol = tol              # relative RMSE threshold of the output check
        self.note = note            # what differs from kexue's row, said in the table's notes
        self.threads = 1            # ORT runs with one intra-op thread, beside kexue's one-thread rows


def bench_fill(count, seed, modulus):
    """The bench binaries' deterministic fill: float(((i + seed) * 2654435761) % modulus) * 1e-3f - 1 (size_t
    arithmetic, so no wrap at these sizes); bench_attention uses modulus 2001, bench_rope 2000."""
    i = np.arange(count, dtype=np.uint64)
    v = ((i + np.uint64(seed)) * np.uint64(2654435761)) % np.uint64(modulus)
    return v.astype(np.float32) * np.float32(1e-3) - np.float32(1.0)


def rel_rmse(out, ref):
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64).reshape(ref.shape)
    den = np.sqrt(np.sum(ref * ref))
    err = float(np.sqrt(np.sum((out - ref) ** 2)) / max(den, 1e-300))
    return err, float(np.max(np.abs(out - ref))) if ref.size else 0.0
