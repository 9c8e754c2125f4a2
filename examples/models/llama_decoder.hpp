// SPDX-License-Identifier: MIT
#pragma once
// A LLaMA-style decoder (post 9529: why LLMs are decoder-only) on kexue's public API, with a KV cache:
//
//     x = embedding[ids]
//     for each layer:
//       h = RMSNorm(x) * attn_norm
//       q, k, v = h Wq, h Wk, h Wv                    GQA: heads query heads share kv_heads key/value heads
//       q, k = RoPE(q), RoPE(k)                       Half layout (HF rotate_half), llama3 frequency scaling
//       x = x + causal_attention(q, [cache; k], [cache; v]) Wo
//       x = x + (silu(h2 Wg) * (h2 Wu)) Wd,  h2 = RMSNorm(x) * mlp_norm      (SwiGLU MLP)
//     logits = (RMSNorm(x) * final_norm) W_lm
//
// forward() appends its tokens to the cache and returns their logits, so a prompt can be prefilled in one call
// and then decoded one token per call: both give the same logits (to rounding) because attention is causal
// and bottom-right aligned (row i of n new rows sees the m - n cached keys and new keys 0..i).
// Matrices are row-major [in, out] (x W), i.e. HF's nn.Linear weights transposed. The decoder packs every
// projection once (kexue::dense_pack), wq | wk | wv concatenated into one, and runs them with kexue::dense: the
// SwiGLU gate silu(h Wg) * (h Wu) is fused into the Wg product's store, and one row (decoding) gives the bits of
// the same row in a prefill. RoPE, the cache copy and attention read q, k and v where the fused projection wrote
// them (strided TensorViews). Templated on the scalar.
#include <kexue/attention.hpp>
#include <kexue/dense.hpp>
#include <kexue/init.hpp>
#include <kexue/norm.hpp>
#include <kexue/random.hpp>
#include <kexue/rope.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "glue.hpp"

namespace kexue_models {

/// Sizes and RoPE settings (Llama 3.1: rope_theta 500000, factor 8, original context 8192, low 1, high 4).
struct LlamaConfig {
  Index vocab = 32, hidden = 32, heads = 4, kv_heads = 2, head_dim = 8, ffn = 64, layers = 2;
  double rope_base = 500000.0, rope_factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  Index original_max_positions = 256;
  double rms_eps = kexue::kRmsNormEps;

  /// The RoPE table options: HF LLaMA's rotate_half pairs with rope_type "llama3".
  kexue::RopeOptions rope() const {
    kexue::RopeOptions o;
    o.base = rope_base;
    o.layout = kexue::RopeLayout::Half;
    o.scaling = kexue::RopeScaling::Llama3;
    o.factor = rope_factor;
    o.original_max_positions = original_max_positions;
    o.low_freq_factor = low_freq_factor;
    o.high_freq_factor = high_freq_factor;
    return o;
  }
};

template <class T>
struct LlamaLayerWeights {
  Vector<T> attn_norm;       ///< [hidden]
  Matrix<T> wq, wk, wv, wo;  ///< [hidden, heads hd], [hidden, kv_heads hd] (k, v), [heads hd, hidden]
  Vector<T> mlp_norm;        ///< [hidden]
  Matrix<T> w_gate, w_up;    ///< [hidden, ffn]
  Matrix<T> w_down;          ///< [ffn, hidden]
};

template <class T>
struct LlamaWeights {
  LlamaConfig config;
  Matrix<T> embedding;  ///< [vocab, hidden]
  std::vector<LlamaLayerWeights<T>> layers;
  Vector<T> final_norm;  ///< [hidden]
  Matrix<T> lm_head;     ///< [hidden, vocab]

  /// Fresh weights: N(0, 0.02^2) as HF's initializer_range (TF-style truncated at 2 sigma), norms 1.
  static LlamaWeights random(const LlamaConfig& c, kexue::PhiloxGenerator& gen) {
    LlamaWeights w;
    w.config = c;
    auto init = [&](Matrix<T>& m, Index rows, Index cols) {
      m.resize(rows, cols);
      kexue::init_truncated_normal(m, 0.02, gen);
    };
    init(w.embedding, c.vocab, c.hidden);
    for (Index l = 0; l < c.layers; ++l) {
      LlamaLayerWeights<T> lw;
      lw.attn_norm = Vector<T>::Ones(c.hidden);
      lw.mlp_norm = Vector<T>::Ones(c.hidden);
      init(lw.wq, c.hidden, c.heads * c.head_dim);
      init(lw.wk, c.hidden, c.kv_heads * c.head_dim);
      init(lw.wv, c.hidden, c.kv_heads * c.head_dim);
      init(lw.wo, c.heads * c.head_dim, c.hidden);
      init(lw.w_gate, c.hidden, c.ffn);
      init(lw.w_up, c.hidden, c.ffn);
      init(lw.w_down, c.ffn, c.hidden);
      w.layers.push_back(std::move(lw));
    }
    w.final_norm = Vector<T>::Ones(c.hidden);
    init(w.lm_head, c.hidden, c.vocab);
    return w;
  }

  /// The same weights in another scalar type.
  template <class U>
  LlamaWeights<U> cast() const {
    LlamaWeights<U> o;
    o.config = config;
    o.embedding = embedding.template cast<U>();
    for (const auto& l : layers) {
      LlamaLayerWeights<U> c;
      c.attn_norm = l.attn_norm.template cast<U>();
      c.wq = l.wq.template cast<U>();
      c.wk = l.wk.template cast<U>();
      c.wv = l.wv.template cast<U>();
      c.wo = l.wo.template cast<U>();
      c.mlp_norm = l.mlp_norm.template cast<U>();
      c.w_gate = l.w_gate.template cast<U>();
      c.w_up = l.w_up.template cast<U>();
      c.w_down = l.w_down.template cast<U>();
      o.layers.push_back(std::move(c));
    }
    o.final_norm = final_norm.template cast<U>();
    o.lm_head = lm_head.template cast<U>();
    return o;
  }
};

/// Keys and values of every layer for up to capacity positions: [kv_heads, capacity, head_dim] per layer
/// (head-major, so the cached rows of one head are contiguous for the attention kernel).
template <class T>
class KvCache {
 public:
  KvCache(const LlamaConfig& c, Index capacity)
      : kv_heads_(c.kv_heads), head_dim_(c.head_dim), capacity_(capacity),
        k_(std::size_t(c.layers), std::vector<T>(std::size_t(c.kv_heads * capacity * c.head_dim))),
        v_(k_) {}

  Index length() const { return length_; }
  Index capacity() const { return capacity_; }
  void clear() { length_ = 0; }
  /// Forgets every position from `length` on (a rejected draft, or a benchmark's fixed context).
  void rewind(Index length) {
    if (length < 0 || length > length_) throw std::out_of_range("KvCache::rewind: length outside [0, length()]");
    length_ = length;
  }

  /// Copies n new rows of keys and values (row r at k + r * row_stride, kv_heads * head_dim values, as a
  /// projection writes them) of layer l to positions [length, length + n).
  void append(Index layer, const T* k, const T* v, Index n, Index row_stride) {
    for (Index r = 0; r < n; ++r)
      for (Index h = 0; h < kv_heads_; ++h) {
        std::copy_n(k + r * row_stride + h * head_dim_, head_dim_, slot(k_, layer, h, length_ + r));
        std::copy_n(v + r * row_stride + h * head_dim_, head_dim_, slot(v_, layer, h, length_ + r));
      }
  }
  /// Layer l's keys or values [1, kv_heads, m, head_dim] for the first m positions.
  kexue::TensorView<const T> keys(Index layer, Index m) const { return view(k_, layer, m); }
  kexue::TensorView<const T> values(Index layer, Index m) const { return view(v_, layer, m); }
  void advance(Index n) { length_ += n; }

 private:
  T* slot(std::vector<std::vector<T>>& b, Index layer, Index h, Index pos) {
    return b[std::size_t(layer)].data() + (h * capacity_ + pos) * head_dim_;
  }
  kexue::TensorView<const T> view(const std::vector<std::vector<T>>& b, Index layer, Index m) const {
    return kexue::TensorView<const T>(b[std::size_t(layer)].data(), {1, kv_heads_, m, head_dim_},
                                      {kv_heads_ * capacity_ * head_dim_, capacity_ * head_dim_, head_dim_});
  }

  Index kv_heads_, head_dim_, capacity_, length_ = 0;
  std::vector<std::vector<T>> k_, v_;
};

/// The decoder: forward() over a KV cache, and greedy generation.
template <class T>
class LlamaDecoder {
 public:
  /// max_positions: the longest sequence (RoPE table size, and the cache capacity new_cache() gives).
  LlamaDecoder(LlamaWeights<T> weights, Index max_positions)
      : w_(std::move(weights)), max_positions_(max_positions),
        table_(max_positions, w_.config.head_dim, w_.config.rope()) {
    // Every projection packed once (kexue::dense_pack), q, k and v as one matrix: one GEMM instead of three.
    for (const LlamaLayerWeights<T>& lw : w_.layers) {
      Packed p;
      Matrix<T> qkv(lw.wq.rows(), lw.wq.cols() + lw.wk.cols() + lw.wv.cols());
      qkv << lw.wq, lw.wk, lw.wv;
      p.qkv = kexue::dense_pack(qkv);
      p.wo = kexue::dense_pack(lw.wo);
      p.gate = kexue::dense_pack(lw.w_gate);
      p.up = kexue::dense_pack(lw.w_up);
      p.down = kexue::dense_pack(lw.w_down);
      packed_.push_back(std::move(p));
    }
    lm_head_ = kexue::dense_pack(w_.lm_head);
  }

  const LlamaWeights<T>& weights() const { return w_; }
  KvCache<T> new_cache() const { return KvCache<T>(w_.config, max_positions_); }

  /// Runs tokens at positions [cache.length(), cache.length() + n), appends their keys and values to the
  /// cache and writes their logits [n, vocab].
  void forward(const std::vector<int>& tokens, KvCache<T>& cache, Matrix<T>& logits) {
    const LlamaConfig& c = w_.config;
    const Index n = Index(tokens.size()), first = cache.length(), m = first + n;
    const Index hd = c.head_dim, qw = c.heads * hd, kw = c.kv_heads * hd, width = qw + 2 * kw;
    if (m > cache.capacity()) throw std::length_error("LlamaDecoder::forward: the KV cache is full");
    embed(w_.embedding, tokens, x_);
    h_.resize(n, c.hidden);
    kexue::AttentionOptions causal;
    causal.causal = true;  // bottom-right aligned: new row i sees the cached keys and new keys 0..i
    for (Index l = 0; l < c.layers; ++l) {
      const LlamaLayerWeights<T>& lw = w_.layers[std::size_t(l)];
      const Packed& p = packed_[std::size_t(l)];
      kexue::rms_norm(x_, lw.attn_norm, h_, c.rms_eps);
      qkv_.resize(n, width);
      kexue::dense(p.qkv, h_, qkv_);  // [n, q | k | v]
      // q and k where the projection wrote them, seen as [1, heads, n, hd] with row stride `width`: RoPE on
      // both in one call (GQA: fewer k heads), then the new k and v rows go to the cache.
      const kexue::TensorView<T> q(qkv_.data(), {1, c.heads, n, hd}, {n * width, hd, width});
      const kexue::TensorView<T> k(qkv_.data() + qw, {1, c.kv_heads, n, hd}, {n * width, hd, width});
      kexue::rope(table_, q, k, first);
      cache.append(l, qkv_.data() + qw, qkv_.data() + qw + kw, n, width);
      attn_.resize(n, qw);
      kexue::attention(kexue::TensorView<const T>(q), cache.keys(l, m), cache.values(l, m),
                       kexue::TensorView<T>::seq_major(attn_.data(), 1, n, c.heads, hd), causal);
      o_.resize(n, c.hidden);
      kexue::dense(p.wo, attn_, o_);
      // x = x + o and h = RMSNorm(x) * mlp_norm in one pass (the Pre-Norm fused form).
      kexue::add_rms_norm(o_, x_, lw.mlp_norm, h_, x_, c.rms_eps);
      up_.resize(n, c.ffn);
      act_.resize(n, c.ffn);
      kexue::dense(p.up, h_, up_);
      kexue::dense_gated(p.gate, h_, up_, act_, kexue::DenseActivation::Swish);  // silu(h Wg) * (h Wu)
      kexue::dense(p.down, act_, o_);
      x_ += o_;
    }
    cache.advance(n);
    kexue::rms_norm(x_, w_.final_norm, h_, c.rms_eps);
    logits.resize(n, c.vocab);
    kexue::dense(lm_head_, h_, logits);
  }

  /// Greedy decoding: prefills the prompt, then appends the argmax token `steps` times. Returns the generated
  /// tokens; logits_out (if given) receives the logits of every position [prompt + steps - 1, vocab] (the
  /// prompt's rows from the prefill, then one row per decoding step).
  std::vector<int> generate(const std::vector<int>& prompt, Index steps, Matrix<T>* logits_out = nullptr) {
    KvCache<T> cache = new_cache();
    Matrix<T> logits;
    forward(prompt, cache, logits);
    std::vector<int> out;
    std::vector<Matrix<T>> rows{logits};
    for (Index s = 0; s < steps; ++s) {
      const int next = int(argmax_row(logits, logits.rows() - 1));
      out.push_back(next);
      if (s + 1 == steps) break;
      forward({next}, cache, logits);
      rows.push_back(logits);
    }
    if (logits_out) {
      Index total = 0;
      for (const auto& r : rows) total += r.rows();
      logits_out->resize(total, w_.config.vocab);
      Index at = 0;
      for (const auto& r : rows) {
        logits_out->middleRows(at, r.rows()) = r;
        at += r.rows();
      }
    }
    return out;
  }

 private:
  LlamaWeights<T> w_;
  Index max_positions_;
  kexue::RopeTable<T> table_;
  struct Packed {
    kexue::PackedDense<T> qkv;  ///< [hidden, (heads + 2 kv_heads) head_dim]: wq | wk | wv
    kexue::PackedDense<T> wo, gate, up, down;
  };
  std::vector<Packed> packed_;
  kexue::PackedDense<T> lm_head_;
  Matrix<T> x_, h_, qkv_, attn_, o_, up_, act_;
};

}  // namespace kexue_models
