// SPDX-License-Identifier: MIT
// Tests of kexue/norm.hpp: PyTorch reference data (F.layer_norm, the LlamaRMSNorm expression, their residual
// forms), every form and every bert4keras switch against a scalar double reference over sizes around the lane
// count with misaligned, strided, NaN-guarded buffers, in-place calls, divide_no_nan rows, errors before any
// write, and thread-count independence.

#include "kexue/norm.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::Index;
using kexue::Matrix;
using kexue::NormOptions;
using kexue::Vector;
using namespace kexue_test;

namespace {

const RefData& ref() {
  static const RefData data("norm");
  return data;
}

template <class T>
using StridedMap = Eigen::Map<Matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// Scalar double reference (SPEC 7.1 as bert4keras' switches): s = x (+ r); c = s - mean(s) if zero_mean;
/// y = c / sqrt(mean(c^2) + eps) if unit_variance (0 where mean(c^2) + eps == 0); y * gamma; y + beta.
struct RefNorm {
  std::vector<double> out, sum;
};
template <class T>
RefNorm ref_norm(const T* x, Index xs, const T* r, Index rs, Index n, Index d, const T* gamma, const T* beta,
                 double eps, bool zero_mean, bool unit_variance) {
  RefNorm res;
  res.out.resize(std::size_t(n * d));
  res.sum.resize(std::size_t(n * d));
  std::vector<double> s(static_cast<std::size_t>(d));
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < d; ++j) {
      // The kernel adds in T, so the reference normalises the same rounded sum.
      s[std::size_t(j)] = r ? double(T(x[i * xs + j] + r[i * rs + j])) : double(x[i * xs + j]);
      res.sum[std::size_t(i * d + j)] = s[std::size_t(j)];
    }
    double mean = 0;
    if (zero_mean) {
      for (double v : s) mean += v;
      mean /= double(d);
    }
    double inv = 1;
    if (unit_variance) {
      double ms = 0;
      for (double v : s) ms += (v - mean) * (v - mean);
      ms = ms / double(d) + eps;
      inv = ms == 0 ? 0.0 : 1.0 / std::sqrt(ms);
    }
    for (Index j = 0; j < d; ++j) {
      double y = (s[std::size_t(j)] - mean) * inv;
      if (gamma) y *= double(gamma[j]);
      if (beta) y += double(beta[j]);
      res.out[std::size_t(i * d + j)] = y;
    }
  }
  return res;
}

enum class Form { Layer, Rms, AddLayerPre, AddLayerPost, AddRmsPre, AddRmsPost };
const Form kForms[] = {Form::Layer, Form::Rms, Form::AddLayerPre, Form::AddLayerPost, Form::AddRmsPre,
                       Form::AddRmsPost};
const char* name(Form f) {
  switch (f) {
    case Form::Layer: return "layer_norm";
    case Form::Rms: return "rms_norm";
    case Form::AddLayerPre: return "add_layer_norm (pre)";
    case Form::AddLayerPost: return "add_layer_norm (post)";
    case Form::AddRmsPre: return "add_rms_norm (pre)";
    case Form::AddRmsPost: return "add_rms_norm (post)";
  }
  return "?";
}
bool is_layer(Form f) { return f == Form::Layer || f == Form::AddLayerPre || f == Form::AddLayerPost; }
bool has_residual(Form f) { return f != Form::Layer && f != Form::Rms; }
bool keeps_sum(Form f) { return f == Form::AddLayerPre || f == Form::AddRmsPre; }

/// Calls the public function of `form`; beta is ignored by the RMS forms, residual and sum by the plain ones.
template <class X, class R, class G, class B, class O, class S>
void call(Form form, const X& x, const R& residual, const G& gamma, const B& beta, const O& out, const S& sum,
          double eps) {
  switch (form) {
    case Form::Layer: kexue::layer_norm(x, gamma, beta, out, eps); break;
    case Form::Rms: kexue::rms_norm(x, gamma, out, eps); break;
    case Form::AddLayerPre: kexue::add_layer_norm(x, residual, gamma, beta, out, sum, eps); break;
    case Form::AddLayerPost: kexue::add_layer_norm(x, residual, gamma, beta, out, eps); break;
    case Form::AddRmsPre: kexue::add_rms_norm(x, residual, gamma, out, sum, eps); break;
    case Form::AddRmsPost: kexue::add_rms_norm(x, residual, gamma, out, eps); break;
  }
}

template <class T>
double rel_tolerance(Index d) {
  // A handful of roundings per output plus the row reductions' ~sqrt(d) growth.
  return 16.0 * std::numeric_limits<T>::epsilon() * (4.0 + std::sqrt(double(d)));
}

template <class T>
void check_close(const T* got, Index stride, Index n, Index d, const std::vector<double>& want) {
  const double tol = rel_tolerance<T>(d);
  double num = 0, den = 0;
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < d; ++j) {
      const double g = double(got[i * stride + j]), w = want[std::size_t(i * d + j)];
      INFO("row " << i << " col " << j << " got " << g << " want " << w);
      REQUIRE(std::isfinite(g));
      REQUIRE(std::abs(g - w) <= tol * std::max(1.0, std::abs(w)));
      num += (g - w) * (g - w);
      den += w * w;
    }
  CHECK(num / std::max(den, 1e-300) <= nmse_bound<T>());
}

}  // namespace

TEMPLATE_TEST_CASE("norms match PyTorch: F.layer_norm, the RMSNorm expression, residual forms", "[norm][torch]", float,
                   double) {
  using T = TestType;
  const std::vector<std::string> cases = {"ln64",   "ln100_nobeta", "ln7_noparams", "ln1",      "ln_offset",
                                          "rms64",  "rms33_noparams", "rms1000",    "add_ln48", "add_ln19_nogamma",
                                          "add_rms40", "add_rms129_noparams"};
  for (const auto& c : cases) {
    INFO(c);
    const Matrix<T> x = ref().matrix<T>(c + "/x");
    const Vector<T> gamma = ref().vector<T>(c + "/gamma"), beta = ref().vector<T>(c + "/beta");
    const double eps = ref().scalar(c + "/eps");
    const std::vector<double>& want = ref().values(c + "/y");
    const bool layer = c.rfind("ln", 0) == 0 || c.rfind("add_ln", 0) == 0;
    Matrix<T> out(x.rows(), x.cols());
    if (ref().has(c + "/residual")) {
      const Matrix<T> residual = ref().matrix<T>(c + "/residual");
      const std::vector<double>& want_sum = ref().values(c + "/sum");
      Matrix<T> sum(x.rows(), x.cols()), out_post(x.rows(), x.cols());
      if (layer) {
        kexue::add_layer_norm(x, residual, gamma, beta, out, sum, eps);
        kexue::add_layer_norm(x, residual, gamma, beta, out_post, eps);
      } else {
        kexue::add_rms_norm(x, residual, gamma, out, sum, eps);
        kexue::add_rms_norm(x, residual, gamma, out_post, eps);
      }
      // x + residual of float32 inputs: exact in double, one rounding in float.
      for (Index i = 0; i < sum.size(); ++i) REQUIRE(sum.data()[i] == T(want_sum[std::size_t(i)]));
      CHECK((out_post.array() == out.array()).all());
    } else if (layer) {
      kexue::layer_norm(x, gamma, beta, out, eps);
    } else {
      kexue::rms_norm(x, gamma, out, eps);
    }
    // NMSE only: PyTorch's own rounding is not within a per-element bound everywhere (at d = 1 its double
    // layer_norm computes x * rstd - mean * rstd with rstd = 316, leaving ~1e-14 where the exact answer is beta).
    // The references normalise the exact (double) sum, the float kernel its rounded sum: same bound.
    const double e = nmse(out, Eigen::Map<const Eigen::VectorXd>(want.data(), Index(want.size())));
    INFO("nmse " << e);
    // 1e-12 for float: a mean rounded to float (no two-pass correction) already misses it on ln_offset.
    CHECK(e <= (std::is_same<T, float>::value ? 1e-12 : 1e-24));
  }
}

TEMPLATE_TEST_CASE("norm SIMD kernels match the scalar reference over odd sizes, offsets and strides", "[norm][simd]",
                   float, double) {
  using T = TestType;
  constexpr Index L = kexue::detail::kLanes<T>;
  std::vector<Index> widths = lane_sizes(L);
  for (Index extra : {Index(64), Index(100), 12 * L + 5}) widths.push_back(extra);
  const double eps = 1e-5;
  for (Form form : kForms) {
    for (Index d : widths) {
      for (Index offset : {Index(0), Index(1), std::max<Index>(1, L / 4)}) {
        for (bool params : {true, false}) {
          INFO(name(form) << " d = " << d << " offset = " << offset << " params = " << params);
          const Index n = 3, stride = d + 3;  // 3 NaN elements between rows
          const Index size = n * stride;
          PaddedBuffer<T> xb(size, offset), rb(size, offset), ob(size, offset), sb(size, offset);
          PaddedBuffer<T> gb(d, offset), bb(d, offset);
          const auto xv = random_values<T>(size, std::uint32_t(17 + d), T(-3), T(3));
          const auto rv = random_values<T>(size, std::uint32_t(91 + d), T(-1), T(1));
          const auto gv = random_values<T>(d, std::uint32_t(5 + d), T(0.5), T(1.5));
          const auto bv = random_values<T>(d, std::uint32_t(7 + d), T(-1), T(1));
          for (Index i = 0; i < n; ++i)
            for (Index j = 0; j < d; ++j) {
              xb.data()[i * stride + j] = xv[std::size_t(i * stride + j)] + T(i);  // rows with nonzero means
              rb.data()[i * stride + j] = rv[std::size_t(i * stride + j)];
            }
          for (Index j = 0; j < d; ++j) {
            gb.data()[j] = gv[std::size_t(j)];
            bb.data()[j] = bv[std::size_t(j)];
          }
          StridedMap<T> x(xb.data(), n, d, Eigen::OuterStride<>(stride));
          StridedMap<T> r(rb.data(), n, d, Eigen::OuterStride<>(stride));
          StridedMap<T> out(ob.data(), n, d, Eigen::OuterStride<>(stride));
          StridedMap<T> sum(sb.data(), n, d, Eigen::OuterStride<>(stride));
          Eigen::Map<Vector<T>> gamma(gb.data(), params ? d : 0), beta(bb.data(), params ? d : 0);
          call(form, x, r, gamma, beta, out, sum, eps);

          const RefNorm want = ref_norm<T>(xb.data(), stride, has_residual(form) ? rb.data() : nullptr, stride, n, d,
                                           params ? gb.data() : nullptr,
                                           params && is_layer(form) ? bb.data() : nullptr, eps, is_layer(form), true);
          check_close(ob.data(), stride, n, d, want.out);
          if (keeps_sum(form)) {
            for (Index i = 0; i < n; ++i)
              for (Index j = 0; j < d; ++j) REQUIRE(double(sb.data()[i * stride + j]) == want.sum[std::size_t(i * d + j)]);
          }
          // Nothing written outside the rows (guards and the gaps between rows stay NaN).
          CHECK(ob.guards_intact(size));
          CHECK(sb.guards_intact(size));
          for (Index i = 0; i < n; ++i)
            for (Index j = d; j < stride; ++j) {
              REQUIRE(std::isnan(ob.data()[i * stride + j]));
              REQUIRE(std::isnan(sb.data()[i * stride + j]));
            }
          if (!keeps_sum(form))
            for (Index i = 0; i < size; ++i) REQUIRE(std::isnan(sb.data()[i]));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("normalize: every bert4keras switch against the scalar reference", "[norm][bert4keras]", float,
                   double) {
  using T = TestType;
  constexpr Index L = kexue::detail::kLanes<T>;
  for (Index d : {Index(1), L + 3, 5 * L + 1}) {
    const Index n = 4;
    Matrix<T> x(n, d);
    const auto xv = random_values<T>(n * d, std::uint32_t(3 * d), T(-2), T(4));
    std::copy(xv.begin(), xv.end(), x.data());
    const auto gv = random_values<T>(d, 11, T(0.5), T(2)), bv = random_values<T>(d, 12, T(-1), T(1));
    const Vector<T> g = Eigen::Map<const Vector<T>>(gv.data(), d), b = Eigen::Map<const Vector<T>>(bv.data(), d);
    for (int mask = 0; mask < 16; ++mask) {
      NormOptions o;
      o.zero_mean = mask & 1;
      o.unit_variance = mask & 2;
      o.scale = mask & 4;
      o.offset = mask & 8;
      o.epsilon = 1e-7;
      INFO("d = " << d << " zero_mean " << o.zero_mean << " unit_variance " << o.unit_variance << " scale " << o.scale
                  << " offset " << o.offset);
      const Vector<T> gamma = o.scale ? g : Vector<T>(), beta = o.offset ? b : Vector<T>();
      Matrix<T> out(n, d);
      kexue::normalize(x, gamma, beta, out, o);
      const RefNorm want = ref_norm<T>(x.data(), d, static_cast<const T*>(nullptr), d, n, d,
                                       o.scale ? g.data() : nullptr, o.offset ? b.data() : nullptr, o.epsilon,
                                       o.zero_mean, o.unit_variance);
      check_close(out.data(), d, n, d, want.out);
    }
  }
  // The presets are the documented switch settings, and equal the dedicated functions.
  Matrix<T> x(3, 40);
  const auto xv = random_values<T>(120, 5, T(-2), T(2));
  std::copy(xv.begin(), xv.end(), x.data());
  Matrix<T> a(3, 40), b(3, 40);
  kexue::normalize(x, Vector<T>(), Vector<T>(), a, NormOptions::roformer_v2());
  kexue::rms_norm(x, Vector<T>(), b, kexue::kKerasEpsilon);
  CHECK((a.array() == b.array()).all());
  const Vector<T> gamma = Vector<T>::LinSpaced(40, T(0.5), T(1.5)), beta = Vector<T>::LinSpaced(40, T(-1), T(1));
  kexue::normalize(x, gamma, Vector<T>(), a, NormOptions::ddpm_gau());
  kexue::rms_norm(x, gamma, b, kexue::kKerasEpsilon);
  CHECK((a.array() == b.array()).all());
  kexue::normalize(x, gamma, beta, a, NormOptions::bert());
  kexue::layer_norm(x, gamma, beta, b, 1e-12);
  CHECK((a.array() == b.array()).all());
}

TEMPLATE_TEST_CASE("norms in place equal the out-of-place results bit for bit", "[norm][inplace]", float, double) {
  using T = TestType;
  const Index n = 5, d = 3 * kexue::detail::kLanes<T> + 7;
  Matrix<T> x(n, d), r(n, d);
  const auto xv = random_values<T>(n * d, 1, T(-2), T(2)), rv = random_values<T>(n * d, 2, T(-2), T(2));
  std::copy(xv.begin(), xv.end(), x.data());
  std::copy(rv.begin(), rv.end(), r.data());
  const Vector<T> g = Vector<T>::LinSpaced(d, T(0.5), T(1.5)), b = Vector<T>::LinSpaced(d, T(-1), T(1));
  for (Form form : kForms) {
    INFO(name(form));
    Matrix<T> out(n, d), sum(n, d);
    call(form, x, r, g, b, out, sum, 1e-6);
    // out = x.
    Matrix<T> x1 = x, s1(n, d);
    call(form, x1, r, g, b, x1, s1, 1e-6);
    CHECK((x1.array() == out.array()).all());
    if (!has_residual(form)) continue;
    // out = residual.
    Matrix<T> r2 = r, s2(n, d);
    call(form, x, r2, g, b, r2, s2, 1e-6);
    CHECK((r2.array() == out.array()).all());
    if (!keeps_sum(form)) continue;
    CHECK((s1.array() == sum.array()).all());
    // sum = x (x += residual), out separate; and sum = residual with out = x.
    Matrix<T> x3 = x, o3(n, d);
    call(form, x3, r, g, b, o3, x3, 1e-6);
    CHECK((o3.array() == out.array()).all());
    CHECK((x3.array() == sum.array()).all());
    Matrix<T> x4 = x, r4 = r;
    call(form, x4, r4, g, b, x4, r4, 1e-6);
    CHECK((x4.array() == out.array()).all());
    CHECK((r4.array() == sum.array()).all());
  }
}

TEST_CASE("norms: constant rows with eps = 0 give 0 * gamma + beta (divide_no_nan), NaN propagates", "[norm]") {
  Matrix<float> x = Matrix<float>::Constant(2, 19, 3.f), out(2, 19);
  x.row(1).setZero();
  const Vector<float> g = Vector<float>::Constant(19, 2.f), b = Vector<float>::LinSpaced(19, -1.f, 1.f);
  kexue::layer_norm(x, g, b, out, 0.0);
  for (Index i = 0; i < 2; ++i) CHECK((out.row(i).transpose().array() == b.array()).all());
  kexue::rms_norm(x, g, out, 0.0);
  CHECK((out.row(1).array() == 0.f).all());
  CHECK((out.row(0).array() == 2.f).all());  // 3 / sqrt(9) * 2
  // Constant rows with eps > 0: layer_norm gives beta exactly.
  kexue::layer_norm(x, g, b, out);
  CHECK((out.row(0).transpose().array() == b.array()).all());
  x(0, 4) = std::numeric_limits<float>::quiet_NaN();
  kexue::rms_norm(x, g, out);
  CHECK(std::isnan(out(0, 0)));
  CHECK((out.row(1).array() == 0.f).all());
  // A large mean against a small spread (mean 1e4, spread 1): the corrected two-pass variance keeps the float
  // result within a few ulps of the double one, where a float mean alone is off by up to ulp(1e4) / 2 = 5e-4.
  Matrix<float> big(1, 77);
  const auto noise = random_values<float>(77, 4, -1.f, 1.f);
  for (Index j = 0; j < 77; ++j) big(0, j) = 1e4f + noise[std::size_t(j)];
  Matrix<float> big_out(1, 77);
  kexue::layer_norm(big, Vector<float>(), Vector<float>(), big_out, 0.0);
  const RefNorm want = ref_norm<float>(big.data(), 77, static_cast<const float*>(nullptr), 77, 1, 77, nullptr, nullptr,
                                       0.0, true, true);
  for (Index j = 0; j < 77; ++j) CHECK(std::abs(big_out(0, j) - want.out[std::size_t(j)]) <= 2e-6);
  // The first value far from the mean (an outlier): one shifted pass would lose log2(d) bits of the variance
  // (1e-4 relative at d = 1000), layer_norm's second pass from the mean (kNormRefine) keeps it within a few
  // ulps; for the plain and the residual forms.
  for (Index d : {Index(5), Index(1000)}) {
    Matrix<float> o(2, d), zero = Matrix<float>::Zero(2, d), o_out(2, d);
    const auto v = random_values<float>(2 * d, 6, -1.f, 1.f);
    std::copy(v.begin(), v.end(), o.data());
    o(0, 0) = 5e3f;
    o(1, 0) = -3e4f;
    const RefNorm w = ref_norm<float>(o.data(), d, static_cast<const float*>(nullptr), d, 2, d, nullptr, nullptr,
                                      1e-5, true, true);
    for (bool residual : {false, true}) {
      if (residual) {
        kexue::add_layer_norm(o, zero, Vector<float>(), Vector<float>(), o_out);
      } else {
        kexue::layer_norm(o, Vector<float>(), Vector<float>(), o_out);
      }
      for (Index j = 0; j < 2 * d; ++j)
        REQUIRE(std::abs(o_out.data()[j] - w.out[std::size_t(j)]) <=
                16 * std::numeric_limits<float>::epsilon() * std::max(1.0, std::abs(w.out[std::size_t(j)])));
    }
  }
  // Empty inputs: nothing to do, no error.
  Matrix<float> none(0, 19), none_out(0, 19), narrow(3, 0);
  kexue::layer_norm(none, g, b, none_out);
  kexue::rms_norm(narrow, Vector<float>(), narrow);
}

TEST_CASE("norms: bad input throws kexue::Error naming the problem, before anything is written", "[norm][errors]") {
  Matrix<float> x = Matrix<float>::Constant(4, 8, 1.f), r = Matrix<float>::Constant(4, 8, 2.f);
  Matrix<float> out = Matrix<float>::Constant(4, 8, 7.f), sum = Matrix<float>::Constant(4, 8, 9.f);
  Matrix<float> wrong(4, 6), wrong_rows(3, 8);
  const Vector<float> g = Vector<float>::Ones(8), g7 = Vector<float>::Ones(7), none;
  throws_with([&] { kexue::layer_norm(x, g, none, wrong); }, "layer_norm: out has shape [4 x 6] but x has shape [4 x 8]");
  throws_with([&] { kexue::rms_norm(x, g7, out); }, "rms_norm: gamma has 7 entries but x has 8 columns");
  throws_with([&] { kexue::layer_norm(x, g, g7, out); }, "beta has 7 entries");
  throws_with([&] { kexue::rms_norm(x, g, out, -1.0); }, "eps must be finite and >= 0");
  throws_with([&] { kexue::rms_norm(x, g, out, std::nan("")); }, "eps");
  throws_with([&] { kexue::add_rms_norm(x, wrong_rows, g, out, sum); }, "add_rms_norm: residual has shape [3 x 8]");
  throws_with([&] { kexue::add_layer_norm(x, r, g, g, out, wrong); }, "add_layer_norm: sum has shape [4 x 6]");
  throws_with([&] { kexue::add_rms_norm(x, r, g, out, out); }, "sum and out overlap");
  // Partial overlap: out is x shifted by one row.
  Matrix<float> big = Matrix<float>::Constant(5, 8, 1.f);
  throws_with([&] { kexue::rms_norm(big.topRows(4), g, big.bottomRows(4)); }, "out partly overlaps x");
  throws_with([&] { kexue::add_rms_norm(x, big.topRows(4), g, big.bottomRows(4)); }, "out partly overlaps residual");
  throws_with([&] { kexue::rms_norm(x, Eigen::Map<const Vector<float>>(out.data(), 8), out); }, "overlap an output");
  NormOptions o;
  o.offset = false;
  throws_with([&] { kexue::normalize(x, g, g, out, o); }, "beta has 8 entries but options.offset is false");
  throws_with([&] { kexue::normalize(x, none, none, out, o); }, "gamma has 0 entries");
  CHECK((out.array() == 7.f).all());
  CHECK((sum.array() == 9.f).all());
  CHECK((x.array() == 1.f).all());
  CHECK((big.array() == 1.f).all());
}

TEST_CASE("norms: results do not depend on the thread count", "[norm][threads]") {
  const Index n = 301, d = 1000;  // above the parallel threshold, an odd number of work items
  Matrix<float> x(n, d), r(n, d);
  const auto xv = random_values<float>(n * d, 8, -2.f, 2.f), rv = random_values<float>(n * d, 9, -2.f, 2.f);
  std::copy(xv.begin(), xv.end(), x.data());
  std::copy(rv.begin(), rv.end(), r.data());
  const Vector<float> g = Vector<float>::LinSpaced(d, 0.5f, 1.5f), b = Vector<float>::LinSpaced(d, -1.f, 1.f);
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
#endif
  for (Form form : kForms) {
    INFO(name(form));
    Matrix<float> ref_out, ref_sum;
    for (int threads : {1, 2, 3}) {
#if defined(_OPENMP)
      omp_set_num_threads(threads);
#endif
      Matrix<float> out(n, d), sum = Matrix<float>::Zero(n, d);
      call(form, x, r, g, b, out, sum, 1e-5);
      if (threads == 1) {
        ref_out = out;
        ref_sum = sum;
        // Each row is computed the same way: row 150 alone equals row 150 of the whole call.
        Matrix<float> one(1, d), one_sum(1, d);
        call(form, x.middleRows(150, 1), r.middleRows(150, 1), g, b, one, one_sum, 1e-5);
        CHECK((one.array() == out.middleRows(150, 1).array()).all());
        continue;
      }
      CHECK((out.array() == ref_out.array()).all());
      CHECK((sum.array() == ref_sum.array()).all());
    }
  }
#if defined(_OPENMP)
  omp_set_num_threads(saved);
#endif
}
