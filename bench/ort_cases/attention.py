# SPDX-License-Identifier: MIT
"""Attention in ONNX Runtime (CPU EP, fp32, one thread, batch 1, 8 query heads, d = dv = 64) beside kexue's
bench_attention rows. Inputs are the rows' own values (bench_attention's fill: q seed 1, k seed 7, v seed 13 over
[heads, n, 64]), transposed to the [batch, seq, heads * 64] layout ORT's operators take.

  * com.microsoft.MultiHeadAttention, non-causal n = 2048 and 8192: no mask, no past, no present outputs, so ORT
    runs MLAS's flash-attention kernel (MlasFlashAttention); its kernel time includes transposing q, k and v to
    [heads, seq, 64] (ORT wants [batch, seq, hidden] in, kexue takes [heads, seq, 64] as it is).
  * MultiHeadAttention causal n = 2048 (unidirectional = 1): ORT's unfused path (scores materialised).
  * com.microsoft.GroupQueryAttention causal prefill n = 2048, 8 q heads / 2 KV heads (no past).
  * GroupQueryAttention decode: one query row per head against 4096 cached keys, 8/2 heads. past_key/past_value
    are 4096-row buffers holding 4095 cached rows, the new token lands in row 4095 (seqlens_k = 4095), and
    present_key/present_value are handed the same buffers (ORT's shared-KV-cache path, as an LLM decoder runs it;
    the check line says "in-place cache" when ORT did write into the past buffers).
  * The plain MatMul-Softmax-MatMul graph (Transpose, MatMul, Mul by 1/sqrt(d), Softmax, MatMul on
    [8, 2048, 64]), after ORT's graph optimisations (MatMul + Mul + Transpose fuse into FusedMatMul): what an
    exported model without a fused attention node runs. Its time is the sum over its nodes.
"""
import math

import numpy as np
from onnx import TensorProto, helper

from _ort_case import OrtCase, bench_fill

H, D = 8, 64
MS = "com.microsoft"


def qkv(n, m=None, kv_heads=H):
    """bench_attention's Inputs(heads, kv_heads, n, m): [heads, n, 64] q and [kv_heads, m, 64] k, v."""
    m = n if m is None else m
    q = bench_fill(H * n * D, 1, 2001).reshape(H, n, D)
    k = bench_fill(kv_heads * m * D, 7, 2001).reshape(kv_heads, m, D)
    v = bench_fill(kv_heads * m * D, 13, 2001).reshape(kv_heads, m, D)
    return q, k, v


def bsh(x):
    """[heads, seq, d] -> [1, seq, heads * d]."""
    return np.ascontiguousarray(x.transpose(1, 0, 2).reshape(1, x.shape[1], x.shape[0] * x.shape[2]))


def reference_attention(q, k, v, causal):
    """float64 softmax(q k^T / sqrt(d)) v per head, the query rows aligned to the end of the keys (decode: one row
    sees every key); KV head of query head h is h // (heads / kv_heads). Head by head: n = 8192 is 512 MiB a head."""
    import torch
    heads, n, _ = q.shape
    kv_heads, m, _ = k.shape
    rep = heads // kv_heads
    out = np.empty((heads, n, v.shape[2]), dtype=np.float64)
    mask = None
    if causal:
        mask = torch.ones(n, m, dtype=torch.bool).triu(m - n + 1)
    for h in range(heads):
        qh = torch.from_numpy(q[h].astype(np.float64))
        kh = torch.from_numpy(k[h // rep].astype(np.float64))
        vh = torch.from_numpy(v[h // rep].astype(np.float64))
        s = (qh @ kh.T) / math.sqrt(q.shape[2])
        if mask is not None:
            s = s.masked_fill(mask, float("-inf"))
        out[h] = (torch.softmax(s, dim=-1) @ vh).numpy()
    return out


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def model(nodes, inputs, outputs, initializers=()):
    g = helper.make_graph(nodes, "kexue_compare", inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                             producer_name="kexue bench/compare_ort.py")


F = TensorProto.FLOAT
I32 = TensorProto.INT32


def mha(n, causal):
    def build_model():
        node = helper.make_node("MultiHeadAttention", ["query", "key", "value"], ["output"], domain=MS,
                                num_heads=H, unidirectional=int(causal))
        return model([node], [vi(x, F, [1, n, H * D]) for x in ("query", "key", "value")],
                     [vi("output", F, [1, n, H * D])])

    def inputs():
        q, k, v = qkv(n)
        return {"query": bsh(q), "key": bsh(k), "value": bsh(v)}

    def reference(inp):
        q, k, v = (x.reshape(n, H, D).transpose(1, 0, 2) for x in (inp["query"], inp["key"], inp["value"]))
        return {"output": bsh(reference_attention(q, k, v, causal))}
    return build_model, inputs, reference


def gqa(n, m, kv_heads):
    """GroupQueryAttention (always causal). n = m: prefill without past; n = 1: decode against m cached keys in a
    shared m-row cache (rows [0, m-1) cached, the new key and value written to row m - 1)."""
    decode = n < m

    def build_model():
        ins = ["query", "key", "value", "past_key" if decode else "", "past_value" if decode else "",
               "seqlens_k", "total_sequence_length"]
        node = helper.make_node("GroupQueryAttention", ins, ["output", "present_key", "present_value"], domain=MS,
                                num_heads=H, kv_num_heads=kv_heads)
        graph_in = [vi("query", F, [1, n, H * D]), vi("key", F, [1, n, kv_heads * D]),
                    vi("value", F, [1, n, kv_heads * D])]
        if decode:
            graph_in += [vi("past_key", F, [1, kv_heads, m, D]), vi("past_value", F, [1, kv_heads, m, D])]
        graph_in += [vi("seqlens_k", I32, [1]), vi("total_sequence_length", I32, [])]
        outs = [vi("output", F, [1, n, H * D])]
        if decode:  # exposed so that the runner can hand them the past buffers
            outs += [vi("present_key", F, [1, kv_heads, m, D]), vi("present_value", F, [1, kv_heads, m, D])]
        return model([node], graph_in, outs)

    def inputs():
        q, k, v = qkv(n, m, kv_heads)
        d = {"query": bsh(q), "key": bsh(k[:, m - n:]), "value": bsh(v[:, m - n:])}
        if decode:
            # Row m-1 is where ORT writes the new key and value: NaN there, so that the runner can tell that
            # ORT wrote into this very buffer (shared cache) and the check fails if ORT read the row before.
            d["past_key"] = np.ascontiguousarray(k[None])
            d["past_value"] = np.ascontiguousarray(v[None])
            d["past_key"][:, :, m - 1] = np.nan
            d["past_value"][:, :, m - 1] = np.nan
        d["seqlens_k"] = np.array([m - 1], dtype=np.int32)
        d["total_sequence_length"] = np.array(m, dtype=np.int32)
        return d

    def reference(inp):
        q, k, v = qkv(n, m, kv_heads)
        return {"output": bsh(reference_attention(q, k, v, causal=True))}
    return build_model, inputs, reference, ({"present_key": "past_key", "present_value": "past_value"}
                                            if decode else {})


def matmul_softmax_matmul(n):
    def build_model():
        scale = helper.make_tensor("scale", F, [], [1.0 / math.sqrt(D)])
        nodes = [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["s"]),
            helper.make_node("Mul", ["s", "scale"], ["ss"]),
            helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["output"]),
        ]
        return model(nodes, [vi(x, F, [H, n, D]) for x in ("q", "k", "v")], [vi("output", F, [H, n, D])], [scale])

    def inputs():
        q, k, v = qkv(n)
        return {"q": q, "k": k, "v": v}

    def reference(inp):
        return {"output": reference_attention(inp["q"], inp["k"], inp["v"], causal=False)}
    return build_model, inputs, reference


def row(n, causal):
    return f"BM_attention/n:{n}/norm:0/causal:{causal}/threads:1/real_time$"


_gqa_pre = gqa(2048, 2048, 2)
_gqa_dec = gqa(1, 4096, 2)

CASES = [
    OrtCase("ORT MultiHeadAttention n=2048 (MLAS flash)", "attention", "bench_attention", row(2048, 0),
            "attention softmax n=2048 8h d=64", *mha(2048, False)),
    OrtCase("ORT MatMul-Softmax-MatMul n=2048", "attention", "bench_attention", row(2048, 0),
            "attention softmax n=2048 8h d=64", *matmul_softmax_matmul(2048)),
    OrtCase("ORT MultiHeadAttention causal n=2048 (unfused)", "attention", "bench_attention", row(2048, 1),
            "attention softmax causal n=2048", *mha(2048, True)),
    OrtCase("ORT GroupQueryAttention prefill n=2048 8/2", "attention", "bench_attention",
            "BM_attention_gqa_prefill/kv_heads:2/n:2048/real_time$",
            "attention softmax causal n=2048 GQA 8/2 prefill", *_gqa_pre[:3], shared=_gqa_pre[3]),
    OrtCase("ORT MultiHeadAttention n=8192 (MLAS flash)", "attention", "bench_attention", row(8192, 0),
            "attention softmax n=8192 (torch per head)", *mha(8192, False)),
    OrtCase("ORT GroupQueryAttention decode m=4096 8/2", "attention", "bench_attention",
            "BM_attention_decode_heads/kv_heads:2/m:4096/real_time$",
            "attention decode m=4096 GQA 8/2 (decode_heads)", *_gqa_dec[:3], shared=_gqa_dec[3],
            note="ORT also writes the new token's k and v into the cache (512 bytes)"),
]
