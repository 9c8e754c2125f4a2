// SPDX-License-Identifier: MIT
// Differential fuzzing of the DDPM kernels (ddpm.hpp) against the scalar reference (tests/reference/
// ddpm_reference.hpp, diffusers' DDPMScheduler.step line by line): every schedule, prediction, variance, clipping
// and clip range, skipped steps (prev_t), the last step (prev_t = -1, no noise), in-place outputs, the batched
// step with a timestep per row, the Philox-fused step, ddpm_add_noise and ddpm_velocity; sizes across lanes
// and the parallel chunk. Asserts kexue::Error exactly for invalid t / prev_t / sizes / clip range (out
// untouched), finite output wherever the reference is finite, and |got - ref| <= 16 eps(T) (|c0| (|ax x| +
// |am m|) + |c1 x| + |std z| + |ref|) per element (each coefficient rounded once to T, one rounding per term).
// Both ScheduleArithmetic modes: under DiffusersFloat32 (a bit of the schedule byte) the single step, with
// dynamic thresholding too, add_noise and velocity must equal the scalar diffusers-order reference bit for bit
// (NaN where it is NaN), with the same error contract.
// Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_ddpm -max_total_time=600 -max_len=4096
#include <optional>

#include "fuzz_input.hpp"
#include "kexue/ddpm.hpp"
#include "reference/ddpm_reference.hpp"

using namespace kexue_fuzz;

namespace {

kexue::DdpmSchedule random_schedule(FuzzInput& in) {
  const Index T = in.range(1, 300);
  const std::uint8_t b = in.byte();
  // Bit 7 picks the arithmetic, b % 5 the schedule as before (0 and 4 are both Linear).
  const auto a = (b & 0x80) ? kexue::ScheduleArithmetic::DiffusersFloat32 : kexue::ScheduleArithmetic::Exact;
  switch ((b & 0x7f) % 5) {
    case 1: return kexue::DdpmSchedule(T, kexue::BetaSchedule::ScaledLinear, 0.00085, 0.012, a);
    case 2: return kexue::DdpmSchedule(T, kexue::BetaSchedule::Cosine, 1e-4, 0.02, a);
    case 3: return kexue::DdpmSchedule(T, kexue::BetaSchedule::Proportional, 1e-4, 0.02, a);
    default: return kexue::DdpmSchedule(T, kexue::BetaSchedule::Linear, 1e-4, T == 1 ? 1e-4 : 0.02, a);
  }
}

bool diffusers_mode(const kexue::DdpmSchedule& s) {
  return s.arithmetic() == kexue::ScheduleArithmetic::DiffusersFloat32;
}

// Bitwise equality, any NaN matching any NaN.
template <class T>
void expect_same(const T* got, const std::vector<T>& want, const char* what) {
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i]) && std::isnan(got[i])) continue;
    expect(std::memcmp(&got[i], &want[i], sizeof(T)) == 0, what, double(got[i]), double(want[i]));
  }
}

template <class T>
void compare(const kexue::DdpmStepCoefficients& k, const std::vector<double>& want, const std::vector<T>& m,
             const std::vector<T>& x, const std::vector<T>* z, const T* got, bool moderate) {
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double zi = z && k.noise_std != 0 ? double((*z)[i]) : 0.0;
    const double mag = std::abs(k.c0) * (std::abs(k.ax * double(x[i])) + std::abs(k.am * double(m[i]))) +
                       std::abs(k.c1 * double(x[i])) + std::abs(k.noise_std * zi) + std::abs(want[i]);
    if (!std::isfinite(mag) || mag > 1e-3 * double(std::numeric_limits<T>::max())) continue;
    expect_near(double(got[i]), want[i], moderate ? 16 * eps_of<T>() * mag + tiny<T>() : HUGE_VAL, "ddpm_step vs reference");
  }
}

template <class T>
void fuzz_step(FuzzInput& in) {
  const kexue::DdpmSchedule sched = random_schedule(in);
  const Index n = in.size(200);
  const bool special = in.chance(64);
  kexue::DdpmStepOptions o;
  o.prediction = static_cast<kexue::Prediction>(in.byte() % 3);
  o.variance = in.flag() ? kexue::Variance::FixedLarge : kexue::Variance::FixedSmall;
  o.clip_sample = in.flag();
  o.clip_range = in.chance(8) ? -1.0 : double(in.range(1, 40)) / 8;
  if (diffusers_mode(sched) && in.chance(64)) {  // thresholding, in the float32 mode only (Exact keeps its bytes)
    o.thresholding = true;
    o.dynamic_thresholding_ratio = in.chance(8) ? 1.5 : double(in.range(0, 1000)) / 1000;
    o.sample_max_value = in.chance(8) ? 0.5 : 1 + double(in.range(0, 40)) / 8;
  }
  const Index t = in.range(-1, sched.size());
  if (in.flag()) o.prev_t = in.range(-2, std::max<Index>(t, 0));
  const Index prev = o.prev_t.value_or(t - 1);
  bool invalid = t < 0 || t >= sched.size() || prev < -1 || prev >= t ||
                 (o.clip_sample && !o.thresholding && o.clip_range <= 0) ||
                 (o.thresholding && (o.dynamic_thresholding_ratio > 1 || o.sample_max_value < 1));
  const bool uses_noise = !invalid && prev >= 0;
  const Index zn = in.chance(8) ? n + 1 : (!uses_noise && in.flag() ? 0 : n);
  invalid = invalid || (zn != n && !(zn == 0 && !uses_noise));
  std::vector<T> m = in.values<T>(n, special), x = in.values<T>(n, special), z = in.values<T>(zn, special);
  const int where = in.byte() % 3;  // 0: separate out, 1: out = sample, 2: out = model_output
  std::vector<T> out(static_cast<std::size_t>(n), T(-12345.5));
  const std::vector<T> m0 = m, x0 = x;
  using MapC = Eigen::Map<const kexue::Vector<T>>;
  using Map = Eigen::Map<kexue::Vector<T>>;
  std::vector<T>& target = where == 1 ? x : where == 2 ? m : out;
  auto call = [&] {
    kexue::ddpm_step(sched, MapC(m.data(), n), t, MapC(x.data(), n), MapC(z.data(), zn), Map(target.data(), n), o);
  };
  if (!run_checked(invalid, target, call, "ddpm_step error contract")) return;
  const auto k = kexue::ddpm_step_coefficients(sched, t, o);
  if (diffusers_mode(sched)) {
    const double th[2] = {o.dynamic_thresholding_ratio, o.sample_max_value};
    const std::vector<T> zz = zn == n ? z : std::vector<T>(static_cast<std::size_t>(n), T(0));
    const auto want = kexue_ref::diffusers_step<T>(sched, m0, t, x0, zz, o.prediction, o.variance, o.clip_sample,
                                                   o.clip_range, prev, o.thresholding ? th : nullptr);
    expect_same(target.data(), want, "DiffusersFloat32 ddpm_step vs the diffusers-order reference");
  } else {
    std::vector<double> md(m0.begin(), m0.end()), xd(x0.begin(), x0.end()), zd(z.begin(), z.end());
    if (zd.size() != md.size()) zd.assign(md.size(), 0.0);
    const auto want = kexue_ref::ddpm_step(sched.alphas_cumprod(), md, t, xd, zd, o.prediction, o.variance,
                                           o.clip_sample, o.clip_range, prev);
    compare(k, want, m0, x0, &z, target.data(), !special);
  }

  // The Philox-fused step equals drawing the noise first, bit for bit, and advances the stream by n.
  if (uses_noise) {
    const std::uint64_t seed = in.range(0, 1000), offset = std::uint64_t(in.range(0, 100));
    kexue::PhiloxGenerator g1(seed, offset), g2(seed, offset);
    std::vector<T> noise(static_cast<std::size_t>(n)), a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
    g1.normal(Map(noise.data(), n));
    kexue::ddpm_step(sched, MapC(m0.data(), n), t, MapC(x0.data(), n), MapC(noise.data(), n), Map(a.data(), n), o);
    kexue::ddpm_step(sched, MapC(m0.data(), n), t, MapC(x0.data(), n), g2, Map(b.data(), n), o);
    expect(n == 0 || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0,
           "Philox-fused ddpm_step differs from normal() + ddpm_step");
    expect(g1.offset() == g2.offset(), "Philox-fused ddpm_step advanced the stream differently");
  }
}

template <class T>
void fuzz_batched(FuzzInput& in) {
  const kexue::DdpmSchedule sched = random_schedule(in);
  const Index rows = in.range(0, 5), cols = in.size(40);
  kexue::DdpmStepOptions o;
  o.prediction = static_cast<kexue::Prediction>(in.byte() % 3);
  o.variance = in.flag() ? kexue::Variance::FixedLarge : kexue::Variance::FixedSmall;
  o.clip_sample = in.flag();
  std::vector<Index> t(static_cast<std::size_t>(rows)), prev;
  bool invalid = false;
  for (auto& x : t) {
    x = in.range(-1, sched.size());
    invalid = invalid || x < 0 || x >= sched.size();
  }
  if (in.flag())
    for (Index r = 0; r < rows; ++r) {
      prev.push_back(in.range(-2, std::max<Index>(t[std::size_t(r)], 0)));
      invalid = invalid || prev.back() < -1 || prev.back() >= t[std::size_t(r)];
    }
  Strided<T> m = matrix<T>(in, rows, cols, false), x = matrix<T>(in, rows, cols, false),
             z = matrix<T>(in, rows, cols, false);
  Strided<T> out = sentinel<T>(rows, cols, in.range(0, 3));
  if (!run_checked(invalid, out.buf, [&] { kexue::ddpm_step(sched, m.cmap(), t, x.cmap(), z.cmap(), out.map(), o, prev); },
                   "batched ddpm_step error contract"))
    return;
  expect(out.padding_intact(), "batched ddpm_step wrote into the row padding");
  for (Index r = 0; r < rows; ++r) {
    kexue::DdpmStepOptions ro = o;
    ro.prev_t = prev.empty() ? t[std::size_t(r)] - 1 : prev[std::size_t(r)];
    std::vector<T> one(static_cast<std::size_t>(cols));
    kexue::ddpm_step(sched, m.cmap().row(r), t[std::size_t(r)], x.cmap().row(r), z.cmap().row(r),
                     Eigen::Map<kexue::Vector<T>>(one.data(), cols), ro);
    expect(cols == 0 || std::memcmp(one.data(), out.row(r), one.size() * sizeof(T)) == 0,
           "batched ddpm_step row differs from the single step");
  }
}

template <class T>
void fuzz_noise(FuzzInput& in) {
  const kexue::DdpmSchedule sched = random_schedule(in);
  const Index n = in.size(200), t = in.range(-1, sched.size());
  const bool special = in.chance(64), velocity = in.flag();
  const bool invalid = t < 0 || t >= sched.size();
  const std::vector<T> x = in.values<T>(n, special), z = in.values<T>(n, special);
  std::vector<T> out(static_cast<std::size_t>(n), T(-12345.5));
  using MapC = Eigen::Map<const kexue::Vector<T>>;
  using Map = Eigen::Map<kexue::Vector<T>>;
  auto call = [&] {
    if (velocity)
      kexue::ddpm_velocity(sched, MapC(x.data(), n), MapC(z.data(), n), t, Map(out.data(), n));
    else
      kexue::ddpm_add_noise(sched, MapC(x.data(), n), MapC(z.data(), n), t, Map(out.data(), n));
  };
  if (!run_checked(invalid, out, call, "ddpm_add_noise / ddpm_velocity error contract")) return;
  if (diffusers_mode(sched)) {
    expect_same(out.data(), kexue_ref::diffusers_mix<T>(sched, x, z, t, velocity),
                "DiffusersFloat32 ddpm_add_noise / ddpm_velocity vs the diffusers-order reference");
    return;
  }
  const double a = std::sqrt(sched.alpha_bar(t)), b = std::sqrt(1 - sched.alpha_bar(t));
  for (Index i = 0; i < n; ++i) {
    const double xi = double(x[std::size_t(i)]), zi = double(z[std::size_t(i)]);
    const double want = velocity ? a * zi - b * xi : a * xi + b * zi;
    const double mag = velocity ? std::abs(a * zi) + std::abs(b * xi) : std::abs(a * xi) + std::abs(b * zi);
    if (mag > 1e-3 * double(std::numeric_limits<T>::max())) continue;
    expect_near(double(out[std::size_t(i)]), want, 8 * eps_of<T>() * mag + tiny<T>(), "ddpm_add_noise / ddpm_velocity");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const bool single = in.flag();
  switch (in.byte() % 4) {
    case 0: single ? fuzz_batched<float>(in) : fuzz_batched<double>(in); break;
    case 1: single ? fuzz_noise<float>(in) : fuzz_noise<double>(in); break;
    default: single ? fuzz_step<float>(in) : fuzz_step<double>(in); break;
  }
  return 0;
}
