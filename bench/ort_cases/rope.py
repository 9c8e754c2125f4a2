# SPDX-License-Identifier: MIT
"""RoPE of q and k in ONNX Runtime beside kexue's bench_rope rows BM_rope_qk/<layout>/1/1 (fp32, one thread,
q and k each [1, 8 heads, 2048 positions, 64 dims], base 10000, every dimension rotated).

Two com.microsoft.RotaryEmbedding nodes (one for q, one for k) on the 4-D [batch, heads, seq, 64] inputs, with
position_ids 0..2047 and [2048, 32] cos/sin caches (float64 angles rounded to fp32); interleaved = 1 is kexue's
Interleaved layout (pairs (2i, 2i+1), GPT-J / bert4keras), interleaved = 0 its Half layout (pairs (i, i + 32),
rotate_half / HF). ORT writes new q and k tensors; kexue rotates in place: both read and write each once.
The time is the sum of the two nodes' kernel times. Inputs: bench_rope's fill (q salt 1, k salt 2).
"""
import numpy as np
from onnx import TensorProto, helper

from _ort_case import OrtCase, bench_fill

HEADS, SEQ, DIM = 8, 2048, 64
MS = "com.microsoft"
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def angles():
    inv = 10000.0 ** (-2.0 * np.arange(DIM // 2, dtype=np.float64) / DIM)
    return np.arange(SEQ, dtype=np.float64)[:, None] * inv[None, :]


def rope_case(interleaved):
    shape = [1, HEADS, SEQ, DIM]

    def build_model():
        nodes = [helper.make_node("RotaryEmbedding", [x, "position_ids", "cos_cache", "sin_cache"], [x + "_out"],
                                  domain=MS, interleaved=int(interleaved)) for x in ("q", "k")]
        vi = helper.make_tensor_value_info
        g = helper.make_graph(nodes, "kexue_compare",
                              [vi("q", F, shape), vi("k", F, shape), vi("position_ids", I64, [1, SEQ]),
                               vi("cos_cache", F, [SEQ, DIM // 2]), vi("sin_cache", F, [SEQ, DIM // 2])],
                              [vi("q_out", F, shape), vi("k_out", F, shape)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                                 producer_name="kexue bench/compare_ort.py")

    def inputs():
        n = HEADS * SEQ * DIM
        a = angles()
        return {"q": bench_fill(n, 1, 2000).reshape(shape), "k": bench_fill(n, 2, 2000).reshape(shape),
                "position_ids": np.arange(SEQ, dtype=np.int64)[None],
                "cos_cache": np.cos(a).astype(np.float32), "sin_cache": np.sin(a).astype(np.float32)}

    def reference(inp):
        a = angles()
        c, s = np.cos(a), np.sin(a)  # [seq, 32]
        out = {}
        for x in ("q", "k"):
            t = inp[x].astype(np.float64)
            if interleaved:
                x0, x1 = t[..., 0::2], t[..., 1::2]
            else:
                x0, x1 = t[..., :DIM // 2], t[..., DIM // 2:]
            y0, y1 = x0 * c - x1 * s, x1 * c + x0 * s
            r = np.empty_like(t)
            if interleaved:
                r[..., 0::2], r[..., 1::2] = y0, y1
            else:
                r[..., :DIM // 2], r[..., DIM // 2:] = y0, y1
            out[x + "_out"] = r
        return out
    return build_model, inputs, reference


CASES = [
    OrtCase("ORT RotaryEmbedding q+k interleaved", "rope", "bench_rope", "BM_rope_qk/0/1/1/",
            "rope q+k 8x2048x64 interleaved", *rope_case(True)),
    OrtCase("ORT RotaryEmbedding q+k half", "rope", "bench_rope", "BM_rope_qk/1/1/1/",
            "rope q+k 8x2048x64 half", *rope_case(False)),
]
