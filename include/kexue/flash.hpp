// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// FLASH mixed-chunk attention (SPEC 3.5, kexue.fm/archives/8934; the FLASH model of "Transformer Quality in Linear
/// Time", Hua, Dai, Liu and Le, 2022): squared-ReLU quadratic attention inside non-overlapping chunks plus linear
/// attention across chunks. Not to be confused with FlashAttention (an exact softmax-attention algorithm): this is a
/// different model.
///
/// For chunk g of c rows (the last chunk may be shorter):
///   O_g = relu(scale * Qq_g Kq_g^T)^2 / quad_norm * V_g + Ql_g S_g / lin_norm_g
/// Non-causal: S_g = sum over all chunks h of Kl_h^T V_h and lin_norm = L (the number of valid keys; n unpadded).
/// Causal: the upper triangle inside the chunk is masked (a later key never reaches a row, even when its k or v
/// holds inf or NaN), S_g sums only the chunks h < g, and lin_norm_g is
/// L (FlashLinearNorm::SequenceLength: the paper and FLASH-pytorch) or the number of keys summed, (g-1) c
/// without padding (FlashLinearNorm::Prefix: the normaliser Su argues for in 8934).
///
/// First causal chunk (SPEC 9 item 4, UNCONFIRMED in the paper): its prefix sum is empty, and kexue defines its
/// linear term as exactly 0 under both normalisers. Why: S_1 = 0, so SequenceLength gives 0 / L = 0 anyway, and
/// Prefix gives 0 / 0, which we resolve to the same 0 instead of NaN, so the two normalisers agree on chunk 1 and
/// match FLASH-pytorch's shifted cumsum (which pads the first group's state with zeros). The first chunk's rows
/// then rely on the quadratic part alone, exactly as a causal model sees no earlier context.
///
/// Range: the linear term is computed in its associative form Ql (Kl^T V), which is what makes it linear in n, so the
/// state S = Kl^T V is held in the data's type. An entry beyond that type's range (float: sum_j |kl_jp| |v_j| past
/// 3.4e38) is inf, and a row whose ql is 0 at that p gets 0 * inf = NaN, where the quadratic form (Ql Kl^T) V would
/// give a finite value (any implementation of the associative form does the same). Keep sum_j |kl_jp| |v_j| within
/// range (double data, or scaled inputs) when keys and values are that large.

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <type_traits>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/linear_attention_impl.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

/// Normaliser of FLASH's causal linear (cross-chunk) term.
enum class FlashLinearNorm {
  SequenceLength,  ///< divide by L, the number of valid keys in the sequence (the paper, FLASH-pytorch: 1/n)
  Prefix           ///< divide by the number of keys summed into the prefix (Su, 8934); chunk 1's term is 0
};

/// Options of mixed_chunk_attention. The defaults follow SPEC 3.5: A = relu^2(Q K^T / sqrt(s)) / c. FLASH-pytorch's
/// relu(q.k / c)^2 is scale = 1/c, quad_norm = 1.
struct FlashOptions {
  Index chunk_size = 256;  ///< c (the paper uses 256)
  bool causal = false;  ///< mask keys after the query row (upper triangle inside the chunk, later chunks outside)
  std::optional<double> scale;  ///< logits = scale * q.k inside the relu; default 1/sqrt(s)
  /// The quadratic weights are divided by this; default chunk_size, also for a last chunk shorter than c (as if the
  /// sequence were padded to a multiple of c with masked keys, which is what FLASH-pytorch does).
  std::optional<double> quad_norm;
  FlashLinearNorm linear_norm = FlashLinearNorm::SequenceLength;  ///< causal only; non-causal always divides by L
  std::optional<Index> key_length;  ///< keys [key_length, n) are padding, masked from both parts
};

namespace detail {

template <class T>
inline void check_flash_options(const char* fn, const FlashOptions& o, Index n) {
  require(o.chunk_size >= 1, fn, "chunk_size must be positive, got ", o.chunk_size);
  require(!o.scale || std::isfinite(*o.scale), fn, "scale must be finite");
  require(!o.quad_norm || (std::isfinite(*o.quad_norm) && *o.quad_norm > 0), fn,
          "quad_norm must be finite and positive");
  const Index kl = o.key_length.value_or(n);
  require(kl >= 0 && kl <= n, fn, "key_length ", kl, " is outside [0, ", n, "]");
}

template <class T>
inline void flash_head_call(const View<const T>& qq, const View<const T>& kq, const View<const T>& ql,
                            const View<const T>& kl, const View<const T>& v, const View<T>& out, const FlashOptions& o,
                            Index key_length) {
  const T scale = static_cast<T>(o.scale.value_or(1.0 / std::sqrt(static_cast<double>(qq.cols))));
  const T quad = static_cast<T>(o.quad_norm.value_or(static_cast<double>(o.chunk_size)));
  // A chunk longer than the sequence is one chunk of the sequence's length (the buffers need no more).
  const Index chunk = std::max<Index>(1, std::min(o.chunk_size, qq.rows));
  flash_head<T>(qq, kq, ql, kl, v, out, chunk, o.causal, scale, quad,
                o.linear_norm == FlashLinearNorm::Prefix ? FlashNorm::Prefix : FlashNorm::SequenceLength, key_length);
}

}  // namespace detail

/// FLASH mixed-chunk attention, one head (SPEC 3.5). q_quad, k_quad: [n, s]; q_lin, k_lin: [n, s_lin];
/// v: [n, e]; out: [n, e] (written). Self-attention: queries and keys share the positions, so every argument has
/// n rows. Time O(n c (s + e) + n s_lin e), memory O(c^2 + c (s + s_lin + e) + s_lin e) scratch per thread.
/// Throws kexue::Error on bad shapes or options.
template <class QQ, class KQ, class QL, class KL, class V, class O>
void mixed_chunk_attention(const Eigen::DenseBase<QQ>& q_quad, const Eigen::DenseBase<KQ>& k_quad,
                           const Eigen::DenseBase<QL>& q_lin, const Eigen::DenseBase<KL>& k_lin,
                           const Eigen::DenseBase<V>& v, const Eigen::DenseBase<O>& out,
                           const FlashOptions& options = {}) {
  using T = typename QQ::Scalar;
  static_assert(std::is_same<T, typename KQ::Scalar>::value && std::is_same<T, typename QL::Scalar>::value &&
                    std::is_same<T, typename KL::Scalar>::value && std::is_same<T, typename V::Scalar>::value &&
                    std::is_same<T, typename O::Scalar>::value,
                "mixed_chunk_attention: every argument must have the same scalar type");
  constexpr const char* fn = "mixed_chunk_attention";
  const auto qq = detail::make_view(fn, "q_quad", q_quad);
  const auto kq = detail::make_view(fn, "k_quad", k_quad);
  const auto ql = detail::make_view(fn, "q_lin", q_lin);
  const auto kl = detail::make_view(fn, "k_lin", k_lin);
  const auto vv = detail::make_view(fn, "v", v);
  const auto ov = detail::make_mut_view(fn, "out", out);
  detail::require(qq.cols >= 1, fn, "q_quad has shape ", detail::shape_str(qq.rows, qq.cols),
                  " but needs at least one column");
  detail::require_shape(fn, "k_quad", kq, qq.rows, qq.cols, "q_quad has ");
  detail::require(ql.cols >= 1, fn, "q_lin has shape ", detail::shape_str(ql.rows, ql.cols),
                  " but needs at least one column");
  detail::require_shape(fn, "q_lin", ql, qq.rows, -1, "q_quad has ");
  detail::require_shape(fn, "k_lin", kl, qq.rows, ql.cols, "q_lin has ");
  detail::require(vv.cols >= 1, fn, "v has shape ", detail::shape_str(vv.rows, vv.cols),
                  " but needs at least one column");
  detail::require_shape(fn, "v", vv, qq.rows, -1, "q_quad has ");
  detail::require_shape(fn, "out", ov, qq.rows, vv.cols, "q_quad and v need ");
  detail::check_flash_options<T>(fn, options, qq.rows);
  for (const auto* in : {&qq, &kq, &ql, &kl, &vv})
    detail::require(!detail::overlaps(ov, *in), fn, "out must not alias an input");
  detail::flash_head_call<T>(qq, kq, ql, kl, vv, ov, options, options.key_length.value_or(qq.rows));
}

/// Batched FLASH mixed-chunk attention over [batch, heads, seq, dim] views: q_quad, k_quad [B, H, n, s];
/// q_lin, k_lin [B, H, n, s_lin]; v [B, H, n, e]; out [B, H, n, e]. Parallel over batch x heads, bitwise identical
/// to the 2-D call per head for any thread count.
template <class A, class Bq, class C, class D, class E, class T>
void mixed_chunk_attention(const TensorView<A>& q_quad, const TensorView<Bq>& k_quad, const TensorView<C>& q_lin,
                           const TensorView<D>& k_lin, const TensorView<E>& v, const TensorView<T>& out,
                           const FlashOptions& options = {}) {
  static_assert(!std::is_const<T>::value, "mixed_chunk_attention: out must be writable");
  static_assert(std::is_same<std::remove_const_t<A>, T>::value && std::is_same<std::remove_const_t<Bq>, T>::value &&
                    std::is_same<std::remove_const_t<C>, T>::value && std::is_same<std::remove_const_t<D>, T>::value &&
                    std::is_same<std::remove_const_t<E>, T>::value,
                "mixed_chunk_attention: every argument must have the same scalar type");
  constexpr const char* fn = "mixed_chunk_attention";
  const TensorView<const T> qq(q_quad.data, q_quad.shape, q_quad.strides),
      kq(k_quad.data, k_quad.shape, k_quad.strides), ql(q_lin.data, q_lin.shape, q_lin.strides),
      kl(k_lin.data, k_lin.shape, k_lin.strides), vv(v.data, v.shape, v.strides);
  auto shape4 = [](const auto& t) {
    return "[" + std::to_string(t.batch()) + ", " + std::to_string(t.heads()) + ", " + std::to_string(t.seq()) + ", " +
           std::to_string(t.dim()) + "]";
  };
  auto same_bhs = [&](const auto& t) {
    return t.batch() == qq.batch() && t.heads() == qq.heads() && t.seq() == qq.seq();
  };
  detail::require(qq.dim() >= 1 && same_bhs(kq) && kq.dim() == qq.dim(), fn, "k_quad has shape ", shape4(kq),
                  " but q_quad has ", shape4(qq));
  detail::require(ql.dim() >= 1 && same_bhs(ql) && same_bhs(kl) && kl.dim() == ql.dim(), fn, "q_lin ", shape4(ql),
                  " and k_lin ", shape4(kl), " must match each other and q_quad ", shape4(qq), " but for the dim");
  detail::require(vv.dim() >= 1 && same_bhs(vv), fn, "v has shape ", shape4(vv), " but q_quad has ", shape4(qq));
  detail::require(same_bhs(out) && out.dim() == vv.dim(), fn, "out has shape ", shape4(out), " but needs [", qq.batch(),
                  ", ", qq.heads(), ", ", qq.seq(), ", ", vv.dim(), "]");
  for (const auto* t : {&qq, &kq, &ql, &kl, &vv})
    detail::require(t->seq() <= 1 || t->strides[2] >= t->dim(), fn, "a seq stride is smaller than the row length");
  detail::require(out.seq() <= 1 || out.strides[2] >= out.dim(), fn, "out's seq stride is smaller than its row length");
  detail::check_flash_options<T>(fn, options, qq.seq());
  const Index heads = qq.heads();
  if (qq.batch() == 0 || heads == 0) return;
  const Index key_length = options.key_length.value_or(qq.seq());
  detail::parallel_for(qq.batch() * heads, [&](Index i) {
    const Index b = i / heads, h = i % heads;
    detail::flash_head_call<T>(detail::head_view(qq, b, h), detail::head_view(kq, b, h), detail::head_view(ql, b, h),
                               detail::head_view(kl, b, h), detail::head_view(vv, b, h),
                               detail::head_view_mut(out, b, h), options, key_length);
  });
}

}  // namespace kexue
