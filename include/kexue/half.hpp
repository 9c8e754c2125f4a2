// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// 16-bit storage: Eigen 3.4's Eigen::half (IEEE binary16) and Eigen::bfloat16 as the element types of
/// kexue::Matrix, Eigen::Map and TensorView, and the bulk conversions between them and float.
///
/// Rounding is to nearest even, bit for bit as PyTorch's `Tensor.to(torch.float16 / torch.bfloat16)`: fp16
/// subnormals are exact, |x| >= 65520 becomes inf, a NaN becomes sign | 0x7E00 (fp16) or 0xFFFF (bf16, what
/// torch 1.13's CPU conversion writes); bf16 keeps float's exponent range (subnormals exact). Widening is exact.
/// The vector forms are F16C / AVX-512F on x86 (fp16; builds without -mf16c convert lane by lane), NEON's
/// fcvtl / fcvtn on ARM64, and integer shifts for bf16 everywhere (detail/arch/).

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kexue/core.hpp"
#include "kexue/detail/arch/ops.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

namespace detail {

/// Floats of one batch per step, four batches per iteration: enough loads in flight to keep a stream at
/// memory bandwidth (each step is a load, one or two conversion instructions and a store).
constexpr Index kConvertUnroll = 4;

template <class H>
inline void narrow_n(const float* src, H* dst, Index n) {
  constexpr Index L = kLanes<float>;
  Index i = 0;
  for (; i + kConvertUnroll * L <= n; i += kConvertUnroll * L) {
    for (Index u = 0; u < kConvertUnroll; ++u) store_narrow<H>(dst + i + u * L, load(src + i + u * L));
  }
  for (; i + L <= n; i += L) store_narrow<H>(dst + i, load(src + i));
  for (; i < n; ++i) dst[i] = from_float<H>(src[i]);
}

/// Widened outputs of at least this many bytes are stored non-temporally (store_stream): they do not stay in a
/// core's share of the last-level cache, so an ordinary store only adds a read of each line before its write
/// (kNormStreamBytes in norm.hpp). Measured with bench_half, 2^24 bf16 or fp16 values into a std::vector<float>,
/// one thread, Intel Xeon (Emerald Rapids): 11.3-11.9 ms (AVX2) and 12.3-13.2 ms (AVX-512) with ordinary
/// unaligned stores, 3.8-4.5 ms with the aligned head and streamed stores, in both builds.
constexpr Index kConvertStreamBytes = Index(16) << 20;

/// The widening loop from element i on, dst + i aligned to the register when kAligned.
template <bool kAligned, bool kStream, class H>
inline Index widen_loop(const H* src, float* dst, Index i, Index n) {
  constexpr Index L = kLanes<float>;
  auto put = [&](Index at) {
    const Batch<float> v = load_widen<H>(src + at);
    if constexpr (kStream) {
      store_stream(dst + at, v);
    } else if constexpr (kAligned) {
      v.store_aligned(dst + at);
    } else {
      store(dst + at, v);
    }
  };
  for (; i + kConvertUnroll * L <= n; i += kConvertUnroll * L) {
    for (Index u = 0; u < kConvertUnroll; ++u) put(i + u * L);
  }
  for (; i + L <= n; i += L) put(i);
  if constexpr (kStream) stream_fence();
  return i;
}

template <class H>
inline void widen_n(const H* src, float* dst, Index n) {
  constexpr std::uintptr_t kBytes = sizeof(float) * kLanes<float>;
  Index i = 0;
  // Scalar head until dst is register-aligned: a 64-byte store into a 16-byte-aligned std::vector straddles two
  // cache lines every time.
  const std::uintptr_t misalign = reinterpret_cast<std::uintptr_t>(dst) % kBytes;
  if (misalign % sizeof(float) == 0) {
    const Index head = std::min<Index>(n, Index((kBytes - misalign) % kBytes / sizeof(float)));
    for (; i < head; ++i) dst[i] = to_float<H>(src[i]);
    i = n * Index(sizeof(float)) >= kConvertStreamBytes ? widen_loop<true, true>(src, dst, i, n)
                                                        : widen_loop<true, false>(src, dst, i, n);
  } else {
    i = widen_loop<false, false>(src, dst, i, n);
  }
  for (; i < n; ++i) dst[i] = to_float<H>(src[i]);
}

}  // namespace detail

/// Converts src into dst element by element: float -> Eigen::half / Eigen::bfloat16 (round to nearest even,
/// as torch's `.to()`), or Eigen::half / Eigen::bfloat16 -> float (exact). src and dst are any contiguous Eigen
/// dense objects (Matrix, Vector, Map, a block of whole rows) of the same shape and, when both have more than one
/// row and column, the same storage order; they must not overlap. Throws kexue::Error before writing otherwise.
template <class Src, class Dst>
void convert(const Eigen::DenseBase<Src>& src, const Eigen::DenseBase<Dst>& dst) {
  using S = typename Src::Scalar;
  using D = typename Dst::Scalar;
  static_assert((std::is_same<S, float>::value && detail::kIs16Bit<D>) ||
                    (detail::kIs16Bit<S> && std::is_same<D, float>::value),
                "kexue::convert: float -> Eigen::half / Eigen::bfloat16, or Eigen::half / Eigen::bfloat16 -> float");
  static_assert(bool(Dst::Flags & Eigen::LvalueBit), "kexue::convert: dst must be writable");
  const auto& s = src.derived();
  const auto& d = dst.derived();
  constexpr const char* kFn = "convert";
  detail::require(s.rows() == d.rows() && s.cols() == d.cols(), kFn, "dst has shape ",
                  detail::shape_str(d.rows(), d.cols()), " but src has shape ", detail::shape_str(s.rows(), s.cols()));
  const S* sp = detail::flat_data(kFn, "src", src);
  const D* dp = detail::flat_data(kFn, "dst", dst);
  const bool matrix = s.rows() > 1 && s.cols() > 1;
  detail::require(!matrix || bool(Src::IsRowMajor) == bool(Dst::IsRowMajor), kFn, "src ",
                  detail::shape_str(s.rows(), s.cols()), " is ", Src::IsRowMajor ? "row" : "column",
                  "-major but dst is ", Dst::IsRowMajor ? "row" : "column", "-major");
  const Index n = s.size();
  if (n == 0) return;
  const char* s0 = reinterpret_cast<const char*>(sp);
  const char* d0 = reinterpret_cast<const char*>(dp);
  detail::require(s0 + n * Index(sizeof(S)) <= d0 || d0 + n * Index(sizeof(D)) <= s0, kFn,
                  "src and dst overlap in memory");
  if constexpr (std::is_same<S, float>::value) {
    detail::narrow_n(sp, const_cast<D*>(dp), n);
  } else {
    detail::widen_n(sp, const_cast<D*>(dp), n);
  }
}

}  // namespace kexue
