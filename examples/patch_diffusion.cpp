// SPDX-License-Identifier: MIT
// Su's patch-diffusion denoiser (patchify, a Pre-Norm GAU stack with 2-D RoPE over the patch grid, unpatchify;
// posts 9984 and 9119) inside a DDPM sampling loop with his Keras-DDPM settings: the proportional schedule
// beta_t = 0.02 t / T, sigma_t^2 = beta_t, no clipping inside the loop, noise at the last step too. The model
// is examples/models/patch_denoiser.hpp with freshly initialised weights (not trained: the samples are noise
// shaped by an untrained network), so the program prints how the sample statistics evolve over the steps, and
// that drawing the noise inside ddpm_step (Philox, no buffer) gives the same bits as an explicit noise buffer.
#include <kexue/kexue.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

#include "models/patch_denoiser.hpp"

namespace {

void stats(const char* what, const kexue::Matrix<float>& x) {
  const double mean = x.mean();
  const double sd = std::sqrt((x.array() - float(mean)).square().mean());
  std::printf("%-28s mean %+.4f  std %.4f  min %+.4f  max %+.4f\n", what, mean, sd, double(x.minCoeff()),
              double(x.maxCoeff()));
}

}  // namespace

int main() {
  kexue_models::PatchDenoiserConfig config;  // 16 x 16 x 3 images in 4 x 4 patches
  config.hidden = 64;
  config.units = 128;
  config.key_size = 32;
  config.layers = 4;
  kexue::PhiloxGenerator init(/*seed=*/9984);
  const auto weights = kexue_models::PatchDenoiserWeights<float>::random(config, init);
  kexue_models::PatchDenoiser<float> model(weights);

  const kexue::DdpmSchedule schedule(config.timesteps, kexue::BetaSchedule::Proportional);
  const std::vector<kexue::Index> timesteps = schedule.timesteps(10);  // 900, 800, ..., 0
  const kexue::Index batch = 4;
  kexue::Matrix<float> x(batch * config.height, config.width * config.channels);

  kexue::PhiloxGenerator gen(/*seed=*/9119);
  gen.normal(x);  // x_T ~ N(0, I)
  kexue::Matrix<float> x_explicit = x;
  stats("x_T", x);
  kexue::DdpmStepOptions options = model.step_options();
  kexue::Matrix<float> eps;
  for (std::size_t i = 0; i < timesteps.size(); ++i) {  // the loop of PatchDenoiser::sample, printed
    model.predict(x, timesteps[i], eps);
    options.prev_t = kexue::previous_timestep(timesteps, i);
    kexue::ddpm_step(schedule, eps, timesteps[i], x, gen, x, options);
    char label[64];
    std::snprintf(label, sizeof label, "after t = %td", timesteps[i]);
    stats(label, x);
  }
  x = x.cwiseMax(-1.f).cwiseMin(1.f);
  stats("sample (clipped to [-1, 1])", x);
  std::printf("(untrained: eps(x_t, t) is not the noise in x_t, so x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) "
              "and the sample grow; a trained network keeps them near [-1, 1])\n");

  // The same loop with the noise in a buffer, from a generator at the same stream position.
  kexue::PhiloxGenerator gen2(9119, x.size());
  model.sample(schedule, timesteps, x_explicit, [&](kexue::Matrix<float>& z) { gen2.normal(z); });
  const bool same = x == x_explicit;
  std::printf("%td images of %td x %td x %td, %td patches of %td x %td each, %td GAU layers, %zu steps of T = %td, "
              "SIMD %s\nexplicit noise buffer gives the same bits: %s\n", batch, config.height, config.width,
              config.channels, config.patches(), config.patch, config.patch, config.layers, timesteps.size(),
              config.timesteps, kexue::simd_arch(), same ? "yes" : "NO");
  return same ? 0 : 1;
}
