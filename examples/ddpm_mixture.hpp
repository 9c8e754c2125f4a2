// SPDX-License-Identifier: MIT
#pragma once
// The sampler behind examples/ddpm_mixture.cpp (and its test): DDPM on a 2-D Gaussian mixture with the
// exact noise predictor. For x_t = sqrt(ab) x0 + sqrt(1 - ab) eps and x0 from a mixture of N(mu_k, S_k), the
// noised density is the mixture of N(sqrt(ab) mu_k, ab S_k + (1 - ab) I) with the same weights, so
//   eps*(x, t) = -sqrt(1 - ab_t) grad log p_t(x) = sqrt(1 - ab_t) sum_k r_k(x) C_k^{-1} (x - m_k)
// with r_k the posterior responsibilities: no network is needed, and the sampler's output can be checked
// against the true mixture.

#include <kexue/ddpm.hpp>
#include <kexue/random.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#if defined(_WIN32)
#include <io.h>
#else
#include <unistd.h>
#endif

namespace kexue_demo {

using kexue::Index;

/// True when f is a terminal (not a file or a pipe).
inline bool is_terminal(std::FILE* f) {
#if defined(_WIN32)
  return _isatty(_fileno(f)) != 0;
#else
  return isatty(fileno(f)) != 0;
#endif
}

/// A progress report for a loop of `total` steps, written to `out` (the demo passes stderr, so that stdout holds
/// only results). On a terminal: one bar redrawn in place with carriage returns, every 10 steps. Elsewhere (a log
/// file, a pipe, CI output): one plain line per 10% and no carriage return, so the log stays readable.
class ProgressBar {
 public:
  ProgressBar(std::FILE* out, bool terminal) : out_(out), terminal_(terminal) {}

  void operator()(Index done, Index total) {
    if (total <= 0 || done < 0 || done > total) return;
    if (terminal_) {
      if (done != total && done % 10 != 0) return;
      constexpr int kWidth = 40;
      const int filled = static_cast<int>(kWidth * done / total);
      std::fprintf(out_, "\r  sampling [%s%s] %4ld/%ld steps", std::string(std::size_t(filled), '#').c_str(),
                   std::string(std::size_t(kWidth - filled), '.').c_str(), static_cast<long>(done),
                   static_cast<long>(total));
      if (done == total) std::fprintf(out_, "\n");
    } else {
      const Index tenth = 10 * done / total;  // the last decile reached
      if (tenth <= last_tenth_) return;
      last_tenth_ = tenth;
      std::fprintf(out_, "  sampling: %3ld%% (%ld/%ld steps)\n", static_cast<long>(10 * tenth),
                   static_cast<long>(done), static_cast<long>(total));
    }
    std::fflush(out_);
  }

 private:
  std::FILE* out_;
  bool terminal_;
  Index last_tenth_ = 0;
};

/// One mixture component: weight, mean and covariance [sxx, sxy; sxy, syy].
struct Component {
  double weight;
  std::array<double, 2> mean;
  std::array<double, 3> cov;  // sxx, sxy, syy
};

/// Four well-separated modes of different weight, size and orientation.
inline std::vector<Component> default_mixture() {
  return {{0.40, {-2.0, -1.0}, {0.30, 0.10, 0.20}},
          {0.30, {2.0, 1.5}, {0.20, -0.08, 0.30}},
          {0.20, {1.5, -2.0}, {0.10, 0.00, 0.10}},
          {0.10, {-1.5, 2.5}, {0.15, 0.05, 0.10}}};
}

struct SamplerConfig {
  Index samples = 20000;
  std::uint64_t seed = 2022;  // Philox stream: the initial x_T and every step's noise
  Index num_train_timesteps = 1000;
  Index inference_steps = 1000;  // all 1000 steps: plain DDPM
  kexue::Variance variance = kexue::Variance::FixedSmall;
};

namespace detail {
// The noised mixture at one timestep: per component the mean, inverse covariance, log weight - log det / 2.
struct NoisedComponent {
  double mx, my, ixx, ixy, iyy, log_norm;
};

inline std::vector<NoisedComponent> noised(const std::vector<Component>& mix, double ab) {
  std::vector<NoisedComponent> out;
  const double sa = std::sqrt(ab);
  for (const auto& c : mix) {
    const double cxx = ab * c.cov[0] + (1 - ab), cxy = ab * c.cov[1], cyy = ab * c.cov[2] + (1 - ab);
    const double det = cxx * cyy - cxy * cxy;
    out.push_back({sa * c.mean[0], sa * c.mean[1], cyy / det, -cxy / det, cxx / det,
                   std::log(c.weight) - 0.5 * std::log(det)});
  }
  return out;
}
}  // namespace detail

/// eps*(x, t) for every row of x ([n, 2]) into eps ([n, 2]).
inline void exact_noise_prediction(const std::vector<Component>& mix, double alpha_bar, const kexue::Matrix<float>& x,
                                   kexue::Matrix<float>& eps) {
  const auto comps = detail::noised(mix, alpha_bar);
  const double sb = std::sqrt(1 - alpha_bar);
  const Index n = x.rows();
  const std::size_t K = comps.size();
  for (Index i = 0; i < n; ++i) {
    const double px = x(i, 0), py = x(i, 1);
    double logit[16], gx[16], gy[16];
    double best = -INFINITY;
    for (std::size_t k = 0; k < K && k < 16; ++k) {
      const auto& c = comps[k];
      const double dx = px - c.mx, dy = py - c.my;
      gx[k] = c.ixx * dx + c.ixy * dy;  // C^{-1} (x - m)
      gy[k] = c.ixy * dx + c.iyy * dy;
      logit[k] = c.log_norm - 0.5 * (dx * gx[k] + dy * gy[k]);
      best = std::max(best, logit[k]);
    }
    double z = 0, ex = 0, ey = 0;
    for (std::size_t k = 0; k < K && k < 16; ++k) {
      const double r = std::exp(logit[k] - best);
      z += r;
      ex += r * gx[k];
      ey += r * gy[k];
    }
    eps(i, 0) = static_cast<float>(sb * ex / z);
    eps(i, 1) = static_cast<float>(sb * ey / z);
  }
}

/// Runs the DDPM sampler: x_T ~ N(0, I), then one kexue::ddpm_step per timestep (epsilon prediction, no clipping:
/// the data is not in [-1, 1]), noise from the same Philox stream. progress(done, total) after every step.
inline kexue::Matrix<float> sample_ddpm(const std::vector<Component>& mix, const SamplerConfig& cfg,
                                        const std::function<void(Index, Index)>& progress) {
  const kexue::DdpmSchedule schedule(cfg.num_train_timesteps);
  const auto timesteps = schedule.timesteps(cfg.inference_steps);
  kexue::Matrix<float> x(cfg.samples, 2), eps(cfg.samples, 2);
  kexue::PhiloxGenerator gen(cfg.seed);
  gen.normal(x);
  kexue::DdpmStepOptions options;
  options.clip_sample = false;
  options.variance = cfg.variance;
  for (std::size_t i = 0; i < timesteps.size(); ++i) {
    const Index t = timesteps[i];
    exact_noise_prediction(mix, schedule.alpha_bar(t), x, eps);
    options.prev_t = kexue::previous_timestep(timesteps, i);
    kexue::ddpm_step(schedule, eps, t, x, gen, x, options);  // in place, noise drawn on the fly
    if (progress) progress(Index(i + 1), Index(timesteps.size()));
  }
  return x;
}

struct Statistics {
  std::array<double, 2> mean{};
  std::array<double, 4> cov{};  // xx, xy, yx, yy
  std::vector<double> weights;  // fraction of samples whose most likely component is k
  double far_fraction = 0;      // samples more than 4 Mahalanobis units from their component
};

/// The true mean, covariance and weights of the mixture.
inline Statistics mixture_statistics(const std::vector<Component>& mix) {
  Statistics s;
  for (const auto& c : mix) {
    s.mean[0] += c.weight * c.mean[0];
    s.mean[1] += c.weight * c.mean[1];
    s.weights.push_back(c.weight);
  }
  for (const auto& c : mix) {
    s.cov[0] += c.weight * (c.cov[0] + c.mean[0] * c.mean[0]);
    s.cov[1] += c.weight * (c.cov[1] + c.mean[0] * c.mean[1]);
    s.cov[3] += c.weight * (c.cov[2] + c.mean[1] * c.mean[1]);
  }
  s.cov[0] -= s.mean[0] * s.mean[0];
  s.cov[1] -= s.mean[0] * s.mean[1];
  s.cov[3] -= s.mean[1] * s.mean[1];
  s.cov[2] = s.cov[1];
  return s;
}

/// Sample mean, covariance, mode weights (each sample assigned to its most likely component of the clean
/// mixture) and the fraction of samples far from every mode.
inline Statistics sample_statistics(const std::vector<Component>& mix, const kexue::Matrix<float>& x) {
  Statistics s;
  const Index n = x.rows();
  s.weights.assign(mix.size(), 0.0);
  if (n == 0) return s;
  for (Index i = 0; i < n; ++i) {
    s.mean[0] += x(i, 0);
    s.mean[1] += x(i, 1);
  }
  s.mean[0] /= double(n);
  s.mean[1] /= double(n);
  const auto comps = detail::noised(mix, 1.0);
  Index far = 0;
  for (Index i = 0; i < n; ++i) {
    const double dx = x(i, 0) - s.mean[0], dy = x(i, 1) - s.mean[1];
    s.cov[0] += dx * dx;
    s.cov[1] += dx * dy;
    s.cov[3] += dy * dy;
    std::size_t best = 0;
    double best_logit = -INFINITY, best_q = 0;
    for (std::size_t k = 0; k < comps.size(); ++k) {
      const auto& c = comps[k];
      const double ex = x(i, 0) - c.mx, ey = x(i, 1) - c.my;
      const double q = ex * (c.ixx * ex + c.ixy * ey) + ey * (c.ixy * ex + c.iyy * ey);
      const double logit = c.log_norm - 0.5 * q;
      if (logit > best_logit) {
        best_logit = logit;
        best = k;
        best_q = q;
      }
    }
    s.weights[best] += 1.0;
    far += best_q > 16.0;
  }
  for (double& v : s.cov) v /= double(n - 1 > 0 ? n - 1 : 1);
  s.cov[2] = s.cov[1];
  for (double& w : s.weights) w /= double(n);
  s.far_fraction = double(far) / double(n);
  return s;
}

}  // namespace kexue_demo
