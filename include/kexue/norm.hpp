// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Layer and RMS normalisation over the last dimension (SPEC.md section 7.1), with the residual add fused in.
///
///     layer_norm: y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta    (biased variance, 1/d)
///     rms_norm:   y = x / sqrt(mean(x^2) + eps) * gamma
/// over each row of x ([n, d]); gamma and beta are vectors of d entries, or of 0 entries for "no scale" /
/// "no offset". The fused forms read x and residual once:
///     Post-Norm (x_{t+1} = Norm(x_t + F(x_t))):  out = norm(x + residual)
///     Pre-Norm  (x_{t+1} = x_t + F(Norm(x_t))):   sum = x + residual, out = norm(sum)
///
/// Epsilon defaults differ between peers; each is a named constant below. The API defaults are PyTorch's
/// (1e-5 for layer_norm, as torch.nn.LayerNorm) and T5 / LLaMA's RMSNorm (1e-6). bert4keras models use
/// K.epsilon() = 1e-7 (kKerasEpsilon), BERT checkpoints 1e-12 (kBertEpsilon).
///
/// Where mean(x^2) + eps (or var + eps) is exactly 0 (a constant row with eps = 0) the row becomes 0 *
/// gamma + beta rather than NaN, as bert4keras' divide_no_nan does (PyTorch gives NaN there).
/// Accumulation is in T with several vector partial sums per row; the variance is the shifted-data one (shift:
/// the row's first value, with a second pass from the mean when that shift was far off), and the mean is
/// subtracted as shift + small correction, so a large row mean costs no accuracy. Every row
/// is computed by the same code whatever the thread count: results are bitwise identical for any number of
/// OpenMP threads.
///
/// 16-bit storage (kexue/half.hpp): x, residual, out and sum may be Eigen::half or Eigen::bfloat16 (all of the
/// same type). gamma and beta are then either float or that same 16-bit type (PyTorch 1.13's CPU bf16 LayerNorm
/// takes bf16 weights only; later releases and mixed-precision training keep them in float). Values are widened
/// as they are loaded (exact), the statistics are taken in float and each output is rounded once, to nearest
/// even, as it is stored: the result is the float kernel's on the widened inputs, rounded, bit for bit. The
/// residual forms round x + residual to the 16-bit type and normalise that rounded sum, as PyTorch's
/// layer_norm(x + residual) of 16-bit tensors does (its `+` rounds); `sum` holds exactly the values normalised,
/// and the Post-Norm form gives the same out. PyTorch 1.13's own bf16 layer_norm rounds the row mean and
/// 1/std to bf16 before using them, and HF's LlamaRMSNorm rounds twice (the normalised row, then its product
/// with the weight), so those differ from this result by a few bf16 ulps where this one is within half an ulp
/// (plus float's error) of the exact value.

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/norm_simd.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

/// torch.nn.LayerNorm / F.layer_norm's default epsilon; the default of layer_norm and add_layer_norm.
inline constexpr double kLayerNormEps = 1e-5;
/// T5 / LLaMA RMSNorm's epsilon (HF LlamaRMSNorm default); the default of rms_norm and add_rms_norm.
inline constexpr double kRmsNormEps = 1e-6;
/// Keras' K.epsilon(): bert4keras LayerNormalization's default since 2022-04-28 (RoFormerV2, GAU-alpha).
inline constexpr double kKerasEpsilon = 1e-7;
/// BERT checkpoints' layer_norm_eps, and bert4keras' default before 2022-04-28.
inline constexpr double kBertEpsilon = 1e-12;

/// The switches of bert4keras' LayerNormalization (SPEC 7.1), for normalize():
///     y = c(x) * s(c(x)) [* gamma] [+ beta],  c(x) = x - mean(x) if zero_mean else x,
///     s(v) = 1 / sqrt(mean(v^2) + epsilon) if unit_variance else 1.
/// zero_mean + unit_variance is layer_norm, unit_variance alone is rms_norm.
struct NormOptions {
  bool zero_mean = true;           ///< subtract the row mean (false: RMSNorm)
  bool unit_variance = true;       ///< divide by the root mean square of the (centred) row
  bool scale = true;               ///< multiply by gamma (d entries); false: gamma must be empty
  bool offset = true;              ///< add beta (d entries); false: beta must be empty
  double epsilon = kKerasEpsilon;  ///< bert4keras' default K.epsilon(); BERT configs pass kBertEpsilon

  /// RoFormerV2 and GAU-alpha: zero_mean=False, scale=False, offset=False, i.e. x / sqrt(mean(x^2) + 1e-7).
  static NormOptions roformer_v2() { return {false, true, false, false, kKerasEpsilon}; }
  /// Keras-DDPM's ddpm-gau.py (patch diffusion GAU): zero_mean=False, offset=False (RMSNorm with gamma).
  static NormOptions ddpm_gau() { return {false, true, true, false, kKerasEpsilon}; }
  /// BERT: a full LayerNorm with epsilon 1e-12.
  static NormOptions bert() { return {true, true, true, true, kBertEpsilon}; }
};

namespace detail {

/// One call's arguments as raw views; residual.data == nullptr: no residual, sum.data == nullptr: not written
/// (Post-Norm stages x + residual on the stack, or in out for long rows), gamma / beta nullptr: absent. S: the
/// storage of x, residual, out and sum; T: the type computed in (NormCompute<S>); G, B: the storage of gamma and
/// beta (T or S).
template <class S, class G, class B>
struct NormCall {
  using Storage = S;
  using T = NormCompute<S>;
  View<const S> x, residual;
  View<S> out, sum;
  const G* gamma = nullptr;
  const B* beta = nullptr;
  T eps = T(0);
  bool zero_mean = true, unit_variance = true;
};

/// Rows per parallel work item: at least 16K elements (64 KiB of floats), so the scheduling cost of an item is
/// negligible next to its memory traffic. Items never share state, so the split does not affect results.
constexpr Index kNormItemElements = Index(1) << 14;
/// Below this many elements the call stays on the calling thread: a parallel region costs a few microseconds.
constexpr Index kNormParallelElements = Index(1) << 16;

/// Refine the variance in a second pass when (mean - shift)^2 > kNormRefine var, shift being the row's first
/// value: one pass then loses at most log2(1 + 2 kNormRefine) ~ 3 bits of the variance. For rows of i.i.d.
/// values the first value is that far out about 5% of the time, so layer_norm stays at one pass over memory and
/// one over the cached row for nearly every row.
constexpr double kNormRefine = 4.0;

/// Row r's first pass. Centred forms accumulate sum(x - K) and sum((x - K)^2) with K = x[0] in the one pass
/// over memory (the mean is then K + sum / d, subtracted in those two parts); RMS forms need only sum(x^2).
/// Returns the row the apply pass reads (x, or the staged x + residual).
/// Post-Norm stages x + residual in `stage` (a row buffer on the stack, see kNormStageBytes) when given, else in out.
template <class C, class S = typename C::Storage, class T = typename C::T>
inline const S* norm_first_pass(const C& a, Index r, ShiftedSums<T>& sums, S* stage = nullptr) {
  const Index d = a.x.cols;
  const S* x = a.x.row(r);
  if (a.residual.data) {
    S* s = a.sum.data ? a.sum.row(r) : stage ? stage : a.out.row(r);
    sums = norm_add_reduce<T>(x, a.residual.row(r), s, a.zero_mean, d);
    return s;
  }
  sums = ShiftedSums<T>{T(0), T(0), T(0)};
  if (a.zero_mean) {
    sums.shift = as_compute<T>(x[0]);
    const std::pair<T, T> dev = norm_sum_dev<T>(x, sums.shift, d);
    sums.sum = dev.first;
    sums.squares = dev.second;
  } else if (a.unit_variance) {
    sums.squares = norm_sum_sq<T>(x, d);
  }
  return x;
}

/// The row's statistics from its first-pass sums; src is the row the sums were taken over (read again, from
/// cache, only for the rare second pass).
template <class C, class S = typename C::Storage, class T = typename C::T>
inline NormRowStats<T> norm_stats(const C& a, const S* src, const ShiftedSums<T>& sums) {
  const Index d = a.x.cols;
  const T inv_d = T(1) / T(d);
  T shift = T(0), correction = T(0), mean_square = sums.squares * inv_d;
  if (a.zero_mean) {
    shift = sums.shift;
    correction = sums.sum * inv_d;
    mean_square -= correction * correction;
    if (a.unit_variance && correction * correction > T(kNormRefine) * mean_square) {
      // x[0] was far from the mean: again from the rounded mean, where the cancellation is gone.
      shift += correction;
      const std::pair<T, T> dev = norm_sum_dev<T>(src, shift, d);
      correction = dev.first * inv_d;
      mean_square = dev.second * inv_d - correction * correction;
    }
    if (mean_square < T(0)) mean_square = T(0);  // rounding; a NaN passes through
  }
  return {shift, correction, a.unit_variance ? norm_inverse_rms(mean_square, a.eps) : T(1)};
}

/// Streaming (non-temporal) stores for the apply pass when the call writes at least this many bytes of out that
/// are not also an input: an output that large, with inputs at least as large beside it, does not stay in a
/// core's share of the last-level cache (2-4 MiB per core on current x86 parts, 32 MiB in all on the Zen4 these
/// were measured on), so caching it only costs a read of each line before it is written (the read-for-ownership
/// of an ordinary store), a third more DRAM traffic. Measured on [4096, 4096] float (64 MiB), 1 thread, AVX2
/// build: layer_norm 0.6-0.65x the time of ordinary stores, rms_norm 0.65-0.8x, the Pre-Norm forms 0.6-0.9x.
constexpr Index kNormStreamBytes = Index(16) << 20;

/// Largest row the Post-Norm form stages in a stack buffer instead of in out (16 KiB: 4096 floats, in L1). Why:
/// staged in out, x + residual is written and read back there, so out's lines are in cache and cannot be streamed,
/// and each one costs a read for ownership besides its write; staged on the stack, the only traffic is x and
/// residual in and out once (streamed when large).
constexpr Index kNormStageBytes = Index(16) << 10;

/// True when a Post-Norm call (residual given, sum not kept) stages rows of d values of S on the stack.
template <class S>
constexpr bool norm_stages(Index d) {
  return d * Index(sizeof(S)) <= kNormStageBytes;
}

/// Rows [begin, end), each row's passes back to back (the row stays in L1/L2 between them).
template <bool kStream, class C, class S = typename C::Storage, class T = typename C::T>
inline void norm_rows(const C& a, Index begin, Index end) {
  const Index d = a.x.cols;
  // Raw bytes: an array of Eigen::half / Eigen::bfloat16 would be zeroed on every call (their default
  // constructors set 0), a 16 KiB memset even for the forms that never stage.
  alignas(64) unsigned char stage_bytes[kNormStageBytes];
  S* stage = a.residual.data && !a.sum.data && norm_stages<S>(d) ? reinterpret_cast<S*>(stage_bytes) : nullptr;
  for (Index r = begin; r < end; ++r) {
    ShiftedSums<T> sums;
    const S* src = norm_first_pass(a, r, sums, stage);
    norm_apply<kStream>(src, norm_stats(a, src, sums), a.gamma, a.beta, a.out.row(r), d);
  }
  if constexpr (kStream) stream_fence();  // the streamed rows are visible to whoever reads them next
}

/// Whether the apply pass streams its stores: float / double outputs of at least kNormStreamBytes that are not
/// the row the pass reads (Post-Norm rows too long for the stack stage are staged in out) nor an input (in
/// place): those lines are in cache already, and a non-temporal store would evict them.
template <class C>
inline bool norm_streams(const C& a) {
  using S = typename C::Storage;
  if (!std::is_same<S, typename C::T>::value) return false;
  if (a.residual.data && !a.sum.data && !norm_stages<S>(a.x.cols)) return false;
  const void* o = a.out.data;
  if (o == a.x.data || o == a.residual.data) return false;
  return a.out.rows * a.out.cols * Index(sizeof(S)) >= kNormStreamBytes;
}

template <bool kStream, class C>
inline void norm_run_as(const C& a) {
  const Index n = a.x.rows, d = a.x.cols;
  if (n * d < kNormParallelElements || max_threads() == 1) {
    norm_rows<kStream>(a, 0, n);
    return;
  }
  const Index rows_per_item = std::max<Index>(1, kNormItemElements / d);
  const Index items = (n + rows_per_item - 1) / rows_per_item;
  parallel_for(items, [&](Index item) {
    norm_rows<kStream>(a, item * rows_per_item, std::min(n, (item + 1) * rows_per_item));
  });
}

/// Runs a validated call; stream: norm_streams(a) unless a test forces it (the results are the same bits).
template <class C>
inline void norm_run(const C& a, bool stream) {
  if (a.x.rows == 0 || a.x.cols == 0) return;
  if constexpr (std::is_same<typename C::Storage, typename C::T>::value) {
    if (stream) {
      norm_run_as<true>(a);
      return;
    }
  }
  norm_run_as<false>(a);
}

template <class C>
inline void norm_run(const C& a) {
  norm_run(a, norm_streams(a));
}

/// True when two views are the same memory (same start and row stride) or do not overlap at all: the only
/// aliasing the row kernels support (element i of a row is read before it is written).
template <class A, class B>
inline bool same_or_disjoint(const View<A>& a, const View<B>& b) {
  return (static_cast<const void*>(a.data) == static_cast<const void*>(b.data) && a.stride == b.stride) ||
         !overlaps(a, b);
}

/// gamma / beta may be stored as x's type S or as the type computed in (float for 16-bit S).
template <class P, class S>
constexpr bool kNormParam = std::is_same<P, S>::value || std::is_same<P, NormCompute<S>>::value;

/// A parameter vector: nullptr if empty, else its contiguous data after checking it has d entries.
template <class D>
inline const typename D::Scalar* norm_param(const char* fn, const char* name, const Eigen::DenseBase<D>& v,
                                            Index d, bool wanted, bool required, const char* switch_name) {
  const Index size = static_cast<Index>(v.size());
  if (!wanted) {
    require(size == 0, fn, name, " has ", size, " entries but options.", switch_name,
            " is false (pass an empty vector)");
    return nullptr;
  }
  if (size == 0 && !required) return nullptr;
  require(size == d, fn, name, " has ", size, " entries but x has ", d, " columns (shape [n x ", d,
          "]); pass ", d, " entries", required ? "" : " or none");
  return flat_data(fn, name, v);
}

/// Validates everything and fills a NormCall; throws before anything is written.
template <class X, class R, class G, class B, class O, class M>
NormCall<typename X::Scalar, typename G::Scalar, typename B::Scalar> norm_setup(
    const char* fn, const Eigen::DenseBase<X>& x, const Eigen::DenseBase<R>* residual,
    const Eigen::DenseBase<G>& gamma, const Eigen::DenseBase<B>& beta, const Eigen::DenseBase<O>& out,
    const Eigen::DenseBase<M>* sum, double eps, const NormOptions& o, bool params_required = false) {
  using S = typename X::Scalar;
  using T = NormCompute<S>;
  static_assert(std::is_same<typename O::Scalar, S>::value, "kexue norms: out must have x's scalar type");
  static_assert(kNormParam<typename G::Scalar, S> && kNormParam<typename B::Scalar, S>,
                "kexue norms: gamma / beta must have x's scalar type (or float, for Eigen::half / Eigen::bfloat16 x)");
  NormCall<S, typename G::Scalar, typename B::Scalar> a;
  a.x = make_view<X, true>(fn, "x", x);
  a.out = make_mut_view<O, true>(fn, "out", out);
  require_shape(fn, "out", a.out, a.x.rows, a.x.cols, "x has shape ");
  if (residual) {
    static_assert(std::is_same<typename R::Scalar, S>::value, "kexue norms: residual must have x's scalar type");
    a.residual = make_view<R, true>(fn, "residual", *residual);
    require_shape(fn, "residual", a.residual, a.x.rows, a.x.cols, "x has shape ");
    require(same_or_disjoint(a.out, a.residual), fn, "out partly overlaps residual (in place means the same matrix)");
  }
  if (sum) {
    static_assert(std::is_same<typename M::Scalar, S>::value, "kexue norms: sum must have x's scalar type");
    a.sum = make_mut_view<M, true>(fn, "sum", *sum);
    require_shape(fn, "sum", a.sum, a.x.rows, a.x.cols, "x has shape ");
    require(!overlaps(a.sum, a.out), fn, "sum and out overlap; they must be different memory");
    require(same_or_disjoint(a.sum, a.x), fn, "sum partly overlaps x (in place means the same matrix)");
    require(same_or_disjoint(a.sum, a.residual), fn, "sum partly overlaps residual (in place means the same matrix)");
  }
  require(same_or_disjoint(a.out, a.x), fn, "out partly overlaps x (in place means the same matrix)");
  require(std::isfinite(eps) && eps >= 0, fn, "eps must be finite and >= 0, got ", eps);
  a.gamma = norm_param(fn, "gamma", gamma, a.x.cols, o.scale, params_required, "scale");
  a.beta = norm_param(fn, "beta", beta, a.x.cols, o.offset, params_required, "offset");
  const auto check_param = [&](const auto* p) {
    if (!p) return;
    const View<const std::remove_const_t<std::remove_pointer_t<decltype(p)>>> pv{p, 1, a.x.cols, a.x.cols};
    require(!overlaps(pv, a.out) && !overlaps(pv, a.sum), fn, "gamma / beta overlap an output");
  };
  check_param(a.gamma);
  check_param(a.beta);
  a.eps = static_cast<T>(eps);
  a.zero_mean = o.zero_mean;
  a.unit_variance = o.unit_variance;
  return a;
}

/// The type of a missing residual / sum argument.
template <class T>
using NoMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace detail

/// LayerNorm over rows (SPEC 7.1): out = (x - mean) / sqrt(var + eps) * gamma + beta, biased (1/d) variance.
/// x, out: [n, d], any row-major Eigen dense objects of float, double, Eigen::half or Eigen::bfloat16; gamma,
/// beta: d entries or none (x's type, or float for 16-bit x). out may be x itself (in place). Matches
/// torch.nn.functional.layer_norm(x, (d,), gamma, beta, eps).
template <class X, class G, class B, class O>
void layer_norm(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<G>& gamma, const Eigen::DenseBase<B>& beta,
                const Eigen::DenseBase<O>& out, double eps = kLayerNormEps) {
  detail::norm_run(detail::norm_setup<X, X, G, B, O, O>("layer_norm", x, nullptr, gamma, beta, out, nullptr, eps,
                                                       NormOptions{true, true, true, true, eps}));
}

/// RMSNorm over rows (SPEC 7.1): out = x / sqrt(mean(x^2) + eps) * gamma. x, out: [n, d]; gamma: d entries or
/// none. out may be x itself (in place).
template <class X, class G, class O>
void rms_norm(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<G>& gamma, const Eigen::DenseBase<O>& out,
              double eps = kRmsNormEps) {
  const detail::NoMatrix<typename X::Scalar> none;
  detail::norm_run(detail::norm_setup<X, X, G, detail::NoMatrix<typename X::Scalar>, O, O>(
      "rms_norm", x, nullptr, gamma, none, out, nullptr, eps, NormOptions{false, true, true, true, eps}));
}

/// Pre-Norm residual step in one pass: sum = x + residual, out = rms_norm(sum, gamma). x, residual, out, sum:
/// [n, d]; sum may be x or residual itself (x += residual in place), out may be x or residual, but out and sum
/// must be different memory.
template <class X, class R, class G, class O, class S>
void add_rms_norm(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<R>& residual, const Eigen::DenseBase<G>& gamma,
                  const Eigen::DenseBase<O>& out, const Eigen::DenseBase<S>& sum, double eps = kRmsNormEps) {
  const detail::NoMatrix<typename X::Scalar> none;
  detail::norm_run(detail::norm_setup<X, R, G, detail::NoMatrix<typename X::Scalar>, O, S>(
      "add_rms_norm", x, &residual, gamma, none, out, &sum, eps, NormOptions{false, true, true, true, eps}));
}

/// Post-Norm residual step in one pass: out = rms_norm(x + residual, gamma), x + residual not kept.
/// out may be x or residual itself.
template <class X, class R, class G, class O>
void add_rms_norm(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<R>& residual, const Eigen::DenseBase<G>& gamma,
                  const Eigen::DenseBase<O>& out, double eps = kRmsNormEps) {
  const detail::NoMatrix<typename X::Scalar> none;
  detail::norm_run(detail::norm_setup<X, R, G, detail::NoMatrix<typename X::Scalar>, O, O>(
      "add_rms_norm", x, &residual, gamma, none, out, nullptr, eps, NormOptions{false, true, true, true, eps}));
}

/// Pre-Norm residual step in one pass: sum = x + residual, out = layer_norm(sum, gamma, beta). Aliasing as
/// add_rms_norm.
template <class X, class R, class G, class B, class O, class S>
void add_layer_norm(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<R>& residual,
                    const Eigen::DenseBase<G>& gamma, const Eigen::DenseBase<B>& beta, const Eigen::DenseBase<O>& out,
                    const Eigen::DenseBase<S>& sum, double eps = kLayerNormEps) {
  detail::norm_run(detail::norm_setup<X, R, G, B, O, S>("add_layer_norm", x, &residual, gamma, beta, out, &sum, eps,
                                                        NormOptions{true, true, true, true, eps}));
}

/// Post-Norm residual step in one pass: out = layer_norm(x + residual, gamma, beta) (BERT's
/// LayerNorm(x + Sublayer(x))). out may be x or residual itself.
template <class X, class R, class G, class B, class O>
void add_layer_norm(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<R>& residual,
                    const Eigen::DenseBase<G>& gamma, const Eigen::DenseBase<B>& beta, const Eigen::DenseBase<O>& out,
                    double eps = kLayerNormEps) {
  detail::norm_run(detail::norm_setup<X, R, G, B, O, O>("add_layer_norm", x, &residual, gamma, beta, out, nullptr, eps,
                                                        NormOptions{true, true, true, true, eps}));
}

/// bert4keras' LayerNormalization with its switches (NormOptions): out = c(x) * s(c(x)) [* gamma] [+ beta].
/// gamma / beta have d entries when options.scale / options.offset are set and none otherwise. In place allowed.
template <class X, class G, class B, class O>
void normalize(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<G>& gamma, const Eigen::DenseBase<B>& beta,
               const Eigen::DenseBase<O>& out, const NormOptions& options) {
  detail::norm_run(detail::norm_setup<X, X, G, B, O, O>("normalize", x, nullptr, gamma, beta, out, nullptr,
                                                       options.epsilon, options, true));
}

}  // namespace kexue
