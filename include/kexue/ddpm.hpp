// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// DDPM (SPEC.md section 6): beta schedules, forward noising, the velocity target and diffusers'
/// DDPMScheduler reverse step, with 0-based timesteps as in diffusers (betas[t] is the paper's beta_{t+1}).
/// Every schedule coefficient is computed and kept in double (ScheduleArithmetic::Exact, the default), or in float32
/// exactly as diffusers computes it (ScheduleArithmetic::DiffusersFloat32); data may be float or double.
/// Each output element is the same sequence of fused multiply-adds at every register width and thread count, so
/// results are bitwise identical across AVX2, AVX-512 and NEON builds; an SSE2 build (no fused multiply-add)
/// rounds each product separately and agrees within the tests' tolerances.
/// Under ScheduleArithmetic::DiffusersFloat32 each element instead follows diffusers' own sequence of separately
/// rounded torch ops, bitwise identical to diffusers (CPU) in every build, SSE2 included.


#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/ddpm_simd.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"
#include "kexue/random.hpp"

namespace kexue {

/// Beta schedules (SPEC 6.1-6.3), betas[i] for i = 0..T-1.
enum class BetaSchedule {
  Linear,        ///< linspace(beta_start, beta_end, T) (official DDPM, diffusers "linear"; here in double)
  ScaledLinear,  ///< linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (diffusers "scaled_linear")
  Cosine,        ///< squaredcos_cap_v2: min(1 - f((i+1)/T) / f(i/T), 0.999), f(u) = cos^2((u + 0.008)/1.008 pi/2);
                 ///< beta_start and beta_end are ignored
  Proportional,  ///< the blog's own schedule (kexue.fm/archives/9119, SPEC 6.3): beta_t = beta_end t / T for the
                 ///< 1-based t, i.e. betas[i] = beta_end (i+1) / T (0.02 t / T with the default beta_end);
                 ///< beta_start is ignored
};

/// What the model predicts (SPEC 6.4): the noise, x0 itself, or v = sqrt(ab) eps - sqrt(1 - ab) x0.
enum class Prediction { Epsilon, Sample, Velocity };

/// Reverse-step noise variance (SPEC 6.1/6.4): the posterior variance ("fixed_small") or the effective
/// single-step beta ("fixed_large").
enum class Variance { FixedSmall, FixedLarge };

/// How inference timesteps are spaced over the T training steps (diffusers' timestep_spacing, SPEC 6.4).
enum class TimestepSpacing {
  Leading,   ///< arange(0, k) * (T / k) reversed, + steps_offset
  Trailing,  ///< round(arange(T, 0, -T / k)) - 1
  Linspace,  ///< round(linspace(0, T - 1, k)) reversed
};

/// How a DdpmSchedule computes its coefficients, and how ddpm_add_noise / ddpm_velocity / ddpm_step evaluate
/// the step with them.
enum class ScheduleArithmetic {
  /// Double throughout (the default): the schedule in float64, the step's scalar coefficients in double, and
  /// the elementwise step as fused multiply-adds (bitwise the same at every register width).
  Exact,
  /// diffusers' DDPMScheduler (huggingface/diffusers 58eb52c, scheduling_ddpm.py) bit for bit: betas, alphas and
  /// alphas_cumprod in float32 as its __init__ computes them (torch.linspace in float32 as torch's AVX2 CPU
  /// kernel evaluates it; scaled_linear squared in float32; squaredcos_cap_v2 in Python float64 through libm,
  /// then rounded; torch.cumprod with its double accumulator), the step's scalars as float32 0-dim tensor ops,
  /// and every elementwise operation as a separate, rounded torch op in the data type (no fused multiply-add).
  /// With TorchGenerator for the noise, a sampling loop reproduces diffusers' trajectory on the CPU.
  DiffusersFloat32,
};

namespace detail {

/// torch.linspace(start, end, n, dtype=torch.float32) as torch's CPU kernel computes it (RangeFactoriesKernel):
/// step = (end - start) / (n - 1) in float; element i of the scalar path is start + step i below n / 2 and
/// end - step (n - 1 - i) from there on. Whole vectors of `lanes` elements (two per loop trip, the scalar path
/// for the rest) take base = that formula at their first index and lane k = base + k step. The result depends on
/// the kernel torch dispatched to: lanes = 8 with fused = true is its AVX2 build (GCC contracted the base into
/// an FMA but not the lanes), 16 / true its AVX-512 build, 8 / false the DEFAULT build. Verified bit for bit
/// against torch 1.13 under ATEN_CPU_CAPABILITY=avx2, avx512 and default.
inline std::vector<float> torch_linspace_f32(float start, float end, Index n, Index lanes = 8, bool fused = true) {
  std::vector<float> out(static_cast<std::size_t>(n));
  if (n <= 0) return out;
  if (n == 1) {
    out[0] = start;
    return out;
  }
  const float step = (end - start) / static_cast<float>(n - 1);
  const Index half = n / 2;
  auto scalar = [&](Index i) -> float {
    if (i < half)
      return fused ? std::fma(step, static_cast<float>(i), start) : start + rounded(step * static_cast<float>(i));
    const float k = static_cast<float>(n - 1 - i);
    return fused ? std::fma(-step, k, end) : end - rounded(step * k);
  };
  Index i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    for (Index v = i; v < i + 2 * lanes; v += lanes) {
      const float base = scalar(v);
      for (Index k = 0; k < lanes; ++k) out[std::size_t(v + k)] = base + rounded(static_cast<float>(k) * step);
    }
  }
  for (; i < n; ++i) out[std::size_t(i)] = scalar(i);
  return out;
}

/// Python's float ** y (libm pow), which for y = 2 or 0.5 differs from x * x or sqrt(x) in a few results in
/// ten thousand: the exponent is hidden from the compiler so that it calls pow instead of folding it.
inline double python_pow(double x, double y) { return std::pow(x, rounded(y)); }

}  // namespace detail

/// A DDPM noise schedule with T training timesteps t = 0..T-1, coefficients in double (Exact) or diffusers'
/// float32 values (DiffusersFloat32), kept as doubles.
class DdpmSchedule {
 public:
  /// T = num_train_timesteps >= 1; 0 < beta_start <= beta_end < 1 for the linear schedules,
  /// 0 < beta_end < 1 for Proportional.
  /// (Not explicit: API.md declares it without, so `DdpmSchedule s = {};` keeps compiling.)
  /// DiffusersFloat32 (see ScheduleArithmetic): the betas of diffusers' DDPMScheduler(num_train_timesteps,
  /// beta_start, beta_end, "linear" | "scaled_linear" | "squaredcos_cap_v2"); Proportional, which diffusers lacks,
  /// gives the float32 rounding of its double betas (diffusers' trained_betas). The same argument checks as
  /// Exact, plus: every float32 alpha = 1 - beta must lie strictly between 0 and 1.
  DdpmSchedule(Index num_train_timesteps = 1000, BetaSchedule schedule = BetaSchedule::Linear,
               double beta_start = 1e-4, double beta_end = 0.02,
               ScheduleArithmetic arithmetic = ScheduleArithmetic::Exact)
      : arithmetic_(arithmetic) {
    const char* fn = "DdpmSchedule";
    const Index T = num_train_timesteps;
    detail::require(T >= 1, fn, "num_train_timesteps must be >= 1, got ", T);
    const bool uses_start = schedule == BetaSchedule::Linear || schedule == BetaSchedule::ScaledLinear;
    const bool uses_end = schedule != BetaSchedule::Cosine;
    if (uses_start)
      detail::require(std::isfinite(beta_start) && beta_start > 0 && beta_start <= beta_end, fn,
                      "beta range invalid: need 0 < beta_start <= beta_end < 1, got beta_start = ", beta_start,
                      ", beta_end = ", beta_end);
    if (uses_end)
      detail::require(std::isfinite(beta_end) && beta_end > 0 && beta_end < 1, fn,
                      "beta range invalid: need 0 < beta_end < 1, got beta_end = ", beta_end);
    if (arithmetic == ScheduleArithmetic::DiffusersFloat32) {
      init_diffusers(schedule, T, beta_start, beta_end);
      return;
    }
    std::vector<double> b(static_cast<std::size_t>(T));
    switch (schedule) {
      case BetaSchedule::Linear:
        linspace(beta_start, beta_end, b);
        break;
      case BetaSchedule::ScaledLinear:
        linspace(std::sqrt(beta_start), std::sqrt(beta_end), b);
        for (double& v : b) v *= v;
        break;
      case BetaSchedule::Cosine: {
        constexpr double kS = 0.008, kHalfPi = 1.57079632679489661923, kMaxBeta = 0.999;
        auto f = [&](double u) {
          const double c = std::cos((u + kS) / (1 + kS) * kHalfPi);
          return c * c;
        };
        for (Index i = 0; i < T; ++i)
          b[std::size_t(i)] = std::min(1 - f(double(i + 1) / double(T)) / f(double(i) / double(T)), kMaxBeta);
        break;
      }
      case BetaSchedule::Proportional:
        for (Index i = 0; i < T; ++i) b[std::size_t(i)] = beta_end * double(i + 1) / double(T);
        break;
    }
    init(std::move(b));
  }

  /// A schedule from explicit betas, each in (0, 1).
  explicit DdpmSchedule(std::vector<double> betas) {
    detail::require(!betas.empty(), "DdpmSchedule", "betas must not be empty");
    for (std::size_t i = 0; i < betas.size(); ++i)
      detail::require(std::isfinite(betas[i]) && betas[i] > 0 && betas[i] < 1, "DdpmSchedule",
                      "beta range invalid: betas[", i, "] = ", betas[i], " is not in (0, 1)");
    init(std::move(betas));
  }

  /// Number of training timesteps T.
  Index size() const { return static_cast<Index>(betas_.size()); }
  /// How the coefficients are computed (and how the step functions evaluate the step).
  ScheduleArithmetic arithmetic() const { return arithmetic_; }
  /// beta_t (the paper's beta_{t+1}), t in [0, T).
  double beta(Index t) const { return betas_[checked(t, "DdpmSchedule::beta")]; }
  /// alpha_t = 1 - beta_t (in float32 under DiffusersFloat32).
  double alpha(Index t) const {
    if (arithmetic_ == ScheduleArithmetic::DiffusersFloat32) return 1.0f - static_cast<float>(beta(t));
    return 1.0 - beta(t);
  }
  /// alpha_bar_t = prod_{s <= t} (1 - beta_s), t in [0, T); alpha_bar(-1) = 1 (the clean data).
  double alpha_bar(Index t) const {
    if (t == -1) return 1.0;
    return alpha_bar_[checked(t, "DdpmSchedule::alpha_bar")];
  }
  /// Posterior variance of x_prev given x_t and x0 (SPEC 6.4):
  /// max((1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev), 1e-20); -1 <= prev_t < t. Under DiffusersFloat32,
  /// diffusers' _get_variance in float32 (the floor is 1e-20 rounded to float).
  double variance(Index t, Index prev_t) const {
    check_pair("DdpmSchedule::variance", t, prev_t);
    if (arithmetic_ == ScheduleArithmetic::DiffusersFloat32) {
      const float ab = static_cast<float>(alpha_bar_[std::size_t(t)]);
      const float ab_prev = static_cast<float>(alpha_bar(prev_t));
      const float current_beta = 1.0f - ab / ab_prev;
      return std::max((1.0f - ab_prev) / (1.0f - ab) * current_beta, 1e-20f);
    }
    const double ab = alpha_bar_[std::size_t(t)], ab_prev = alpha_bar(prev_t);
    const double current_beta = 1.0 - ab / ab_prev;
    return std::max((1.0 - ab_prev) / (1.0 - ab) * current_beta, 1e-20);
  }
  /// Posterior variance for the single step t -> t - 1.
  double variance(Index t) const { return variance(t, t - 1); }

  /// All betas (T values).
  const std::vector<double>& betas() const { return betas_; }
  /// All alpha_bar (T values).
  const std::vector<double>& alphas_cumprod() const { return alpha_bar_; }

  /// num_inference_steps descending timesteps with diffusers' spacing (SPEC 6.4); 1 <= k <= T.
  std::vector<Index> timesteps(Index num_inference_steps, TimestepSpacing spacing = TimestepSpacing::Leading,
                               Index steps_offset = 0) const {
    const char* fn = "DdpmSchedule::timesteps";
    const Index T = size(), k = num_inference_steps;
    detail::require(k >= 1 && k <= T, fn, "num_inference_steps must be in [1, ", T, "], got ", k);
    detail::require(steps_offset >= 0, fn, "steps_offset must be >= 0, got ", steps_offset);
    std::vector<Index> ts(static_cast<std::size_t>(k));
    for (Index i = 0; i < k; ++i) {
      Index v = 0;
      switch (spacing) {
        case TimestepSpacing::Leading:
          v = (k - 1 - i) * (T / k) + steps_offset;
          break;
        case TimestepSpacing::Trailing:
          // np.round is round-half-to-even: nearbyint in the default rounding mode.
          v = static_cast<Index>(std::nearbyint(double(T) - double(i) * (double(T) / double(k)))) - 1;
          break;
        case TimestepSpacing::Linspace: {
          const Index j = k - 1 - i;
          // np.linspace: start + j * step, the last point exactly stop; a single point is start (0).
          if (k == 1) {
            v = 0;
          } else {
            const double x = double(j) * (double(T - 1) / double(k - 1));
            v = static_cast<Index>(std::nearbyint(j == k - 1 ? double(T - 1) : x));
          }
          break;
        }
      }
      ts[std::size_t(i)] = v;
    }
    check_timesteps(ts, fn);
    return ts;
  }

  /// Throws unless timesteps is non-empty, strictly descending and inside [0, T) (a custom list).
  void check_timesteps(const std::vector<Index>& ts, const char* fn = "DdpmSchedule::check_timesteps") const {
    detail::require(!ts.empty(), fn, "the timestep list is empty");
    for (std::size_t i = 0; i < ts.size(); ++i) {
      detail::require(ts[i] >= 0 && ts[i] < size(), fn, "timestep ", ts[i], " at index ", i,
                      " is outside the schedule [0, ", size(), ")");
      detail::require(i == 0 || ts[i] < ts[i - 1], fn, "timesteps must be strictly descending, but entry ", i,
                      " (", ts[i], ") follows ", ts[i - 1]);
    }
  }

  /// Throws unless 0 <= t < T and -1 <= prev_t < t.
  void check_pair(const char* fn, Index t, Index prev_t) const {
    detail::require(t >= 0 && t < size(), fn, "t = ", t, " is outside the schedule [0, ", size(), ")");
    detail::require(prev_t >= -1 && prev_t < t, fn, "prev_t = ", prev_t, " must satisfy -1 <= prev_t < t = ", t);
  }

 private:
  static void linspace(double a, double b, std::vector<double>& out) {
    // torch.linspace's two-sided formula, so both ends are exact.
    const Index n = static_cast<Index>(out.size());
    if (n == 1) {
      out[0] = a;
      return;
    }
    const double step = (b - a) / double(n - 1);
    for (Index i = 0; i < n; ++i)
      out[std::size_t(i)] = i < n / 2 ? a + step * double(i) : b - step * double(n - 1 - i);
  }
  // diffusers' DDPMScheduler.__init__ (58eb52c): betas in float32, alphas = 1.0 - betas in float32,
  // alphas_cumprod = torch.cumprod(alphas), whose CPU kernel accumulates in double (acc_type<float, false>) and
  // rounds each prefix product to float.
  void init_diffusers(BetaSchedule schedule, Index T, double beta_start, double beta_end) {
    std::vector<float> b;
    switch (schedule) {
      case BetaSchedule::Linear:  // torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
        b = detail::torch_linspace_f32(static_cast<float>(beta_start), static_cast<float>(beta_end), T);
        break;
      case BetaSchedule::ScaledLinear:  // torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, float32) ** 2
        b = detail::torch_linspace_f32(static_cast<float>(detail::python_pow(beta_start, 0.5)),
                                       static_cast<float>(detail::python_pow(beta_end, 0.5)), T);
        for (float& v : b) v = v * v;
        break;
      case BetaSchedule::Cosine: {  // betas_for_alpha_bar: Python floats, then torch.tensor(..., float32)
        constexpr double kPi = 3.141592653589793;  // math.pi
        auto alpha_bar_fn = [&](double u) { return detail::python_pow(std::cos((u + 0.008) / 1.008 * kPi / 2), 2.0); };
        b.resize(static_cast<std::size_t>(T));
        for (Index i = 0; i < T; ++i) {
          const double t1 = double(i) / double(T), t2 = double(i + 1) / double(T);
          b[std::size_t(i)] = static_cast<float>(std::min(1 - alpha_bar_fn(t2) / alpha_bar_fn(t1), 0.999));
        }
        break;
      }
      case BetaSchedule::Proportional:  // not in diffusers: its double betas as trained_betas
        b.resize(static_cast<std::size_t>(T));
        for (Index i = 0; i < T; ++i) b[std::size_t(i)] = static_cast<float>(beta_end * double(i + 1) / double(T));
        break;
    }
    betas_.resize(b.size());
    alpha_bar_.resize(b.size());
    double p = 1.0;
    for (std::size_t i = 0; i < b.size(); ++i) {
      const float alpha = 1.0f - b[i];
      detail::require(alpha > 0.0f && alpha < 1.0f, "DdpmSchedule", "beta range invalid in float32: betas[", i,
                      "] = ", double(b[i]), " gives alpha = 1 - beta = ", double(alpha),
                      " (DiffusersFloat32 needs 0 < alpha < 1)");
      betas_[i] = b[i];
      p *= double(alpha);
      alpha_bar_[i] = static_cast<float>(p);
    }
  }
  void init(std::vector<double> b) {
    betas_ = std::move(b);
    alpha_bar_.resize(betas_.size());
    double p = 1.0;
    for (std::size_t i = 0; i < betas_.size(); ++i) alpha_bar_[i] = p *= 1.0 - betas_[i];
  }
  std::size_t checked(Index t, const char* fn) const {
    detail::require(t >= 0 && t < size(), fn, "t = ", t, " is outside the schedule [0, ", size(), ")");
    return static_cast<std::size_t>(t);
  }
  ScheduleArithmetic arithmetic_ = ScheduleArithmetic::Exact;
  std::vector<double> betas_, alpha_bar_;
};

/// The timestep that follows entry i of a descending list (the step's prev_t): timesteps[i + 1], or -1 after
/// the last entry.
inline Index previous_timestep(const std::vector<Index>& timesteps, std::size_t i) {
  return i + 1 < timesteps.size() ? timesteps[i + 1] : Index(-1);
}

/// Options of ddpm_step (diffusers' DDPMScheduler defaults, SPEC 6.4).
struct DdpmStepOptions {
  Prediction prediction = Prediction::Epsilon;  ///< what model_output is (diffusers' prediction_type)
  Variance variance = Variance::FixedSmall;     ///< the noise variance (diffusers' variance_type)
  bool clip_sample = true;    ///< clamp x0_hat to [-clip_range, clip_range] before forming the mean
  double clip_range = 1.0;    ///< > 0 (diffusers' clip_sample_range)
  std::optional<Index> prev_t;  ///< the step's target timestep; default t - 1 (skipped steps: the next list entry)
  /// Add sigma z at the final step (prev_t < 0) too, with the variance formula at alpha_bar_prev = 1: beta_t for
  /// FixedLarge, the floor 1e-20 for FixedSmall. Su's Keras-DDPM sampler does this (SPEC 6.3: "noise is added
  /// even at the last step"; with BetaSchedule::Proportional, FixedLarge and clip_sample = false, ddpm_step is
  /// his sampling loop), and so does diffusers when a custom list ends at t > 0. Default: no final noise, as in
  /// Ho et al.'s Algorithm 2 and diffusers' full schedules.
  bool final_step_noise = false;
  /// Dynamic thresholding (Imagen; diffusers' `thresholding=True`, SPEC 6.4), replacing clip_sample when set:
  /// per sample, s = clamp(quantile(|x0_hat|, dynamic_thresholding_ratio), 1, sample_max_value) with torch's
  /// linear interpolation, then x0_hat = clamp(x0_hat, -s, s) / s. A sample is the whole tensor in the flat
  /// step and one row in the batched step. Exact order statistics by radix selection over x0_hat (3 extra
  /// passes for float, 6 for double; no allocation). A NaN in x0_hat ranks above +inf; if the quantile itself
  /// is NaN, s = sample_max_value.
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;  ///< in [0, 1]
  double sample_max_value = 1.0;              ///< >= 1; diffusers' default 1 makes thresholding a clip to [-1, 1]
};

/// Step coefficients in double (SPEC 6.4), exposed for callers who fuse the step into their own kernels:
/// x0_hat = ax x + am m; clamp; mean = c0 x0_hat + c1 x; out = mean + noise_std z. Under DiffusersFloat32,
/// alpha_bar .. current_beta, c0, c1 and noise_std are diffusers' float32 values and ax, am their double
/// combination; ddpm_step then evaluates x0_hat in diffusers' order, not as ax x + am m.
struct DdpmStepCoefficients {
  double alpha_bar = 0;       ///< alpha_bar(t)
  double alpha_bar_prev = 1;  ///< alpha_bar(prev_t), 1 when prev_t < 0
  double current_alpha = 0;   ///< alpha_bar / alpha_bar_prev, the effective single-step alpha
  double current_beta = 0;    ///< 1 - current_alpha
  double ax = 0;              ///< coefficient of the sample x in x0_hat
  double am = 0;              ///< coefficient of the model output m in x0_hat
  double c0 = 0;              ///< coefficient of x0_hat in the posterior mean
  double c1 = 0;              ///< coefficient of x in the posterior mean
  double noise_std = 0;  ///< 0 when prev_t < 0 (no noise at the final step) unless final_step_noise
};

namespace detail {

/// The scalars of diffusers' DDPMScheduler.step / _get_variance (58eb52c), float32 0-dim tensor ops in its order.
/// No product here feeds an addition, so contraction cannot change them.
struct DiffusersScalars {
  float alpha_prod_t, alpha_prod_t_prev, beta_prod_t, beta_prod_t_prev, current_alpha_t, current_beta_t;
  float sqrt_alpha_prod, sqrt_beta_prod;  // alpha_prod_t ** 0.5, beta_prod_t ** 0.5
  float c0, c1;                           // pred_original_sample_coeff, current_sample_coeff
  float std_dev;                          // _get_variance(t) ** 0.5 (fixed_small) or current_beta_t ** 0.5
  bool noise;                             // prev_t >= 0 or final_step_noise
};

inline DiffusersScalars diffusers_scalars(const DdpmSchedule& schedule, Index t, Index prev_t,
                                          const DdpmStepOptions& options) {
  DiffusersScalars d;
  d.alpha_prod_t = static_cast<float>(schedule.alpha_bar(t));
  d.alpha_prod_t_prev = static_cast<float>(schedule.alpha_bar(prev_t));  // self.one when prev_t < 0
  d.beta_prod_t = 1.0f - d.alpha_prod_t;
  d.beta_prod_t_prev = 1.0f - d.alpha_prod_t_prev;
  d.current_alpha_t = d.alpha_prod_t / d.alpha_prod_t_prev;
  d.current_beta_t = 1.0f - d.current_alpha_t;
  d.sqrt_alpha_prod = std::sqrt(d.alpha_prod_t);
  d.sqrt_beta_prod = std::sqrt(d.beta_prod_t);
  d.c0 = (std::sqrt(d.alpha_prod_t_prev) * d.current_beta_t) / d.beta_prod_t;
  d.c1 = std::sqrt(d.current_alpha_t) * d.beta_prod_t_prev / d.beta_prod_t;
  const float variance = std::max((1.0f - d.alpha_prod_t_prev) / (1.0f - d.alpha_prod_t) * d.current_beta_t,
                                  1e-20f);  // torch.clamp(variance, min=1e-20)
  d.std_dev = std::sqrt(options.variance == Variance::FixedSmall ? variance : d.current_beta_t);
  d.noise = prev_t >= 0 || options.final_step_noise;
  return d;
}

}  // namespace detail

/// The coefficients of the step t -> prev_t (validates t, prev_t and the clip range).
inline DdpmStepCoefficients ddpm_step_coefficients(const DdpmSchedule& schedule, Index t,
                                                   const DdpmStepOptions& options = {},
                                                   const char* fn = "ddpm_step_coefficients") {
  const Index prev_t = options.prev_t ? *options.prev_t : t - 1;
  schedule.check_pair(fn, t, prev_t);
  if (options.clip_sample && !options.thresholding)
    detail::require(std::isfinite(options.clip_range) && options.clip_range > 0, fn,
                    "clip_range must be finite and > 0, got ", options.clip_range);
  if (options.thresholding) {
    detail::require(options.dynamic_thresholding_ratio >= 0 && options.dynamic_thresholding_ratio <= 1, fn,
                    "dynamic_thresholding_ratio must be in [0, 1], got ", options.dynamic_thresholding_ratio);
    detail::require(std::isfinite(options.sample_max_value) && options.sample_max_value >= 1, fn,
                    "sample_max_value must be finite and >= 1, got ", options.sample_max_value);
  }
  DdpmStepCoefficients k;
  if (schedule.arithmetic() == ScheduleArithmetic::DiffusersFloat32) {
    const detail::DiffusersScalars d = detail::diffusers_scalars(schedule, t, prev_t, options);
    k.alpha_bar = d.alpha_prod_t;
    k.alpha_bar_prev = d.alpha_prod_t_prev;
    k.current_alpha = d.current_alpha_t;
    k.current_beta = d.current_beta_t;
    switch (options.prediction) {
      case Prediction::Epsilon:
        k.ax = 1.0 / double(d.sqrt_alpha_prod);
        k.am = -double(d.sqrt_beta_prod) / double(d.sqrt_alpha_prod);
        break;
      case Prediction::Sample:
        k.ax = 0.0;
        k.am = 1.0;
        break;
      case Prediction::Velocity:
        k.ax = d.sqrt_alpha_prod;
        k.am = -double(d.sqrt_beta_prod);
        break;
    }
    k.c0 = d.c0;
    k.c1 = d.c1;
    k.noise_std = d.noise ? d.std_dev : 0.0f;
    return k;
  }
  k.alpha_bar = schedule.alpha_bar(t);
  k.alpha_bar_prev = schedule.alpha_bar(prev_t);
  k.current_alpha = k.alpha_bar / k.alpha_bar_prev;
  k.current_beta = 1.0 - k.current_alpha;
  const double sa = std::sqrt(k.alpha_bar), sb = std::sqrt(1.0 - k.alpha_bar);
  switch (options.prediction) {
    case Prediction::Epsilon:  // (x - sqrt(1 - ab) eps) / sqrt(ab)
      k.ax = 1.0 / sa;
      k.am = -sb / sa;
      break;
    case Prediction::Sample:
      k.ax = 0.0;
      k.am = 1.0;
      break;
    case Prediction::Velocity:  // sqrt(ab) x - sqrt(1 - ab) v
      k.ax = sa;
      k.am = -sb;
      break;
  }
  k.c0 = std::sqrt(k.alpha_bar_prev) * k.current_beta / (1.0 - k.alpha_bar);
  k.c1 = std::sqrt(k.current_alpha) * (1.0 - k.alpha_bar_prev) / (1.0 - k.alpha_bar);
  if (prev_t >= 0 || options.final_step_noise) {
    k.noise_std = options.variance == Variance::FixedSmall ? std::sqrt(schedule.variance(t, prev_t))
                                                           : std::sqrt(k.current_beta);
  }
  return k;
}

namespace detail {

// Elements per parallel work item: 16K floats = 64 KiB per stream, big enough to amortise the scheduling
// and small enough to balance; the result does not depend on it (elementwise).
constexpr Index kDdpmChunk = 16384;
// Below this many chunks a parallel region costs more than it saves (an elementwise step streams 16K floats
// in a few microseconds; waking a team takes about as long, far longer on a loaded machine).
constexpr Index kDdpmMinParallelChunks = 4;

/// f(chunk) for every chunk of kDdpmChunk elements, in parallel when there are enough of them.
template <class F>
void for_chunks(Index n, F&& f) {
  const Index chunks = (n + kDdpmChunk - 1) / kDdpmChunk;
  if (chunks < kDdpmMinParallelChunks) {
    for (Index c = 0; c < chunks; ++c) f(c);
  } else {
    parallel_for(chunks, f);
  }
}

template <class T>
DdpmStepCoef<T> to_kernel_coef(const DdpmStepCoefficients& k, const DdpmStepOptions& o) {
  DdpmStepCoef<T> c;
  c.ax = T(k.ax);
  c.am = T(k.am);
  c.c0 = T(k.c0);
  c.c1 = T(k.c1);
  c.fold_x = T(k.c0 * k.ax + k.c1);
  c.fold_m = T(k.c0 * k.am);
  c.s = T(k.noise_std);
  c.clip = o.clip_sample;
  c.lo = T(-o.clip_range);
  c.hi = T(o.clip_range);
  return c;
}

/// Dynamic thresholding of one sample (m, x: n values): clamp x0_hat to [-s, s] and fold the division by s
/// into the coefficient of x0_hat.
template <class T>
void apply_threshold(DdpmStepCoef<T>& c, const DdpmStepCoefficients& k, const DdpmStepOptions& o, const T* m,
                     const T* x, Index n) {
  if (!o.thresholding || n == 0) return;
  const double q = quantile_abs_x0(c.ax, c.am, m, x, n, o.dynamic_thresholding_ratio);
  const double s = std::isnan(q) ? o.sample_max_value : std::min(std::max(q, 1.0), o.sample_max_value);
  c.clip = true;
  c.lo = T(-s);
  c.hi = T(s);
  c.c0 = T(k.c0 / s);
}

/// True when [a, a + n) and [b, b + n) are either the same range or disjoint (elementwise kernels may run
/// in place, but not on shifted overlaps).
template <class A, class B>
bool same_or_disjoint(const A* a, const B* b, Index n) {
  const void* va = a;
  const void* vb = b;
  if (va == vb || n == 0) return true;
  const char* a0 = reinterpret_cast<const char*>(a);
  const char* b0 = reinterpret_cast<const char*>(b);
  return a0 + n * Index(sizeof(A)) <= b0 || b0 + n * Index(sizeof(B)) <= a0;
}

template <class Derived>
scalar_of<Derived>* flat_mut(const char* fn, const char* name, const Eigen::DenseBase<Derived>& m) {
  static_assert(bool(Derived::Flags & Eigen::LvalueBit), "kexue: an output argument must be writable");
  return const_cast<scalar_of<Derived>*>(flat_data(fn, name, m));
}

template <class T>
void ddpm_step_flat(const DdpmStepCoef<T>& c, const T* m, const T* x, const T* z, T* out, Index n) {
  for_chunks(n, [&](Index ci) {
    const Index b = ci * kDdpmChunk, len = std::min(kDdpmChunk, n - b);
    ddpm_step_range(c, m + b, x + b, z ? z + b : nullptr, out + b, len);
  });
}

template <class T>
void axpby_flat(T a, const T* u, T b, const T* v, T* out, Index n) {
  for_chunks(n, [&](Index ci) {
    const Index s = ci * kDdpmChunk;
    axpby_range(a, u + s, b, v + s, out + s, std::min(kDdpmChunk, n - s));
  });
}

template <class T>
void axpby_rounded_flat(T a, const T* u, T b, const T* v, T* out, Index n) {
  for_chunks(n, [&](Index ci) {
    const Index s = ci * kDdpmChunk;
    axpby_rounded_range(a, u + s, b, v + s, out + s, std::min(kDdpmChunk, n - s));
  });
}

inline bool is_diffusers(const DdpmSchedule& schedule) {
  return schedule.arithmetic() == ScheduleArithmetic::DiffusersFloat32;
}

/// add_noise's coefficients {sqrt(ab), sqrt(1 - ab)} in T: diffusers converts alphas_cumprod to the data type
/// first (alphas_cumprod.to(dtype=original_samples.dtype)), then takes ** 0.5 and 1 - ab there.
template <class T>
std::pair<T, T> diffusers_noise_coef(const DdpmSchedule& schedule, Index t) {
  const T ab = static_cast<T>(schedule.alpha_bar(t));
  return {std::sqrt(ab), std::sqrt(T(1) - ab)};
}

/// Whether the step adds noise (and so reads the noise argument).
inline bool step_uses_noise(const DdpmSchedule& schedule, const DdpmStepCoefficients& k, Index t,
                            const DdpmStepOptions& o) {
  if (is_diffusers(schedule)) return (o.prev_t ? *o.prev_t : t - 1) >= 0 || o.final_step_noise;
  return k.noise_std != 0.0;
}

/// The diffusers-order kernel coefficients of the step (DiffusersFloat32), for data of type T.
template <class T>
DiffusersStepCoef<T> diffusers_kernel_coef(const DdpmSchedule& schedule, Index t, const DdpmStepOptions& o) {
  const DiffusersScalars d = diffusers_scalars(schedule, t, o.prev_t ? *o.prev_t : t - 1, o);
  DiffusersStepCoef<T> c;
  c.prediction = o.prediction == Prediction::Epsilon ? 0 : o.prediction == Prediction::Sample ? 1 : 2;
  c.sa = T(d.sqrt_alpha_prod);
  c.sb = T(d.sqrt_beta_prod);
  c.c0 = T(d.c0);
  c.c1 = T(d.c1);
  c.s = T(d.std_dev);
  c.noise = d.noise;
  c.clip = o.clip_sample && !o.thresholding;
  c.lo = T(-o.clip_range);
  c.hi = T(o.clip_range);
  return c;
}

/// diffusers' _threshold_sample on one sample (n values): s = clamp(quantile(|x0|, ratio), 1, sample_max_value)
/// in T, then x0 = clamp(x0, -s, s) / s. A NaN quantile makes every x0 NaN, as in torch.
template <class T>
void apply_threshold(DiffusersStepCoef<T>& c, const DdpmStepOptions& o, const T* m, const T* x, Index n) {
  if (!o.thresholding || n == 0) return;
  const T q = torch_quantile_abs_x0(c, m, x, n, o.dynamic_thresholding_ratio);
  const T s = q != q ? q : std::min(std::max(q, T(1)), T(o.sample_max_value));
  c.clip = true;
  c.lo = -s;
  c.hi = s;
  c.divide = true;
  c.div = s;
}

template <class T>
void diffusers_step_flat(const DiffusersStepCoef<T>& c, const T* m, const T* x, const T* z, T* out, Index n) {
  for_chunks(n, [&](Index ci) {
    const Index b = ci * kDdpmChunk, len = std::min(kDdpmChunk, n - b);
    diffusers_step_range(c, m + b, x + b, z ? z + b : nullptr, out + b, len);
  });
}

}  // namespace detail

namespace detail {

/// Shared body of ddpm_add_noise and ddpm_velocity: validates, then out = a x0 + b noise with coefficients
/// taken from alpha_bar(t). x0, noise, out: same size, contiguous; out may be x0 or noise itself.
template <class D1, class D2, class D3, class Coefficients>
void ddpm_mix(const char* fn, const DdpmSchedule& schedule, const Eigen::DenseBase<D1>& x0,
              const Eigen::DenseBase<D2>& noise, Index t, const Eigen::DenseBase<D3>& out, Coefficients coefficients,
              bool velocity) {
  using T = scalar_of<D1>;
  static_assert(std::is_same<T, scalar_of<D2>>::value && std::is_same<T, scalar_of<D3>>::value,
                "ddpm_add_noise / ddpm_velocity: x0, noise and out must have the same scalar type");
  const Index n = x0.size();
  require(noise.size() == n, fn, "noise has ", noise.size(), " elements but x0 has ", n);
  require(out.size() == n, fn, "out has ", out.size(), " elements but x0 has ", n);
  schedule.check_pair(fn, t, -1);
  const T* px = flat_data(fn, "x0", x0);
  const T* pz = flat_data(fn, "noise", noise);
  T* po = flat_mut(fn, "out", out);
  require(same_or_disjoint(po, px, n) && same_or_disjoint(po, pz, n), fn, "out partially overlaps x0 or noise");
  if (is_diffusers(schedule)) {
    // add_noise: sqrt_alpha_prod * x0 + sqrt_one_minus_alpha_prod * noise;
    // get_velocity: sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * x0 (a - b == a + (-b) exactly).
    const auto sq = diffusers_noise_coef<T>(schedule, t);
    if (velocity)
      axpby_rounded_flat(T(-sq.second), px, sq.first, pz, po, n);
    else
      axpby_rounded_flat(sq.first, px, sq.second, pz, po, n);
    return;
  }
  const auto ab = coefficients(schedule.alpha_bar(t));  // {coefficient of x0, coefficient of noise}
  axpby_flat(T(ab.first), px, T(ab.second), pz, po, n);
}

}  // namespace detail

/// Forward noising (SPEC 6.1): out = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise. x0, noise, out: same size, any
/// contiguous Eigen dense objects (flat); out may be x0 or noise itself.
template <class D1, class D2, class D3>
void ddpm_add_noise(const DdpmSchedule& schedule, const Eigen::DenseBase<D1>& x0, const Eigen::DenseBase<D2>& noise,
                    Index t, const Eigen::DenseBase<D3>& out) {
  detail::ddpm_mix("ddpm_add_noise", schedule, x0, noise, t, out,
                   [](double ab) { return std::make_pair(std::sqrt(ab), std::sqrt(1.0 - ab)); }, false);
}

/// Batched forward noising with one timestep per row: x0, noise, out are [batch, n] row-major (any row
/// stride), t has batch entries.
template <class D1, class D2, class D3>
void ddpm_add_noise(const DdpmSchedule& schedule, const Eigen::DenseBase<D1>& x0, const Eigen::DenseBase<D2>& noise,
                    const std::vector<Index>& t, const Eigen::DenseBase<D3>& out) {
  const char* fn = "ddpm_add_noise";
  auto vx = detail::make_view(fn, "x0", x0);
  auto vz = detail::make_view(fn, "noise", noise);
  auto vo = detail::make_mut_view(fn, "out", out);
  detail::require(Index(t.size()) == vx.rows, fn, "t has ", t.size(), " entries but x0 has ", vx.rows, " rows");
  detail::require_shape(fn, "noise", vz, vx.rows, vx.cols, "x0 has shape ");
  detail::require_shape(fn, "out", vo, vx.rows, vx.cols, "x0 has shape ");
  for (Index t_b : t) schedule.check_pair(fn, t_b, -1);
  detail::parallel_for(vx.rows, [&](Index r) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(vx.data)>>;
    if (detail::is_diffusers(schedule)) {
      const auto sq = detail::diffusers_noise_coef<T>(schedule, t[std::size_t(r)]);
      detail::axpby_rounded_range(sq.first, vx.row(r), sq.second, vz.row(r), vo.row(r), vx.cols);
      return;
    }
    const double ab = schedule.alpha_bar(t[std::size_t(r)]);
    detail::axpby_range(T(std::sqrt(ab)), vx.row(r), T(std::sqrt(1.0 - ab)), vz.row(r), vo.row(r), vx.cols);
  });
}

/// Velocity target (SPEC 6.4, diffusers get_velocity): out = sqrt(ab_t) noise - sqrt(1 - ab_t) x0.
template <class D1, class D2, class D3>
void ddpm_velocity(const DdpmSchedule& schedule, const Eigen::DenseBase<D1>& x0, const Eigen::DenseBase<D2>& noise,
                   Index t, const Eigen::DenseBase<D3>& out) {
  detail::ddpm_mix("ddpm_velocity", schedule, x0, noise, t, out,
                   [](double ab) { return std::make_pair(-std::sqrt(1.0 - ab), std::sqrt(ab)); }, true);
}

/// One reverse step of diffusers' DDPMScheduler (SPEC 6.4) from t to prev_t (default t - 1):
/// x0_hat from the model output (Epsilon, Sample or Velocity), optionally clamped to +-clip_range, posterior
/// mean with the effective single-step alpha = ab_t / ab_prev and beta = 1 - alpha, plus std z with
/// std^2 = the posterior variance (FixedSmall) or beta (FixedLarge). No noise when prev_t < 0 (noise is not
/// read and may be empty) unless options.final_step_noise. model_output, sample, noise, out: same size, any contiguous Eigen dense objects
/// (flat); out may be sample or model_output itself (in place).
/// With a DiffusersFloat32 schedule the step is diffusers' DDPMScheduler.step bit for bit (see ScheduleArithmetic),
/// including the +0 it adds when no noise is added.
/// Note: diffusers adds noise whenever t > 0, so for a custom list whose last entry is t > 0 (prev_t = -1)
/// it would add std sqrt(1e-20) (FixedSmall) or sqrt(1 - ab_t) (FixedLarge) noise; kexue adds none unless
/// options.final_step_noise is set.
template <class D1, class D2, class D3, class D4>
void ddpm_step(const DdpmSchedule& schedule, const Eigen::DenseBase<D1>& model_output, Index t,
               const Eigen::DenseBase<D2>& sample, const Eigen::DenseBase<D3>& noise,
               const Eigen::DenseBase<D4>& out, const DdpmStepOptions& options = {}) {
  using T = detail::scalar_of<D1>;
  const char* fn = "ddpm_step";
  static_assert(std::is_same<T, detail::scalar_of<D2>>::value && std::is_same<T, detail::scalar_of<D3>>::value &&
                    std::is_same<T, detail::scalar_of<D4>>::value,
                "ddpm_step: model_output, sample, noise and out must have the same scalar type");
  const DdpmStepCoefficients k = ddpm_step_coefficients(schedule, t, options, fn);
  const Index n = sample.size();
  detail::require(model_output.size() == n, fn, "model_output has ", model_output.size(), " elements but sample has ",
                  n);
  detail::require(out.size() == n, fn, "out has ", out.size(), " elements but sample has ", n);
  const bool uses_noise = detail::step_uses_noise(schedule, k, t, options);
  detail::require(noise.size() == n || (!uses_noise && noise.size() == 0), fn, "noise has ", noise.size(),
                  " elements but sample has ", n);
  const T* pm = detail::flat_data(fn, "model_output", model_output);
  const T* px = detail::flat_data(fn, "sample", sample);
  const T* pz = uses_noise ? detail::flat_data(fn, "noise", noise) : nullptr;
  T* po = detail::flat_mut(fn, "out", out);
  detail::require(detail::same_or_disjoint(po, pm, n) && detail::same_or_disjoint(po, px, n) &&
                      (!pz || detail::same_or_disjoint(po, pz, n)),
                  fn, "out partially overlaps an input");
  detail::require(!pz || pz != po, fn, "out must not be the noise buffer");
  if (detail::is_diffusers(schedule)) {
    auto c = detail::diffusers_kernel_coef<T>(schedule, t, options);
    detail::apply_threshold(c, options, pm, px, n);
    detail::diffusers_step_flat(c, pm, px, pz, po, n);
    return;
  }
  auto c = detail::to_kernel_coef<T>(k, options);
  detail::apply_threshold(c, k, options, pm, px, n);
  detail::ddpm_step_flat(c, pm, px, pz, po, n);
}

/// The reverse step with the noise drawn from a Philox stream on the fly (no noise buffer: the fast path for
/// sampling). Element i gets value gen.offset() + i of the stream, exactly as gen.normal(noise) followed by
/// ddpm_step would; the offset advances by sample.size() when noise is used. Bitwise identical for any
/// thread count.
template <class D1, class D2, class D4>
void ddpm_step(const DdpmSchedule& schedule, const Eigen::DenseBase<D1>& model_output, Index t,
               const Eigen::DenseBase<D2>& sample, PhiloxGenerator& gen, const Eigen::DenseBase<D4>& out,
               const DdpmStepOptions& options = {}) {
  using T = detail::scalar_of<D1>;
  const char* fn = "ddpm_step";
  static_assert(std::is_same<T, detail::scalar_of<D2>>::value && std::is_same<T, detail::scalar_of<D4>>::value,
                "ddpm_step: model_output, sample and out must have the same scalar type");
  const DdpmStepCoefficients k = ddpm_step_coefficients(schedule, t, options, fn);
  const Index n = sample.size();
  detail::require(model_output.size() == n, fn, "model_output has ", model_output.size(), " elements but sample has ",
                  n);
  detail::require(out.size() == n, fn, "out has ", out.size(), " elements but sample has ", n);
  const T* pm = detail::flat_data(fn, "model_output", model_output);
  const T* px = detail::flat_data(fn, "sample", sample);
  T* po = detail::flat_mut(fn, "out", out);
  detail::require(detail::same_or_disjoint(po, pm, n) && detail::same_or_disjoint(po, px, n), fn,
                  "out partially overlaps an input");
  constexpr Index kTile = 1024;
  const std::uint64_t seed = gen.seed(), base = gen.offset();
  if (detail::is_diffusers(schedule)) {
    auto c = detail::diffusers_kernel_coef<T>(schedule, t, options);
    detail::apply_threshold(c, options, pm, px, n);
    if (!c.noise) {
      detail::diffusers_step_flat(c, pm, px, static_cast<const T*>(nullptr), po, n);
      return;
    }
    detail::for_chunks(n, [&](Index ci) {
      alignas(64) T z[kTile];
      const Index end = std::min(n, (ci + 1) * detail::kDdpmChunk);
      for (Index b = ci * detail::kDdpmChunk; b < end; b += kTile) {
        const Index len = std::min(kTile, end - b);
        detail::philox_normal_serial(seed, base + std::uint64_t(b), z, len);
        detail::diffusers_step_range(c, pm + b, px + b, z, po + b, len);
      }
    });
    gen.set_offset(base + std::uint64_t(n));
    return;
  }
  auto c = detail::to_kernel_coef<T>(k, options);
  detail::apply_threshold(c, k, options, pm, px, n);
  if (k.noise_std == 0.0) {
    detail::ddpm_step_flat(c, pm, px, static_cast<const T*>(nullptr), po, n);
    return;
  }
  // Noise is produced per tile into a stack buffer (L1-resident), so the step streams m, x and out only.
  detail::for_chunks(n, [&](Index ci) {
    alignas(64) T z[kTile];
    const Index end = std::min(n, (ci + 1) * detail::kDdpmChunk);
    for (Index b = ci * detail::kDdpmChunk; b < end; b += kTile) {
      const Index len = std::min(kTile, end - b);
      detail::philox_normal_serial(seed, base + std::uint64_t(b), z, len);
      detail::ddpm_step_range(c, pm + b, px + b, z, po + b, len);
    }
  });
  gen.set_offset(base + std::uint64_t(n));
}

/// Batched reverse step with one timestep per sample: model_output, sample, noise, out are [batch, n]
/// row-major (any row stride; out rows may be the sample rows themselves), t has batch entries, prev_t is
/// empty (each t - 1) or has batch entries. options.prev_t must be unset. Row b equals the single step of
/// row b with t[b], prev_t[b].
template <class D1, class D2, class D3, class D4>
void ddpm_step(const DdpmSchedule& schedule, const Eigen::DenseBase<D1>& model_output, const std::vector<Index>& t,
               const Eigen::DenseBase<D2>& sample, const Eigen::DenseBase<D3>& noise,
               const Eigen::DenseBase<D4>& out, const DdpmStepOptions& options = {},
               const std::vector<Index>& prev_t = {}) {
  using T = detail::scalar_of<D1>;
  const char* fn = "ddpm_step";
  auto vm = detail::make_view(fn, "model_output", model_output);
  auto vx = detail::make_view(fn, "sample", sample);
  auto vz = detail::make_view(fn, "noise", noise);
  auto vo = detail::make_mut_view(fn, "out", out);
  static_assert(std::is_same<T, detail::scalar_of<D2>>::value && std::is_same<T, detail::scalar_of<D3>>::value &&
                    std::is_same<T, detail::scalar_of<D4>>::value,
                "ddpm_step: model_output, sample, noise and out must have the same scalar type");
  detail::require(!options.prev_t, fn, "options.prev_t must be unset in the batched step; pass the prev_t list");
  const Index rows = vx.rows, cols = vx.cols;
  detail::require(Index(t.size()) == rows, fn, "t has ", t.size(), " entries but sample has ", rows, " rows");
  detail::require(prev_t.empty() || Index(prev_t.size()) == rows, fn, "prev_t has ", prev_t.size(),
                  " entries but sample has ", rows, " rows");
  detail::require_shape(fn, "model_output", vm, rows, cols, "sample has shape ");
  detail::require_shape(fn, "noise", vz, rows, cols, "sample has shape ");
  detail::require_shape(fn, "out", vo, rows, cols, "sample has shape ");
  std::vector<DdpmStepCoefficients> coef(static_cast<std::size_t>(rows));
  for (Index r = 0; r < rows; ++r) {
    DdpmStepOptions o = options;
    o.prev_t = prev_t.empty() ? t[std::size_t(r)] - 1 : prev_t[std::size_t(r)];
    coef[std::size_t(r)] = ddpm_step_coefficients(schedule, t[std::size_t(r)], o, fn);
  }
  for (Index r = 0; r < rows; ++r)
    detail::require(detail::same_or_disjoint(vo.row(r), vm.row(r), cols) &&
                        detail::same_or_disjoint(vo.row(r), vx.row(r), cols),
                    fn, "out row ", r, " partially overlaps an input row");
  detail::parallel_for(rows, [&](Index r) {
    if (detail::is_diffusers(schedule)) {
      DdpmStepOptions o = options;
      o.prev_t = prev_t.empty() ? t[std::size_t(r)] - 1 : prev_t[std::size_t(r)];
      auto c = detail::diffusers_kernel_coef<T>(schedule, t[std::size_t(r)], o);
      detail::apply_threshold(c, o, vm.row(r), vx.row(r), cols);
      detail::diffusers_step_range(c, vm.row(r), vx.row(r), c.noise ? vz.row(r) : nullptr, vo.row(r), cols);
      return;
    }
    const DdpmStepCoefficients& k = coef[std::size_t(r)];
    auto c = detail::to_kernel_coef<T>(k, options);
    detail::apply_threshold(c, k, options, vm.row(r), vx.row(r), cols);  // per sample, before its row is written
    detail::ddpm_step_range(c, vm.row(r), vx.row(r), vz.row(r), vo.row(r), cols);
  });
}

}  // namespace kexue
