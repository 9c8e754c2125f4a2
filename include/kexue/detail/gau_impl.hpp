// SPDX-License-Identifier: MIT
#pragma once
// Internals of the GAU layer (kexue/gau.hpp): the resolved plan, the per-thread scratch slots, and the two
// phases of one sequence. Phase 1 (per row tile): h = swish(x W_in + b_in), q/k = scale-offset(z), RoPE.
// Phase 2 (per query tile): scores = q k^T, normalised row by row, then (u * (A v)) W_out + b_out.
//
// Why not the fused flash kernel of attention.hpp: in a GAU the value width is e = 2D (1536 for D = 768)
// while the key width is s = 128, so A v costs 12x more than q k^T. A query tile's A (tile x m, a few MB at
// most) times v is a GEMM with a long inner dimension that Eigen runs near the FMA peak, and squared ReLU
// needs no running maximum, so an online-softmax accumulator of [tile, 1536] would only add traffic. Memory
// stays O(n (2e + s)) plus fixed tiles: the n x n matrix is never materialised.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <optional>
#include <vector>

#include "kexue/attention.hpp"
#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/simd.hpp"
#include "kexue/detail/view.hpp"
#include "kexue/rope.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kexue::detail {

// Rows of x per projection work item. Eigen re-packs the right-hand side (W_in) for every block of rows
// anyway, so 256 rows cost no extra packing over one big GEMM while giving 2 threads 8 items at n = 2048.
constexpr Index kGauProjectionTile = 256;
// Query rows per attention work item: the scores tile is kGauQueryTile x m (1 MiB in float at m = 2048),
// and 128 rows amortise the packing of v ([m, e]) in the A v GEMM over 128 output rows.
constexpr Index kGauQueryTile = 128;

template <class T>
using GauMap = Eigen::Map<Matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using GauConstMap = Eigen::Map<const Matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
inline GauMap<T> gau_map(T* p, Index rows, Index cols, Index stride) {
  return GauMap<T>(p, rows, cols, Eigen::OuterStride<>(stride));
}
template <class T>
inline GauConstMap<T> gau_cmap(const T* p, Index rows, Index cols, Index stride) {
  return GauConstMap<T>(p, rows, cols, Eigen::OuterStride<>(stride));
}

/// Everything gau() resolves from the weights and options once, before any work.
struct GauPlan {
  Index hidden = 0, units = 0, key_size = 0, width = 0;  // D, e, s, 2e + s
  Normalization normalization = Normalization::SquaredRelu;
  bool causal = false;
  double scale = 1.0;  // logits = scale * q.k
  double train_length = 512, min_length = 16;
  std::optional<Index> relu2_length;
  bool zero_padded_rows = false;            // rows [key_length, n) of out are 0 and not computed
  const unsigned char* key_mask = nullptr;  // per-key visibility (nonzero = visible), or none
};

// Scratch is aligned to Eigen's packet alignment on purpose: Eigen peels unaligned leading elements of an
// array expression into scalar code, and its scalar exp is not bitwise equal to its vectorised one, so with
// malloc'd buffers the bits of swish(h) would depend on where the workspace happened to land.
template <class T>
using GauBuffer = std::vector<T, Eigen::aligned_allocator<T>>;

/// Scratch of one thread: a whole sequence's [u | v | z], q, k (used by slot 0 only when the tiles of one
/// sequence are shared between threads) and one query tile's scores and gated values.
template <class T>
struct GauSlot {
  GauBuffer<T> hidden, q, k, scores, gated;
  std::vector<Index> mask_prefix;
};

template <class T>
inline T* gau_grow(GauBuffer<T>& v, Index n) {
  if (v.size() < static_cast<std::size_t>(n)) v.resize(static_cast<std::size_t>(n));
  return v.data();
}

/// Loop over independent work items with a scratch slot per thread. Unlike parallel_for it opens the
/// OpenMP region even for a single item when several threads are available: inside a region Eigen's GEMM
/// runs serially, so no product ever depends on the thread count (bitwise determinism).
template <class F>
inline void gau_parallel(Index n, bool parallel, F&& f) {
#if defined(_OPENMP)
  if (parallel && n > 0 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
    for (Index i = 0; i < n; ++i) f(i, static_cast<Index>(omp_get_thread_num()));
    return;
  }
#else
  (void)parallel;
#endif
  for (Index i = 0; i < n; ++i) f(i, Index(0));
}

/// swish(t) = t * sigmoid(t) = t / (1 + exp(-t)) over n values; exp(-t) overflowing to inf gives -0.
template <class T>
inline void gau_swish(T* p, Index n) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> a(p, n);
  a = a / (T(1) + (-a).exp());
}

/// Phase 1 on rows [r0, r1): hidden = swish(x W_in + b_in), q/k = z * gamma + beta, RoPE at position r.
template <class T, class W>
void gau_project(const W& w, const GauPlan& p, View<const T> x, Index r0, Index r1, T* hidden, T* q, T* k,
                 const RopeTable<T>* rope) {
  const Index rows = r1 - r0, e = p.units, s = p.key_size, width = p.width;
  if (rows <= 0) return;
  auto h = gau_map(hidden + r0 * width, rows, width, width);
  h.noalias() = gau_cmap(x.row(r0), rows, p.hidden, x.stride) * w.w_in;
  const bool bias = w.b_in.size() != 0, offset_q = w.beta_q.size() != 0, offset_k = w.beta_k.size() != 0;
  for (Index r = 0; r < rows; ++r) {
    T* hr = hidden + (r0 + r) * width;
    if (bias) Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(hr, width) += w.b_in.array();
    gau_swish(hr, width);
    Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> z(hr + 2 * e, s);
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> qr(q + (r0 + r) * s, s), kr(k + (r0 + r) * s, s);
    if (offset_q) {
      qr = z * w.gamma_q.array() + w.beta_q.array();
    } else {
      qr = z * w.gamma_q.array();
    }
    if (offset_k) {
      kr = z * w.gamma_k.array() + w.beta_k.array();
    } else {
      kr = z * w.gamma_k.array();
    }
    // bert4keras applies RoPE after ScaleOffset, with positions arange(n) for both q and k.
    if (rope) rope_rows2(*rope, qr.data(), kr.data(), r0 + r);
  }
}

/// Normalises one row of logits in place (SPEC 3.3): keys [0, limit) pass key_length and causality, and
/// `count` of them (l) also pass the key mask; every other entry of [0, cols) becomes 0.
template <class T>
inline void gau_normalize_row(const GauPlan& p, T* a, Index limit, Index count, Index cols) {
  if (count > 0) {
    switch (p.normalization) {
      case Normalization::Softmax:
      case Normalization::SoftmaxPlus: {
        double c = p.scale;
        // Entropy-invariant softmax: logits * log_train(max(l, min_length)), l = keys this row sees.
        if (p.normalization == Normalization::SoftmaxPlus)
          c *= std::log(std::max(double(count), p.min_length)) / std::log(p.train_length);
        scale(static_cast<T>(c), a, limit);
        if (p.key_mask) {
          // Masked keys become -inf, which softmax_row turns into exact zeros.
          for (Index j = 0; j < limit; ++j)
            if (!p.key_mask[j]) a[j] = -std::numeric_limits<T>::infinity();
        }
        softmax_row(a, limit);
        break;
      }
      case Normalization::SquaredRelu: {
        const double length = p.relu2_length ? double(*p.relu2_length) : double(count);
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> r(a, limit);
        r = (r * static_cast<T>(p.scale)).max(T(0)).square() * static_cast<T>(1.0 / length);
        if (p.key_mask) {
          for (Index j = 0; j < limit; ++j)
            if (!p.key_mask[j]) a[j] = T(0);
        }
        break;
      }
    }
  } else {
    limit = 0;
  }
  std::fill(a + std::max<Index>(limit, 0), a + cols, T(0));
}

/// Phase 2 on query rows [r0, r1) of a sequence of n tokens whose keys [key_length, n) are padding:
/// out = (u * (A v)) W_out + b_out.
template <class T, class W>
void gau_attend(const W& w, const GauPlan& p, Index key_length, const Index* mask_prefix, Index r0, Index r1,
                const T* hidden, const T* q, const T* k, T* scores, T* gated, View<T> out) {
  const Index rows = r1 - r0, e = p.units, s = p.key_size, width = p.width;
  if (rows <= 0) return;
  // Keys any row of this tile sees: causal rows i see j <= i (self-attention, n == m).
  const Index keys = p.causal ? std::min(key_length, r1) : key_length;
  auto g = gau_map(gated, rows, e, e);
  if (keys <= 0) {
    g.setZero();
  } else {
    auto a = gau_map(scores, rows, keys, keys);
    a.noalias() = gau_cmap(q + r0 * s, rows, s, s) * gau_cmap(k, keys, s, s).transpose();
    for (Index r = 0; r < rows; ++r) {
      const Index limit = p.causal ? std::min(key_length, r0 + r + 1) : key_length;
      gau_normalize_row(p, scores + r * keys, limit, mask_prefix ? mask_prefix[limit] : limit, keys);
    }
    g.noalias() = a * gau_cmap(hidden + e, keys, e, width);
    g.array() *= gau_cmap(hidden + r0 * width, rows, e, width).array();
  }
  auto o = gau_map(out.row(r0), rows, p.hidden, out.stride);
  o.noalias() = g * w.w_out;
  if (w.b_out.size() != 0) o.rowwise() += w.b_out.transpose();
}

/// One sequence: x [n, D] -> out [n, D]. With `tiles_parallel` the row and query tiles are spread over the
/// threads (slot 0 holds the sequence buffers, slot t the tile of thread t); otherwise everything runs on
/// the calling thread in `slots[slot]`. The tile decomposition is the same either way, so both give the
/// same bits.
template <class T, class W>
void gau_sequence(const W& w, const GauPlan& p, View<const T> x, View<T> out, Index key_length,
                  const RopeTable<T>* rope, std::vector<GauSlot<T>>& slots, Index slot, bool tiles_parallel) {
  // With zero_padded_rows the query rows [key_length, n) are neither projected nor attended: no visible
  // key lies there, so nothing computed for the other rows depends on them.
  const Index n = p.zero_padded_rows ? key_length : x.rows;
  if (n > 0) {
    GauSlot<T>& own = slots[static_cast<std::size_t>(slot)];
    T* hidden = gau_grow(own.hidden, n * p.width);
    T* q = gau_grow(own.q, n * p.key_size);
    T* k = gau_grow(own.k, n * p.key_size);
    const Index proj_items = (n + kGauProjectionTile - 1) / kGauProjectionTile;
    gau_parallel(proj_items, tiles_parallel, [&](Index i, Index) {
      const Index r0 = i * kGauProjectionTile;
      gau_project(w, p, x, r0, std::min(n, r0 + kGauProjectionTile), hidden, q, k, rope);
    });
    // mask_prefix[j] = visible keys among [0, j): the l of a row whose keys end at j.
    const Index* mask_prefix = nullptr;
    if (p.key_mask) {
      own.mask_prefix.resize(static_cast<std::size_t>(x.rows + 1));
      own.mask_prefix[0] = 0;
      for (Index j = 0; j < x.rows; ++j)
        own.mask_prefix[static_cast<std::size_t>(j + 1)] =
            own.mask_prefix[static_cast<std::size_t>(j)] + (p.key_mask[j] != 0);
      mask_prefix = own.mask_prefix.data();
    }
    const Index query_items = (n + kGauQueryTile - 1) / kGauQueryTile;
    gau_parallel(query_items, tiles_parallel, [&](Index i, Index thread) {
      GauSlot<T>& mine = slots[static_cast<std::size_t>(tiles_parallel ? thread : slot)];
      const Index r0 = i * kGauQueryTile, r1 = std::min(n, r0 + kGauQueryTile);
      gau_attend(w, p, key_length, mask_prefix, r0, r1, hidden, q, k, mine.scores.data(), mine.gated.data(), out);
    });
  }
  // Last, because out may be x itself.
  for (Index r = n; r < x.rows; ++r) std::fill(out.row(r), out.row(r) + out.cols, T(0));
}

/// Sizes the tile buffers of every slot for sequences of up to n tokens (before any parallel region).
template <class T>
void gau_reserve_tiles(std::vector<GauSlot<T>>& slots, Index count, Index n, Index units) {
  if (static_cast<Index>(slots.size()) < count) slots.resize(static_cast<std::size_t>(count));
  const Index rows = std::min(n, kGauQueryTile);
  for (auto& slot : slots) {
    gau_grow(slot.scores, rows * n);
    gau_grow(slot.gated, rows * units);
  }
}

template <class T>
void gau_reserve_sequence(GauSlot<T>& slot, Index n, const GauPlan& p) {
  gau_grow(slot.hidden, n * p.width);
  gau_grow(slot.q, n * p.key_size);
  gau_grow(slot.k, n * p.key_size);
}

}  // namespace kexue::detail
