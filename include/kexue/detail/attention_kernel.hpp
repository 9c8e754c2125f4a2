// SPDX-License-Identifier: MIT
#pragma once
// The fused attention engine: FlashAttention-style online softmax over key tiles, on the CPU. One work item
// is (batch, head, item rows of queries), split into sub-tiles of kTileRows rows; it streams the visible key
// tiles once, and each sub-tile holds at most one kTileKeys x kTileRows block of logits, so memory is
// O((n + m) d) for the inputs plus a fixed per-thread scratch of (d + dv + 6) x item rows + kTileKeys x
// kTileRows elements (at most ~110 KiB for float at d = dv = 64 with a 1 MiB L2), allocated once per thread.
//
// Tile sizes. kTileRows = kRowRegs (3) registers of rows: the micro-kernel's register block (bcast_fma_block),
// 24 rows with 8-float registers, 48 with 16. kTileKeys = 64 keys per online-softmax step, on every machine: the
// key tiles fix the order of the softmax updates, so they are compile-time constants and a result does not depend
// on the machine's caches. The sub-tiles per item are chosen at run time from the L2 size
// (attention_sub_tiles): an item's packed Q^T and O^T stay in L2 while each 64-key K and V tile (16 KiB each at
// d = 64) is used by all its sub-tiles, so K and V travel from L3 or DRAM once per item, not once per sub-tile.
// Within one (key tile, sub-tile) step the packed Q^T, the logits tile and the O^T block (6 or 12 KiB each)
// are reused from L1 by every register block, and K and V are broadcast from their rows.
//
// Masks skip work. Every structural mask is a per-row key window [lo_i, hi_i) (key_length, causal, reverse causal,
// UniLM segments; see RowWindows), and both ends never decrease with the row, so a sub-tile's rows together see
// the keys [lo of its first row, hi of its last row): it starts at the key tile holding the first and stops at the
// last, and only the key tiles that cross some row's window edge pay for the per-element test. Causal, reverse
// causal and UniLM attention at n = m therefore cost about half of bidirectional attention.
//
// Decoding (n <= 2 query rows per head) takes the one-row path instead (attention_rows in attention_simd.hpp):
// the rows of all query heads that share a KV head form one row set, so a GQA/MQA step streams each K and V row
// of the cache once per KV head; each row keeps the arithmetic it has alone, so grouping never changes bits.
//
// Hidden keys never reach a row: keys past key_length are not read; a hidden key's logit is replaced by -inf
// (or its relu^2 weight by 0) whatever q.k gave, so a NaN or inf k cannot leak into a row max or sum; and in
// O += P V a hidden key's weight is an exact 0, which keeps V out only while V is finite (0 * inf = NaN). So
// the V rows of the keys that some row of a work item cannot see are checked once per key tile (a few hundred
// loads against the tile's 2 x 64 x 96 x d FMAs), and only a tile with a non-finite one there runs the masked
// P V kernel, which selects instead of multiplying. Fully visible tiles never look at V beyond the product.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/attention_simd.hpp"
#include "kexue/detail/cache_info.hpp"
#include "kexue/detail/parallel.hpp"

namespace kexue::detail {

/// Normalisation of one attention row, mirroring kexue::Normalization (kept here so detail code does not
/// depend on the public header).
enum class AttnNorm { Softmax, SoftmaxPlus, SquaredRelu };

/// Everything the engine needs, already validated. Views are [batch, heads, seq, dim]; k and v may have
/// fewer heads (grouped-query attention, heads % kv_heads == 0). S is the storage type of k and v: T, or
/// (a 16-bit KV cache, T = float) Eigen::half / Eigen::bfloat16, widened to T as the kernel reads them.
template <class T, class S = T>
struct AttentionPlan {
  TensorView<const T> q;
  TensorView<const S> k, v;
  TensorView<T> out;
  AttnNorm norm = AttnNorm::Softmax;
  bool causal = false;
  bool reverse = false;        // reverse causal: query i sees keys j >= i (n == m)
  T scale = T(1);
  Index key_length = 0;        // keys [key_length, m) are invisible
  double log_train = 0;        // ln(train_length) (SoftmaxPlus)
  Index min_length = 16;       // SoftmaxPlus floor of l
  Index relu2_length = 0;      // SquaredRelu fixed L; 0: per-row visible count
  const unsigned char* mask = nullptr;  // per-key visibility, nonzero = visible
  Index mask_batch_stride = 0;          // 0: one mask for every batch; m: one mask per batch
  const std::int32_t* seg32 = nullptr;  // UniLM segment ids (one of seg32 / seg64, or neither), n == m
  const std::int64_t* seg64 = nullptr;
  Index seg_batch_stride = 0;           // 0: one segment row for every batch; m: one per batch
  const unsigned char* head_dirs = nullptr;  // per query head: a HeadDir, overriding causal / reverse
  // q (widened into this plan's float q, so exactly bf16 values), k and v all bf16: the tiled path takes q k^T and
  // P V as bf16 pairs (pair_dot: vdpbf16ps where kPreferBf16Dot), with P rounded to bf16 (pack_weight_pairs).
  bool bf16_pairs = false;
};

/// Mask direction of one head (kexue::HeadDirection's values).
enum class HeadDir : unsigned char { Bidirectional = 0, Causal = 1, ReverseCausal = 2 };

/// The structural mask of one (batch, head): the row windows of RowWindows.
struct WindowRule {
  Index n = 0, m = 0, key_length = 0;
  bool causal = false, reverse = false;
  const std::int32_t* seg32 = nullptr;
  const std::int64_t* seg64 = nullptr;
};

template <class T, class S>
inline WindowRule window_rule(const AttentionPlan<T, S>& p, Index b, Index h) {
  WindowRule w;
  w.n = p.q.seq();
  w.m = p.k.seq();
  w.key_length = p.key_length;
  w.causal = p.causal;
  w.reverse = p.reverse;
  if (p.head_dirs) {
    const auto dir = static_cast<HeadDir>(p.head_dirs[h]);
    w.causal = dir == HeadDir::Causal;
    w.reverse = dir == HeadDir::ReverseCausal;
  }
  if (p.seg32) w.seg32 = p.seg32 + b * p.seg_batch_stride;
  if (p.seg64) w.seg64 = p.seg64 + b * p.seg_batch_stride;
  return w;
}

/// The key window [lo, hi) of each query row and its visible-key count l (through the per-key mask too), for rows
/// visited in nondecreasing order, in amortised O(1) per row (O(m) per cursor). The window is
///   lo = i under reverse causal, else 0;
///   hi = min(key_length, i + 1 + m - n under causal, first j > i with segment id != 0 under segments (UniLM:
///        c[j] <= c[i] with c the cumulative sum of non-negative ids holds exactly for j below that), m).
/// Both ends never decrease with i, which is what lets the kernel cut every sub-tile to one key range.
/// A row with hi <= lo sees nothing (count 0).
class RowWindows {
 public:
  RowWindows(const WindowRule& w, const unsigned char* mask) : w_(w), mask_(mask) {}
  void at(Index i, Index& lo, Index& hi, Index& count) {
    hi = w_.key_length;
    if (w_.causal) hi = std::min(hi, std::max<Index>(0, i + (w_.m - w_.n) + 1));
    if (w_.seg32 || w_.seg64) {
      if (nz_ <= i) nz_ = i + 1;
      while (nz_ < w_.m && !seg_nonzero(nz_)) ++nz_;
      hi = std::min(hi, nz_);
    }
    lo = w_.reverse ? std::min(i, w_.m) : 0;
    if (!mask_) {
      count = std::max<Index>(0, hi - lo);
      return;
    }
    for (; plo_ < lo; ++plo_) clo_ += mask_[plo_] != 0;
    for (; phi_ < hi; ++phi_) chi_ += mask_[phi_] != 0;
    count = hi > lo ? chi_ - clo_ : 0;
  }

 private:
  bool seg_nonzero(Index j) const { return w_.seg32 ? w_.seg32[j] != 0 : w_.seg64[j] != 0; }
  WindowRule w_;
  const unsigned char* mask_;
  Index nz_ = 0, plo_ = 0, clo_ = 0, phi_ = 0, chi_ = 0;
};

/// Rows of one query sub-tile, as SIMD registers of rows (the micro-kernels' register block).
constexpr int kRowRegs = 3;
template <class T>
constexpr Index kTileRows = kRowRegs * kLanes<T>;
/// Sub-tiles per work item, at most. Each K/V key tile is loaded once per work item and used by all its sub-tiles
/// while it is hot in L1/L2, so K and V stream from L3/DRAM once per item: once a head's K and V outgrow L2
/// (n = 8192 at d = 64: 4 MiB), taller items mean fewer passes over them. The count actually used is chosen at run
/// time from the L2 size (attention_sub_tiles); it never changes a result, since every row's arithmetic depends
/// only on the key tiles, which are the same whatever item the row falls in.
constexpr Index kMaxSubTiles = 16;
/// Share of L2 given to the packed Q^T, O^T and statistics of one work item: the rest holds the K and V tiles,
/// the logits tile and whatever the other rows of the program keep there.
constexpr std::size_t kItemL2Share = 8;

/// Sub-tiles per work item for head sizes (d, dv): as many as fit in 1 / kItemL2Share of L2, between 1 and
/// kMaxSubTiles (4 at d = dv = 64 on AVX-512 with a 1 MiB L2).
template <class T>
inline Index attention_sub_tiles(Index d, Index dv) {
  const std::size_t per = std::size_t(d + dv + 6) * std::size_t(kTileRows<T>) * sizeof(T);
  const std::size_t fit = cache_info().l2 / kItemL2Share / per;
  return std::max<Index>(1, std::min<Index>(kMaxSubTiles, Index(fit)));
}
/// Query rows per work item.
template <class T>
inline Index attention_item_rows(Index d, Index dv) {
  return attention_sub_tiles<T>(d, dv) * kTileRows<T>;
}
/// Keys per step: large enough to amortise the per-step softmax bookkeeping (row max, rescale of O), small
/// enough that the K and V tiles (16 KiB each at d = 64) stay in L1 while the micro-kernels sweep them.
constexpr Index kTileKeys = 64;
/// Per-row statistics kept per sub-tile: rowscale, running max, running sum, rescale factor, tile max, final factor.
constexpr Index kStats = 6;

/// Per-thread scratch, grown on first use for a given (d, dv) and then reused: no allocation per call.
template <class T>
struct AttentionScratch {
  AlignedVector<T> qt, st, ot, stats;  // 64-byte aligned: every micro-kernel load of them is a whole register
  AlignedVector<T> kw, vw;             // 16-bit K/V: the current key tile widened (kTileKeys x d, x dv)
  // bf16 pairs (AttentionPlan::bf16_pairs): Q^T [ceil(d / 2)][rows] per sub-tile, the key tile's K [keys][ceil(d
  // / 2)] and V [keys / 2][dv], and the weights P^T [keys / 2][rows].
  AlignedVector<std::uint32_t> qp, kp, vp, pp;
  std::vector<Index> lo, hi;           // each row's key window [lo, hi)
  void ensure(Index d, Index dv, Index sub_tiles) {
    const Index W = kTileRows<T> * sub_tiles;
    if (Index(lo.size()) < W) {
      lo.resize(static_cast<std::size_t>(W));
      hi.resize(static_cast<std::size_t>(W));
    }
    if (Index(qt.size()) < d * W) qt.resize(static_cast<std::size_t>(d * W));
    if (Index(st.size()) < kTileKeys * kTileRows<T>) st.resize(static_cast<std::size_t>(kTileKeys * kTileRows<T>));
    if (Index(ot.size()) < dv * W) ot.resize(static_cast<std::size_t>(dv * W));
    if (Index(stats.size()) < kStats * W) stats.resize(static_cast<std::size_t>(kStats * W));
  }
  void ensure_pairs(Index d, Index dv, Index sub_tiles) {
    const Index d2 = (d + 1) / 2, W = kTileRows<T>;
    auto grow = [](AlignedVector<std::uint32_t>& v, Index size) {
      if (Index(v.size()) < size) v.resize(static_cast<std::size_t>(size));
    };
    grow(qp, d2 * W * sub_tiles);
    grow(kp, kTileKeys * d2);
    grow(vp, kTileKeys / 2 * dv);
    grow(pp, kTileKeys / 2 * W);
  }
  void ensure_widened(Index d, Index dv) {
    if (Index(kw.size()) < kTileKeys * d) kw.resize(static_cast<std::size_t>(kTileKeys * d));
    if (Index(vw.size()) < kTileKeys * dv) vw.resize(static_cast<std::size_t>(kTileKeys * dv));
  }
};

template <class T>
inline AttentionScratch<T>& attention_scratch() {
  thread_local AttentionScratch<T> s;
  return s;
}

/// Keys visible to query row i (0-based) under key_length and causal alone: [0, limit) (RowWindows has every mask).
inline Index visible_limit(Index i, Index n, Index m, Index key_length, bool causal) {
  if (!causal) return key_length;
  return std::min(key_length, std::max<Index>(0, i + (m - n) + 1));
}

/// Work items with at most this many rows go through the one-row path: below it, the rows-as-lanes
/// micro-kernels would spend most of their lanes on padding rows (a decoding step has one row in a 24-row tile).
constexpr Index kSmallTileRows = 2;

/// Visible-key count and the derived per-row factors of row i (SoftmaxPlus scale, SquaredRelu 1/L).
template <class T, class S>
inline void row_factors(const AttentionPlan<T, S>& p, Index count, T& rowscale, T& fin) {
  rowscale = p.scale;
  fin = T(0);
  if (p.norm == AttnNorm::SoftmaxPlus)
    rowscale = T(double(p.scale) * std::log(std::max(double(count), double(p.min_length))) / p.log_train);
  if (p.norm == AttnNorm::SquaredRelu) {
    const double L = p.relu2_length > 0 ? double(p.relu2_length) : double(count);
    fin = count > 0 && L > 0 ? T(1.0 / L) : T(0);
  }
}

/// Per-thread row tables of the one-row path (pointers and per-row factors of a RowSet).
template <class T>
struct SmallItemScratch {
  std::vector<const T*> q;
  std::vector<T*> out;
  std::vector<Index> lo, lim;
  std::vector<T> rowscale, inv;
  RowSetScratch<T> rows;
  void ensure(Index r) {
    const auto n = static_cast<std::size_t>(r);
    if (q.size() < n) {
      q.resize(n);
      out.resize(n);
      lo.resize(n);
      lim.resize(n);
      rowscale.resize(n);
      inv.resize(n);
    }
  }
};

template <class T>
inline SmallItemScratch<T>& small_item_scratch() {
  thread_local SmallItemScratch<T> s;
  return s;
}

/// Query rows [i0, i0 + rows) (rows <= kSmallTileRows) of the query heads [h0, h1) of batch b, which must share
/// one KV head, through the one-row kernel as one row set: a decoding step of a whole GQA/MQA group reads each
/// K and V row once instead of once per query head. Rows are head-major; every row gets the bits it gets alone.
template <class T, class S>
inline void attention_small_item(const AttentionPlan<T, S>& p, Index b, Index h0, Index h1, Index i0, Index rows) {
  const Index n = p.q.seq(), m = p.k.seq(), d = p.q.dim(), dv = p.v.dim();
  (void)n;
  (void)m;
  const Index hk = h0 / (p.q.heads() / p.k.heads());
  const unsigned char* mask = p.mask ? p.mask + b * p.mask_batch_stride : nullptr;
  SmallItemScratch<T>& s = small_item_scratch<T>();
  const Index R = (h1 - h0) * rows;
  s.ensure(R);
  // The windows, counts and factors depend on the row only, not on the head, unless heads have directions.
  for (Index h = h0; h < h1; ++h) {
    if (h == h0 || p.head_dirs) {
      RowWindows win(window_rule(p, b, h), mask);
      for (Index r = 0; r < rows; ++r) {
        const Index x = (h - h0) * rows + r;
        Index count;
        win.at(i0 + r, s.lo[x], s.lim[x], count);
        row_factors(p, count, s.rowscale[x], s.inv[x]);
      }
    } else {
      for (Index r = 0; r < rows; ++r) {
        const Index x = (h - h0) * rows + r;
        s.lo[x] = s.lo[r];
        s.lim[x] = s.lim[r];
        s.rowscale[x] = s.rowscale[r];
        s.inv[x] = s.inv[r];
      }
    }
    for (Index r = 0; r < rows; ++r) {
      const Index x = (h - h0) * rows + r;
      s.q[x] = p.q.row(b, h, i0 + r);
      s.out[x] = p.out.row(b, h, i0 + r);
    }
  }
  RowSet<T> set;
  set.rows = R;
  set.q = s.q.data();
  set.out = s.out.data();
  set.lo = s.lo.data();
  set.lim = s.lim.data();
  set.rowscale = s.rowscale.data();
  set.relu2_inv = s.inv.data();
  attention_rows<T, kTileKeys>(set, d, p.k.row(b, hk, 0), p.k.strides[2], p.v.row(b, hk, 0), p.v.strides[2], dv,
                               mask, p.norm == AttnNorm::SquaredRelu, s.rows);
}

/// One (batch, head, item_rows query rows) work item; item_rows = attention_item_rows<T>(d, dv).
/// 16-bit K/V (S != T): each key tile's K and V rows are widened once into L1 scratch (kw, vw) and every sub-tile
/// runs the float micro-kernels on it, so the result is the float kernel's on the widened inputs bit for bit
/// (the tile is used by all the item's sub-tiles: one conversion per 2 x 64 x d x rows FMAs).
template <class T, class S>
inline void attention_tile(const AttentionPlan<T, S>& p, Index b, Index h, Index i0, Index item_rows) {
  constexpr Index W = kTileRows<T>;
  constexpr int NR = kRowRegs;
  const Index n = p.q.seq(), d = p.q.dim(), dv = p.v.dim();
  const Index hk = h / (p.q.heads() / p.k.heads());
  const Index rows = std::min(item_rows, n - i0);
  const unsigned char* mask = p.mask ? p.mask + b * p.mask_batch_stride : nullptr;
  const S* kbase = p.k.row(b, hk, 0);
  const S* vbase = p.v.row(b, hk, 0);
  const Index ldk = p.k.strides[2], ldv = p.v.strides[2];
  constexpr bool kWiden = !std::is_same<S, T>::value;
  // bf16 pairs (AttentionPlan::bf16_pairs): q k^T and P V on the bf16 values themselves, two per 32-bit lane.
  constexpr bool kPairsType = std::is_same<S, Eigen::bfloat16>::value && std::is_same<T, float>::value;
  const bool pairs = kPairsType && p.bf16_pairs;
  const Index d2 = (d + 1) / 2;

  AttentionScratch<T>& s = attention_scratch<T>();
  s.ensure(d, dv, (item_rows + W - 1) / W);
  if constexpr (kWiden) {
    if (pairs)
      s.ensure_pairs(d, dv, (item_rows + W - 1) / W);
    else
      s.ensure_widened(d, dv);
  }
  T* st = s.st.data();

  // A tail item of one or two rows takes the one-row path, except in the bf16-pairs form: there every row of an
  // n > 2 call takes the pairs products, whichever item (sized from the machine's L2) it falls in.
  if (rows <= kSmallTileRows && !pairs) {
    attention_small_item(p, b, h, h + 1, i0, rows);
    return;
  }

  const Index nsub = (rows + W - 1) / W;
  // Sub-tile g: rows [i0 + g W, i0 + g W + rows_g); its Q^T, O^T, statistics and row windows live at offset g.
  auto qt_of = [&](Index g) { return s.qt.data() + g * d * W; };
  auto qp_of = [&](Index g) { return s.qp.data() + g * d2 * W; };
  auto ot_of = [&](Index g) { return s.ot.data() + g * dv * W; };
  auto stats_of = [&](Index g) { return s.stats.data() + g * kStats * W; };
  auto lo_of = [&](Index g) { return s.lo.data() + g * W; };
  auto hi_of = [&](Index g) { return s.hi.data() + g * W; };
  // Per sub-tile: the keys some row sees [lo of the first row, hi of the last) and the keys every row sees
  // [lo of the last row, hi of the first): tiles inside the latter need no per-element test.
  Index lo_first[kMaxSubTiles] = {}, hi_last[kMaxSubTiles] = {}, lo_last[kMaxSubTiles] = {},
        hi_first[kMaxSubTiles] = {};

  {
    RowWindows win(window_rule(p, b, h), mask);
    Index lo = 0, hi = 0, count = 0;
    for (Index g = 0; g < nsub; ++g) {
      const Index r0 = g * W;
      const Index rows_g = std::min(W, rows - r0);
      T* qt = qt_of(g);
      T* rowscale = stats_of(g);
      T* mrow = rowscale + W;
      T* lrow = mrow + W;
      T* alpha = lrow + W;
      T* fin = alpha + 2 * W;
      Index* lo_g = lo_of(g);
      Index* hi_g = hi_of(g);
      // Q^T sub-tile; rows past n are zero (their results are computed and dropped) and take the window of the
      // last real row, so they never widen the sub-tile's key range or force a per-element test.
      for (Index r = 0; r < W; ++r) {
        if (r < rows_g) {
          const T* qr = p.q.row(b, h, i0 + r0 + r);
          for (Index c = 0; c < d; ++c) qt[c * W + r] = qr[c];
          win.at(i0 + r0 + r, lo, hi, count);
        } else {
          for (Index c = 0; c < d; ++c) qt[c * W + r] = T(0);
        }
        lo_g[r] = lo;
        hi_g[r] = hi;  // may be below lo: an empty window
        row_factors(p, count, rowscale[r], fin[r]);
        mrow[r] = -std::numeric_limits<T>::infinity();
        lrow[r] = T(0);
        alpha[r] = T(1);
      }
      if (pairs) {
        // Q^T as bf16 pairs of consecutive columns (exact: q holds bf16 values), an odd d padded with 0.
        std::uint32_t* qp = qp_of(g);
        for (Index c2 = 0; c2 < d2; ++c2)
          for (Index r = 0; r < W; ++r) {
            const std::uint32_t even = generic::float_bits(float(qt[2 * c2 * W + r])) >> 16;
            const std::uint32_t odd = 2 * c2 + 1 < d ? generic::float_bits(float(qt[(2 * c2 + 1) * W + r])) : 0u;
            qp[c2 * W + r] = even | (odd & 0xFFFF0000u);
          }
      }
      lo_first[g] = lo_g[0];
      hi_last[g] = hi_g[rows_g - 1];
      lo_last[g] = lo_g[rows_g - 1];
      hi_first[g] = hi_g[0];
      std::fill(ot_of(g), ot_of(g) + dv * W, T(0));
    }
  }

  // The item's key range, from the key tile holding its first visible key: tiles are aligned to multiples of
  // kTileKeys from key 0 whatever the item, so a row's softmax updates do not depend on which item holds it (a
  // tile a row cannot see at all leaves its state bit for bit unchanged).
  const Index j_begin = lo_first[0] / kTileKeys * kTileKeys;
  const Index j_end = hi_last[nsub - 1];
  const Index item_lo_max = lo_last[nsub - 1], item_hi_min = hi_first[0];
  const bool relu2 = p.norm == AttnNorm::SquaredRelu;
  alignas(64) T rlo[W], rhi[W];

  for (Index j0 = j_begin; j0 < j_end; j0 += kTileKeys) {
    const Index nb_all = std::min(kTileKeys, j_end - j0);
    // The key tile as the micro-kernels read it: the caller's rows, or (16-bit K/V) their widened copy.
    const T* ktile;
    const T* vtile;
    Index ldkt, ldvt;
    const unsigned char* tile_keys = nullptr;
    if (mask) {
      bool any = false, all = true;
      for (Index j = 0; j < nb_all; ++j) {
        any |= mask[j0 + j] != 0;
        all &= mask[j0 + j] != 0;
      }
      if (!any) continue;  // nothing visible in this key tile for any row
      if (!all) tile_keys = mask + j0;
    }
    if constexpr (kPairsType) {
      if (pairs) {
        // K rows as pairs of consecutive columns (a bf16 row is already that, read as 32-bit words); V as pairs of
        // consecutive keys, an odd key count padded with a zero row.
        for (Index j = 0; j < nb_all; ++j) {
          const S* kr = kbase + (j0 + j) * ldk;
          std::uint32_t* kq = s.kp.data() + j * d2;
          for (Index c2 = 0; c2 < d2; ++c2)
            kq[c2] = std::uint32_t(generic::bits16(kr[2 * c2])) |
                     (2 * c2 + 1 < d ? std::uint32_t(generic::bits16(kr[2 * c2 + 1])) << 16 : 0u);
        }
        for (Index t = 0; 2 * t < nb_all; ++t) {
          const S* ve = vbase + (j0 + 2 * t) * ldv;
          const S* vo = 2 * t + 1 < nb_all ? ve + ldv : nullptr;
          std::uint32_t* vq = s.vp.data() + t * dv;
          for (Index e = 0; e < dv; ++e)
            vq[e] = std::uint32_t(generic::bits16(ve[e])) | (vo ? std::uint32_t(generic::bits16(vo[e])) << 16 : 0u);
        }
      }
    }
    if (pairs) {
      ktile = vtile = nullptr;  // the pair-mode products read s.kp and s.vp
      ldkt = ldvt = 0;
    } else if constexpr (kWiden) {
      widen_rows(kbase + j0 * ldk, ldk, nb_all, d, s.kw.data(), d);
      widen_rows(vbase + j0 * ldv, ldv, nb_all, dv, s.vw.data(), dv);
      ktile = s.kw.data();
      vtile = s.vw.data();
      ldkt = d;
      ldvt = dv;
    } else {
      ktile = kbase + j0 * ldk;
      vtile = vbase + j0 * ldv;
      ldkt = ldk;
      ldvt = ldv;
    }
    // A hidden key's weight is an exact 0, but the P V product would still form 0 * v, which is NaN when v is
    // inf or NaN (an uninitialised padding row, a masked garbage key, a future position). Keys past key_length
    // are never read; the keys of this tile that some row of the item cannot see (masked ones, and those outside
    // some row's window) are checked here, and only if one of their V rows is not finite do the sub-tiles that
    // mask this tile take the masked product. Finite V keeps the plain kernel and its bits.
    const auto v_finite = [&](Index j) {
      if constexpr (kPairsType) {
        if (pairs) {
          const S* vr = vbase + (j0 + j) * ldv;
          for (Index e = 0; e < dv; ++e)
            if ((generic::bits16(vr[e]) & 0x7F80u) == 0x7F80u) return false;
          return true;
        }
      }
      return all_finite(vtile + j * ldvt, dv);
    };
    bool hidden_v_nonfinite = false;
    if (tile_keys || j0 < item_lo_max || j0 + nb_all > item_hi_min) {
      for (Index j = 0; j < nb_all && !hidden_v_nonfinite; ++j) {
        const Index jj = j0 + j;
        const bool hidden = (tile_keys && !tile_keys[j]) || jj < item_lo_max || jj >= item_hi_min;
        if (hidden && !v_finite(j)) hidden_v_nonfinite = true;
      }
    }
    for (Index g = 0; g < nsub; ++g) {
      if (j0 >= hi_last[g] || j0 + kTileKeys <= lo_first[g]) continue;  // no row of this sub-tile sees these keys
      const Index nb = std::min(kTileKeys, hi_last[g] - j0);
      T* rowscale = stats_of(g);
      T* mrow = rowscale + W;
      T* lrow = mrow + W;
      T* alpha = lrow + W;
      T* tmax = alpha + W;
      TileMask<T> tm;
      tm.keys = tile_keys;
      // The per-element window test only where the tile crosses some row's window edge, with the edges relative
      // to the tile (exact in T for any m) and clamped to [0, kTileKeys].
      const bool need_lo = j0 < lo_last[g], need_hi = j0 + nb > hi_first[g];
      if (need_lo || need_hi) {
        const Index* lo_g = lo_of(g);
        const Index* hi_g = hi_of(g);
        for (Index r = 0; r < W; ++r) {
          rlo[r] = T(std::min(kTileKeys, std::max<Index>(0, lo_g[r] - j0)));
          rhi[r] = T(std::min(kTileKeys, std::max<Index>(0, hi_g[r] - j0)));
        }
        if (need_lo) tm.lo = rlo;
        if (need_hi) tm.hi = rhi;
      }
      if constexpr (kPairsType) {
        if (pairs) {
          pair_dot<NR, Combine::Store>(qp_of(g), W, s.kp.data(), d2, 1, d2, nb, st, W, nullptr);
        }
      }
      if (!pairs) bcast_fma<T, NR, Combine::Store>(qt_of(g), W, ktile, ldkt, 1, d, nb, st, W, nullptr);
      if (relu2) {
        relu2_tile<T, NR>(st, nb, p.scale, tm);
      } else {
        softmax_tile_logits<T, NR>(st, nb, rowscale, tm, tmax);
        softmax_tile_exp<T, NR>(st, nb, tmax, mrow, lrow, alpha);
      }
      if constexpr (kPairsType) {
        if (pairs) {
          // P^T as bf16 pairs of keys; an odd nb pairs its last key with key nb, which may be a real key this
          // sub-tile cannot see (weight 0, but its V may be inf or NaN): the masked product leaves it out.
          std::uint32_t* pp = s.pp.data();
          if (relu2)
            pack_weight_pairs<NR, true>(st, nb, pp);
          else
            pack_weight_pairs<NR, false>(st, nb, pp);
          const Index nt = (nb + 1) / 2;
          if (hidden_v_nonfinite && (tm.masked() || (nb % 2 == 1 && nb < nb_all)))
            pair_dot_masked<NR>(pp, W, s.vp.data(), dv, nt, nb, dv, ot_of(g), W, alpha, tm);
          else
            pair_dot<NR, Combine::ScaleAdd>(pp, W, s.vp.data(), 1, dv, nt, dv, ot_of(g), W, alpha);
          continue;
        }
      }
      if (hidden_v_nonfinite && tm.masked())
        bcast_fma_masked<T, NR>(st, W, vtile, ldvt, nb, dv, ot_of(g), W, alpha, tm);
      else
        bcast_fma<T, NR, Combine::ScaleAdd>(st, W, vtile, 1, ldvt, nb, dv, ot_of(g), W, alpha);
    }
  }

  for (Index g = 0; g < nsub; ++g) {
    const Index r0 = g * W;
    const Index rows_g = std::min(W, rows - r0);
    const T* ot = ot_of(g);
    T* lrow = stats_of(g) + 2 * W;
    T* fin = stats_of(g) + 5 * W;
    if (!relu2) {
      for (Index r = 0; r < W; ++r) fin[r] = lrow[r] > T(0) ? T(1) / lrow[r] : T(0);
    }
    for (Index r = 0; r < rows_g; ++r) {
      T* o = p.out.row(b, h, i0 + r0 + r);
      const T f = fin[r];
      for (Index e = 0; e < dv; ++e) o[e] = ot[e * W + r] * f;
    }
  }
}

/// Runs every (batch, head, query tile) item, in parallel when OpenMP is on. Each output row is produced by
/// exactly one item with a fixed key order, so results do not depend on the thread count.
///
/// n <= kSmallTileRows (a decoding step): one item per (batch, KV head) covering all the query heads that share
/// that KV head, so the cache is streamed once per KV head rather than once per query head. When there are fewer
/// such items than threads (MQA, batch 1), each group is split into a few head ranges, each still reading K and
/// V once. Grouping does not change any row's bits (attention_rows), so neither does the thread count.
template <class T, class S>
inline void run_attention(const AttentionPlan<T, S>& p) {
  const Index B = p.q.batch(), H = p.q.heads(), n = p.q.seq();
  if (B == 0 || H == 0 || n == 0) return;
  if (n <= kSmallTileRows) {
    const Index Hk = p.k.heads(), G = H / Hk;
    const Index groups = B * Hk;
    const Index split = std::min<Index>(G, std::max<Index>(1, (Index(max_threads()) + groups - 1) / groups));
    const Index per = (G + split - 1) / split;
    parallel_for(groups * split, [&](Index it) {
      const Index grp = it / split, part = it % split;
      const Index b = grp / Hk, hk = grp % Hk;
      const Index h0 = hk * G + part * per, h1 = std::min(hk * G + G, h0 + per);
      if (h0 < h1) attention_small_item(p, b, h0, h1, 0, n);
    });
    return;
  }
  const Index item_rows = attention_item_rows<T>(p.q.dim(), p.v.dim());
  const Index tiles = (n + item_rows - 1) / item_rows;
  const Index items = B * H * tiles;
  if (items == 0) return;
  // Items are handed out head by head, each head's last query tile first. Head by head: consecutive items of one
  // thread read the same K and V, which then come from L2 (1 MiB for a head at n = 2048, d = 64); handing out one
  // tile of every head in turn made each item fetch its head's K and V from L3 again, and cost 1.4x at 8 x 2048 x
  // 64 with 16-float registers on an Intel Xeon (Emerald Rapids; not measurable by counters there). Last tile
  // first: with causal masking the last tiles are the most expensive, so each head's cheap tiles come last and
  // fill in the dynamic schedule's end. The order does not change any result.
  parallel_for(items, [&](Index it) {
    const Index bh = it / tiles;
    const Index tile = tiles - 1 - it % tiles;
    attention_tile(p, bh / H, bh % H, tile * item_rows, item_rows);
  });
}

}  // namespace kexue::detail
