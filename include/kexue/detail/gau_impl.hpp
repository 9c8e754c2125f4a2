// SPDX-License-Identifier: MIT
#pragma once
// Internals of the GAU layer (kexue/gau.hpp): the resolved plan, the per-thread scratch slots, and the two
// phases of one sequence. Phase 1 (per row tile): h = swish(x W_in + b_in) (bias and swish fused into the
// GEMM's store), q/k = scale-offset(z), RoPE; then v and k^T are packed once for all query tiles.
// Phase 2 (per query tile): scores = q k^T, normalised row by row, g = u * (A v) (the gate fused into the
// GEMM's store), out = g W_out + b_out.
//
// All four products run on kexue's packed GEMM (detail/gemm.hpp): W_in and W_out are packed once per call
// and shared by the threads, v and k^T once per sequence. Each element of every product is one fixed FMA
// chain whatever the tiling, so results do not depend on the thread count.
//
// Why not the fused flash kernel of attention.hpp: in a GAU the value width is e = 2D (1536 for D = 768)
// while the key width is s = 128, so A v costs 12x more than q k^T. A query tile's A (tile x m, a few MB at
// most) times v is a GEMM with a long inner dimension that runs near the FMA peak, and squared ReLU needs no
// running maximum, so an online-softmax accumulator of [tile, 1536] would only add traffic. Memory stays
// O(n (2e + s)) plus fixed tiles: the n x n matrix is never materialised.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "kexue/attention.hpp"
#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/gemm.hpp"
#include "kexue/detail/simd.hpp"
#include "kexue/detail/view.hpp"
#include "kexue/half.hpp"
#include "kexue/rope.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kexue::detail {

// Rows per work item of both phases, a multiple of the GEMM's register tile (kGemmMr) so no item computes
// padding rows: 144 = kGemmMc, one packed A block. The scores tile is then 144 x m (1.1 MiB in float at
// m = 2048). Shorter sequences use smaller tiles (down to 48 rows) so two threads still get several items.
// The tile depends on n only, never on the thread count.
constexpr Index kGauTileMax = kGemmMc;
constexpr Index kGauTileMin = 8 * kGemmMr;

inline Index gau_tile_rows(Index n) {
  // About 16 items, rounded up to whole register tiles.
  const Index target = (n + 15) / 16;
  return std::min(kGauTileMax, std::max(kGauTileMin, (target + kGemmMr - 1) / kGemmMr * kGemmMr));
}

/// Everything gau() resolves from the weights and options once, before any work.
struct GauPlan {
  Index hidden = 0, units = 0, key_size = 0, width = 0;  // D, e, s, 2e + s
  Normalization normalization = Normalization::SquaredRelu;
  bool causal = false;
  bool reverse = false;                     // reverse causal: row i sees keys j >= i (SPEC 7.3)
  const std::int32_t* seg32 = nullptr;      // UniLM segment ids of this sequence (one of the two, or neither)
  const std::int64_t* seg64 = nullptr;
  Index seg_batch_stride = 0;               // batched: 0 (shared ids) or n (one row of ids per sequence)
  double scale = 1.0;  // logits = scale * q.k
  double train_length = 512, min_length = 16;
  std::optional<Index> relu2_length;
  bool zero_padded_rows = false;            // rows [key_length, n) of out are 0 and not computed
  bool bf16_act = false;                    // bf16 weights: A v and g W_out on the bf16 GEMM (v, A, g rounded)
  const unsigned char* key_mask = nullptr;  // per-key visibility (nonzero = visible), or none
};

// Scratch is aligned to Eigen's packet alignment on purpose: Eigen peels unaligned leading elements of an
// array expression into scalar code, and its scalar exp is not bitwise equal to its vectorised one, so with
// malloc'd buffers the bits of swish(h) would depend on where the workspace happened to land.
template <class T>
using GauBuffer = std::vector<T, Eigen::aligned_allocator<T>>;

/// Scratch of one thread: a whole sequence's [u | v | z], q, k, packed v and k^T (used by slot 0 only when
/// the tiles of one sequence are shared between threads), one query tile's scores and gated values, the
/// thread's packed A block, and (slot 0 only) the packed W_in and W_out of the call.
template <class T>
struct GauSlot {
  GauBuffer<T> hidden, q, k, scores, gated;
  GemmBuffer<T> packed_v, packed_kt, packed_a, packed_w_in, packed_w_out;
  std::vector<Index> mask_prefix;
  // bf16 weights only (empty otherwise): the thread's packed A block of x in bf16 pairs, W_in packed in pairs
  // (slot 0), W_out widened to T before packing (slot 0), and an out tile in T when out is stored in bf16.
  GemmBuffer<std::uint32_t> packed_a16, packed_w_in16;
  GauBuffer<T> w_out_wide, out_tile;
  // ... and with bf16 activations: v rounded and packed in pairs (slot 0), W_out in pairs (slot 0), the thread's
  // rounded attention tile and gated rows.
  GemmBuffer<std::uint32_t> packed_v16, packed_w_out16;
  GauBuffer<Eigen::bfloat16> v16, a16, g16;
  std::size_t bytes() const {
    return (hidden.size() + q.size() + k.size() + scores.size() + gated.size() + packed_v.size() +
            packed_kt.size() + packed_a.size() + packed_w_in.size() + packed_w_out.size() + w_out_wide.size() +
            out_tile.size()) *
               sizeof(T) +
           (packed_a16.size() + packed_w_in16.size() + packed_v16.size() + packed_w_out16.size()) *
               sizeof(std::uint32_t) +
           (v16.size() + a16.size() + g16.size()) * sizeof(Eigen::bfloat16) + mask_prefix.size() * sizeof(Index);
  }
};

/// The weights of one call packed for the GEMM (shared by all threads and sequences).
template <class T>
struct GauPacked {
  PackedB<T> w_in, w_out;
  PackedB<std::uint32_t> w_in16;   // bf16 weights: W_in in depth pairs for gemm_bf16_rows (w_in is then unused)
  PackedB<std::uint32_t> w_out16;  // bf16 activations: W_out in depth pairs (w_out is then unused)
};

/// Compute and scratch type of gau() for weights of type T: float for bf16 weights, else T.
template <class T>
struct gau_compute {
  using type = T;
};
template <>
struct gau_compute<Eigen::bfloat16> {
  using type = float;
};
template <class T>
using gau_compute_t = typename gau_compute<T>::type;

/// c = swish(c + bias) over one row of `cols` floats, with the GEMM epilogue's vector swish for every element
/// (the tail through a padded register), so an element's bits do not depend on its column.
template <class T>
inline void gau_bias_swish_row(T* c, const T* bias, Index cols) {
  using B = Batch<T>;
  constexpr Index L = kLanes<T>;
  Index j = 0;
  for (; j + L <= cols; j += L) {
    B v = load(c + j);
    if (bias) v += load(bias + j);
    store(c + j, gemm_swish(v));
  }
  if (j < cols) {
    alignas(64) T tmp[L] = {};
    for (Index t = 0; t < cols - j; ++t) tmp[t] = c[j + t] + (bias ? bias[j + t] : T(0));
    store(tmp, gemm_swish(load(tmp)));
    for (Index t = 0; t < cols - j; ++t) c[j + t] = tmp[t];
  }
}

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

/// Phase 1 on rows [r0, r1): hidden = swish(x W_in + b_in), q/k = z * gamma + beta, RoPE at position r.
template <class T, class W, class X>
void gau_project(const W& w, const GauPlan& p, const GauPacked<T>& packed, View<const X> x, Index r0, Index r1,
                 T* hidden, T* q, T* k, const RopeTable<T>* rope, T* apack, std::uint32_t* apack16) {
  const Index rows = r1 - r0, e = p.units, s = p.key_size, width = p.width;
  if (rows <= 0) return;
  if constexpr (std::is_same<X, Eigen::bfloat16>::value) {
    // bf16 x and W_in: two exact bf16 products per float addition (vdpbf16ps under AVX512-BF16), then the
    // float epilogue (the bf16 GEMM has none).
    (void)apack;
    gemm_bf16_rows(View<const Eigen::bfloat16>{x.row(r0), rows, p.hidden, x.stride}, packed.w_in16,
                   View<float>{hidden + r0 * width, rows, width, width}, apack16);
    const T* bias = w.b_in.size() != 0 ? w.b_in.data() : nullptr;
    for (Index r = 0; r < rows; ++r) gau_bias_swish_row(hidden + (r0 + r) * width, bias, width);
  } else {
    (void)apack16;
    GemmEpilogue<T> epi;
    epi.bias = w.b_in.size() != 0 ? w.b_in.data() : nullptr;
    epi.swish = true;
    gemm_rows(View<const T>{x.row(r0), rows, p.hidden, x.stride}, packed.w_in,
              View<T>{hidden + r0 * width, rows, width, width}, epi, apack);
  }
  const bool offset_q = w.beta_q.size() != 0, offset_k = w.beta_k.size() != 0;
  for (Index r = 0; r < rows; ++r) {
    const T* hr = hidden + (r0 + r) * width;
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

/// Normalises one row of logits in place (SPEC 3.3): keys [lo, hi) pass key_length and the row's window (causal,
/// reverse causal, UniLM), and `count` of them (l) also pass the key mask; every other entry of [0, cols) becomes 0.
template <class T>
inline void gau_normalize_row(const GauPlan& p, T* a, Index lo, Index hi, Index count, Index cols) {
  if (count > 0 && hi > lo) {
    T* w = a + lo;
    const Index len = hi - lo;
    switch (p.normalization) {
      case Normalization::Softmax:
      case Normalization::SoftmaxPlus: {
        double c = p.scale;
        // Entropy-invariant softmax: logits * log_train(max(l, min_length)), l = keys this row sees.
        if (p.normalization == Normalization::SoftmaxPlus)
          c *= std::log(std::max(double(count), p.min_length)) / std::log(p.train_length);
        scale(static_cast<T>(c), w, len);
        if (p.key_mask) {
          // Masked keys become -inf, which softmax_row turns into exact zeros.
          for (Index j = lo; j < hi; ++j)
            if (!p.key_mask[j]) a[j] = -std::numeric_limits<T>::infinity();
        }
        softmax_row(w, len);
        break;
      }
      case Normalization::SquaredRelu: {
        const double length = p.relu2_length ? double(*p.relu2_length) : double(count);
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> r(w, len);
        // relu as 0 < a ? a : 0: a NaN logit gives 0 as in the attention kernel, on every ISA (Eigen's max
        // follows the SIMD max's NaN rule, which differs between x86 and ARM64).
        r = (r * static_cast<T>(p.scale)).unaryExpr([](T a) { return T(0) < a ? a : T(0); }).square() *
            static_cast<T>(1.0 / length);
        if (p.key_mask) {
          for (Index j = lo; j < hi; ++j)
            if (!p.key_mask[j]) a[j] = T(0);
        }
        break;
      }
    }
  } else {
    lo = hi = 0;
  }
  std::fill(a, a + std::min(std::max<Index>(lo, 0), cols), T(0));
  std::fill(a + std::min(std::max<Index>(hi, 0), cols), a + cols, T(0));
}

/// The structural mask of one GAU sequence of n tokens as attention's row windows.
inline WindowRule gau_window_rule(const GauPlan& p, Index n, Index key_length) {
  WindowRule w;
  w.n = n;
  w.m = n;
  w.key_length = key_length;
  w.causal = p.causal;
  w.reverse = p.reverse;
  w.seg32 = p.seg32;
  w.seg64 = p.seg64;
  return w;
}

/// Phase 2 on query rows [r0, r1) of a sequence of n tokens whose keys [key_length, n) are padding:
/// out = (u * (A v)) W_out + b_out. kt and v: the sequence's packed k^T [s, n] and v [n, e]. Each row's keys are
/// its window [lo, hi) (RowWindows: key_length, causal, reverse causal, UniLM), with hi nondecreasing over the
/// rows, so the tile's scores are computed for the keys [0, hi of its last row) only.
template <class T, class W, class O>
void gau_attend(const W& w, const GauPlan& p, const GauPacked<T>& packed, const PackedB<T>& kt, const PackedB<T>& v,
                Index n, Index key_length, const Index* mask_prefix, Index r0, Index r1, const T* hidden,
                const T* q, T* scores, T* gated, T* apack, View<O> out, bool hidden_v_nonfinite, T* out_tile,
                const PackedB<std::uint32_t>* v16 = nullptr, GauSlot<T>* mine = nullptr) {
  const Index rows = r1 - r0, e = p.units, s = p.key_size, width = p.width;
  if (rows <= 0) return;
  // Row windows, in row order (amortised O(1) per row after an O(n) start).
  constexpr Index kMaxRows = kGauTileMax;
  Index lo[kMaxRows], hi[kMaxRows], count[kMaxRows];
  {
    RowWindows win(gau_window_rule(p, n, key_length), nullptr);
    for (Index r = 0; r < rows; ++r) {
      win.at(r0 + r, lo[r], hi[r], count[r]);
      if (mask_prefix) count[r] = hi[r] > lo[r] ? mask_prefix[hi[r]] - mask_prefix[lo[r]] : 0;
    }
  }
  // Keys any row of this tile sees end at the last row's hi.
  const Index keys = std::max<Index>(0, hi[rows - 1]);
  if (keys <= 0) {
    std::fill(gated, gated + rows * e, T(0));
  } else {
    gemm_rows(View<const T>{q + r0 * s, rows, s, s}, kt, View<T>{scores, rows, keys, keys}, GemmEpilogue<T>{}, apack);
    for (Index r = 0; r < rows; ++r) gau_normalize_row(p, scores + r * keys, lo[r], hi[r], count[r], keys);
    if (hidden_v_nonfinite) {
      // A hidden key's weight is an exact 0, but the GEMM would still form 0 * v, which is NaN for an inf or
      // NaN v row (a masked garbage token, a key outside the row's window). Then each row sums over the keys it
      // sees only: the GEMM's fma chain in the same order without its exact-zero terms, so the bits of rows
      // that see only finite values are unchanged.
      const T* vrows = hidden + p.units;
      for (Index r = 0; r < rows; ++r) {
        T* g = gated + r * e;
        std::fill(g, g + e, T(0));
        for (Index j = std::max<Index>(lo[r], 0); j < hi[r]; ++j)
          if (!p.key_mask || p.key_mask[j]) {
            const T a = scores[r * keys + j], *vj = vrows + j * width;
            for (Index c = 0; c < e; ++c) g[c] = madd(a, vj[c], g[c]);  // xsimd::fma's rounding: the GEMM's
          }
        const T* u = hidden + (r0 + r) * width;
        for (Index c = 0; c < e; ++c) g[c] *= u[c];
      }
    } else if (v16) {
      // bf16 activations: A rounded to bf16 (v was rounded when packed), float accumulation, then the gate.
      if constexpr (std::is_same<T, float>::value) {
        Eigen::bfloat16* a16 = mine->a16.data();
        narrow_n(scores, a16, rows * keys);
        gemm_bf16_rows(View<const Eigen::bfloat16>{a16, rows, keys, keys}, *v16, View<float>{gated, rows, e, e},
                       mine->packed_a16.data());
        for (Index r = 0; r < rows; ++r) {
          Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> g(gated + r * e, e);
          g *= Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(hidden + (r0 + r) * width, e);
        }
      }
    } else {
      // g = u * (A v): the gate is applied as each tile of A v is stored.
      GemmEpilogue<T> gate;
      gate.gate = hidden + r0 * width;
      gate.gate_stride = width;
      gemm_rows(View<const T>{scores, rows, keys, keys}, v, View<T>{gated, rows, e, e}, gate, apack);
    }
  }
  GemmEpilogue<T> bias;
  bias.bias = w.b_out.size() != 0 ? w.b_out.data() : nullptr;
  if constexpr (std::is_same<T, float>::value) {
    if (p.bf16_act) {
      // bf16 activations: g rounded to bf16 times W_out in pairs, then the bias in float; out rounded once if bf16.
      Eigen::bfloat16* g16 = mine->g16.data();
      narrow_n(gated, g16, rows * e);
      T* dst = std::is_same<O, T>::value ? reinterpret_cast<T*>(out.row(r0)) : out_tile;
      const Index ld = std::is_same<O, T>::value ? out.stride : p.hidden;
      gemm_bf16_rows(View<const Eigen::bfloat16>{g16, rows, e, e}, packed.w_out16, View<float>{dst, rows, p.hidden, ld},
                     mine->packed_a16.data());
      for (Index r = 0; r < rows; ++r) {
        if (bias.bias) {
          Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> o(dst + r * ld, p.hidden);
          o += Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias.bias, p.hidden);
        }
        if constexpr (!std::is_same<O, T>::value) narrow_n(dst + r * ld, out.row(r0 + r), p.hidden);
      }
      return;
    }
  }
  if constexpr (std::is_same<O, T>::value) {
    (void)out_tile;
    gemm_rows(View<const T>{gated, rows, e, e}, packed.w_out, View<T>{out.row(r0), rows, p.hidden, out.stride}, bias,
              apack);
  } else {
    // 16-bit out: computed in T, rounded once (nearest even) as stored.
    gemm_rows(View<const T>{gated, rows, e, e}, packed.w_out, View<T>{out_tile, rows, p.hidden, p.hidden}, bias,
              apack);
    for (Index r = 0; r < rows; ++r) narrow_n(out_tile + r * p.hidden, out.row(r0 + r), p.hidden);
  }
}

/// One sequence: x [n, D] -> out [n, D]. With `tiles_parallel` the row and query tiles are spread over the
/// threads (slot 0 holds the sequence buffers, slot t the tile of thread t); otherwise everything runs on
/// the calling thread in `slots[slot]`. Every element is computed the same way either way, so both give the
/// same bits.
template <class T, class W, class X, class O>
void gau_sequence(const W& w, const GauPlan& p, const GauPacked<T>& packed, View<const X> x, View<O> out,
                  Index key_length, const RopeTable<T>* rope, std::vector<GauSlot<T>>& slots, Index slot,
                  bool tiles_parallel) {
  // With zero_padded_rows the query rows [key_length, n) are neither projected nor attended: no visible
  // key lies there, so nothing computed for the other rows depends on them.
  const Index n = p.zero_padded_rows ? key_length : x.rows;
  if (n > 0) {
    GauSlot<T>& own = slots[static_cast<std::size_t>(slot)];
    T* hidden = gau_grow(own.hidden, n * p.width);
    T* q = gau_grow(own.q, n * p.key_size);
    T* k = gau_grow(own.k, n * p.key_size);
    const Index tile = gau_tile_rows(x.rows), items = (n + tile - 1) / tile;
    auto apack_of = [&](Index thread) {
      return slots[static_cast<std::size_t>(tiles_parallel ? thread : slot)].packed_a.data();
    };
    gau_parallel(items, tiles_parallel, [&](Index i, Index thread) {
      const Index r0 = i * tile;
      gau_project(w, p, packed, x, r0, std::min(n, r0 + tile), hidden, q, k, rope, apack_of(thread),
                  slots[static_cast<std::size_t>(tiles_parallel ? thread : slot)].packed_a16.data());
    });
    // v = hidden[:, e:2e] and k^T, packed once for every query tile.
    const PackedB<T> v = gemm_pack_b(View<const T>{hidden + p.units, n, p.units, p.width}, false,
                                     gemm_grow(own.packed_v, gemm_packed_b_size<T>(n, p.units)), tiles_parallel);
    const PackedB<T> kt = gemm_pack_b(View<const T>{k, n, p.key_size, p.key_size}, true,
                                      gemm_grow(own.packed_kt, gemm_packed_b_size<T>(p.key_size, n)), tiles_parallel);
    // bf16 activations: v rounded to bf16 and packed in depth pairs, once for every query tile.
    PackedB<std::uint32_t> v16{};
    if constexpr (std::is_same<T, float>::value) {
      if (p.bf16_act) {
        Eigen::bfloat16* vb = gau_grow(own.v16, n * p.units);
        // Keys past key_length are never visible; they are zeroed because an odd key count pairs the last
        // visible key with the next one (times an A of exactly 0, which would still turn an inf or NaN into NaN).
        for (Index j = 0; j < n; ++j) {
          if (j < key_length) {
            narrow_n(hidden + j * p.width + p.units, vb + j * p.units, p.units);
          } else {
            std::fill(vb + j * p.units, vb + (j + 1) * p.units, Eigen::bfloat16(0.0f));
          }
        }
        v16 = gemm_bf16_pack_b(View<const Eigen::bfloat16>{vb, n, p.units, p.units}, false,
                               gemm_grow(own.packed_v16, std::max<Index>((n + 1) / 2, 1) *
                                                             gemm_round_up<float>(p.units, kGemmNr<float>) *
                                                             kGemmBf16BWords));
      }
    }
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
    // Is any v row that some query row cannot see non-finite (a masked key; under causal, reverse causal or
    // UniLM, any key may be outside some row's window)? Keys past key_length are never read. Usually not, and
    // the A v GEMM runs as is.
    const bool windowed = p.causal || p.reverse || p.seg32 || p.seg64;
    bool hidden_v_nonfinite = false;
    if (windowed || p.key_mask)
      for (Index j = 0; j < std::min(n, key_length) && !hidden_v_nonfinite; ++j)
        if ((windowed || !p.key_mask[j]) && !all_finite(hidden + j * p.width + p.units, p.units))
          hidden_v_nonfinite = true;
    gau_parallel(items, tiles_parallel, [&](Index i, Index thread) {
      GauSlot<T>& mine = slots[static_cast<std::size_t>(tiles_parallel ? thread : slot)];
      const Index r0 = i * tile, r1 = std::min(n, r0 + tile);
      gau_attend(w, p, packed, kt, v, x.rows, key_length, mask_prefix, r0, r1, hidden, q, mine.scores.data(),
                 mine.gated.data(), mine.packed_a.data(), out, hidden_v_nonfinite, mine.out_tile.data(),
                 p.bf16_act ? &v16 : nullptr, &mine);
    });
  }
  // Last, because out may be x itself.
  for (Index r = n; r < x.rows; ++r) std::fill(out.row(r), out.row(r) + out.cols, O(0.0f));
}

/// Sizes the tile buffers of every slot for sequences of up to n tokens (before any parallel region).
template <class T>
void gau_reserve_tiles(std::vector<GauSlot<T>>& slots, Index count, Index n, const GauPlan& p, bool bf16_x = false,
                       bool bf16_out = false) {
  if (static_cast<Index>(slots.size()) < count) slots.resize(static_cast<std::size_t>(count));
  const Index rows = std::min(n, gau_tile_rows(n));
  // The deepest product a thread packs A for: x W_in (D), q k^T (s), A v (n keys), g W_out (e).
  const Index depth = std::max(std::max(p.hidden, p.key_size), std::max(n, p.units));
  for (auto& slot : slots) {
    gau_grow(slot.scores, rows * n);
    gau_grow(slot.gated, rows * p.units);
    gemm_grow(slot.packed_a, gemm_packed_a_size<T>(depth));
    // bf16 activations: A blocks of depth n (A v) and e (g W_out) too.
    const Index depth16 = p.bf16_act ? std::max(std::max(p.hidden, n), p.units) : p.hidden;
    if (bf16_x) gemm_grow(slot.packed_a16, kGemmMc * std::max<Index>((depth16 + 1) / 2, 1) * kGemmBf16AWords);
    if (p.bf16_act) {
      gau_grow(slot.a16, rows * n);
      gau_grow(slot.g16, rows * p.units);
    }
    if (bf16_out) gau_grow(slot.out_tile, rows * p.hidden);
  }
}

template <class T>
void gau_reserve_sequence(GauSlot<T>& slot, Index n, const GauPlan& p) {
  gau_grow(slot.hidden, n * p.width);
  gau_grow(slot.q, n * p.key_size);
  gau_grow(slot.k, n * p.key_size);
  gemm_grow(slot.packed_v, gemm_packed_b_size<T>(n, p.units));
  gemm_grow(slot.packed_kt, gemm_packed_b_size<T>(p.key_size, n));
}

/// Packs W_in [D, 2e + s] and W_out [e, D] into slot 0 (before the sequences run; panels in parallel).
template <class T, class W>
GauPacked<T> gau_pack_weights(const W& w, const GauPlan& p, GauSlot<T>& slot) {
  GauPacked<T> packed;
  packed.w_in = gemm_pack_b(View<const T>{w.w_in.data(), p.hidden, p.width, p.width}, false,
                            gemm_grow(slot.packed_w_in, gemm_packed_b_size<T>(p.hidden, p.width)), true);
  packed.w_out = gemm_pack_b(View<const T>{w.w_out.data(), p.units, p.hidden, p.hidden}, false,
                             gemm_grow(slot.packed_w_out, gemm_packed_b_size<T>(p.units, p.hidden)), true);
  return packed;
}

/// bf16 weights: W_in [D, 2e + s] packed in depth pairs for the bf16 GEMM, W_out [e, D] widened to float and packed
/// for the float GEMM (its A, the gated rows, stays float), both into slot 0.
template <class W>
GauPacked<float> gau_pack_weights_bf16(const W& w, const GauPlan& p, GauSlot<float>& slot) {
  GauPacked<float> packed;
  const Index kp = (p.hidden + 1) / 2;
  packed.w_in16 = gemm_bf16_pack_b(
      View<const Eigen::bfloat16>{w.w_in.data(), p.hidden, p.width, p.width}, false,
      gemm_grow(slot.packed_w_in16, std::max<Index>(kp, 1) * gemm_round_up<float>(p.width, kGemmNr<float>) *
                                        kGemmBf16BWords));
  if (p.bf16_act) {
    packed.w_out16 = gemm_bf16_pack_b(
        View<const Eigen::bfloat16>{w.w_out.data(), p.units, p.hidden, p.hidden}, false,
        gemm_grow(slot.packed_w_out16, std::max<Index>((p.units + 1) / 2, 1) *
                                           gemm_round_up<float>(p.hidden, kGemmNr<float>) * kGemmBf16BWords));
    return packed;
  }
  float* wide = gau_grow(slot.w_out_wide, p.units * p.hidden);
  widen_n(w.w_out.data(), wide, p.units * p.hidden);
  packed.w_out = gemm_pack_b(View<const float>{wide, p.units, p.hidden, p.hidden}, false,
                             gemm_grow(slot.packed_w_out, gemm_packed_b_size<float>(p.units, p.hidden)), true);
  return packed;
}

}  // namespace kexue::detail
