// SPDX-License-Identifier: MIT
// Tests of kexue/init.hpp. Statistical checks use fixed seeds (so they are deterministic) and bounds of 5
// standard errors: a correct initialiser with a fresh seed would fail one such check with probability below
// 6e-7 (two-sided normal tail), while a wrong variance, fan or truncation moves the statistic by far more.
// Also: exact truncation bounds, the generator's stream (values, offsets, strided targets, thread counts),
// bert4keras' fan rule and stddev, and errors before any write.

#include "kexue/init.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::FanMode;
using kexue::Index;
using kexue::InitDistribution;
using kexue::Matrix;
using kexue::PhiloxGenerator;
using kexue::Vector;
using kexue_test::throws_with;

namespace {

struct Moments {
  double n = 0, mean = 0, var = 0, m4 = 0, max_abs = 0;
};

template <class M>
Moments moments(const M& w) {
  Moments m;
  m.n = double(w.size());
  for (Index i = 0; i < w.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) m.mean += double(w(i, j));
  m.mean /= m.n;
  for (Index i = 0; i < w.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) {
      const double d = double(w(i, j)) - m.mean;
      m.var += d * d;
      m.m4 += d * d * d * d;
      m.max_abs = std::max(m.max_abs, std::abs(double(w(i, j))));
    }
  m.var /= m.n;
  m.m4 /= m.n;
  return m;
}

constexpr double kZ = 5.0;  // standard errors allowed (two-sided p < 6e-7)

/// Mean 0 and variance `want` within kZ standard errors; returns the moments for further checks.
template <class M>
Moments check_moments(const M& w, double want_var) {
  const Moments m = moments(w);
  INFO("n " << m.n << " mean " << m.mean << " var " << m.var << " want " << want_var << " m4 " << m.m4);
  CHECK(std::abs(m.mean) <= kZ * std::sqrt(want_var / m.n));
  // Standard error of the sample variance: sqrt((mu4 - sigma^4) / n), with the sample's own fourth moment.
  CHECK(std::abs(m.var - want_var) <= kZ * std::sqrt((m.m4 - m.var * m.var) / m.n));
  return m;
}

/// Kurtosis m4 / var^2: 3 for a normal, 1.8 for a uniform, 2.3655 for a normal truncated at 2 sigma.
double kurtosis(const Moments& m) { return m.m4 / (m.var * m.var); }

}  // namespace

TEMPLATE_TEST_CASE("variance-scaling initialisers: moments, fans and shapes of the distributions", "[init]", float,
                   double) {
  using T = TestType;
  const Index rows = 384, cols = 640;  // fan_in 384, fan_out 640, fan_avg 512; 245760 draws
  struct Case {
    const char* name;
    double var;
    double kurt;
    void (*call)(Matrix<T>&, PhiloxGenerator&);
  };
  const Case cases[] = {
      {"lecun_normal", 1.0 / 384, 3.0, [](Matrix<T>& w, PhiloxGenerator& g) { kexue::init_lecun_normal(w, g); }},
      {"lecun_uniform", 1.0 / 384, 1.8, [](Matrix<T>& w, PhiloxGenerator& g) { kexue::init_lecun_uniform(w, g); }},
      {"he_normal", 2.0 / 384, 3.0, [](Matrix<T>& w, PhiloxGenerator& g) { kexue::init_he_normal(w, g); }},
      {"he_uniform", 2.0 / 384, 1.8, [](Matrix<T>& w, PhiloxGenerator& g) { kexue::init_he_uniform(w, g); }},
      {"xavier_normal", 1.0 / 512, 3.0, [](Matrix<T>& w, PhiloxGenerator& g) { kexue::init_xavier_normal(w, g); }},
      {"xavier_uniform", 1.0 / 512, 1.8, [](Matrix<T>& w, PhiloxGenerator& g) { kexue::init_xavier_uniform(w, g); }},
      {"xavier_uniform gain 2", 4.0 / 512, 1.8,
       [](Matrix<T>& w, PhiloxGenerator& g) { kexue::init_xavier_uniform(w, g, 2.0); }},
      {"keras lecun_normal (truncated, corrected)", 1.0 / 384, 2.3655,
       [](Matrix<T>& w, PhiloxGenerator& g) {
         kexue::init_variance_scaling(w, 1.0, FanMode::FanIn, InitDistribution::TruncatedNormal, g);
       }},
      {"keras < 2.2.3 'normal' fan_out (truncated, uncorrected)", 0.7737413 / 640, 2.3655,
       [](Matrix<T>& w, PhiloxGenerator& g) {
         kexue::init_variance_scaling(w, 1.0, FanMode::FanOut, InitDistribution::TruncatedNormalUncorrected, g);
       }},
  };
  std::uint64_t seed = 20240;
  for (const Case& c : cases) {
    INFO(c.name);
    Matrix<T> w(rows, cols);
    PhiloxGenerator gen(++seed);
    c.call(w, gen);
    const Moments m = check_moments(w, c.var);
    // Kurtosis separates the distributions: its standard error here is about 0.03 for a normal.
    CHECK(std::abs(kurtosis(m) - c.kurt) <= 0.1);
    const double sd = std::sqrt(c.var);
    if (c.kurt == 1.8) {
      const double limit = std::sqrt(3.0) * sd;
      CHECK(m.max_abs < limit);
      CHECK(m.max_abs > 0.999 * limit);
    }
  }
}

TEMPLATE_TEST_CASE("truncated normal: |w| <= 2 stddev exactly, the tails up to the bound, TF's variance",
                   "[init][truncated]", float, double) {
  using T = TestType;
  for (bool correct : {false, true}) {
    INFO("correct_variance " << correct);
    Matrix<T> w(300, 700);
    PhiloxGenerator gen(77);
    const double stddev = 0.02;
    kexue::init_truncated_normal(w, stddev, gen, correct);
    const double s = correct ? stddev * kexue::kTruncatedNormalCorrection : stddev;
    const Moments m = check_moments(w, correct ? stddev * stddev : 0.7737413 * stddev * stddev);
    CHECK(m.max_abs <= 2 * s * (1 + std::numeric_limits<T>::epsilon()));
    // P(1.9 s < |w| <= 2 s) = 2 (Phi(2) - Phi(1.9)) / 0.9545 = 0.012502: the density reaches the bound.
    double beyond = 0;
    for (Index i = 0; i < w.size(); ++i) beyond += std::abs(double(w.data()[i])) > 1.9 * s;
    const double p = 0.0125017, n = double(w.size());
    CHECK(std::abs(beyond - p * n) <= kZ * std::sqrt(n * p * (1 - p)));
    // The generator consumed the accepted draws plus the rejected ones (about 4.55%).
    const double consumed = double(gen.offset());
    CHECK(consumed >= n);
    const double q = 0.0455003;  // P(|z| > 2)
    CHECK(std::abs((consumed - n) - n * q / (1 - q)) <= kZ * std::sqrt(n * q) / (1 - q));
  }
}

TEST_CASE("truncated normal: the accepted draws are the stream's |z| <= 2 values in order", "[init][truncated]") {
  PhiloxGenerator gen(5, 123);
  Matrix<double> w(7, 1500);  // several blocks of draws
  kexue::init_truncated_normal(w, 0.5, gen);
  const Index n = 20000;
  std::vector<float> z(static_cast<std::size_t>(n));
  PhiloxGenerator::fill_at(5, 123, z.data(), n);
  Index k = 0, used = 0;
  for (; used < n && k < w.size(); ++used)
    if (std::abs(z[std::size_t(used)]) <= 2.f) {
      REQUIRE(w.data()[k] == 0.5 * double(z[std::size_t(used)]));
      ++k;
    }
  REQUIRE(k == w.size());
  CHECK(gen.offset() == std::uint64_t(123 + used));
  // A second call continues the stream where the first stopped.
  Matrix<double> w2(1, 50);
  kexue::init_truncated_normal(w2, 0.5, gen);
  for (Index j = 0; j < 50; ++used) {
    if (std::abs(z[std::size_t(used)]) <= 2.f) {
      REQUIRE(w2(0, j) == 0.5 * double(z[std::size_t(used)]));
      ++j;
    }
  }
}

TEST_CASE("initialisers follow the Philox stream: row-major order, strided targets, offsets, any thread count",
          "[init][stream]") {
  const Index rows = 256, cols = 513;  // 131328 draws: PhiloxGenerator fills in parallel above 4 chunks
  std::vector<float> z(static_cast<std::size_t>(rows * cols));
  PhiloxGenerator::fill_at(99, 0, z.data(), rows * cols);
  // init_normal is stddev * the stream.
  PhiloxGenerator gen(99);
  Matrix<float> w(rows, cols);
  kexue::init_normal(w, 0.25, gen);
  for (Index i = 0; i < w.size(); ++i) REQUIRE(w.data()[i] == 0.25f * z[std::size_t(i)]);
  CHECK(gen.offset() == std::uint64_t(rows * cols));
  // A strided block gets the same values as a contiguous matrix, and the gaps are untouched.
  const Index stride = cols + 5;
  std::vector<float> buf(static_cast<std::size_t>(rows * stride), -7.f);
  Eigen::Map<Matrix<float>, Eigen::Unaligned, Eigen::OuterStride<>> strided(buf.data(), rows, cols,
                                                                           Eigen::OuterStride<>(stride));
  PhiloxGenerator gen2(99);
  kexue::init_normal(strided, 0.25, gen2);
  CHECK((strided.array() == w.array()).all());
  for (Index i = 0; i < rows; ++i)
    for (Index j = cols; j < stride; ++j) REQUIRE(buf[std::size_t(i * stride + j)] == -7.f);
  // Any thread count gives the same weights, for every distribution.
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  for (int d = 0; d < 4; ++d) {
    Matrix<float> a(rows, cols), b(rows, cols);
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      PhiloxGenerator g(1234);
      kexue::init_variance_scaling(threads == 1 ? a : b, 2.0, FanMode::FanAvg, static_cast<InitDistribution>(d), g);
    }
    CHECK((a.array() == b.array()).all());
  }
  omp_set_num_threads(saved);
#endif
  // The same seed reproduces, another seed does not.
  Matrix<float> a(10, 10), b(10, 10), c(10, 10);
  PhiloxGenerator ga(3), gb(3), gc(4);
  kexue::init_he_uniform(a, ga);
  kexue::init_he_uniform(b, gb);
  kexue::init_he_uniform(c, gc);
  CHECK((a.array() == b.array()).all());
  CHECK((a.array() != c.array()).any());
}

TEST_CASE("vectors have fan_in = fan_out = size (Keras compute_fans)", "[init]") {
  Vector<double> v(100000);
  PhiloxGenerator gen(8);
  kexue::init_lecun_normal(v, gen);
  check_moments(Eigen::Map<Matrix<double>>(v.data(), 1, v.size()), 1e-5);
  Eigen::Matrix<float, 1, Eigen::Dynamic> row(50000);
  kexue::init_xavier_uniform(row, gen);
  const Moments m = check_moments(Eigen::Map<Matrix<float>>(row.data(), 1, row.size()), 2e-5);
  CHECK(m.max_abs < std::sqrt(6.0 / 100000));
}

TEST_CASE("RoFormerV2 / GAU-alpha initialiser: bert4keras' fan rule, stddev and truncation", "[init][roformer]") {
  CHECK(kexue::roformer_v2_fan(768, 3072) == 768);
  CHECK(kexue::roformer_v2_fan(3072, 768) == 3072);
  CHECK(kexue::roformer_v2_fan(50000, 768) == 768);  // embedding table: vocab > 10000
  CHECK(kexue::roformer_v2_fan(10000, 64) == 10000);
  CHECK(kexue::roformer_v2_fan(2, 768) == 768);      // shape[0] < 10
  CHECK(kexue::roformer_v2_fan(10, 5) == 10);
  CHECK(kexue::roformer_v2_stddev(768, 3072, 12, 2) == Approx(1.13684723 / std::sqrt(768.0) / std::sqrt(12.0)));
  CHECK(kexue::roformer_v2_stddev(768, 3072, 24, 3) ==
        Approx(1.13684723 / std::sqrt(768.0) * std::pow(24.0, -1.0 / 3.0)));
  CHECK(kexue::roformer_v2_stddev(768, 3072, 24, 3, 0.5) ==
        Approx(0.5 * 1.13684723 / std::sqrt(768.0) * std::pow(24.0, -1.0 / 3.0)));
  // The weights: variance 1 / fan * L^(-2 / order) (the 1.13684723 undoes the truncation), |w| <= 2 stddev.
  for (double order : {2.0, 3.0}) {
    INFO("order " << order);
    Matrix<float> w(512, 384);
    PhiloxGenerator gen(31);
    kexue::init_roformer_v2(w, 12, order, gen);
    const double sd = kexue::roformer_v2_stddev(512, 384, 12, order);
    const Moments m = check_moments(w, 1.0 / 512 * std::pow(12.0, -2.0 / order) * (1.13684723 * 1.13684723 * 0.7737413));
    CHECK(m.max_abs <= 2 * sd * (1 + 1e-6));
    CHECK(m.max_abs > 1.99 * sd);
  }
  // Embedding rows use cols as the fan.
  Matrix<float> emb(12000, 16);
  PhiloxGenerator gen(32);
  kexue::init_roformer_v2(emb, 4, 2.0, gen);
  check_moments(emb, 1.0 / 16 / 4 * (1.13684723 * 1.13684723 * 0.7737413));
}

TEST_CASE("initialisers: bad input throws kexue::Error before anything is written", "[init][errors]") {
  Matrix<float> w = Matrix<float>::Constant(4, 6, 3.f);
  PhiloxGenerator gen(1);
  throws_with([&] { kexue::init_normal(w, -1.0, gen); }, "init_normal: stddev must be finite and >= 0, got -1");
  throws_with([&] { kexue::init_truncated_normal(w, std::nan(""), gen); }, "init_truncated_normal: stddev");
  throws_with([&] { kexue::init_roformer_v2(w, 0, 2.0, gen); }, "init_roformer_v2: num_layers must be >= 1");
  throws_with([&] { kexue::init_roformer_v2(w, 12, 0.0, gen); }, "order must be finite and > 0");
  throws_with([&] { kexue::init_xavier_uniform(w, gen, -1.0); }, "init_xavier_uniform: gain");
  throws_with([&] { kexue::init_variance_scaling(w, 0.0, FanMode::FanIn, InitDistribution::Normal, gen); },
              "scale must be finite and > 0");
  throws_with([] { (void)kexue::roformer_v2_stddev(0, 0, 12, 2.0); }, "its fan is 0");
  CHECK((w.array() == 3.f).all());
  CHECK(gen.offset() == 0);
  // Empty weights: nothing drawn.
  Matrix<float> none(0, 5);
  kexue::init_he_normal(none, gen);
  kexue::init_roformer_v2(none, 12, 2.0, gen);
  CHECK(gen.offset() == 0);
}
