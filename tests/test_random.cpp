// SPDX-License-Identifier: MIT
// TorchGenerator against torch.randn (bit for bit), Philox against its published known answers, thread-count
// independence, and statistical checks of both normal generators.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <kexue/random.hpp>
#include <random>
#include <string>
#include <vector>

#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::Index;
using kexue_test::RefData;

namespace {

const RefData& ref() {
  static const RefData r("random");
  return r;
}

// Compares float outputs with reference values bit for bit; returns the number of mismatches.
template <class T>
Index mismatches(const std::vector<T>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  Index bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const T w = static_cast<T>(want[i]);
    if (std::memcmp(&got[i], &w, sizeof(T)) != 0) ++bad;
  }
  return bad;
}

struct Moments {
  double mean = 0, var = 0, tail2 = 0, tail3 = 0, skew = 0, kurt = 0;
};
template <class T>
Moments moments(const std::vector<T>& v) {
  Moments m;
  const double n = double(v.size());
  for (T x : v) m.mean += x;
  m.mean /= n;
  double m3 = 0, m4 = 0;
  for (T x : v) {
    const double d = x - m.mean;
    m.var += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
    m.tail2 += std::abs(double(x)) > 2.0;
    m.tail3 += std::abs(double(x)) > 3.0;
  }
  m.var /= n;
  m.skew = m3 / n / std::pow(m.var, 1.5);
  m.kurt = m4 / n / (m.var * m.var);
  m.tail2 /= n;
  m.tail3 /= n;
  return m;
}

// Checks N(0, 1) statistics of n draws with ~5-sigma bounds: mean (sd 1/sqrt n), variance (sd sqrt(2/n)),
// P(|z|>2) = 0.0455 and P(|z|>3) = 0.0027 (binomial sd), skewness (sd sqrt(6/n)), kurtosis 3 (sd sqrt(24/n)).
template <class T>
void check_standard_normal(const std::vector<T>& v) {
  const double n = double(v.size());
  const Moments m = moments(v);
  CHECK(std::abs(m.mean) < 5 / std::sqrt(n));
  CHECK(std::abs(m.var - 1) < 5 * std::sqrt(2 / n));
  const double p2 = 0.04550026, p3 = 0.00269980;
  CHECK(std::abs(m.tail2 - p2) < 5 * std::sqrt(p2 * (1 - p2) / n));
  CHECK(std::abs(m.tail3 - p3) < 5 * std::sqrt(p3 * (1 - p3) / n));
  CHECK(std::abs(m.skew) < 5 * std::sqrt(6 / n));
  CHECK(std::abs(m.kurt - 3) < 5 * std::sqrt(24 / n));
}

}  // namespace

TEST_CASE("TorchGenerator matches torch.manual_seed + torch.randn bit for bit", "[random][torch]") {
  REQUIRE(ref().scalar("cpu_capability_avx2") == 1.0);  // the data came from torch's AVX2 kernels
  for (std::uint64_t seed : {0ull, 1ull, 42ull, 123ull, (1ull << 32) + 7}) {
    for (Index n : {1, 2, 3, 7, 15, 16, 17, 23, 31, 32, 33, 100, 257}) {
      const std::string name = "seed" + std::to_string(seed) + "/n" + std::to_string(n);
      INFO(name);
      kexue::TorchGenerator g(seed);
      std::vector<float> out(static_cast<std::size_t>(n));
      g.normal(out.data(), n);
      CHECK(mismatches(out, ref().values(name)) == 0);
    }
  }
  kexue::TorchGenerator g(7);
  kexue::Vector<float> big(5003);
  g.normal(big);  // the Eigen overload
  CHECK(mismatches(std::vector<float>(big.data(), big.data() + big.size()), ref().values("seed7/n5003")) == 0);
}

TEST_CASE("TorchGenerator: consecutive calls keep torch's state, including the cached Box-Muller value",
          "[random][torch]") {
  const Index sizes[] = {3, 20, 5, 1, 16, 2, 40, 7};
  kexue::TorchGenerator g(2024);
  for (int i = 0; i < 8; ++i) {
    const std::string name = "sequence/" + std::to_string(i) + "_n" + std::to_string(sizes[i]);
    INFO(name);
    std::vector<float> out(static_cast<std::size_t>(sizes[i]));
    g.normal(out.data(), sizes[i]);
    CHECK(mismatches(out, ref().values(name)) == 0);
  }
  // manual_seed resets the cache: an odd n < 16 draw then a reseed must start afresh.
  kexue::TorchGenerator h(5);
  std::vector<float> a(3), b(3);
  h.normal(a.data(), 3);
  h.manual_seed(5);
  h.normal(b.data(), 3);
  CHECK(a == b);
}

TEST_CASE("Mt19937: the bulk generator is std::mt19937's sequence", "[random][torch]") {
  // Single draws and runs of every awkward length (inside one state block, exactly one block, across one or
  // several twists), interleaved, against the standard library's engine.
  for (std::uint32_t seed : {0u, 1u, 5489u, 0xffffffffu, 0x2a5e1f3du}) {
    INFO("seed " << seed);
    std::mt19937 want(seed);
    kexue::detail::Mt19937 got(seed);
    Index bad = 0, drawn = 0;
    std::vector<std::uint32_t> run;
    for (Index len : {1, 7, 8, 9, 623, 624, 625, 0, 1000, 3, 1248, 5000, 17}) {
      run.assign(static_cast<std::size_t>(len) + 8, 0xdeadbeefu);  // guard words after the run
      got.generate(run.data(), len);
      for (Index i = 0; i < len; ++i) bad += run[std::size_t(i)] != want();
      for (std::size_t i = std::size_t(len); i < run.size(); ++i) bad += run[i] != 0xdeadbeefu;
      bad += got() != want();
      drawn += len + 1;
    }
    CHECK(drawn > 3 * 624);
    CHECK(bad == 0);
    got.reseed(seed);  // reseeding restarts the sequence
    want.seed(seed);
    for (int i = 0; i < 700; ++i) bad += got() != want();
    CHECK(bad == 0);
  }
}

TEST_CASE("TorchGenerator double output matches torch.randn(dtype=float64)", "[random][torch]") {
  for (Index n : {1, 5, 15, 16, 17, 40}) {
    INFO("n = " << n);
    kexue::TorchGenerator g(99);
    kexue::Vector<double> out(n);
    g.normal(out);
    CHECK(mismatches(std::vector<double>(out.data(), out.data() + n), ref().values("double/n" + std::to_string(n))) ==
          0);
  }
}

TEST_CASE("torch's AVX2 Box-Muller: the vector kernel (any width) equals its one-lane port", "[random][torch]") {
  // Uniforms across the whole range, including 0 (u1 = 1, log 0 = 0) and the largest (u1 = 2^-24).
  std::vector<float> u(16 * 64);
  std::mt19937 e(3);
  for (auto& v : u) v = float(e() & 0xFFFFFF) * (1.0f / 16777216.0f);
  u[0] = 0.0f;
  u[1] = 16777215.0f / 16777216.0f;
  u[9] = 16777215.0f / 16777216.0f;  // theta just below 2 pi
  u[10] = 0.25f;                     // theta = pi / 2: sin/cos polynomial switch
  std::vector<float> a = u, b = u;
  for (std::size_t i = 0; i < u.size(); i += 16) {
    kexue::detail::torch_normal_fill_16(a.data() + i);
    kexue::detail::torch_normal_fill_16_scalar(b.data() + i);
  }
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  // Many chunks in one call (16 lanes take two chunks per register pair), an odd count included.
  for (Index chunks : {Index(64), Index(63), Index(3)}) {
    std::vector<float> c = u;
    kexue::detail::torch_normal_fill_chunks(c.data(), chunks);
    CHECK(std::memcmp(c.data(), b.data(), std::size_t(16 * chunks) * sizeof(float)) == 0);
    CHECK(std::equal(c.begin() + 16 * chunks, c.end(), u.begin() + 16 * chunks));  // nothing past the chunks
  }
  CHECK(std::all_of(a.begin(), a.end(), [](float v) { return std::isfinite(v); }));
  CHECK(a[0] == 0.0f);  // u1 = 1 gives radius 0
  // The Cephes log is accurate to ~1 ulp of the true value.
  for (float x : {1e-7f, 0.001f, 0.3f, 0.70710677f, 0.9999f, 1.0f})
    CHECK(std::abs(kexue::detail::torch_log_lane(x) - std::log(double(x))) <=
          2e-7 * std::max(1.0, std::abs(std::log(double(x)))));
}

TEST_CASE("TorchGenerator: statistics of a long stream", "[random][stats]") {
  kexue::TorchGenerator g(31337);
  std::vector<float> v(400000);
  g.normal(v.data(), Index(v.size()));
  check_standard_normal(v);
  // The n < 16 path too: many short calls.
  std::vector<float> w;
  std::vector<float> tmp(7);
  for (int i = 0; i < 20000; ++i) {
    g.normal(tmp.data(), 7);
    w.insert(w.end(), tmp.begin(), tmp.end());
  }
  check_standard_normal(w);
}

TEST_CASE("Philox4x32-10 known answers (Random123 kat_vectors)", "[random][philox]") {
  using kexue::detail::philox4x32_10;
  std::uint32_t out[4];
  {
    const std::uint32_t c[4] = {0, 0, 0, 0}, k[2] = {0, 0};
    philox4x32_10(c, k, out);
    CHECK(out[0] == 0x6627e8d5u);
    CHECK(out[1] == 0xe169c58du);
    CHECK(out[2] == 0xbc57ac4cu);
    CHECK(out[3] == 0x9b00dbd8u);
  }
  {
    const std::uint32_t c[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, k[2] = {0xffffffffu, 0xffffffffu};
    philox4x32_10(c, k, out);
    CHECK(out[0] == 0x408f276du);
    CHECK(out[1] == 0x41c83b0eu);
    CHECK(out[2] == 0xa20bc7c6u);
    CHECK(out[3] == 0x6d5451fdu);
  }
  {
    const std::uint32_t c[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, k[2] = {0xa4093822u, 0x299f31d0u};
    philox4x32_10(c, k, out);
    CHECK(out[0] == 0xd16cfe09u);
    CHECK(out[1] == 0x94fdccebu);
    CHECK(out[2] == 0x5001e420u);
    CHECK(out[3] == 0x24126ea1u);
  }
  // The vector group kernel equals the scalar one block by block, and the scalar one the known answers.
  std::uint32_t w[4][8];
  const std::uint64_t seed = 0x0123456789abcdefull, first = (1ull << 32) - 3;  // crosses the counter's word boundary
  kexue::detail::philox_group_words(seed, first, w);
  for (int l = 0; l < 8; ++l) {
    const std::uint64_t b = first + std::uint64_t(l);
    const std::uint32_t c[4] = {std::uint32_t(b), std::uint32_t(b >> 32), 0, 0};
    const std::uint32_t k[2] = {std::uint32_t(seed), std::uint32_t(seed >> 32)};
    philox4x32_10(c, k, out);
    for (int j = 0; j < 4; ++j) CHECK(w[j][l] == out[j]);
  }
  std::uint32_t ws[4][8];
  kexue::detail::philox_group_words_scalar(seed, first, ws);
  CHECK(std::memcmp(ws, w, sizeof ws) == 0);
}

TEST_CASE("Philox Box-Muller: vector and scalar lanes agree bit for bit, and match libm", "[random][philox]") {
  // Words around every special point: 0, all ones, quadrant boundaries of the angle (multiples of 2^30 before
  // the >> 8), the sqrt(2) switch of the log, plus random words.
  std::vector<std::uint32_t> a, b;
  std::mt19937 e(11);
  const std::uint32_t specials[] = {0u,          1u << 8,     0xFFFFFFFFu, 0xFFFFFF00u, 0x3FFFFFFFu, 0x40000000u,
                                    0x7FFFFFFFu, 0x80000000u, 0xBFFFFFFFu, 0xC0000000u, 0x20000000u, 0x5A827999u};
  for (std::uint32_t x : specials)
    for (std::uint32_t y : specials) {
      a.push_back(x);
      b.push_back(y);
    }
  while (a.size() % 16 != 0 || a.size() < 4096) {
    a.push_back(e());
    b.push_back(e());
  }
  const std::size_t n = a.size();
  std::vector<float> vc(n), vs(n), sc(n), ss(n);
  // 16 at a time: whole registers of every width (4, 8, 16 lanes) go through the vector kernel.
  for (std::size_t i = 0; i < n; i += 16) kexue::detail::box_muller_lanes<16>(&a[i], &b[i], &vc[i], &vs[i]);
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i) {
    kexue::detail::box_muller_lane(a[i], b[i], &sc[i], &ss[i]);
    // Against double-precision libm on the same uniforms.
    const double u1 = double((a[i] >> 8) + 1) / 16777216.0, u2 = double(b[i] >> 8) / 16777216.0;
    const double r = std::sqrt(-2 * std::log(u1)), th = 2 * 3.14159265358979323846 * u2;
    worst = std::max({worst, std::abs(sc[i] - r * std::cos(th)), std::abs(ss[i] - r * std::sin(th))});
  }
  CHECK(std::memcmp(vc.data(), sc.data(), n * sizeof(float)) == 0);
  CHECK(std::memcmp(vs.data(), ss.data(), n * sizeof(float)) == 0);
  CHECK(worst < 3e-6);  // a few float ulps of a value <= 5.8
}

TEST_CASE("Philox normals: value p is a function of (seed, p) only", "[random][philox]") {
  const Index n = 1000;
  std::vector<float> whole(static_cast<std::size_t>(n));
  kexue::PhiloxGenerator g(77, 5);
  g.normal(whole.data(), n);
  CHECK(g.offset() == 5 + std::uint64_t(n));
  // Any split into calls gives the same stream.
  kexue::PhiloxGenerator h(77, 5);
  std::vector<float> parts(static_cast<std::size_t>(n));
  Index done = 0;
  for (Index len : {1, 3, 31, 32, 33, 64, 100, 736}) {
    h.normal(parts.data() + done, len);
    done += len;
  }
  REQUIRE(done == n);
  CHECK(parts == whole);
  // fill_at at an arbitrary position equals the slice of a longer fill.
  std::vector<float> slice(100);
  kexue::PhiloxGenerator::fill_at(77, 5 + 437, slice.data(), 100);
  CHECK(std::equal(slice.begin(), slice.end(), whole.begin() + 437));
  // Double outputs are the float values widened.
  std::vector<double> wide(static_cast<std::size_t>(n));
  kexue::PhiloxGenerator::fill_at(77, 5, wide.data(), n);
  CHECK(std::equal(wide.begin(), wide.end(), whole.begin(), [](double w, float f) { return w == double(f); }));
  // Different seeds give different streams.
  std::vector<float> other(static_cast<std::size_t>(n));
  kexue::PhiloxGenerator(78, 5).normal(other.data(), n);
  CHECK(other != whole);
}

TEST_CASE("Philox normals follow their definition, across the counter's 32-bit word boundary", "[random][philox]") {
  // Value p: group g = p / 32, r = p % 32, block 8 g + r % 8, Box-Muller pair (r / 8) / 2 of that block's
  // words, cosine half for even r / 8, sine half for odd. Computed here from the scalar Philox and lane.
  const std::uint64_t seed = 0xfeedfacecafebeefull;
  const std::uint64_t start = ((1ull << 32) - 40) * 4;  // blocks 2^32 - 40 ..: the fast paths must carry
  const Index n = 1000;
  std::vector<float> got(static_cast<std::size_t>(n));
  kexue::PhiloxGenerator::fill_at(seed, start + 3, got.data(), n);
  Index bad = 0;
  for (Index i = 0; i < n; ++i) {
    const std::uint64_t p = start + 3 + std::uint64_t(i);
    const std::uint64_t g = p / 32, r = p % 32, block = 8 * g + r % 8, j = r / 8;
    const std::uint32_t ctr[4] = {std::uint32_t(block), std::uint32_t(block >> 32), 0, 0};
    const std::uint32_t key[2] = {std::uint32_t(seed), std::uint32_t(seed >> 32)};
    std::uint32_t w[4];
    kexue::detail::philox4x32_10(ctr, key, w);
    float c, s;
    kexue::detail::box_muller_lane(w[2 * (j / 2)], w[2 * (j / 2) + 1], &c, &s);
    const float want = j % 2 == 0 ? c : s;
    bad += std::memcmp(&want, &got[std::size_t(i)], sizeof(float)) != 0;
  }
  CHECK(bad == 0);
}

TEST_CASE("Philox normals are bitwise identical for 1 and 2 threads", "[random][philox][threads]") {
  const Index n = 3 * 16384 * 2 + 123;  // several parallel chunks and a ragged end
  std::vector<float> a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  kexue::PhiloxGenerator::fill_at(9, 11, a.data(), n);
#if defined(_OPENMP)
  omp_set_num_threads(2);
#endif
  kexue::PhiloxGenerator::fill_at(9, 11, b.data(), n);
#if defined(_OPENMP)
  omp_set_num_threads(saved);
#endif
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  // And equal to the serial fill in small pieces.
  std::vector<float> c(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; i += 1000)
    kexue::detail::philox_normal_serial(9, 11 + std::uint64_t(i), c.data() + i, std::min<Index>(1000, n - i));
  CHECK(c == a);
}

TEST_CASE("Philox normals: statistics", "[random][philox][stats]") {
  std::vector<float> v(1 << 20);
  kexue::PhiloxGenerator(2026).normal(v.data(), Index(v.size()));
  check_standard_normal(v);
  CHECK(std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); }));
  // Uncorrelated: the two halves of one Box-Muller pair (p, p + 8 in a group), the two pairs of one block
  // (p, p + 16) and neighbouring positions (p, p + 1: neighbouring blocks).
  double pair = 0, block = 0, next = 0;
  Index count = 0;
  for (std::size_t g = 0; g + 32 <= v.size(); g += 32)
    for (std::size_t l = 0; l < 8; ++l, ++count) {
      pair += double(v[g + l]) * v[g + 8 + l];
      block += double(v[g + l]) * v[g + 16 + l];
      next += double(v[g + l]) * v[g + l + 1];
    }
  const double c = double(count);
  CHECK(std::abs(pair / c) < 5 / std::sqrt(c));
  CHECK(std::abs(block / c) < 5 / std::sqrt(c));
  CHECK(std::abs(next / c) < 5 / std::sqrt(c));
  // The squared halves of a pair are independent too (r^2 cos^2 and r^2 sin^2 of the same r are not, for a
  // broken transform that reuses r incorrectly): E[x^2 y^2] = 1.
  double sq = 0;
  for (std::size_t g = 0; g + 32 <= v.size(); g += 32)
    for (std::size_t l = 0; l < 8; ++l) sq += double(v[g + l]) * v[g + l] * v[g + 8 + l] * v[g + 8 + l];
  CHECK(std::abs(sq / c - 1) < 5 * std::sqrt(8 / c));
}

TEST_CASE("Random generators: bad input", "[random][errors]") {
  kexue::PhiloxGenerator g(1);
  std::vector<float> v(4, 7.0f);
  CHECK_THROWS_AS(g.normal(v.data(), -1), kexue::Error);
  CHECK(v[0] == 7.0f);
  CHECK(g.offset() == 0);
  // A non-contiguous output (a column of a row-major matrix) is rejected before anything is written.
  kexue::Matrix<float> m = kexue::Matrix<float>::Constant(4, 3, 7.0f);
  CHECK_THROWS_AS(g.normal(m.col(1)), kexue::Error);
  kexue::TorchGenerator t(1);
  CHECK_THROWS_AS(t.normal(m.col(1)), kexue::Error);
  CHECK((m.array() == 7.0f).all());
  // n = 0 is a no-op.
  g.normal(v.data(), 0);
  t.normal(v.data(), Index(0));
  CHECK(v[0] == 7.0f);
}
