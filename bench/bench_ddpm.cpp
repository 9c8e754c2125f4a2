// SPDX-License-Identifier: MIT
// One DDPM reverse step (diffusers' defaults: epsilon prediction, fixed_small, clip to [-1, 1]) on 4x64x64 and
// 3x256x256 fp32 tensors: fused with Philox noise, with a noise buffer from either generator, without noise,
// and a naive baseline (the Eigen-array formulation a user would write, with std::normal_distribution noise).
// Args: {elements, threads}.
#include <cmath>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "kexue/ddpm.hpp"
#include "kexue/random.hpp"

using namespace kexue_bench;

namespace {

constexpr Index kSmall = 4 * 64 * 64, kLarge = 3 * 256 * 256;
constexpr Index kT = 500;

struct Data {
  kexue::Vector<float> m, x, z, out;
  explicit Data(Index n) : m(n), x(n), z(n), out(n) {
    kexue::PhiloxGenerator g(1);
    g.normal(m);
    g.normal(x);
    g.normal(z);
    out.setZero();
  }
};

const kexue::DdpmSchedule& schedule() {
  static const kexue::DdpmSchedule s;
  return s;
}

// Fused: the noise comes from Philox inside the step (reads m, x; writes out).
void BM_ddpm_step_philox(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  Data d(n);
  kexue::PhiloxGenerator gen(7);
  for (auto _ : state) {
    kexue::ddpm_step(schedule(), d.m, kT, d.x, gen, d.out);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 3.0 * double(n) * sizeof(float));
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
}
BENCHMARK(BM_ddpm_step_philox)->Args({kSmall, 1})->Args({kLarge, 1})->Args({kLarge, 2})->UseRealTime();

// Philox into a buffer, then the step with that buffer.
void BM_ddpm_step_philox_buffer(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  Data d(n);
  kexue::PhiloxGenerator gen(7);
  for (auto _ : state) {
    gen.normal(d.z);
    kexue::ddpm_step(schedule(), d.m, kT, d.x, d.z, d.out);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 5.0 * double(n) * sizeof(float));
}
BENCHMARK(BM_ddpm_step_philox_buffer)->Args({kSmall, 1})->Args({kLarge, 1})->UseRealTime();

// torch.randn-compatible noise (serial mt19937), then the step: what reproducing a PyTorch run costs.
void BM_ddpm_step_torchgen(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  Data d(n);
  kexue::TorchGenerator gen(7);
  for (auto _ : state) {
    gen.normal(d.z);
    kexue::ddpm_step(schedule(), d.m, kT, d.x, d.z, d.out);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 5.0 * double(n) * sizeof(float));
}
BENCHMARK(BM_ddpm_step_torchgen)->Args({kSmall, 1})->Args({kLarge, 1})->UseRealTime();

// The step without noise (prev_t = -1: the final step): reads m, x, writes out; the bandwidth row.
void BM_ddpm_step_nonoise(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  Data d(n);
  kexue::DdpmStepOptions o;
  o.prev_t = -1;
  for (auto _ : state) {
    kexue::ddpm_step(schedule(), d.m, kT, d.x, d.z, d.out, o);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 3.0 * double(n) * sizeof(float));
}
BENCHMARK(BM_ddpm_step_nonoise)
    ->Args({kSmall, 1})
    ->Args({kLarge, 1})
    ->Args({kLarge, 2})
    ->Args({Index(1) << 23, 1})  // 96 MiB streamed: DRAM, comparable with the triad
    ->UseRealTime();

// With a noise buffer (reads m, x, z; writes out).
void BM_ddpm_step_buffer(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  Data d(n);
  for (auto _ : state) {
    kexue::ddpm_step(schedule(), d.m, kT, d.x, d.z, d.out);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 4.0 * double(n) * sizeof(float));
}
BENCHMARK(BM_ddpm_step_buffer)->Args({kSmall, 1})->Args({kLarge, 1})->UseRealTime();

// The same step with ScheduleArithmetic::DiffusersFloat32 (diffusers' operation order: a division and every
// product rounded on its own instead of the fused form). Compare with BM_ddpm_step_buffer in the same run.
void BM_ddpm_step_buffer_diffusers(benchmark::State& state) {
  static const kexue::DdpmSchedule s(1000, kexue::BetaSchedule::Linear, 1e-4, 0.02,
                                     kexue::ScheduleArithmetic::DiffusersFloat32);
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  Data d(n);
  for (auto _ : state) {
    kexue::ddpm_step(s, d.m, kT, d.x, d.z, d.out);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 4.0 * double(n) * sizeof(float));
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
}
BENCHMARK(BM_ddpm_step_buffer_diffusers)->Args({kSmall, 1})->Args({kLarge, 1})->UseRealTime();

// Dynamic thresholding (exact quantile of |x0_hat| by radix selection, then the clipped step): reads m, x
// four times (three selection passes and the step) and writes out.
void BM_ddpm_step_threshold(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  Data d(n);
  kexue::DdpmStepOptions o;
  o.thresholding = true;
  o.sample_max_value = 2.5;
  for (auto _ : state) {
    kexue::ddpm_step(schedule(), d.m, kT, d.x, d.z, d.out, o);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 4.0 * double(n) * sizeof(float));
}
BENCHMARK(BM_ddpm_step_threshold)->Args({kSmall, 1})->Args({kLarge, 1})->UseRealTime();

// Naive baseline: diffusers' formulas as Eigen array expressions with per-call temporaries, noise from
// std::normal_distribution over mt19937.
void naive_step(const kexue::Vector<float>& m, const kexue::Vector<float>& x, kexue::Vector<float>& z,
                kexue::Vector<float>& out, std::mt19937& rng, bool noise) {
  const auto& s = schedule();
  const double ab = s.alpha_bar(kT), ab_prev = noise ? s.alpha_bar(kT - 1) : 1.0;
  const double cur_alpha = ab / ab_prev, cur_beta = 1 - cur_alpha;
  const float c0 = float(std::sqrt(ab_prev) * cur_beta / (1 - ab)), c1 = float(std::sqrt(cur_alpha) * (1 - ab_prev) / (1 - ab));
  const kexue::Vector<float> x0 =
      ((x.array() - float(std::sqrt(1 - ab)) * m.array()) / float(std::sqrt(ab))).cwiseMax(-1.0f).cwiseMin(1.0f);
  out = c0 * x0.array() + c1 * x.array();
  if (noise) {
    std::normal_distribution<float> normal;
    for (Index i = 0; i < z.size(); ++i) z[i] = normal(rng);
    out += float(std::sqrt(s.variance(kT))) * z;
  }
}

void BM_ddpm_step_naive(benchmark::State& state) {
  const Index n = state.range(0);
  Data d(n);
  std::mt19937 rng(7);
  for (auto _ : state) {
    naive_step(d.m, d.x, d.z, d.out, rng, true);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 5.0 * double(n) * sizeof(float));
}
BENCHMARK(BM_ddpm_step_naive)->Args({kSmall, 1})->Args({kLarge, 1})->UseRealTime();

void BM_ddpm_step_nonoise_naive(benchmark::State& state) {
  const Index n = state.range(0);
  Data d(n);
  std::mt19937 rng(7);
  for (auto _ : state) {
    naive_step(d.m, d.x, d.z, d.out, rng, false);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 3.0 * double(n) * sizeof(float));
}
BENCHMARK(BM_ddpm_step_nonoise_naive)->Args({kSmall, 1})->Args({kLarge, 1})->UseRealTime();

// Forward noising (training): reads x0, noise; writes out.
void BM_ddpm_add_noise(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  Data d(n);
  for (auto _ : state) {
    kexue::ddpm_add_noise(schedule(), d.x, d.z, kT, d.out);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 3.0 * double(n) * sizeof(float));
}
BENCHMARK(BM_ddpm_add_noise)->Args({kSmall, 1})->Args({kLarge, 1})->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
