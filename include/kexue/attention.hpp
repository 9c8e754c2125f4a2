// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Fused attention with the three normalisations of bert4keras' attention_normalize (SPEC.md 3.3):
/// softmax, the entropy-invariant softmax_plus (SPEC 3.4) and squared ReLU (SPEC 3.1, 3.4), plus the
/// concentration diagnostics of SPEC 5.1 (row entropy, l1/l2 sparsity).
///
/// For query row i (0-based) of n and keys j of m, key j is *visible* to row i when
///   j < key_length  and  key_mask[j] != 0 (if a mask is given)  and  (not causal or j <= i + m - n)
///   and  (not reverse_causal or j >= i)  and  (no segments or c[j] <= c[i], c = cumsum of the segment ids),
/// the last two being the masks of post 9529 (SPEC 7.3): reverse causal and UniLM / prefix LM, both for n = m.
/// Every mask but the per-key one is a per-row key window [lo_i, hi_i) that never moves left as i grows, so the
/// fused kernel skips the key tiles a row tile cannot see: causal, reverse causal and UniLM cost about half of
/// bidirectional attention at n = m, and no n x m mask is ever built.
/// l_i is the number of keys visible to row i, and a_ij = scale * q_i . k_j (scale defaults to 1/sqrt(d)).
///   Softmax:      A_ij = softmax_j over visible keys of a_ij
///   SoftmaxPlus:  A_ij = softmax_j of a_ij * ln(max(l_i, min_length)) / ln(train_length)
///   SquaredRelu:  A_ij = relu(a_ij)^2 / L_i,  L_i = relu2_length if set, else l_i
/// and out_i = sum_j A_ij v_j over the keys row i sees. A row that sees no key is zero (not NaN, unlike
/// bert4keras' 0/0). A key that row i cannot see takes no part in row i whatever its k and v hold: inf, NaN or
/// 1e38 in a padding row past key_length, a masked key, a future key under causal, or the unused tail of a KV
/// cache never reaches that row (unlike softmax(q k^T) v in PyTorch, where a masked weight 0 times an inf value
/// is NaN). Non-finite values in keys a row does see are the caller's: inf or NaN in a visible v propagates into
/// the row. A NaN logit (from a NaN in q or a visible k, or inf - inf when huge finite inputs overflow q.k) counts
/// as the most negative logit, on every path and instruction set: that key gets weight 0 (softmax, unless every
/// key the row sees has a NaN logit; relu^2), and finite inputs always give a finite softmax row.
/// Softmax rows subtract the running row max and clamp logits to the finite range, so huge or overflowing
/// logits never give inf or NaN. SquaredRelu has no such normaliser: its exact result is finite as long as
/// relu(a)^2 * |v| / L is (|a| below ~1e19 in float), and beyond that it overflows like the math does.


#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "kexue/core.hpp"  // before Eigen/SVD: it sets up the intrinsics and includes Eigen/Core
#include <Eigen/SVD>
#include "kexue/detail/attention_kernel.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

/// How a row of logits becomes attention weights (SPEC 3.3).
enum class Normalization {
  Softmax,      ///< ordinary softmax over the visible keys
  SoftmaxPlus,  ///< entropy-invariant softmax: logits * ln(max(l, min_length)) / ln(train_length) (bert4keras)
  SquaredRelu,  ///< relu(logits)^2 / L with L = relu2_length or the row's visible-key count l (GAU)
};

/// UniLM / prefix-LM segment ids (SPEC 7.3, bert4keras' UniLM_Mask): a view of the caller's contiguous int32 or
/// int64 buffer of length m (or batch x m in the batched form), e.g. 0 for the source tokens and 1 for the target
/// tokens. With c = cumsum(ids), query i sees key j when c[j] <= c[i]: the source sees all of the source, each
/// target token the source and the targets up to itself. Ids must be >= 0 (kexue::Error otherwise); only whether
/// an id is 0 matters, so ids of any size never overflow a sum. The buffer must outlive the call.
class SegmentIds {
 public:
  /// Pointer + length over int32.
  SegmentIds(const std::int32_t* data, Index size) : data32_(data), size_(size) {}
  /// Pointer + length over int64.
  SegmentIds(const std::int64_t* data, Index size) : data64_(data), size_(size) {}
  /// Any contiguous container with data() and size() of std::int32_t or std::int64_t (std::vector, std::array, an
  /// Eigen vector). Other integer types of the same size (long long where int64_t is long) are not aliased: copy.
  template <class C, class E = std::remove_cv_t<std::remove_pointer_t<decltype(std::declval<const C&>().data())>>,
            class = std::enable_if_t<std::is_same<E, std::int32_t>::value || std::is_same<E, std::int64_t>::value>>
  SegmentIds(const C& container)  // NOLINT: implicit on purpose, so a vector can be passed directly
      : size_(Index(container.size())) {
    if constexpr (std::is_same<E, std::int32_t>::value)
      data32_ = container.data();
    else
      data64_ = container.data();
  }

  /// The ids when they are int32 (else null).
  const std::int32_t* data32() const { return data32_; }
  /// The ids when they are int64 (else null).
  const std::int64_t* data64() const { return data64_; }
  /// Number of ids.
  Index size() const { return size_; }
  /// Id j as int64.
  std::int64_t operator[](Index j) const { return data32_ ? std::int64_t(data32_[j]) : data64_[j]; }

 private:
  const std::int32_t* data32_ = nullptr;
  const std::int64_t* data64_ = nullptr;
  Index size_ = 0;
};

/// Mask direction of one head in the mixed forward/backward attention of post 9529 (SPEC 7.3).
enum class HeadDirection : unsigned char {
  Bidirectional = 0,  ///< no direction mask
  Causal = 1,         ///< forward: query i sees keys j <= i + m - n
  ReverseCausal = 2,  ///< backward: query i sees keys j >= i (n == m)
};

/// One HeadDirection per query head of a batched call (a view of the caller's contiguous buffer, which must
/// outlive the call): Su's mixed attention is causal on half of the heads and reverse causal on the other half.
class HeadDirections {
 public:
  /// Pointer + length.
  HeadDirections(const HeadDirection* data, Index size) : data_(data), size_(size) {}
  /// Any contiguous container of HeadDirection (std::vector, std::array).
  template <class C, class = std::enable_if_t<std::is_same<
                         std::remove_cv_t<std::remove_pointer_t<decltype(std::declval<const C&>().data())>>,
                         HeadDirection>::value>>
  HeadDirections(const C& container)  // NOLINT: implicit on purpose
      : data_(container.data()), size_(Index(container.size())) {}
  /// The directions, one per query head.
  const HeadDirection* data() const { return data_; }
  /// Number of heads covered.
  Index size() const { return size_; }

 private:
  const HeadDirection* data_;
  Index size_;
};

/// Options of attention(); the defaults are bert4keras' (min_length 16 since its commit 988e899, SPEC 3.3).
struct AttentionOptions {
  Normalization normalization = Normalization::Softmax;  ///< how logits become weights (SPEC 3.3)
  bool causal = false;                 ///< query i sees keys j <= i + (m - n)  (bottom-right aligned, KV-cache friendly)
  std::optional<double> scale;         ///< logits = scale * q.k ; default 1/sqrt(d)
  std::optional<Index> key_length;     ///< keys [key_length, m) are padding; default m
  Index train_length = 512;            ///< SoftmaxPlus: logits *= ln(max(l, min_length)) / ln(train_length)
  Index min_length = 16;               ///<   l = number of keys visible to that query row
  std::optional<Index> relu2_length;   ///< SquaredRelu: A = relu(logits)^2 / L, L = this fixed n, default l
  bool reverse_causal = false;         ///< query i sees keys j >= i (n == m); exclusive with causal (SPEC 7.3)
  std::optional<SegmentIds> segments;  ///< UniLM / prefix LM: keep(i, j) = c[j] <= c[i], c = cumsum(ids), n == m
  /// Mixed forward/backward attention: one direction per query head (batched form; 1 entry in the 2-D form),
  /// replacing causal / reverse_causal, which must then both be false. Mixing by layer needs nothing: pass
  /// causal on one call and reverse_causal on the next.
  std::optional<HeadDirections> head_directions;
};

/// A per-key visibility mask of length m (nonzero / true = the key may be attended to). It refers to the
/// caller's contiguous bool or byte buffer (std::vector<std::uint8_t>, std::array<bool, N>, a pointer + size,
/// an Eigen vector of bool or uint8); std::vector<bool> is not contiguous and is not accepted.
class KeyMask {
 public:
  /// Pointer + length over bool.
  KeyMask(const bool* data, Index size) : data_(reinterpret_cast<const unsigned char*>(data)), size_(size) {}
  /// Pointer + length over bytes.
  KeyMask(const unsigned char* data, Index size) : data_(data), size_(size) {}
  /// Pointer + length over chars.
  KeyMask(const char* data, Index size) : data_(reinterpret_cast<const unsigned char*>(data)), size_(size) {}
  /// Any contiguous container with data() and size() of bool / char / signed char / unsigned char.
  template <class C, class E = std::remove_cv_t<std::remove_pointer_t<decltype(std::declval<const C&>().data())>>,
            class = std::enable_if_t<std::is_same<E, bool>::value || std::is_same<E, char>::value ||
                                     std::is_same<E, signed char>::value || std::is_same<E, unsigned char>::value>>
  KeyMask(const C& container)  // NOLINT: implicit on purpose, so a vector can be passed directly
      : data_(reinterpret_cast<const unsigned char*>(container.data())), size_(Index(container.size())) {}

  /// The bytes of the mask (bool is one byte holding 0 or 1).
  const unsigned char* data() const { return data_; }
  /// Number of keys covered.
  Index size() const { return size_; }

 private:
  const unsigned char* data_;
  Index size_;
};

namespace detail {

inline AttnNorm to_attn_norm(Normalization n) {
  switch (n) {
    case Normalization::SoftmaxPlus: return AttnNorm::SoftmaxPlus;
    case Normalization::SquaredRelu: return AttnNorm::SquaredRelu;
    default: return AttnNorm::Softmax;
  }
}

/// Validates options against (d, m) and fills the scalar part of a plan. The masks of post 9529 need the shapes
/// too: n queries, batch (segments may hold batch x m ids) and the query heads (head_directions).
template <class T, class S>
inline void plan_options(const char* fn, const AttentionOptions& o, Index d, Index m, AttentionPlan<T, S>& p,
                         Index n = -1, Index batch = 1, Index heads = 1) {
  require(!o.scale || std::isfinite(*o.scale), fn, "options.scale must be finite, got ", o.scale ? *o.scale : 0.0);
  require(!o.key_length || (*o.key_length >= 0 && *o.key_length <= m), fn, "options.key_length is ",
          o.key_length ? *o.key_length : 0, " but k has ", m, " rows (keys)");
  require(o.train_length >= 2, fn, "options.train_length must be >= 2, got ", o.train_length);
  require(o.min_length >= 1, fn, "options.min_length must be >= 1, got ", o.min_length);
  require(!o.relu2_length || *o.relu2_length >= 1, fn, "options.relu2_length must be >= 1, got ",
          o.relu2_length ? *o.relu2_length : 0);
  require(!(o.causal && o.reverse_causal), fn,
          "options.causal and options.reverse_causal are both set; a head is one or the other (head_directions "
          "mixes them across heads)");
  if (n < 0) n = m;
  require(!o.reverse_causal || n == m, fn, "options.reverse_causal needs self-attention (n == m) but q has ", n,
          " rows and k has ", m);
  if (o.segments) {
    const SegmentIds& sg = *o.segments;
    require(n == m, fn, "options.segments needs self-attention (n == m) but q has ", n, " rows and k has ", m);
    require(sg.size() == m || (batch > 1 && sg.size() == batch * m), fn, "options.segments has ", sg.size(),
            " ids but needs m = ", m, batch > 1 ? " (shared) or batch x m = " : "",
            batch > 1 ? std::to_string(batch * m) : std::string());
    require(sg.data32() != nullptr || sg.data64() != nullptr || sg.size() == 0, fn, "options.segments has no data");
    for (Index j = 0; j < sg.size(); ++j)
      require(sg[j] >= 0, fn, "options.segments[", j, "] = ", sg[j],
              " is negative; segment ids must be >= 0 (their cumulative sum must not decrease)");
    p.seg32 = sg.data32();
    p.seg64 = sg.data64();
    p.seg_batch_stride = sg.size() == m ? 0 : m;
  }
  if (o.head_directions) {
    const HeadDirections& hd = *o.head_directions;
    require(!o.causal && !o.reverse_causal, fn,
            "options.head_directions replaces options.causal and options.reverse_causal, which must be false");
    require(hd.size() == heads, fn, "options.head_directions has ", hd.size(), " entries but q has ", heads,
            " heads");
    require(hd.data() != nullptr || heads == 0, fn, "options.head_directions has no data");
    for (Index h = 0; h < hd.size(); ++h) {
      const auto x = static_cast<unsigned>(hd.data()[h]);
      require(x <= 2, fn, "options.head_directions[", h, "] has the invalid value ", x);
      require(x != 2 || n == m, fn, "options.head_directions[", h, "] is ReverseCausal, which needs self-attention ",
              "(n == m) but q has ", n, " rows and k has ", m);
    }
    p.head_dirs = reinterpret_cast<const unsigned char*>(hd.data());
  }
  p.norm = to_attn_norm(o.normalization);
  p.causal = o.causal;
  p.reverse = o.reverse_causal;
  p.scale = T(o.scale ? *o.scale : (d > 0 ? 1.0 / std::sqrt(double(d)) : 1.0));
  p.key_length = o.key_length ? *o.key_length : m;
  p.log_train = std::log(double(o.train_length));
  p.min_length = o.min_length;
  p.relu2_length = o.relu2_length ? *o.relu2_length : 0;
}

template <class T>
inline TensorView<const T> as_tensor(const View<const T>& v) {
  return TensorView<const T>(v.data, {1, 1, v.rows, v.cols}, {0, 0, v.stride});
}
template <class T>
inline TensorView<T> as_tensor(const View<T>& v) {
  return TensorView<T>(v.data, {1, 1, v.rows, v.cols}, {0, 0, v.stride});
}

/// The scalar types attention() takes (16-bit storage, issue 13): q, k, v, out all float or all double; or k, v
/// Eigen::half / Eigen::bfloat16 with q and out float (a 16-bit KV cache); or q, k, v of one 16-bit type with
/// out float or that type. Everything 16-bit computes in float.
template <class Q, class S, class O>
constexpr bool kAttentionTypes =
    (std::is_same<Q, S>::value && std::is_same<S, O>::value && !kIs16Bit<S>) ||
    (kIs16Bit<S> && (std::is_same<Q, float>::value || std::is_same<Q, S>::value) &&
     (std::is_same<O, float>::value || (std::is_same<O, S>::value && std::is_same<Q, S>::value)));
/// The compute type for K/V stored as S.
template <class S>
using attention_compute_t = std::conditional_t<kIs16Bit<S>, float, S>;

/// Runs a validated plan (k, v, options set) on q and out of the call's types: a 16-bit q is widened once into a
/// float copy (exact), and a 16-bit out is computed in float and rounded once to nearest even as it is stored.
/// q, k, v all bf16 take the bf16-pairs products (AttentionPlan::bf16_pairs) where kPreferBf16Dot, or as
/// bf16_pairs says (tests run both ways on every build).
template <class T, class S, class Q, class O>
void run_attention_io(AttentionPlan<T, S>& p, const TensorView<const Q>& q, const TensorView<O>& out,
                      std::optional<bool> bf16_pairs = std::nullopt) {
  if constexpr (std::is_same<Q, Eigen::bfloat16>::value && std::is_same<S, Eigen::bfloat16>::value)
    p.bf16_pairs = bf16_pairs.value_or(kPreferBf16Dot);
  AlignedVector<T> qw, ow;
  if constexpr (std::is_same<Q, T>::value) {
    p.q = q;
  } else {
    const Index B = q.batch(), H = q.heads(), n = q.seq(), d = q.dim();
    qw.resize(static_cast<std::size_t>(B * H * n * d));
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h)
        widen_rows(q.row(b, h, 0), q.strides[2], n, d, qw.data() + ((b * H + h) * n) * d, d);
    p.q = TensorView<const T>::contiguous(qw.data(), B, H, n, d);
  }
  if constexpr (std::is_same<O, T>::value) {
    p.out = out;
    run_attention(p);
  } else {
    const Index B = out.batch(), H = out.heads(), n = out.seq(), dv = out.dim();
    ow.resize(static_cast<std::size_t>(B * H * n * dv));
    p.out = TensorView<T>::contiguous(ow.data(), B, H, n, dv);
    run_attention(p);
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h)
        for (Index i = 0; i < n; ++i) {
          const T* src = p.out.row(b, h, i);
          O* dst = out.row(b, h, i);
          Index e = 0;
          for (; e + kLanes<T> <= dv; e += kLanes<T>) store_as(dst + e, load(src + e));
          for (; e < dv; ++e) dst[e] = round_to<O>(src[e]);
        }
  }
}

template <class QD, class KD, class VD, class OD>
void attention_2d(const Eigen::DenseBase<QD>& q, const Eigen::DenseBase<KD>& k, const Eigen::DenseBase<VD>& v,
                  const KeyMask* key_mask, const Eigen::DenseBase<OD>& out, const AttentionOptions& options,
                  std::optional<bool> bf16_pairs = std::nullopt) {
  using S = typename KD::Scalar;
  using T = attention_compute_t<S>;
  static_assert(std::is_same<S, typename VD::Scalar>::value &&
                    kAttentionTypes<typename QD::Scalar, S, typename OD::Scalar>,
                "attention: q, k, v and out must have the same scalar type (or k, v Eigen::half / Eigen::bfloat16 "
                "with q, out float; or q, k, v Eigen::half / Eigen::bfloat16 with out float or the same type)");
  constexpr const char* fn = "attention";
  const auto qv = make_view<QD, true>(fn, "q", q);
  const auto kv = make_view<KD, true>(fn, "k", k);
  const auto vv = make_view<VD, true>(fn, "v", v);
  const auto ov = make_mut_view<OD, true>(fn, "out", out);
  require(kv.cols == qv.cols, fn, "k has ", kv.cols, " columns but q has ", qv.cols, " (k ",
          shape_str(kv.rows, kv.cols), ", q ", shape_str(qv.rows, qv.cols), ")");
  require(vv.rows == kv.rows, fn, "v has ", vv.rows, " rows but k has ", kv.rows, " (v ", shape_str(vv.rows, vv.cols),
          ", k ", shape_str(kv.rows, kv.cols), ")");
  require_shape(fn, "out", ov, qv.rows, vv.cols, "[rows of q x columns of v] is ");
  require(qv.cols >= 1 || qv.rows == 0, fn, "q ", shape_str(qv.rows, qv.cols), " needs at least one column");
  require(!overlaps(ov, qv) && !overlaps(ov, kv) && !overlaps(ov, vv), fn, "out must not alias q, k or v");
  AttentionPlan<T, S> p;
  plan_options(fn, options, qv.cols, kv.rows, p, qv.rows);
  if (key_mask) {
    require(key_mask->size() == kv.rows, fn, "key_mask has ", key_mask->size(), " entries but k has ", kv.rows,
            " rows (keys)");
    p.mask = key_mask->data();
  }
  p.k = as_tensor(kv);
  p.v = as_tensor(vv);
  run_attention_io(p, as_tensor(qv), as_tensor(ov), bf16_pairs);
}

template <class Q, class S, class O>
void attention_batched(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                       const KeyMask* key_mask, const TensorView<O>& out, const AttentionOptions& options,
                       std::optional<bool> bf16_pairs = std::nullopt) {
  using T = attention_compute_t<S>;
  constexpr const char* fn = "attention";
  auto dims = [](const auto& t) {
    return "[" + std::to_string(t.shape[0]) + ", " + std::to_string(t.shape[1]) + ", " + std::to_string(t.shape[2]) +
           ", " + std::to_string(t.shape[3]) + "]";
  };
  for (Index i = 0; i < 4; ++i) {
    require(q.shape[i] >= 0 && k.shape[i] >= 0 && v.shape[i] >= 0 && out.shape[i] >= 0, fn,
            "negative extent in q ", dims(q), ", k ", dims(k), ", v ", dims(v), " or out ", dims(out));
  }
  require(k.batch() == q.batch() && v.batch() == q.batch() && out.batch() == q.batch(), fn,
          "batch sizes differ: q ", dims(q), ", k ", dims(k), ", v ", dims(v), ", out ", dims(out));
  require(k.heads() == v.heads(), fn, "k has ", k.heads(), " heads but v has ", v.heads(), " (k ", dims(k), ", v ",
          dims(v), ")");
  require(out.heads() == q.heads(), fn, "out has ", out.heads(), " heads but q has ", q.heads());
  require((k.heads() > 0 && q.heads() % k.heads() == 0) || q.heads() == 0, fn, "q has ", q.heads(),
          " heads, not a multiple of the ", k.heads(), " heads of k and v (grouped-query attention)");
  require(k.dim() == q.dim(), fn, "k has dim ", k.dim(), " but q has ", q.dim(), " (k ", dims(k), ", q ", dims(q), ")");
  require(v.seq() == k.seq(), fn, "v has ", v.seq(), " keys but k has ", k.seq(), " (v ", dims(v), ", k ", dims(k),
          ")");
  require(out.seq() == q.seq() && out.dim() == v.dim(), fn, "out is ", dims(out), " but q ", dims(q), " and v ",
          dims(v), " need [batch, heads, ", q.seq(), ", ", v.dim(), "]");
  require(q.dim() >= 1 || q.seq() == 0, fn, "q ", dims(q), " needs dim >= 1");
  AttentionPlan<T, S> p;
  plan_options(fn, options, q.dim(), k.seq(), p, q.seq(), q.batch(), q.heads());
  if (key_mask) {
    require(key_mask->size() == k.seq() || key_mask->size() == k.seq() * q.batch(), fn, "key_mask has ",
            key_mask->size(), " entries but needs m = ", k.seq(), " (shared) or batch x m = ", k.seq() * q.batch());
    p.mask = key_mask->data();
    p.mask_batch_stride = key_mask->size() == k.seq() ? 0 : k.seq();
  }
  p.k = k;
  p.v = v;
  run_attention_io(p, q, out, bf16_pairs);
}

/// Entry i of an n-entry output given as a vector, a [1, n] row or an [n, 1] column (any row stride).
template <class T>
inline T& entry(const View<T>& v, Index i) {
  return v.rows == 1 ? v.data[i] : v.data[i * v.stride];
}

/// The row windows of a one-head [n, m] problem under a validated plan (diagnostics).
template <class T>
inline WindowRule diag_rule(const AttentionPlan<T>& p, Index n, Index m) {
  WindowRule w;
  w.n = n;
  w.m = m;
  w.key_length = p.key_length;
  w.causal = p.causal || (p.head_dirs && static_cast<HeadDir>(p.head_dirs[0]) == HeadDir::Causal);
  w.reverse = p.reverse || (p.head_dirs && static_cast<HeadDir>(p.head_dirs[0]) == HeadDir::ReverseCausal);
  w.seg32 = p.seg32;
  w.seg64 = p.seg64;
  return w;
}

/// The scalar types attention_weights() takes: attention()'s with weights in out's place (a 16-bit k with q and
/// weights float; q and k of one 16-bit type with weights float or that type), plus float or double q and k in any
/// mix with weights of q's type, as it always took.
template <class Q, class S, class O>
constexpr bool kAttentionWeightsTypes =
    kAttentionTypes<Q, S, O> || (!kIs16Bit<Q> && !kIs16Bit<S> && std::is_same<O, Q>::value);

/// A 16-bit element or a float / double as a double (exact for all of them).
template <class S>
inline double widen_to_double(S x) {
  if constexpr (kIs16Bit<S>) {
    return double(to_float<S>(x));
  } else {
    return double(x);
  }
}

/// A weight computed in double, stored as O. A 16-bit O is rounded once to nearest even (round_to: double to
/// float with round-to-odd, then float to O), as torch's `.to()` from float64: double -> float -> O would round
/// twice and can land on the other side of a midpoint.
template <class O>
inline O store_weight(double x) {
  if constexpr (kIs16Bit<O>) {
    return round_to<O>(x);
  } else {
    return O(x);
  }
}

template <class QD, class KD, class AD>
void attention_weights_impl(const Eigen::DenseBase<QD>& q, const Eigen::DenseBase<KD>& k, const KeyMask* key_mask,
                            const Eigen::DenseBase<AD>& weights, const AttentionOptions& options) {
  using Q = typename QD::Scalar;
  using O = typename AD::Scalar;
  static_assert(kAttentionWeightsTypes<Q, typename KD::Scalar, O>,
                "attention_weights: q, k float or double with weights of q's type; or k Eigen::half / "
                "Eigen::bfloat16 with q, weights float; or q, k of one 16-bit type with weights float or that type");
  // The plan's type sets the scale's rounding: q's type as always, float with a 16-bit q, as attention() and the
  // float call on the widened values have it.
  using T = std::conditional_t<kIs16Bit<Q>, float, Q>;
  constexpr const char* fn = "attention_weights";
  const auto qv = make_view<QD, true>(fn, "q", q);
  const auto kv = make_view<KD, true>(fn, "k", k);
  const auto av = make_mut_view<AD, true>(fn, "weights", weights);
  require(kv.cols == qv.cols, fn, "k has ", kv.cols, " columns but q has ", qv.cols);
  require_shape(fn, "weights", av, qv.rows, kv.rows, "[rows of q x rows of k] is ");
  require(!overlaps(av, qv) && !overlaps(av, kv), fn, "weights must not alias q or k");
  AttentionPlan<T> p;
  plan_options(fn, options, qv.cols, kv.rows, p, qv.rows);
  if (key_mask)
    require(key_mask->size() == kv.rows, fn, "key_mask has ", key_mask->size(), " entries but k has ", kv.rows,
            " rows");
  const Index n = qv.rows, m = kv.rows;
  const unsigned char* mask = key_mask ? key_mask->data() : nullptr;
  RowWindows win(diag_rule(p, n, m), mask);
  std::vector<double> a(static_cast<std::size_t>(m));
  std::vector<char> vis(static_cast<std::size_t>(m));
  for (Index i = 0; i < n; ++i) {
    Index lo, hi, count;
    win.at(i, lo, hi, count);
    Index l = 0;
    double mx = -std::numeric_limits<double>::infinity();
    for (Index j = 0; j < m; ++j) {
      vis[j] = j >= lo && j < hi && (!mask || mask[j] != 0);
      double s = 0;
      for (Index c = 0; c < qv.cols; ++c) s += widen_to_double(qv(i, c)) * widen_to_double(kv(j, c));
      a[j] = s * double(p.scale);
      // A NaN logit (NaN input, or inf - inf from huge finite ones) is the most negative one, as in the kernel.
      if (std::isnan(a[j])) a[j] = -std::numeric_limits<double>::max();
      if (vis[j]) {
        ++l;
        mx = std::max(mx, a[j]);
      }
    }
    O* row = av.row(i);
    if (p.norm == AttnNorm::SquaredRelu) {
      const double L = p.relu2_length > 0 ? double(p.relu2_length) : double(l);
      for (Index j = 0; j < m; ++j) {
        const double r = std::max(a[j], 0.0);
        row[j] = store_weight<O>(vis[j] && L > 0 ? r * r / L : 0.0);
      }
      continue;
    }
    const double c = p.norm == AttnNorm::SoftmaxPlus
                         ? std::log(std::max(double(l), double(p.min_length))) / p.log_train
                         : 1.0;
    double sum = 0;
    for (Index j = 0; j < m; ++j) {
      a[j] = vis[j] ? std::exp(c * (a[j] - mx)) : 0.0;
      sum += a[j];
    }
    for (Index j = 0; j < m; ++j) row[j] = store_weight<O>(l > 0 ? a[j] / sum : 0.0);
  }
}

template <class AD, class OD>
void attention_sparsity_impl(const Eigen::DenseBase<AD>& a, const KeyMask* key_mask, const Eigen::DenseBase<OD>& out,
                             const AttentionOptions& options) {
  using T = typename AD::Scalar;
  constexpr const char* fn = "attention_sparsity";
  const auto av = make_view(fn, "a", a);
  const auto ov = make_mut_view(fn, "sparsity", out);
  require(ov.size() == av.rows && (ov.rows == 1 || ov.cols == 1 || ov.size() == 0), fn, "sparsity has shape ",
          shape_str(ov.rows, ov.cols), " but a ", shape_str(av.rows, av.cols), " needs ", av.rows, " entries");
  require(!options.key_length || (*options.key_length >= 0 && *options.key_length <= av.cols), fn,
          "options.key_length is ", options.key_length ? *options.key_length : 0, " but a has ", av.cols, " columns");
  if (key_mask)
    require(key_mask->size() == av.cols, fn, "key_mask has ", key_mask->size(), " entries but a has ", av.cols,
            " columns");
  AttentionPlan<double> p;
  plan_options(fn, options, 1, av.cols, p, av.rows);
  RowWindows win(diag_rule(p, av.rows, av.cols), key_mask ? key_mask->data() : nullptr);
  for (Index i = 0; i < av.rows; ++i) {
    Index lo, hi, ni;
    win.at(i, lo, hi, ni);
    double l1 = 0, l2 = 0;
    for (Index j = 0; j < av.cols; ++j) {
      const double x = double(av(i, j));
      l1 += std::abs(x);
      l2 += x * x;
    }
    entry(ov, i) = ni > 0 && l2 > 0 ? T(l1 / (std::sqrt(double(ni)) * std::sqrt(l2))) : T(0);
  }
}

}  // namespace detail

/// Fused attention: out = A(q k^T) v, never materialising the n x m matrix (online softmax over key tiles).
/// q: [n, d], k: [m, d], v: [m, dv], out: [n, dv] (row-major, any row stride; out must not alias the inputs).
/// Semantics in the header comment and SPEC 3.3; rows with no visible key are zero. Parallel over query tiles.
/// Keys a row cannot see never reach it, even when their k or v rows hold inf or NaN (garbage in padding rows is
/// fine); rows of k and v past key_length are not read at all.
/// 16-bit storage (issue 13): k and v may be Eigen::half / Eigen::bfloat16 with q and out float (a KV cache), or
/// q, k, v all of one 16-bit type with out float or that type. They compute in float on the exactly widened values
/// (bit for bit the float call on them); a 16-bit out is the float result rounded once to nearest even. One
/// exception: q, k, v all Eigen::bfloat16 on a build where vdpbf16ps is the fast instruction (detail::kPreferBf16Dot,
/// AMD Zen4; -DKEXUE_BF16_DOT=0 / 1 overrides) run the tiled path (n > 2 rows) as bf16 pairs: q k^T and P V two
/// exact bf16 products per float addition, the weights P rounded to bf16 per key tile; within the bf16 tolerance of
/// the float call (relative RMS ~1e-3 on the tests' data), the same bits on every build that takes that form.
template <class QD, class KD, class VD, class OD>
void attention(const Eigen::DenseBase<QD>& q, const Eigen::DenseBase<KD>& k, const Eigen::DenseBase<VD>& v,
               const Eigen::DenseBase<OD>& out, const AttentionOptions& options = {}) {
  detail::attention_2d(q, k, v, nullptr, out, options);
}

/// attention() with an arbitrary per-key visibility mask (length m), combined with key_length and causal.
template <class QD, class KD, class VD, class OD>
void attention(const Eigen::DenseBase<QD>& q, const Eigen::DenseBase<KD>& k, const Eigen::DenseBase<VD>& v,
               const KeyMask& key_mask, const Eigen::DenseBase<OD>& out, const AttentionOptions& options = {}) {
  detail::attention_2d(q, k, v, &key_mask, out, options);
}

/// Batched, strided attention. q: [batch, heads, n, d], k: [batch, kv_heads, m, d], v: [batch, kv_heads, m, dv],
/// out: [batch, heads, n, dv]; heads % kv_heads == 0 (grouped-query attention: q head h uses kv head
/// h / (heads / kv_heads)). With n = 1 and causal = true this is one decoding step against an m-key cache.
/// Parallel over batch x heads x query tiles; bitwise identical for any thread count. A decoding step (n <= 2)
/// processes all query heads of a KV head together, reading each cached K and V row once per KV head rather than
/// once per query head (GQA/MQA), with every head's result bitwise equal to running that head alone.
/// Masks of post 9529: options.head_directions gives each query head its own direction (Su's mixed forward /
/// backward attention: causal on some heads, reverse causal on the others); options.segments takes m or batch x m
/// ids. Every head gets the bits of the 2-D call on it with that head's options.
/// The 16-bit storage forms of the 2-D call apply here too (a 16-bit KV cache: `TensorView<const Eigen::half>` or
/// `TensorView<const Eigen::bfloat16>` k and v, read as 16-bit bytes and widened in L1 / registers).
template <class TQ, class TK, class TV, class T>
void attention(const TensorView<TQ>& q, const TensorView<TK>& k, const TensorView<TV>& v, const TensorView<T>& out,
               const AttentionOptions& options = {}) {
  static_assert(!std::is_const<T>::value, "attention: out must be a mutable TensorView");
  using Q = std::remove_const_t<TQ>;
  using S = std::remove_const_t<TK>;
  static_assert(std::is_same<std::remove_const_t<TV>, S>::value && detail::kAttentionTypes<Q, S, T>,
                "attention: q, k, v and out must have the same scalar type (or k, v Eigen::half / Eigen::bfloat16 "
                "with q, out float; or q, k, v Eigen::half / Eigen::bfloat16 with out float or the same type)");
  detail::attention_batched<Q, S, T>(TensorView<const Q>(q.data, q.shape, q.strides),
                                     TensorView<const S>(k.data, k.shape, k.strides),
                                     TensorView<const S>(v.data, v.shape, v.strides), nullptr, out, options);
}

/// Batched attention with a key mask of m entries (shared by every batch) or batch x m entries (row b for batch b).
/// options.segments likewise holds m ids (shared) or batch x m (row b for batch b), in both batched forms.
template <class TQ, class TK, class TV, class T>
void attention(const TensorView<TQ>& q, const TensorView<TK>& k, const TensorView<TV>& v, const KeyMask& key_mask,
               const TensorView<T>& out, const AttentionOptions& options = {}) {
  static_assert(!std::is_const<T>::value, "attention: out must be a mutable TensorView");
  using Q = std::remove_const_t<TQ>;
  using S = std::remove_const_t<TK>;
  static_assert(std::is_same<std::remove_const_t<TV>, S>::value && detail::kAttentionTypes<Q, S, T>,
                "attention: q, k, v and out must have the same scalar type (or k, v Eigen::half / Eigen::bfloat16 "
                "with q, out float; or q, k, v Eigen::half / Eigen::bfloat16 with out float or the same type)");
  detail::attention_batched<Q, S, T>(TensorView<const Q>(q.data, q.shape, q.strides),
                                     TensorView<const S>(k.data, k.shape, k.strides),
                                     TensorView<const S>(v.data, v.shape, v.strides), &key_mask, out, options);
}

/// The attention matrix itself, weights: [n, m] (small inputs: this one does materialise it), with exactly the
/// semantics of attention() (masked cells exactly 0 whatever the hidden k rows hold, rows with no visible key all
/// 0). Computed in double, with the scale rounded to q's type (to float for a 16-bit q).
/// Types: q and k float or double, weights of q's type; or the 16-bit forms of attention(): k Eigen::half /
/// Eigen::bfloat16 with q and weights float (a KV cache), or q and k of one 16-bit type with weights float or that
/// type. 16-bit values widen exactly, so float weights are bit for bit the float call on the widened q and k; 16-bit
/// weights are the double values rounded once to nearest even (as torch's `.to()` from float64).
template <class QD, class KD, class AD>
void attention_weights(const Eigen::DenseBase<QD>& q, const Eigen::DenseBase<KD>& k, const Eigen::DenseBase<AD>& weights,
                       const AttentionOptions& options = {}) {
  detail::attention_weights_impl(q, k, nullptr, weights, options);
}

/// attention_weights() with a per-key visibility mask of length m (the same types).
template <class QD, class KD, class AD>
void attention_weights(const Eigen::DenseBase<QD>& q, const Eigen::DenseBase<KD>& k, const KeyMask& key_mask,
                       const Eigen::DenseBase<AD>& weights, const AttentionOptions& options = {}) {
  detail::attention_weights_impl(q, k, &key_mask, weights, options);
}

/// Per-row attention entropy (SPEC 3.4, post 8823): entropy_i = -sum_j p_ij ln p_ij with p_ij = a_ij / sum_j a_ij,
/// so softmax rows are used as they are and relu^2 rows are first normalised to a distribution. a: [n, m] with
/// a_ij >= 0; entropy: n entries (a vector or an [n, 1] / [1, n] matrix). A row summing to 0 has entropy 0.
template <class AD, class OD>
void attention_entropy(const Eigen::DenseBase<AD>& a, const Eigen::DenseBase<OD>& entropy) {
  using T = typename AD::Scalar;
  constexpr const char* fn = "attention_entropy";
  const auto av = detail::make_view(fn, "a", a);
  const auto ov = detail::make_mut_view(fn, "entropy", entropy);
  detail::require(ov.size() == av.rows && (ov.rows == 1 || ov.cols == 1 || ov.size() == 0), fn, "entropy has ", ov.size(),
                  " entries but a ", detail::shape_str(av.rows, av.cols), " has ", av.rows, " rows");
  for (Index i = 0; i < av.rows; ++i)
    for (Index j = 0; j < av.cols; ++j)
      detail::require(av(i, j) >= T(0) && std::isfinite(double(av(i, j))), fn, "a(", i, ", ", j, ") = ",
                      double(av(i, j)), " is not a finite non-negative weight");
  for (Index i = 0; i < av.rows; ++i) {
    double sum = 0;
    for (Index j = 0; j < av.cols; ++j) sum += double(av(i, j));
    double h = 0;
    if (sum > 0) {
      for (Index j = 0; j < av.cols; ++j) {
        const double pj = double(av(i, j)) / sum;
        if (pj > 0) h -= pj * std::log(pj);
      }
    }
    detail::entry(ov, i) = T(h);
  }
}

/// Per-row l1/l2 sparsity of SPEC 5.1 (posts 9595, 9889): S_i = sum_j |a_ij| / (sqrt(n_i) sqrt(sum_j a_ij^2)),
/// n_i = number of keys visible to row i under options (key_length, causal, reverse_causal, segments). In [1/sqrt(n_i), 1]: one-hot gives
/// 1/sqrt(n_i), uniform over the visible keys gives 1. Works for signed or unnormalised rows; an all-zero row
/// (or n_i = 0) gives 0. a: [n, m]; sparsity: n entries.
template <class AD, class OD>
void attention_sparsity(const Eigen::DenseBase<AD>& a, const Eigen::DenseBase<OD>& sparsity,
                        const AttentionOptions& options = {}) {
  detail::attention_sparsity_impl(a, nullptr, sparsity, options);
}

/// attention_sparsity() where n_i also honours a per-key visibility mask of length m.
template <class AD, class OD>
void attention_sparsity(const Eigen::DenseBase<AD>& a, const KeyMask& key_mask, const Eigen::DenseBase<OD>& sparsity,
                        const AttentionOptions& options = {}) {
  detail::attention_sparsity_impl(a, &key_mask, sparsity, options);
}

/// Singular values of an attention matrix a: [n, m] (small: a dense SVD in double, O(n m min(n, m))), in
/// decreasing order; sv: min(n, m) entries (a vector or an [k, 1] / [1, k] matrix). The diagnostic of post 9529's
/// rank argument (SPEC 7.3): a causal softmax matrix is lower triangular with a positive diagonal, so it has full
/// rank (det = prod_i a_ii > 0), while bidirectional softmax(q k^T) comes from a rank <= d product, so for n > d
/// its singular values decay fast (softmax raises the rank only somewhat). Entries must be finite.
template <class AD, class OD>
void attention_singular_values(const Eigen::DenseBase<AD>& a, const Eigen::DenseBase<OD>& sv) {
  using T = typename OD::Scalar;
  constexpr const char* fn = "attention_singular_values";
  const auto av = detail::make_view(fn, "a", a);
  const auto ov = detail::make_mut_view(fn, "sv", sv);
  const Index k = std::min(av.rows, av.cols);
  detail::require(ov.size() == k && (ov.rows == 1 || ov.cols == 1 || k == 0), fn, "sv has shape ",
                  detail::shape_str(ov.rows, ov.cols), " but a ", detail::shape_str(av.rows, av.cols), " has ", k,
                  " singular values");
  Eigen::MatrixXd x(av.rows, av.cols);
  for (Index i = 0; i < av.rows; ++i)
    for (Index j = 0; j < av.cols; ++j) {
      x(i, j) = double(av(i, j));
      detail::require(std::isfinite(x(i, j)), fn, "a(", i, ", ", j, ") = ", x(i, j), " is not finite");
    }
  if (k == 0) return;
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(x);
  const Eigen::VectorXd s = svd.singularValues();
  for (Index i = 0; i < k; ++i) detail::entry(ov, i) = T(s(i));
}

/// Numerical rank of an attention matrix a: [n, m]: the number of singular values above tol * sigma_max (tol is
/// relative; the default, tol < 0, is max(n, m) * 2^-52, LAPACK's and numpy's matrix_rank rule). An all-zero or
/// empty matrix has rank 0. See attention_singular_values.
template <class AD>
Index attention_rank(const Eigen::DenseBase<AD>& a, double tol = -1) {
  constexpr const char* fn = "attention_rank";
  const Index n = a.rows(), m = a.cols();
  detail::require(std::isfinite(tol), fn, "tol must be finite, got ", tol);
  Eigen::VectorXd s(std::min(n, m));
  attention_singular_values(a, s);
  if (s.size() == 0 || s(0) == 0) return 0;
  const double rel = tol >= 0 ? tol : double(std::max(n, m)) * std::numeric_limits<double>::epsilon();
  Index r = 0;
  for (Index i = 0; i < s.size(); ++i) r += s(i) > rel * s(0);
  return r;
}

}  // namespace kexue
