// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Rotary position embedding (RoPE, SPEC.md section 1; RoPE + bias, section 4).
///
/// A position m rotates each pair (x_a, x_b) of the first `rotary_dim` dims of a row by the angle m * w_i:
///     x_a' = x_a cos(m w_i) - x_b sin(m w_i)
///     x_b' = x_b cos(m w_i) + x_a sin(m w_i)
/// with w_i = base^(-2i / rotary_dim) for pair i in [0, rotary_dim / 2) (before frequency scaling).
/// The pairs are (2i, 2i+1) in the Interleaved layout (bert4keras, GPT-J, ggml NORMAL, ORT interleaved=1)
/// and (i, i + rotary_dim/2) in the Half layout (GPT-NeoX, HF LLaMA rotate_half, ggml NEOX). Dims from
/// rotary_dim to dim pass through unchanged. Since (R_m q) . (R_n k) = q . R_{n-m} k, the score of two
/// rotated rows depends only on n - m.
///
/// Reproducibility: every output element is one fused multiply-add of the same two products whatever the
/// register width (AVX-512, AVX2, NEON: bit for bit the same result) and whatever the thread count. A build
/// whose multiply-add is not fused (x86-64 baseline SSE2) rounds twice; its results differ from an FMA build's
/// within the tests' tolerances.
///
/// 16-bit storage (issue 13): x, q and k may be Eigen::half or Eigen::bfloat16 (Matrix, Map, TensorView) with a
/// float or double table and biases of the table's type. Each value is widened as it is loaded, rotated exactly as
/// the table's type rotates it, and rounded once to nearest even when stored: the result is bit for bit the
/// float (double) kernel's on the widened rows, rounded (kexue/half.hpp). rope_2d takes float and double only.


#include <cmath>
#include <iterator>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/rope_simd.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

/// Which dims form a rotated pair (SPEC 1.2; PEERS 3.1 "layout mix-ups").
enum class RopeLayout {
  Interleaved,  ///< pairs (2i, 2i+1): bert4keras, GPT-J, GlobalPointer, RoFormer
  Half          ///< pairs (i, i + r/2): GPT-NeoX, HF LLaMA (rotate_half)
};

/// Frequency scaling for context extension, with the definitions of HF transformers' ROPE_INIT_FUNCTIONS
/// (modeling_rope_utils.py). r = rotary_dim, L0 = original_max_positions, s = factor,
/// w_i = base^(-2i/r) the unscaled inverse frequencies:
enum class RopeScaling {
  None,        ///< w_i
  Linear,      ///< position interpolation: w_i / s
  DynamicNtk,  ///< "dynamic" NTK-aware: base' = base * (s * L / L0 - (s - 1))^(r / (r - 2)), w_i = base'^(-2i/r),
               ///< L = max(sequence_length (default max_positions), L0); L <= L0 leaves the base unchanged
  Yarn,        ///< YaRN: w_i = (w_i / s) * ramp_i + w_i * (1 - ramp_i), ramp_i = clamp((i - lo) / (hi - lo), 0, 1),
               ///< lo/hi = floor/ceil of r ln(L0 / (2 pi beta)) / (2 ln base) at beta_fast/beta_slow, clamped
               ///< to [0, r - 1]; attention factor 0.1 ln(s) + 1 (s > 1), folded into cos/sin as in HF
  Llama3       ///< Llama 3.1: wavelength l_i = 2 pi / w_i; l_i < L0 / high_freq_factor: w_i;
               ///< l_i > L0 / low_freq_factor: w_i / s; else (1 - a) w_i / s + a w_i,
               ///< a = (L0 / l_i - low_freq_factor) / (high_freq_factor - low_freq_factor)
};

/// Options of a RopeTable. Defaults: bert4keras (base 10000, interleaved, every dim rotated, no scaling).
struct RopeOptions {
  double base = 10000.0;                       ///< w_i = base^(-2i/r); SPEC 1.3's 2-D RoPE uses 1000
  RopeLayout layout = RopeLayout::Interleaved;  ///< which dims form a rotated pair (bert4keras / HF)
  Index rotary_dim = 0;                        ///< 0: rotate all dims; else the first rotary_dim (even), rest pass through
  RopeScaling scaling = RopeScaling::None;     ///< context-extension rule applied to the frequencies
  double factor = 1.0;                         ///< s: Linear, DynamicNtk, Yarn, Llama3
  Index original_max_positions = 0;            ///< L0, the training context: DynamicNtk, Yarn, Llama3 (required there)
  Index sequence_length = 0;                   ///< DynamicNtk: the L the base is stretched for; 0: max_positions
  double beta_fast = 32.0;                     ///< Yarn: rotations at which extrapolation ends (HF default 32)
  double beta_slow = 1.0;                      ///< Yarn: rotations at which interpolation starts (HF default 1)
  bool truncate = true;                        ///< Yarn: floor/ceil the correction range (HF default true)
  std::optional<double> attention_factor;      ///< Yarn: overrides the attention factor (HF "attention_factor")
  /// Yarn (DeepSeek): if both mscale and mscale_all_dim are > 0, the attention factor is
  /// m(s, mscale) / m(s, mscale_all_dim) with m(s, k) = 0.1 k ln(s) + 1 for s > 1, else 1.
  double mscale = 0.0;
  double mscale_all_dim = 0.0;                 ///< Yarn (DeepSeek): see mscale
  bool fold_attention_factor = true;           ///< Yarn: multiply cos and sin by the attention factor (HF does)
  double low_freq_factor = 1.0;                ///< Llama3 (HF default for Llama 3.1: 1)
  double high_freq_factor = 4.0;               ///< Llama3 (HF default for Llama 3.1: 4)
  std::vector<double> freq_factors;            ///< optional per-pair divisors of w_i after scaling (ggml freq_factors,
                                               ///< LongRoPE's rescale factors); empty or rotary_dim/2 entries
};

namespace detail {

/// Inverse frequencies w_i of RopeOptions (i in [0, r/2)) and the attention factor, in double.
/// Validates the options; `fn` names the caller in messages.
inline std::pair<std::vector<double>, double> rope_inv_freq(const char* fn, Index r, Index max_positions,
                                                             const RopeOptions& o) {
  require(r > 0 && r % 2 == 0, fn, "rotary dim ", r, " must be positive and even");
  require(o.base > 1.0 && std::isfinite(o.base), fn, "base must be a finite number > 1, got ", o.base);
  const Index half = r / 2;
  const double base = o.base;
  auto pow_freq = [&](double b) {
    std::vector<double> w(static_cast<std::size_t>(half));
    for (Index i = 0; i < half; ++i) w[std::size_t(i)] = 1.0 / std::pow(b, double(2 * i) / double(r));
    return w;
  };
  double attention = 1.0;
  std::vector<double> w;
  const double s = o.factor;
  if (o.scaling != RopeScaling::None) {
    require(s > 0.0 && std::isfinite(s), fn, "scaling factor must be finite and > 0, got ", s);
  }
  if (o.scaling == RopeScaling::DynamicNtk || o.scaling == RopeScaling::Yarn || o.scaling == RopeScaling::Llama3) {
    require(o.original_max_positions > 0, fn, "this frequency scaling needs original_max_positions > 0, got ",
            o.original_max_positions);
  }
  const double l0 = double(o.original_max_positions);
  switch (o.scaling) {
    case RopeScaling::None:
      w = pow_freq(base);
      break;
    case RopeScaling::Linear:
      w = pow_freq(base);
      for (double& x : w) x /= s;
      break;
    case RopeScaling::DynamicNtk: {
      require(r > 2, fn, "DynamicNtk needs rotary dim > 2 (the exponent is r / (r - 2)), got ", r);
      require(o.sequence_length >= 0, fn, "sequence_length must be >= 0, got ", o.sequence_length);
      const double len = std::max(double(o.sequence_length > 0 ? o.sequence_length : max_positions), l0);
      const double b = base * std::pow(s * len / l0 - (s - 1.0), double(r) / double(r - 2));
      require(b > 1.0 && std::isfinite(b), fn, "DynamicNtk gives base ", b, "; it must be finite and > 1");
      w = pow_freq(b);
      break;
    }
    case RopeScaling::Yarn: {
      require(o.beta_fast > 0 && o.beta_slow > 0, fn, "Yarn needs beta_fast, beta_slow > 0");
      const double kPi = 3.14159265358979323846;
      auto correction_dim = [&](double rotations) {
        return double(r) * std::log(l0 / (rotations * 2.0 * kPi)) / (2.0 * std::log(base));
      };
      double lo = correction_dim(o.beta_fast), hi = correction_dim(o.beta_slow);
      if (o.truncate) {
        lo = std::floor(lo);
        hi = std::ceil(hi);
      }
      lo = std::max(lo, 0.0);
      hi = std::min(hi, double(r - 1));
      if (lo == hi) hi += 0.001;  // HF's guard against a zero-width ramp
      const std::vector<double> extrapolation = pow_freq(base);
      w.resize(extrapolation.size());
      for (Index i = 0; i < half; ++i) {
        const double ramp = std::min(std::max((double(i) - lo) / (hi - lo), 0.0), 1.0);
        const double e = extrapolation[std::size_t(i)];
        // HF: interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor, with
        // extrapolation_factor = 1 - ramp.
        w[std::size_t(i)] = (e / s) * ramp + e * (1.0 - ramp);
      }
      auto m = [&](double k) { return s <= 1.0 ? 1.0 : 0.1 * k * std::log(s) + 1.0; };
      if (o.attention_factor) {
        attention = *o.attention_factor;
      } else if (o.mscale > 0 && o.mscale_all_dim > 0) {
        attention = m(o.mscale) / m(o.mscale_all_dim);
      } else {
        attention = m(1.0);
      }
      require(std::isfinite(attention) && attention > 0, fn, "Yarn attention factor must be finite and > 0, got ",
              attention);
      break;
    }
    case RopeScaling::Llama3: {
      require(o.high_freq_factor > o.low_freq_factor && o.low_freq_factor > 0, fn,
              "Llama3 needs high_freq_factor > low_freq_factor > 0, got ", o.high_freq_factor, " and ",
              o.low_freq_factor);
      const double kPi = 3.14159265358979323846;
      const double low_wavelen = l0 / o.low_freq_factor, high_wavelen = l0 / o.high_freq_factor;
      w = pow_freq(base);
      for (double& x : w) {
        const double wavelen = 2.0 * kPi / x;
        if (wavelen < high_wavelen) continue;
        if (wavelen > low_wavelen) {
          x /= s;
          continue;
        }
        const double a = (l0 / wavelen - o.low_freq_factor) / (o.high_freq_factor - o.low_freq_factor);
        x = (1.0 - a) * x / s + a * x;
      }
      break;
    }
  }
  if (!o.freq_factors.empty()) {
    require(Index(o.freq_factors.size()) == half, fn, "freq_factors has ", o.freq_factors.size(),
            " entries but rotary dim ", r, " has ", half, " pairs");
    for (Index i = 0; i < half; ++i) {
      const double f = o.freq_factors[std::size_t(i)];
      require(f > 0 && std::isfinite(f), fn, "freq_factors[", i, "] = ", f, " must be finite and > 0");
      w[std::size_t(i)] /= f;
    }
  }
  return {std::move(w), attention};
}

template <class P>
using position_element_t = std::remove_cv_t<std::remove_reference_t<decltype(*std::data(std::declval<const P&>()))>>;

template <class P, class = void>
struct is_position_list : std::false_type {};
/// A contiguous sequence of integers: std::vector<Index>, std::vector<int>, std::array, an Eigen integer
/// vector, ...
template <class P>
struct is_position_list<P, std::void_t<decltype(std::data(std::declval<const P&>())),
                                       decltype(std::size(std::declval<const P&>()))>>
    : std::bool_constant<std::is_integral<position_element_t<P>>::value &&
                         !std::is_same<position_element_t<P>, bool>::value> {};

}  // namespace detail

/// cos/sin of every position in [0, max_positions) for rows of `dim` values (the head size), computed in
/// double from RopeOptions and stored in T. Immutable after construction; share it between threads.
template <class T>
class RopeTable {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "RopeTable<float or double>");

 public:
  using Scalar = T;  ///< float or double: the type of the cos / sin entries

  /// Table for positions [0, max_positions) and rows of `dim` values; options.rotary_dim (0: dim) must be
  /// even and <= dim. Throws kexue::Error on bad options.
  RopeTable(Index max_positions, Index dim, RopeOptions options = {})
      : max_positions_(max_positions), dim_(dim), options_(std::move(options)) {
    const char* fn = "RopeTable";
    detail::require(max_positions >= 0, fn, "max_positions must be >= 0, got ", max_positions);
    detail::require(dim > 0, fn, "dim must be > 0, got ", dim);
    detail::require(options_.rotary_dim >= 0 && options_.rotary_dim <= dim, fn, "rotary_dim ", options_.rotary_dim,
                    " must be in [0, dim = ", dim, "]");
    rotary_dim_ = options_.rotary_dim == 0 ? dim : options_.rotary_dim;
    detail::require(rotary_dim_ % 2 == 0, fn, "rotary dim ", rotary_dim_, " is odd (dim ", dim,
                    ", options.rotary_dim ", options_.rotary_dim, "); pairs of dims are rotated");
    auto freq = detail::rope_inv_freq(fn, rotary_dim_, max_positions, options_);
    inv_freq_ = std::move(freq.first);
    attention_factor_ = freq.second;
    const double amp =
        options_.scaling == RopeScaling::Yarn && options_.fold_attention_factor ? attention_factor_ : 1.0;
    // One compact row per position: cos and sin of each pair's angle, in pair order. Both layouts read the
    // same rows (the interleaved kernel duplicates each value into both members of its pair in a register),
    // so the table is half the size of full-width cos/sin rows and streams from cache at half the cost.
    const Index half = rotary_dim_ / 2;
    cos_.resize(static_cast<std::size_t>(max_positions * half));
    sin_.resize(static_cast<std::size_t>(max_positions * half));
    for (Index p = 0; p < max_positions; ++p) {
      for (Index i = 0; i < half; ++i) {
        const double angle = double(p) * inv_freq_[std::size_t(i)];
        cos_[std::size_t(p * half + i)] = static_cast<T>(std::cos(angle) * amp);
        sin_[std::size_t(p * half + i)] = static_cast<T>(std::sin(angle) * amp);
      }
    }
  }

  /// Positions [0, max_positions()) are in the table.
  Index max_positions() const { return max_positions_; }
  /// Row length the table applies to (the head size).
  Index dim() const { return dim_; }
  /// Number of leading dims that are rotated (even, <= dim()); the rest pass through.
  Index rotary_dim() const { return rotary_dim_; }
  /// Pair layout the table was built for.
  RopeLayout layout() const { return options_.layout; }
  /// The options the table was built with.
  const RopeOptions& options() const { return options_; }
  /// The inverse frequencies w_i after scaling, i in [0, rotary_dim()/2), in double.
  const std::vector<double>& inv_freq() const { return inv_freq_; }
  /// YaRN's attention factor (1 for every other scaling). HF multiplies cos and sin by it, so q.k scales by
  /// its square; it is folded into the table unless options.fold_attention_factor is false, in which case
  /// the caller applies it (e.g. to the softmax scale).
  double attention_factor() const { return attention_factor_; }

  /// cos(p w_i) for the pairs i in [0, rotary_dim()/2) of position p (times the YaRN attention factor when
  /// folded): pair i is dims (2i, 2i+1) in the Interleaved layout and (i, i + rotary_dim()/2) in the Half one.
  const T* cos_pairs(Index p) const { return cos_.data() + p * (rotary_dim_ / 2); }
  /// sin(p w_i) for the pairs of position p, as cos_pairs: x_a' = x_a c - x_b s, x_b' = x_b c + x_a s.
  const T* sin_pairs(Index p) const { return sin_.data() + p * (rotary_dim_ / 2); }

 private:
  Index max_positions_ = 0, dim_ = 0, rotary_dim_ = 0;
  RopeOptions options_;
  std::vector<double> inv_freq_;
  double attention_factor_ = 1.0;
  // [max_positions, rotary_dim / 2] each, on a 64-byte boundary: with AVX-512 every unaligned table load of a
  // row would straddle two cache lines (measured 10% of the in-cache q+k RoPE time, -march=native).
  detail::AlignedVector<T> cos_, sin_;
};

namespace detail {

/// dst = RoPE_position(src (+ bias)) for one row of table.dim() values; src == dst is allowed. No checks:
/// the kernels of other families call this after validating their arguments.
template <class T, class S>
inline void rope_row(const RopeTable<T>& table, const S* src, S* dst, const T* bias, Index position) {
  const Index r = table.rotary_dim();
  if (table.layout() == RopeLayout::Interleaved) {
    rope_row_interleaved(src, dst, table.cos_pairs(position), table.sin_pairs(position), bias, r);
  } else {
    rope_row_half(src, dst, table.cos_pairs(position), table.sin_pairs(position), bias, r);
  }
  rope_pass_through(src, dst, bias, r, table.dim());
}

/// q and k rows (in place) at the same position: one read of the table row for both.
template <class T, class S>
inline void rope_rows2(const RopeTable<T>& table, S* q, S* k, Index position) {
  const Index r = table.rotary_dim();
  if (table.layout() == RopeLayout::Interleaved) {
    rope_rows2_interleaved(q, k, table.cos_pairs(position), table.sin_pairs(position), r);
  } else {
    rope_rows2_half(q, k, table.cos_pairs(position), table.sin_pairs(position), r);
  }
}

/// q <- RoPE(q + qb), k <- RoPE(k + kb) (rows in place) at the same position, with one read of the table row
/// for both; each row's bits are rope_row's with its bias.
template <class T, class S>
inline void rope_rows2_bias(const RopeTable<T>& table, S* q, S* k, const T* qb, const T* kb, Index position) {
  const Index r = table.rotary_dim();
  if (table.layout() == RopeLayout::Interleaved) {
    rope_rows2_bias_interleaved(q, k, qb, kb, table.cos_pairs(position), table.sin_pairs(position), r);
  } else {
    rope_rows2_bias_half(q, k, qb, kb, table.cos_pairs(position), table.sin_pairs(position), r);
  }
  rope_pass_through(q, q, qb, r, table.dim());
  rope_pass_through(k, k, kb, r, table.dim());
}

inline void check_first_position(const char* fn, Index first, Index rows, Index max_positions) {
  require(first >= 0, fn, "first_position is ", first, "; positions must be >= 0");
  require(rows == 0 || first + rows <= max_positions, fn, "rows at positions [", first, ", ", first + rows,
          ") but the table holds positions [0, ", max_positions, ")");
}

template <class P>
inline void check_positions(const char* fn, const char* name, const P& positions, Index max_positions) {
  const auto* p = std::data(positions);
  const Index n = static_cast<Index>(std::size(positions));
  for (Index i = 0; i < n; ++i) {
    const long long v = static_cast<long long>(p[i]);
    require(v >= 0 && v < static_cast<long long>(max_positions), fn, name, "[", i, "] = ", v,
            " is outside the table's positions [0, ", max_positions, ")");
  }
}

/// x's storage S may be the table's T, or Eigen::half / Eigen::bfloat16 (computed in T, rounded once per value).
template <class T, class S>
constexpr bool kRopeStorage = std::is_same<S, T>::value || kIs16Bit<S>;

template <class T, class D>
inline View<typename D::Scalar> rope_view(const char* fn, const RopeTable<T>& table, const Eigen::DenseBase<D>& x) {
  static_assert(kRopeStorage<T, typename D::Scalar>,
                "rope: x must have the table's scalar type, or be Eigen::half / Eigen::bfloat16");
  View<typename D::Scalar> v = make_mut_view<D, true>(fn, "x", x);
  require(v.rows == 0 || v.cols == table.dim(), fn, "x has ", v.cols, " columns (shape ", shape_str(v.rows, v.cols),
          ") but the table has dim ", table.dim());
  return v;
}

template <class T, class D, class S>
inline const T* rope_bias(const char* fn, const char* name, const RopeTable<T>& table, const Eigen::DenseBase<D>& b,
                          const View<S>& x) {
  static_assert(std::is_same<typename D::Scalar, T>::value, "rope: bias and the table must have the same scalar type");
  const T* data = flat_data(fn, name, b);
  require(b.size() == table.dim(), fn, name, " has ", b.size(), " values but the table has dim ", table.dim());
  // The rows are rotated in place one after another: a bias inside x would change while it is being read.
  require(!overlaps(View<const T>{data, 1, b.size(), b.size()}, x), fn, name, " shares memory with x (alias); ",
          "the bias would change while the rows are rotated");
  return data;
}

/// [lo, hi) bytes spanned by the rows of a tensor view (any stride signs); empty views span nothing.
template <class T>
inline std::pair<const char*, const char*> tensor_span(const TensorView<T>& x) {
  if (x.batch() * x.heads() * x.seq() == 0 || x.dim() == 0) return {nullptr, nullptr};
  Index lo = 0, hi = 0;
  const Index ext[3] = {x.batch(), x.heads(), x.seq()};
  for (int i = 0; i < 3; ++i) (x.strides[std::size_t(i)] < 0 ? lo : hi) += (ext[i] - 1) * x.strides[std::size_t(i)];
  return {reinterpret_cast<const char*>(x.data + lo), reinterpret_cast<const char*>(x.data + hi + x.dim())};
}

/// Validates a batched bias: `size` values at b, [dim] or [heads, dim] of x (named `xname`), outside x's memory
/// and outside `other`'s (the second tensor of the q + k forms, which is rotated in place as well). Returns the
/// per-head stride of the bias: 0 for one bias shared by every head, dim for one per head.
template <class T, class S>
inline Index check_tensor_bias(const char* fn, const char* name, const T* b, Index size, const RopeTable<T>& table,
                               const char* xname, const TensorView<S>& x, const char* other_name = nullptr,
                               const TensorView<S>* other = nullptr) {
  const Index d = table.dim();
  require(size == d || size == x.heads() * d, fn, name, " has ", size, " values but needs ", d, " (dim) or ",
          x.heads() * d, " (", xname, " heads x dim = ", x.heads(), " x ", d, ")");
  const char* b0 = reinterpret_cast<const char*>(b);
  const char* b1 = reinterpret_cast<const char*>(b + size);
  for (const TensorView<S>* t : {&x, other}) {
    if (t == nullptr || size == 0) continue;
    const auto span = tensor_span(*t);
    require(!(span.first < b1 && b0 < span.second), fn, name, " shares memory with ", t == &x ? xname : other_name,
            " (alias); the bias would change while the rows are rotated");
  }
  return size == d ? 0 : d;
}

template <class T, class S>
inline void check_tensor(const char* fn, const char* name, const RopeTable<T>& table, const TensorView<S>& x) {
  static_assert(kRopeStorage<T, S>, "rope: x must have the table's scalar type, or be Eigen::half / Eigen::bfloat16");
  require(x.batch() >= 0 && x.heads() >= 0 && x.seq() >= 0, fn, name, " has a negative extent");
  require(x.dim() == table.dim() || x.batch() * x.heads() * x.seq() == 0, fn, name, " has dim ", x.dim(),
          " but the table has dim ", table.dim());
  require(x.data != nullptr || x.batch() * x.heads() * x.seq() == 0, fn, name, " has no data");
}

/// Bytes of table per work item of the batched forms. Work items are (batch entry, tile of positions, head),
/// heads innermost, so an item streams one long contiguous run of rows (long runs keep the hardware
/// prefetcher's streams alive) and the next items, the other heads of the same tile, find the tile's table
/// slice in L2. Measured on the 8 x 2048 x 64 q+k benchmark: items of 8 KiB of table walking every head
/// (table slice in L1, but 16 short interleaved streams) were 1.5-2x slower out of cache than runs this long.
constexpr Index kRopeTileTableBytes = Index(1) << 20;

/// Positions per work item: kRopeTileTableBytes of table rows (at least 16).
template <class T>
inline Index rope_tile_positions(const RopeTable<T>& table) {
  const Index row_bytes = table.rotary_dim() * Index(sizeof(T));  // r/2 cos + r/2 sin
  return std::max<Index>(16, kRopeTileTableBytes / std::max<Index>(row_bytes, 1));
}

template <class T, class S, class Pos>
inline void rope_tensor(const RopeTable<T>& table, const TensorView<S>& x, const T* bias, Index bias_head_stride,
                        Pos&& pos) {
  const Index heads = x.heads(), seq = x.seq();
  const Index tile = rope_tile_positions(table), tiles = (seq + tile - 1) / tile;
  if (heads == 0) return;
  parallel_for(x.batch() * tiles * heads, [&](Index item) {
    const Index h = item % heads, t = (item / heads) % tiles, b = item / (heads * tiles);
    const Index s0 = t * tile, s1 = std::min(seq, s0 + tile);
    const T* bh = bias ? bias + h * bias_head_stride : nullptr;
    for (Index s = s0; s < s1; ++s) {
      S* row = x.row(b, h, s);
      rope_row(table, row, row, bh, pos(b, s));
    }
  });
}

template <class T, class S, class Pos>
inline void rope_tensor2(const RopeTable<T>& table, const TensorView<S>& q, const TensorView<S>& k, Pos&& pos) {
  const Index seq = q.seq(), hq = q.heads(), hk = k.heads(), heads = std::max(hq, hk);
  const Index tile = rope_tile_positions(table), tiles = (seq + tile - 1) / tile;
  if (heads == 0) return;
  parallel_for(q.batch() * tiles * heads, [&](Index item) {
    const Index h = item % heads, t = (item / heads) % tiles, b = item / (heads * tiles);
    const Index s0 = t * tile, s1 = std::min(seq, s0 + tile);
    for (Index s = s0; s < s1; ++s) {
      const Index p = pos(b, s);
      if (h < hq && h < hk) {
        rope_rows2(table, q.row(b, h, s), k.row(b, h, s), p);
      } else {
        S* row = h < hq ? q.row(b, h, s) : k.row(b, h, s);
        rope_row(table, row, row, static_cast<const T*>(nullptr), p);
      }
    }
  });
}

/// rope_tensor2 with a bias for q and one for k (per-head strides 0 or dim). Heads present in both tensors go
/// through rope_rows2_bias (one read of the table row for the q and k rows of a position), the others through
/// rope_row; both give the bits of the [n, dim] form's rope_row.
template <class T, class S, class Pos>
inline void rope_tensor2_bias(const RopeTable<T>& table, const TensorView<S>& q, const TensorView<S>& k, const T* qb,
                              Index qb_stride, const T* kb, Index kb_stride, Pos&& pos) {
  const Index seq = q.seq(), hq = q.heads(), hk = k.heads(), heads = std::max(hq, hk);
  const Index tile = rope_tile_positions(table), tiles = (seq + tile - 1) / tile;
  if (heads == 0) return;
  parallel_for(q.batch() * tiles * heads, [&](Index item) {
    const Index h = item % heads, t = (item / heads) % tiles, b = item / (heads * tiles);
    const Index s0 = t * tile, s1 = std::min(seq, s0 + tile);
    // Only heads that exist offset their bias (an empty bias of a tensor with no heads may be null).
    const T* qbh = h < hq ? qb + h * qb_stride : nullptr;
    const T* kbh = h < hk ? kb + h * kb_stride : nullptr;
    for (Index s = s0; s < s1; ++s) {
      const Index p = pos(b, s);
      if (h < hq && h < hk) {
        rope_rows2_bias(table, q.row(b, h, s), k.row(b, h, s), qbh, kbh, p);
      } else {
        S* row = h < hq ? q.row(b, h, s) : k.row(b, h, s);
        rope_row(table, row, row, h < hq ? qbh : kbh, p);
      }
    }
  });
}

template <class T, class S>
inline void check_pair(const char* fn, const RopeTable<T>& table, const TensorView<S>& q, const TensorView<S>& k) {
  check_tensor(fn, "q", table, q);
  check_tensor(fn, "k", table, k);
  require(q.batch() == k.batch() && q.seq() == k.seq(), fn, "q is [", q.batch(), ", ", q.heads(), ", ", q.seq(), ", ",
          q.dim(), "] but k is [", k.batch(), ", ", k.heads(), ", ", k.seq(), ", ", k.dim(),
          "]; batch and seq must match");
  require(q.data != k.data || q.batch() * q.heads() * q.seq() == 0, fn,
          "q and k are the same buffer; each would be rotated twice");
}

/// The q and k biases of the batched q + k forms, validated (see check_tensor_bias): data and per-head strides.
template <class T>
struct QkBiases {
  const T* q;
  Index q_stride;
  const T* k;
  Index k_stride;
};

template <class T, class S, class BQ, class BK>
QkBiases<T> check_qk_biases(const char* fn, const RopeTable<T>& table, const TensorView<S>& q, const TensorView<S>& k,
                            const Eigen::DenseBase<BQ>& q_bias, const Eigen::DenseBase<BK>& k_bias) {
  static_assert(std::is_same<typename BQ::Scalar, T>::value && std::is_same<typename BK::Scalar, T>::value,
                "rope_with_bias: q_bias, k_bias and the table must have the same scalar type");
  check_pair(fn, table, q, k);
  const T* qb = flat_data(fn, "q_bias", q_bias);
  const T* kb = flat_data(fn, "k_bias", k_bias);
  const Index qs = check_tensor_bias(fn, "q_bias", qb, Index(q_bias.size()), table, "q", q, "k", &k);
  const Index ks = check_tensor_bias(fn, "k_bias", kb, Index(k_bias.size()), table, "k", k, "q", &q);
  return {qb, qs, kb, ks};
}

template <class T, class P>
inline auto batched_positions(const char* fn, const char* name, const TensorView<T>& x, const P& positions,
                              Index max_positions) {
  const Index n = static_cast<Index>(std::size(positions));
  require(n == x.seq() || n == x.batch() * x.seq(), fn, name, " has ", n, " entries but needs seq = ", x.seq(),
          " (shared by the batch) or batch x seq = ", x.batch() * x.seq());
  check_positions(fn, name, positions, max_positions);
  const auto* p = std::data(positions);
  const Index batch_stride = n == x.seq() ? 0 : x.seq();
  return [p, batch_stride](Index b, Index s) { return static_cast<Index>(p[b * batch_stride + s]); };
}

inline void check_grid(const char* fn, Index max_positions, Index n, Index grid_width, Index first_patch) {
  require(grid_width > 0, fn, "grid_width must be > 0, got ", grid_width);
  require(first_patch >= 0, fn, "first_patch is ", first_patch, "; patches must be >= 0");
  if (n == 0) return;
  const Index last = first_patch + n - 1;
  // Patches spanning more than one grid row touch every column up to grid_width - 1.
  const Index max_row = last / grid_width;
  const Index max_col = first_patch / grid_width != max_row ? grid_width - 1 : last % grid_width;
  require(max_row < max_positions && max_col < max_positions, fn, "patches [", first_patch, ", ", last + 1,
          ") of a grid ", grid_width, " wide reach row ", max_row, " and column ", max_col,
          " but the table holds positions [0, ", max_positions, ")");
}

template <class T>
inline void rope_2d_row(const RopeTable<T>& table, T* row, Index patch, Index grid_width) {
  rope_row(table, row, row, static_cast<const T*>(nullptr), patch / grid_width);
  rope_row(table, row + table.dim(), row + table.dim(), static_cast<const T*>(nullptr), patch % grid_width);
}

}  // namespace detail

// ---- [n, dim] rows ----------------------------------------------------------------------------------------

/// In place: row r of x ([n, table.dim()], any row-major Eigen dense object) is rotated to position
/// first_position + r (SPEC 1.2). Throws kexue::Error if dims mismatch or a position is outside the table.
template <class T, class D>
void rope(const RopeTable<T>& table, const Eigen::DenseBase<D>& x, Index first_position = 0) {
  const char* fn = "rope";
  const auto v = detail::rope_view(fn, table, x);
  detail::check_first_position(fn, first_position, v.rows, table.max_positions());
  for (Index r = 0; r < v.rows; ++r) detail::rope_row(table, v.row(r), v.row(r), static_cast<const T*>(nullptr), first_position + r);
}

/// In place: row r of x ([n, table.dim()]) is rotated to position positions[r] (packed / varlen batches).
/// positions: n integers (std::vector<Index>, std::vector<int>, an Eigen integer vector, ...).
template <class T, class D, class P, std::enable_if_t<detail::is_position_list<P>::value, int> = 0>
void rope(const RopeTable<T>& table, const Eigen::DenseBase<D>& x, const P& positions) {
  const char* fn = "rope";
  const auto v = detail::rope_view(fn, table, x);
  detail::require(static_cast<Index>(std::size(positions)) == v.rows, fn, "positions has ", std::size(positions),
                  " entries but x has ", v.rows, " rows");
  detail::check_positions(fn, "positions", positions, table.max_positions());
  const auto* p = std::data(positions);
  for (Index r = 0; r < v.rows; ++r) detail::rope_row(table, v.row(r), v.row(r), static_cast<const T*>(nullptr), static_cast<Index>(p[r]));
}

/// In place: x <- RoPE(x + bias), row r at position first_position + r; bias: [table.dim()] (SPEC 4:
/// q = RoPE(W x + b), the bias added before the rotation). Pass-through dims get the bias too.
template <class T, class D, class B>
void rope_with_bias(const RopeTable<T>& table, const Eigen::DenseBase<D>& x, const Eigen::DenseBase<B>& bias,
                    Index first_position = 0) {
  const char* fn = "rope_with_bias";
  const auto v = detail::rope_view(fn, table, x);
  const T* b = detail::rope_bias(fn, "bias", table, bias, v);
  detail::check_first_position(fn, first_position, v.rows, table.max_positions());
  for (Index r = 0; r < v.rows; ++r) detail::rope_row(table, v.row(r), v.row(r), b, first_position + r);
}

/// In place: x <- RoPE(x + bias) with an explicit position per row.
template <class T, class D, class B, class P, std::enable_if_t<detail::is_position_list<P>::value, int> = 0>
void rope_with_bias(const RopeTable<T>& table, const Eigen::DenseBase<D>& x, const Eigen::DenseBase<B>& bias,
                    const P& positions) {
  const char* fn = "rope_with_bias";
  const auto v = detail::rope_view(fn, table, x);
  const T* b = detail::rope_bias(fn, "bias", table, bias, v);
  detail::require(static_cast<Index>(std::size(positions)) == v.rows, fn, "positions has ", std::size(positions),
                  " entries but x has ", v.rows, " rows");
  detail::check_positions(fn, "positions", positions, table.max_positions());
  const auto* p = std::data(positions);
  for (Index r = 0; r < v.rows; ++r) detail::rope_row(table, v.row(r), v.row(r), b, static_cast<Index>(p[r]));
}

// ---- 2-D RoPE (SPEC 1.3) ----------------------------------------------------------------------------------

/// In place 2-D RoPE for image patches: x is [n, 2 * table.dim()]; row r is patch p = first_patch + r of a
/// grid `grid_width` patches wide; dims [0, table.dim()) are rotated by the patch row p / grid_width and dims
/// [table.dim(), 2 table.dim()) by the column p % grid_width, each half exactly as rope() with the table
/// (Su's Keras-DDPM: table dim 64 and base 1000 for a head of 128). Both coordinates must be in the table.
template <class T, class D>
void rope_2d(const RopeTable<T>& table, const Eigen::DenseBase<D>& x, Index grid_width, Index first_patch = 0) {
  static_assert(std::is_same<typename D::Scalar, T>::value, "rope_2d: x and the table must have the same scalar type");
  const char* fn = "rope_2d";
  detail::View<T> v = detail::make_mut_view(fn, "x", x);
  const Index d = table.dim();
  detail::require(v.rows == 0 || v.cols == 2 * d, fn, "x has ", v.cols, " columns (shape ",
                  detail::shape_str(v.rows, v.cols), ") but 2-D RoPE needs 2 x table dim = ", 2 * d);
  detail::check_grid(fn, table.max_positions(), v.rows, grid_width, first_patch);
  for (Index r = 0; r < v.rows; ++r) detail::rope_2d_row(table, v.row(r), first_patch + r, grid_width);
}

/// In place 2-D RoPE with explicit coordinates: row r rotates its first half by rows[r] and its second
/// half by cols[r] (x: [n, 2 * table.dim()]).
template <class T, class D, class P, class Q,
          std::enable_if_t<detail::is_position_list<P>::value && detail::is_position_list<Q>::value, int> = 0>
void rope_2d(const RopeTable<T>& table, const Eigen::DenseBase<D>& x, const P& rows, const Q& cols) {
  static_assert(std::is_same<typename D::Scalar, T>::value, "rope_2d: x and the table must have the same scalar type");
  const char* fn = "rope_2d";
  detail::View<T> v = detail::make_mut_view(fn, "x", x);
  const Index d = table.dim();
  detail::require(v.rows == 0 || v.cols == 2 * d, fn, "x has ", v.cols, " columns (shape ",
                  detail::shape_str(v.rows, v.cols), ") but 2-D RoPE needs 2 x table dim = ", 2 * d);
  detail::require(static_cast<Index>(std::size(rows)) == v.rows && static_cast<Index>(std::size(cols)) == v.rows, fn,
                  "rows has ", std::size(rows), " and cols ", std::size(cols), " entries but x has ", v.rows, " rows");
  detail::check_positions(fn, "rows", rows, table.max_positions());
  detail::check_positions(fn, "cols", cols, table.max_positions());
  const auto* pr = std::data(rows);
  const auto* pc = std::data(cols);
  for (Index r = 0; r < v.rows; ++r) {
    T* row = v.row(r);
    detail::rope_row(table, row, row, static_cast<const T*>(nullptr), static_cast<Index>(pr[r]));
    detail::rope_row(table, row + d, row + d, static_cast<const T*>(nullptr), static_cast<Index>(pc[r]));
  }
}

/// In place 2-D RoPE over [batch, heads, n, 2 * table.dim()]: row (b, h, s) is patch first_patch + s of a
/// grid `grid_width` patches wide (see the [n, 2 dim] form). Parallel over batch x heads.
template <class T>
void rope_2d(const RopeTable<T>& table, const TensorView<T>& x, Index grid_width, Index first_patch = 0) {
  const char* fn = "rope_2d";
  const Index rows = x.batch() * x.heads() * x.seq();
  detail::require(x.batch() >= 0 && x.heads() >= 0 && x.seq() >= 0, fn, "x has a negative extent");
  detail::require(rows == 0 || x.dim() == 2 * table.dim(), fn, "x has dim ", x.dim(),
                  " but 2-D RoPE needs 2 x table dim = ", 2 * table.dim());
  detail::check_grid(fn, table.max_positions(), rows == 0 ? 0 : x.seq(), grid_width, first_patch);
  const Index heads = x.heads(), seq = x.seq();
  detail::parallel_for(x.batch() * heads, [&](Index item) {
    const Index b = item / heads, h = item % heads;
    for (Index s = 0; s < seq; ++s) detail::rope_2d_row(table, x.row(b, h, s), first_patch + s, grid_width);
  });
}

/// In place 2-D RoPE over [batch, heads, n, 2 * table.dim()] with explicit coordinates: row (b, h, s) rotates
/// its first half by rows[.] and its second half by cols[.] of sequence row s, each of rows and cols being
/// [n] (shared by every batch entry) or [batch, n] row-major; every (b, h) slice equals the [n, 2 dim] form
/// with those coordinates bit for bit. Every coordinate must be in the table. Parallel over batch x heads.
template <class T, class P, class Q,
          std::enable_if_t<detail::is_position_list<P>::value && detail::is_position_list<Q>::value, int> = 0>
void rope_2d(const RopeTable<T>& table, const TensorView<T>& x, const P& rows, const Q& cols) {
  const char* fn = "rope_2d";
  const Index n = x.batch() * x.heads() * x.seq(), d = table.dim();
  detail::require(x.batch() >= 0 && x.heads() >= 0 && x.seq() >= 0, fn, "x has a negative extent");
  detail::require(n == 0 || x.dim() == 2 * d, fn, "x has dim ", x.dim(), " but 2-D RoPE needs 2 x table dim = ", 2 * d);
  detail::require(n == 0 || x.data != nullptr, fn, "x has no data");
  auto row_of = detail::batched_positions(fn, "rows", x, rows, table.max_positions());
  auto col_of = detail::batched_positions(fn, "cols", x, cols, table.max_positions());
  const Index heads = x.heads(), seq = x.seq();
  if (n == 0) return;
  detail::parallel_for(x.batch() * heads, [&](Index item) {
    const Index b = item / heads, h = item % heads;
    for (Index s = 0; s < seq; ++s) {
      T* row = x.row(b, h, s);
      detail::rope_row(table, row, row, static_cast<const T*>(nullptr), row_of(b, s));
      detail::rope_row(table, row + d, row + d, static_cast<const T*>(nullptr), col_of(b, s));
    }
  });
}

// ---- batched [batch, heads, seq, dim] ---------------------------------------------------------------------

/// In place over a strided [batch, heads, seq, table.dim()] tensor: row (b, h, s) at position
/// first_position + s. Parallel over batch x heads (x tiles of positions for long sequences).
template <class T, class S>
void rope(const RopeTable<T>& table, const TensorView<S>& x, Index first_position = 0) {
  const char* fn = "rope";
  detail::check_tensor(fn, "x", table, x);
  detail::check_first_position(fn, first_position, x.batch() * x.heads() == 0 ? 0 : x.seq(), table.max_positions());
  detail::rope_tensor(table, x, static_cast<const T*>(nullptr), 0,
                      [first_position](Index, Index s) { return first_position + s; });
}

/// In place, explicit positions: [seq] (shared by every batch entry) or [batch, seq] row-major.
template <class T, class S, class P, std::enable_if_t<detail::is_position_list<P>::value, int> = 0>
void rope(const RopeTable<T>& table, const TensorView<S>& x, const P& positions) {
  const char* fn = "rope";
  detail::check_tensor(fn, "x", table, x);
  auto pos = detail::batched_positions(fn, "positions", x, positions, table.max_positions());
  detail::rope_tensor(table, x, static_cast<const T*>(nullptr), 0, pos);
}

/// q and k in one call (each row of the table is read once for both): q [batch, hq, seq, dim] and
/// k [batch, hk, seq, dim] (hq and hk may differ: grouped-query attention), row s at first_position + s.
/// q and k must not share elements. Parallel over batch x heads (x tiles of positions for long sequences).
template <class T, class S>
void rope(const RopeTable<T>& table, const TensorView<S>& q, const TensorView<S>& k, Index first_position = 0) {
  const char* fn = "rope";
  detail::check_pair(fn, table, q, k);
  detail::check_first_position(fn, first_position, q.batch() * q.heads() + k.batch() * k.heads() == 0 ? 0 : q.seq(),
                              table.max_positions());
  detail::rope_tensor2(table, q, k, [first_position](Index, Index s) { return first_position + s; });
}

/// q and k in one call with explicit positions: [seq] or [batch, seq] row-major.
template <class T, class S, class P, std::enable_if_t<detail::is_position_list<P>::value, int> = 0>
void rope(const RopeTable<T>& table, const TensorView<S>& q, const TensorView<S>& k, const P& positions) {
  const char* fn = "rope";
  detail::check_pair(fn, table, q, k);
  auto pos = detail::batched_positions(fn, "positions", q, positions, table.max_positions());
  detail::rope_tensor2(table, q, k, pos);
}

/// In place x <- RoPE(x + bias) over [batch, heads, seq, dim]; bias is [dim] (shared by every head) or
/// [heads, dim] row-major (one bias per head, as a fused projection's bias is). SPEC 4.
template <class T, class S, class B>
void rope_with_bias(const RopeTable<T>& table, const TensorView<S>& x, const Eigen::DenseBase<B>& bias,
                    Index first_position = 0) {
  static_assert(std::is_same<typename B::Scalar, T>::value, "rope_with_bias: bias and the table must match");
  const char* fn = "rope_with_bias";
  detail::check_tensor(fn, "x", table, x);
  const T* b = detail::flat_data(fn, "bias", bias);
  const Index stride = detail::check_tensor_bias(fn, "bias", b, Index(bias.size()), table, "x", x);
  detail::check_first_position(fn, first_position, x.batch() * x.heads() == 0 ? 0 : x.seq(), table.max_positions());
  detail::rope_tensor(table, x, b, stride, [first_position](Index, Index s) { return first_position + s; });
}

/// In place x <- RoPE(x + bias) over [batch, heads, seq, dim] with explicit positions: [seq] (shared by every
/// batch entry) or [batch, seq] row-major; bias [dim] or [heads, dim] as above. SPEC 4.
template <class T, class S, class B, class P, std::enable_if_t<detail::is_position_list<P>::value, int> = 0>
void rope_with_bias(const RopeTable<T>& table, const TensorView<S>& x, const Eigen::DenseBase<B>& bias,
                    const P& positions) {
  static_assert(std::is_same<typename B::Scalar, T>::value, "rope_with_bias: bias and the table must match");
  const char* fn = "rope_with_bias";
  detail::check_tensor(fn, "x", table, x);
  const T* b = detail::flat_data(fn, "bias", bias);
  const Index stride = detail::check_tensor_bias(fn, "bias", b, Index(bias.size()), table, "x", x);
  auto pos = detail::batched_positions(fn, "positions", x, positions, table.max_positions());
  detail::rope_tensor(table, x, b, stride, pos);
}

/// q <- RoPE(q + q_bias) and k <- RoPE(k + k_bias) in one call (SPEC 4, the batched q/k form of rope()):
/// q [batch, hq, seq, dim], k [batch, hk, seq, dim] (hq and hk may differ: grouped-query attention), row s at
/// first_position + s; q_bias [dim] or [hq, dim], k_bias [dim] or [hk, dim] row-major. Every row equals
/// rope_with_bias of the [n, dim] form bit for bit. q and k must not be the same buffer, and neither bias may
/// lie in q's or k's memory. Parallel over batch x heads (x tiles of positions for long sequences).
template <class T, class S, class BQ, class BK>
void rope_with_bias(const RopeTable<T>& table, const TensorView<S>& q, const TensorView<S>& k,
                    const Eigen::DenseBase<BQ>& q_bias, const Eigen::DenseBase<BK>& k_bias, Index first_position = 0) {
  const char* fn = "rope_with_bias";
  const auto b = detail::check_qk_biases(fn, table, q, k, q_bias, k_bias);
  detail::check_first_position(fn, first_position, q.batch() * q.heads() + k.batch() * k.heads() == 0 ? 0 : q.seq(),
                               table.max_positions());
  detail::rope_tensor2_bias(table, q, k, b.q, b.q_stride, b.k, b.k_stride,
                            [first_position](Index, Index s) { return first_position + s; });
}

/// q and k with their biases in one call, explicit positions: [seq] (shared by every batch entry) or
/// [batch, seq] row-major (see the first_position form).
template <class T, class S, class BQ, class BK, class P, std::enable_if_t<detail::is_position_list<P>::value, int> = 0>
void rope_with_bias(const RopeTable<T>& table, const TensorView<S>& q, const TensorView<S>& k,
                    const Eigen::DenseBase<BQ>& q_bias, const Eigen::DenseBase<BK>& k_bias, const P& positions) {
  const char* fn = "rope_with_bias";
  const auto b = detail::check_qk_biases(fn, table, q, k, q_bias, k_bias);
  auto pos = detail::batched_positions(fn, "positions", q, positions, table.max_positions());
  detail::rope_tensor2_bias(table, q, k, b.q, b.q_stride, b.k, b.k_stride, pos);
}

}  // namespace kexue
