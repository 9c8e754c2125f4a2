// SPDX-License-Identifier: MIT
#pragma once
// Scalar, double-precision DDPM reference written for clarity (SPEC.md 6.4, diffusers DDPMScheduler.step
// line by line). The tests compare the SIMD kernels against it.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kexue/ddpm.hpp"

namespace kexue_ref {

using kexue::Index;

/// diffusers' step for one element stream; prev_t < 0 adds no noise.
inline std::vector<double> ddpm_step(const std::vector<double>& alphas_cumprod, const std::vector<double>& m, Index t,
                                     const std::vector<double>& x, const std::vector<double>& z,
                                     kexue::Prediction prediction, kexue::Variance variance, bool clip,
                                     double clip_range, Index prev_t) {
  const double ab_t = alphas_cumprod[std::size_t(t)];
  const double ab_prev = prev_t >= 0 ? alphas_cumprod[std::size_t(prev_t)] : 1.0;
  const double beta_prod_t = 1 - ab_t, beta_prod_prev = 1 - ab_prev;
  const double current_alpha = ab_t / ab_prev, current_beta = 1 - current_alpha;
  const double var = std::max(beta_prod_prev / beta_prod_t * current_beta, 1e-20);
  const double std_dev = variance == kexue::Variance::FixedSmall ? std::sqrt(var) : std::sqrt(current_beta);
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    double x0 = 0;
    switch (prediction) {
      case kexue::Prediction::Epsilon:
        x0 = (x[i] - std::sqrt(beta_prod_t) * m[i]) / std::sqrt(ab_t);
        break;
      case kexue::Prediction::Sample:
        x0 = m[i];
        break;
      case kexue::Prediction::Velocity:
        x0 = std::sqrt(ab_t) * x[i] - std::sqrt(beta_prod_t) * m[i];
        break;
    }
    if (clip) x0 = std::min(std::max(x0, -clip_range), clip_range);
    const double mean = std::sqrt(ab_prev) * current_beta / beta_prod_t * x0 +
                        std::sqrt(current_alpha) * beta_prod_prev / beta_prod_t * x[i];
    out[i] = prev_t >= 0 ? mean + std_dev * z[i] : mean;
  }
  return out;
}

/// The paper's Algorithm 2 step (SPEC 6.1) with sigma^2 = beta (fixedlarge) or beta-tilde (fixedsmall):
/// x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t) + sigma z, no noise at t = 0.
inline std::vector<double> algorithm2_step(const std::vector<double>& betas, const std::vector<double>& alphas_cumprod,
                                           const std::vector<double>& eps, Index t, const std::vector<double>& x,
                                           const std::vector<double>& z, bool fixed_large) {
  const double beta = betas[std::size_t(t)], ab = alphas_cumprod[std::size_t(t)];
  const double ab_prev = t > 0 ? alphas_cumprod[std::size_t(t - 1)] : 1.0;
  const double sigma = std::sqrt(fixed_large ? beta : beta * (1 - ab_prev) / (1 - ab));
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    out[i] = (x[i] - beta / std::sqrt(1 - ab) * eps[i]) / std::sqrt(1 - beta);
    if (t > 0) out[i] += sigma * z[i];
  }
  return out;
}

}  // namespace kexue_ref

namespace kexue_ref {

/// diffusers' DDPMScheduler.step (58eb52c) for one element stream in the data type T, each torch op rounded on
/// its own (kexue::detail::rounded keeps the compiler from contracting a product into an FMA, as torch's separate
/// kernels never do). The scalars (float32 0-dim tensors in diffusers) come from the schedule's float32 values.
/// noise is added when prev_t >= 0; no thresholding (the tests compare that against the transcription's data).
/// threshold = {dynamic_thresholding_ratio, sample_max_value}: diffusers' _threshold_sample over the whole
/// stream (sorted copy, torch.quantile's float rank and lerp) instead of the clip.
template <class T>
std::vector<T> diffusers_step(const kexue::DdpmSchedule& s, const std::vector<T>& m, Index t, const std::vector<T>& x,
                              const std::vector<T>& z, kexue::Prediction prediction, kexue::Variance variance,
                              bool clip, double clip_range, Index prev_t,
                              const double* threshold = nullptr) {
  using kexue::detail::rounded;
  const float alpha_prod_t = float(s.alpha_bar(t));
  const float alpha_prod_t_prev = prev_t >= 0 ? float(s.alpha_bar(prev_t)) : 1.0f;
  const float beta_prod_t = 1 - alpha_prod_t;
  const float beta_prod_t_prev = 1 - alpha_prod_t_prev;
  const float current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
  const float current_beta_t = 1 - current_alpha_t;
  const T sa = T(std::sqrt(alpha_prod_t)), sb = T(std::sqrt(beta_prod_t));
  const T coef0 = T((std::sqrt(alpha_prod_t_prev) * current_beta_t) / beta_prod_t);
  const T coef1 = T(std::sqrt(current_alpha_t) * beta_prod_t_prev / beta_prod_t);
  const float var = std::max((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, 1e-20f);
  const T std_dev = T(std::sqrt(variance == kexue::Variance::FixedSmall ? var : current_beta_t));
  auto x0_of = [&](std::size_t i) {
    T x0 = m[i];
    if (prediction == kexue::Prediction::Epsilon) x0 = (x[i] - rounded(sb * m[i])) / sa;
    if (prediction == kexue::Prediction::Velocity) x0 = rounded(sa * x[i]) - rounded(sb * m[i]);
    return x0;
  };
  T thr = 0;
  if (threshold && !x.empty()) {
    std::vector<T> a(x.size());
    bool nan = false;
    for (std::size_t i = 0; i < x.size(); ++i) {
      a[i] = std::abs(x0_of(i));
      nan = nan || std::isnan(a[i]);
    }
    std::sort(a.begin(), a.end());
    const T rank = T(threshold[0]) * T(a.size() - 1);
    const std::size_t below = std::size_t(rank), above = std::size_t(std::ceil(rank));
    const T w = rank - T(below), lo = a[below], hi = a[above];
    const T q = nan ? std::numeric_limits<T>::quiet_NaN()
                    : std::abs(w) < T(0.5) ? std::fma(w, hi - lo, lo) : std::fma(-(hi - lo), T(1) - w, hi);
    thr = std::isnan(q) ? q : std::min(std::max(q, T(1)), T(threshold[1]));
  }
  std::vector<T> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    T x0 = x0_of(i);
    if (threshold) {
      if (!std::isnan(x0)) x0 = std::min(std::max(x0, -thr), thr);
      x0 = x0 / thr;
    } else if (clip && !std::isnan(x0)) {
      x0 = std::min(std::max(x0, T(-clip_range)), T(clip_range));
    }
    T r = rounded(coef0 * x0) + rounded(coef1 * x[i]);
    r = prev_t >= 0 ? r + rounded(std_dev * z[i]) : r + T(0);  // diffusers adds the int 0: -0 becomes +0
    out[i] = r;
  }
  return out;
}

}  // namespace kexue_ref

namespace kexue_ref {

/// diffusers' add_noise (velocity = false) or get_velocity (true) in the data type T: alphas_cumprod converted to
/// T, ** 0.5 and 1 - ab there, each product rounded on its own.
template <class T>
std::vector<T> diffusers_mix(const kexue::DdpmSchedule& s, const std::vector<T>& x0, const std::vector<T>& noise,
                             Index t, bool velocity) {
  using kexue::detail::rounded;
  const T ab = T(s.alpha_bar(t)), a = std::sqrt(ab), b = std::sqrt(T(1) - ab);
  std::vector<T> out(x0.size());
  for (std::size_t i = 0; i < x0.size(); ++i)
    out[i] = velocity ? rounded(a * noise[i]) - rounded(b * x0[i]) : rounded(a * x0[i]) + rounded(b * noise[i]);
  return out;
}

}  // namespace kexue_ref
