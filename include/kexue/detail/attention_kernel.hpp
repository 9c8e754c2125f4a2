// SPDX-License-Identifier: MIT
#pragma once
// The fused attention engine: FlashAttention-style online softmax over key tiles, on the CPU. One work item
// is (batch, head, tile of kTileRows query rows); it streams the visible key tiles once, never holding more
// than one kTileKeys x kTileRows block of logits, so memory is O((n + m) d) for the inputs plus a fixed
// per-thread scratch of (d + kTileKeys + dv + 4) x kTileRows elements.
//
// Tile sizes (float, AVX2: kTileRows = 24, kTileKeys = 64, d = dv = 64): the packed Q^T tile, the logits
// tile and the O^T accumulator are 6 KiB each and the 64-key K and V tiles 16 KiB each, so everything a
// key step touches fits in a 48 KiB L1 and comfortably in L2; K and V are streamed row by row and each
// element is used kTileRows times per load. 24 rows = 3 registers of rows is the micro-kernel's register
// block (see bcast_fma_block); a taller tile would need more accumulators than AVX2 has registers.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/attention_simd.hpp"
#include "kexue/detail/parallel.hpp"

namespace kexue::detail {

/// Normalisation of one attention row, mirroring kexue::Normalization (kept here so detail code does not
/// depend on the public header).
enum class AttnNorm { Softmax, SoftmaxPlus, SquaredRelu };

/// Everything the engine needs, already validated. Views are [batch, heads, seq, dim]; k and v may have
/// fewer heads (grouped-query attention, heads % kv_heads == 0).
template <class T>
struct AttentionPlan {
  TensorView<const T> q, k, v;
  TensorView<T> out;
  AttnNorm norm = AttnNorm::Softmax;
  bool causal = false;
  T scale = T(1);
  Index key_length = 0;        // keys [key_length, m) are invisible
  double log_train = 0;        // ln(train_length) (SoftmaxPlus)
  Index min_length = 16;       // SoftmaxPlus floor of l
  Index relu2_length = 0;      // SquaredRelu fixed L; 0: per-row visible count
  const unsigned char* mask = nullptr;  // per-key visibility, nonzero = visible
  Index mask_batch_stride = 0;          // 0: one mask for every batch; m: one mask per batch
};

/// Rows of one query tile, as SIMD registers of rows.
constexpr int kRowRegs = 3;
template <class T>
constexpr Index kTileRows = kRowRegs * kLanes<T>;
/// Keys per step: large enough to amortise the per-step softmax bookkeeping (row max, rescale of O), small
/// enough that the K and V tiles stay in L1 while the micro-kernels sweep them.
constexpr Index kTileKeys = 64;

/// Per-thread scratch, grown on first use for a given (d, dv) and then reused: no allocation per call.
template <class T>
struct AttentionScratch {
  std::vector<T> qt, st, ot, stats;
  void ensure(Index d, Index dv) {
    const Index W = kTileRows<T>;
    if (Index(qt.size()) < d * W) qt.resize(static_cast<std::size_t>(d * W));
    if (Index(st.size()) < kTileKeys * W) st.resize(static_cast<std::size_t>(kTileKeys * W));
    if (Index(ot.size()) < dv * W) ot.resize(static_cast<std::size_t>(dv * W));
    if (Index(stats.size()) < 6 * W) stats.resize(static_cast<std::size_t>(6 * W));
  }
};

template <class T>
inline AttentionScratch<T>& attention_scratch() {
  thread_local AttentionScratch<T> s;
  return s;
}

/// Keys visible to query row i (0-based) before the arbitrary mask: [0, limit).
inline Index visible_limit(Index i, Index n, Index m, Index key_length, bool causal) {
  if (!causal) return key_length;
  return std::min(key_length, std::max<Index>(0, i + (m - n) + 1));
}

/// Tiles with at most this many rows go through the one-row path: below it, the rows-as-lanes micro-kernels
/// would spend most of their lanes on padding rows (a decoding step has one row in a 24-row tile).
constexpr Index kSmallTileRows = 2;

/// One (batch, head, query tile) work item.
template <class T>
inline void attention_tile(const AttentionPlan<T>& p, Index b, Index h, Index i0) {
  constexpr Index W = kTileRows<T>;
  constexpr int NR = kRowRegs;
  const Index n = p.q.seq(), m = p.k.seq(), d = p.q.dim(), dv = p.v.dim();
  const Index hk = h / (p.q.heads() / p.k.heads());
  const Index rows = std::min(W, n - i0);
  const unsigned char* mask = p.mask ? p.mask + b * p.mask_batch_stride : nullptr;

  AttentionScratch<T>& s = attention_scratch<T>();
  s.ensure(d, dv);
  T* qt = s.qt.data();
  T* st = s.st.data();
  T* ot = s.ot.data();
  T* rowscale = s.stats.data();
  T* mrow = rowscale + W;
  T* lrow = mrow + W;
  T* alpha = lrow + W;
  T* tmax = alpha + W;
  T* fin = tmax + W;

  if (rows <= kSmallTileRows) {
    const T* kb = p.k.row(b, hk, 0);
    const T* vb = p.v.row(b, hk, 0);
    for (Index r = 0; r < rows; ++r) {
      const Index i = i0 + r;
      const Index lim = visible_limit(i, n, m, p.key_length, p.causal);
      Index count = lim;
      if (mask) {
        count = 0;
        for (Index j = 0; j < lim; ++j) count += mask[j] != 0;
      }
      T rs = p.scale, inv = T(0);
      if (p.norm == AttnNorm::SoftmaxPlus)
        rs = T(double(p.scale) * std::log(std::max(double(count), double(p.min_length))) / p.log_train);
      if (p.norm == AttnNorm::SquaredRelu) {
        const double L = p.relu2_length > 0 ? double(p.relu2_length) : double(count);
        inv = count > 0 && L > 0 ? T(1.0 / L) : T(0);
      }
      attention_one_row<T, kTileKeys>(p.q.row(b, h, i), d, kb, p.k.strides[2], vb, p.v.strides[2], dv, lim, mask, rs,
                                      p.norm == AttnNorm::SquaredRelu, inv, st, ot, p.out.row(b, h, i));
    }
    return;
  }

  // Q^T tile; rows past n are zero (their results are computed and dropped).
  for (Index r = 0; r < W; ++r) {
    if (r < rows) {
      const T* qr = p.q.row(b, h, i0 + r);
      for (Index c = 0; c < d; ++c) qt[c * W + r] = qr[c];
    } else {
      for (Index c = 0; c < d; ++c) qt[c * W + r] = T(0);
    }
  }

  // Visible-key count l of each row (SoftmaxPlus scale, SquaredRelu divisor), incrementally: the limit
  // never decreases with the row index.
  {
    Index pos = 0, count = 0;
    for (Index r = 0; r < W; ++r) {
      const Index lim = r < rows ? visible_limit(i0 + r, n, m, p.key_length, p.causal) : pos;
      if (mask) {
        for (; pos < lim; ++pos) count += mask[pos] != 0;
      } else {
        pos = lim;
        count = lim;
      }
      const double l = double(count);
      switch (p.norm) {
        case AttnNorm::Softmax: rowscale[r] = p.scale; break;
        case AttnNorm::SoftmaxPlus:
          rowscale[r] = T(double(p.scale) * std::log(std::max(l, double(p.min_length))) / p.log_train);
          break;
        case AttnNorm::SquaredRelu: {
          const double L = p.relu2_length > 0 ? double(p.relu2_length) : l;
          rowscale[r] = p.scale;
          fin[r] = L > 0 ? T(1.0 / L) : T(0);
          break;
        }
      }
      mrow[r] = -std::numeric_limits<T>::infinity();
      lrow[r] = T(0);
      alpha[r] = T(1);
    }
  }
  std::fill(ot, ot + dv * W, T(0));

  const Index off = m - n;
  const Index j_end = rows > 0 ? visible_limit(i0 + rows - 1, n, m, p.key_length, p.causal) : 0;
  const T* kbase = p.k.row(b, hk, 0);
  const T* vbase = p.v.row(b, hk, 0);
  const Index ldk = p.k.strides[2], ldv = p.v.strides[2];
  const bool relu2 = p.norm == AttnNorm::SquaredRelu;

  for (Index j0 = 0; j0 < j_end; j0 += kTileKeys) {
    const Index nb = std::min(kTileKeys, j_end - j0);
    TileMask tm;
    if (mask) {
      bool any = false, all = true;
      for (Index j = 0; j < nb; ++j) {
        any |= mask[j0 + j] != 0;
        all &= mask[j0 + j] != 0;
      }
      if (!any) continue;  // nothing visible in this tile for any row
      if (!all) tm.keys = mask + j0;
    }
    // Causal: the tile needs the per-element rule only if its last key is past the first row's limit.
    if (p.causal && j0 + nb - 1 > i0 + off) {
      tm.causal = true;
      tm.first_key_shift = j0 - off;
    }

    bcast_fma<T, NR, Combine::Store>(qt, W, kbase + j0 * ldk, ldk, 1, d, nb, st, W, nullptr);
    if (relu2) {
      relu2_tile<T, NR>(st, nb, p.scale, tm, i0);
    } else {
      softmax_tile_logits<T, NR>(st, nb, rowscale, tm, i0, tmax);
      softmax_tile_exp<T, NR>(st, nb, tmax, mrow, lrow, alpha);
    }
    bcast_fma<T, NR, Combine::ScaleAdd>(st, W, vbase + j0 * ldv, 1, ldv, nb, dv, ot, W, alpha);
  }

  if (!relu2) {
    for (Index r = 0; r < W; ++r) fin[r] = lrow[r] > T(0) ? T(1) / lrow[r] : T(0);
  }
  for (Index r = 0; r < rows; ++r) {
    T* o = p.out.row(b, h, i0 + r);
    const T f = fin[r];
    for (Index e = 0; e < dv; ++e) o[e] = ot[e * W + r] * f;
  }
}

/// Runs every (batch, head, query tile) item, in parallel when OpenMP is on. Each output row is produced by
/// exactly one item with a fixed key order, so results do not depend on the thread count.
template <class T>
inline void run_attention(const AttentionPlan<T>& p) {
  const Index B = p.q.batch(), H = p.q.heads(), n = p.q.seq();
  const Index tiles = (n + kTileRows<T> - 1) / kTileRows<T>;
  const Index items = B * H * tiles;
  if (items == 0) return;
  parallel_for(items, [&](Index it) {
    const Index tile = it % tiles;
    const Index bh = it / tiles;
    attention_tile(p, bh / H, bh % H, tile * kTileRows<T>);
  });
}

}  // namespace kexue::detail
