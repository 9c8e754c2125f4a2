// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// GlobalPointer and Efficient GlobalPointer (SPEC.md section 2): span scores s(i, j) for every start i
/// and end j (inclusive) of a sequence, per entity type (head), their decoding into spans, and the
/// multi-label categorical cross-entropy they are trained with.
///
/// Scores of one head are an n x n row-major matrix, row = start, column = end. Several heads are stacked
/// as [heads * n, n] (head a in rows [a*n, (a+1)*n)); a batch as [batch * heads * n, n].
///
/// Scratch: the rotated, packed q and k (about 2 * batch * heads * n * head_size values, plus the projection
/// y = h w of the layer forms) live in thread-local buffers of the calling thread that grow to the largest
/// call and are reused, as are the packing buffers of the layer projection's GEMM; nothing else is allocated
/// per call, except the returned span vectors. Only the kept region (end >= start, both < length) is
/// multiplied under MaskConvention::Current.


#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/gemm.hpp"
#include "kexue/detail/global_pointer_loss.hpp"
#include "kexue/detail/global_pointer_simd.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"
#include "kexue/rope.hpp"

namespace kexue {

/// Options of every GlobalPointer score function (SPEC 2.2, 2.3). The defaults are current bert4keras.
struct GlobalPointerOptions {
  bool tril_mask = true;  ///< mask cells with end < start
  bool scale = true;      ///< divide the dot product by sqrt(head_size) (absent before 2021-04-23 / in the post)
  double fill = -std::numeric_limits<double>::infinity();  ///< masked cells under MaskConvention::Current
  MaskConvention convention = MaskConvention::Current;    ///< historical masking (SPEC 2.3)
  double legacy_magnitude = 1e12;  ///< M of the legacy conventions (bert4keras K.infinity())
  /// Rotate q and k (bert4keras RoPE=True, the default). False: plain q . k (RoPE=False); the table is then
  /// not read and only its dim() must match the head size.
  bool rope = true;
};

/// Dense weights of a GlobalPointer layer (SPEC 2.2): w [D, 2*heads*head_size], b [2*heads*head_size] or
/// empty (no bias). Head a takes columns [2da, 2da+d) of h w + b as q and [2da+d, 2d(a+1)) as k.
template <class T>
struct GlobalPointerWeights {
  Matrix<T> w;                      ///< [D, 2 * heads * head_size]: q and k of every head
  Vector<T> b;                      ///< [2 * heads * head_size], or empty for no bias
  Index heads = 0;                  ///< number of entity types
  Index head_size = 0;              ///< d, the size of each head's q and k
};

/// Weights of an Efficient GlobalPointer layer (SPEC 2.6): w_p [D, 2*head_size], b_p [2*head_size] or
/// empty; w_c [2*head_size, 2*heads], b_c [2*heads] or empty.
template <class T>
struct EfficientGlobalPointerWeights {
  Matrix<T> w_p;                    ///< [D, 2 * head_size]: the shared q and k projection
  Vector<T> b_p;                    ///< [2 * head_size], or empty for no bias
  Matrix<T> w_c;                    ///< [2 * head_size, 2 * heads]: the per-type start / end biases
  Vector<T> b_c;                    ///< [2 * heads], or empty for no bias
  Index heads = 0;                  ///< number of entity types
  Index head_size = 0;              ///< d, the size of the shared q and k
};

/// A decoded span: entity type (head), inclusive [start, end] and its score.
struct Span {
  Index head = 0;                   ///< entity type
  Index start = 0;                  ///< first token of the span
  Index end = 0;                    ///< last token of the span (inclusive)
  double score = 0;                 ///< s(start, end) of that head
  /// Equal head, start, end and score.
  friend bool operator==(const Span& a, const Span& b) {
    return a.head == b.head && a.start == b.start && a.end == b.end && a.score == b.score;
  }
  /// Not operator==.
  friend bool operator!=(const Span& a, const Span& b) { return !(a == b); }
};

/// Options of span decoding (SPEC 2.5).
struct DecodeOptions {
  double threshold = 0.0;  ///< a cell is a span when its score is > threshold
  /// Drop spans that start or end at position 0 or length-1 (the [CLS]/[SEP] tokens; the reference
  /// scripts' `recognize` adds -inf to those rows and columns).
  bool exclude_boundary_tokens = false;
  std::optional<Index> length;  ///< only cells with start, end < length; default: n
};

namespace detail {

template <class T>
inline GpParams<T> gp_params(const GlobalPointerOptions& o, Index n, Index d, Index length, bool efficient) {
  GpParams<T> p;
  p.n = n;
  p.d = d;
  p.length = length;
  p.scale = o.scale ? static_cast<T>(1.0 / std::sqrt(static_cast<double>(d))) : T(1);
  p.fill = static_cast<T>(o.fill);
  p.magnitude = static_cast<T>(o.legacy_magnitude);
  p.tril = o.tril_mask;
  p.efficient = efficient;
  p.convention = o.convention;
  return p;
}

inline void gp_check_options(const char* fn, const GlobalPointerOptions& o) {
  require(!std::isnan(o.fill), fn, "options.fill is NaN");
  require(o.convention == MaskConvention::Current || std::isfinite(o.legacy_magnitude), fn,
          "options.legacy_magnitude must be finite, got ", o.legacy_magnitude);
}

inline void gp_check_length(const char* fn, Index length, Index n) {
  require(length >= 0 && length <= n, fn, "length ", length, " must be in [0, n = ", n, "]");
}

template <class T>
inline void gp_check_table(const char* fn, const RopeTable<T>& table, Index n, Index d, bool rope) {
  require(table.dim() == d, fn, "the RoPE table has dim ", table.dim(), " but the head size is ", d);
  require(!rope || table.max_positions() >= n, fn, "the RoPE table has ", table.max_positions(),
          " positions but the sequence has ", n);
}

/// Growing per-thread scratch; slot separates buffers that are live at the same time.
// Slots: 0 projection, 1 packed q, 2 packed k, 3 biases, 4 one rotated row, 5 decode strip.
template <class T>
inline T* gp_scratch(int slot, Index size) {
  thread_local std::vector<T> buffers[6];
  auto& v = buffers[slot];
  if (static_cast<Index>(v.size()) < size) v.resize(static_cast<std::size_t>(size));
  return v.data();
}

/// Per-thread array of the output descriptors of one Efficient GlobalPointer item.
template <class T>
inline std::vector<GpOut<T>>& gp_outs(Index heads) {
  thread_local std::vector<GpOut<T>> outs;
  outs.resize(static_cast<std::size_t>(heads));
  return outs;
}

/// Rotates n rows of q (row r at q + r * ldq, column step cs: 1 for contiguous rows, 2 for Efficient
/// GlobalPointer's interleaved split) into the packed q operand.
/// q may be stored as S = Eigen::half / Eigen::bfloat16 (16-bit inputs): widened here, exactly, so everything after
/// the packing is the T kernel's arithmetic on the widened values (gp_pack_k likewise).
template <class T, class S>
inline void gp_pack_q(const RopeTable<T>* table, const S* q, Index ldq, Index cs, Index n, Index d, T* qpack) {
  for (Index i = 0; i < n; ++i) {
    T* qrow = qpack + i * d;
    for (Index t = 0; t < d; ++t) qrow[t] = as_compute<T>(q[i * ldq + t * cs]);
    if (table) rope_row(*table, qrow, qrow, static_cast<const T*>(nullptr), i);
  }
  std::fill(qpack + n * d, qpack + gp_q_size(n, d), T(0));
}

/// Rotates n rows of k into the packed (column panel) k operand; tmp holds d values.
template <class T, class S>
inline void gp_pack_k(const RopeTable<T>* table, const S* k, Index ldk, Index cs, Index n, Index d, T* kpack, T* tmp) {
  for (Index i = 0; i < n; ++i) {
    for (Index t = 0; t < d; ++t) tmp[t] = as_compute<T>(k[i * ldk + t * cs]);
    if (table) rope_row(*table, tmp, tmp, static_cast<const T*>(nullptr), i);
    gp_pack_column(kpack, d, i, tmp);
  }
  gp_pack_pad(kpack, n, d);
}

template <class T, class S>
inline void gp_pack_pair(const RopeTable<T>* table, const S* q, Index ldq, const S* k, Index ldk, Index cs, Index n,
                         Index d, T* qpack, T* kpack, T* tmp) {
  gp_pack_q(table, q, ldq, cs, n, d, qpack);
  gp_pack_k(table, k, ldk, cs, n, d, kpack, tmp);
}

/// Row blocks of n rows, and the parallel work items over them.
inline Index gp_blocks(Index n) { return (n + kGpRows - 1) / kGpRows; }
inline Index gp_items(Index n) { return (gp_blocks(n) + kGpBlocksPerItem - 1) / kGpBlocksPerItem; }

template <class T>
inline void gp_item(const GpParams<T>& p, const T* qpack, const T* kpack, Index item, const GpOut<T>* outs,
                    Index heads) {
  const Index b_end = std::min(gp_blocks(p.n), (item + 1) * kGpBlocksPerItem);
  for (Index b = item * kGpBlocksPerItem; b < b_end; ++b) gp_strip(p, qpack, kpack, b * kGpRows, outs, heads);
}

/// h [batch * n, D] times w [D, cols] plus b into y [batch * n, cols] (row stride cols), with kexue's packed GEMM
/// (detail/gemm.hpp): each y(i, j) is one FMA chain over D in order, so the result depends neither on the thread
/// count nor on the other sequences of the batch. Why not Eigen's GEMM (used here before): its AVX-512 kernel is
/// no faster than its AVX2 one on Zen4 (bench_global_pointer's Eigen baseline row measured 1.1-1.3x slower under
/// -march=native), while kexue's keeps one 6 x 2-register tile per width; the layer rows' best times went from
/// 22.0 (AVX2) / 30.4 (AVX-512) ms to 18.4 / 18.7 ms on a loaded 2-core Zen4 (noisy: medians spread 1.3x).
template <class T>
inline void gp_project(const View<const T>& h, Index batch, Index n, const Matrix<T>& w, const Vector<T>& b, T* y) {
  const Index cols = w.cols();
  thread_local GemmWorkspace<T> ws;
  GemmEpilogue<T> epi;
  epi.bias = b.size() != 0 ? b.data() : nullptr;
  gemm<T>(View<const T>{h.row(0), batch * n, h.cols, h.stride}, View<const T>{w.data(), w.rows(), cols, cols}, false,
          View<T>{y, batch * n, cols, cols}, epi, ws);
}

template <class T>
inline void gp_check_weights(const char* fn, const GlobalPointerWeights<T>& wt, const View<const T>& h) {
  require(wt.heads >= 1 && wt.head_size >= 2 && wt.head_size % 2 == 0, fn, "weights.heads ", wt.heads,
          " must be >= 1 and weights.head_size ", wt.head_size, " even and >= 2");
  const Index cols = 2 * wt.heads * wt.head_size;
  require(wt.w.cols() == cols, fn, "weights.w has shape ", shape_str(wt.w.rows(), wt.w.cols()),
          " but 2 * heads * head_size = 2 * ", wt.heads, " * ", wt.head_size, " = ", cols, " columns");
  require(wt.b.size() == 0 || wt.b.size() == cols, fn, "weights.b has ", wt.b.size(), " values but w has ", cols,
          " columns");
  require(h.cols == wt.w.rows(), fn, "h has shape ", shape_str(h.rows, h.cols), " but weights.w has ",
          wt.w.rows(), " rows");
}

template <class T>
inline void gp_check_weights(const char* fn, const EfficientGlobalPointerWeights<T>& wt, const View<const T>& h) {
  require(wt.heads >= 1 && wt.head_size >= 2 && wt.head_size % 2 == 0, fn, "weights.heads ", wt.heads,
          " must be >= 1 and weights.head_size ", wt.head_size, " even and >= 2");
  const Index d2 = 2 * wt.head_size;
  require(wt.w_p.cols() == d2, fn, "weights.w_p has shape ", shape_str(wt.w_p.rows(), wt.w_p.cols()),
          " but 2 * head_size = ", d2, " columns");
  require(wt.b_p.size() == 0 || wt.b_p.size() == d2, fn, "weights.b_p has ", wt.b_p.size(), " values but ", d2,
          " expected");
  require(wt.w_c.rows() == d2 && wt.w_c.cols() == 2 * wt.heads, fn, "weights.w_c has shape ",
          shape_str(wt.w_c.rows(), wt.w_c.cols()), " but expected ", shape_str(d2, 2 * wt.heads),
          " (2 * head_size, 2 * heads)");
  require(wt.b_c.size() == 0 || wt.b_c.size() == 2 * wt.heads, fn, "weights.b_c has ", wt.b_c.size(),
          " values but 2 * heads = ", 2 * wt.heads, " expected");
  require(h.cols == wt.w_p.rows(), fn, "h has shape ", shape_str(h.rows, h.cols), " but weights.w_p has ",
          wt.w_p.rows(), " rows");
}

/// Sequences of a batched layer call: [batch * n, D] hidden states with one length each.
inline Index gp_batch_seq(const char* fn, Index rows, const std::vector<Index>& lengths) {
  const Index batch = static_cast<Index>(lengths.size());
  require(batch >= 1, fn, "lengths is empty (one length per sequence)");
  require(rows % batch == 0, fn, "h has ", rows, " rows, not a multiple of the batch size ", batch);
  const Index n = rows / batch;
  for (Index b = 0; b < batch; ++b)
    require(lengths[std::size_t(b)] >= 0 && lengths[std::size_t(b)] <= n, fn, "lengths[", b, "] = ",
            lengths[std::size_t(b)], " must be in [0, n = ", n, "]");
  return n;
}

/// Prepared GlobalPointer layer: packed q/k for each (sequence, head). The scratch is the calling
/// thread's and lives until its next call.
template <class T>
struct GpPrepared {
  Index batch = 0, heads = 0, n = 0, d = 0, qs = 0, ks = 0;
  T* q = nullptr;  // [batch * heads][qs]
  T* k = nullptr;  // [batch * heads][ks]
  const T* qpack(Index b, Index a) const { return q + (b * heads + a) * qs; }
  const T* kpack(Index b, Index a) const { return k + (b * heads + a) * ks; }
};

template <class T>
inline GpPrepared<T> gp_prepare_layer(const GlobalPointerWeights<T>& wt, const RopeTable<T>* table,
                                      const View<const T>& h, Index batch, Index n) {
  GpPrepared<T> pr;
  pr.batch = batch;
  pr.heads = wt.heads;
  pr.n = n;
  pr.d = wt.head_size;
  pr.qs = gp_q_size(n, pr.d);
  pr.ks = gp_k_size<T>(n, pr.d);
  const Index cols = 2 * wt.heads * wt.head_size;
  T* y = gp_scratch<T>(0, batch * n * cols);
  gp_project(h, batch, n, wt.w, wt.b, y);
  pr.q = gp_scratch<T>(1, batch * wt.heads * pr.qs);
  pr.k = gp_scratch<T>(2, batch * wt.heads * pr.ks);
  parallel_for(2 * batch * wt.heads, [&](Index w) {
    const Index bh = w / 2, b = bh / wt.heads, a = bh % wt.heads, d = pr.d;
    const T* yb = y + b * n * cols;
    if (w % 2 == 0)
      gp_pack_q(table, yb + 2 * d * a, cols, 1, n, d, pr.q + bh * pr.qs);
    else
      gp_pack_k(table, yb + 2 * d * a + d, cols, 1, n, d, pr.k + bh * pr.ks, gp_scratch<T>(4, d));
  });
  return pr;
}

/// Prepared Efficient GlobalPointer: one shared packed q/k per sequence plus per-head bias vectors
/// row_bias[b][a][i] = c[i][2a+1], col_bias[b][a][j] = c[j][2a] (c = (p w_c + b_c) / 2, SPEC 2.6).
template <class T>
struct EgpPrepared {
  Index batch = 0, heads = 0, n = 0, d = 0, qs = 0, ks = 0;
  T* q = nullptr;
  T* k = nullptr;
  T* rb = nullptr;  // [batch][heads][n]
  T* cb = nullptr;
};

template <class T>
inline EgpPrepared<T> gp_prepare_efficient(const EfficientGlobalPointerWeights<T>& wt, const RopeTable<T>* table,
                                           const View<const T>& h, Index batch, Index n) {
  EgpPrepared<T> pr;
  pr.batch = batch;
  pr.heads = wt.heads;
  pr.n = n;
  const Index d = pr.d = wt.head_size, A = wt.heads;
  pr.qs = gp_q_size(n, d);
  pr.ks = gp_k_size<T>(n, d);
  T* pbuf = gp_scratch<T>(0, batch * n * 2 * d);
  gp_project(h, batch, n, wt.w_p, wt.b_p, pbuf);
  pr.q = gp_scratch<T>(1, batch * pr.qs);
  pr.k = gp_scratch<T>(2, batch * pr.ks);
  T* bias = gp_scratch<T>(3, 2 * batch * A * n + batch * n * 2 * A);
  pr.rb = bias;
  pr.cb = bias + batch * A * n;
  T* c = bias + 2 * batch * A * n;  // [batch * n, 2A]
  View<const T> pv{pbuf, batch * n, 2 * d, 2 * d};
  gp_project(pv, batch, n, wt.w_c, wt.b_c, c);
  parallel_for(batch, [&](Index b) {
    const T* pb = pbuf + b * n * 2 * d;
    gp_pack_pair(table, pb, 2 * d, pb + 1, 2 * d, 2, n, d, pr.q + b * pr.qs, pr.k + b * pr.ks,
                 gp_scratch<T>(4, d));
    for (Index a = 0; a < A; ++a) {
      T* rb = pr.rb + (b * A + a) * n;
      T* cb = pr.cb + (b * A + a) * n;
      for (Index i = 0; i < n; ++i) {
        rb[i] = c[(b * n + i) * 2 * A + 2 * a + 1] * T(0.5);
        cb[i] = c[(b * n + i) * 2 * A + 2 * a] * T(0.5);
      }
    }
  });
  return pr;
}

/// Appends the spans of rows [i0, i_end) of one head's score rows (row i at rows + (i - i0) * ld).
template <class T>
inline void gp_scan_rows(const T* rows, Index ld, Index i0, Index i_end, Index head, Index length,
                         const DecodeOptions& o, std::vector<Span>& spans) {
  const bool ex = o.exclude_boundary_tokens;
  const Index lo = ex ? 1 : 0, hi = ex ? length - 1 : length;
  // The vector prefilter compares in T against the largest T not above the threshold, so it never drops a
  // cell the exact double comparison below would keep.
  T thr = static_cast<T>(o.threshold);
  if (static_cast<double>(thr) > o.threshold) thr = std::nextafter(thr, -std::numeric_limits<T>::infinity());
  for (Index i = std::max(i0, lo); i < std::min(i_end, hi); ++i) {
    const T* row = rows + (i - i0) * ld;
    gp_scan_row(row, lo, hi, thr, [&](Index j, T v) {
      // The threshold compared in T could round; the double comparison is the contract.
      if (static_cast<double>(v) > o.threshold) spans.push_back(Span{head, i, j, static_cast<double>(v)});
    });
  }
}

/// Concatenates per-item span lists and sorts by (head, start, end).
inline std::vector<Span> gp_merge(std::vector<std::vector<Span>>& parts) {
  std::vector<Span> out;
  std::size_t total = 0;
  for (auto& p : parts) total += p.size();
  out.reserve(total);
  for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  std::sort(out.begin(), out.end(), [](const Span& a, const Span& b) {
    return a.head != b.head ? a.head < b.head : a.start != b.start ? a.start < b.start : a.end < b.end;
  });
  return out;
}

template <class T, class D>
inline void gp_same_scalar() {
  static_assert(std::is_same<typename D::Scalar, T>::value,
                "kexue GlobalPointer: the RoPE table, weights and matrices must share one scalar type");
}

/// Projected q and k: the table's scalar type, or (16-bit storage) Eigen::half / Eigen::bfloat16.
template <class T, class S>
constexpr bool kGpInput = std::is_same<S, T>::value || kIs16Bit<S>;

}  // namespace detail

// ---- scores ----------------------------------------------------------------------------------------------

/// 16-bit inputs (issue 13): the projected-q/k forms (2-D and batched) take q and k as Eigen::half or
/// Eigen::bfloat16 with a float (or double) table and scores; they are widened as they are packed, so the scores
/// are the float kernel's on the widened inputs, bit for bit. The forms from hidden states take float or double.
/// One head from projected q, k [n, d] (SPEC 2.2): scores [n, n],
/// scores[i][j] = RoPE_i(q_i) . RoPE_j(k_j) / sqrt(d), and options.fill where j < i (tril_mask) or i or j
/// >= length. The table's layout is used (bert4keras: RopeLayout::Interleaved), positions 0..n-1.
template <class T, class DQ, class DK, class DS>
void global_pointer(const RopeTable<T>& table, const Eigen::DenseBase<DQ>& q, const Eigen::DenseBase<DK>& k,
                    const Eigen::DenseBase<DS>& scores, Index length, const GlobalPointerOptions& options = {}) {
  static_assert(std::is_same<typename DQ::Scalar, typename DK::Scalar>::value &&
                    detail::kGpInput<T, typename DQ::Scalar>,
                "kexue GlobalPointer: q and k have the table's scalar type (or are both Eigen::half / Eigen::bfloat16)");
  detail::gp_same_scalar<T, DS>();
  const char* fn = "global_pointer";
  auto qv = detail::make_view<DQ, true>(fn, "q", q);
  auto kv = detail::make_view<DK, true>(fn, "k", k);
  auto sv = detail::make_mut_view(fn, "scores", scores);
  const Index n = qv.rows, d = qv.cols;
  detail::require_shape(fn, "k", kv, n, d, "q has shape ");
  detail::require_shape(fn, "scores", sv, n, n, "q has n = rows, expected ");
  detail::gp_check_length(fn, length, n);
  detail::gp_check_options(fn, options);
  detail::gp_check_table(fn, table, n, d, options.rope);
  detail::require(!detail::overlaps(sv, qv) && !detail::overlaps(sv, kv), fn, "scores must not alias q or k");
  if (n == 0) return;
  T* qp = detail::gp_scratch<T>(1, detail::gp_q_size(n, d));
  T* kp = detail::gp_scratch<T>(2, detail::gp_k_size<T>(n, d));
  detail::gp_pack_pair(options.rope ? &table : nullptr, qv.data, qv.stride, kv.data, kv.stride, 1, n, d, qp, kp, detail::gp_scratch<T>(4, d));
  const auto p = detail::gp_params<T>(options, n, d, length, false);
  const detail::GpOut<T> out{sv.data, sv.stride, nullptr, nullptr};
  detail::parallel_for(detail::gp_items(n), [&](Index item) { detail::gp_item(p, qp, kp, item, &out, 1); });
}

/// Batched heads from projected q, k: q, k [batch, heads, n, d] (any strides, unit inner stride, e.g.
/// TensorView::seq_major over a fused [n, heads*d] projection), scores [batch, heads, n, n] (dim = n).
/// lengths: one per sequence, empty = n. Parallel over batch x heads x row blocks.
template <class T, class TQ, class TK>
void global_pointer(const RopeTable<T>& table, const TensorView<TQ>& q, const TensorView<TK>& k,
                    const TensorView<T>& scores, const std::vector<Index>& lengths = {},
                    const GlobalPointerOptions& options = {}) {
  using S = std::remove_const_t<TQ>;
  static_assert(std::is_same<std::remove_const_t<TK>, S>::value && detail::kGpInput<T, S>,
                "kexue GlobalPointer: the RoPE table and the tensors must share one scalar type (or q and k are "
                "both Eigen::half / Eigen::bfloat16)");
  const char* fn = "global_pointer";
  const Index B = q.batch(), H = q.heads(), n = q.seq(), d = q.dim();
  detail::require(k.shape == q.shape, fn, "k has shape [", k.batch(), ", ", k.heads(), ", ", k.seq(), ", ", k.dim(),
                  "] but q has [", B, ", ", H, ", ", n, ", ", d, "]");
  detail::require(scores.batch() == B && scores.heads() == H && scores.seq() == n && scores.dim() == n, fn,
                  "scores has shape [", scores.batch(), ", ", scores.heads(), ", ", scores.seq(), ", ", scores.dim(),
                  "] but expected [", B, ", ", H, ", ", n, ", ", n, "]");
  detail::require(lengths.empty() || static_cast<Index>(lengths.size()) == B, fn, "lengths has ", lengths.size(),
                  " entries but the batch is ", B);
  for (std::size_t b = 0; b < lengths.size(); ++b) detail::gp_check_length(fn, lengths[b], n);
  detail::gp_check_options(fn, options);
  if (B * H * n == 0) return;
  detail::gp_check_table(fn, table, n, d, options.rope);
  const Index qs = detail::gp_q_size(n, d), ks = detail::gp_k_size<T>(n, d);
  T* qp = detail::gp_scratch<T>(1, B * H * qs);
  T* kp = detail::gp_scratch<T>(2, B * H * ks);
  // q and k of a head are packed by separate items: twice the items balance two threads better.
  detail::parallel_for(2 * B * H, [&](Index w) {
    const Index bh = w / 2, b = bh / H, a = bh % H;
    if (w % 2 == 0)
      detail::gp_pack_q(options.rope ? &table : nullptr, static_cast<const S*>(q.row(b, a, 0)), q.strides[2], 1, n, d, qp + bh * qs);
    else
      detail::gp_pack_k(options.rope ? &table : nullptr, static_cast<const S*>(k.row(b, a, 0)), k.strides[2], 1, n, d, kp + bh * ks,
                        detail::gp_scratch<T>(4, d));
  });
  const Index items = detail::gp_items(n);
  detail::parallel_for(B * H * items, [&](Index w) {
    const Index bh = w / items, item = w % items, b = bh / H, a = bh % H;
    const auto p = detail::gp_params<T>(options, n, d, lengths.empty() ? n : lengths[std::size_t(b)], false);
    const detail::GpOut<T> out{scores.row(b, a, 0), scores.strides[2], nullptr, nullptr};
    detail::gp_item(p, qp + bh * qs, kp + bh * ks, item, &out, 1);
  });
}

/// The GlobalPointer layer from hidden states h [n, D] (SPEC 2.2): y = h w + b, head a's q and k are
/// columns [2da, 2da+d) and [2da+d, 2d(a+1)) of y; scores [heads * n, n], head a in rows [a*n, (a+1)*n).
template <class T, class DH, class DS>
void global_pointer(const GlobalPointerWeights<T>& weights, const RopeTable<T>& table, const Eigen::DenseBase<DH>& h,
                    const Eigen::DenseBase<DS>& scores, Index length, const GlobalPointerOptions& options = {}) {
  detail::gp_check_length("global_pointer", length, detail::make_view("global_pointer", "h", h).rows);
  global_pointer(weights, table, h, scores, std::vector<Index>{length}, options);
}

/// Batched layer: h [batch * n, D], one length per sequence (lengths.size() = batch), scores
/// [batch * heads * n, n] (sequence b, head a in rows [(b*heads + a)*n, ...)).
template <class T, class DH, class DS>
void global_pointer(const GlobalPointerWeights<T>& weights, const RopeTable<T>& table, const Eigen::DenseBase<DH>& h,
                    const Eigen::DenseBase<DS>& scores, const std::vector<Index>& lengths,
                    const GlobalPointerOptions& options = {}) {
  detail::gp_same_scalar<T, DH>();
  detail::gp_same_scalar<T, DS>();
  const char* fn = "global_pointer";
  auto hv = detail::make_view(fn, "h", h);
  auto sv = detail::make_mut_view(fn, "scores", scores);
  detail::gp_check_weights(fn, weights, hv);
  const Index n = detail::gp_batch_seq(fn, hv.rows, lengths), B = static_cast<Index>(lengths.size());
  const Index A = weights.heads, d = weights.head_size;
  detail::require_shape(fn, "scores", sv, B * A * n, n, "batch * heads * n x n = ");
  detail::gp_check_options(fn, options);
  detail::require(!detail::overlaps(sv, hv), fn, "scores must not alias h");
  if (n == 0) return;
  detail::gp_check_table(fn, table, n, d, options.rope);
  const auto pr = detail::gp_prepare_layer(weights, options.rope ? &table : nullptr, hv, B, n);
  const Index items = detail::gp_items(n);
  detail::parallel_for(B * A * items, [&](Index w) {
    const Index bh = w / items, item = w % items, b = bh / A, a = bh % A;
    const auto p = detail::gp_params<T>(options, n, d, lengths[std::size_t(b)], false);
    const detail::GpOut<T> out{sv.row(bh * n), sv.stride, nullptr, nullptr};
    detail::gp_item(p, pr.qpack(b, a), pr.kpack(b, a), item, &out, 1);
  });
}

/// Efficient GlobalPointer from hidden states h [n, D] (SPEC 2.6): p = h w_p + b_p, q = p[:, 0::2],
/// k = p[:, 1::2], c = (p w_c + b_c) / 2 from the un-rotated p;
/// scores[a][i][j] = RoPE_i(q_i) . RoPE_j(k_j) / sqrt(d) + c[i][2a+1] + c[j][2a], then masked as
/// global_pointer. scores [heads * n, n].
template <class T, class DH, class DS>
void efficient_global_pointer(const EfficientGlobalPointerWeights<T>& weights, const RopeTable<T>& table,
                              const Eigen::DenseBase<DH>& h, const Eigen::DenseBase<DS>& scores, Index length,
                              const GlobalPointerOptions& options = {}) {
  detail::gp_check_length("efficient_global_pointer", length,
                          detail::make_view("efficient_global_pointer", "h", h).rows);
  efficient_global_pointer(weights, table, h, scores, std::vector<Index>{length}, options);
}

/// Batched Efficient GlobalPointer: h [batch * n, D], lengths.size() = batch, scores [batch * heads * n, n].
template <class T, class DH, class DS>
void efficient_global_pointer(const EfficientGlobalPointerWeights<T>& weights, const RopeTable<T>& table,
                              const Eigen::DenseBase<DH>& h, const Eigen::DenseBase<DS>& scores,
                              const std::vector<Index>& lengths, const GlobalPointerOptions& options = {}) {
  detail::gp_same_scalar<T, DH>();
  detail::gp_same_scalar<T, DS>();
  const char* fn = "efficient_global_pointer";
  auto hv = detail::make_view(fn, "h", h);
  auto sv = detail::make_mut_view(fn, "scores", scores);
  detail::gp_check_weights(fn, weights, hv);
  const Index n = detail::gp_batch_seq(fn, hv.rows, lengths), B = static_cast<Index>(lengths.size());
  const Index A = weights.heads, d = weights.head_size;
  detail::require_shape(fn, "scores", sv, B * A * n, n, "batch * heads * n x n = ");
  detail::gp_check_options(fn, options);
  detail::require(!detail::overlaps(sv, hv), fn, "scores must not alias h");
  if (n == 0) return;
  detail::gp_check_table(fn, table, n, d, options.rope);
  const auto pr = detail::gp_prepare_efficient(weights, options.rope ? &table : nullptr, hv, B, n);
  const Index items = detail::gp_items(n);
  // One item computes the shared dot-product tiles of its rows once and writes them to every head.
  detail::parallel_for(B * items, [&](Index w) {
    const Index b = w / items, item = w % items;
    const auto p = detail::gp_params<T>(options, n, d, lengths[std::size_t(b)], true);
    std::vector<detail::GpOut<T>>& outs = detail::gp_outs<T>(A);
    for (Index a = 0; a < A; ++a)
      outs[std::size_t(a)] = {sv.row((b * A + a) * n), sv.stride, pr.rb + (b * A + a) * n, pr.cb + (b * A + a) * n};
    detail::gp_item(p, pr.q + b * pr.qs, pr.k + b * pr.ks, item, outs.data(), A);
  });
}

// ---- decoding ----------------------------------------------------------------------------------------------

/// Every cell of scores [heads * n, n] with score > options.threshold as (head, start, end, score), sorted by
/// (head, start, end) (SPEC 2.5). Cells at or past options.length (default n) are skipped, and with
/// exclude_boundary_tokens so are start/end 0 and length-1. NaN cells are never spans.
template <class DS>
std::vector<Span> decode_spans(const Eigen::DenseBase<DS>& scores, Index heads, const DecodeOptions& options) {
  using T = typename DS::Scalar;
  const char* fn = "decode_spans";
  auto sv = detail::make_view(fn, "scores", scores);
  detail::require(heads >= 1, fn, "heads must be >= 1, got ", heads);
  const Index n = sv.cols;
  detail::require(sv.rows == heads * n, fn, "scores has shape ", detail::shape_str(sv.rows, sv.cols), " but heads * n x n = ",
                  detail::shape_str(heads * n, n), " expected");
  const Index length = options.length.value_or(n);
  detail::gp_check_length(fn, length, n);
  detail::require(!std::isnan(options.threshold), fn, "threshold is NaN");
  std::vector<Span> spans;
  for (Index a = 0; a < heads; ++a)
    detail::gp_scan_rows<T>(sv.row(a * n), sv.stride, 0, n, a, length, options, spans);
  return spans;
}

/// decode_spans with a threshold only (API.md's form).
template <class DS>
std::vector<Span> decode_spans(const Eigen::DenseBase<DS>& scores, Index heads, double threshold = 0.0) {
  DecodeOptions o;
  o.threshold = threshold;
  return decode_spans(scores, heads, o);
}

/// Memory-lean GlobalPointer layer + decoding: the spans decode_spans would return for the scores of
/// global_pointer(weights, table, h, ...), without storing any n x n matrix (per thread, one strip of
/// 6 x n scores). Memory is O(n * heads * head_size). decode.length defaults to `length`.
template <class T, class DH>
std::vector<Span> global_pointer_spans(const GlobalPointerWeights<T>& weights, const RopeTable<T>& table,
                                       const Eigen::DenseBase<DH>& h, Index length, DecodeOptions decode = {},
                                       const GlobalPointerOptions& options = {}) {
  detail::gp_same_scalar<T, DH>();
  const char* fn = "global_pointer_spans";
  auto hv = detail::make_view(fn, "h", h);
  detail::gp_check_weights(fn, weights, hv);
  const Index n = hv.rows, A = weights.heads, d = weights.head_size;
  detail::gp_check_length(fn, length, n);
  if (!decode.length) decode.length = length;
  detail::gp_check_length(fn, *decode.length, n);
  detail::gp_check_options(fn, options);
  detail::require(!std::isnan(decode.threshold), fn, "threshold is NaN");
  if (n == 0) return {};
  detail::gp_check_table(fn, table, n, d, options.rope);
  const auto pr = detail::gp_prepare_layer(weights, options.rope ? &table : nullptr, hv, 1, n);
  const Index blocks = detail::gp_blocks(n);
  std::vector<std::vector<Span>> parts(static_cast<std::size_t>(A * blocks));
  const auto p = detail::gp_params<T>(options, n, d, length, false);
  detail::parallel_for(A * blocks, [&](Index w) {
    const Index a = w / blocks, i0 = (w % blocks) * detail::kGpRows;
    T* strip = detail::gp_scratch<T>(5, detail::kGpRows * n);
    // The strip holds rows [i0, i0 + 6): gp_strip addresses row i at out + i * ld, so shift the base.
    const detail::GpOut<T> out{strip - i0 * n, n, nullptr, nullptr};
    detail::gp_strip(p, pr.qpack(0, a), pr.kpack(0, a), i0, &out, 1);
    detail::gp_scan_rows(strip, n, i0, std::min(i0 + detail::kGpRows, n), a, *decode.length, decode,
                         parts[std::size_t(w)]);
  });
  return detail::gp_merge(parts);
}

/// Memory-lean Efficient GlobalPointer + decoding (see global_pointer_spans).
template <class T, class DH>
std::vector<Span> efficient_global_pointer_spans(const EfficientGlobalPointerWeights<T>& weights,
                                                 const RopeTable<T>& table, const Eigen::DenseBase<DH>& h,
                                                 Index length, DecodeOptions decode = {},
                                                 const GlobalPointerOptions& options = {}) {
  detail::gp_same_scalar<T, DH>();
  const char* fn = "efficient_global_pointer_spans";
  auto hv = detail::make_view(fn, "h", h);
  detail::gp_check_weights(fn, weights, hv);
  const Index n = hv.rows, A = weights.heads, d = weights.head_size;
  detail::gp_check_length(fn, length, n);
  if (!decode.length) decode.length = length;
  detail::gp_check_length(fn, *decode.length, n);
  detail::gp_check_options(fn, options);
  detail::require(!std::isnan(decode.threshold), fn, "threshold is NaN");
  if (n == 0) return {};
  detail::gp_check_table(fn, table, n, d, options.rope);
  const auto pr = detail::gp_prepare_efficient(weights, options.rope ? &table : nullptr, hv, 1, n);
  const Index blocks = detail::gp_blocks(n);
  std::vector<std::vector<Span>> parts(static_cast<std::size_t>(blocks));
  const auto p = detail::gp_params<T>(options, n, d, length, true);
  detail::parallel_for(blocks, [&](Index w) {
    const Index i0 = w * detail::kGpRows;
    T* strip = detail::gp_scratch<T>(5, A * detail::kGpRows * n);
    std::vector<detail::GpOut<T>>& outs = detail::gp_outs<T>(A);
    for (Index a = 0; a < A; ++a)
      outs[std::size_t(a)] = {strip + a * detail::kGpRows * n - i0 * n, n, pr.rb + a * n, pr.cb + a * n};
    detail::gp_strip(p, pr.q, pr.k, i0, outs.data(), A);
    for (Index a = 0; a < A; ++a)
      detail::gp_scan_rows(strip + a * detail::kGpRows * n, n, i0, std::min(i0 + detail::kGpRows, n), a,
                           *decode.length, decode, parts[std::size_t(w)]);
  });
  return detail::gp_merge(parts);
}

// ---- loss ------------------------------------------------------------------------------------------------

/// Options of the multi-label categorical cross-entropy (SPEC 2.4, 2.5).
struct MultilabelOptions {
  /// Labels are probabilities t in [0, 1] (post 9064's soft form); otherwise they must be exactly 0 or 1.
  bool soft = false;
  /// Consecutive rows that form one sample: 1 = every row is a multi-label problem; scores.cols() for
  /// GlobalPointer's loss, where each head's n x n block is one problem (the reference scripts reshape to
  /// [batch * heads, n * n]).
  Index rows_per_sample = 1;
};

/// Multi-label categorical cross-entropy (SPEC 2.4), the mean over samples of
/// log(1 + sum_neg e^s) + log(1 + sum_pos e^-s) (soft: log(1 + sum (1-t) e^s) + log(1 + sum t e^-s)),
/// computed as logsumexp with an appended 0. Cells with s = -inf contribute nothing and get zero gradient.
/// scores, labels [rows, C]; grad (optional, same shape): d(mean)/d(scores). Returns the mean.
template <class DS, class DL, class DG>
double multilabel_crossentropy(const Eigen::DenseBase<DS>& scores, const Eigen::DenseBase<DL>& labels,
                               const Eigen::DenseBase<DG>& grad, const MultilabelOptions& options = {}) {
  const char* fn = "multilabel_crossentropy";
  auto sv = detail::make_view(fn, "scores", scores);
  auto lv = detail::make_view(fn, "labels", labels);
  auto gv = detail::make_mut_view(fn, "grad", grad);
  static_assert(std::is_same<typename DG::Scalar, typename DS::Scalar>::value, "grad and scores share a scalar type");
  detail::require_shape(fn, "grad", gv, sv.rows, sv.cols, "scores has shape ");
  detail::require(!detail::overlaps(gv, sv) && !detail::overlaps(gv, lv), fn, "grad must not alias scores or labels");
  return detail::mlce(fn, sv, lv, &gv, options.soft, options.rows_per_sample);
}

/// multilabel_crossentropy with an optional gradient matrix (API.md's form): grad null or [rows, C].
template <class DS, class DL>
double multilabel_crossentropy(const Eigen::DenseBase<DS>& scores, const Eigen::DenseBase<DL>& labels,
                               Matrix<typename DS::Scalar>* grad = nullptr, const MultilabelOptions& options = {}) {
  if (grad) return multilabel_crossentropy(scores, labels, *grad, options);
  const char* fn = "multilabel_crossentropy";
  auto sv = detail::make_view(fn, "scores", scores);
  auto lv = detail::make_view(fn, "labels", labels);
  return detail::mlce<typename DS::Scalar>(fn, sv, lv, nullptr, options.soft, options.rows_per_sample);
}

/// GlobalPointer's training loss (SPEC 2.5): scores, labels [samples * n, n], each n x n block (one head of
/// one sequence) is one multi-label problem; the mean over blocks. grad optional.
template <class DS, class DL>
double global_pointer_crossentropy(const Eigen::DenseBase<DS>& scores, const Eigen::DenseBase<DL>& labels,
                                   Matrix<typename DS::Scalar>* grad = nullptr, bool soft = false) {
  MultilabelOptions o;
  o.soft = soft;
  o.rows_per_sample = std::max<Index>(scores.cols(), 1);
  return multilabel_crossentropy(scores, labels, grad, o);
}

/// Sparse multi-label cross-entropy (SPEC 2.4, bert4keras sparse_multilabel_categorical_crossentropy):
/// scores [rows, C], positives [rows, K] integer class indices in [0, C), distinct within a row. With
/// mask_zero, index 0 is padding and class 0 is excluded from the loss. Per row
/// log(1 + sum_pos e^-s) + log(1 + sum_{c not pos} e^s), computed directly (bert4keras derives the second
/// term as all + log(clip(1 - e^(lse(pos) - all), 1e-7, 1)), equal up to that clip). -inf scores
/// contribute nothing. Returns the mean over rows; grad (optional) [rows, C].
template <class DS, class DP>
double sparse_multilabel_crossentropy(const Eigen::DenseBase<DS>& scores, const Eigen::DenseBase<DP>& positives,
                                      Matrix<typename DS::Scalar>* grad = nullptr, bool mask_zero = false) {
  using T = typename DS::Scalar;
  const char* fn = "sparse_multilabel_crossentropy";
  auto sv = detail::make_view(fn, "scores", scores);
  const auto& pd = positives.derived();
  detail::require(pd.rows() == sv.rows, fn, "positives has shape ", detail::shape_str(pd.rows(), pd.cols()),
                  " but scores has ", sv.rows, " rows");
  std::vector<Index> pos(static_cast<std::size_t>(pd.rows() * pd.cols()));
  for (Index r = 0; r < pd.rows(); ++r)
    for (Index c = 0; c < pd.cols(); ++c) {
      const double v = static_cast<double>(pd(r, c));
      detail::require(v == std::floor(v) && v >= 0 && v < static_cast<double>(sv.cols), fn, "positives(", r, ", ", c,
                      ") = ", v, " is not a class index in [0, ", sv.cols, ")");
      pos[std::size_t(r * pd.cols() + c)] = static_cast<Index>(v);
    }
  detail::View<T> gv{};
  if (grad) {
    gv = detail::make_mut_view(fn, "grad", *grad);
    detail::require_shape(fn, "grad", gv, sv.rows, sv.cols, "scores has shape ");
    detail::require(!detail::overlaps(gv, sv), fn, "grad must not alias scores");
  }
  return detail::sparse_mlce(fn, sv, pos, pd.cols(), grad ? &gv : nullptr, mask_zero);
}

}  // namespace kexue
