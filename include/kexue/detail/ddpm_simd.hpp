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
#include <limits>
#include <type_traits>

#include "kexue/core.hpp"
#include "kexue/detail/arch/ops.hpp"
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// torch.clamp(v, lo, hi): NaN stays NaN (the comparison-based min/max of some instruction sets would drop it).
template <class T>
inline T clamp_keep_nan(T v, T lo, T hi) {
  return v != v ? v : std::min(std::max(v, lo), hi);
}
template <class T>
inline Batch<T> clamp_keep_nan(const Batch<T>& v, const Batch<T>& lo, const Batch<T>& hi) {
  return xsimd::select(xsimd::isnan(v), v, xsimd::min(xsimd::max(v, lo), hi));  // != is an ordered compare
}

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
      const Batch<T> x0 = clamp_keep_nan(fmadd(ax, xv, am * load(m + i)), lo, hi);
      Batch<T> r = fmadd(c0, x0, c1 * xv);
      if (noise) r = fmadd(s, load(z + i), r);
      store(out + i, r);
    }
    for (; i < n; ++i) {
      const T x0 = clamp_keep_nan(madd(c.ax, x[i], c.am * m[i]), c.lo, c.hi);
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

/// The order statistics that torch.quantile(|v|, ratio) interpolates, for dynamic thresholding, without a copy or
/// a sort: v_i = value(i) is recomputed on every pass exactly as the step kernel computes it, and the k-th
/// smallest |v| is found by radix selection on its bits (|v| as an unsigned integer orders like the value; NaN
/// ranks above +inf), 11 bits per pass with a histogram on the stack: 3 passes for float, 6 for double.
template <class T, class F>
class AbsValueSelector {
 public:
  using Key = std::conditional_t<std::is_same<T, float>::value, std::uint32_t, std::uint64_t>;

  AbsValueSelector(F value, Index n) : value_(value), n_(n) {}

  /// The k-th smallest |v| (0-based), 0 <= k < n, as its key.
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
    const T v = value_(i);
    Key key;
    std::memcpy(&key, &v, sizeof key);
    return key & ~(Key(1) << (sizeof(Key) * 8 - 1));  // drop the sign: |v|
  }

  F value_;
  Index n_;
};

/// x0_hat_i = fma(ax, x_i, am m_i), exactly as the default (Exact) step kernel computes it.
template <class T>
struct FusedX0 {
  T ax, am;
  const T* m;
  const T* x;
  T operator()(Index i) const { return madd(ax, x[i], am * m[i]); }
};

/// Radix selection over |x0_hat| of the default step kernel.
template <class T>
class AbsX0Selector : public AbsValueSelector<T, FusedX0<T>> {
 public:
  AbsX0Selector(T ax, T am, const T* m, const T* x, Index n)
      : AbsValueSelector<T, FusedX0<T>>(FusedX0<T>{ax, am, m, x}, n) {}
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

// ---- ScheduleArithmetic::DiffusersFloat32: diffusers' own operation order ---------------------------------
// diffusers (58eb52c, scheduling_ddpm.py) evaluates the step as a chain of separate torch ops, each rounded to the
// data type: no multiply-add is fused. The kernels below round every product on its own (rounded() / opaque():
// an empty asm the compiler cannot see through), so a compiler that contracts a * b + c into an FMA (GCC's
// default -ffp-contract=fast, in any -march build) cannot change a bit.

/// v, rounded on its own: a product that feeds an addition is not contracted into an FMA.
template <class T>
inline T rounded(T v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__SSE2_MATH__))
  __asm__("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(v));
#else
  volatile T t = v;
  v = t;
#endif
  return v;
}
template <class T>
inline Batch<T> rounded(const Batch<T>& v) {
  return opaque(v);
}

/// a / b correctly rounded. xsimd's float division on NEON (8.1, Debian's) is a reciprocal estimate refined by
/// Newton-Raphson, off by an ulp in places; x86's division instructions are IEEE. Elsewhere the lanes are divided
/// one by one (only the DiffusersFloat32 step divides per element).
template <class T>
inline T divide_ieee(T a, T b) {
  return a / b;
}
template <class T>
inline Batch<T> divide_ieee(const Batch<T>& a, const Batch<T>& b) {
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
  return a / b;
#else
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T x[L], y[L];
  a.store_aligned(x);
  b.store_aligned(y);
  for (std::size_t i = 0; i < L; ++i) x[i] = x[i] / y[i];
  return Batch<T>::load_aligned(x);
#endif
}


/// The step in diffusers' order. Coefficients are diffusers' float32 scalars converted to T (a float64 sample
/// promotes them, as torch does):
///   x0 = (x - sb m) / sa | m | sa x - sb m          (epsilon | sample | v_prediction)
///   x0 = clamp(x0, lo, hi)  [/ div]                  (clip_sample, or dynamic thresholding with s = div)
///   out = c0 x0 + c1 x  [+ s z]
template <class T>
struct DiffusersStepCoef {
  int prediction = 0;  // 0 epsilon, 1 sample, 2 v_prediction
  T sa = 0, sb = 0;    // alpha_prod_t ** 0.5, beta_prod_t ** 0.5
  T c0 = 0, c1 = 0;    // pred_original_sample_coeff, current_sample_coeff
  T s = 0;             // variance ** 0.5
  bool noise = false;  // add s z (even when s == 0, as diffusers does)
  bool clip = false;
  T lo = 0, hi = 0;
  bool divide = false;  // dynamic thresholding: divide the clamped x0 by div
  T div = 1;
};

/// The unclipped x0_hat of one element (scalar or register).
template <class V>
inline V diffusers_x0(int prediction, const V& sa, const V& sb, const V& m, const V& x) {
  switch (prediction) {
    case 0:
      return divide_ieee(V(x - rounded(sb * m)), sa);
    case 1:
      return m;
    default:
      return rounded(sa * x) - rounded(sb * m);
  }
}

template <class V>
inline V diffusers_finish(const V& x0_raw, const V& x, const V* z, bool clip, const V& lo, const V& hi, bool divide,
                          const V& div, const V& c0, const V& c1, const V& s, const V& zero) {
  V x0 = x0_raw;
  if (clip) x0 = clamp_keep_nan(x0, lo, hi);
  if (divide) x0 = divide_ieee(x0, div);
  V r = rounded(c0 * x0) + rounded(c1 * x);
  // Without noise diffusers still adds `variance = 0` (a Python int), which turns -0 into +0.
  return z ? r + rounded(s * *z) : r + zero;
}

/// One contiguous range of the diffusers-order step. z is read only when c.noise. out may be x or m itself.
template <class T>
inline void diffusers_step_range(const DiffusersStepCoef<T>& c, const T* m, const T* x, const T* z, T* out, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> sa(c.sa), sb(c.sb), c0(c.c0), c1(c.c1), s(c.s), lo(c.lo), hi(c.hi), div(c.div);
  Index i = 0;
  for (; i + L <= n; i += L) {
    const Batch<T> xv = load(x + i);
    const Batch<T> x0 = diffusers_x0(c.prediction, sa, sb, load(m + i), xv);
    Batch<T> zv(T(0));
    if (c.noise) zv = load(z + i);
    store(out + i,
          diffusers_finish(x0, xv, c.noise ? &zv : nullptr, c.clip, lo, hi, c.divide, div, c0, c1, s, Batch<T>(T(0))));
  }
  for (; i < n; ++i) {
    const T xv = x[i];
    const T x0 = diffusers_x0(c.prediction, c.sa, c.sb, m[i], xv);
    const T zv = c.noise ? z[i] : T(0);
    out[i] = diffusers_finish(x0, xv, c.noise ? &zv : nullptr, c.clip, c.lo, c.hi, c.divide, c.div, c.c0, c.c1, c.s,
                              T(0));
  }
}

/// out = a u + b v with each product rounded on its own (diffusers' add_noise and get_velocity). out may be u or v.
template <class T>
inline void axpby_rounded_range(T a, const T* u, T b, const T* v, T* out, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> va(a), vb(b);
  Index i = 0;
  for (; i + L <= n; i += L) store(out + i, rounded(va * load(u + i)) + rounded(vb * load(v + i)));
  for (; i < n; ++i) out[i] = rounded(a * u[i]) + rounded(b * v[i]);
}

/// The diffusers-order x0_hat of element i (dynamic thresholding's quantile input).
template <class T>
struct DiffusersX0 {
  int prediction;
  T sa, sb;
  const T* m;
  const T* x;
  T operator()(Index i) const { return diffusers_x0(prediction, sa, sb, m[i], x[i]); }
};

/// torch.quantile(|x0_hat|, ratio) as torch computes it in T: q = T(ratio), rank = q (n - 1) in T, the order
/// statistics below and above, then torch's lerp (fused on the AVX2 build of torch: self + w (end - self) for
/// |w| < 0.5, else end - (end - self)(1 - w)). A NaN anywhere makes the quantile NaN. n >= 1.
template <class T>
T torch_quantile_abs_x0(const DiffusersStepCoef<T>& c, const T* m, const T* x, Index n, double ratio) {
  const DiffusersX0<T> f{c.prediction, c.sa, c.sb, m, x};
  for (Index i = 0; i < n; ++i)
    if (std::isnan(f(i))) return std::numeric_limits<T>::quiet_NaN();
  const AbsValueSelector<T, DiffusersX0<T>> sel(f, n);
  const T rank = T(ratio) * T(n - 1);
  const Index below = static_cast<Index>(rank);
  const T weight = rank - T(below);
  const Index above = static_cast<Index>(std::ceil(rank));
  const auto k_key = sel.kth(below);
  const T lo = AbsValueSelector<T, DiffusersX0<T>>::value(k_key);
  const T hi = above > below ? AbsValueSelector<T, DiffusersX0<T>>::value(sel.next(below, k_key)) : lo;
  const T diff = hi - lo;
  return std::abs(weight) < T(0.5) ? std::fma(weight, diff, lo) : std::fma(-diff, T(1) - weight, hi);
}

}  // namespace kexue::detail
