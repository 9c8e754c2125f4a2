// SPDX-License-Identifier: MIT
// The main demo: sample a 2-D Gaussian mixture with DDPM (1000 steps, diffusers' DDPMScheduler rule) using the
// mixture's exact noise predictor instead of a network, then compare the samples with the true mixture and
// draw them over it in ddpm_mixture.svg (written to the working directory).

#include <kexue/ddpm.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>

#include "ddpm_mixture.hpp"

namespace {

// Writes the samples as dots over the true mixture (1-, 2- and 3-sigma ellipses of each component).
void write_svg(const std::string& path, const std::vector<kexue_demo::Component>& mix, const kexue::Matrix<float>& x) {
  const double lo = -4.5, hi = 4.5, size = 640, margin = 20;
  auto sx = [&](double v) { return margin + (v - lo) / (hi - lo) * (size - 2 * margin); };
  auto sy = [&](double v) { return size - margin - (v - lo) / (hi - lo) * (size - 2 * margin); };
  std::ofstream out(path);
  out << "<svg xmlns='http://www.w3.org/2000/svg' width='" << size << "' height='" << size + 30 << "'>\n"
      << "<rect width='100%' height='100%' fill='white'/>\n"
      << "<rect x='" << margin << "' y='" << margin << "' width='" << size - 2 * margin << "' height='"
      << size - 2 * margin << "' fill='none' stroke='#999'/>\n"
      << "<line x1='" << sx(0) << "' y1='" << sy(lo) << "' x2='" << sx(0) << "' y2='" << sy(hi)
      << "' stroke='#ddd'/>\n"
      << "<line x1='" << sx(lo) << "' y1='" << sy(0) << "' x2='" << sx(hi) << "' y2='" << sy(0)
      << "' stroke='#ddd'/>\n";
  const kexue::Index shown = std::min<kexue::Index>(x.rows(), 4000);
  for (kexue::Index i = 0; i < shown; ++i)
    out << "<circle cx='" << sx(x(i, 0)) << "' cy='" << sy(x(i, 1)) << "' r='1.3' fill='#1f77b4' fill-opacity='0.45'/>\n";
  for (const auto& c : mix) {
    // Principal axes of the covariance.
    const double a = c.cov[0], b = c.cov[1], d = c.cov[2];
    const double tr = a + d, disc = std::sqrt((a - d) * (a - d) / 4 + b * b);
    const double l1 = tr / 2 + disc, l2 = tr / 2 - disc;
    const double angle = std::atan2(l1 - a, b == 0 ? 1e-300 : b) * 180 / 3.14159265358979;
    const double deg = b == 0 ? (a >= d ? 0.0 : 90.0) : angle;
    const double scale = (size - 2 * margin) / (hi - lo);
    for (int k = 1; k <= 3; ++k)
      out << "<ellipse cx='" << sx(c.mean[0]) << "' cy='" << sy(c.mean[1]) << "' rx='" << k * std::sqrt(l1) * scale
          << "' ry='" << k * std::sqrt(l2) * scale << "' transform='rotate(" << -deg << ' ' << sx(c.mean[0]) << ' '
          << sy(c.mean[1]) << ")' fill='none' stroke='#d62728' stroke-width='1.2' stroke-opacity='"
          << 1.0 - 0.25 * k << "'/>\n";
  }
  out << "<text x='" << margin << "' y='" << size + 12
      << "' font-family='sans-serif' font-size='12'>kexue DDPM, 1000 steps: " << shown
      << " samples (blue), true 1/2/3-sigma ellipses (red)</text>\n</svg>\n";
}

}  // namespace

int main() {
  const auto mixture = kexue_demo::default_mixture();
  kexue_demo::SamplerConfig cfg;
  cfg.samples = 10000;
  std::printf("DDPM on a 2-D Gaussian mixture (%zu modes), %ld samples, T = %ld, linear betas 1e-4..0.02,\n"
              "epsilon prediction from the exact noised-mixture score, fixed_small variance, Philox noise (%s)\n",
              mixture.size(), static_cast<long>(cfg.samples), static_cast<long>(cfg.num_train_timesteps),
              kexue::simd_arch());
  const auto t0 = std::chrono::steady_clock::now();
  // Progress on stderr: a redrawn bar on a terminal, one line per 10% in a log or a pipe.
  std::fflush(stdout);
  kexue_demo::ProgressBar progress(stderr, kexue_demo::is_terminal(stderr));
  const auto samples = kexue_demo::sample_ddpm(mixture, cfg, std::ref(progress));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  done in %.2f s\n\n", secs);

  const auto st = kexue_demo::sample_statistics(mixture, samples);
  const auto truth = kexue_demo::mixture_statistics(mixture);
  std::printf("  %-14s %10s %10s\n", "statistic", "samples", "true");
  std::printf("  %-14s %10.3f %10.3f\n", "mean x", st.mean[0], truth.mean[0]);
  std::printf("  %-14s %10.3f %10.3f\n", "mean y", st.mean[1], truth.mean[1]);
  std::printf("  %-14s %10.3f %10.3f\n", "cov xx", st.cov[0], truth.cov[0]);
  std::printf("  %-14s %10.3f %10.3f\n", "cov xy", st.cov[1], truth.cov[1]);
  std::printf("  %-14s %10.3f %10.3f\n", "cov yy", st.cov[3], truth.cov[3]);
  for (std::size_t k = 0; k < mixture.size(); ++k) {
    const std::string name = "weight mode " + std::to_string(k);
    std::printf("  %-14s %10.3f %10.3f   (mean %+.1f, %+.1f)\n", name.c_str(), st.weights[k], mixture[k].weight,
                mixture[k].mean[0], mixture[k].mean[1]);
  }
  std::printf("  %-14s %10.4f %10.4f   (beyond 4 sigma of every mode)\n", "off-mode frac", st.far_fraction,
              std::exp(-8.0));
  write_svg("ddpm_mixture.svg", mixture, samples);
  std::printf("\n  wrote ddpm_mixture.svg\n");
  return 0;
}
