// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Linear attention (SPEC 5.2, kexue.fm/archives/7546): o_i = phi(q_i)^T S / (phi(q_i)^T z + eps) with
/// S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j), over every key (non-causal) or over j <= i (causal), computed
/// chunk-wise in O(n d dv) time with an O(d dv) state, plus the streaming form that carries the state between
/// calls. FLASH mixed-chunk attention (SPEC 3.5) is in <kexue/flash.hpp>.
///
/// Scratch: each thread keeps one workspace of about 4 C d + C^2 + 2 C dv + 3 d dv elements (C = 64, dv rounded up
/// to 16 floats / 8 doubles), allocated the first time that thread sees a larger shape and reused afterwards;
/// there is no other allocation per call. Peak memory is therefore O(d dv) per head, whatever n.
///
/// Range: the products phi(q_i)^T S use S in the output's type (float data keeps them in float even with
/// double_state, which only accumulates the chunks in double). An entry of S = phi(K)^T V beyond that type's range
/// (float: |phi(k)| |v| summed past 3.4e38, e.g. a key and a value both near 1e20) is inf, and the rows that
/// multiply it get inf, or NaN where phi(q_i) is 0 there (0 * inf), even when the quadratic form
/// sum_j (phi(q_i) . phi(k_j)) v_j / den is finite. PyTorch's einsum form phi(Q) (phi(K)^T V) gives the same
/// NaN. Keep sum_j |phi(k_jp)| |v_j| within range (double data, or scaled inputs) when keys and values are that large.

#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/linear_attention_impl.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

/// The feature map phi applied to queries and keys (SPEC 5.2).
enum class FeatureMap {
  EluPlusOne,  ///< elu(x) + 1 (Katharopoulos et al., fast-transformers' default): x + 1 for x > 0, else exp(x)
  Relu,        ///< max(x, 0)
  Identity     ///< x (the similarity may be negative; the caller owns the sign of the denominator)
};

/// Options of linear_attention.
struct LinearAttentionOptions {
  FeatureMap feature_map = FeatureMap::EluPlusOne;  ///< phi applied to q and k (SPEC 5.2)
  /// Query i sees keys j <= i + (m - n) (bottom-right aligned like attention's causal mask: j <= i when m = n).
  /// A later key never reaches row i, even when its k or v holds inf or NaN.
  bool causal = false;
  /// Added to every denominator phi(q_i)^T z. fast-transformers uses 1e-6; SPEC 5.2 notes Su's posts have none
  /// (eps = 0 reproduces them). Must be >= 0. A denominator that is exactly 0 (no visible key and eps = 0)
  /// yields a zero row, never 0/0.
  double eps = 1e-6;
  /// Keys [key_length, m) are padding: they contribute to neither S nor z (their values are never read). Default m.
  std::optional<Index> key_length;
  /// Float data only: keep the running state S, z in double across chunks (each chunk's phi(K)^T V is summed in
  /// float, 64 terms, then added to the double state). For very long causal sequences. Double data is always double.
  bool double_state = false;
};

template <class T>
class LinearAttentionState;
namespace detail {
template <class T>
struct LinearStateAccess;
}  // namespace detail

/// Running state of causal linear attention for one head: S = sum phi(k_j) v_j^T [key_dim x value_dim] and
/// z = sum phi(k_j) [key_dim], both held in double, and the number of keys absorbed. Starts at zero.
template <class T>
class LinearAttentionState {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "T is float or double");

 public:
  /// An empty state for keys of key_dim features and values of value_dim features.
  LinearAttentionState(Index key_dim, Index value_dim) : s_(check_dim(key_dim), check_dim(value_dim)), z_(key_dim) {
    reset();
  }
  /// Features per key (d).
  Index key_dim() const { return s_.rows(); }
  /// Features per value (dv).
  Index value_dim() const { return s_.cols(); }
  /// S = sum_j phi(k_j) v_j^T over the keys absorbed so far, [key_dim x value_dim].
  const Matrix<double>& s() const { return s_; }
  /// z = sum_j phi(k_j), [key_dim].
  const Vector<double>& z() const { return z_; }
  /// Number of (unpadded) keys absorbed.
  Index tokens() const { return tokens_; }
  /// Back to the empty state.
  void reset() {
    s_.setZero();
    z_.setZero();
    tokens_ = 0;
  }

 private:
  template <class U>
  friend struct detail::LinearStateAccess;

  static Index check_dim(Index x) {
    detail::require(x >= 1, "LinearAttentionState", "dimensions must be positive, got ", x);
    return x;
  }
  detail::StateRef ref() { return {s_.data(), z_.data()}; }

  Matrix<double> s_;
  Vector<double> z_;
  Index tokens_ = 0;
};

namespace detail {

template <class T>
struct LinearStateAccess {
  static StateRef ref(LinearAttentionState<T>& s) { return s.ref(); }
  static void add_tokens(LinearAttentionState<T>& s, Index n) { s.tokens_ += n; }
};

inline Phi to_phi(FeatureMap f) {
  switch (f) {
    case FeatureMap::Relu:
      return Phi::Relu;
    case FeatureMap::Identity:
      return Phi::Identity;
    default:
      return Phi::EluPlusOne;
  }
}

/// Shared argument checks of the 2-D forms; returns the effective key length.
/// q, k, v's scalar S: out's T, or (16-bit storage) Eigen::half / Eigen::bfloat16 widened to T as they are read.
template <class S, class T>
constexpr bool kLinearInput = std::is_same<S, T>::value || kIs16Bit<S>;

template <class T, class S>
inline Index check_linear_args(const char* fn, const View<const S>& q, const View<const S>& k, const View<const S>& v,
                               const View<T>& out, const LinearAttentionOptions& o) {
  require(q.cols >= 1, fn, "q has shape ", shape_str(q.rows, q.cols), " but needs at least one column");
  require_shape(fn, "k", k, -1, q.cols, "q has ");
  require(v.cols >= 1, fn, "v has shape ", shape_str(v.rows, v.cols), " but needs at least one column");
  require_shape(fn, "v", v, k.rows, -1, "k has ");
  require_shape(fn, "out", out, q.rows, v.cols, "q and v need ");
  require(o.eps >= 0 && o.eps <= 1e300, fn, "eps must be finite and >= 0, got ", o.eps);
  const Index kl = o.key_length.value_or(k.rows);
  require(kl >= 0 && kl <= k.rows, fn, "key_length ", kl, " is outside [0, ", k.rows, "] (k has shape ",
          shape_str(k.rows, k.cols), ")");
  require(!overlaps(out, q) && !overlaps(out, k) && !overlaps(out, v), fn, "out must not alias q, k or v");
  return kl;
}

template <class T, class S>
inline void check_linear_tensor(const char* fn, const TensorView<const S>& q, const TensorView<const S>& k,
                                const TensorView<const S>& v, const TensorView<T>& out) {
  auto shape4 = [](const auto& t) {
    return "[" + std::to_string(t.batch()) + ", " + std::to_string(t.heads()) + ", " + std::to_string(t.seq()) + ", " +
           std::to_string(t.dim()) + "]";
  };
  require(k.batch() == q.batch() && v.batch() == q.batch() && out.batch() == q.batch(), fn, "batch sizes differ: q ",
          shape4(q), ", k ", shape4(k), ", v ", shape4(v), ", out ", shape4(out));
  require(q.dim() >= 1 && k.dim() == q.dim(), fn, "k has shape ", shape4(k), " but q has ", shape4(q),
          " (the feature dims must match and be positive)");
  require(v.seq() == k.seq() && v.heads() == k.heads() && v.dim() >= 1, fn, "v has shape ", shape4(v), " but k has ",
          shape4(k));
  require(k.heads() >= 1 || q.heads() == 0, fn, "k has no heads: ", shape4(k));
  require(k.heads() == 0 || q.heads() % k.heads() == 0, fn, "q has ", q.heads(), " heads, not a multiple of k's ",
          k.heads(), " (grouped-query attention needs heads % kv_heads == 0)");
  require(out.heads() == q.heads() && out.seq() == q.seq() && out.dim() == v.dim(), fn, "out has shape ", shape4(out),
          " but q and v need [", q.batch(), ", ", q.heads(), ", ", q.seq(), ", ", v.dim(), "]");
  for (const auto* t : {&q, &k, &v})
    require(t->seq() <= 1 || t->strides[2] >= t->dim(), fn, "a seq stride is smaller than the row length");
  require(out.seq() <= 1 || out.strides[2] >= out.dim(), fn, "out's seq stride is smaller than its row length");
}

}  // namespace detail

/// 16-bit inputs (issue 13): q, k and v may be Eigen::half or Eigen::bfloat16 (all three the same) with a float or
/// double out (and state); they are widened as they are read, so the result is the float kernel's on the widened
/// inputs, bit for bit.
/// Linear attention, one head (SPEC 5.2). q: [n, d], k: [m, d], v: [m, dv], out: [n, dv] (written).
/// o_i = phi(q_i)^T S / (phi(q_i)^T z + eps), S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j), over keys
/// j < key_length and, when causal, j <= i + (m - n). m may differ from n. Causal work is chunk-wise: O(n d dv)
/// time, an O(d dv) state, no n x d x dv tensor. Throws kexue::Error on bad shapes, negative eps or a bad key_length.
template <class Q, class K, class V, class O>
void linear_attention(const Eigen::DenseBase<Q>& q, const Eigen::DenseBase<K>& k, const Eigen::DenseBase<V>& v,
                      const Eigen::DenseBase<O>& out, const LinearAttentionOptions& options = {}) {
  using T = typename O::Scalar;
  using S = typename Q::Scalar;
  static_assert(std::is_same<S, typename K::Scalar>::value && std::is_same<S, typename V::Scalar>::value &&
                    detail::kLinearInput<S, T>,
                "linear_attention: q, k, v and out must have the same scalar type (or q, k, v Eigen::half / "
                "Eigen::bfloat16 with a float or double out)");
  constexpr const char* fn = "linear_attention";
  const auto qv = detail::make_view<Q, true>(fn, "q", q);
  const auto kv = detail::make_view<K, true>(fn, "k", k);
  const auto vv = detail::make_view<V, true>(fn, "v", v);
  const auto ov = detail::make_mut_view(fn, "out", out);
  const Index kl = detail::check_linear_args<T, S>(fn, qv, kv, vv, ov, options);
  detail::linear_attention_head<T, S>(qv, kv, vv, ov, detail::to_phi(options.feature_map), options.causal,
                                   static_cast<T>(options.eps), kl, options.double_state, detail::StateRef{});
}

/// Streaming causal linear attention, one head: continues from `state` and updates it, so a sequence processed in
/// pieces gives the one-shot causal output (to rounding). q, k: [n, d], v: [n, dv], out: [n, dv]; query i of this
/// piece sees every key absorbed before plus keys j <= i of this piece (options.causal is implied and ignored;
/// key_length masks keys of this piece). Pieces of at most 4 tokens (decoding) run the recurrence token by token in
/// double directly on the state; longer pieces use the chunked kernel. Throws kexue::Error if the state's dims
/// differ from d, dv, or k has a different number of rows than q.
template <class T, class Q, class K, class V, class O>
void linear_attention(const Eigen::DenseBase<Q>& q, const Eigen::DenseBase<K>& k, const Eigen::DenseBase<V>& v,
                      const Eigen::DenseBase<O>& out, LinearAttentionState<T>& state,
                      const LinearAttentionOptions& options = {}) {
  using S = typename Q::Scalar;
  static_assert(std::is_same<S, typename K::Scalar>::value && std::is_same<S, typename V::Scalar>::value &&
                    std::is_same<T, typename O::Scalar>::value && detail::kLinearInput<S, T>,
                "linear_attention: q, k, v, out and the state must have the same scalar type (or q, k, v "
                "Eigen::half / Eigen::bfloat16)");
  constexpr const char* fn = "linear_attention";
  const auto qv = detail::make_view<Q, true>(fn, "q", q);
  const auto kv = detail::make_view<K, true>(fn, "k", k);
  const auto vv = detail::make_view<V, true>(fn, "v", v);
  const auto ov = detail::make_mut_view(fn, "out", out);
  const Index kl = detail::check_linear_args<T, S>(fn, qv, kv, vv, ov, options);
  detail::require_shape(fn, "k", kv, qv.rows, -1, "streaming needs one key per query: q has ");
  detail::require(state.key_dim() == qv.cols && state.value_dim() == vv.cols, fn, "state has shape ",
                  detail::shape_str(state.key_dim(), state.value_dim()), " but q and v need ",
                  detail::shape_str(qv.cols, vv.cols));
  detail::linear_attention_head<T, S>(qv, kv, vv, ov, detail::to_phi(options.feature_map), true,
                                   static_cast<T>(options.eps), kl, options.double_state,
                                   detail::LinearStateAccess<T>::ref(state));
  detail::LinearStateAccess<T>::add_tokens(state, kl);
}

/// Batched linear attention over [batch, heads, seq, dim] views: q [B, H, n, d], k [B, Hkv, m, d],
/// v [B, Hkv, m, dv], out [B, H, n, dv], H % Hkv == 0 (head h reads kv head h / (H / Hkv)). key_lengths, if not
/// empty, gives one key length per batch entry (overriding options.key_length). Parallel over batch x heads;
/// bitwise identical to the 2-D call per head, for any thread count.
template <class TQ, class TK, class TV, class T>
void linear_attention(const TensorView<TQ>& q, const TensorView<TK>& k, const TensorView<TV>& v,
                      const TensorView<T>& out, const LinearAttentionOptions& options = {},
                      const std::vector<Index>& key_lengths = {}) {
  static_assert(!std::is_const<T>::value, "linear_attention: out must be writable");
  using S = std::remove_const_t<TQ>;
  static_assert(std::is_same<std::remove_const_t<TK>, S>::value && std::is_same<std::remove_const_t<TV>, S>::value &&
                    detail::kLinearInput<S, T>,
                "linear_attention: q, k, v and out must have the same scalar type (or q, k, v Eigen::half / "
                "Eigen::bfloat16)");
  constexpr const char* fn = "linear_attention";
  const TensorView<const S> qc(q.data, q.shape, q.strides), kc(k.data, k.shape, k.strides),
      vc(v.data, v.shape, v.strides);
  detail::check_linear_tensor<T, S>(fn, qc, kc, vc, out);
  detail::require(options.eps >= 0 && options.eps <= 1e300, fn, "eps must be finite and >= 0, got ", options.eps);
  detail::require(key_lengths.empty() || static_cast<Index>(key_lengths.size()) == q.batch(), fn, "key_lengths has ",
                  key_lengths.size(), " entries but the batch is ", q.batch());
  std::vector<Index> lengths(static_cast<std::size_t>(q.batch()), options.key_length.value_or(k.seq()));
  if (!key_lengths.empty()) lengths = key_lengths;
  for (Index len : lengths)
    detail::require(len >= 0 && len <= k.seq(), fn, "key_length ", len, " is outside [0, ", k.seq(), "]");
  if (q.batch() == 0 || q.heads() == 0) return;
  const Index heads = q.heads(), group = heads / k.heads();
  const detail::Phi f = detail::to_phi(options.feature_map);
  detail::parallel_for(q.batch() * heads, [&](Index i) {
    const Index b = i / heads, h = i % heads;
    detail::linear_attention_head<T, S>(detail::head_view(qc, b, h), detail::head_view(kc, b, h / group),
                                     detail::head_view(vc, b, h / group), detail::head_view_mut(out, b, h), f,
                                     options.causal, static_cast<T>(options.eps), lengths[static_cast<std::size_t>(b)],
                                     options.double_state, detail::StateRef{});
  });
}

/// Batched streaming causal linear attention: states holds one state per (batch, head), index b * H + h, each
/// [d x dv]; q [B, H, n, d], k [B, Hkv, n, d], v [B, Hkv, n, dv], out [B, H, n, dv] with H % Hkv == 0 (every
/// query head keeps its own state). Parallel over batch x heads, deterministic.
template <class TQ, class TK, class TV, class T>
void linear_attention(const TensorView<TQ>& q, const TensorView<TK>& k, const TensorView<TV>& v,
                      const TensorView<T>& out, std::vector<LinearAttentionState<T>>& states,
                      const LinearAttentionOptions& options = {}) {
  static_assert(!std::is_const<T>::value, "linear_attention: out must be writable");
  using S = std::remove_const_t<TQ>;
  static_assert(std::is_same<std::remove_const_t<TK>, S>::value && std::is_same<std::remove_const_t<TV>, S>::value &&
                    detail::kLinearInput<S, T>,
                "linear_attention: q, k, v and out must have the same scalar type (or q, k, v Eigen::half / "
                "Eigen::bfloat16)");
  constexpr const char* fn = "linear_attention";
  const TensorView<const S> qc(q.data, q.shape, q.strides), kc(k.data, k.shape, k.strides),
      vc(v.data, v.shape, v.strides);
  detail::check_linear_tensor<T, S>(fn, qc, kc, vc, out);
  detail::require(options.eps >= 0 && options.eps <= 1e300, fn, "eps must be finite and >= 0, got ", options.eps);
  detail::require(k.seq() == q.seq(), fn, "streaming needs one key per query: q has ", q.seq(), " rows, k has ",
                  k.seq());
  detail::require(static_cast<Index>(states.size()) == q.batch() * q.heads(), fn, "states has ", states.size(),
                  " entries but batch x heads is ", q.batch() * q.heads());
  for (const auto& s : states)
    detail::require(s.key_dim() == q.dim() && s.value_dim() == v.dim(), fn, "a state has shape ",
                    detail::shape_str(s.key_dim(), s.value_dim()), " but q and v need ",
                    detail::shape_str(q.dim(), v.dim()));
  const Index kl = options.key_length.value_or(k.seq());
  detail::require(kl >= 0 && kl <= k.seq(), fn, "key_length ", kl, " is outside [0, ", k.seq(), "]");
  if (q.batch() == 0 || q.heads() == 0) return;
  const Index heads = q.heads(), group = heads / k.heads();
  const detail::Phi f = detail::to_phi(options.feature_map);
  detail::parallel_for(q.batch() * heads, [&](Index i) {
    const Index b = i / heads, h = i % heads;
    auto& st = states[static_cast<std::size_t>(i)];
    detail::linear_attention_head<T, S>(detail::head_view(qc, b, h), detail::head_view(kc, b, h / group),
                                     detail::head_view(vc, b, h / group), detail::head_view_mut(out, b, h), f, true,
                                     static_cast<T>(options.eps), kl, options.double_state,
                                     detail::LinearStateAccess<T>::ref(st));
    detail::LinearStateAccess<T>::add_tokens(st, kl);
  });
}

}  // namespace kexue
