// SPDX-License-Identifier: MIT
// Tests of kexue/dense.hpp: PyTorch reference data (F.linear, F.silu, SwiGLU's gate), the scalar FMA chain the
// GEMM promises (bit for bit without an activation), one row (the GEMV path) against the same row of a tall x
// (the GEMM path), thread counts, special values, and the error contract.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kexue/dense.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::DenseActivation;
using kexue::Index;
using kexue::Matrix;
using kexue::PackedDense;
using kexue::Vector;
using namespace kexue_test;

namespace {

/// Uniform values in [-scale, scale).
template <class T>
Matrix<T> random_matrix(Index rows, Index cols, std::uint32_t seed, double scale = 1.0) {
  const std::vector<T> v = random_values<T>(rows * cols, seed, T(-scale), T(scale));
  Matrix<T> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = v[static_cast<std::size_t>(i)];
  return m;
}

/// out(i, j) before the activation as the GEMM computes it: fma(x(i, p), w(p, j), acc) for p = 0, 1, ... from
/// acc = 0, then + b(j) (one rounding). The fma is fused where the target has FMA and a multiply and an add on
/// baseline SSE2 (detail::madd, the rounding of the kernels' fmadd).
template <class T>
Matrix<T> fma_chain(const Matrix<T>& x, const Matrix<T>& w, const Vector<T>& b) {
  Matrix<T> out(x.rows(), w.cols());
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) {
      T acc = 0;
      for (Index p = 0; p < x.cols(); ++p) acc = kexue::detail::madd(x(i, p), w(p, j), acc);
      out(i, j) = b.size() ? T(acc + b(j)) : acc;
    }
  return out;
}

const char* const kCases[] = {"plain", "bias_swish", "row", "rows5_swiglu", "swiglu", "gated_bias"};

template <class T>
void check_pytorch_cases() {
  const RefData ref("dense");
  for (const char* name : kCases) {
    const std::string tag = name;
    INFO("case " << tag);
    const Matrix<T> x = ref.matrix<T>(tag + "/x"), w = ref.matrix<T>(tag + "/w");
    const Vector<T> b = ref.has(tag + "/b") ? ref.vector<T>(tag + "/b") : Vector<T>();
    const Matrix<double> want = ref.matrix<double>(tag + "/out");
    const bool swish = tag == "bias_swish" || tag == "rows5_swiglu" || tag == "swiglu";
    const DenseActivation act = swish ? DenseActivation::Swish : DenseActivation::None;
    const PackedDense<T> layer = kexue::dense_pack(w, b);
    Matrix<T> got(x.rows(), w.cols());
    Matrix<T> gate;
    if (ref.has(tag + "/gate")) {
      gate = ref.matrix<T>(tag + "/gate");
      kexue::dense_gated(layer, x, gate, got, act);
    } else {
      kexue::dense(layer, x, got, act);
    }
    // |error| <= (k + 16) eps(T) (sum_p |x_p w_pj| + |b_j|) max(1, |gate|): the chain's rounding, the bias and the
    // activation (swish is 1.1-Lipschitz with a few eps of its own).
    const double eps = double(std::numeric_limits<T>::epsilon());
    for (Index i = 0; i < x.rows(); ++i)
      for (Index j = 0; j < w.cols(); ++j) {
        double mag = b.size() ? std::abs(double(b(j))) : 0.0;
        for (Index p = 0; p < x.cols(); ++p) mag += std::abs(double(x(i, p)) * double(w(p, j)));
        const double g = gate.size() ? std::max(1.0, std::abs(double(gate(i, j)))) : 1.0;
        INFO("(" << i << ", " << j << ") got " << got(i, j) << " want " << want(i, j));
        CHECK(std::abs(double(got(i, j)) - want(i, j)) <= double(x.cols() + 16) * eps * mag * g);
      }
  }
}

}  // namespace

TEST_CASE("dense matches PyTorch's linear, silu and SwiGLU gate (float)", "[dense]") { check_pytorch_cases<float>(); }
TEST_CASE("dense matches PyTorch's linear, silu and SwiGLU gate (double)", "[dense]") { check_pytorch_cases<double>(); }

TEMPLATE_TEST_CASE("dense without an activation is the scalar FMA chain, bit for bit, for every shape", "[dense]",
                   float, double) {
  using T = TestType;
  // One row takes the GEMV path, more rows the GEMM (2-5 rows in one zero-padded 6-row tile); depths cross the
  // 384-deep k blocks; columns cross the register tile (2 vectors: 8 to 32 floats) and the GEMV's groups of
  // four panels.
  for (Index m : {1, 2, 5, 6, 7, 13, 150}) {
    for (Index k : {1, 3, 17, 384, 385, 800}) {
      for (Index n : {1, 7, 16, 33, 65, 130}) {
        const Matrix<T> x = random_matrix<T>(m, k, std::uint32_t(m * 7 + k)),
                        w = random_matrix<T>(k, n, std::uint32_t(k * 3 + n));
        const Vector<T> b = (n % 2) ? Vector<T>(random_matrix<T>(1, n, 5).transpose()) : Vector<T>();
        Matrix<T> got(m, n);
        kexue::dense(kexue::dense_pack(w, b), x, got);
        INFO("m " << m << " k " << k << " n " << n);
        CHECK(max_abs_diff(got, fma_chain(x, w, b)) == 0.0);
      }
    }
  }
}

TEMPLATE_TEST_CASE("dense: a row's bits do not depend on the rows around it or on the thread count", "[dense]", float,
                   double) {
  using T = TestType;
  const Index m = 40, k = 500, n = 150;
  const Matrix<T> x = random_matrix<T>(m, k, 11), w = random_matrix<T>(k, n, 12, 0.1),
                  gate = random_matrix<T>(m, n, 13);
  const Vector<T> b = random_matrix<T>(1, n, 14).transpose();
  const PackedDense<T> layer = kexue::dense_pack(w, b);
  for (const DenseActivation act : {DenseActivation::None, DenseActivation::Swish}) {
    for (const bool gated : {false, true}) {
      INFO("swish " << (act == DenseActivation::Swish) << " gated " << gated);
      auto run = [&](const Matrix<T>& xs, const Matrix<T>& gs, Matrix<T>& out) {
        if (gated)
          kexue::dense_gated(layer, xs, gs, out, act);
        else
          kexue::dense(layer, xs, out, act);
      };
      Matrix<T> tall(m, n), two(m, n);
      set_threads(1);
      run(x, gate, tall);
      set_threads(2);
      run(x, gate, two);
      CHECK(max_abs_diff(tall, two) == 0.0);
      for (Index r : {Index(0), Index(17), m - 1}) {
        for (Index rows : {1, 3}) {
          if (r + rows > m) continue;
          Matrix<T> part(rows, n);
          run(x.middleRows(r, rows), gate.middleRows(r, rows), part);  // 1 row: the GEMV path; 3: a padded tile
          INFO("rows [" << r << ", " << r + rows << ")");
          CHECK(max_abs_diff(part, tall.middleRows(r, rows)) == 0.0);
        }
      }
      set_threads(hardware_threads());
    }
  }
}

TEMPLATE_TEST_CASE("dense: special values", "[dense]", float, double) {
  using T = TestType;
  const T inf = std::numeric_limits<T>::infinity();
  Matrix<T> w(2, 3);
  w << 1, 0, -1, 0, 1, 1;
  const PackedDense<T> layer = kexue::dense_pack(w);
  Matrix<T> x(6, 2);
  x << T(1e30), 0,  // huge: x W = (1e30, 0, -1e30)
      -T(1e30), 0,  //
      inf, 0,       // inf times the 0 of column 1 is NaN, as in IEEE arithmetic and PyTorch
      0, 0,         //
      std::numeric_limits<T>::quiet_NaN(), 1, 1, 2;
  Matrix<T> out(6, 3);
  kexue::dense(layer, x, out, DenseActivation::Swish);
  // swish(y) = y sigmoid(y): y for huge positive y; for huge negative y a tiny finite value (the exp argument is
  // clamped to T's range: -1e30 / (1 + e^88) = -1e-8 in float where the exact value is -0), never NaN.
  CHECK(out(0, 0) == T(1e30));
  CHECK(out(0, 1) == 0);
  CHECK(std::abs(out(0, 2)) < 1e-7);
  CHECK(std::abs(out(1, 0)) < 1e-7);
  CHECK(out(1, 2) == T(1e30));
  CHECK(out(2, 0) == inf);
  CHECK(std::isnan(out(2, 1)));
  CHECK(out(3, 0) == 0);
  CHECK(std::isnan(out(4, 0)));
  CHECK(out(5, 1) == Approx(2.0 / (1.0 + std::exp(-2.0))).epsilon(1e-6));
  // Empty x: nothing to do.
  Matrix<T> none(0, 2), none_out(0, 3);
  kexue::dense(layer, none, none_out);
  CHECK(none_out.size() == 0);
}

TEST_CASE("dense: bad input throws kexue::Error naming the function and argument, before writing", "[dense]") {
  using T = float;
  const Matrix<T> w = random_matrix<T>(8, 5, 1);
  const PackedDense<T> layer = kexue::dense_pack(w);
  CHECK(layer.in_features() == 8);
  CHECK(layer.out_features() == 5);
  CHECK(!layer.has_bias());
  CHECK(layer.bytes() >= 8 * 5 * sizeof(T));
  throws_with([&] { kexue::dense_pack(w, Vector<T>::Ones(4)); }, "dense_pack: bias has 4 values but w has 5");
  throws_with([&] { kexue::dense_pack(Matrix<T>(0, 5)); }, "dense_pack: w has shape");
  Matrix<T> x = random_matrix<T>(3, 8, 2), out = Matrix<T>::Constant(3, 5, T(7));
  throws_with([&] { kexue::dense(PackedDense<T>(), x, out); }, "dense: layer is an empty PackedDense");
  PackedDense<T> source = kexue::dense_pack(w);
  const PackedDense<T> taken = std::move(source);
  CHECK(!taken.empty());
  throws_with([&] { kexue::dense(source, x, out); }, "dense: layer is an empty PackedDense");  // moved from
  throws_with([&] { kexue::dense(layer, random_matrix<T>(3, 9, 3), out); }, "dense: x has shape [3 x 9]");
  Matrix<T> wrong(3, 4);
  throws_with([&] { kexue::dense(layer, x, wrong); }, "dense: out has shape [3 x 4]");
  throws_with([&] { kexue::dense(layer, x, out, static_cast<DenseActivation>(7)); }, "activation");
  Matrix<T> buf = Matrix<T>::Constant(3, 8, T(7));
  throws_with([&] { kexue::dense(layer, buf, buf.leftCols(5)); }, "dense: out overlaps x");
  throws_with([&] { kexue::dense_gated(layer, x, Matrix<T>(2, 5), out); }, "dense_gated: gate has shape [2 x 5]");
  throws_with([&] { kexue::dense_gated(layer, x, out, out); }, "dense_gated: out overlaps gate");
  CHECK((out.array() == T(7)).all());
  CHECK((buf.array() == T(7)).all());
}
