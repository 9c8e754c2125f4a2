// SPDX-License-Identifier: MIT
// The SIMD row helpers against scalar double references over sizes around the lane count, misaligned
// pointers and NaN guards, plus torch.softmax reference values.
#include <cmath>
#include <cstring>
#include <vector>

#include "kexue/detail/arch/ops.hpp"
#include "kexue/detail/simd.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

using namespace kexue_test;
namespace kd = kexue::detail;

TEMPLATE_TEST_CASE("row helpers match scalar references", "[detail][simd]", float, double) {
  using T = TestType;
  constexpr Index L = kd::kLanes<T>;
  const double tol = std::is_same<T, float>::value ? 1e-5 : 1e-13;
  for (Index n : lane_sizes(L)) {
    for (Index offset : {Index(0), Index(1), std::max<Index>(L / 4, 1)}) {
      CAPTURE(n, offset);
      PaddedBuffer<T> a(n, offset), b(n, offset);
      auto va = random_values<T>(n, 11 + static_cast<std::uint32_t>(n), T(-2), T(2));
      auto vb = random_values<T>(n, 97 + static_cast<std::uint32_t>(n), T(-2), T(2));
      std::copy(va.begin(), va.end(), a.data());
      std::copy(vb.begin(), vb.end(), b.data());

      double dot_ref = 0, sum_ref = 0, max_ref = -INFINITY;
      for (Index i = 0; i < n; ++i) {
        dot_ref += double(va[i]) * vb[i];
        sum_ref += va[i];
        max_ref = std::max(max_ref, double(va[i]));
      }
      CHECK(std::abs(kd::dot(a.data(), b.data(), n) - dot_ref) <= tol * (n + 1));
      CHECK(std::abs(kd::row_sum(a.data(), n) - sum_ref) <= tol * (n + 1));
      CHECK(double(kd::row_max(a.data(), n)) == max_ref);

      kd::axpy(T(0.5), a.data(), b.data(), n);
      for (Index i = 0; i < n; ++i) CHECK(std::abs(b.data()[i] - (vb[i] + 0.5 * double(va[i]))) <= tol * 4);
      kd::scale(T(-3), a.data(), n);
      for (Index i = 0; i < n; ++i) CHECK(std::abs(a.data()[i] + 3.0 * va[i]) <= tol * 4);

      std::copy(va.begin(), va.end(), a.data());
      kd::softmax_row(a.data(), n);
      double s = 0;
      for (Index i = 0; i < n; ++i) s += std::exp(double(va[i]) - max_ref);
      for (Index i = 0; i < n; ++i) CHECK(std::abs(a.data()[i] - std::exp(double(va[i]) - max_ref) / s) <= tol);
      CHECK(a.guards_intact(n));
      CHECK(b.guards_intact(n));
    }
  }
}

TEMPLATE_TEST_CASE("softmax_row defines masked and infinite rows", "[detail][simd]", float, double) {
  using T = TestType;
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> all_masked(13, -inf);
  kd::softmax_row(all_masked.data(), 13);
  for (T x : all_masked) CHECK(x == T(0));

  std::vector<T> with_pos_inf = {1, inf, -inf, 3, inf};
  kd::softmax_row(with_pos_inf.data(), 5);
  CHECK(with_pos_inf == std::vector<T>{0, T(0.5), 0, 0, T(0.5)});

  std::vector<T> huge = {T(1e30), T(-1e30), T(1e30)};
  kd::softmax_row(huge.data(), 3);
  for (T x : huge) CHECK(std::isfinite(x));
  CHECK(huge[0] == Approx(0.5));
  CHECK(huge[1] == T(0));
  kd::softmax_row<T>(nullptr, 0);  // empty row: nothing to do, nothing read
}

TEMPLATE_TEST_CASE("softmax_row matches torch.softmax", "[detail][simd][torch]", float, double) {
  using T = TestType;
  const RefData ref("core");
  for (int n : {1, 7, 8, 9, 33, 100}) {
    CAPTURE(n);
    const std::string c = "softmax_" + std::to_string(n);
    kexue::Matrix<T> x = ref.matrix<T>(c + "/x");
    const kexue::Matrix<double> y = ref.matrix<double>(c + "/y");
    for (Index r = 0; r < x.rows(); ++r) kd::softmax_row(x.row(r).data(), x.cols());
    CHECK(nmse(x, y) < nmse_bound<T>());
    CHECK(max_abs_diff(x, y) < (std::is_same<T, float>::value ? 1e-6 : 1e-14));
  }
  const auto a = ref.vector<T>("dot/a");
  const auto b = ref.vector<T>("dot/b");
  CHECK(kd::dot(a.data(), b.data(), a.size()) == Approx(ref.scalar("dot/y")).epsilon(1e-6));
}

// ---- per-architecture helpers against their generic definitions (bitwise), on whatever width this build has ----

TEMPLATE_TEST_CASE("reduce_add_lanes equals reduce_add lane by lane, bit for bit", "[detail][simd]", float, double) {
  using T = TestType;
  constexpr Index L = kd::kLanes<T>;
  for (std::uint32_t seed = 0; seed < 200; ++seed) {
    // Magnitudes spread over many binades, so that a different summation order would change the bits.
    auto v = random_values<T>(L * L, 1000 + seed, T(-1), T(1));
    for (Index i = 0; i < L * L; ++i) v[std::size_t(i)] *= T(std::ldexp(1.0, int(i % 23) - 11));
    std::vector<kd::Batch<T>> t;
    for (Index u = 0; u < L; ++u) t.push_back(kd::load(v.data() + u * L));
    alignas(64) T fast[L], generic[L];
    kd::store(fast, kd::reduce_add_lanes<T>(t.data()));
    kd::store(generic, kd::generic::reduce_add_lanes<T>(t.data()));
    CAPTURE(seed);
    CHECK(std::memcmp(fast, generic, sizeof fast) == 0);
  }
}
