// SPDX-License-Identifier: MIT
#pragma once
// Elementwise DDPM kernels. Every coefficient is computed once per call in double (ddpm.hpp) and rounded to
// T here; the per-element work is two or three FMAs, so these loops are bound by memory bandwidth and the
// only goal is to stream each array exactly once.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kexue/core.hpp"
#include "kexue/detail/arch/ops.hpp"
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// The step as out = c0 clamp(ax x + am m) + c1 x + s z (clip), or out = a x + b m + s z (no clip),
/// with x the sample, m the model output and z the noise.
template <class T>
struct DdpmStepCoef {
  T ax, am;          // x0_hat = ax * x + am * m
  T c0, c1;          // posterior mean = c0 * x0_hat + c1 * x
  T fold_x, fold_m;  // without clipping: mean = fold_x * x + fold_m * m
  T s;               // noise scale; 0 means no noise (z is not read)
  bool clip;
  T lo, hi;
};

/// One contiguous range. z may be null when s == 0. out may be the same pointer as x or m (each element
/// is read before it is written, at the same index).
template <class T>
inline void ddpm_step_range(const DdpmStepCoef<T>& c, const T* m, const T* x, const T* z, T* out, Index n) {
  constexpr Index L = kLanes<T>;
  const bool noise = c.s != T(0) && z != nullptr;
  Index i = 0;
  if (c.clip) {
    const Batch<T> ax(c.ax), am(c.am), c0(c.c0), c1(c.c1), s(c.s), lo(c.lo), hi(c.hi);
    for (; i + L <= n; i += L) {
      const Batch<T> xv = load(x + i);
      const Batch<T> x0 = xsimd::min(xsimd::max(fmadd(ax, xv, am * load(m + i)), lo), hi);
      Batch<T> r = fmadd(c0, x0, c1 * xv);
      if (noise) r = fmadd(s, load(z + i), r);
      store(out + i, r);
    }
    for (; i < n; ++i) {
      const T x0 = std::min(std::max(madd(c.ax, x[i], c.am * m[i]), c.lo), c.hi);
      T r = madd(c.c0, x0, c.c1 * x[i]);
      if (noise) r = madd(c.s, z[i], r);
      out[i] = r;
    }
    return;
  }
  const Batch<T> fx(c.fold_x), fm(c.fold_m), s(c.s);
  if (noise) {
    // Two loops instead of a branch per register: the noiseless step is the bandwidth benchmark.
    for (; i + L <= n; i += L) store(out + i, fmadd(s, load(z + i), fmadd(fx, load(x + i), fm * load(m + i))));
    for (; i < n; ++i) out[i] = madd(c.s, z[i], madd(c.fold_x, x[i], c.fold_m * m[i]));
  } else {
    for (; i + L <= n; i += L) store(out + i, fmadd(fx, load(x + i), fm * load(m + i)));
    for (; i < n; ++i) out[i] = madd(c.fold_x, x[i], c.fold_m * m[i]);
  }
}

/// out = a * u + b * v over a contiguous range (add_noise, velocity). out may be u or v itself.
template <class T>
inline void axpby_range(T a, const T* u, T b, const T* v, T* out, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> va(a), vb(b);
  Index i = 0;
  for (; i + L <= n; i += L) store(out + i, fmadd(va, load(u + i), vb * load(v + i)));
  for (; i < n; ++i) out[i] = madd(a, u[i], b * v[i]);
}

/// The order statistics that torch.quantile(|x0_hat|, ratio) interpolates, for dynamic thresholding, without a
/// copy or a sort: x0_hat_i = fma(ax, x_i, am m_i) exactly as the step kernels compute it, and the k-th smallest
/// |x0_hat| is found by radix selection on its bits (|v| as an unsigned integer orders like the value; NaN ranks
/// above +inf), 11 bits per pass with a histogram on the stack: 3 passes for float, 6 for double.
template <class T>
class AbsX0Selector {
 public:
  using Key = std::conditional_t<std::is_same<T, float>::value, std::uint32_t, std::uint64_t>;

  AbsX0Selector(T ax, T am, const T* m, const T* x, Index n) : ax_(ax), am_(am), m_(m), x_(x), n_(n) {}

  /// The k-th smallest |x0_hat| (0-based), 0 <= k < n, as its key.
  Key kth(Index k) const {
    constexpr int kValueBits = int(sizeof(Key)) * 8 - 1, kDigit = 11;
    Key prefix = 0, known = 0;  // the bits of the answer found so far, and which bits those are
    Index rank = k;
    std::array<Index, std::size_t(1) << kDigit> hist;
    for (int shift = kValueBits; shift > 0;) {
      const int width = std::min(kDigit, shift);
      shift -= width;
      const Key digit_mask = (Key(1) << width) - 1;
      hist.fill(0);
      for (Index i = 0; i < n_; ++i) {
        const Key key = key_at(i);
        if ((key & known) == prefix) ++hist[std::size_t((key >> shift) & digit_mask)];
      }
      Key d = 0;
      while (rank >= hist[std::size_t(d)]) rank -= hist[std::size_t(d++)];
      prefix |= d << shift;
      known |= digit_mask << shift;
    }
    return prefix;
  }

  /// The (k+1)-th smallest given the k-th: the same key when more than k + 1 values are <= it, else the
  /// smallest key above it.
  Key next(Index k, Key kth_key) const {
    Index at_most = 0;
    Key above = ~Key(0);
    for (Index i = 0; i < n_; ++i) {
      const Key key = key_at(i);
      if (key <= kth_key)
        ++at_most;
      else
        above = std::min(above, key);
    }
    return at_most > k + 1 ? kth_key : above;
  }

  static T value(Key key) {
    T v;
    std::memcpy(&v, &key, sizeof v);
    return v;
  }

 private:
  Key key_at(Index i) const {
    const T v = madd(ax_, x_[i], am_ * m_[i]);
    Key key;
    std::memcpy(&key, &v, sizeof key);
    return key & ~(Key(1) << (sizeof(Key) * 8 - 1));  // drop the sign: |v|
  }

  T ax_, am_;
  const T* m_;
  const T* x_;
  Index n_;
};

/// torch.quantile(|x0_hat|, ratio) with its default linear interpolation, over n >= 1 values.
template <class T>
double quantile_abs_x0(T ax, T am, const T* m, const T* x, Index n, double ratio) {
  const AbsX0Selector<T> sel(ax, am, m, x, n);
  const double pos = ratio * double(n - 1);
  const Index below = std::min<Index>(static_cast<Index>(pos), n - 1);
  const double weight = pos - double(below);
  const auto k_key = sel.kth(below);
  const double lo = double(AbsX0Selector<T>::value(k_key));
  if (weight == 0 || below + 1 >= n) return lo;
  const double hi = double(AbsX0Selector<T>::value(sel.next(below, k_key)));
  return lo + weight * (hi - lo);
}

}  // namespace kexue::detail
