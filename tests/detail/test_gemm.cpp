// SPDX-License-Identifier: MIT
// Tests of kexue's packed GEMM (detail/gemm.hpp): against a double-accumulating scalar reference and,
// bit for bit, against the float/double multiply-add chain the kernel promises (kd::madd: fused where
// xsimd::fma is, as on FMA3, AVX-512 and NEON; a multiply then an add on baseline SSE2), over odd shapes
// around the register tile (kMr, kNr), the k block (kKc) and the row block (kMc); strided, Block and Map operands in
// NaN-guarded buffers; B given transposed; the fused epilogue (bias, swish, gate); prefixes of a packed B;
// 1 vs 2 threads bitwise.

#include "kexue/detail/gemm.hpp"  // before Eigen: see simd.hpp on GCC 12's AVX-512 warnings

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kexue/detail/gemm.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::Index;
using kexue::Matrix;
using namespace kexue_test;
namespace kd = kexue::detail;

namespace {

/// A [rows, cols] matrix with row stride `stride` placed `offset` values into a NaN-guarded buffer.
template <class T>
struct Guarded {
  PaddedBuffer<T> buf;
  Index rows, cols, stride;
  Guarded(Index r, Index c, Index pad, Index offset, std::uint32_t seed, bool nan_fill = false)
      : buf(std::max<Index>(1, r * (c + pad)), offset), rows(r), cols(c), stride(c + pad) {
    const auto v = random_values<T>(r * c, seed, T(-1), T(1));
    for (Index i = 0; i < r; ++i)
      for (Index j = 0; j < c; ++j)
        buf.data()[i * stride + j] = nan_fill ? std::numeric_limits<T>::quiet_NaN() : v[std::size_t(i * c + j)];
  }
  T& at(Index i, Index j) { return buf.data()[i * stride + j]; }
  kd::View<const T> view() { return {buf.data(), rows, cols, stride}; }
  kd::View<T> mut_view() { return {buf.data(), rows, cols, stride}; }
  /// Guards around the allocation and the gaps between rows still hold NaN.
  bool untouched_outside() {
    if (!buf.guards_intact(std::max<Index>(1, rows * stride))) return false;
    for (Index i = 0; i < rows; ++i)
      for (Index j = cols; j < stride; ++j)
        if (!std::isnan(buf.data()[i * stride + j])) return false;
    return true;
  }
};

struct Shape {
  Index m, k, n;
};

template <class T>
struct Epi {
  bool bias = false, swish = false, gate = false;
};

/// The promise of the kernel: C(i, j) is acc = madd(A(i, p), B(p, j), acc) for p = 0..k-1 from acc = 0, then
/// the epilogue, with madd rounding as xsimd::fma does on this target (once where it is fused, twice on SSE2).
/// Without an epilogue the kernel must match this bit for bit.
template <class T>
T fma_chain(Guarded<T>& a, Guarded<T>& b, bool bt, Index i, Index j) {
  T acc = T(0);
  for (Index p = 0; p < a.cols; ++p) acc = kd::madd(a.at(i, p), bt ? b.at(j, p) : b.at(p, j), acc);
  return acc;
}

/// Double-accumulating reference with the epilogue in double; `bound` gets sum_p |A B| (the error scale).
template <class T>
double reference(Guarded<T>& a, Guarded<T>& b, bool bt, Index i, Index j, const std::vector<T>& bias, Guarded<T>* gate,
                 bool swish, double& bound) {
  double acc = 0;
  bound = 0;
  for (Index p = 0; p < a.cols; ++p) {
    const double x = double(a.at(i, p)) * double(bt ? b.at(j, p) : b.at(p, j));
    acc += x;
    bound += std::abs(x);
  }
  if (!bias.empty()) {
    acc += double(bias[std::size_t(j)]);
    bound += std::abs(double(bias[std::size_t(j)]));
  }
  if (swish) acc = acc / (1.0 + std::exp(-acc));
  if (gate) acc *= double(gate->at(i, j));
  return acc;
}

/// Runs gemm() on guarded operands and checks every element and every guard.
template <class T>
void check_shape(Shape s, bool bt, Epi<T> ep, Index pad, Index offset, std::uint32_t seed) {
  CAPTURE(s.m, s.k, s.n, bt, ep.bias, ep.swish, ep.gate, pad, offset);
  Guarded<T> a(s.m, s.k, pad, offset, seed);
  Guarded<T> b(bt ? s.n : s.k, bt ? s.k : s.n, pad + 1, offset, seed + 1);
  Guarded<T> c(s.m, s.n, pad + 2, offset, seed + 2, /*nan_fill=*/true);
  Guarded<T> gate(s.m, s.n, pad, offset, seed + 3);
  std::vector<T> bias = ep.bias ? random_values<T>(s.n, seed + 4, T(-1), T(1)) : std::vector<T>{};
  kd::GemmEpilogue<T> e;
  if (ep.bias) e.bias = bias.data();
  e.swish = ep.swish;
  if (ep.gate) {
    e.gate = gate.view().data;
    e.gate_stride = gate.stride;
  }
  kd::GemmWorkspace<T> ws;
  kd::gemm(a.view(), b.view(), bt, c.mut_view(), e, ws);
  CHECK(c.untouched_outside());
  const bool plain = !ep.bias && !ep.swish && !ep.gate;
  const double eps = std::numeric_limits<T>::epsilon();
  Index bad = 0, not_chain = 0;
  for (Index i = 0; i < s.m; ++i)
    for (Index j = 0; j < s.n; ++j) {
      double bound = 0;
      const double want = reference(a, b, bt, i, j, bias, ep.gate ? &gate : nullptr, ep.swish, bound);
      const double got = double(c.at(i, j));
      // Error of a length-k dot product: k eps sum |a b| (worst case); the epilogue adds a few eps.
      const double tol = (double(s.k) + 8) * eps * (bound + std::abs(want) + 1e-30);
      if (!(std::abs(got - want) <= tol)) ++bad;
      if (plain && !(c.at(i, j) == fma_chain(a, b, bt, i, j))) ++not_chain;
    }
  CHECK(bad == 0);
  CHECK(not_chain == 0);
}

template <class T>
std::vector<Shape> odd_shapes() {
  constexpr Index mr = kd::kGemmMr, nr = kd::kGemmNr<T>, kc = kd::kGemmKc;
  return {{0, 5, 7},           {5, 0, 7},           {5, 7, 0},           {1, 1, 1},          {mr, 3, nr},
          {mr - 1, 3, nr - 1}, {mr + 1, 3, nr + 1}, {2 * mr + 1, 17, 2 * nr + 3},          {13, kc - 1, 9},
          {7, kc, nr + 1},     {mr + 1, kc + 1, 5}, {4, 2 * kc + 3, nr - 1},               {3, 1, 3 * nr + 5},
          {kd::kGemmMc - 1, 9, 3}, {kd::kGemmMc + mr + 1, 11, nr + 2}, {31, 40, kd::kGemmNc + nr + 3}};
}

template <class T>
void run_odd_shapes() {
  std::uint32_t seed = 10;
  for (const Shape& s : odd_shapes<T>()) {
    for (bool bt : {false, true}) {
      check_shape<T>(s, bt, {}, 0, 0, seed++);
      check_shape<T>(s, bt, {}, 3, 1, seed++);
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("gemm equals the fma chain and the double reference over odd shapes", "[gemm]", float, double) {
  run_odd_shapes<TestType>();
}

TEMPLATE_TEST_CASE("gemm epilogue: bias, swish, gate and their combinations", "[gemm]", float, double) {
  using T = TestType;
  constexpr Index nr = kd::kGemmNr<T>;
  const std::vector<Shape> shapes = {{1, 1, 1}, {7, 13, nr + 1}, {13, kd::kGemmKc + 2, 2 * nr - 1}, {6, 0, nr}};
  std::uint32_t seed = 100;
  for (const Shape& s : shapes)
    for (int mask = 1; mask < 8; ++mask) {
      Epi<T> ep;
      ep.bias = (mask & 1) != 0;
      ep.swish = (mask & 2) != 0;
      ep.gate = (mask & 4) != 0;
      check_shape<T>(s, false, ep, 2, 1, seed++);
      check_shape<T>(s, true, ep, 0, 0, seed++);
    }
}

TEMPLATE_TEST_CASE("gemm swish epilogue on huge values gives the limits, never NaN", "[gemm]", float, double) {
  using T = TestType;
  const T big = std::numeric_limits<T>::max() / T(4);
  // One row of A times a 1 x 4 B: the products are +-big, +-1e30-ish, and the bias shifts nothing.
  Matrix<T> a(1, 1), b(1, 4), c(1, 4);
  a(0, 0) = T(1);
  b << big, -big, T(-1e4), T(1e4);
  kd::GemmEpilogue<T> e;
  e.swish = true;
  kd::GemmWorkspace<T> ws;
  kd::gemm<T>({a.data(), 1, 1, 1}, {b.data(), 1, 4, 4}, false, {c.data(), 1, 4, 4}, e, ws);
  CHECK(c(0, 0) == big);
  CHECK(c(0, 1) == T(0));
  CHECK(c(0, 2) == T(0));
  CHECK(c(0, 3) == T(1e4));
  for (Index j = 0; j < 4; ++j) CHECK_FALSE(std::isnan(c(0, j)));
}

TEMPLATE_TEST_CASE("gemm takes Block and Map operands through make_view", "[gemm]", float, double) {
  using T = TestType;
  Matrix<T> big_a = Matrix<T>::Random(40, 50), big_b = Matrix<T>::Random(60, 45), big_c = Matrix<T>::Zero(30, 70);
  // A = rows 3..29, columns 5..41 of big_a; B = a Map with a row stride over big_b; C = a block of big_c.
  auto a_blk = big_a.block(3, 5, 27, 37);
  Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>> b_map(big_b.data() + 2, 37, 21, Eigen::OuterStride<>(45));
  auto c_blk = big_c.block(1, 4, 27, 21);
  const auto av = kd::make_view("gemm", "a", a_blk);
  const auto bv = kd::make_view("gemm", "b", b_map);
  const auto cv = kd::make_mut_view("gemm", "c", c_blk);
  kd::GemmWorkspace<T> ws;
  kd::gemm(av, bv, false, cv, kd::GemmEpilogue<T>{}, ws);
  const Matrix<T> want = a_blk * b_map;
  CHECK(max_abs_diff(Matrix<T>(c_blk), want) <= 64 * std::numeric_limits<T>::epsilon());
  // Outside the block big_c is still zero.
  Matrix<T> outside = big_c;
  outside.block(1, 4, 27, 21).setZero();
  CHECK(outside.cwiseAbs().maxCoeff() == T(0));
}

TEMPLATE_TEST_CASE("gemm_rows on prefixes of a packed B equals packing the prefix", "[gemm]", float, double) {
  using T = TestType;
  // GAU packs k^T and v once and multiplies causal query tiles by their first `keys` columns / rows.
  const Index k = 2 * kd::kGemmKc + 17, n = 3 * kd::kGemmNr<T> + 5, m = 11;
  Guarded<T> a(m, k, 0, 0, 7), b(k, n, 0, 0, 8);
  kd::GemmBuffer<T> packed(std::size_t(kd::gemm_packed_b_size<T>(k, n)));
  const kd::PackedB<T> pb = kd::gemm_pack_b(b.view(), false, packed.data(), false);
  kd::GemmBuffer<T> apack(std::size_t(kd::gemm_packed_a_size<T>(k)));
  for (Index kp : {Index(1), kd::kGemmKc - 1, kd::kGemmKc + 1, k})
    for (Index np : {Index(1), kd::kGemmNr<T> + 1, n}) {
      CAPTURE(kp, np);
      Matrix<T> c1(m, np), c2(m, np);
      kd::gemm_rows<T>({a.view().data, m, kp, a.stride}, pb, {c1.data(), m, np, np}, {}, apack.data());
      kd::GemmWorkspace<T> ws;
      kd::gemm<T>({a.view().data, m, kp, a.stride}, {b.view().data, kp, np, b.stride}, false, {c2.data(), m, np, np},
                  {}, ws);
      CHECK(c1 == c2);
    }
}

TEMPLATE_TEST_CASE("gemm is bitwise identical for 1 and 2 threads and with a reused workspace", "[gemm]", float,
                   double) {
  using T = TestType;
  const Index m = 2 * kd::kGemmMc + 7, k = kd::kGemmKc + 9, n = 2 * kd::kGemmNc + 3;
  Guarded<T> a(m, k, 1, 0, 21), b(k, n, 0, 0, 22), gate(m, n, 0, 0, 23);
  const std::vector<T> bias = random_values<T>(n, 24, T(-1), T(1));
  kd::GemmEpilogue<T> e;
  e.bias = bias.data();
  e.swish = true;
  e.gate = gate.view().data;
  e.gate_stride = gate.stride;
  Matrix<T> c1(m, n), c2(m, n), c3(m, n);
  kd::GemmWorkspace<T> ws;
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  kd::gemm<T>(a.view(), b.view(), false, {c1.data(), m, n, n}, e, ws);
#if defined(_OPENMP)
  omp_set_num_threads(2);
#endif
  kd::gemm<T>(a.view(), b.view(), false, {c2.data(), m, n, n}, e, ws);
  kd::GemmWorkspace<T> fresh;
  kd::gemm<T>(a.view(), b.view(), false, {c3.data(), m, n, n}, e, fresh);
#if defined(_OPENMP)
  omp_set_num_threads(saved);
#endif
  CHECK(c1 == c2);
  CHECK(c1 == c3);
  // The row partition depends on the thread count; so does nothing else.
  CHECK(kd::gemm_row_item(m, 1) != kd::gemm_row_item(m, 2));
}

// ---- bf16 x bf16 -> float (issue 13) ---------------------------------------------------------------------------

namespace {

std::vector<Eigen::bfloat16> bf16_values(Index n, std::uint32_t seed) {
  const auto v = random_values<float>(n, seed, -2.0f, 2.0f);
  std::vector<Eigen::bfloat16> out(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) out[std::size_t(i)] = kd::from_float<Eigen::bfloat16>(v[std::size_t(i)]);
  return out;
}

/// The chain gemm_bf16 promises for C(i, j): per depth pair q, acc += A(i, 2q+1) B(2q+1, j), then
/// acc += A(i, 2q) B(2q, j), each rounded to float (the products are exact, so a fused and an unfused
/// multiply-add agree: std::fma is the reference on every build).
float bf16_chain(const std::vector<Eigen::bfloat16>& a, Index lda, const std::vector<Eigen::bfloat16>& b, bool bt,
                 Index ldb, Index i, Index j, Index k) {
  auto A = [&](Index p) { return p < k ? kd::to_float(a[std::size_t(i * lda + p)]) : 0.0f; };
  auto B = [&](Index p) { return p < k ? kd::to_float(b[std::size_t(bt ? j * ldb + p : p * ldb + j)]) : 0.0f; };
  float acc = 0.0f;
  for (Index q = 0; 2 * q < k; ++q) {
    acc = std::fma(A(2 * q + 1), B(2 * q + 1), acc);
    acc = std::fma(A(2 * q), B(2 * q), acc);
  }
  return acc;
}

}  // namespace

TEST_CASE("gemm_bf16 equals the bf16 pair chain bit for bit over odd shapes, B transposed or not, 1 and 2 threads,"
          " in both layouts", "[gemm][half]") {
  const Index L = kd::kLanes<float>, nr = kd::kGemmNr<float>;
  // The pair layout (vdpbf16ps where the build has it, else dot_bf16_pairs' generic widening in the kernel) and the
  // layout widened when packing; kPreferBf16Dot picks one for the library, and both must give the chain's bits.
  const bool dot = GENERATE(false, true);
  INFO("arch " << kd::simd_arch_name() << (kd::kNativeBf16Dot ? " with vdpbf16ps" : " without vdpbf16ps")
               << ", layout " << (dot ? "pairs (dot_bf16_pairs)" : "widened when packed") << ", library default "
               << (kd::kPreferBf16Dot ? "pairs" : "widened"));
  int bad = 0, checked = 0;
  for (Index m : {Index(1), Index(5), Index(6), Index(13), kd::kGemmMc + 7}) {
    for (Index n : {Index(1), nr - 1, nr, nr + L + 1, Index(70)}) {
      for (Index k : {Index(0), Index(1), Index(2), Index(3), Index(17), kd::kGemmKc, kd::kGemmKc + 1, Index(2 * 384 + 5)}) {
        if (m > 100 && k > 400) continue;  // the big row block once is enough
        for (bool bt : {false, true}) {
          const Index pad = 3, lda = k + pad, ldb = (bt ? k : n) + pad, ldc = n + 2;
          const auto a = bf16_values(m * lda, std::uint32_t(m * 7 + k));
          const auto b = bf16_values((bt ? n : k) * ldb + 1, std::uint32_t(n * 11 + k));
          for (int threads : {1, 2}) {
#if defined(_OPENMP)
            omp_set_num_threads(threads);
#else
            (void)threads;
#endif
            std::vector<float> c(std::size_t(std::max<Index>(1, m * ldc)), std::numeric_limits<float>::quiet_NaN());
            kd::GemmBf16Workspace ws;
            const kd::View<const Eigen::bfloat16> av{a.data(), m, k, lda}, bv{b.data(), bt ? n : k, bt ? k : n, ldb};
            const kd::View<float> cv{c.data(), m, n, ldc};
            if (dot)
              kd::gemm_bf16<true>(av, bv, bt, cv, ws);
            else
              kd::gemm_bf16<false>(av, bv, bt, cv, ws);
            for (Index i = 0; i < m; ++i) {
              for (Index j = 0; j < n; ++j) {
                const float want = bf16_chain(a, lda, b, bt, ldb, i, j, k);
                const float got = c[std::size_t(i * ldc + j)];
                bad += std::memcmp(&want, &got, sizeof got) != 0;
                ++checked;
              }
              for (Index j = n; j < ldc && i * ldc + j < Index(c.size()); ++j) bad += !std::isnan(c[std::size_t(i * ldc + j)]);
            }
          }
        }
      }
    }
  }
  CHECK(checked > 0);
  CHECK(bad == 0);
#if defined(_OPENMP)
  omp_set_num_threads(kd::max_threads());
#endif
}
