// SPDX-License-Identifier: MIT
// DDPM: schedules and timestep lists against the float64 PyTorch reference (SPEC 6), add_noise / velocity /
// reverse step against the diffusers rule (reference data and the scalar reference), the Algorithm-2
// identity, batched and fused forms, thread-count independence, bad input, and the mixture sampler demo.

#include <kexue/ddpm.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../examples/ddpm_mixture.hpp"
#include "reference/ddpm_reference.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::BetaSchedule;
using kexue::DdpmSchedule;
using kexue::DdpmStepOptions;
using kexue::Index;
using kexue::Prediction;
using kexue::ScheduleArithmetic;
using kexue::Variance;
using kexue_test::RefData;

namespace {

const RefData& ref() {
  static const RefData r("ddpm");
  return r;
}

const RefData& ref_diffusers() {
  static const RefData r("ddpm_diffusers");
  return r;
}

const char* const kKinds[] = {"linear", "scaled_linear", "cosine", "proportional"};
const BetaSchedule kSchedules[] = {BetaSchedule::Linear, BetaSchedule::ScaledLinear, BetaSchedule::Cosine,
                                   BetaSchedule::Proportional};

// max |a - b| / max(|b|, 1): the error relative to the value's scale (c eps max(|ref|, 1)).
template <class A>
double max_rel_err(const A& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    const double x = static_cast<double>(a[i]);
    if (!std::isfinite(x)) return INFINITY;
    m = std::max(m, std::abs(x - b[i]) / std::max(std::abs(b[i]), 1.0));
  }
  return m;
}

template <class T>
std::vector<double> to_double(const T* p, Index n) {
  return std::vector<double>(p, p + n);
}

template <class T>
constexpr double tol() {
  return std::is_same<T, float>::value ? 4e-6 : 1e-13;
}

}  // namespace

TEST_CASE("DdpmSchedule: betas, alpha_bar and posterior variance match the float64 reference", "[ddpm][schedule]") {
  for (int k = 0; k < 4; ++k) {
    INFO(kKinds[k]);
    const DdpmSchedule s(1000, kSchedules[k]);
    REQUIRE(s.size() == 1000);
    const std::string base = std::string("schedule/") + kKinds[k] + "/";
    const auto& betas = ref().values(base + "betas");
    const auto& acp = ref().values(base + "alphas_cumprod");
    const auto& var = ref().values(base + "variance");
    double eb = 0, ea = 0, ev = 0;
    for (Index t = 0; t < 1000; ++t) {
      eb = std::max(eb, std::abs(s.beta(t) - betas[std::size_t(t)]) / betas[std::size_t(t)]);
      ea = std::max(ea, std::abs(s.alpha_bar(t) - acp[std::size_t(t)]) / acp[std::size_t(t)]);
      ev = std::max(ev, std::abs(s.variance(t) - var[std::size_t(t)]) / var[std::size_t(t)]);
      REQUIRE(s.alpha(t) == 1.0 - s.beta(t));
    }
    CHECK(eb < 1e-13);
    CHECK(ea < 1e-12);
    // current_beta = 1 - ab_t / ab_prev (diffusers' form) cancels for tiny betas: ~1e-16 / beta_0.
    CHECK(ev < 1e-10);
    CHECK(s.variance(0) == 1e-20);  // beta-tilde_1 = 0, floored
    CHECK(s.alpha_bar(-1) == 1.0);
  }
  const DdpmSchedule small(10, BetaSchedule::ScaledLinear, 0.00085, 0.012);
  CHECK(max_rel_err(small.betas(), ref().values("schedule/scaled_linear_T10/betas")) < 1e-15);
}

TEST_CASE("DdpmSchedule: SPEC 6.1-6.3 derived values", "[ddpm][schedule]") {
  const DdpmSchedule lin;
  CHECK(lin.alpha_bar(999) == Approx(ref().scalar("derived/linear_alpha_bar_T")).epsilon(1e-12));
  CHECK(lin.alpha_bar(999) == Approx(4.0358e-5).epsilon(1e-4));
  CHECK(std::sqrt(lin.alpha_bar(999)) == Approx(0.006353).epsilon(1e-3));
  CHECK(lin.variance(1) == Approx(5.4532e-5).epsilon(1e-4));
  CHECK(lin.variance(999) == Approx(0.0199999835).epsilon(3e-9));
  CHECK(lin.beta(0) == 1e-4);
  CHECK(lin.beta(999) == 0.02);
  const DdpmSchedule cos(1000, BetaSchedule::Cosine);
  CHECK(cos.beta(0) == Approx(4.1284e-5).epsilon(1e-4));
  CHECK(cos.beta(999) == 0.999);
  CHECK(cos.beta(998) < 0.999);  // exactly one value capped
  CHECK(cos.alpha_bar(999) == Approx(2.4288e-9).epsilon(1e-4));
  CHECK(cos.alpha_bar(999) == Approx(ref().scalar("derived/cosine_alpha_bar_T")).epsilon(1e-10));
  const DdpmSchedule su(1000, BetaSchedule::Proportional);
  CHECK(su.beta(0) == Approx(2e-5).epsilon(1e-14));  // not linspace(1e-4, 0.02): beta_1 = 2e-5
  CHECK(su.beta(999) == Approx(0.02).epsilon(1e-15));
  CHECK(std::sqrt(su.alpha_bar(999)) == Approx(0.0064820).epsilon(1e-5));
  CHECK(std::log(std::sqrt(su.alpha_bar(999))) == Approx(-5.0387).epsilon(1e-4));
  // The post's estimate log alpha-bar^Su_T < -0.005 (T + 1).
  CHECK(std::log(std::sqrt(su.alpha_bar(999))) < -0.005 * 1001);
}

TEST_CASE("DdpmSchedule: inference timesteps match diffusers' spacings", "[ddpm][timesteps]") {
  const std::pair<Index, Index> cases[] = {{1000, 1},   {1000, 3},    {1000, 7}, {1000, 50},
                                           {1000, 999}, {1000, 1000}, {10, 3},   {10, 4}};
  const char* names[] = {"leading", "trailing", "linspace"};
  const kexue::TimestepSpacing spacings[] = {kexue::TimestepSpacing::Leading, kexue::TimestepSpacing::Trailing,
                                             kexue::TimestepSpacing::Linspace};
  for (auto [T, k] : cases) {
    const DdpmSchedule s(T);
    for (int sp = 0; sp < 3; ++sp) {
      const std::string name = "timesteps/T" + std::to_string(T) + "_k" + std::to_string(k) + "_" + names[sp];
      INFO(name);
      REQUIRE(ref().has(name));
      const auto got = s.timesteps(k, spacings[sp]);
      const auto& want = ref().values(name);
      REQUIRE(got.size() == want.size());
      for (std::size_t i = 0; i < got.size(); ++i) CHECK(double(got[i]) == want[i]);
    }
  }
  const auto off = DdpmSchedule().timesteps(10, kexue::TimestepSpacing::Leading, 1);
  const auto& want = ref().values("timesteps/T1000_k10_leading_offset1");
  for (std::size_t i = 0; i < off.size(); ++i) CHECK(double(off[i]) == want[i]);
  // prev_t of a skipped step is the next list entry (diffusers PR #2076), -1 after the last.
  const auto ts = DdpmSchedule().timesteps(50);
  CHECK(kexue::previous_timestep(ts, 0) == 960);
  CHECK(kexue::previous_timestep(ts, ts.size() - 1) == -1);
}

TEST_CASE("DdpmSchedule: custom timestep lists and bad input", "[ddpm][errors]") {
  const DdpmSchedule s(100);
  CHECK_NOTHROW(s.check_timesteps({99, 50, 7, 0}));
  CHECK_NOTHROW(s.check_timesteps({42}));
  CHECK_THROWS_AS(s.check_timesteps({50, 60, 0}), kexue::Error);  // not descending
  CHECK_THROWS_AS(s.check_timesteps({50, 50, 0}), kexue::Error);  // repeated
  CHECK_THROWS_AS(s.check_timesteps({100, 50}), kexue::Error);    // outside [0, T)
  CHECK_THROWS_AS(s.check_timesteps({50, -1}), kexue::Error);
  CHECK_THROWS_AS(s.check_timesteps({}), kexue::Error);
  CHECK_THROWS_AS(s.timesteps(0), kexue::Error);
  CHECK_THROWS_AS(s.timesteps(101), kexue::Error);
  CHECK_THROWS_AS(s.timesteps(10, kexue::TimestepSpacing::Leading, 91), kexue::Error);  // 9 * 10 + 91 >= T
  CHECK_THROWS_AS(s.beta(100), kexue::Error);
  CHECK_THROWS_AS(s.alpha_bar(-2), kexue::Error);
  CHECK_THROWS_AS(s.variance(5, 5), kexue::Error);
  CHECK_THROWS_AS(s.variance(5, 7), kexue::Error);
  CHECK_THROWS_AS(s.variance(5, -2), kexue::Error);
  // beta range invalid, in either arithmetic
  for (ScheduleArithmetic a : {ScheduleArithmetic::Exact, ScheduleArithmetic::DiffusersFloat32}) {
    INFO("arithmetic " << int(a));
    CHECK_THROWS_AS(DdpmSchedule(0, BetaSchedule::Linear, 1e-4, 0.02, a), kexue::Error);
    CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Linear, 0.02, 1e-4, a), kexue::Error);
    CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Linear, 0.0, 0.02, a), kexue::Error);
    CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Linear, 1e-4, 1.0, a), kexue::Error);
    CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::ScaledLinear, NAN, 0.02, a), kexue::Error);
    CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Proportional, 0.0, 1.5, a), kexue::Error);
    CHECK_NOTHROW(DdpmSchedule(10, BetaSchedule::Cosine, -5, -5, a));
    kexue_test::throws_with([&] { DdpmSchedule(10, BetaSchedule::Linear, 0.02, 1e-4, a); },
                            "DdpmSchedule: beta range invalid: need 0 < beta_start <= beta_end < 1");
  }
  // Only in float32: a beta so small that 1 - beta rounds to 1 (or so close to 1 that alpha rounds to 0).
  CHECK_NOTHROW(DdpmSchedule(10, BetaSchedule::Linear, 1e-9, 0.02));
  kexue_test::throws_with(
      [] { DdpmSchedule(10, BetaSchedule::Linear, 1e-9, 0.02, ScheduleArithmetic::DiffusersFloat32); },
      "DdpmSchedule: beta range invalid in float32: betas[0]");
  CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Linear, 1e-4, 1 - 1e-9, ScheduleArithmetic::DiffusersFloat32),
                  kexue::Error);
  CHECK_THROWS_AS(DdpmSchedule(0), kexue::Error);
  CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Linear, 0.02, 1e-4), kexue::Error);
  CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Linear, 0.0, 0.02), kexue::Error);
  CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Linear, 1e-4, 1.0), kexue::Error);
  CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::ScaledLinear, NAN, 0.02), kexue::Error);
  CHECK_THROWS_AS(DdpmSchedule(10, BetaSchedule::Proportional, 0.0, 1.5), kexue::Error);
  CHECK_THROWS_AS(DdpmSchedule(std::vector<double>{0.1, 1.0}), kexue::Error);
  CHECK_NOTHROW(DdpmSchedule(10, BetaSchedule::Cosine, -5, -5));  // the cosine schedule ignores the range
  try {
    s.beta(100);
    FAIL("no throw");
  } catch (const kexue::Error& e) {
    CHECK(std::string(e.what()).find("t = 100 is outside the schedule [0, 100)") != std::string::npos);
  }
}

TEMPLATE_TEST_CASE("ddpm_add_noise and ddpm_velocity match the reference", "[ddpm][noise]", float, double) {
  using T = TestType;
  const auto x0 = ref().matrix<T>("noise/x0");
  const auto eps = ref().matrix<T>("noise/eps");
  const std::pair<int, Index> cases[] = {{0, 0}, {0, 500}, {2, 999}, {3, 250}};
  for (auto [k, t] : cases) {
    const DdpmSchedule s(1000, kSchedules[k]);
    const std::string base = std::string("noise/") + kKinds[k] + "_t" + std::to_string(t) + "/";
    INFO(base);
    kexue::Matrix<T> out(x0.rows(), x0.cols());
    kexue::ddpm_add_noise(s, x0, eps, t, out);
    CHECK(max_rel_err(out.data(), ref().values(base + "add_noise")) < tol<T>());
    kexue::ddpm_velocity(s, x0, eps, t, out);
    CHECK(max_rel_err(out.data(), ref().values(base + "velocity")) < tol<T>());
    // In place.
    kexue::Matrix<T> inplace = x0;
    kexue::ddpm_add_noise(s, inplace, eps, t, inplace);
    CHECK(max_rel_err(inplace.data(), ref().values(base + "add_noise")) < tol<T>());
  }
  // Batched: one t per row equals the single call on that row.
  const DdpmSchedule s;
  const std::vector<Index> ts = {0, 500, 999};
  kexue::Matrix<T> batched(x0.rows(), x0.cols()), single(1, x0.cols());
  kexue::ddpm_add_noise(s, x0, eps, ts, batched);
  for (Index r = 0; r < 3; ++r) {
    kexue::ddpm_add_noise(s, x0.row(r), eps.row(r), ts[std::size_t(r)], single);
    CHECK(batched.row(r) == single);
  }
}

TEMPLATE_TEST_CASE("ddpm_step matches diffusers' rule for every prediction x variance x clip", "[ddpm][step]", float,
                   double) {
  using T = TestType;
  const auto m = ref().matrix<T>("step/model_output");
  const auto x = ref().matrix<T>("step/sample");
  const auto z = ref().matrix<T>("step/noise");
  const DdpmSchedule schedules[] = {DdpmSchedule(1000, kSchedules[0]), DdpmSchedule(1000, kSchedules[1]),
                                    DdpmSchedule(1000, kSchedules[2]), DdpmSchedule(1000, kSchedules[3])};
  const Prediction preds[] = {Prediction::Epsilon, Prediction::Sample, Prediction::Velocity};
  int count = 0;
  for (int i = 0; ref().has("step/case" + std::to_string(i) + "/out"); ++i, ++count) {
    const auto& c = ref().values("step/case" + std::to_string(i) + "/config");
    DdpmStepOptions o;
    o.prediction = preds[int(c[0])];
    o.variance = c[1] == 0 ? Variance::FixedSmall : Variance::FixedLarge;
    o.clip_sample = c[2] != 0;
    o.clip_range = c[3];
    const auto& s = schedules[int(c[4])];
    const Index t = Index(c[5]), prev = Index(c[6]);
    if (prev != t - 1 || i % 2 == 0) o.prev_t = prev;  // also exercise the default prev_t = t - 1
    INFO("case " << i << " t " << t << " prev " << prev);
    kexue::Matrix<T> out(x.rows(), x.cols());
    kexue::ddpm_step(s, m, t, x, z, out, o);
    const auto& want = ref().values("step/case" + std::to_string(i) + "/out");
    CHECK(max_rel_err(out.data(), want) < 4 * tol<T>());
    // The scalar double reference agrees with the data.
    const auto r = kexue_ref::ddpm_step(s.alphas_cumprod(), to_double(m.data(), m.size()), t,
                                        to_double(x.data(), x.size()), to_double(z.data(), z.size()), o.prediction,
                                        o.variance, o.clip_sample, o.clip_range, prev);
    CHECK(max_rel_err(r, want) < 1e-13);
  }
  CHECK(count == 72);
}

TEMPLATE_TEST_CASE("ddpm_step with final_step_noise is Su's Keras-DDPM sampler (SPEC 6.3)", "[ddpm][step]", float,
                   double) {
  using T = TestType;
  const auto m = ref().matrix<T>("su/model_output");
  const auto x = ref().matrix<T>("su/sample");
  const auto z = ref().matrix<T>("su/noise");
  const DdpmSchedule s(1000, BetaSchedule::Proportional);  // his alpha_t^2 = 1 - 0.02 (t + 1) / T
  for (Index t : {999, 500, 1, 0}) {
    for (bool small : {false, true}) {
      INFO("t " << t << (small ? " fixed small" : " fixed large"));
      DdpmStepOptions o;
      o.variance = small ? Variance::FixedSmall : Variance::FixedLarge;
      o.clip_sample = false;  // he clips only the final result
      o.final_step_noise = true;
      kexue::Matrix<T> out(x.rows(), x.cols());
      kexue::ddpm_step(s, m, t, x, z, out, o);
      auto want = ref().values("su/t" + std::to_string(t) + (small ? "/small" : "/large"));
      if (t == 0 && small)  // his alternative has sigma_0 = 0; the posterior variance is floored at 1e-20
        for (std::size_t i = 0; i < want.size(); ++i) want[i] += 1e-10 * double(z.data()[i]);
      // His route divides by alpha_t, diffusers' (ours) forms 1 - alpha_bar_prev, which keeps few digits when it
      // is tiny (2e-5 at t = 1): a double bound of 10 ulp / (1 - alpha_bar_prev) covers that.
      const double bound = std::max(4 * tol<T>(), t > 0 ? 1e-15 / (1 - s.alpha_bar(t - 1)) : 0.0);
      CHECK(max_rel_err(out.data(), want) < bound);
      if (t == 0) {
        // The default drops the final noise: the difference is exactly sigma_0 z with sigma_0^2 = beta_0
        // (FixedLarge; his sigma = beta) or the 1e-20 floor (FixedSmall; his alternative gives 0).
        DdpmStepOptions plain = o;
        plain.final_step_noise = false;
        kexue::Matrix<T> no_noise(x.rows(), x.cols());
        kexue::ddpm_step(s, m, t, x, z, no_noise, plain);
        const double sigma = small ? 1e-10 : std::sqrt(s.beta(0));
        double worst = 0;
        for (Index i = 0; i < out.size(); ++i)
          worst = std::max(worst, std::abs(double(out.data()[i]) - double(no_noise.data()[i]) - sigma * double(z.data()[i])));
        CHECK(worst < 8 * tol<T>());
        if (!small) CHECK((out - no_noise).norm() > 0.01);
        // The fused Philox path honours the option too: equal to drawing the noise first.
        kexue::PhiloxGenerator g1(5), g2(5);
        kexue::Matrix<T> fused(x.rows(), x.cols()), drawn(x.rows(), x.cols()), noise(x.rows(), x.cols());
        kexue::ddpm_step(s, m, t, x, g1, fused, o);
        g2.normal(noise);
        kexue::ddpm_step(s, m, t, x, noise, drawn, o);
        CHECK(fused == drawn);
        CHECK(g1.offset() == std::uint64_t(x.size()));
      }
    }
  }
}

TEMPLATE_TEST_CASE("ddpm_step: dynamic thresholding matches diffusers' _threshold_sample", "[ddpm][step][threshold]",
                   float, double) {
  using T = TestType;
  const auto m = ref().matrix<T>("step/model_output");
  const auto x = ref().matrix<T>("step/sample");
  const auto z = ref().matrix<T>("step/noise");
  const DdpmSchedule s;
  int count = 0;
  for (int i = 0; ref().has("threshold/case" + std::to_string(i) + "/config"); ++i, ++count) {
    const auto& c = ref().values("threshold/case" + std::to_string(i) + "/config");
    const Index t = Index(c[0]);
    DdpmStepOptions o;
    o.thresholding = true;
    o.dynamic_thresholding_ratio = c[1];
    o.sample_max_value = c[2];
    o.clip_range = -1;  // ignored when thresholding
    INFO("case " << i << " t " << t << " ratio " << c[1] << " max " << c[2]);
    // Flat: the whole tensor is one sample.
    kexue::Matrix<T> flat(x.rows(), x.cols());
    kexue::ddpm_step(s, m, t, x, z, flat, o);
    CHECK(max_rel_err(flat.data(), ref().values("threshold/case" + std::to_string(i) + "/flat")) < 4 * tol<T>());
    // Batched: each row is a sample.
    kexue::Matrix<T> rows(x.rows(), x.cols());
    kexue::ddpm_step(s, m, std::vector<Index>(std::size_t(x.rows()), t), x, z, rows, o);
    CHECK(max_rel_err(rows.data(), ref().values("threshold/case" + std::to_string(i) + "/rows")) < 4 * tol<T>());
    // The fused Philox step thresholds the same way.
    kexue::PhiloxGenerator g1(3), g2(3);
    kexue::Matrix<T> fused(x.rows(), x.cols()), drawn(x.rows(), x.cols()), noise(x.rows(), x.cols());
    kexue::ddpm_step(s, m, t, x, g1, fused, o);
    g2.normal(noise);
    kexue::ddpm_step(s, m, t, x, noise, drawn, o);
    CHECK(fused == drawn);
  }
  CHECK(count == 18);
  // sample_max_value = 1 (diffusers' default) is a clip to [-1, 1].
  DdpmStepOptions th, clip;
  th.thresholding = true;
  kexue::Matrix<T> a(x.rows(), x.cols()), b(x.rows(), x.cols());
  kexue::ddpm_step(s, m, 999, x, z, a, th);
  kexue::ddpm_step(s, m, 999, x, z, b, clip);
  CHECK(max_rel_err(a.data(), std::vector<double>(b.data(), b.data() + b.size())) < 4 * tol<T>());
}

TEMPLATE_TEST_CASE("Dynamic thresholding's radix selection equals nth_element, NaN and inf included",
                   "[ddpm][threshold]", float, double) {
  using T = TestType;
  std::mt19937 e(5);
  std::normal_distribution<double> nd(0, 3);
  for (Index n : {1, 2, 3, 7, 100, 1000, 4097}) {
    std::vector<T> m(static_cast<std::size_t>(n)), x(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      m[std::size_t(i)] = T(nd(e));
      x[std::size_t(i)] = T(std::round(nd(e) * 4) / 4);  // ties
    }
    if (n > 10) {
      x[3] = std::numeric_limits<T>::infinity();
      x[5] = -std::numeric_limits<T>::infinity();
      x[7] = std::numeric_limits<T>::quiet_NaN();
      x[8] = T(-0.0);
      m[8] = T(0);
    }
    const T ax = T(0.75), am = T(-1.25);
    std::vector<T> v(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) v[std::size_t(i)] = std::abs(kexue::detail::madd(ax, x[std::size_t(i)], am * m[std::size_t(i)]));
    const auto less = [](T p, T q) { return std::isnan(q) ? !std::isnan(p) : p < q; };  // NaN above +inf
    const kexue::detail::AbsX0Selector<T> sel(ax, am, m.data(), x.data(), n);
    Index bad = 0;
    for (Index k = 0; k < n; k += std::max<Index>(1, n / 37)) {
      std::vector<T> w = v;
      std::nth_element(w.begin(), w.begin() + k, w.end(), less);
      const T want = w[std::size_t(k)];
      const auto key = sel.kth(k);
      const T got = kexue::detail::AbsX0Selector<T>::value(key);
      bad += !(got == want || (std::isnan(got) && std::isnan(want)));
      if (k + 1 < n) {
        std::nth_element(w.begin(), w.begin() + k + 1, w.end(), less);
        const T want1 = w[std::size_t(k + 1)];
        const T got1 = kexue::detail::AbsX0Selector<T>::value(sel.next(k, key));
        bad += !(got1 == want1 || (std::isnan(got1) && std::isnan(want1)));
      }
    }
    INFO("n " << n);
    CHECK(bad == 0);
  }
}

TEMPLATE_TEST_CASE("ddpm_step: SIMD vs scalar reference over odd sizes, offsets and NaN guards", "[ddpm][step]",
                   float, double) {
  using T = TestType;
  const Index L = kexue::detail::kLanes<T>;
  const DdpmSchedule s(1000, BetaSchedule::Cosine);
  for (Index n : kexue_test::lane_sizes(L)) {
    for (Index off : {Index(0), Index(1), L / 4}) {
      const auto mv = kexue_test::random_values<T>(n, 1 + std::uint32_t(n), T(-3), T(3));
      const auto xv = kexue_test::random_values<T>(n, 2 + std::uint32_t(n), T(-3), T(3));
      const auto zv = kexue_test::random_values<T>(n, 3 + std::uint32_t(n), T(-3), T(3));
      kexue_test::PaddedBuffer<T> pm(n, off), px(n, off), pz(n, off), po(n, off);
      std::copy(mv.begin(), mv.end(), pm.data());
      std::copy(xv.begin(), xv.end(), px.data());
      std::copy(zv.begin(), zv.end(), pz.data());
      using Map = Eigen::Map<kexue::Vector<T>>;
      for (Prediction p : {Prediction::Epsilon, Prediction::Sample, Prediction::Velocity})
        for (Variance v : {Variance::FixedSmall, Variance::FixedLarge})
          for (bool clip : {false, true})
            for (Index t : {Index(0), Index(3), Index(700)}) {
              INFO("n " << n << " off " << off << " t " << t << " clip " << clip);
              DdpmStepOptions o;
              o.prediction = p;
              o.variance = v;
              o.clip_sample = clip;
              o.clip_range = 1.5;
              kexue::ddpm_step(s, Map(pm.data(), n), t, Map(px.data(), n), Map(pz.data(), n), Map(po.data(), n), o);
              const auto r = kexue_ref::ddpm_step(s.alphas_cumprod(), to_double(mv.data(), n), t,
                                                  to_double(xv.data(), n), to_double(zv.data(), n), p, v, clip, 1.5,
                                                  t - 1);
              // The epsilon route divides by sqrt(ab_t) (1e-4 at t = 999 of cosine): judge relative to the
              // size of the terms, which the float rounding of x0_hat scales.
              CHECK(max_rel_err(po.data(), r) < 8 * tol<T>());
              CHECK(po.guards_intact(n));
            }
    }
  }
}

TEMPLATE_TEST_CASE("ddpm_step (Exact, clip_sample): a NaN x0_hat stays NaN in every lane and in the tail, as "
                   "torch.clamp keeps it", "[ddpm][step]", float, double) {
  using T = TestType;
  const Index L = kexue::detail::kLanes<T>;
  const DdpmSchedule s;
  const Index n = 3 * L + 1;  // whole registers and a scalar tail
  using Map = Eigen::Map<kexue::Vector<T>>;
  for (Index pos = 0; pos < n; ++pos) {
    std::vector<T> m(std::size_t(n), T(0.5)), x(std::size_t(n), T(0.25)), z(std::size_t(n), T(0.1)),
        out(std::size_t(n), T(0));
    m[std::size_t(pos)] = std::numeric_limits<T>::quiet_NaN();
    DdpmStepOptions o;
    o.clip_sample = true;
    kexue::ddpm_step(s, Map(m.data(), n), 10, Map(x.data(), n), Map(z.data(), n), Map(out.data(), n), o);
    INFO("NaN at " << pos << " of " << n);
    for (Index i = 0; i < n; ++i) {
      if (i == pos) {
        CHECK(std::isnan(out[std::size_t(i)]));
      } else {
        CHECK(std::isfinite(out[std::size_t(i)]));
      }
    }
  }
}

TEST_CASE("ddpm_step equals the paper's Algorithm 2 when nothing is clipped (SPEC 6.1 identity)", "[ddpm][step]") {
  const DdpmSchedule s;
  const Index n = 101;
  const auto e = kexue_test::random_values<double>(n, 5, -2, 2);
  const auto x = kexue_test::random_values<double>(n, 6, -2, 2);
  const auto z = kexue_test::random_values<double>(n, 7, -2, 2);
  using Map = Eigen::Map<const kexue::Vector<double>>;
  for (bool large : {false, true})
    for (Index t : {0, 1, 10, 500, 999}) {
      DdpmStepOptions o;
      o.clip_sample = false;
      o.variance = large ? Variance::FixedLarge : Variance::FixedSmall;
      kexue::Vector<double> out(n);
      kexue::ddpm_step(s, Map(e.data(), n), t, Map(x.data(), n), Map(z.data(), n), out, o);
      const auto r = kexue_ref::algorithm2_step(s.betas(), s.alphas_cumprod(), e, t, x, z, large);
      INFO("t " << t << " large " << large);
      CHECK(max_rel_err(out.data(), r) < 1e-12);
    }
}

TEST_CASE("ddpm_step: skipped steps use the effective single-step alpha and beta", "[ddpm][step]") {
  const DdpmSchedule s;
  DdpmStepOptions o;
  o.prev_t = 300;
  const auto k = kexue::ddpm_step_coefficients(s, 600, o);
  CHECK(k.current_alpha == Approx(s.alpha_bar(600) / s.alpha_bar(300)).epsilon(1e-15));
  CHECK(k.current_beta == Approx(1 - s.alpha_bar(600) / s.alpha_bar(300)).epsilon(1e-15));
  CHECK(k.current_beta > 10 * s.beta(600));  // the bug of PR #2076 used beta_t
  CHECK(k.noise_std * k.noise_std == Approx(s.variance(600, 300)).epsilon(1e-14));
  // Chaining two half-steps with x0 predictions is not one step, but a step to prev_t = -1 returns the
  // clipped x0_hat exactly (ab_prev = 1): c0 = 1, c1 = 0, no noise.
  DdpmStepOptions last;
  last.prev_t = -1;
  last.prediction = Prediction::Sample;
  const auto kl = kexue::ddpm_step_coefficients(s, 40, last);
  CHECK(kl.c0 == Approx(1.0).epsilon(1e-15));
  CHECK(kl.c1 == 0.0);
  CHECK(kl.noise_std == 0.0);
  kexue::Vector<float> m = kexue::Vector<float>::LinSpaced(9, -2, 2), x = kexue::Vector<float>::Constant(9, 0.3f),
                       out(9), empty;
  kexue::ddpm_step(s, m, 40, x, empty, out, last);  // noise may be empty when it is not used
  for (Index i = 0; i < 9; ++i) CHECK(out[i] == Approx(std::clamp(m[i], -1.0f, 1.0f)).epsilon(1e-6));
}

TEMPLATE_TEST_CASE("ddpm_step: batched per-sample t equals single steps; in place; threads", "[ddpm][step][batched]",
                   float, double) {
  using T = TestType;
  const DdpmSchedule s(1000, BetaSchedule::ScaledLinear, 0.00085, 0.012);
  const Index B = 5, n = 1000;
  const kexue::Matrix<T> m = kexue::Matrix<T>::Random(B, n), x = kexue::Matrix<T>::Random(B, n),
                         z = kexue::Matrix<T>::Random(B, n);
  const std::vector<Index> t = {999, 0, 500, 37, 1}, prev = {899, -1, 0, 36, -1};
  for (bool explicit_prev : {false, true}) {
    DdpmStepOptions o;
    o.prediction = Prediction::Velocity;
    o.variance = Variance::FixedLarge;
    kexue::Matrix<T> out(B, n);
    kexue::ddpm_step(s, m, t, x, z, out, o, explicit_prev ? prev : std::vector<Index>{});
    for (Index r = 0; r < B; ++r) {
      DdpmStepOptions single = o;
      single.prev_t = explicit_prev ? prev[std::size_t(r)] : t[std::size_t(r)] - 1;
      kexue::Matrix<T> one(1, n);
      kexue::ddpm_step(s, m.row(r), t[std::size_t(r)], x.row(r), z.row(r), one, single);
      CHECK(out.row(r) == one);
    }
    // In place on the sample rows, through a Block of a wider buffer (row stride != n).
    kexue::Matrix<T> wide = kexue::Matrix<T>::Zero(B, n + 7);
    wide.leftCols(n) = x;
    kexue::ddpm_step(s, m, t, wide.leftCols(n), z, wide.leftCols(n), o, explicit_prev ? prev : std::vector<Index>{});
    CHECK(wide.leftCols(n) == out);
  }
  // 1 vs 2 threads: bitwise equal for the flat step, the fused Philox step and the batched step.
  const Index big = 5 * 16384 + 5;  // enough chunks for the parallel path
  const kexue::Vector<T> bm = kexue::Vector<T>::Random(big), bx = kexue::Vector<T>::Random(big),
                         bz = kexue::Vector<T>::Random(big);
  kexue::Vector<T> a1(big), a2(big), f1(big), f2(big);
  auto run = [&](kexue::Vector<T>& a, kexue::Vector<T>& f) {
    kexue::ddpm_step(s, bm, 700, bx, bz, a);
    kexue::PhiloxGenerator g(5, 3);
    kexue::ddpm_step(s, bm, 700, bx, g, f);
    CHECK(g.offset() == 3 + std::uint64_t(big));
  };
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  run(a1, f1);
  omp_set_num_threads(2);
  run(a2, f2);
  omp_set_num_threads(saved);
#else
  run(a1, f1);
  run(a2, f2);
#endif
  CHECK(std::memcmp(a1.data(), a2.data(), sizeof(T) * std::size_t(big)) == 0);
  CHECK(std::memcmp(f1.data(), f2.data(), sizeof(T) * std::size_t(big)) == 0);
  // The fused step equals gen.normal(noise) followed by the step with that buffer.
  kexue::Vector<T> noise(big), expect(big);
  kexue::PhiloxGenerator g(5, 3);
  g.normal(noise);
  kexue::ddpm_step(s, bm, 700, bx, noise, expect);
  CHECK(expect == f1);
}

// The same bad input, the same kexue::Error (and message), in either arithmetic.
void check_bad_step_input(const DdpmSchedule& s) {
  kexue::Vector<float> m = kexue::Vector<float>::Ones(8), x = kexue::Vector<float>::Ones(8),
                       z = kexue::Vector<float>::Ones(8), out = kexue::Vector<float>::Constant(8, 42.0f),
                       short_v = kexue::Vector<float>::Ones(7);
  auto untouched = [&] { return (out.array() == 42.0f).all(); };
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, 100, x, z, out), kexue::Error);  // t outside
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, -1, x, z, out), kexue::Error);
  DdpmStepOptions o;
  o.prev_t = 50;
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, 50, x, z, out, o), kexue::Error);  // prev_t >= t
  o.prev_t = -2;
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, 50, x, z, out, o), kexue::Error);
  CHECK_THROWS_AS(kexue::ddpm_step(s, short_v, 50, x, z, out), kexue::Error);  // size mismatch
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, 50, x, short_v, out), kexue::Error);
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, 50, x, z, short_v), kexue::Error);
  DdpmStepOptions bad_clip;
  bad_clip.clip_range = 0;
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, 50, x, z, out, bad_clip), kexue::Error);
  for (double ratio : {-0.1, 1.5, double(NAN)}) {
    DdpmStepOptions th;
    th.thresholding = true;
    th.dynamic_thresholding_ratio = ratio;
    CHECK_THROWS_AS(kexue::ddpm_step(s, m, 50, x, z, out, th), kexue::Error);
  }
  for (double smax : {0.5, double(INFINITY), double(NAN)}) {
    DdpmStepOptions th;
    th.thresholding = true;
    th.sample_max_value = smax;
    CHECK_THROWS_AS(kexue::ddpm_step(s, m, 50, x, z, out, th), kexue::Error);
  }
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, 50, x, z, z), kexue::Error);  // out is the noise
  kexue::Vector<float> buf = kexue::Vector<float>::Ones(12);
  CHECK_THROWS_AS(kexue::ddpm_step(s, buf.head(8), 50, x, z, buf.tail(8)), kexue::Error);  // shifted overlap
  kexue::PhiloxGenerator g(1);
  CHECK_THROWS_AS(kexue::ddpm_step(s, m, 100, x, g, out), kexue::Error);
  CHECK(g.offset() == 0);
  CHECK_THROWS_AS(kexue::ddpm_add_noise(s, m, short_v, 5, out), kexue::Error);
  CHECK_THROWS_AS(kexue::ddpm_add_noise(s, m, z, 100, out), kexue::Error);
  CHECK_THROWS_AS(kexue::ddpm_velocity(s, m, z, -1, out), kexue::Error);
  CHECK(untouched());
  // Batched: t count, prev_t count, options.prev_t set, shapes.
  kexue::Matrix<float> bm = kexue::Matrix<float>::Ones(2, 4), bo = kexue::Matrix<float>::Constant(2, 4, 42.0f),
                       b3 = kexue::Matrix<float>::Ones(2, 3);
  CHECK_THROWS_AS(kexue::ddpm_step(s, bm, std::vector<Index>{5}, bm, bm, bo), kexue::Error);
  CHECK_THROWS_AS(kexue::ddpm_step(s, bm, std::vector<Index>{5, 6}, bm, bm, bo, {}, std::vector<Index>{4}),
                  kexue::Error);
  CHECK_THROWS_AS(kexue::ddpm_step(s, bm, std::vector<Index>{5, 6}, bm, bm, bo, {}, std::vector<Index>{4, 6}),
                  kexue::Error);
  DdpmStepOptions with_prev;
  with_prev.prev_t = 3;
  CHECK_THROWS_AS(kexue::ddpm_step(s, bm, std::vector<Index>{5, 6}, bm, bm, bo, with_prev), kexue::Error);
  CHECK_THROWS_AS(kexue::ddpm_step(s, b3, std::vector<Index>{5, 6}, bm, bm, bo), kexue::Error);
  CHECK_THROWS_AS(kexue::ddpm_add_noise(s, bm, b3, std::vector<Index>{5, 6}, bo), kexue::Error);
  CHECK((bo.array() == 42.0f).all());
  try {
    kexue::ddpm_step(s, short_v, 50, x, z, out);
    FAIL("no throw");
  } catch (const kexue::Error& e) {
    CHECK(std::string(e.what()) == "ddpm_step: model_output has 7 elements but sample has 8");
  }
  // n = 0 is fine.
  kexue::Vector<float> e0;
  CHECK_NOTHROW(kexue::ddpm_step(s, e0, 5, e0, e0, e0));
}

TEST_CASE("ddpm_step and ddpm_add_noise: bad input throws before writing", "[ddpm][errors]") {
  SECTION("Exact") { check_bad_step_input(DdpmSchedule(100)); }
  SECTION("DiffusersFloat32") {
    check_bad_step_input(DdpmSchedule(100, BetaSchedule::Linear, 1e-4, 0.02, ScheduleArithmetic::DiffusersFloat32));
  }
}

TEST_CASE("DDPM mixture sampler: 1000 steps reproduce the mixture's statistics", "[ddpm][demo]") {
  // The demo's sampler (examples/ddpm_mixture.hpp) with 1500 samples instead of 10000. Each statistic must be
  // within 5 standard errors of the truth (+0.01 for the discretisation of 1000 DDPM steps, which is far
  // smaller). The standard errors come from the summands' variances, estimated from 200000 exact draws
  // of the mixture.
  const auto mixture = kexue_demo::default_mixture();
  kexue_demo::SamplerConfig cfg;
  cfg.samples = 1500;
  cfg.seed = 1234;
  const auto samples = kexue_demo::sample_ddpm(mixture, cfg, nullptr);
  REQUIRE(samples.rows() == cfg.samples);
  REQUIRE(samples.cols() == 2);
  const auto st = kexue_demo::sample_statistics(mixture, samples);
  const auto truth = kexue_demo::mixture_statistics(mixture);

  // Exact draws: their statistics confirm `truth` and give the summand variances.
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform;
  const int N = 200000;
  std::vector<double> xs(N), ys(N);
  for (int i = 0; i < N; ++i) {
    double u = uniform(rng);
    std::size_t k = 0;
    while (k + 1 < mixture.size() && u >= mixture[k].weight) u -= mixture[k++].weight;
    const auto& c = mixture[k];
    const double l00 = std::sqrt(c.cov[0]), l10 = c.cov[1] / l00, l11 = std::sqrt(c.cov[2] - l10 * l10);
    const double a = normal(rng), b = normal(rng);
    xs[std::size_t(i)] = c.mean[0] + l00 * a;
    ys[std::size_t(i)] = c.mean[1] + l10 * a + l11 * b;
  }
  double var_summand[4] = {0, 0, 0, 0}, exact_mean[2] = {0, 0};
  for (int i = 0; i < N; ++i) {
    const double dx = xs[std::size_t(i)] - truth.mean[0], dy = ys[std::size_t(i)] - truth.mean[1];
    exact_mean[0] += xs[std::size_t(i)] / N;
    exact_mean[1] += ys[std::size_t(i)] / N;
    var_summand[0] += (dx * dx - truth.cov[0]) * (dx * dx - truth.cov[0]) / N;
    var_summand[1] += (dx * dy - truth.cov[1]) * (dx * dy - truth.cov[1]) / N;
    var_summand[3] += (dy * dy - truth.cov[3]) * (dy * dy - truth.cov[3]) / N;
  }
  var_summand[2] = var_summand[1];
  CHECK(std::abs(exact_mean[0] - truth.mean[0]) < 5 * std::sqrt(truth.cov[0] / N));
  CHECK(std::abs(exact_mean[1] - truth.mean[1]) < 5 * std::sqrt(truth.cov[3] / N));

  const double n = double(cfg.samples), slack = 0.01;
  CHECK(std::abs(st.mean[0] - truth.mean[0]) < 5 * std::sqrt(truth.cov[0] / n) + slack);
  CHECK(std::abs(st.mean[1] - truth.mean[1]) < 5 * std::sqrt(truth.cov[3] / n) + slack);
  for (int i = 0; i < 4; ++i) {
    INFO("cov entry " << i << ": " << st.cov[i] << " vs " << truth.cov[i]);
    CHECK(std::abs(st.cov[i] - truth.cov[i]) < 5 * std::sqrt(var_summand[i] / n) + slack);
  }
  for (std::size_t k = 0; k < mixture.size(); ++k) {
    INFO("mode " << k << ": " << st.weights[k] << " vs " << mixture[k].weight);
    const double w = mixture[k].weight;
    CHECK(std::abs(st.weights[k] - w) < 5 * std::sqrt(w * (1 - w) / n) + slack);
  }
  // P(Mahalanobis^2 > 16) = exp(-8) = 3.4e-4 for a 2-D Gaussian: almost no sample may land off the modes
  // (the sampler would leave many between modes if eps* or the step were wrong).
  CHECK(st.far_fraction < 0.005);
  // Reproducible for a fixed seed.
  cfg.samples = 16;
  CHECK(kexue_demo::sample_ddpm(mixture, cfg, nullptr) == kexue_demo::sample_ddpm(mixture, cfg, nullptr));
}

// ---- ScheduleArithmetic::DiffusersFloat32 (issue 15): bit for bit with diffusers' DDPMScheduler ----------------

namespace {

template <class T>
std::vector<T> ref_as(const std::string& name) {
  const auto& v = ref_diffusers().get(name).values;
  return std::vector<T>(v.begin(), v.end());
}

// Index of the first element whose bits differ, or -1.
template <class T>
Index first_mismatch(const T* got, const std::vector<T>& want) {
  for (std::size_t i = 0; i < want.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) return Index(i);
  return -1;
}

DdpmSchedule diffusers_schedule(const std::vector<double>& cfg) {
  return DdpmSchedule(Index(cfg[1]), kSchedules[std::size_t(cfg[0])], cfg[2], cfg[3],
                      ScheduleArithmetic::DiffusersFloat32);
}

}  // namespace

TEST_CASE("DiffusersFloat32: torch.linspace's float32 CPU kernels, bit for bit", "[ddpm][diffusers][schedule]") {
  // detail::torch_linspace_f32 for torch's AVX2 (8 lanes, fused base), AVX-512 (16, fused) and DEFAULT (8, not
  // fused) kernels; the data come from torch run under each ATEN_CPU_CAPABILITY.
  struct Kernel {
    const char* name;
    Index lanes;
    bool fused;
  };
  for (int i = 0; ref_diffusers().has("linspace/case" + std::to_string(i) + "/config"); ++i) {
    const std::string base = "linspace/case" + std::to_string(i);
    const auto cfg = ref_diffusers().get(base + "/config").values;
    for (const Kernel& k : {Kernel{"avx2", 8, true}, Kernel{"avx512", 16, true}, Kernel{"default", 8, false}}) {
      const auto want = ref_as<float>(base + "/" + k.name);
      const auto got = kexue::detail::torch_linspace_f32(float(cfg[0]), float(cfg[1]), Index(cfg[2]), k.lanes, k.fused);
      INFO(base << " " << k.name << " n " << cfg[2]);
      REQUIRE(got.size() == want.size());
      CHECK(first_mismatch(got.data(), want) == -1);
    }
  }
}

TEST_CASE("DiffusersFloat32: betas, alphas_cumprod and _get_variance equal diffusers' float32 values",
          "[ddpm][diffusers][schedule]") {
  CHECK(DdpmSchedule().arithmetic() == ScheduleArithmetic::Exact);
  int cases = 0;
  for (int i = 0; ref_diffusers().has("schedule/case" + std::to_string(i) + "/config"); ++i, ++cases) {
    const std::string base = "schedule/case" + std::to_string(i);
    const auto cfg = ref_diffusers().get(base + "/config").values;
    const DdpmSchedule s = diffusers_schedule(cfg);
    INFO(base << ": kind " << cfg[0] << " T " << cfg[1]);
    CHECK(s.arithmetic() == ScheduleArithmetic::DiffusersFloat32);
    CHECK(s.betas() == ref_diffusers().get(base + "/betas").values);
    CHECK(s.alphas_cumprod() == ref_diffusers().get(base + "/alphas_cumprod").values);
    for (Index t = 0; t < s.size(); ++t) CHECK(float(s.alpha(t)) == 1.0f - float(s.beta(t)));
    const auto ts = ref_diffusers().get(base + "/variance_t").values;
    const auto small = ref_diffusers().get(base + "/variance_fixed_small").values;
    for (std::size_t j = 0; j < ts.size(); ++j) {
      const double v = s.variance(Index(ts[j]));
      CHECK((v == small[j] || (std::isnan(v) && std::isnan(small[j]))));  // case 7 underflows alphas_cumprod
    }
  }
  CHECK(cases >= 8);
  // The float32 schedule is not the double one (diffusers' 3e-4 relative loss in 1 - alphas_cumprod[1]).
  const DdpmSchedule exact, f32(1000, BetaSchedule::Linear, 1e-4, 0.02, ScheduleArithmetic::DiffusersFloat32);
  CHECK(exact.alpha_bar(1) != f32.alpha_bar(1));
  CHECK(std::abs((1 - f32.alpha_bar(1)) / (1 - exact.alpha_bar(1)) - 1) > 1e-5);
}

namespace {

// One trajectory of the transcription: add_noise at ts[0], then ddpm_step with diffusers' dummy model, noise
// from TorchGenerator(seed) as the transcription's torch.Generator draws it. Each step is taken three ways
// (flat, batched with one t per row, in place) unless thresholding, which is per row: batched only.
template <class T>
void check_trajectory(const std::string& base) {
  const auto cfg = ref_diffusers().get(base + "/config").values;
  const DdpmSchedule s = diffusers_schedule(cfg);
  DdpmStepOptions o;
  o.prediction = std::array<Prediction, 3>{Prediction::Epsilon, Prediction::Sample, Prediction::Velocity}[std::size_t(cfg[4])];
  o.variance = cfg[5] == 0 ? Variance::FixedSmall : Variance::FixedLarge;
  o.clip_sample = cfg[6] != 0;
  o.clip_range = cfg[7];
  o.thresholding = cfg[8] != 0;
  o.dynamic_thresholding_ratio = cfg[9];
  o.sample_max_value = cfg[10];
  const auto tsd = ref_diffusers().get(base + "/timesteps").values;
  const std::vector<Index> ts(tsd.begin(), tsd.end());
  const auto samples = ref_as<T>(base + "/samples");
  const Index rows = 2, n = 37, size = rows * n;
  using Mat = kexue::Matrix<T>;
  kexue::TorchGenerator gen{static_cast<std::uint64_t>(cfg[12])};
  Mat x0(rows, n), noise(rows, n), x(rows, n), v(rows, n);
  gen.normal(x0);
  gen.normal(noise);
  kexue::ddpm_add_noise(s, x0, noise, ts[0], x);
  REQUIRE(first_mismatch(x.data(), std::vector<T>(samples.begin(), samples.begin() + size)) == -1);
  Mat xb(rows, n);
  kexue::ddpm_add_noise(s, x0, noise, std::vector<Index>{ts[0], ts[0]}, xb);
  CHECK(xb == x);
  kexue::ddpm_velocity(s, x0, noise, ts[0], v);
  CHECK(first_mismatch(v.data(), ref_as<T>(base + "/velocity")) == -1);
  for (std::size_t k = 0; k < ts.size(); ++k) {
    const Index t = ts[k];
    o.prev_t = kexue::previous_timestep(ts, k);
    Mat m(rows, n), z = Mat::Zero(rows, n), out(rows, n);
    for (Index i = 0; i < size; ++i) m.data()[i] = x.data()[i] * T(t) / T(t + 1);  // dummy_model
    if (t > 0) gen.normal(z);
    const std::vector<T> want(samples.begin() + Index(k + 1) * size, samples.begin() + Index(k + 2) * size);
    INFO(base << " step " << k << " t " << t);
    if (!o.thresholding) {
      kexue::ddpm_step(s, m, t, x, z, out, o);
      const Index bad = first_mismatch(out.data(), want);
      INFO("flat: first mismatch at " << bad << (bad >= 0 ? ": " + std::to_string(double(out.data()[bad])) + " vs " +
                                                                std::to_string(double(want[std::size_t(bad)]))
                                                          : std::string()));
      CHECK(bad == -1);
      Mat inplace = x;
      kexue::ddpm_step(s, m, t, inplace, z, inplace, o);
      CHECK(inplace == out);
    }
    DdpmStepOptions ob = o;
    ob.prev_t.reset();
    Mat outb(rows, n);
    kexue::ddpm_step(s, m, std::vector<Index>(2, t), x, z, outb, ob, std::vector<Index>(2, *o.prev_t));
    CHECK(first_mismatch(outb.data(), want) == -1);
    x = outb;
  }
}

}  // namespace

TEST_CASE("DiffusersFloat32: whole trajectories equal diffusers' (float32 transcription) bit for bit",
          "[ddpm][diffusers][step]") {
  int n32 = 0, n64 = 0;
  for (int i = 0; ref_diffusers().has("traj/case" + std::to_string(i) + "/config"); ++i) {
    const std::string base = "traj/case" + std::to_string(i);
    if (ref_diffusers().get(base + "/config").values[11] == 32) {
      check_trajectory<float>(base);
      ++n32;
    } else {
      check_trajectory<double>(base);
      ++n64;
    }
  }
  CHECK(n32 >= 48);
  CHECK(n64 >= 3);
}

namespace {

// diffusers' SchedulerCommonTest.dummy_sample_deter / dummy_noise_deter ([4, 3, 8, 8], element (b, c, h, w) =
// arange(768) reshaped to [3, 8, 8, 4] and permuted) and dummy_model (sample * t / (t + 1)).
kexue::Vector<float> dummy_deter(bool flip) {
  const int B = 4, C = 3, H = 8, W = 8, N = B * C * H * W;
  kexue::Vector<float> v(N);
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c)
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) {
          const int k = ((c * H + h) * W + w) * B + b;
          v[((b * C + c) * H + h) * W + w] = float(flip ? N - 1 - k : k) / float(N);
        }
  return v;
}

kexue::Vector<float> dummy_model(const kexue::Vector<float>& sample, Index t) {
  return (sample.array() * float(t) / float(t + 1)).matrix();
}

// test_full_loop_no_noise / test_full_loop_with_v_prediction: every t of 999..0, noise from torch.manual_seed(0).
kexue::Vector<float> full_loop(const DdpmSchedule& s, Prediction prediction) {
  kexue::TorchGenerator gen(0);
  DdpmStepOptions o;
  o.prediction = prediction;
  kexue::Vector<float> sample = dummy_deter(false), z(sample.size());
  for (Index t = s.size() - 1; t >= 0; --t) {
    if (t > 0) gen.normal(z);
    kexue::ddpm_step(s, dummy_model(sample, t), t, sample, z, sample, o);
  }
  return sample;
}

// test_full_loop_with_noise: add_noise(dummy_sample_deter, dummy_noise_deter, t = 1), then t = 1, 0.
kexue::Vector<float> loop_with_noise(const DdpmSchedule& s) {
  kexue::TorchGenerator gen(0);
  kexue::Vector<float> sample(768), z(768);
  kexue::ddpm_add_noise(s, dummy_deter(false), dummy_deter(true), 1, sample);
  for (Index t : {Index(1), Index(0)}) {
    if (t > 0) gen.normal(z);
    kexue::ddpm_step(s, dummy_model(sample, t), t, sample, z, sample);
  }
  return sample;
}

}  // namespace

TEST_CASE("DiffusersFloat32: diffusers' own DDPMScheduler test values (test_scheduler_ddpm.py, 58eb52c)",
          "[ddpm][diffusers][published]") {
  const DdpmSchedule s(1000, BetaSchedule::Linear, 1e-4, 0.02, ScheduleArithmetic::DiffusersFloat32);
  // test_variance
  CHECK(std::abs(s.variance(0) - 0.0) < 1e-5);
  CHECK(std::abs(s.variance(487) - 0.00979) < 1e-5);
  CHECK(std::abs(s.variance(999) - 0.02) < 1e-5);
  struct Case {
    const char* name;
    kexue::Vector<float> final;
    double sum, mean;
  };
  const Case cases[] = {{"no_noise", full_loop(s, Prediction::Epsilon), 258.9606, 0.3372},
                        {"v_prediction", full_loop(s, Prediction::Velocity), 202.0296, 0.2631},
                        {"with_noise", loop_with_noise(s), 387.9466, 0.5051}};
  for (const Case& c : cases) {
    INFO(c.name);
    const double sum = c.final.cast<double>().array().abs().sum(), mean = sum / double(c.final.size());
    CHECK(std::abs(sum - c.sum) < 1e-2);  // diffusers' tolerances
    CHECK(std::abs(mean - c.mean) < 1e-3);
    // and bit for bit the transcription's final sample
    CHECK(first_mismatch(c.final.data(), ref_as<float>(std::string("published/") + c.name + "/final")) == -1);
  }
  // The double schedule is the more exact one, and misses diffusers' tolerance on test_full_loop_with_noise
  // (387.967 vs 387.9466): the reason DiffusersFloat32 exists.
  const double exact_sum = loop_with_noise(DdpmSchedule()).cast<double>().array().abs().sum();
  CHECK(std::abs(exact_sum - 387.9466) > 1e-2);
}

TEMPLATE_TEST_CASE("DiffusersFloat32: SIMD step vs the scalar diffusers reference over odd sizes and offsets",
                   "[ddpm][diffusers][step]", float, double) {
  using T = TestType;
  const Index L = kexue::detail::kLanes<T>;
  const DdpmSchedule s(1000, BetaSchedule::Cosine, 1e-4, 0.02, ScheduleArithmetic::DiffusersFloat32);
  for (Index n : kexue_test::lane_sizes(L)) {
    for (Index off : {Index(0), Index(1), L / 4}) {
      auto mv = kexue_test::random_values<T>(n, 1 + std::uint32_t(n), T(-3), T(3));
      const auto xv = kexue_test::random_values<T>(n, 2 + std::uint32_t(n), T(-3), T(3));
      const auto zv = kexue_test::random_values<T>(n, 3 + std::uint32_t(n), T(-3), T(3));
      if (n > 2) mv[std::size_t(n / 2)] = std::numeric_limits<T>::quiet_NaN();  // NaN stays NaN through the clamp
      kexue_test::PaddedBuffer<T> pm(n, off), px(n, off), pz(n, off), po(n, off);
      std::copy(mv.begin(), mv.end(), pm.data());
      std::copy(xv.begin(), xv.end(), px.data());
      std::copy(zv.begin(), zv.end(), pz.data());
      using Map = Eigen::Map<kexue::Vector<T>>;
      for (Prediction p : {Prediction::Epsilon, Prediction::Sample, Prediction::Velocity})
        for (Variance v : {Variance::FixedSmall, Variance::FixedLarge})
          for (bool clip : {false, true})
            for (Index t : {Index(0), Index(3), Index(700), Index(999)}) {
              INFO("n " << n << " off " << off << " t " << t << " clip " << clip << " p " << int(p));
              DdpmStepOptions o;
              o.prediction = p;
              o.variance = v;
              o.clip_sample = clip;
              o.clip_range = 1.5;
              kexue::ddpm_step(s, Map(pm.data(), n), t, Map(px.data(), n), Map(pz.data(), n), Map(po.data(), n), o);
              const auto r = kexue_ref::diffusers_step<T>(s, mv, t, xv, zv, p, v, clip, 1.5, t - 1);
              for (Index i = 0; i < n; ++i) {
                const T got = po.data()[i];
                if (std::isnan(r[std::size_t(i)])) {
                  CHECK(std::isnan(got));
                } else if (std::memcmp(&got, &r[std::size_t(i)], sizeof(T)) != 0) {
                  FAIL_CHECK("element " << i << ": " << got << " vs " << r[std::size_t(i)]);
                }
              }
              CHECK(po.guards_intact(n));
            }
    }
  }
}

TEST_CASE("DiffusersFloat32: the Philox step equals the buffered step; final_step_noise; coefficients",
          "[ddpm][diffusers][step]") {
  const DdpmSchedule s(1000, BetaSchedule::ScaledLinear, 0.00085, 0.012, ScheduleArithmetic::DiffusersFloat32);
  const Index n = 3 * kexue::detail::kDdpmChunk + 77;  // several chunks and tiles, a ragged tail
  const auto m = kexue_test::random_values<float>(n, 5, -2.0f, 2.0f);
  const auto x = kexue_test::random_values<float>(n, 6, -2.0f, 2.0f);
  using CMap = Eigen::Map<const kexue::Vector<float>>;
  for (bool thresholding : {false, true}) {
    DdpmStepOptions o;
    o.thresholding = thresholding;
    o.sample_max_value = 1.7;
    kexue::PhiloxGenerator g1(42, 1000), g2(42, 1000);
    kexue::Vector<float> z(n), a(n), b(n);
    g1.normal(z);
    kexue::ddpm_step(s, CMap(m.data(), n), 500, CMap(x.data(), n), z, a, o);
    kexue::ddpm_step(s, CMap(m.data(), n), 500, CMap(x.data(), n), g2, b, o);
    CHECK(a == b);
    CHECK(g1.offset() == g2.offset());
  }
  // A list ending above t = 0: diffusers adds noise at its last step (t > 0), kexue with final_step_noise.
  DdpmStepOptions o;
  o.prev_t = -1;
  kexue::Vector<float> z = kexue::Vector<float>::Constant(n, 1.0f), with(n), without(n);
  kexue::ddpm_step(s, CMap(m.data(), n), 3, CMap(x.data(), n), z, without, o);
  o.final_step_noise = true;
  kexue::ddpm_step(s, CMap(m.data(), n), 3, CMap(x.data(), n), z, with, o);
  const auto r = kexue_ref::diffusers_step<float>(s, m, 3, x, std::vector<float>(std::size_t(n), 1.0f),
                                                  Prediction::Epsilon, Variance::FixedSmall, true, 1.0, 0);
  CHECK(with != without);
  // ddpm_step_coefficients reports diffusers' float32 scalars.
  const auto k = kexue::ddpm_step_coefficients(s, 500);
  CHECK(k.alpha_bar == s.alpha_bar(500));
  CHECK(float(k.current_beta) == 1.0f - float(s.alpha_bar(500)) / float(s.alpha_bar(499)));
  CHECK(k.noise_std == double(std::sqrt(float(s.variance(500)))));
  (void)r;
}

TEST_CASE("DDPM demo progress: carriage-return frames only on a terminal, one line per 10% elsewhere",
          "[ddpm][demo]") {
  auto run = [](bool terminal, Index total) {
    std::FILE* f = std::tmpfile();
    REQUIRE(f != nullptr);
    kexue_demo::ProgressBar bar(f, terminal);
    for (Index i = 1; i <= total; ++i) bar(i, total);
    std::rewind(f);
    std::string text;
    for (int c; (c = std::fgetc(f)) != EOF;) text.push_back(char(c));
    std::fclose(f);
    return text;
  };
  const std::string log = run(false, 1000);
  CHECK(log.find('\r') == std::string::npos);
  CHECK(std::count(log.begin(), log.end(), '\n') == 10);
  CHECK(log.find("sampling:  10% (100/1000 steps)\n") != std::string::npos);
  CHECK(log.find("sampling: 100% (1000/1000 steps)\n") != std::string::npos);
  const std::string few = run(false, 7);  // fewer steps than lines: one line per step, still no '\r'
  CHECK(few.find('\r') == std::string::npos);
  CHECK(std::count(few.begin(), few.end(), '\n') == 7);
  const std::string tty = run(true, 1000);
  CHECK(std::count(tty.begin(), tty.end(), '\r') == 100);
  CHECK(std::count(tty.begin(), tty.end(), '\n') == 1);
  // What ctest, CI and `demo > log 2>&1` give the demo's stderr is not a terminal.
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  CHECK_FALSE(kexue_demo::is_terminal(f));
  std::fclose(f);
}
