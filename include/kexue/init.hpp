// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Weight initialisers (SPEC.md section 7.2): LeCun / He / Xavier (Glorot) normal and uniform, TensorFlow's
/// truncated normal and bert4keras' RoFormerV2 / GAU-alpha initialiser.
///
/// Weights w are [fan_in, fan_out] (a Dense kernel x W, as GauWeights::w_in); a vector (an Eigen type with
/// one column or one row at compile time) has fan_in = fan_out = its size, as Keras' compute_fans. Every
/// initialiser draws standard normals z from a PhiloxGenerator, in row-major order of w, and writes
/// w = stddev * z (uniforms are u = Phi(z), the normal CDF), so a seed gives the same weights on any thread
/// count and w's bits depend only on (seed, offset). The generator advances by the values drawn: w.size() for
/// the normal and uniform forms, and the draws consumed (accepted or rejected) for the truncated forms.
///
/// Variance scaling (Keras VarianceScaling(scale, mode, distribution)): Var(w) = scale / fan with
///     LeCun:  scale 1, fan_in            He (Kaiming, ReLU): scale 2, fan_in
///     Xavier: scale 1, fan_avg = (fan_in + fan_out) / 2   (uniform limit sqrt(6 / (fan_in + fan_out)))
/// The historical difference between peers is the distribution, a named InitDistribution value:
///     PyTorch's kaiming_normal_ / xavier_normal_ and TF1's random_normal draw Normal;
///     Keras >= 2.2.3 / tf.keras lecun_normal, he_normal, glorot_normal draw TruncatedNormal (truncated at
///       2 sigma, sigma divided by .87962566103423978 so the variance is exactly scale / fan);
///     Keras < 2.2.3 'normal' drew TruncatedNormalUncorrected (the same truncation, variance 0.7737 scale / fan).
/// The init_*_normal shortcuts draw Normal (exact variance, PyTorch's choice); pass another InitDistribution to
/// init_variance_scaling for the Keras ones.

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/view.hpp"
#include "kexue/random.hpp"

namespace kexue {

/// 1 / sqrt(0.7737413): TF's truncated normal (resampled beyond 2 sigma) has variance 0.7737413 sigma^2, so a
/// stddev multiplied by this gives variance sigma^2 (bert4keras writes 1.13684723; Keras divides by
/// .87962566103423978, the same number to 9 digits).
inline constexpr double kTruncatedNormalCorrection = 1.13684723;

/// Which fan Var(w) = scale / fan uses.
enum class FanMode {
  FanIn,   ///< rows of w (LeCun, He)
  FanOut,  ///< columns of w
  FanAvg   ///< (rows + cols) / 2 (Xavier / Glorot)
};

/// How variance-scaling draws (see the header comment for which peer uses which).
enum class InitDistribution {
  Normal,                     ///< N(0, scale / fan): PyTorch, TF1 random_normal
  TruncatedNormal,            ///< Keras >= 2.2.3: truncated at 2 sigma', sigma' = 1.13684723 sqrt(scale / fan)
  TruncatedNormalUncorrected, ///< Keras < 2.2.3 'normal': truncated at 2 sigma, sigma = sqrt(scale / fan)
  Uniform                     ///< U(-limit, limit), limit = sqrt(3 scale / fan)
};

namespace detail {

/// Number of standard normals drawn per block while filtering a truncated normal: 4K floats on the stack, and
/// the expected 4.8% rejections make a second block rare for small matrices.
constexpr Index kTruncatedBlock = 4096;

template <class Derived>
constexpr bool is_compile_time_vector() {
  return Derived::ColsAtCompileTime == 1 || Derived::RowsAtCompileTime == 1;
}

/// Row-major mutable view of w plus its fans.
template <class Derived>
struct InitTarget {
  View<scalar_of<Derived>> v;
  Index fan_in = 0, fan_out = 0;
};

template <class Derived>
InitTarget<Derived> init_target(const char* fn, const Eigen::DenseBase<Derived>& w) {
  InitTarget<Derived> t;
  t.v = make_mut_view(fn, "w", w);
  if (is_compile_time_vector<Derived>()) {
    t.fan_in = t.fan_out = static_cast<Index>(w.size());
  } else {
    t.fan_in = t.v.rows;
    t.fan_out = t.v.cols;
  }
  return t;
}

/// Standard normals, row by row in row-major order (one stream, as if w were contiguous).
template <class T>
void draw_normal(const View<T>& v, T stddev, PhiloxGenerator& gen) {
  for (Index r = 0; r < v.rows; ++r) {
    T* row = v.row(r);
    gen.normal(row, v.cols);
    for (Index c = 0; c < v.cols; ++c) row[c] *= stddev;
  }
}

/// U(-limit, limit) through u = Phi(z): |z| < 5.8 for Philox's 24-bit Box-Muller, so |2u - 1| < 1 and every value
/// lies strictly inside the interval. Computed in double, then rounded to T.
template <class T>
void draw_uniform(const View<T>& v, double limit, PhiloxGenerator& gen) {
  for (Index r = 0; r < v.rows; ++r) {
    T* row = v.row(r);
    gen.normal(row, v.cols);
    for (Index c = 0; c < v.cols; ++c) {
      const double centred = std::erf(double(row[c]) * 0.70710678118654752440);  // 2 Phi(z) - 1
      row[c] = static_cast<T>(limit * centred);
    }
  }
}

/// TF truncated_normal: draws standard normals in stream order, keeps those with |z| <= 2 (TF drops "values
/// whose magnitude is more than 2 standard deviations" and re-picks) and writes stddev * z in row-major order.
/// The generator ends right after the last accepted draw, so consecutive calls continue one stream.
template <class T>
void draw_truncated(const View<T>& v, double stddev, PhiloxGenerator& gen) {
  float block[kTruncatedBlock];
  Index used = kTruncatedBlock, filled = kTruncatedBlock;  // block[used..filled) not yet examined
  std::uint64_t position = gen.offset();
  for (Index r = 0; r < v.rows; ++r) {
    T* row = v.row(r);
    for (Index c = 0; c < v.cols;) {
      if (used == filled) {
        // Draws are pure functions of (seed, position), so fetching ahead and rewinding is exact.
        PhiloxGenerator::fill_at(gen.seed(), position, block, kTruncatedBlock);
        used = 0;
        filled = kTruncatedBlock;
      }
      const float z = block[used++];
      ++position;
      if (std::abs(z) <= 2.0f) row[c++] = static_cast<T>(stddev * double(z));
    }
  }
  gen.set_offset(position);
}

inline void check_stddev(const char* fn, double stddev) {
  require(std::isfinite(stddev) && stddev >= 0, fn, "stddev must be finite and >= 0, got ", stddev);
}

template <class Derived>
void check_fans(const char* fn, const InitTarget<Derived>& t, FanMode mode) {
  if (t.v.rows == 0 || t.v.cols == 0) return;  // nothing is drawn
  const Index fan = mode == FanMode::FanIn ? t.fan_in : mode == FanMode::FanOut ? t.fan_out : t.fan_in + t.fan_out;
  require(fan > 0, fn, "w has shape ", shape_str(t.v.rows, t.v.cols), ": its fan is 0");
}

inline double fan_of(Index fan_in, Index fan_out, FanMode mode) {
  switch (mode) {
    case FanMode::FanIn: return double(fan_in);
    case FanMode::FanOut: return double(fan_out);
    case FanMode::FanAvg: return 0.5 * double(fan_in + fan_out);
  }
  return 1.0;
}

template <class Derived>
void init_scaled(const char* fn, const Eigen::DenseBase<Derived>& w, double scale, FanMode mode,
                 InitDistribution distribution, PhiloxGenerator& gen) {
  using T = scalar_of<Derived>;
  InitTarget<Derived> t = init_target(fn, w);
  require(std::isfinite(scale) && scale > 0, fn, "scale must be finite and > 0, got ", scale);
  check_fans(fn, t, mode);
  if (t.v.rows == 0 || t.v.cols == 0) return;
  const double variance = scale / fan_of(t.fan_in, t.fan_out, mode);
  switch (distribution) {
    case InitDistribution::Normal: draw_normal(t.v, static_cast<T>(std::sqrt(variance)), gen); break;
    case InitDistribution::TruncatedNormal:
      draw_truncated(t.v, kTruncatedNormalCorrection * std::sqrt(variance), gen);
      break;
    case InitDistribution::TruncatedNormalUncorrected: draw_truncated(t.v, std::sqrt(variance), gen); break;
    case InitDistribution::Uniform: draw_uniform(t.v, std::sqrt(3.0 * variance), gen); break;
  }
}

}  // namespace detail

/// w ~ N(0, stddev^2), elementwise in row-major order. w: any row-major Eigen dense object of float or double.
template <class Derived>
void init_normal(const Eigen::DenseBase<Derived>& w, double stddev, PhiloxGenerator& gen) {
  const char* fn = "init_normal";
  auto t = detail::init_target(fn, w);
  detail::check_stddev(fn, stddev);
  detail::draw_normal(t.v, static_cast<detail::scalar_of<Derived>>(stddev), gen);
}

/// TensorFlow's truncated_normal (SPEC 7.2): w = stddev' z with z ~ N(0, 1) resampled while |z| > 2, so
/// |w| <= 2 stddev'; stddev' = stddev, or stddev * 1.13684723 when correct_variance (then Var(w) = stddev^2;
/// without it Var(w) = 0.7737413 stddev^2, TF's behaviour).
template <class Derived>
void init_truncated_normal(const Eigen::DenseBase<Derived>& w, double stddev, PhiloxGenerator& gen,
                           bool correct_variance = false) {
  const char* fn = "init_truncated_normal";
  auto t = detail::init_target(fn, w);
  detail::check_stddev(fn, stddev);
  detail::draw_truncated(t.v, correct_variance ? stddev * kTruncatedNormalCorrection : stddev, gen);
}

/// Keras VarianceScaling(scale, mode, distribution): Var(w) = scale / fan (exactly, for every distribution but
/// TruncatedNormalUncorrected).
template <class Derived>
void init_variance_scaling(const Eigen::DenseBase<Derived>& w, double scale, FanMode mode,
                           InitDistribution distribution, PhiloxGenerator& gen) {
  detail::init_scaled("init_variance_scaling", w, scale, mode, distribution, gen);
}

/// LeCun normal: w ~ N(0, 1 / fan_in) (SPEC 7.2). Keras' lecun_normal: init_variance_scaling(w, 1,
/// FanMode::FanIn, InitDistribution::TruncatedNormal, gen).
template <class Derived>
void init_lecun_normal(const Eigen::DenseBase<Derived>& w, PhiloxGenerator& gen) {
  detail::init_scaled("init_lecun_normal", w, 1.0, FanMode::FanIn, InitDistribution::Normal, gen);
}

/// LeCun uniform: w ~ U(-sqrt(3 / fan_in), sqrt(3 / fan_in)).
template <class Derived>
void init_lecun_uniform(const Eigen::DenseBase<Derived>& w, PhiloxGenerator& gen) {
  detail::init_scaled("init_lecun_uniform", w, 1.0, FanMode::FanIn, InitDistribution::Uniform, gen);
}

/// He (Kaiming) normal: w ~ N(0, 2 / fan_in) (PyTorch kaiming_normal_ with a = 0, mode fan_in).
template <class Derived>
void init_he_normal(const Eigen::DenseBase<Derived>& w, PhiloxGenerator& gen) {
  detail::init_scaled("init_he_normal", w, 2.0, FanMode::FanIn, InitDistribution::Normal, gen);
}

/// He (Kaiming) uniform: w ~ U(-sqrt(6 / fan_in), sqrt(6 / fan_in)).
template <class Derived>
void init_he_uniform(const Eigen::DenseBase<Derived>& w, PhiloxGenerator& gen) {
  detail::init_scaled("init_he_uniform", w, 2.0, FanMode::FanIn, InitDistribution::Uniform, gen);
}

/// Xavier (Glorot) normal: w ~ N(0, gain^2 * 2 / (fan_in + fan_out)).
template <class Derived>
void init_xavier_normal(const Eigen::DenseBase<Derived>& w, PhiloxGenerator& gen, double gain = 1.0) {
  detail::require(std::isfinite(gain) && gain > 0, "init_xavier_normal", "gain must be finite and > 0, got ", gain);
  detail::init_scaled("init_xavier_normal", w, gain * gain, FanMode::FanAvg, InitDistribution::Normal, gen);
}

/// Xavier (Glorot) uniform: w ~ U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)) (PyTorch xavier_uniform_,
/// Keras glorot_uniform at gain 1).
template <class Derived>
void init_xavier_uniform(const Eigen::DenseBase<Derived>& w, PhiloxGenerator& gen, double gain = 1.0) {
  detail::require(std::isfinite(gain) && gain > 0, "init_xavier_uniform", "gain must be finite and > 0, got ", gain);
  detail::init_scaled("init_xavier_uniform", w, gain * gain, FanMode::FanAvg, InitDistribution::Uniform, gen);
}

/// The fan of bert4keras' RoFormerV2 initialiser: rows, unless rows > 10000 or rows < 10 (embedding tables
/// [vocab, d] and tiny first dimensions), then cols.
inline Index roformer_v2_fan(Index rows, Index cols) { return (rows > 10000 || rows < 10) ? cols : rows; }

namespace detail {
inline double roformer_v2_stddev(const char* fn, Index rows, Index cols, Index num_layers, double order, double gain) {
  require(num_layers >= 1, fn, "num_layers must be >= 1, got ", num_layers);
  require(std::isfinite(order) && order > 0, fn, "order must be finite and > 0, got ", order);
  require(std::isfinite(gain) && gain > 0, fn, "gain must be finite and > 0, got ", gain);
  const Index fan = roformer_v2_fan(rows, cols);
  require(fan > 0, fn, "w has shape ", shape_str(rows, cols), ": its fan is 0");
  return kTruncatedNormalCorrection / std::sqrt(double(fan)) * gain * std::pow(double(num_layers), -1.0 / order);
}
}  // namespace detail

/// stddev of bert4keras' RoFormerV2 / GAU-alpha initialiser for a [rows, cols] weight:
/// 1.13684723 / sqrt(roformer_v2_fan(rows, cols)) * num_layers^(-1 / order) * gain (the 1.13684723 undoes the
/// truncation's variance loss).
inline double roformer_v2_stddev(Index rows, Index cols, Index num_layers, double order, double gain = 1.0) {
  return detail::roformer_v2_stddev("roformer_v2_stddev", rows, cols, num_layers, order, gain);
}

/// bert4keras' RoFormerV2 / GAU-alpha initialiser (SPEC 7.2): TF truncated_normal (no further correction) with
/// stddev = roformer_v2_stddev(rows, cols, num_layers, order, gain); order 2 for RoFormerV2, 3 for GAU-alpha.
/// Final variance: 1 / fan * num_layers^(-2 / order) * gain^2.
template <class Derived>
void init_roformer_v2(const Eigen::DenseBase<Derived>& w, Index num_layers, double order, PhiloxGenerator& gen,
                      double gain = 1.0) {
  const char* fn = "init_roformer_v2";
  auto t = detail::init_target(fn, w);
  // bert4keras reads shape[0] and shape[1]; a vector has only shape[0], its size.
  const Index rows = detail::is_compile_time_vector<Derived>() ? t.fan_in : t.v.rows;
  const Index cols = detail::is_compile_time_vector<Derived>() ? t.fan_in : t.v.cols;
  if (t.v.rows == 0 || t.v.cols == 0) {
    (void)detail::roformer_v2_stddev(fn, 1, 1, num_layers, order, gain);  // still validate the parameters
    return;
  }
  detail::draw_truncated(t.v, detail::roformer_v2_stddev(fn, rows, cols, num_layers, order, gain), gen);
}

}  // namespace kexue
