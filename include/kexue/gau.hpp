// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Gated Attention Unit (GAU, post 8934; bert4keras GatedAttentionUnit; GAU-alpha), SPEC.md sections 3.1-3.3.
///
/// For x: [n, D] (one sequence), with e = units and s = key_size:
///     [u | v | z] = swish(x W_in + b_in)             u, v: [n, e], z: [n, s]   (one fused projection)
///     q = gamma_q * z + beta_q,  k = gamma_k * z + beta_k                        (per-dim scale and offset)
///     q, k <- RoPE(q), RoPE(k) at positions 0..n-1                               (when a table is given)
///     a = scale * q k^T, scale = 1/sqrt(s) (attention_scale) or 1                [n, n], never materialised
///     A = normalise(a) with keys [key_length, n) masked (and j > i when causal, j < i when reverse_causal,
///         c[j] > c[i] with c = cumsum(segment ids) for UniLM segments (SPEC 7.3), and key_mask):
///         SquaredRelu  relu(a)^2 / L, L = keys visible to the row (or relu2_length)   (bert4keras default)
///         Softmax      softmax(a)
///         SoftmaxPlus  softmax(a * ln(max(l, min_length)) / ln(train_length))   (GAU-alpha)
///     out = (u * (A v)) W_out + b_out                                            [n, D]
/// A row that sees no key gets A = 0 (bert4keras would give NaN), so its output is b_out.
/// Query rows at padding positions are computed like any other row, as bert4keras does (or skipped and
/// zeroed with GauOptions::zero_padded_rows).
/// Cost and memory: four GEMMs on kexue's packed GEMM (x W_in with bias and swish fused, q k^T, A v with
/// the u gate fused, g W_out), run by tiles of at most 144 query rows so the n x n matrix is never formed;
/// scratch is listed at GauWorkspace (about 57 MiB in float for D = 768, e = 1536, s = 128, n = 2048). The
/// attention step does not call attention(): its flash kernel is built for head sizes near 64, while here v
/// is e = 2D wide and A v is a long-inner-dimension GEMM (bench_gau BM_gau_flash_attention measures both).
/// bf16 (issue 13): GauWeights<Eigen::bfloat16> with x in Eigen::bfloat16 and out in float or bf16 (2-D and batched):
/// x W_in on the bf16 GEMM (vdpbf16ps under AVX512-BF16), float intermediates by default, or with
/// GauOptions::bf16_activations v, A and the gated rows rounded to bf16 so all large products run in bf16.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "kexue/attention.hpp"
#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/gau_impl.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"
#include "kexue/half.hpp"
#include "kexue/rope.hpp"

namespace kexue {

/// Weights of one GAU layer (SPEC 3.2). D = hidden size, e = units, s = key size.
/// w_in: [D, 2e + s], columns [u | v | z]; b_in: [2e + s] or empty (no bias, GAU-alpha);
/// gamma_q, gamma_k: [s]; beta_q, beta_k: [s] or empty (no offset, GAU-alpha);
/// w_out: [e, D]; b_out: [D] or empty (no bias).
template <class T>
struct GauWeights {
  Matrix<T> w_in;     ///< [D, 2e + s], columns [u | v | z]
  Vector<T> b_in;     ///< [2e + s], or empty: no bias (GAU-alpha)
  Vector<T> gamma_q;  ///< [s]: the per-dim scale that makes q from z
  Vector<T> beta_q;   ///< [s], or empty: no offset (GAU-alpha)
  Vector<T> gamma_k;  ///< [s]: the per-dim scale that makes k from z
  Vector<T> beta_k;   ///< [s], or empty: no offset (GAU-alpha)
  Matrix<T> w_out;    ///< [e, D]
  Vector<T> b_out;    ///< [D], or empty: no bias

  /// D: columns of x and out.
  Index hidden() const { return w_in.rows(); }
  /// e: width of u, v and of the gated product.
  Index units() const { return w_out.rows(); }
  /// s: width of z, q and k (the RoPE table's dim).
  Index key_size() const { return gamma_q.size(); }
};

namespace detail {
inline AttentionOptions gau_default_attention() {
  AttentionOptions a;
  a.normalization = Normalization::SquaredRelu;
  return a;
}
}  // namespace detail

/// Options of gau(). Defaults are bert4keras' GatedAttentionUnit defaults: squared_relu normalisation,
/// attention_scale = true (a = q k^T / sqrt(s)), no mask. GAU-alpha: attention.normalization = SoftmaxPlus
/// (with train_length 512, min_length 16 as in current bert4keras) and weights without biases.
struct GauOptions {
  /// Normalisation and masking of the attention step, with AttentionOptions' meaning:
  /// normalization (default here SquaredRelu), causal (query i sees keys j <= i), key_length (keys
  /// [key_length, n) are padding; default n), train_length and min_length (SoftmaxPlus), relu2_length
  /// (SquaredRelu divides by this fixed length instead of the row's visible keys, post 9019), scale
  /// (overrides attention_scale when set), and the masks of post 9529 (SPEC 7.3): reverse_causal (query i sees
  /// keys j >= i) and segments (UniLM / prefix LM; n ids, or batch x n in the batched form, >= 0). A layer has
  /// one head, so head_directions may hold one entry only; Su's mixing "by layer" is different options per call.
  AttentionOptions attention = detail::gau_default_attention();
  /// bert4keras attention_scale: logits are q.k / sqrt(s) when true, q.k when false.
  bool attention_scale = true;
  /// false (default, bert4keras): query rows at padding positions [key_length, n) are computed like the
  /// others. true: those rows of out are set to 0 and never computed, so a padded batch costs only its
  /// real tokens (the rows below key_length are the same as with false, up to rounding).
  bool zero_padded_rows = false;
  /// An arbitrary per-key visibility mask of length n (nonzero = visible), combined with key_length and
  /// causal: left padding, packed or dropped tokens. It refers to the caller's buffer, which must outlive
  /// the call. l (SquaredRelu, SoftmaxPlus) counts the keys a row sees through all three. 2-D gau() only.
  std::optional<KeyMask> key_mask;
  /// bf16 weights only (ignored for float / double): false (default) keeps every intermediate in float, so out is
  /// the float gau() on the widened weights and x within float rounding; true also rounds v, the attention
  /// weights A and the gated rows u * (A v) to bf16 so that A v and g W_out run on the bf16 GEMM too (float
  /// accumulation; about twice as fast with AVX512-BF16; errors of bf16 size, as PyTorch's bf16 layers).
  bool bf16_activations = false;
};

/// Caller-owned scratch of gau(). It grows to the largest call it has served and is reused without
/// allocating; one workspace must not be used by two calls at the same time. For a sequence of n tokens
/// on P threads it holds the weights packed for the GEMM (D (2e + s) + e D values, columns rounded up to 16
/// floats / 8 doubles; not when gau() is given GauPackedWeights), n (2e + 3s) values for [u | v | z], q, k, v and k^T packed (about n (e + s) more),
/// plus per thread a query tile of t x (n + e) values (scores and gated rows, t = min(n, 144) at most) and
/// a packed block of 144 x max(D, e, n) values; the batched form, when it runs sequences in parallel,
/// holds the sequence buffers once per thread.
/// For bf16 weights (GauWorkspace<Eigen::bfloat16>) the scratch is float (the intermediates are float), plus x's
/// packed bf16 pairs, W_in packed in pairs, W_out widened (e D floats) and the weights' small vectors widened.
template <class T>
class GauWorkspace {
 public:
  /// Bytes currently held.
  std::size_t bytes() const {
    std::size_t total = 0;
    for (const auto& s : slots_) total += s.bytes();
    const auto& w = widened_;
    total += std::size_t(w.b_in.size() + w.gamma_q.size() + w.beta_q.size() + w.gamma_k.size() + w.beta_k.size() +
                         w.b_out.size()) *
             sizeof(detail::gau_compute_t<T>);
    return total;
  }
  /// Frees everything.
  void clear() {
    slots_.clear();
    widened_ = {};
  }

  /// Scratch of each thread (an implementation detail; the layout may change).
  std::vector<detail::GauSlot<detail::gau_compute_t<T>>>& detail_slots() { return slots_; }
  /// bf16 weights: their vectors widened to float (matrices left empty; an implementation detail).
  GauWeights<detail::gau_compute_t<T>>& detail_widened() { return widened_; }

 private:
  std::vector<detail::GauSlot<detail::gau_compute_t<T>>> slots_;
  GauWeights<detail::gau_compute_t<T>> widened_;
};


/// A GAU layer's weights packed once for gau()'s GEMM: W_in and W_out in the GEMM's panel layout, the small
/// vectors (biases, ScaleOffset) copied. Why: gau() on GauWeights packs W_in and W_out on every call, which is
/// about a sixth of a 128-token encoder layer's time (D = 512, e = 1024); an inference service runs each layer on
/// every request, so it packs once at load. Build with gau_pack(); the object is immutable afterwards, so one
/// packed layer may serve any number of threads and workspaces at once, and it does not refer to the GauWeights
/// it was packed from. gau() on it gives the bits of gau() on those weights. The layout is this build's (its SIMD
/// width and GEMM tiles): not a file format, not portable between builds.
template <class T>
class GauPackedWeights {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "GauPackedWeights: float or double weights (bf16 layers pack per call)");

 public:
  /// Empty: gau() on it throws kexue::Error. Use gau_pack().
  GauPackedWeights() = default;

  /// True for a default-constructed or moved-from object (gau() on it throws kexue::Error).
  bool empty() const { return w_in_.empty(); }
  /// D: columns of x and out (0 when default-constructed).
  Index hidden() const { return shape_.hidden; }
  /// e: width of u, v and of the gated product.
  Index units() const { return shape_.units; }
  /// s: width of z, q and k (the RoPE table's dim).
  Index key_size() const { return shape_.key_size; }
  /// Bytes held (packed matrices and copied vectors).
  std::size_t bytes() const {
    const auto& v = vectors_;
    return (w_in_.size() + w_out_.size() + std::size_t(v.b_in.size() + v.gamma_q.size() + v.beta_q.size() +
                                                       v.gamma_k.size() + v.beta_k.size() + v.b_out.size())) *
           sizeof(T);
  }

  /// The plan's shape part (an implementation detail).
  const detail::GauPlan& detail_shape() const { return shape_; }
  /// The small vectors; w_in and w_out are left empty (an implementation detail).
  const GauWeights<T>& detail_vectors() const { return vectors_; }
  /// The packed matrices as the GEMM reads them (an implementation detail).
  detail::GauPacked<T> detail_packed() const {
    detail::GauPacked<T> p;
    p.w_in = {w_in_.data(), shape_.hidden, shape_.width, detail::gemm_round_up<T>(shape_.width, detail::kGemmNr<T>)};
    p.w_out = {w_out_.data(), shape_.units, shape_.hidden,
               detail::gemm_round_up<T>(shape_.hidden, detail::kGemmNr<T>)};
    return p;
  }

 private:
  template <class U>
  friend GauPackedWeights<U> gau_pack(const GauWeights<U>& weights);

  detail::GauPlan shape_;
  GauWeights<T> vectors_;
  detail::GemmBuffer<T> w_in_, w_out_;
};

namespace detail {

template <class T>
struct gau_identity {
  using type = T;
};

template <class T, class O>
bool gau_weight_overlaps(const GauWeights<T>& w, const View<O>& out) {
  auto hits = [&](const T* p, Index size) {
    if (size == 0) return false;
    View<const T> v{p, 1, size, size};
    return overlaps(v, out);
  };
  return hits(w.w_in.data(), w.w_in.size()) || hits(w.b_in.data(), w.b_in.size()) ||
         hits(w.gamma_q.data(), w.gamma_q.size()) || hits(w.beta_q.data(), w.beta_q.size()) ||
         hits(w.gamma_k.data(), w.gamma_k.size()) || hits(w.beta_k.data(), w.beta_k.size()) ||
         hits(w.w_out.data(), w.w_out.size()) || hits(w.b_out.data(), w.b_out.size());
}

/// Validates the weights' shapes and resolves D, e, s into a plan; throws kexue::Error on bad input.
template <class T>
GauPlan gau_plan_weights(const char* fn, const GauWeights<T>& w) {
  GauPlan p;
  p.hidden = w.w_in.rows();
  p.units = w.w_out.rows();
  p.key_size = w.gamma_q.size();
  p.width = 2 * p.units + p.key_size;
  require(p.hidden > 0, fn, "weights.w_in has shape ", shape_str(w.w_in.rows(), w.w_in.cols()),
          "; the hidden size D (its rows) must be > 0");
  require(p.key_size > 0, fn, "weights.gamma_q is empty; it sets the key size s and must have s > 0 values");
  require(p.units > 0, fn, "weights.w_out has shape ", shape_str(w.w_out.rows(), w.w_out.cols()),
          "; the units e (its rows) must be > 0");
  require(w.w_in.cols() == p.width, fn, "weights.w_in has shape ", shape_str(w.w_in.rows(), w.w_in.cols()),
          " but [D, 2e + s] = ", shape_str(p.hidden, p.width), " (e = ", p.units, " from w_out, s = ", p.key_size,
          " from gamma_q)");
  require(w.w_out.cols() == p.hidden, fn, "weights.w_out has shape ", shape_str(w.w_out.rows(), w.w_out.cols()),
          " but w_in has ", p.hidden, " rows (D)");
  require(w.b_in.size() == 0 || w.b_in.size() == p.width, fn, "weights.b_in has ", w.b_in.size(),
          " values but 2e + s = ", p.width, " (or 0: no bias)");
  require(w.gamma_k.size() == p.key_size, fn, "weights.gamma_k has ", w.gamma_k.size(), " values but gamma_q has ",
          p.key_size);
  require(w.beta_q.size() == 0 || w.beta_q.size() == p.key_size, fn, "weights.beta_q has ", w.beta_q.size(),
          " values but s = ", p.key_size, " (or 0: no offset)");
  require(w.beta_k.size() == 0 || w.beta_k.size() == p.key_size, fn, "weights.beta_k has ", w.beta_k.size(),
          " values but s = ", p.key_size, " (or 0: no offset)");
  require(w.b_out.size() == 0 || w.b_out.size() == p.hidden, fn, "weights.b_out has ", w.b_out.size(),
          " values but D = ", p.hidden, " (or 0: no bias)");
  return p;
}

/// Validates the options (and the RoPE table against s and n) and completes the plan of the weights' shapes.
template <class R>
GauPlan gau_plan_options(const char* fn, GauPlan p, const GauOptions& o, Index n, const RopeTable<R>* rope) {
  const AttentionOptions& a = o.attention;
  p.normalization = a.normalization;
  require(a.normalization == Normalization::Softmax || a.normalization == Normalization::SoftmaxPlus ||
              a.normalization == Normalization::SquaredRelu,
          fn, "options.attention.normalization has the invalid value ", static_cast<int>(a.normalization));
  p.causal = a.causal;
  p.reverse = a.reverse_causal;
  require(!(a.causal && a.reverse_causal), fn, "options.attention.causal and options.attention.reverse_causal are ",
          "both set; a GAU layer is one or the other (mixing by layer: different options per call)");
  if (a.head_directions) {
    // One head: a single direction is accepted and means causal / reverse causal.
    require(a.head_directions->size() == 1 && a.head_directions->data() != nullptr, fn,
            "options.attention.head_directions has ", a.head_directions->size(),
            " entries but a GAU layer has one head (mix directions by layer: different options per call)");
    require(!a.causal && !a.reverse_causal, fn,
            "options.attention.head_directions replaces causal and reverse_causal, which must be false");
    const auto dir = static_cast<unsigned>(a.head_directions->data()[0]);
    require(dir <= 2, fn, "options.attention.head_directions[0] has the invalid value ", dir);
    p.causal = dir == 1;
    p.reverse = dir == 2;
  }
  if (a.segments) {
    const SegmentIds& sg = *a.segments;
    require(sg.data32() != nullptr || sg.data64() != nullptr || sg.size() == 0, fn,
            "options.attention.segments has no data");
    for (Index j = 0; j < sg.size(); ++j)
      require(sg[j] >= 0, fn, "options.attention.segments[", j, "] = ", sg[j],
              " is negative; segment ids must be >= 0 (their cumulative sum must not decrease)");
    p.seg32 = sg.data32();
    p.seg64 = sg.data64();
  }
  p.scale = a.scale ? *a.scale : (o.attention_scale ? 1.0 / std::sqrt(double(p.key_size)) : 1.0);
  require(std::isfinite(p.scale), fn, "options.attention.scale must be finite, got ", p.scale);
  require(a.train_length >= 2, fn, "options.attention.train_length must be >= 2, got ", a.train_length);
  require(a.min_length >= 1, fn, "options.attention.min_length must be >= 1, got ", a.min_length);
  p.train_length = double(a.train_length);
  p.min_length = double(a.min_length);
  if (a.relu2_length)
    require(*a.relu2_length >= 1, fn, "options.attention.relu2_length must be >= 1, got ", *a.relu2_length);
  p.relu2_length = a.relu2_length;
  p.zero_padded_rows = o.zero_padded_rows;
  if (rope) {
    require(rope->dim() == p.key_size, fn, "rope_table has dim ", rope->dim(), " but the key size s is ", p.key_size);
    require(rope->max_positions() >= n, fn, "rope_table covers positions [0, ", rope->max_positions(),
            ") but the sequence has ", n, " tokens");
  }
  return p;
}

/// Validates weights and options and resolves them into a plan; throws kexue::Error on bad input.
template <class T, class R>
GauPlan gau_plan(const char* fn, const GauWeights<T>& w, const GauOptions& o, Index n, const RopeTable<R>* rope) {
  return gau_plan_options(fn, gau_plan_weights(fn, w), o, n, rope);
}

/// The same for weights packed by gau_pack(), validated when they were packed.
template <class T, class R>
GauPlan gau_plan(const char* fn, const GauPackedWeights<T>& w, const GauOptions& o, Index n, const RopeTable<R>* rope) {
  require(!w.empty(), fn, "weights is an empty GauPackedWeights (default-constructed or moved from); build it with ",
          "gau_pack()");
  return gau_plan_options(fn, w.detail_shape(), o, n, rope);
}

/// The packed weights are owned by the GauPackedWeights, so out cannot be one of them.
template <class T, class O>
bool gau_weight_overlaps(const GauPackedWeights<T>&, const View<O>&) {
  return false;
}

/// The small vectors and the packed matrices of a call: packed now into slot 0, or packed already.
template <class T>
const GauWeights<T>& gau_vectors(const GauWeights<T>& w) {
  return w;
}
template <class T>
const GauWeights<T>& gau_vectors(const GauPackedWeights<T>& w) {
  return w.detail_vectors();
}
template <class T>
GauPacked<T> gau_packed_for(const GauWeights<T>& w, const GauPlan& p, GauSlot<T>& slot0) {
  return gau_pack_weights(w, p, slot0);
}
template <class T>
GauPacked<T> gau_packed_for(const GauPackedWeights<T>& w, const GauPlan&, GauSlot<T>&) {
  return w.detail_packed();
}

/// Byte range [first, last) a [batch, 1, n, D] view touches (n, D, batch > 0), for aliasing checks.
template <class T>
std::pair<const char*, const char*> gau_extent(const TensorView<T>& t) {
  const T* first = t.data;
  const T* last = t.data + 1;
  for (Index b : {Index(0), t.batch() - 1})
    for (Index r : {Index(0), t.seq() - 1}) {
      const T* row = t.row(b, 0, r);
      first = std::min(first, row);
      last = std::max(last, row + t.dim());
    }
  return {reinterpret_cast<const char*>(first), reinterpret_cast<const char*>(last)};
}

inline Index gau_key_length(const char* fn, const char* what, std::optional<Index> key_length, Index n) {
  const Index kl = key_length ? *key_length : n;
  require(kl >= 0 && kl <= n, fn, what, " is ", kl, " but must lie in [0, ", n, "] (the sequence length)");
  return kl;
}

/// The checks of the 2-D gau(): plan, shapes of x and out, aliasing with the weights, key_length, segments, key_mask.
template <class W, class X, class O, class R>
GauPlan gau_check_2d(const char* fn, const W& weights, const GauOptions& options, const View<const X>& xv,
                     const View<O>& ov, const RopeTable<R>* rope_table, Index& key_length) {
  const Index n = xv.rows;
  GauPlan p = gau_plan(fn, weights, options, n, rope_table);
  require(xv.cols == p.hidden || n == 0, fn, "x has shape ", shape_str(xv.rows, xv.cols),
          " but weights.w_in has ", p.hidden, " rows (D)");
  require_shape(fn, "out", ov, n, n == 0 ? ov.cols : p.hidden, "x implies ");
  require(!gau_weight_overlaps(weights, ov), fn, "out overlaps one of the weights");
  key_length = gau_key_length(fn, "options.attention.key_length", options.attention.key_length, n);
  if (options.attention.segments)
    require(options.attention.segments->size() == n, fn, "options.attention.segments has ",
            options.attention.segments->size(), " ids but the sequence has ", n, " tokens");
  if (options.key_mask) {
    require(options.key_mask->size() == n, fn, "options.key_mask has ", options.key_mask->size(),
            " entries but the sequence has ", n, " tokens");
    require(options.key_mask->data() != nullptr || n == 0, fn, "options.key_mask has no data");
  }
  return p;
}

/// bf16 weights: the small vectors (biases, ScaleOffset) widened to float into wf, once per call (the kernels'
/// epilogues and ScaleOffset read float); wf's matrices stay empty.
inline void gau_widen_vectors(const GauWeights<Eigen::bfloat16>& w, GauWeights<float>& wf) {
  auto widen = [](const Vector<Eigen::bfloat16>& src, Vector<float>& dst) {
    dst.resize(src.size());
    if (src.size() != 0) widen_n(src.data(), dst.data(), src.size());
  };
  widen(w.b_in, wf.b_in);
  widen(w.gamma_q, wf.gamma_q);
  widen(w.beta_q, wf.beta_q);
  widen(w.gamma_k, wf.gamma_k);
  widen(w.beta_k, wf.beta_k);
  widen(w.b_out, wf.b_out);
}

}  // namespace detail

/// Packs a float or double GAU layer for gau() (see GauPackedWeights): validates the weights' shapes (throws
/// kexue::Error as gau() would), packs W_in and W_out (in parallel over OpenMP threads) and copies the small vectors.
template <class T>
GauPackedWeights<T> gau_pack(const GauWeights<T>& weights) {
  GauPackedWeights<T> out;
  const detail::GauPlan p = detail::gau_plan_weights("gau_pack", weights);
  out.shape_ = p;
  out.vectors_.b_in = weights.b_in;
  out.vectors_.gamma_q = weights.gamma_q;
  out.vectors_.beta_q = weights.beta_q;
  out.vectors_.gamma_k = weights.gamma_k;
  out.vectors_.beta_k = weights.beta_k;
  out.vectors_.b_out = weights.b_out;
  detail::gemm_pack_b(detail::View<const T>{weights.w_in.data(), p.hidden, p.width, p.width}, false,
                      detail::gemm_grow(out.w_in_, detail::gemm_packed_b_size<T>(p.hidden, p.width)), true);
  detail::gemm_pack_b(detail::View<const T>{weights.w_out.data(), p.units, p.hidden, p.hidden}, false,
                      detail::gemm_grow(out.w_out_, detail::gemm_packed_b_size<T>(p.units, p.hidden)), true);
  return out;
}

namespace detail {

/// The 2-D gau() on GauWeights (packed during the call) or GauPackedWeights (packed already).
template <class T, class W, class Dx, class Do>
void gau_2d(const W& weights, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
            GauWorkspace<T>& workspace, const GauOptions& options, const RopeTable<T>* rope_table) {
  static_assert(std::is_same<typename Dx::Scalar, T>::value && std::is_same<typename Do::Scalar, T>::value,
                "gau: x and out must have the scalar type of the weights");
  constexpr const char* fn = "gau";
  const View<const T> xv = make_view(fn, "x", x);
  const View<T> ov = make_mut_view(fn, "out", out);
  const Index n = xv.rows;
  Index key_length = 0;
  GauPlan p = gau_check_2d(fn, weights, options, xv, ov, rope_table, key_length);
  if (n == 0) return;
  auto& slots = workspace.detail_slots();
  gau_reserve_tiles(slots, std::max<Index>(1, max_threads()), n, p);
  gau_reserve_sequence(slots[0], n, p);
  p.key_mask = options.key_mask ? options.key_mask->data() : nullptr;
  const GauPacked<T> packed = gau_packed_for(weights, p, slots[0]);
  gau_sequence(gau_vectors(weights), p, packed, xv, ov, key_length, rope_table, slots, 0, true);
}

}  // namespace detail

/// GAU layer on one sequence with caller-owned scratch (no allocation once the workspace has grown).
/// x, out: [n, D], row-major with unit inner stride (Matrix, Map, Block). out may be x itself (in place):
/// x is read completely before out is written. rope_table (dim s, at least n positions; bert4keras uses
/// RopeTable<T>(n, s) with the default interleaved base-10000 layout) rotates q and k, or nullptr for none.
/// Work is spread over OpenMP threads by tiles of rows; results are bitwise identical for any thread count.
/// The GEMM's packing buffers are part of the workspace too: nothing is allocated once it has grown.
/// W_in and W_out are packed on every call; a layer run many times packs once with gau_pack().
template <class T, class Dx, class Do>
void gau(const GauWeights<T>& weights, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
         GauWorkspace<T>& workspace, const GauOptions& options = {}, const RopeTable<T>* rope_table = nullptr) {
  detail::gau_2d(weights, x, out, workspace, options, rope_table);
}

/// GAU layer on one sequence with weights packed by gau_pack(): the bits of gau() on the weights they were
/// packed from, without packing W_in and W_out again. Otherwise as the GauWeights overload; the workspace then
/// holds no packed weights.
template <class T, class Dx, class Do>
void gau(const GauPackedWeights<T>& weights, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
         GauWorkspace<T>& workspace, const GauOptions& options = {}, const RopeTable<T>* rope_table = nullptr) {
  detail::gau_2d(weights, x, out, workspace, options, rope_table);
}

/// GAU layer on one sequence; allocates its scratch per call (see GauWorkspace). Otherwise as the
/// workspace overload.
template <class T, class Dx, class Do>
void gau(const GauWeights<T>& weights, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
         const GauOptions& options = {}, const RopeTable<T>* rope_table = nullptr) {
  GauWorkspace<T> workspace;
  gau(weights, x, out, workspace, options, rope_table);
}

/// GAU layer on one sequence with packed weights; allocates its scratch per call (see GauWorkspace).
template <class T, class Dx, class Do>
void gau(const GauPackedWeights<T>& weights, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
         const GauOptions& options = {}, const RopeTable<T>* rope_table = nullptr) {
  GauWorkspace<T> workspace;
  gau(weights, x, out, workspace, options, rope_table);
}

/// GAU layer with bf16 weights and activations (issue 13, part 4), with caller-owned scratch.
/// weights: GauWeights<Eigen::bfloat16>; x: [n, D] in Eigen::bfloat16; out: [n, D] in float, or in
/// Eigen::bfloat16 rounded once (nearest even, as torch's .to()); rope_table: a float table (dim s) or nullptr.
/// x W_in runs on kexue's bf16 GEMM (two exact bf16 products per float addition: vdpbf16ps under AVX512-BF16,
/// widened operands and fp32 FMAs elsewhere), so u, v, z come out in float; everything after stays float: q, k,
/// the attention, the gated rows u * (A v), and W_out (widened to float as it is packed). out is therefore the
/// float gau() on the widened weights and x, up to the summation order of x W_in (pairs of depths per addition
/// instead of one: float rounding differences only). Shapes, options, in-place use, errors, threading and
/// bitwise determinism over thread counts are those of the float overload.
template <class Dx, class Do>
void gau(const GauWeights<Eigen::bfloat16>& weights, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
         GauWorkspace<Eigen::bfloat16>& workspace, const GauOptions& options = {},
         const RopeTable<float>* rope_table = nullptr) {
  using BF = Eigen::bfloat16;
  using O = typename Do::Scalar;
  static_assert(std::is_same<typename Dx::Scalar, BF>::value,
                "gau: with Eigen::bfloat16 weights x must be Eigen::bfloat16 (widen bf16 weights for float x)");
  static_assert(std::is_same<O, float>::value || std::is_same<O, BF>::value,
                "gau: with Eigen::bfloat16 weights out must be float or Eigen::bfloat16");
  constexpr const char* fn = "gau";
  const detail::View<const BF> xv = detail::make_view<Dx, true>(fn, "x", x);
  const detail::View<O> ov = detail::make_mut_view<Do, true>(fn, "out", out);
  const Index n = xv.rows;
  Index key_length = 0;
  detail::GauPlan p = detail::gau_check_2d(fn, weights, options, xv, ov, rope_table, key_length);
  if (n == 0) return;
  p.bf16_act = options.bf16_activations;
  GauWeights<float>& wf = workspace.detail_widened();
  detail::gau_widen_vectors(weights, wf);
  auto& slots = workspace.detail_slots();
  detail::gau_reserve_tiles(slots, std::max<Index>(1, detail::max_threads()), n, p, true,
                            !std::is_same<O, float>::value);
  detail::gau_reserve_sequence(slots[0], n, p);
  p.key_mask = options.key_mask ? options.key_mask->data() : nullptr;
  const detail::GauPacked<float> packed = detail::gau_pack_weights_bf16(weights, p, slots[0]);
  detail::gau_sequence(wf, p, packed, xv, ov, key_length, rope_table, slots, 0, true);
}

/// GAU layer with bf16 weights and activations, allocating its scratch per call (see the workspace overload).
template <class Dx, class Do>
void gau(const GauWeights<Eigen::bfloat16>& weights, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
         const GauOptions& options = {}, const RopeTable<float>* rope_table = nullptr) {
  GauWorkspace<Eigen::bfloat16> workspace;
  gau(weights, x, out, workspace, options, rope_table);
}

namespace detail {

/// The batched gau() on GauWeights or GauPackedWeights (X = O = T), or on bf16 weights (T = Eigen::bfloat16,
/// X = Eigen::bfloat16, O = float or Eigen::bfloat16: float intermediates, as the 2-D bf16 gau()).
template <class T, class X, class O, class W, class R>
void gau_batched(const W& weights, TensorView<const X> x, TensorView<O> out, const std::vector<Index>& lengths,
                 GauWorkspace<T>& workspace, const GauOptions& options, const RopeTable<R>* rope_table) {
  constexpr const char* fn = "gau";
  constexpr bool kBf16 = std::is_same<T, Eigen::bfloat16>::value;
  using C = gau_compute_t<T>;
  const Index batch = x.batch(), n = x.seq();
  require(x.batch() >= 0 && x.heads() >= 0 && x.seq() >= 0 && x.dim() >= 0, fn, "x has a negative extent");
  require(x.heads() == 1, fn, "x has ", x.heads(), " heads; the batched GAU takes [batch, 1, n, D]");
  require(out.batch() == batch && out.heads() == 1 && out.seq() == n && out.dim() == x.dim(), fn,
                  "out has shape [", out.batch(), ", ", out.heads(), ", ", out.seq(), ", ", out.dim(), "] but x has [",
                  batch, ", 1, ", n, ", ", x.dim(), "]");
  GauPlan p = gau_plan(fn, weights, options, n, rope_table);
  if (batch == 0 || n == 0) return;
  require(x.dim() == p.hidden, fn, "x has dim ", x.dim(), " but weights.w_in has ", p.hidden, " rows (D)");
  require(x.data != nullptr && out.data != nullptr, fn, "x or out has no data");
  require(lengths.empty() || static_cast<Index>(lengths.size()) == batch, fn, "lengths has ", lengths.size(),
                  " entries but the batch has ", batch, " sequences");
  require(lengths.empty() || !options.attention.key_length, fn,
                  "options.attention.key_length and lengths are both given; pass one of them");
  require(!options.key_mask, fn, "options.key_mask is for the 2-D gau(); the batched form takes lengths");
  if (options.attention.segments) {
    const Index ns = options.attention.segments->size();
    require(ns == n || ns == batch * n, fn, "options.attention.segments has ", ns, " ids but needs n = ", n,
                    " (shared) or batch x n = ", batch * n);
    p.seg_batch_stride = ns == n ? 0 : n;
  }
  std::vector<Index> key_lengths(static_cast<std::size_t>(batch));
  for (Index b = 0; b < batch; ++b) {
    key_lengths[static_cast<std::size_t>(b)] =
        lengths.empty() ? gau_key_length(fn, "options.attention.key_length", options.attention.key_length, n)
                        : gau_key_length(fn, "lengths[b]", lengths[static_cast<std::size_t>(b)], n);
  }
  for (Index b = 0; b < batch; ++b) {
    const View<O> ob{out.row(b, 0, 0), n, p.hidden, out.strides[2]};
    require(!gau_weight_overlaps(weights, ob), fn, "out overlaps one of the weights");
  }
  // Sequence b reads all of its x before writing its out, so out may be x itself, but not a shifted view
  // of it (sequence b would overwrite the input of another sequence).
  const auto xe = gau_extent(x), oe = gau_extent(out);
  const bool same = xe.first == oe.first && std::is_same<X, O>::value && out.strides == x.strides;
  require(same || oe.second <= xe.first || xe.second <= oe.first, fn,
                  "out overlaps x without being the same view; pass out = x or disjoint buffers");
  if constexpr (kBf16) p.bf16_act = options.bf16_activations;  // before the tiles are sized: it needs more
  auto& slots = workspace.detail_slots();
  const Index threads = std::max<Index>(1, max_threads());
  const bool by_sequence = threads > 1 && batch >= threads;
  gau_reserve_tiles(slots, threads, n, p, kBf16, kBf16 && !std::is_same<O, float>::value);
  for (Index t = 0; t < (by_sequence ? threads : 1); ++t)
    gau_reserve_sequence(slots[static_cast<std::size_t>(t)], n, p);
  // The small vectors and the packed matrices: bf16 weights widen their vectors to float once per call (the
  // kernels' epilogues read float) and pack W_in in depth pairs, as the 2-D bf16 gau() does.
  const GauWeights<C>* vectors = nullptr;
  GauPacked<C> packed;
  if constexpr (kBf16) {
    GauWeights<float>& wf = workspace.detail_widened();
    gau_widen_vectors(weights, wf);
    vectors = &wf;
    packed = gau_pack_weights_bf16(weights, p, slots[0]);
  } else {
    vectors = &gau_vectors(weights);
    packed = gau_packed_for(weights, p, slots[0]);
  }
  auto run = [&](Index b, Index slot, bool tiles_parallel) {
    const View<const X> xb{x.row(b, 0, 0), n, p.hidden, x.strides[2]};
    const View<O> ob{out.row(b, 0, 0), n, p.hidden, out.strides[2]};
    GauPlan pb = p;  // sequence b's own segment ids
    if (pb.seg32) pb.seg32 += b * p.seg_batch_stride;
    if (pb.seg64) pb.seg64 += b * p.seg_batch_stride;
    gau_sequence(*vectors, pb, packed, xb, ob, key_lengths[static_cast<std::size_t>(b)], rope_table, slots, slot,
                 tiles_parallel);
  };
  if (by_sequence) {
    gau_parallel(batch, true, [&](Index b, Index thread) { run(b, thread, false); });
  } else {
    for (Index b = 0; b < batch; ++b) run(b, 0, true);
  }
}

}  // namespace detail

/// Batched GAU over a padded batch x, out: [batch, 1, n, D] (TensorView with heads = 1, any strides,
/// unit inner stride; out may be x itself). lengths: one key length per sequence (keys [lengths[b], n)
/// are padding, as bert4keras' mask), or empty to use options.attention.key_length (default n) for all;
/// options.attention.key_length must be unset when lengths are given. Each sequence gives exactly the
/// bits of the 2-D gau() on it. Sequences run in parallel when there are enough of them (at least as many
/// as threads), else the row tiles of each sequence do.
template <class T>
void gau(const GauWeights<T>& weights, typename detail::gau_identity<TensorView<const T>>::type x,
         typename detail::gau_identity<TensorView<T>>::type out, const std::vector<Index>& lengths,
         GauWorkspace<T>& workspace, const GauOptions& options = {}, const RopeTable<T>* rope_table = nullptr) {
  detail::gau_batched<T, T, T>(weights, x, out, lengths, workspace, options, rope_table);
}

/// Batched GAU with weights packed by gau_pack(); otherwise as the GauWeights overload.
template <class T>
void gau(const GauPackedWeights<T>& weights, typename detail::gau_identity<TensorView<const T>>::type x,
         typename detail::gau_identity<TensorView<T>>::type out, const std::vector<Index>& lengths,
         GauWorkspace<T>& workspace, const GauOptions& options = {}, const RopeTable<T>* rope_table = nullptr) {
  detail::gau_batched<T, T, T>(weights, x, out, lengths, workspace, options, rope_table);
}

/// Batched GAU allocating its scratch per call (see GauWorkspace); otherwise as the workspace overload.
template <class T>
void gau(const GauWeights<T>& weights, typename detail::gau_identity<TensorView<const T>>::type x,
         typename detail::gau_identity<TensorView<T>>::type out, const std::vector<Index>& lengths = {},
         const GauOptions& options = {}, const RopeTable<T>* rope_table = nullptr) {
  GauWorkspace<T> workspace;
  gau(weights, x, out, lengths, workspace, options, rope_table);
}

/// Batched GAU with packed weights, allocating its scratch per call (see GauWorkspace).
template <class T>
void gau(const GauPackedWeights<T>& weights, typename detail::gau_identity<TensorView<const T>>::type x,
         typename detail::gau_identity<TensorView<T>>::type out, const std::vector<Index>& lengths = {},
         const GauOptions& options = {}, const RopeTable<T>* rope_table = nullptr) {
  GauWorkspace<T> workspace;
  gau(weights, x, out, lengths, workspace, options, rope_table);
}

/// Batched GAU with bf16 weights and activations (issue 13): x [batch, 1, n, D] in Eigen::bfloat16, out in float or
/// Eigen::bfloat16, lengths as for the float batched form. Each sequence gives exactly the bits of the 2-D bf16
/// gau() on it (float intermediates, options.bf16_activations as there).
template <class O>
void gau(const GauWeights<Eigen::bfloat16>& weights, TensorView<const Eigen::bfloat16> x, TensorView<O> out,
         const std::vector<Index>& lengths, GauWorkspace<Eigen::bfloat16>& workspace, const GauOptions& options = {},
         const RopeTable<float>* rope_table = nullptr) {
  static_assert(std::is_same<O, float>::value || std::is_same<O, Eigen::bfloat16>::value,
                "gau: with Eigen::bfloat16 weights out must be float or Eigen::bfloat16");
  detail::gau_batched<Eigen::bfloat16, Eigen::bfloat16, O>(weights, x, out, lengths, workspace, options, rope_table);
}

/// Batched bf16 GAU allocating its scratch per call (see GauWorkspace).
template <class O>
void gau(const GauWeights<Eigen::bfloat16>& weights, TensorView<const Eigen::bfloat16> x, TensorView<O> out,
         const std::vector<Index>& lengths = {}, const GauOptions& options = {},
         const RopeTable<float>* rope_table = nullptr) {
  GauWorkspace<Eigen::bfloat16> workspace;
  gau(weights, x, out, lengths, workspace, options, rope_table);
}

}  // namespace kexue
