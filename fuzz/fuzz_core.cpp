// SPDX-License-Identifier: MIT
// Differential fuzzing of the SIMD row helpers against scalar double loops.
#include <algorithm>

#include "fuzz_input.hpp"
#include "kexue/detail/simd.hpp"

using namespace kexue_fuzz;
namespace kd = kexue::detail;

template <class T>
static void check_softmax(FuzzInput& in) {
  const Index n = in.size(300);
  const Index offset = in.range(0, 7);
  std::vector<T> buf(static_cast<std::size_t>(n + offset));
  T* x = buf.data() + offset;
  const auto src = in.values<T>(n, true);
  std::copy(src.begin(), src.end(), x);
  const bool has_nan = std::any_of(src.begin(), src.end(), [](T v) { return std::isnan(v); });
  kd::softmax_row(x, n);
  if (has_nan) return;  // NaN input: no promise beyond not crashing
  double m = -INFINITY;
  for (T v : src) m = std::max(m, double(v));
  const double tol = std::is_same<T, float>::value ? 2e-5 : 1e-12;
  if (!(m > -INFINITY)) {
    for (Index i = 0; i < n; ++i) expect(x[i] == T(0), "fully masked row must be zeros");
    return;
  }
  if (std::isinf(m)) return;  // +inf entries: defined by the unit test, shares mass among the +inf entries
  double s = 0;
  for (T v : src) s += std::exp(double(v) - m);
  double total = 0;
  for (Index i = 0; i < n; ++i) {
    expect_close(x[i], std::exp(double(src[i]) - m) / s, tol, "softmax_row vs scalar");
    total += x[i];
  }
  expect_close(total, 1.0, tol * 10, "softmax row sum");
}

template <class T>
static void check_dot(FuzzInput& in) {
  const Index n = in.size(300);
  const auto a = in.values<T>(n, false);
  const auto b = in.values<T>(n, false);
  double ref = 0, mag = 0;
  for (Index i = 0; i < n; ++i) {
    ref += double(a[i]) * b[i];
    mag += std::abs(double(a[i]) * b[i]);
  }
  const double got = kd::dot(a.data(), b.data(), n);
  const double eps = std::is_same<T, float>::value ? 1e-6 : 1e-14;
  expect(std::abs(got - ref) <= eps * (n + 1) * std::max(1.0, mag), "dot vs scalar", got, ref);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  if (in.flag()) {
    check_softmax<float>(in);
    check_dot<float>(in);
  } else {
    check_softmax<double>(in);
    check_dot<double>(in);
  }
  return 0;
}
