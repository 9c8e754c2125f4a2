// SPDX-License-Identifier: MIT
#pragma once
// kexue's own packed GEMM, C = op(A) op(B) with an optional fused epilogue, for fp32 and fp64. It exists
// because GAU spends 97% of its flops in four products and Eigen's GEMM reaches ~80% of the FMA peak on them.
//
// Structure (the BLIS loop nest, written from the published description):
//   * B ([k, n], or given transposed as [n, k]) is packed once per call into kc x kNr micro-panels, zero
//     padded to a multiple of kNr columns. Packed weights are shared by every thread.
//   * Work items are blocks of rows of C. An item packs its rows of A, all k blocks, into kMr x kc
//     micro-panels (zero padded to a multiple of kMr rows). Then for each chunk of kGemmNc columns of C
//     (kept in L2) and each k block, every B micro-panel (kept in L1) meets all the item's A micro-panels
//     of that k block (an A block of kMc x kc, kept in L2).
//   * The micro-kernel holds a kMr x kNr tile of C in 12 registers (6 rows x 2 vectors) and does one
//     broadcast and two FMAs per row per k step: 12 independent FMA chains cover 2 FMA ports x 4 cycles of
//     latency, with room for the two B loads and the broadcast in the 16 registers of AVX2.
//
// Determinism: the accumulator of C(i, j) starts at 0 and takes fma(A(i, p), B(p, j), acc) for p = 0, 1, ...
// in order; between k blocks the partial sum is stored to C and loaded back exactly. So C(i, j) is that one
// FMA chain whatever the block sizes, the position of (i, j) in its tile or the thread that computed it:
// results are bitwise identical for any thread count and any partition of C (and equal to a scalar
// std::fma loop). Edge tiles run the same full-width kernel on zero-padded panels into a stack tile.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/arch/ops.hpp"  // fmadd: one rounding wherever kFusedFma (xsimd 8.1's AVX-512 fma is two)
#include "kexue/detail/simd.hpp"
#include "kexue/detail/view.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kexue::detail {

/// Register tile of the micro-kernel: kGemmMr rows x kGemmNr<T> columns (6 x 16 floats, 6 x 8 doubles on AVX2).
/// 2 kGemmMr accumulators + 2 B registers + 1 broadcast must fit 16 registers. With 32 (AVX-512) 12 rows would fit
/// too, but on Zen4 12 x 32 floats measured 2-10% slower than 6 x 32 (the 48 KiB B panels at 32 floats per k step
/// already exceed its 32 KiB L1; loads are not the bottleneck), so every width keeps 6.
constexpr Index kGemmMr = 6;
template <class T>
constexpr Index kGemmNr = 2 * kLanes<T>;
/// Depth of one k block. A B micro-panel is kGemmKc x kGemmNr (24 KiB at 384: 64 bytes per k step in both
/// precisions) and an A micro-panel 6 x kGemmKc; together they fit the 48 KiB L1 with room for C's lines.
/// Longer blocks mean fewer passes that load and store C.
constexpr Index kGemmKc = 384;
/// Rows of A packed per block (a multiple of kGemmMr): 144 x 384 floats = 216 KiB stays in the 1 MiB L2
/// while every B micro-panel of the k block streams past it.
constexpr Index kGemmMc = 144;
/// Columns of C per chunk: a row block's chunk of C (144 x 256 floats = 144 KiB) stays in L2 while all k
/// blocks accumulate into it, instead of travelling to L3 and back once per k block.
constexpr Index kGemmNc = 256;

/// Aligned scratch of the GEMM (64 bytes: every packed k step of B is one cache line).
template <class T>
using GemmBuffer = std::vector<T, xsimd::aligned_allocator<T, 64>>;

template <class T>
inline T* gemm_grow(GemmBuffer<T>& v, Index n) {
  if (v.size() < static_cast<std::size_t>(n)) v.resize(static_cast<std::size_t>(n));
  return v.data();
}

/// What the micro-kernel does to a finished element before storing it (applied after the last k block):
/// c = acc (+ bias[j]) (then swish(c) = c / (1 + exp(-c))) (then c *= gate(i, j)).
template <class T>
struct GemmEpilogue {
  const T* bias = nullptr;  // [n] or null
  bool swish = false;
  const T* gate = nullptr;  // gate(i, j) = gate[i * gate_stride + j], or null
  Index gate_stride = 0;
};

/// op(B) of shape [k, n] packed into micro-panels. Block b covers depths [b kGemmKc, min(k, (b + 1) kGemmKc))
/// and starts at b kGemmKc * npad; inside it, column panel j (columns [j kNr, (j + 1) kNr)) is kc x kNr,
/// element (p, c) at p * kNr + c. A product may use a prefix of the rows and of the columns.
template <class T>
struct PackedB {
  const T* data = nullptr;
  Index k = 0, n = 0, npad = 0;
};

template <class T>
inline Index gemm_round_up(Index n, Index to) {
  return (n + to - 1) / to * to;
}

/// Values a packed op(B) of shape [k, n] takes.
template <class T>
inline Index gemm_packed_b_size(Index k, Index n) {
  return k * gemm_round_up<T>(n, kGemmNr<T>);
}


/// Packs column panels [p0, p1) of op(B): B = src ([k, n]) or, with `transposed`, B = src^T (src: [n, k]).
template <class T>
void gemm_pack_b_panels(View<const T> src, bool transposed, T* dst, Index p0, Index p1) {
  constexpr Index nr = kGemmNr<T>;
  const Index k = transposed ? src.cols : src.rows, n = transposed ? src.rows : src.cols;
  const Index npad = gemm_round_up<T>(n, nr);
  for (Index k0 = 0; k0 < k; k0 += kGemmKc) {
    const Index kc = std::min(kGemmKc, k - k0);
    for (Index panel = p0; panel < p1; ++panel) {
      const Index j0 = panel * nr, cols = std::min(nr, n - j0);
      T* d = dst + k0 * npad + panel * nr * kc;
      if (!transposed) {
        for (Index p = 0; p < kc; ++p) {
          const T* s = src.row(k0 + p) + j0;
          T* dp = d + p * nr;
          if (cols == nr) {
            std::memcpy(dp, s, sizeof(T) * nr);
          } else {
            for (Index c = 0; c < cols; ++c) dp[c] = s[c];
            for (Index c = cols; c < nr; ++c) dp[c] = T(0);
          }
        }
      } else {
        // B(p, c) = src(c, p): read each source row contiguously, write with stride kNr.
        for (Index c = 0; c < cols; ++c) {
          const T* s = src.row(j0 + c) + k0;
          for (Index p = 0; p < kc; ++p) d[p * nr + c] = s[p];
        }
        for (Index c = cols; c < nr; ++c)
          for (Index p = 0; p < kc; ++p) d[p * nr + c] = T(0);
      }
    }
  }
}

/// Packs all of op(B) (see gemm_pack_b_panels) into dst (gemm_packed_b_size values), the column panels
/// spread over the threads when `parallel`.
template <class T>
PackedB<T> gemm_pack_b(View<const T> src, bool transposed, T* dst, bool parallel) {
  constexpr Index nr = kGemmNr<T>;
  const Index k = transposed ? src.cols : src.rows, n = transposed ? src.rows : src.cols;
  const Index panels = gemm_round_up<T>(n, nr) / nr;
  // Groups of 8 panels (128 float columns): enough work per item to amortise the scheduling.
  constexpr Index kGroup = 8;
  const Index groups = (panels + kGroup - 1) / kGroup;
  auto item = [&](Index g) {
    gemm_pack_b_panels(src, transposed, dst, g * kGroup, std::min(panels, (g + 1) * kGroup));
  };
  if (parallel) {
    parallel_for(groups, item);
  } else {
    for (Index g = 0; g < groups; ++g) item(g);
  }
  return {dst, k, n, panels * nr};
}

/// Packs rows [0, rows) and depths [k0, k0 + kc) of A into kMr x kc micro-panels (rows zero padded).
template <class T>
void gemm_pack_a(View<const T> a, Index k0, Index kc, T* dst) {
  constexpr Index mr = kGemmMr;
  for (Index r0 = 0; r0 < a.rows; r0 += mr) {
    const Index rows = std::min(mr, a.rows - r0);
    T* d = dst + r0 * kc;
    for (Index r = 0; r < rows; ++r) {
      const T* s = a.row(r0 + r) + k0;
      for (Index p = 0; p < kc; ++p) d[p * mr + r] = s[p];
    }
    for (Index r = rows; r < mr; ++r)
      for (Index p = 0; p < kc; ++p) d[p * mr + r] = T(0);
  }
}

template <class F, std::size_t... I>
inline void gemm_unroll_impl(F&& f, std::index_sequence<I...>) {
  (f(std::integral_constant<Index, Index(I)>{}), ...);
}
/// f(0), ..., f(N - 1) with compile-time indices, so the accumulator tile lives in registers.
template <Index N, class F>
inline void gemm_unroll(F&& f) {
  gemm_unroll_impl(std::forward<F>(f), std::make_index_sequence<static_cast<std::size_t>(N)>{});
}

/// swish(x) = x / (1 + exp(-x)). The exp argument is clamped to [kExpUnderflow, -kExpUnderflow]: there
/// exp is already 0 or huge enough to give the limits (x or -0), and xsimd 8.1's double exp is undefined
/// behaviour for huge arguments.
template <class T>
inline Batch<T> gemm_swish(const Batch<T>& x) {
  const Batch<T> lo(kExpUnderflow<T>), hi(-kExpUnderflow<T>);
  const Batch<T> e = xsimd::exp(xsimd::min(xsimd::max(-x, lo), hi));
  return x / (Batch<T>(T(1)) + e);
}

/// One kMr x kNr tile: c (ldc) = [c +] a_panel * b_panel over kc depths, then the epilogue when `epi`.
/// bias and gate must be readable for the whole tile (the edge path passes padded copies).
template <class T>
inline void gemm_micro(Index kc, const T* a, const T* b, T* c, Index ldc, bool accumulate, const GemmEpilogue<T>* epi,
                       const T* bias, const T* gate, Index gate_stride) {
  using B = Batch<T>;
  constexpr Index L = kLanes<T>;
  B acc[kGemmMr][2];
  if (accumulate) {
    gemm_unroll<kGemmMr>([&](auto i) {
      acc[i][0] = load(c + i * ldc);
      acc[i][1] = load(c + i * ldc + L);
    });
  } else {
    gemm_unroll<kGemmMr>([&](auto i) {
      acc[i][0] = B(T(0));
      acc[i][1] = B(T(0));
    });
  }
  // Unrolled by 4: a third of the loop-counter and pointer updates (measured ~1% on the GAU shapes).
#pragma GCC unroll 4
  for (Index p = 0; p < kc; ++p) {
    const B b0 = B::load_aligned(b), b1 = B::load_aligned(b + L);
    gemm_unroll<kGemmMr>([&](auto i) {
      const B ai(a[i]);
      acc[i][0] = fmadd(ai, b0, acc[i][0]);
      acc[i][1] = fmadd(ai, b1, acc[i][1]);
    });
    a += kGemmMr;
    b += kGemmNr<T>;
  }
  if (epi) {
    if (bias) {
      const B b0 = load(bias), b1 = load(bias + L);
      gemm_unroll<kGemmMr>([&](auto i) {
        acc[i][0] += b0;
        acc[i][1] += b1;
      });
    }
    if (epi->swish) {
      gemm_unroll<kGemmMr>([&](auto i) {
        acc[i][0] = gemm_swish(acc[i][0]);
        acc[i][1] = gemm_swish(acc[i][1]);
      });
    }
    if (gate) {
      gemm_unroll<kGemmMr>([&](auto i) {
        acc[i][0] *= load(gate + i * gate_stride);
        acc[i][1] *= load(gate + i * gate_stride + L);
      });
    }
  }
  gemm_unroll<kGemmMr>([&](auto i) {
    store(c + i * ldc, acc[i][0]);
    store(c + i * ldc + L, acc[i][1]);
  });
}

/// Values of one thread's packed A block for products of depth k.
template <class T>
inline Index gemm_packed_a_size(Index k) {
  return kGemmMc * std::max<Index>(k, 1);
}

/// C = A op(B) (+ epilogue) on one thread, for all rows of a (a: [m, k], c: [m, n] with n <= b.n and
/// k <= b.k: a prefix of the packed rows and columns). apack: gemm_packed_a_size(k) values.
template <class T>
void gemm_rows(View<const T> a, const PackedB<T>& b, View<T> c, const GemmEpilogue<T>& epi, T* apack) {
  constexpr Index mr = kGemmMr, nr = kGemmNr<T>;
  const Index m = a.rows, n = c.cols, k = a.cols;
  if (m == 0 || n == 0) return;
  const bool has_epi = epi.bias || epi.swish || epi.gate;
  alignas(64) T tile[kGemmMr * kGemmNr<T>];
  alignas(64) T gate_tile[kGemmMr * kGemmNr<T>];
  alignas(64) T bias_tile[kGemmNr<T>];
  // k == 0 runs one block of depth 0 on these (never read): every element is the epilogue applied to 0.
  alignas(64) T zeros[kGemmMr + kGemmNr<T>] = {};
  const Index blocks = std::max<Index>(1, (k + kGemmKc - 1) / kGemmKc);
  for (Index i0 = 0; i0 < m; i0 += kGemmMc) {
    const Index mc = std::min(kGemmMc, m - i0), mpad = gemm_round_up<T>(mc, mr);
    // The whole depth of this row block is packed once, so that the column chunks below can sweep all k
    // blocks while their tile of C stays in L2.
    for (Index blk = 0; blk < blocks && k > 0; ++blk) {
      const Index k0 = blk * kGemmKc;
      gemm_pack_a(View<const T>{a.row(i0), mc, k, a.stride}, k0, std::min(kGemmKc, k - k0), apack + k0 * mpad);
    }
    for (Index c0 = 0; c0 < n; c0 += kGemmNc) {
      const Index c1 = std::min(n, c0 + kGemmNc);
      for (Index blk = 0; blk < blocks; ++blk) {
        const Index k0 = blk * kGemmKc, kc = std::min(kGemmKc, k - k0);
        // The packed B block was laid out for the full depth b.k; we use its first kc rows.
        const Index kc_layout = std::min(kGemmKc, b.k - k0);
        const bool first = blk == 0, last = blk == blocks - 1;
        const GemmEpilogue<T>* e = last && has_epi ? &epi : nullptr;
        for (Index j0 = c0; j0 < c1; j0 += nr) {
          const Index cols = std::min(nr, n - j0);
          const T* bp = k > 0 ? b.data + k0 * b.npad + (j0 / nr) * nr * kc_layout : zeros;
          const T* bias = epi.bias ? epi.bias + j0 : nullptr;
          if (e && epi.bias && cols < nr) {
            for (Index j = 0; j < nr; ++j) bias_tile[j] = j < cols ? epi.bias[j0 + j] : T(0);
            bias = bias_tile;
          }
          for (Index r0 = 0; r0 < mc; r0 += mr) {
            const Index rows = std::min(mr, mc - r0), i = i0 + r0;
            const T* ap = k > 0 ? apack + k0 * mpad + r0 * kc : zeros;
            T* cp = c.row(i) + j0;
            if (rows == mr && cols == nr) {
              gemm_micro(kc, ap, bp, cp, c.stride, !first, e, bias,
                         epi.gate ? epi.gate + i * epi.gate_stride + j0 : nullptr, epi.gate_stride);
              continue;
            }
            // Edge tile: the same kernel on the zero-padded panels into a stack tile; copy the valid part.
            for (Index r = 0; r < mr; ++r)
              for (Index j = 0; j < nr; ++j)
                tile[r * nr + j] = (!first && r < rows && j < cols) ? cp[r * c.stride + j] : T(0);
            const T* gate = nullptr;
            if (e && epi.gate) {
              for (Index r = 0; r < mr; ++r)
                for (Index j = 0; j < nr; ++j)
                  gate_tile[r * nr + j] = (r < rows && j < cols) ? epi.gate[(i + r) * epi.gate_stride + j0 + j] : T(0);
              gate = gate_tile;
            }
            gemm_micro(kc, ap, bp, tile, nr, !first, e, bias, gate, nr);
            for (Index r = 0; r < rows; ++r)
              for (Index j = 0; j < cols; ++j) cp[r * c.stride + j] = tile[r * nr + j];
          }
        }
      }
    }
  }
}

/// Scratch of gemm(): the packed op(B) and one A block per thread. Grows to the largest call, then reused.
template <class T>
struct GemmWorkspace {
  GemmBuffer<T> b;
  std::vector<GemmBuffer<T>> a;
  std::size_t bytes() const {
    std::size_t total = b.size();
    for (const auto& x : a) total += x.size();
    return total * sizeof(T);
  }
};

/// Per-thread A buffers for `threads` threads (call before a parallel region).
template <class T>
void gemm_reserve_a(std::vector<GemmBuffer<T>>& a, Index threads, Index k) {
  if (static_cast<Index>(a.size()) < threads) a.resize(static_cast<std::size_t>(threads));
  for (auto& x : a) gemm_grow(x, gemm_packed_a_size<T>(k));
}

inline Index gemm_thread_id() {
#if defined(_OPENMP)
  return static_cast<Index>(omp_get_thread_num());
#else
  return 0;
#endif
}

/// Rows of C per parallel work item: whole A blocks, enough items for the threads to balance.
inline Index gemm_row_item(Index m, Index threads) {
  if (threads <= 1) return std::max<Index>(m, 1);
  // About four items per thread, in whole micro-panels, at most one A block.
  const Index target = (m + 4 * threads - 1) / (4 * threads);
  return std::min(kGemmMc, std::max(kGemmMr, gemm_round_up<float>(target, kGemmMr)));
}

/// C = A B (+ epilogue) for a B packed already: spreads blocks of rows of C over the threads, each packing its
/// rows of A into its own buffer of `apack` (grown here, before the parallel region).
template <class T>
void gemm_packed(View<const T> a, const PackedB<T>& packed, View<T> c, const GemmEpilogue<T>& epi,
                 std::vector<GemmBuffer<T>>& apack) {
  const Index k = a.cols, n = c.cols, m = c.rows;
  if (m == 0 || n == 0) return;
  const Index threads = std::max(1, max_threads());
  gemm_reserve_a(apack, threads, k);
  const Index rows = gemm_row_item(m, threads), items = (m + rows - 1) / rows;
  // Nested in an outer parallel region, parallel_for runs serially on this thread: use the first buffer.
#if defined(_OPENMP)
  const bool nested = omp_in_parallel() != 0;
#else
  const bool nested = true;
#endif
  parallel_for(items, [&](Index it) {
    const Index r0 = it * rows, r1 = std::min(m, r0 + rows);
    GemmEpilogue<T> e = epi;
    if (e.gate) e.gate += r0 * e.gate_stride;
    gemm_rows(View<const T>{a.row(r0), r1 - r0, k, a.stride}, packed, View<T>{c.row(r0), r1 - r0, n, c.stride}, e,
              apack[static_cast<std::size_t>(nested ? 0 : gemm_thread_id())].data());
  });
}

/// C = A op(B) (+ epilogue): a [m, k], b [k, n] (or [n, k] when b_transposed), c [m, n]. Packs op(B) once,
/// then spreads blocks of rows of C over the threads. c must not overlap a, b or the epilogue's inputs.
template <class T>
void gemm(View<const T> a, View<const T> b, bool b_transposed, View<T> c, const GemmEpilogue<T>& epi,
          GemmWorkspace<T>& ws) {
  const Index k = a.cols, n = c.cols, m = c.rows;
  if (m == 0 || n == 0) return;
  const PackedB<T> packed = gemm_pack_b(b, b_transposed, gemm_grow(ws.b, gemm_packed_b_size<T>(k, n)), true);
  gemm_packed(a, packed, c, epi, ws.a);
}

// ---- bf16 x bf16 -> float (issue 13) ---------------------------------------------------------------------------
// The same loop nest with both operands in bfloat16, packed as pairs of consecutive depths in 32-bit lanes (depth
// 2q in the low half, 2q + 1 in the high half: vdpbf16ps's layout), so one k step of the micro-kernel is two depths.
// C(i, j) is again one chain in depth order, acc = (acc + A(i, 2q+1) B(2q+1, j)) + A(i, 2q) B(2q, j), each
// addition rounded to float (the products of two bf16 are exact in float): vdpbf16ps in the kDot layout, two FMAs
// on halves widened when packing in the other, the same bits for normal numbers (vdpbf16ps flushes subnormal
// inputs and results to zero). kDot defaults to kPreferBf16Dot (arch/x86.hpp: vdpbf16ps only on the cores where it
// is faster than widening); tests run both layouts. An odd k pads the last pair with a zero depth.

/// Depth pairs per k block: the same 384 depths, so a B micro-panel has the float one's 24 KiB on every width.
constexpr Index kGemmKcPairs = kGemmKc / 2;

inline std::uint32_t gemm_bf16_pair(const Eigen::bfloat16* lo, const Eigen::bfloat16* hi) {
  return std::uint32_t(generic::bits16(*lo)) | (hi ? std::uint32_t(generic::bits16(*hi)) << 16 : 0u);
}

/// 32-bit words per B element pair in a packed B panel: the pair for vdpbf16ps; elsewhere its halves widened to
/// float bits (kNr odd-depth floats, then kNr even-depth floats), so the widening micro-kernel is the float one's
/// loop with loads only (widening in the kernel needs two more live registers than AVX2's 16: measured 0.7x of
/// the float GEMM with spills, against the float GEMM's rate this way).
template <bool kDot>
constexpr Index kGemmBf16Words = kDot ? 1 : 2;
constexpr Index kGemmBf16BWords = kGemmBf16Words<kPreferBf16Dot>;

/// Packs op(B) [k, n] (src [k, n], or src^T with `transposed`) into pair micro-panels: block b (pairs
/// [b kGemmKcPairs, ...)) starts at b kGemmKcPairs * npad * kGemmBf16Words<kDot>; panel j in it is kcp x kNr pairs,
/// element (q, c) at q kNr + c (or its halves at 2 q kNr + c and (2 q + 1) kNr + c).
template <bool kDot = kPreferBf16Dot>
inline PackedB<std::uint32_t> gemm_bf16_pack_b(View<const Eigen::bfloat16> src, bool transposed, std::uint32_t* dst) {
  constexpr Index nr = kGemmNr<float>;
  const Index k = transposed ? src.cols : src.rows, n = transposed ? src.rows : src.cols;
  const Index kp = (k + 1) / 2, npad = gemm_round_up<float>(n, nr);
  auto at = [&](Index p, Index j) -> const Eigen::bfloat16* {
    if (p >= k || j >= n) return nullptr;
    return transposed ? src.row(j) + p : src.row(p) + j;
  };
  for (Index q0 = 0; q0 < kp; q0 += kGemmKcPairs) {
    const Index kcp = std::min(kGemmKcPairs, kp - q0);
    for (Index j0 = 0; j0 < npad; j0 += nr) {
      std::uint32_t* d = dst + (q0 * npad + j0 * kcp) * kGemmBf16Words<kDot>;
      for (Index q = 0; q < kcp; ++q) {
        const Index p = 2 * (q0 + q);
        for (Index c = 0; c < nr; ++c) {
          const Eigen::bfloat16* lo = at(p, j0 + c);
          const std::uint32_t pair = lo ? gemm_bf16_pair(lo, at(p + 1, j0 + c)) : 0u;
          if constexpr (kDot) {
            d[q * nr + c] = pair;
          } else {
            d[2 * q * nr + c] = pair & 0xFFFF0000u;
            d[(2 * q + 1) * nr + c] = pair << 16;
          }
        }
      }
    }
  }
  return {dst, kp, n, npad};  // k counts pairs here
}

/// 32-bit words per A element pair in a packed A panel: the pair itself for vdpbf16ps; elsewhere its two halves
/// already widened to float bits (odd, then even, each kMr rows), so the micro-kernel broadcasts them straight
/// from memory instead of widening 12 scalars per step.
constexpr Index kGemmBf16AWords = kGemmBf16Words<kPreferBf16Dot>;

/// Packs rows [0, rows) and pairs [q0, q0 + kcp) of A [rows, k] into kMr x kcp micro-panels (rows zero padded),
/// kGemmBf16Words<kDot> words per pair.
template <bool kDot = kPreferBf16Dot>
inline void gemm_bf16_pack_a(View<const Eigen::bfloat16> a, Index q0, Index kcp, std::uint32_t* dst) {
  constexpr Index mr = kGemmMr, w = kGemmBf16Words<kDot>;
  for (Index r0 = 0; r0 < a.rows; r0 += mr) {
    const Index rows = std::min(mr, a.rows - r0);
    std::uint32_t* d = dst + r0 * kcp * w;
    for (Index r = 0; r < mr; ++r) {
      const Eigen::bfloat16* s = r < rows ? a.row(r0 + r) : nullptr;
      for (Index q = 0; q < kcp; ++q) {
        const Index p = 2 * (q0 + q);
        const std::uint32_t pair = s ? gemm_bf16_pair(s + p, p + 1 < a.cols ? s + p + 1 : nullptr) : 0u;
        if constexpr (w == 1) {
          d[q * mr + r] = pair;
        } else {
          d[q * 2 * mr + r] = pair & 0xFFFF0000u;  // odd depth as float bits
          d[q * 2 * mr + mr + r] = pair << 16;      // even depth
        }
      }
    }
  }
}

/// One kMr x kNr tile: c (ldc) = [c +] a_panel * b_panel over kcp depth pairs.
template <bool kDot>
inline void gemm_bf16_micro(Index kcp, const std::uint32_t* a, const std::uint32_t* b, float* c, Index ldc,
                            bool accumulate) {
  using B = Batch<float>;
  using U = Batch<std::uint32_t>;
  constexpr Index L = kLanes<float>;
  B acc[kGemmMr][2];
  gemm_unroll<kGemmMr>([&](auto i) {
    acc[i][0] = accumulate ? load(c + i * ldc) : B(0.0f);
    acc[i][1] = accumulate ? load(c + i * ldc + L) : B(0.0f);
  });
  for (Index q = 0; q < kcp; ++q) {
    if constexpr (kDot) {
      const U b0 = U::load_aligned(b), b1 = U::load_aligned(b + L);
      // 12 accumulators + 2 B registers + 1 broadcast: two bf16 products per lane per instruction.
      gemm_unroll<kGemmMr>([&](auto i) {
        const U ai(a[i]);
        acc[i][0] = dot_bf16_pairs(acc[i][0], ai, b0);
        acc[i][1] = dot_bf16_pairs(acc[i][1], ai, b1);
      });
    } else {
      // Odd depths for every row, then even ones: only two widened B registers are live at a time (12 + 2 + 1
      // of AVX2's 16), and each lane still adds its odd product before its even one.
      // The halves were widened when B was packed (the odd depth's kNr floats, then the even one's).
      const float* bf = reinterpret_cast<const float*>(b);
      const B o0 = B::load_aligned(bf), o1 = B::load_aligned(bf + L);
      gemm_unroll<kGemmMr>([&](auto i) {
        const B ai(generic::bits_float(a[i]));
        acc[i][0] = fmadd(ai, o0, acc[i][0]);
        acc[i][1] = fmadd(ai, o1, acc[i][1]);
      });
      const B e0 = B::load_aligned(bf + 2 * L), e1 = B::load_aligned(bf + 3 * L);
      gemm_unroll<kGemmMr>([&](auto i) {
        const B ai(generic::bits_float(a[kGemmMr + i]));
        acc[i][0] = fmadd(ai, e0, acc[i][0]);
        acc[i][1] = fmadd(ai, e1, acc[i][1]);
      });
    }
    a += kGemmMr * kGemmBf16Words<kDot>;
    b += kGemmNr<float> * kGemmBf16Words<kDot>;
  }
  gemm_unroll<kGemmMr>([&](auto i) {
    store(c + i * ldc, acc[i][0]);
    store(c + i * ldc + L, acc[i][1]);
  });
}

/// C = A op(B) on one thread for all rows of a (a: [m, k] bf16, c: [m, n] float, b packed by gemm_bf16_pack_b
/// for depth >= k in the same layout: a prefix of its depths and columns, as gemm_rows). apack: kGemmMc * pairs *
/// kGemmBf16Words<kDot> values.
template <bool kDot = kPreferBf16Dot>
inline void gemm_bf16_rows(View<const Eigen::bfloat16> a, const PackedB<std::uint32_t>& b, View<float> c,
                           std::uint32_t* apack) {
  constexpr Index mr = kGemmMr, nr = kGemmNr<float>;
  const Index m = a.rows, n = c.cols, kp = (a.cols + 1) / 2;
  if (m == 0 || n == 0) return;
  alignas(64) float tile[kGemmMr * kGemmNr<float>];
  const Index blocks = std::max<Index>(1, (kp + kGemmKcPairs - 1) / kGemmKcPairs);
  for (Index i0 = 0; i0 < m; i0 += kGemmMc) {
    const Index mc = std::min(kGemmMc, m - i0), mpad = gemm_round_up<float>(mc, mr);
    for (Index blk = 0; blk < blocks && kp > 0; ++blk) {
      const Index q0 = blk * kGemmKcPairs;
      gemm_bf16_pack_a<kDot>(View<const Eigen::bfloat16>{a.row(i0), mc, a.cols, a.stride}, q0,
                       std::min(kGemmKcPairs, kp - q0), apack + q0 * mpad * kGemmBf16Words<kDot>);
    }
    for (Index c0 = 0; c0 < n; c0 += kGemmNc) {
      const Index c1 = std::min(n, c0 + kGemmNc);
      for (Index blk = 0; blk < blocks; ++blk) {
        const Index q0 = blk * kGemmKcPairs, kcp = kp > 0 ? std::min(kGemmKcPairs, kp - q0) : 0;
        // The packed B block was laid out for its full depth b.k; we use its first kcp pairs.
        const Index kcp_layout = kp > 0 ? std::min(kGemmKcPairs, b.k - q0) : 0;
        const bool first = blk == 0;
        for (Index j0 = c0; j0 < c1; j0 += nr) {
          const Index cols = std::min(nr, n - j0);
          const std::uint32_t* bp = b.data + (q0 * b.npad + j0 * kcp_layout) * kGemmBf16Words<kDot>;
          for (Index r0 = 0; r0 < mc; r0 += mr) {
            const Index rows = std::min(mr, mc - r0);
            const std::uint32_t* ap = apack + (q0 * mpad + r0 * kcp) * kGemmBf16Words<kDot>;
            float* cp = c.row(i0 + r0) + j0;
            if (rows == mr && cols == nr) {
              gemm_bf16_micro<kDot>(kcp, ap, bp, cp, c.stride, !first);
              continue;
            }
            for (Index r = 0; r < mr; ++r)
              for (Index j = 0; j < nr; ++j)
                tile[r * nr + j] = (!first && r < rows && j < cols) ? cp[r * c.stride + j] : 0.0f;
            gemm_bf16_micro<kDot>(kcp, ap, bp, tile, nr, !first);
            for (Index r = 0; r < rows; ++r)
              for (Index j = 0; j < cols; ++j) cp[r * c.stride + j] = tile[r * nr + j];
          }
        }
      }
    }
  }
}

/// Scratch of gemm_bf16(): the packed op(B) and one A block per thread, in bf16 pairs.
struct GemmBf16Workspace {
  GemmBuffer<std::uint32_t> b;
  std::vector<GemmBuffer<std::uint32_t>> a;
};

/// C = A op(B), float accumulation: a [m, k] and b [k, n] (or [n, k] when b_transposed) in bfloat16, c [m, n] in
/// float. Each C(i, j) is one chain in depth order (see above): bitwise the same for any thread count, and on
/// normal numbers the same in either layout, with or without AVX512-BF16. c must not overlap a or b.
template <bool kDot = kPreferBf16Dot>
inline void gemm_bf16(View<const Eigen::bfloat16> a, View<const Eigen::bfloat16> b, bool b_transposed, View<float> c,
                      GemmBf16Workspace& ws) {
  const Index k = a.cols, n = c.cols, m = c.rows, kp = (k + 1) / 2;
  if (m == 0 || n == 0) return;
  const Index threads = std::max(1, max_threads());
  const PackedB<std::uint32_t> packed = gemm_bf16_pack_b<kDot>(
      b, b_transposed,
      gemm_grow(ws.b, std::max<Index>(kp, 1) * gemm_round_up<float>(n, kGemmNr<float>) * kGemmBf16Words<kDot>));
  if (static_cast<Index>(ws.a.size()) < threads) ws.a.resize(static_cast<std::size_t>(threads));
  for (auto& x : ws.a) gemm_grow(x, kGemmMc * std::max<Index>(kp, 1) * kGemmBf16Words<kDot>);
  const Index rows = gemm_row_item(m, threads), items = (m + rows - 1) / rows;
#if defined(_OPENMP)
  const bool nested = omp_in_parallel() != 0;
#else
  const bool nested = true;
#endif
  parallel_for(items, [&](Index it) {
    const Index r0 = it * rows, r1 = std::min(m, r0 + rows);
    gemm_bf16_rows<kDot>(View<const Eigen::bfloat16>{a.row(r0), r1 - r0, k, a.stride}, packed,
                   View<float>{c.row(r0), r1 - r0, n, c.stride},
                   ws.a[static_cast<std::size_t>(nested ? 0 : gemm_thread_id())].data());
  });
}

}  // namespace kexue::detail
