// SPDX-License-Identifier: MIT
// Differential fuzzing of kexue::dense / dense_gated (dense.hpp) against the scalar chain the GEMM promises:
// y(i, j) = fma(x(i, p), W(p, j), acc) for p in order from acc = 0 (detail::madd: unfused without FMA hardware),
// then + b(j). Checked: without an activation out equals y bit for bit (NaN where y is NaN); with swish,
// |out - swish(y)| <= 16 eps(T) |swish(y)| + 4 min(T) |y| + 1024 min(T) (xsimd's exp to a few ulps; its argument
// is clamped to T's range, so a huge negative y gives |y| e^-88 in float instead of -0); the gate scales the first
// terms and adds one rounding; both have an absolute floor of 1024 min(T) in the subnormal range (findings: a
// denormal y / 2 times a gate of 1e30, and a denormal product, 2.8e-42). Also: rows run on their own (one row: the GEMV
// path) give the bits of the same rows of the whole call (the GEMM path), padding between rows is never read (NaN there
// would show) nor written, and bad shapes throw kexue::Error before anything is written. Shapes cross the 6-row
// register tile, the 16 / 32-column panels, the GEMV's groups of four panels and the 384-deep k blocks; values include
// +-inf, NaN, denormals and 1e30. Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_dense -max_total_time=600 -max_len=4096
#include <cstring>

#include "fuzz_input.hpp"
#include "kexue/dense.hpp"

using namespace kexue_fuzz;

namespace {

template <class T>
bool same_bits(T a, T b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <class T>
void fuzz_one(FuzzInput& in) {
  const Index m = in.size(40), k = 1 + in.size(800), n = 1 + in.size(150);
  const bool special = in.chance(48), bias = in.flag(), gated = in.flag();
  const auto act = in.flag() ? kexue::DenseActivation::Swish : kexue::DenseActivation::None;
  const Strided<T> x = matrix<T>(in, m, k, special), w = matrix<T>(in, k, n, special);
  kexue::Vector<T> b;
  if (bias) {
    b.resize(n);
    for (Index j = 0; j < n; ++j) b(j) = in.value<T>(special);
  }
  const Strided<T> gate = matrix<T>(in, m, n, special);
  const kexue::PackedDense<T> layer = kexue::dense_pack(w.cmap(), b);
  // A bad shape now and then: x one column short, out or gate one row off.
  const int bad = in.chance(12) ? 1 + in.byte() % 3 : 0;
  Strided<T> out = sentinel<T>(m + (bad == 2), n, in.range(0, 5));
  auto call = [&](const Strided<T>& xs, const Strided<T>& gs, Strided<T>& os) {
    if (gated)
      kexue::dense_gated(layer, xs.cmap(), gs.cmap(), os.map(), act);
    else
      kexue::dense(layer, xs.cmap(), os.map(), act);
  };
  if (bad) {
    Strided<T> xs = bad == 1 ? matrix<T>(in, m, k - 1 + 2 * (k == 1), false) : x;
    Strided<T> gs = bad == 3 ? matrix<T>(in, m + 1, n, false) : gate;
    const bool invalid = bad != 3 || gated;
    if (!run_checked(
            invalid, out.buf, [&] { call(xs, gs, out); }, "dense error contract"))
      return;
  } else {
    run_checked(
        false, out.buf, [&] { call(x, gate, out); }, "dense error contract");
  }
  if (out.rows != m) return;
  expect(out.padding_intact(), "dense wrote into out's row padding");
  const double eps = double(std::numeric_limits<T>::epsilon()), tiny = double(std::numeric_limits<T>::min());
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      T acc = T(0);
      for (Index p = 0; p < k; ++p) acc = kexue::detail::madd(x(i, p), w(p, j), acc);
      const T y = bias ? T(acc + b(j)) : acc;
      const double got = double(out(i, j));
      if (act == kexue::DenseActivation::None) {
        const T want = gated ? T(y * gate(i, j)) : y;
        expect(same_bits(out(i, j), want), "dense vs the scalar FMA chain (bits)", got, double(want));
        continue;
      }
      const double yd = double(y), s = yd / (1.0 + std::exp(-yd));
      const double g = gated ? double(gate(i, j)) : 1.0;
      const double want = std::isinf(yd) ? (yd > 0 ? yd : -0.0) * g : s * g;
      if (!std::isfinite(want) || !std::isfinite(yd)) continue;  // NaN / inf paths: no promise beyond no crash
      // swish(y) * gate past T's range (or at its edge) overflows, as T arithmetic does.
      if (std::abs(want) >= double(std::numeric_limits<T>::max()) * (1 - 32 * eps)) continue;
      // The swish's error (relative, and absolute in T's subnormal range, where y / 2 keeps no relative
      // precision) scaled by the gate, then the gate product's rounding (relative, and absolute in the subnormal
      // range, where a denormal gate leaves no relative precision).
      const double bound = (16 * eps * std::abs(s) + 4 * tiny * std::abs(yd) + 1024 * tiny) * std::abs(g) +
                           eps * std::abs(want) + 1024 * tiny;
      expect_near(got, want, bound, "dense swish vs the scalar chain");
    }
  // Rows on their own (one row: the GEMV path; 2-5: one padded tile) give the bits of the whole call's rows.
  if (m == 0 || bad) return;
  const Index r0 = in.range(0, m - 1), rows = std::min<Index>(m - r0, in.range(1, 5));
  Strided<T> xs(rows, k, 0), gs(rows, n, 0), os(rows, n, 0);
  for (Index i = 0; i < rows; ++i) {
    std::copy(x.row(r0 + i), x.row(r0 + i) + k, xs.row(i));
    std::copy(gate.row(r0 + i), gate.row(r0 + i) + n, gs.row(i));
  }
  call(xs, gs, os);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < n; ++j)
      expect(same_bits(os(i, j), out(r0 + i, j)), "dense: a row alone differs from the same row in a taller x",
             double(os(i, j)), double(out(r0 + i, j)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  if (in.flag())
    fuzz_one<float>(in);
  else
    fuzz_one<double>(in);
  return 0;
}
