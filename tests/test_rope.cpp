// SPDX-License-Identifier: MIT
// Tests of kexue/rope.hpp: SPEC 1.2's derived vectors, PyTorch reference data for every variant (float and
// double), the SIMD kernels against the scalar reference over odd sizes, misaligned and strided rows with NaN
// guards, the rotation's properties, errors before any write, batched vs 2-D equality and thread-count
// independence.

#include "kexue/rope.hpp"

#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "reference/reference_data.hpp"
#include "reference/rope_reference.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::Index;
using kexue::Matrix;
using kexue::RopeLayout;
using kexue::RopeOptions;
using kexue::RopeScaling;
using kexue::RopeTable;
using kexue::TensorView;
using namespace kexue_test;

namespace {

const RefData& ref() {
  static const RefData data("rope");
  return data;
}

template <class T>
std::vector<Index> int_positions(const RefData& r, const std::string& name) {
  std::vector<Index> p;
  for (double v : r.values(name)) p.push_back(static_cast<Index>(v));
  return p;
}

template <class T>
double tolerance() {
  return std::is_same<T, float>::value ? 1e-11 : 1e-26;
}

template <class T>
std::vector<double> as_double(const Matrix<T>& m) {
  return std::vector<double>(m.data(), m.data() + m.size());
}

template <class T>
void fill_random(Matrix<T>& m, std::uint32_t seed) {
  const auto v = random_values<T>(m.size(), seed, T(-2), T(2));
  std::copy(v.begin(), v.end(), m.data());
}

struct Nmse {
  std::vector<double> want;
  template <class M>
  double operator()(const M& got) const {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      const double d = double(got.data()[i]) - want[i];
      if (!std::isfinite(double(got.data()[i]))) return std::numeric_limits<double>::infinity();
      num += d * d;
      den += want[i] * want[i];
    }
    return num / std::max(den, 1e-300);
  }
};

}  // namespace

TEST_CASE("rope: SPEC 1.2 derived test vectors (interleaved, base 10000)", "[rope]") {
  {
    RopeTable<double> table(8, 4);
    Matrix<double> x(1, 4);
    x << 1, 2, 3, 4;
    kexue::rope(table, x, 1);
    const double want[] = {-1.1426396637, 1.9220755965, 2.9598506679, 4.0297995017};
    for (int j = 0; j < 4; ++j) CHECK(x(0, j) == Approx(want[j]).margin(1e-9));
  }
  {
    RopeTable<float> table(8, 6);
    Matrix<float> x(1, 6);
    x << 0.5f, -1.f, 2.f, 0.25f, 1.f, 1.f;
    kexue::rope(table, x, 3);
    const double want[] = {-0.3538762402, 1.0605525006, 1.9459418730, 0.5251763769, 0.9935158539, 1.0064423720};
    for (int j = 0; j < 6; ++j) CHECK(x(0, j) == Approx(want[j]).margin(1e-6));
  }
  {
    RopeTable<double> table(16, 4);
    Matrix<double> q(1, 4), k(1, 4);
    q << 0.3, -0.7, 1.1, 0.2;
    k << -0.4, 0.9, 0.5, -1.3;
    Matrix<double> q5 = q, k9 = k, q0 = q, k4 = k;
    kexue::rope(table, q5, 5);
    kexue::rope(table, k9, 9);
    kexue::rope(table, q0, 0);
    kexue::rope(table, k4, 4);
    CHECK(q5.row(0).dot(k9.row(0)) == Approx(0.8336164029).margin(1e-9));
    CHECK(q0.row(0).dot(k4.row(0)) == Approx(0.8336164029).margin(1e-9));
  }
}

TEST_CASE("RopeTable rows: per-pair cos and sin in pair order, for both layouts", "[rope]") {
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
    RopeOptions o;
    o.layout = layout;
    o.rotary_dim = 8;
    RopeTable<double> t(5, 10, o);
    CHECK(t.rotary_dim() == 8);
    CHECK(t.dim() == 10);
    CHECK(t.max_positions() == 5);
    CHECK(t.layout() == layout);
    CHECK(t.attention_factor() == 1.0);
    REQUIRE(t.inv_freq().size() == 4);
    for (Index i = 0; i < 4; ++i) {
      CHECK(t.inv_freq()[std::size_t(i)] == Approx(std::pow(10000.0, -2.0 * double(i) / 8)));
      const double angle = 3 * t.inv_freq()[std::size_t(i)];
      CHECK(t.cos_pairs(3)[i] == Approx(std::cos(angle)));
      CHECK(t.sin_pairs(3)[i] == Approx(std::sin(angle)));
    }
  }
}

// ---- PyTorch reference data -------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("rope matches PyTorch: layouts, offsets, partial rotation", "[rope][torch]", float, double) {
  using T = TestType;
  struct Case {
    const char* name;
    RopeLayout layout;
    Index dim, rotary_dim;
    double base;
  };
  const Case cases[] = {
      {"inter64", RopeLayout::Interleaved, 64, 0, 10000.0},     {"inter40_off", RopeLayout::Interleaved, 40, 0, 10000.0},
      {"inter6", RopeLayout::Interleaved, 6, 0, 10000.0},       {"half64_off", RopeLayout::Half, 64, 0, 10000.0},
      {"half20", RopeLayout::Half, 20, 0, 500000.0},            {"inter_partial", RopeLayout::Interleaved, 72, 24, 10000.0},
      {"half_partial", RopeLayout::Half, 80, 32, 10000.0},      {"half_partial_odd", RopeLayout::Half, 45, 18, 10000.0},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string n = c.name;
    RopeOptions o;
    o.layout = c.layout;
    o.rotary_dim = c.rotary_dim;
    o.base = c.base;
    RopeTable<T> table(600, c.dim, o);
    Matrix<T> x = ref().matrix<T>(n + "/x");
    const Matrix<T> want = ref().matrix<T>(n + "/y");
    REQUIRE(x.cols() == c.dim);
    kexue::rope(table, x, static_cast<Index>(ref().scalar(n + "/first")));
    CHECK(nmse(x, want) < tolerance<T>());
    // The pass-through dims are bit-identical to the input.
    const Matrix<T> x0 = ref().matrix<T>(n + "/x");
    const Index r = table.rotary_dim();
    CHECK((x.rightCols(c.dim - r).array() == x0.rightCols(c.dim - r).array()).all());
  }
}

TEMPLATE_TEST_CASE("rope matches PyTorch: explicit positions and RoPE + bias", "[rope][torch]", float, double) {
  using T = TestType;
  for (auto layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
    const std::string n = layout == RopeLayout::Interleaved ? "pos_inter" : "pos_half";
    RopeOptions o;
    o.layout = layout;
    RopeTable<T> table(512, 48, o);
    Matrix<T> x = ref().matrix<T>(n + "/x");
    const auto pos = int_positions<T>(ref(), n + "/positions");
    kexue::rope(table, x, pos);
    CHECK(nmse(x, ref().matrix<T>(n + "/y")) < tolerance<T>());
    // Positions as std::vector<int> and as an Eigen integer vector give the same bits.
    Matrix<T> x2 = ref().matrix<T>(n + "/x"), x3 = x2;
    std::vector<int> pos_int(pos.begin(), pos.end());
    Eigen::Matrix<Index, Eigen::Dynamic, 1> pos_eigen(static_cast<Index>(pos.size()));
    for (std::size_t i = 0; i < pos.size(); ++i) pos_eigen[Index(i)] = pos[i];
    kexue::rope(table, x2, pos_int);
    kexue::rope(table, x3, pos_eigen);
    CHECK((x2.array() == x.array()).all());
    CHECK((x3.array() == x.array()).all());
  }
  {
    RopeTable<T> table(64, 64);
    Matrix<T> x = ref().matrix<T>("bias_inter/x");
    const kexue::Vector<T> b = ref().vector<T>("bias_inter/bias");
    kexue::rope_with_bias(table, x, b, 4);
    CHECK(nmse(x, ref().matrix<T>("bias_inter/y")) < tolerance<T>());
    // The explicit-positions form agrees bitwise.
    Matrix<T> x2 = ref().matrix<T>("bias_inter/x");
    std::vector<Index> pos;
    for (Index i = 0; i < x2.rows(); ++i) pos.push_back(4 + i);
    kexue::rope_with_bias(table, x2, b, pos);
    CHECK((x2.array() == x.array()).all());
  }
  {
    RopeOptions o;
    o.layout = RopeLayout::Half;
    o.rotary_dim = 24;
    RopeTable<T> table(64, 40, o);
    Matrix<T> x = ref().matrix<T>("bias_half_partial/x");
    const kexue::Vector<T> b = ref().vector<T>("bias_half_partial/bias");
    kexue::rope_with_bias(table, x, b, 4);
    CHECK(nmse(x, ref().matrix<T>("bias_half_partial/y")) < tolerance<T>());
  }
}

TEMPLATE_TEST_CASE("rope matches PyTorch: HF frequency scalings", "[rope][torch]", float, double) {
  using T = TestType;
  struct Case {
    const char* name;
    RopeLayout layout;
    Index dim;
    RopeOptions options;
  };
  std::vector<Case> cases;
  {
    RopeOptions o;
    o.layout = RopeLayout::Half;
    o.scaling = RopeScaling::Linear;
    o.factor = 4.0;
    cases.push_back({"linear", RopeLayout::Half, 64, o});
  }
  {
    RopeOptions o;
    o.layout = RopeLayout::Half;
    o.scaling = RopeScaling::DynamicNtk;
    o.factor = 2.0;
    o.original_max_positions = 512;
    cases.push_back({"dynamic", RopeLayout::Half, 64, o});  // L = max_positions = 1500
  }
  {
    RopeOptions o;
    o.layout = RopeLayout::Half;
    o.scaling = RopeScaling::Yarn;
    o.factor = 8.0;
    o.original_max_positions = 4096;
    cases.push_back({"yarn", RopeLayout::Half, 64, o});
  }
  {
    RopeOptions o;
    o.scaling = RopeScaling::Yarn;
    o.factor = 4.0;
    o.original_max_positions = 2048;
    o.beta_fast = 16.0;
    o.beta_slow = 2.0;
    o.truncate = false;
    o.mscale = 0.707;
    o.mscale_all_dim = 1.0;
    cases.push_back({"yarn_deepseek", RopeLayout::Interleaved, 64, o});
  }
  {
    RopeOptions o;
    o.layout = RopeLayout::Half;
    o.base = 500000.0;
    o.scaling = RopeScaling::Llama3;
    o.factor = 8.0;
    o.original_max_positions = 8192;
    cases.push_back({"llama3", RopeLayout::Half, 128, o});
  }
  {
    RopeOptions o;
    o.scaling = RopeScaling::Llama3;
    o.factor = 4.0;
    o.original_max_positions = 1024;
    o.low_freq_factor = 2.0;
    o.high_freq_factor = 8.0;
    cases.push_back({"llama3_custom", RopeLayout::Interleaved, 64, o});
  }
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string n = c.name;
    const Index max_pos = static_cast<Index>(ref().scalar(n + "/max_positions"));
    RopeTable<T> table(max_pos, c.dim, c.options);
    const auto inv = ref().values(n + "/inv_freq");
    REQUIRE(table.inv_freq().size() == inv.size());
    for (std::size_t i = 0; i < inv.size(); ++i) CHECK(table.inv_freq()[i] == Approx(inv[i]).epsilon(1e-13));
    CHECK(table.attention_factor() == Approx(ref().scalar(n + "/attention_factor")).epsilon(1e-14));
    const auto pos = int_positions<T>(ref(), n + "/positions");
    Matrix<T> x = ref().matrix<T>(n + "/x");
    kexue::rope(table, x, pos);
    CHECK(nmse(x, ref().matrix<T>(n + "/y")) < tolerance<T>());
    if (ref().has(n + "/y_unfolded")) {
      RopeOptions o = c.options;
      o.fold_attention_factor = false;
      RopeTable<T> unfolded(max_pos, c.dim, o);
      CHECK(unfolded.attention_factor() == table.attention_factor());
      Matrix<T> x2 = ref().matrix<T>(n + "/x");
      kexue::rope(unfolded, x2, pos);
      CHECK(nmse(x2, ref().matrix<T>(n + "/y_unfolded")) < tolerance<T>());
    }
  }
}

TEMPLATE_TEST_CASE("rope_2d matches PyTorch (SPEC 1.3: base 1000, row then column halves)", "[rope][torch]", float,
                   double) {
  using T = TestType;
  RopeOptions o;
  o.base = 1000.0;
  RopeTable<T> table(8, 64, o);
  Matrix<T> x = ref().matrix<T>("rope2d/x");
  const Matrix<T> want = ref().matrix<T>("rope2d/y");
  kexue::rope_2d(table, x, 5, 2);
  CHECK(nmse(x, want) < tolerance<T>());
  Matrix<T> x2 = ref().matrix<T>("rope2d/x");
  kexue::rope_2d(table, x2, int_positions<T>(ref(), "rope2d/rows"), int_positions<T>(ref(), "rope2d/cols"));
  CHECK((x2.array() == x.array()).all());
  // Batched [2, 3, 23, 128]: every (batch, head) slice equals the 2-D result bit for bit, for 1 and 2 threads.
  const Matrix<T> x0 = ref().matrix<T>("rope2d/x");
  const Index B = 2, H = 3, S = x0.rows(), D = x0.cols();
  const int saved_threads = kexue::detail::max_threads();
  for (int threads : {1, 2}) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    std::vector<T> buf;
    for (Index i = 0; i < B * H; ++i) buf.insert(buf.end(), x0.data(), x0.data() + x0.size());
    kexue::rope_2d(table, TensorView<T>::contiguous(buf.data(), B, H, S, D), 5, 2);
    bool same = true;
    for (Index i = 0; i < B * H; ++i)
      same = same && std::equal(x.data(), x.data() + x.size(), buf.data() + i * S * D);
    CHECK(same);
  }
#if defined(_OPENMP)
  omp_set_num_threads(saved_threads);
#endif
  (void)saved_threads;
  std::vector<T> small(2 * 3 * 4 * 10, T(1));
  CHECK_THROWS_AS(kexue::rope_2d(table, TensorView<T>::contiguous(small.data(), 2, 3, 4, 10), 5), kexue::Error);
  for (T v : small) REQUIRE(v == T(1));
}

TEST_CASE("rope: dynamic NTK within the original context leaves the frequencies unscaled", "[rope]") {
  RopeOptions o;
  o.scaling = RopeScaling::DynamicNtk;
  o.factor = 4.0;
  o.original_max_positions = 2048;
  RopeTable<double> dynamic(1024, 64, o), plain(1024, 64);
  for (std::size_t i = 0; i < 32; ++i) CHECK(dynamic.inv_freq()[i] == Approx(plain.inv_freq()[i]).epsilon(1e-15));
  o.sequence_length = 4096;  // stretched for a longer sequence than the table holds
  RopeTable<double> stretched(1024, 64, o);
  CHECK(stretched.inv_freq()[31] < plain.inv_freq()[31]);
  CHECK(stretched.inv_freq()[0] == 1.0);
}

// ---- SIMD vs the scalar reference -------------------------------------------------------------------------

TEMPLATE_TEST_CASE("rope SIMD kernels match the scalar reference over odd sizes, offsets and strides",
                   "[rope][simd]", float, double) {
  using T = TestType;
  constexpr Index L = kexue::detail::kLanes<T>;
  std::uint32_t seed = 1;
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
    for (Index half : lane_sizes(L)) {
      if (half == 0) continue;
      for (Index extra : {Index(0), Index(3)}) {  // pass-through tail
        for (Index offset : {Index(0), Index(1), L / 4 > 0 ? L / 4 : Index(1)}) {
          for (bool with_bias : {false, true}) {
            const Index r = 2 * half, dim = r + extra, rows = 5, stride = dim + 3, first = 17;
            INFO("layout " << int(layout) << " r " << r << " dim " << dim << " offset " << offset << " bias "
                           << with_bias);
            RopeOptions o;
            o.layout = layout;
            o.rotary_dim = r;
            RopeTable<T> table(64, dim, o);
            PaddedBuffer<T> buf(rows * stride, offset);
            const auto vals = random_values<T>(rows * stride, seed++, T(-3), T(3));
            for (Index i = 0; i < rows; ++i)
              for (Index j = 0; j < dim; ++j) buf.data()[i * stride + j] = vals[std::size_t(i * stride + j)];
            std::vector<double> bias;
            kexue::Vector<T> b(dim);
            if (with_bias) {
              const auto bv = random_values<T>(dim, seed++, T(-1), T(1));
              for (Index j = 0; j < dim; ++j) b[j] = bv[std::size_t(j)];
              bias.assign(b.data(), b.data() + dim);
            }
            std::vector<Index> pos;
            for (Index i = 0; i < rows; ++i) pos.push_back(first + i);
            const auto want =
                kexue_ref::rope_rows(buf.data(), rows, dim, stride, bias, layout, r, table.inv_freq(), pos);
            Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>> x(buf.data(), rows, dim, Eigen::OuterStride<>(stride));
            if (with_bias) {
              kexue::rope_with_bias(table, x, b, first);
            } else {
              kexue::rope(table, x, first);
            }
            Matrix<T> got = x;
            CHECK(Nmse{want}(got) < tolerance<T>());
            CHECK(buf.guards_intact(rows * stride - 3));
            // The gaps between rows (stride > dim) are never touched.
            bool gaps = true;
            for (Index i = 0; i + 1 < rows; ++i)
              for (Index j = dim; j < stride; ++j) gaps = gaps && std::isnan(buf.data()[i * stride + j]);
            CHECK(gaps);
          }
        }
      }
    }
  }
}

// ---- properties -------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("rope properties: norms kept, scores depend on n - m, Half = permuted Interleaved", "[rope]", float,
                   double) {
  using T = TestType;
  const double eps = std::is_same<T, float>::value ? 1e-5 : 1e-12;
  const Index d = 40;
  RopeTable<T> inter(4096, d);
  RopeOptions ho;
  ho.layout = RopeLayout::Half;
  RopeTable<T> half(4096, d, ho);
  Matrix<T> q(1, d), k(1, d);
  fill_random(q, 11);
  fill_random(k, 12);
  for (const RopeTable<T>* t : {&inter, &half}) {
    Matrix<T> x = q;
    kexue::rope(*t, x, 3001);
    CHECK(double(x.norm()) == Approx(double(q.norm())).epsilon(eps));
    // (R_m q) . (R_n k) depends on n - m only.
    auto score = [&](Index m, Index n) {
      Matrix<T> a = q, b = k;
      kexue::rope(*t, a, m);
      kexue::rope(*t, b, n);
      return double(a.row(0).dot(b.row(0)));
    };
    const double base_score = score(0, 7);
    CHECK(score(100, 107) == Approx(base_score).epsilon(eps * 10));
    CHECK(score(2000, 2007) == Approx(base_score).epsilon(eps * 100));
    CHECK(std::abs(score(0, 8) - base_score) > 1e-3);  // a different distance gives a different score
  }
  // Half on P x equals P (Interleaved on x), P taking dim 2i to i and 2i + 1 to i + d/2.
  Matrix<T> xi = q, xh(1, d);
  for (Index i = 0; i < d / 2; ++i) {
    xh(0, i) = q(0, 2 * i);
    xh(0, i + d / 2) = q(0, 2 * i + 1);
  }
  kexue::rope(inter, xi, 77);
  kexue::rope(half, xh, 77);
  for (Index i = 0; i < d / 2; ++i) {
    CHECK(xh(0, i) == Approx(xi(0, 2 * i)).margin(eps));
    CHECK(xh(0, i + d / 2) == Approx(xi(0, 2 * i + 1)).margin(eps));
  }
  // Position 0 is the identity.
  Matrix<T> x0 = q;
  kexue::rope(half, x0, 0);
  CHECK((x0.array() == q.array()).all());
}

TEST_CASE("rope: huge finite values, empty inputs and a zero-position table", "[rope]") {
  RopeTable<float> table(16, 8);
  Matrix<float> x = Matrix<float>::Constant(3, 8, 1e30f);
  kexue::rope(table, x, 5);
  CHECK(x.allFinite());
  Matrix<float> empty(0, 8);
  kexue::rope(table, empty, 16);  // no rows: any first_position >= 0 is fine
  RopeTable<float> none(0, 8);
  Matrix<float> empty2(0, 8);
  kexue::rope(none, empty2);
  Matrix<float> one(1, 8);
  CHECK_THROWS_AS(kexue::rope(none, one), kexue::Error);
}

// ---- errors -----------------------------------------------------------------------------------------------

TEST_CASE("rope: bad input throws kexue::Error naming the problem, before anything is written", "[rope][errors]") {
  // Options.
  throws_with([] { RopeTable<float>(8, 7); }, "odd");
  throws_with([] { RopeOptions o; o.rotary_dim = 5; RopeTable<float>(8, 8, o); }, "odd");
  throws_with([] { RopeOptions o; o.rotary_dim = 10; RopeTable<float>(8, 8, o); }, "rotary_dim 10");
  throws_with([] { RopeTable<float>(-1, 8); }, "max_positions");
  throws_with([] { RopeOptions o; o.base = 0.5; RopeTable<float>(8, 8, o); }, "base");
  throws_with([] { RopeOptions o; o.scaling = RopeScaling::Yarn; o.factor = 4; RopeTable<float>(8, 8, o); },
              "original_max_positions");
  throws_with([] { RopeOptions o; o.scaling = RopeScaling::Linear; o.factor = 0; RopeTable<float>(8, 8, o); },
              "factor");
  throws_with([] { RopeOptions o; o.scaling = RopeScaling::Llama3; o.factor = 8; o.original_max_positions = 64;
                   o.low_freq_factor = 4; o.high_freq_factor = 4; RopeTable<float>(8, 8, o); }, "high_freq_factor");
  throws_with([] { RopeOptions o; o.freq_factors = {1.0, 2.0}; RopeTable<float>(8, 8, o); }, "freq_factors");

  RopeTable<float> table(10, 8);
  Matrix<float> x(4, 8);
  fill_random(x, 3);
  const Matrix<float> x0 = x;
  Matrix<float> wrong(4, 6);
  throws_with([&] { kexue::rope(table, wrong); }, "x has 6 columns");
  throws_with([&] { kexue::rope(table, x, -1); }, "first_position is -1");
  throws_with([&] { kexue::rope(table, x, 7); }, "[7, 11)");
  throws_with([&] { kexue::rope(table, x, std::vector<Index>{0, 1, 10, 2}); }, "positions[2] = 10");
  throws_with([&] { kexue::rope(table, x, std::vector<int>{0, 1, -3, 2}); }, "positions[2] = -3");
  throws_with([&] { kexue::rope(table, x, std::vector<Index>{0, 1}); }, "positions has 2 entries");
  kexue::Vector<float> b(7);
  throws_with([&] { kexue::rope_with_bias(table, x, b); }, "bias has 7 values");
  throws_with([&] { kexue::rope_2d(table, x, 3); }, "2 x table dim = 16");
  Matrix<float> x2d(4, 16);
  fill_random(x2d, 4);
  const Matrix<float> x2d0 = x2d;
  throws_with([&] { kexue::rope_2d(table, x2d, 0); }, "grid_width");
  throws_with([&] { kexue::rope_2d(table, x2d, 2, 19); }, "row 11");  // patches 19..22 of width 2: rows 9..11
  CHECK((x.array() == x0.array()).all());
  CHECK((x2d.array() == x2d0.array()).all());

  // Batched forms.
  std::vector<float> qbuf(2 * 3 * 4 * 8, 1.f), kbuf(2 * 3 * 5 * 8, 1.f);
  auto q = TensorView<float>::contiguous(qbuf.data(), 2, 3, 4, 8);
  auto k = TensorView<float>::contiguous(kbuf.data(), 2, 3, 5, 8);
  throws_with([&] { kexue::rope(table, q, k); }, "batch and seq must match");
  throws_with([&] { kexue::rope(table, q, q); }, "same buffer");
  throws_with([&] { kexue::rope(table, q, 7); }, "[7, 11)");
  throws_with([&] { kexue::rope(table, q, std::vector<Index>{0, 1, 2}); }, "positions has 3 entries");
  auto q6 = TensorView<float>::contiguous(qbuf.data(), 2, 3, 4, 6);
  throws_with([&] { kexue::rope(table, q6); }, "dim 6");
  kexue::Vector<float> bias_bad(16);
  throws_with([&] { kexue::rope_with_bias(table, q, bias_bad); }, "bias has 16 values");
  for (float v : qbuf) REQUIRE(v == 1.f);
  for (float v : kbuf) REQUIRE(v == 1.f);
}

TEST_CASE("rope_2d: coordinates checked against the table", "[rope][errors]") {
  RopeTable<double> table(4, 4);
  Matrix<double> x(6, 8);
  x.setOnes();
  // Width 3: patches 0..5 are rows 0..1, cols 0..2: inside a 4-position table.
  kexue::rope_2d(table, x, 3);
  // Width 5 from patch 0: cols reach 4 (outside), rows 0..1.
  Matrix<double> y = Matrix<double>::Ones(6, 8);
  CHECK_THROWS_AS(kexue::rope_2d(table, y, 5), kexue::Error);
  CHECK((y.array() == 1.0).all());
  // Width 5 from patch 21: one grid row (row 4: outside), cols 1..4.
  Matrix<double> z = Matrix<double>::Ones(2, 8);
  CHECK_THROWS_AS(kexue::rope_2d(table, z, 5, 21), kexue::Error);
  // Width 8 from patch 1, 3 patches: cols 1..3 and row 0: inside.
  Matrix<double> w = Matrix<double>::Ones(3, 8);
  kexue::rope_2d(table, w, 8, 1);
  CHECK(w.allFinite());
}

// ---- batched ----------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("batched rope equals the 2-D form, for any layout of the buffer and thread count",
                   "[rope][batched]", float, double) {
  using T = TestType;
  const Index B = 2, H = 4, HK = 2, S = 13, D = 36;
  const int saved_threads = kexue::detail::max_threads();
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
    RopeOptions o;
    o.layout = layout;
    o.rotary_dim = 28;
    RopeTable<T> table(40, D, o);
    const auto qv = random_values<T>(B * H * S * D, 21, T(-2), T(2));
    const auto kv = random_values<T>(B * HK * S * D, 22, T(-2), T(2));
    std::vector<Index> pos_bs;  // [batch, seq]: batch 0 from 0, batch 1 from 20
    for (Index b = 0; b < B; ++b)
      for (Index s = 0; s < S; ++s) pos_bs.push_back(b * 20 + s);

    auto expected = [&](const std::vector<T>& src, Index heads, auto pos_of) {
      std::vector<T> out(src);
      auto view = TensorView<T>::contiguous(out.data(), B, heads, S, D);
      for (Index b = 0; b < B; ++b)
        for (Index h = 0; h < heads; ++h) {
          auto m = view.matrix(b, h);
          std::vector<Index> pos;
          for (Index s = 0; s < S; ++s) pos.push_back(pos_of(b, s));
          kexue::rope(table, m, pos);
        }
      return out;
    };
    const auto want_q = expected(qv, H, [](Index, Index s) { return 3 + s; });
    const auto want_k = expected(kv, HK, [](Index, Index s) { return 3 + s; });
    const auto want_qp = expected(qv, H, [&](Index b, Index s) { return pos_bs[std::size_t(b * S + s)]; });
    const auto want_kp = expected(kv, HK, [&](Index b, Index s) { return pos_bs[std::size_t(b * S + s)]; });

    for (int threads : {1, 2}) {
#if defined(_OPENMP)
      omp_set_num_threads(threads);
#endif
      INFO("threads " << threads << " layout " << int(layout));
      {  // q and k contiguous, grouped-query (H != HK), first_position.
        std::vector<T> q(qv), k(kv);
        kexue::rope(table, TensorView<T>::contiguous(q.data(), B, H, S, D),
                    TensorView<T>::contiguous(k.data(), B, HK, S, D), 3);
        CHECK(q == want_q);
        CHECK(k == want_k);
      }
      {  // single tensor, [batch, seq] positions
        std::vector<T> q(qv);
        kexue::rope(table, TensorView<T>::contiguous(q.data(), B, H, S, D), pos_bs);
        CHECK(q == want_qp);
        std::vector<T> q2(qv), k2(kv);
        kexue::rope(table, TensorView<T>::contiguous(q2.data(), B, H, S, D),
                    TensorView<T>::contiguous(k2.data(), B, HK, S, D), pos_bs);
        CHECK(q2 == want_qp);
        CHECK(k2 == want_kp);
      }
      {  // [seq] positions shared across the batch, single tensor
        std::vector<T> q(qv);
        std::vector<int> pos;
        for (Index s = 0; s < S; ++s) pos.push_back(int(3 + s));
        kexue::rope(table, TensorView<T>::contiguous(q.data(), B, H, S, D), pos);
        CHECK(q == want_q);
      }
      {  // seq-major [batch, seq, heads, dim] buffer (a fused projection's layout)
        std::vector<T> sm(qv.size());
        for (Index b = 0; b < B; ++b)
          for (Index h = 0; h < H; ++h)
            for (Index s = 0; s < S; ++s)
              for (Index j = 0; j < D; ++j)
                sm[std::size_t(((b * S + s) * H + h) * D + j)] = qv[std::size_t(((b * H + h) * S + s) * D + j)];
        auto view = TensorView<T>::seq_major(sm.data(), B, S, H, D);
        kexue::rope(table, view, 3);
        bool same = true;
        for (Index b = 0; b < B; ++b)
          for (Index h = 0; h < H; ++h)
            for (Index s = 0; s < S; ++s)
              for (Index j = 0; j < D; ++j)
                same = same && sm[std::size_t(((b * S + s) * H + h) * D + j)] ==
                                   want_q[std::size_t(((b * H + h) * S + s) * D + j)];
        CHECK(same);
      }
      {  // per-head bias [heads, dim] equals the 2-D rope_with_bias per head
        std::vector<T> q(qv);
        const auto bv = random_values<T>(H * D, 23, T(-1), T(1));
        Matrix<T> bias(H, D);
        std::copy(bv.begin(), bv.end(), bias.data());
        kexue::rope_with_bias(table, TensorView<T>::contiguous(q.data(), B, H, S, D), bias, 2);
        std::vector<T> want(qv);
        auto wv = TensorView<T>::contiguous(want.data(), B, H, S, D);
        for (Index b = 0; b < B; ++b)
          for (Index h = 0; h < H; ++h) {
            auto m = wv.matrix(b, h);
            kexue::rope_with_bias(table, m, bias.row(h), 2);
          }
        CHECK(q == want);
      }
    }
  }
#if defined(_OPENMP)
  omp_set_num_threads(saved_threads);
#endif
  (void)saved_threads;
}

TEST_CASE("batched rope over several position tiles equals the 2-D form", "[rope][batched]") {
  // Rows of 4096 doubles make a table row 32 KiB, so a tile holds 32 positions and 40 positions span 2 tiles.
  const Index B = 2, H = 3, S = 40, D = 4096;
  RopeOptions o;
  o.layout = RopeLayout::Half;
  RopeTable<double> table(S + 5, D, o);
  REQUIRE(kexue::detail::rope_tile_positions(table) < S);
  const auto qv = random_values<double>(B * H * S * D, 31, -2.0, 2.0);
  const auto kv = random_values<double>(B * H * S * D, 32, -2.0, 2.0);
  const auto bv = random_values<double>(D, 33, -1.0, 1.0);
  kexue::Vector<double> bias(D);
  std::copy(bv.begin(), bv.end(), bias.data());
  std::vector<double> want_q(qv), want_k(kv), want_b(qv);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      auto mq = TensorView<double>::contiguous(want_q.data(), B, H, S, D).matrix(b, h);
      auto mk = TensorView<double>::contiguous(want_k.data(), B, H, S, D).matrix(b, h);
      auto mb = TensorView<double>::contiguous(want_b.data(), B, H, S, D).matrix(b, h);
      kexue::rope(table, mq, 5);
      kexue::rope(table, mk, 5);
      kexue::rope_with_bias(table, mb, bias, 5);
    }
  const int saved_threads = kexue::detail::max_threads();
  for (int threads : {1, 2}) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    std::vector<double> q(qv), k(kv), qb(qv);
    kexue::rope(table, TensorView<double>::contiguous(q.data(), B, H, S, D),
                TensorView<double>::contiguous(k.data(), B, H, S, D), 5);
    kexue::rope_with_bias(table, TensorView<double>::contiguous(qb.data(), B, H, S, D), bias, 5);
    CHECK(q == want_q);
    CHECK(k == want_k);
    CHECK(qb == want_b);
  }
#if defined(_OPENMP)
  omp_set_num_threads(saved_threads);
#endif
  (void)saved_threads;
}

TEST_CASE("rope: freq_factors divide the scaled frequencies (ggml freq_factors, LongRoPE rescale factors)", "[rope]") {
  RopeOptions o;
  o.layout = RopeLayout::Half;
  o.scaling = RopeScaling::Linear;
  o.factor = 2.0;
  RopeTable<double> plain(32, 8, o);
  o.freq_factors = {1.0, 1.5, 4.0, 0.5};
  RopeTable<double> scaled(32, 8, o);
  for (std::size_t i = 0; i < 4; ++i)
    CHECK(scaled.inv_freq()[i] == Approx(plain.inv_freq()[i] / o.freq_factors[i]).epsilon(1e-15));
  // The rows follow: pair 2 at position 12 rotates by 12 * w_2 / (2 * 4).
  Matrix<double> x(1, 8);
  x << 0, 0, 1, 0, 0, 0, 0, 0;
  kexue::rope(scaled, x, 12);
  const double angle = 12 * std::pow(10000.0, -4.0 / 8) / 8.0;
  CHECK(x(0, 2) == Approx(std::cos(angle)).margin(1e-14));
  CHECK(x(0, 6) == Approx(std::sin(angle)).margin(1e-14));
}

// ---- batched RoPE + bias for q and k, batched 2-D RoPE with explicit coordinates ---------------------------

namespace {

/// Runs f() with 1 and then 2 OpenMP threads (once when OpenMP is off), restoring the thread count.
template <class F>
void for_one_and_two_threads(F&& f) {
  const int saved_threads = kexue::detail::max_threads();
  for (int threads : {1, 2}) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    f(threads);
  }
#if defined(_OPENMP)
  omp_set_num_threads(saved_threads);
#endif
  (void)saved_threads;
}

/// A [batch, heads, seq, dim] buffer in one of two memory layouts: head-major (contiguous) or seq-major (the
/// layout of a fused projection's output).
template <class T>
struct Tensor {
  std::vector<T> data;
  Index B, H, S, D;
  bool seq_major;
  TensorView<T> view() {
    return seq_major ? TensorView<T>::seq_major(data.data(), B, S, H, D)
                     : TensorView<T>::contiguous(data.data(), B, H, S, D);
  }
};

template <class T>
Tensor<T> random_tensor(Index B, Index H, Index S, Index D, bool seq_major, std::uint32_t seed) {
  return {random_values<T>(B * H * S * D, seed, T(-2), T(2)), B, H, S, D, seq_major};
}

/// The expected result of a batched call: the [n, dim] rope_with_bias on every (b, h) slice of a copy, with
/// bias row h (or the shared bias) and the positions of batch entry b.
template <class T>
Tensor<T> looped_rope_with_bias(const RopeTable<T>& table, Tensor<T> t, const Matrix<T>& bias,
                                const std::vector<Index>& pos_bs) {
  auto v = t.view();
  for (Index b = 0; b < t.B; ++b)
    for (Index h = 0; h < t.H; ++h) {
      auto m = v.matrix(b, h);
      const std::vector<Index> pos(pos_bs.begin() + b * t.S, pos_bs.begin() + (b + 1) * t.S);
      const kexue::Vector<T> bh = bias.rows() == 1 ? bias.row(0).transpose() : bias.row(h).transpose();
      kexue::rope_with_bias(table, m, bh, pos);
    }
  return t;
}

}  // namespace

TEMPLATE_TEST_CASE("batched rope_with_bias for q and k equals the [n, dim] form bit for bit (GQA, layouts, threads)",
                   "[rope][batched][bias]", float, double) {
  using T = TestType;
  struct Shape {
    Index dim, rotary_dim;
  };
  constexpr Index L = kexue::detail::kLanes<T>;
  // Full vectors plus scalar pairs, a pass-through tail, an odd head size, every dim rotated, a tiny head.
  const Shape shapes[] = {{36, 28}, {37, 18}, {2 * (2 * L + 1), 0}, {6, 0}};
  const Index B = 2, S = 11;
  std::uint32_t seed = 100;
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
    for (const Shape& shape : shapes) {
      RopeOptions o;
      o.layout = layout;
      o.rotary_dim = shape.rotary_dim;
      const Index D = shape.dim;
      RopeTable<T> table(40, D, o);
      for (auto heads : {std::pair<Index, Index>{3, 2}, {1, 3}, {2, 2}}) {  // grouped-query and k-heavy head counts
        const Index HQ = heads.first, HK = heads.second;
        for (bool q_seq_major : {false, true}) {
          for (bool per_head : {false, true}) {
            INFO("layout " << int(layout) << " dim " << D << " rotary " << table.rotary_dim() << " hq " << HQ << " hk "
                           << HK << " q seq-major " << q_seq_major << " per-head bias " << per_head);
            const auto q0 = random_tensor<T>(B, HQ, S, D, q_seq_major, seed++);
            const auto k0 = random_tensor<T>(B, HK, S, D, !q_seq_major, seed++);
            Matrix<T> qb(per_head ? HQ : 1, D), kb(per_head ? HK : 1, D);
            fill_random(qb, seed++);
            fill_random(kb, seed++);
            std::vector<Index> first_bs, pos_bs, pos_s;  // first_position 3; [batch, seq]; [seq]
            for (Index b = 0; b < B; ++b)
              for (Index s = 0; s < S; ++s) {
                first_bs.push_back(3 + s);
                pos_bs.push_back(b == 0 ? 39 - 2 * s : 5 + s);  // descending in batch 0, from 5 in batch 1
              }
            for (Index s = 0; s < S; ++s) pos_s.push_back((7 * s) % 40);
            std::vector<Index> pos_s_bs;
            for (Index b = 0; b < B; ++b) pos_s_bs.insert(pos_s_bs.end(), pos_s.begin(), pos_s.end());
            const auto want_q3 = looped_rope_with_bias(table, q0, qb, first_bs);
            const auto want_k3 = looped_rope_with_bias(table, k0, kb, first_bs);
            const auto want_qbs = looped_rope_with_bias(table, q0, qb, pos_bs);
            const auto want_kbs = looped_rope_with_bias(table, k0, kb, pos_bs);
            const auto want_qs = looped_rope_with_bias(table, q0, qb, pos_s_bs);
            const auto want_ks = looped_rope_with_bias(table, k0, kb, pos_s_bs);
            // The bias changes the result (a test of the bias path, not of the plain rotation).
            {
              auto plain = q0;
              kexue::rope(table, plain.view(), 3);
              CHECK(plain.data != want_q3.data);
            }
            for_one_and_two_threads([&](int threads) {
              INFO("threads " << threads);
              auto q = q0, k = k0;
              kexue::rope_with_bias(table, q.view(), k.view(), qb, kb, 3);
              CHECK(q.data == want_q3.data);
              CHECK(k.data == want_k3.data);
              q = q0, k = k0;
              kexue::rope_with_bias(table, q.view(), k.view(), qb, kb, pos_bs);
              CHECK(q.data == want_qbs.data);
              CHECK(k.data == want_kbs.data);
              q = q0, k = k0;
              std::vector<int> pos_int(pos_s.begin(), pos_s.end());  // [seq], as int
              kexue::rope_with_bias(table, q.view(), k.view(), qb, kb, pos_int);
              CHECK(q.data == want_qs.data);
              CHECK(k.data == want_ks.data);
              // The single-tensor form with explicit positions agrees too.
              q = q0;
              kexue::rope_with_bias(table, q.view(), qb, pos_bs);
              CHECK(q.data == want_qbs.data);
            });
          }
        }
      }
    }
  }
}

TEST_CASE("batched rope_with_bias for q and k over several position tiles equals the [n, dim] form",
          "[rope][batched][bias]") {
  // As the tile test above: table rows of 32 KiB, so 40 positions span two work items per (batch, head).
  const Index B = 2, HQ = 2, HK = 1, S = 40, D = 4096;
  RopeTable<double> table(S + 5, D);
  REQUIRE(kexue::detail::rope_tile_positions(table) < S);
  const auto q0 = random_tensor<double>(B, HQ, S, D, false, 41);
  const auto k0 = random_tensor<double>(B, HK, S, D, true, 42);
  Matrix<double> qb(HQ, D), kb(1, D);
  fill_random(qb, 43);
  fill_random(kb, 44);
  std::vector<Index> first_bs;
  for (Index b = 0; b < B; ++b)
    for (Index s = 0; s < S; ++s) first_bs.push_back(5 + s);
  const auto want_q = looped_rope_with_bias(table, q0, qb, first_bs);
  const auto want_k = looped_rope_with_bias(table, k0, kb, first_bs);
  for_one_and_two_threads([&](int threads) {
    INFO("threads " << threads);
    auto q = q0, k = k0;
    kexue::rope_with_bias(table, q.view(), k.view(), qb, kb, 5);
    CHECK(q.data == want_q.data);
    CHECK(k.data == want_k.data);
  });
}

TEMPLATE_TEST_CASE("batched rope_with_bias for q and k matches PyTorch (the [n, dim] cases sliced into batches)",
                   "[rope][batched][bias][torch]", float, double) {
  using T = TestType;
  struct Case {
    const char* name;
    RopeLayout layout;
    Index dim, rotary_dim;
  };
  // Both cases have 15 rows x at positions 4..18 with one bias b: y = RoPE(x + b).
  const Case cases[] = {{"bias_inter", RopeLayout::Interleaved, 64, 0},
                        {"bias_half_partial", RopeLayout::Half, 40, 24}};
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string n = c.name;
    RopeOptions o;
    o.layout = c.layout;
    o.rotary_dim = c.rotary_dim;
    RopeTable<T> table(64, c.dim, o);
    const Matrix<T> x = ref().matrix<T>(n + "/x"), y = ref().matrix<T>(n + "/y");
    const kexue::Vector<T> b = ref().vector<T>(n + "/bias");
    REQUIRE(x.rows() == 15);
    const Index B = 3, S = 5, D = c.dim;
    // q [3, 2, 5, D]: batch entry e holds rows 5e..5e+4 (positions 4 + 5e + s) in both heads, per-head bias
    // [2, D] with b in both rows; k [3, 1, 5, D] seq-major with the same rows and the shared bias [D].
    std::vector<T> q(std::size_t(B * 2 * S * D)), k(std::size_t(B * S * D));
    auto qv = TensorView<T>::contiguous(q.data(), B, 2, S, D);
    auto kv = TensorView<T>::seq_major(k.data(), B, S, 1, D);
    std::vector<Index> pos;
    for (Index e = 0; e < B; ++e)
      for (Index s = 0; s < S; ++s) {
        pos.push_back(4 + e * S + s);
        for (Index h = 0; h < 2; ++h) std::copy(x.row(e * S + s).data(), x.row(e * S + s).data() + D, qv.row(e, h, s));
        std::copy(x.row(e * S + s).data(), x.row(e * S + s).data() + D, kv.row(e, 0, s));
      }
    Matrix<T> qb(2, D);
    qb.row(0) = b.transpose();
    qb.row(1) = b.transpose();
    kexue::rope_with_bias(table, qv, kv, qb, b, pos);
    Matrix<T> got_q0(B * S, D), got_q1(B * S, D), got_k(B * S, D);
    for (Index e = 0; e < B; ++e)
      for (Index s = 0; s < S; ++s) {
        got_q0.row(e * S + s) = Eigen::Map<const Matrix<T>>(qv.row(e, 0, s), 1, D);
        got_q1.row(e * S + s) = Eigen::Map<const Matrix<T>>(qv.row(e, 1, s), 1, D);
        got_k.row(e * S + s) = Eigen::Map<const Matrix<T>>(kv.row(e, 0, s), 1, D);
      }
    CHECK(nmse(got_q0, y) < tolerance<T>());
    CHECK(nmse(got_q1, y) < tolerance<T>());
    CHECK(nmse(got_k, y) < tolerance<T>());
    // The first_position form on one sequence of all 15 rows: q [1, 1, 15, D], k [1, 1, 15, D].
    Matrix<T> q1 = x, k1 = x;
    kexue::rope_with_bias(table, TensorView<T>::contiguous(q1.data(), 1, 1, 15, D),
                          TensorView<T>::contiguous(k1.data(), 1, 1, 15, D), b, b, 4);
    CHECK(nmse(q1, y) < tolerance<T>());
    CHECK((k1.array() == q1.array()).all());
  }
}

TEMPLATE_TEST_CASE("batched rope_2d with explicit coordinates equals the [n, 2 dim] form bit for bit",
                   "[rope][batched][rope2d]", float, double) {
  using T = TestType;
  constexpr Index L = kexue::detail::kLanes<T>;
  const Index B = 2, H = 3, S = 9;
  std::uint32_t seed = 200;
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
    for (auto shape : {std::pair<Index, Index>{10, 6}, {2 * (2 * L + 1), 0}, {7, 4}}) {
      RopeOptions o;
      o.layout = layout;
      o.rotary_dim = shape.second;
      const Index d = shape.first;
      RopeTable<T> table(12, d, o);
      for (bool seq_major : {false, true}) {
        INFO("layout " << int(layout) << " table dim " << d << " rotary " << table.rotary_dim() << " seq-major "
                       << seq_major);
        const auto x0 = random_tensor<T>(B, H, S, 2 * d, seq_major, seed++);
        std::vector<Index> rows_bs, cols_bs, rows_s;
        for (Index b = 0; b < B; ++b)
          for (Index s = 0; s < S; ++s) {
            rows_bs.push_back((3 * s + b) % 12);
            cols_bs.push_back(11 - (s + 5 * b) % 12);
          }
        for (Index s = 0; s < S; ++s) rows_s.push_back(s / 3);
        auto expected = [&](const std::vector<Index>& rows, const std::vector<Index>& cols) {
          auto t = x0;
          auto v = t.view();
          for (Index b = 0; b < B; ++b)
            for (Index h = 0; h < H; ++h) {
              auto m = v.matrix(b, h);
              auto pick = [&](const std::vector<Index>& p) {
                const Index off = Index(p.size()) == S ? 0 : b * S;
                return std::vector<Index>(p.begin() + off, p.begin() + off + S);
              };
              kexue::rope_2d(table, m, pick(rows), pick(cols));
            }
          return t;
        };
        const auto want_bs = expected(rows_bs, cols_bs);
        const auto want_mixed = expected(rows_s, cols_bs);  // rows shared by the batch, cols per batch entry
        for_one_and_two_threads([&](int threads) {
          INFO("threads " << threads);
          auto x = x0;
          kexue::rope_2d(table, x.view(), rows_bs, cols_bs);
          CHECK(x.data == want_bs.data);
          x = x0;
          Eigen::Matrix<int, Eigen::Dynamic, 1> cols_eigen(B * S);
          for (Index i = 0; i < B * S; ++i) cols_eigen[i] = int(cols_bs[std::size_t(i)]);
          kexue::rope_2d(table, x.view(), rows_s, cols_eigen);
          CHECK(x.data == want_mixed.data);
        });
      }
    }
  }
}

TEMPLATE_TEST_CASE("batched rope_2d with explicit coordinates matches PyTorch and the grid form",
                   "[rope][batched][rope2d][torch]", float, double) {
  using T = TestType;
  RopeOptions o;
  o.base = 1000.0;
  RopeTable<T> table(8, 64, o);
  const Matrix<T> x = ref().matrix<T>("rope2d/x"), y = ref().matrix<T>("rope2d/y");
  const auto rows = int_positions<T>(ref(), "rope2d/rows"), cols = int_positions<T>(ref(), "rope2d/cols");
  // The first 20 of the 23 patches as [4, 2, 5, 128]: batch entry e holds patches 5e..5e+4 in both heads.
  const Index B = 4, H = 2, S = 5, D = 128;
  std::vector<T> buf(std::size_t(B * H * S * D));
  auto v = TensorView<T>::contiguous(buf.data(), B, H, S, D);
  for (Index e = 0; e < B; ++e)
    for (Index h = 0; h < H; ++h)
      for (Index s = 0; s < S; ++s) std::copy(x.row(e * S + s).data(), x.row(e * S + s).data() + D, v.row(e, h, s));
  const std::vector<Index> rows20(rows.begin(), rows.begin() + 20), cols20(cols.begin(), cols.begin() + 20);
  kexue::rope_2d(table, v, rows20, cols20);
  for (Index h = 0; h < H; ++h) {
    Matrix<T> got(B * S, D);
    for (Index e = 0; e < B; ++e)
      for (Index s = 0; s < S; ++s) got.row(e * S + s) = Eigen::Map<const Matrix<T>>(v.row(e, h, s), 1, D);
    CHECK(nmse(got, y.topRows(20)) < tolerance<T>());
  }
  // All 23 patches as one sequence shared by 2 batch entries ([seq] coordinates) equal the grid form.
  std::vector<T> a(std::size_t(2 * 23 * D)), g;
  for (Index e = 0; e < 2; ++e) std::copy(x.data(), x.data() + 23 * D, a.begin() + e * 23 * D);
  g = a;
  kexue::rope_2d(table, TensorView<T>::contiguous(a.data(), 2, 1, 23, D), rows, cols);
  kexue::rope_2d(table, TensorView<T>::contiguous(g.data(), 2, 1, 23, D), 5, 2);
  CHECK(a == g);
  Matrix<T> first = Eigen::Map<const Matrix<T>>(a.data(), 23, D);
  CHECK(nmse(first, y) < tolerance<T>());
}

TEST_CASE("batched rope_with_bias and rope_2d: bad input throws before anything is written", "[rope][errors]") {
  auto message = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const kexue::Error& e) {
      return e.what();
    }
    return "(no kexue::Error)";
  };
  RopeTable<float> table(10, 8);
  std::vector<float> qbuf(2 * 2 * 4 * 8, 1.f), kbuf(2 * 1 * 4 * 8, 1.f);
  auto q = TensorView<float>::contiguous(qbuf.data(), 2, 2, 4, 8);
  auto k = TensorView<float>::contiguous(kbuf.data(), 2, 1, 4, 8);
  const kexue::Vector<float> b8 = kexue::Vector<float>::Ones(8);
  const Matrix<float> b2x8 = Matrix<float>::Ones(2, 8), b3x8 = Matrix<float>::Ones(3, 8);
  CHECK(message([&] { kexue::rope_with_bias(table, q, k, b8, b2x8); }) ==
        "rope_with_bias: k_bias has 16 values but needs 8 (dim) or 8 (k heads x dim = 1 x 8)");
  CHECK(message([&] { kexue::rope_with_bias(table, q, k, b3x8, b8); }) ==
        "rope_with_bias: q_bias has 24 values but needs 8 (dim) or 16 (q heads x dim = 2 x 8)");
  CHECK(message([&] {
          kexue::rope_with_bias(table, q, k, b8, b8, std::vector<Index>{0, 1, 10, 2});
        }) == "rope_with_bias: positions[2] = 10 is outside the table's positions [0, 10)");
  CHECK(message([&] { kexue::rope_with_bias(table, q, k, b8, b8, 7); }) ==
        "rope_with_bias: rows at positions [7, 11) but the table holds positions [0, 10)");
  // A bias inside k (k is rotated in place while q's rows read it).
  const Eigen::Map<const kexue::Vector<float>> inside_k(kbuf.data() + 8, 8);
  CHECK(message([&] { kexue::rope_with_bias(table, q, k, inside_k, b8); }).find("q_bias shares memory with k") !=
        std::string::npos);
  std::vector<float> x2d(2 * 3 * 4 * 16, 1.f);
  auto x = TensorView<float>::contiguous(x2d.data(), 2, 3, 4, 16);
  CHECK(message([&] {
          kexue::rope_2d(table, x, std::vector<Index>{0, 1, 2, 3}, std::vector<int>{0, 1, 2, 3, 4, 5, 6, 12});
        }) == "rope_2d: cols[7] = 12 is outside the table's positions [0, 10)");
  CHECK(message([&] {
          kexue::rope_2d(table, x, std::vector<Index>{0, 1, 2}, std::vector<Index>{0, 1, 2, 3});
        }) == "rope_2d: rows has 3 entries but needs seq = 4 (shared by the batch) or batch x seq = 8");
  for (float v : qbuf) REQUIRE(v == 1.f);
  for (float v : kbuf) REQUIRE(v == 1.f);
  for (float v : x2d) REQUIRE(v == 1.f);
}

// ---- 16-bit storage: Eigen::half / Eigen::bfloat16 rows with a float or double table ---------------------------

namespace {

void use_threads(int threads) {
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

template <class S>
std::uint16_t bits_of(S x) {
  std::uint16_t u;
  std::memcpy(&u, static_cast<const void*>(&x), 2);
  return u;
}

/// The T kernel's result on the widened 16-bit values, rounded once: what every 16-bit form must equal bitwise.
template <class T, class S>
std::vector<std::uint16_t> widened_then_rounded(const std::vector<S>& x, const std::function<void(std::vector<T>&)>& kernel) {
  std::vector<T> w(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) w[i] = kexue::detail::as_compute<T>(x[i]);
  kernel(w);
  std::vector<std::uint16_t> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = bits_of(kexue::detail::round_to<S>(w[i]));
  return out;
}

template <class S>
std::vector<std::uint16_t> bits_vec(const std::vector<S>& x) {
  std::vector<std::uint16_t> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = bits_of(x[i]);
  return out;
}

template <class S>
std::vector<S> random_16(std::size_t n, std::uint32_t seed) {
  const auto v = random_values<float>(Index(n), seed, -3.0f, 3.0f);
  std::vector<S> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = kexue::detail::from_float<S>(v[i]);
  return out;
}

template <class T, class S>
void check_rope_16bit() {
  const Index L = kexue::detail::kLanes<float>;
  const int saved_threads = kexue::detail::max_threads();
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
    for (Index dim : {Index(2), Index(6), 2 * L - 2, 2 * L, 2 * L + 2, 4 * L + 6, Index(64), Index(130)}) {
      for (Index rot : {Index(0), dim - 2}) {
        if (rot == 0 && dim == 2) continue;
        RopeOptions o;
        o.layout = layout;
        o.rotary_dim = rot;
        RopeTable<T> table(64, dim, o);
        INFO("layout " << int(layout) << " dim " << dim << " rotary_dim " << rot);
        const Index n = 5, pad = 3, stride = dim + pad;  // strided rows; the padding must stay untouched
        std::vector<S> buf = random_16<S>(std::size_t(n * stride), 7 + std::uint32_t(dim));
        const auto bias_f = random_values<T>(dim, 9, T(-1), T(1));
        const Eigen::Map<const kexue::Vector<T>> bias(bias_f.data(), dim);
        const std::vector<Index> pos = {5, 0, 63, 17, 17};
        using Strided = Eigen::Map<Matrix<S>, 0, Eigen::OuterStride<>>;
        using StridedT = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;
        // The four [n, dim] forms, each against the T form on the widened rows.
        for (int form = 0; form < 4; ++form) {
          std::vector<S> x(buf);
          Strided xm(x.data(), n, dim, Eigen::OuterStride<>(stride));
          const auto want = widened_then_rounded<T, S>(buf, [&](std::vector<T>& w) {
            StridedT wm(w.data(), n, dim, Eigen::OuterStride<>(stride));
            if (form == 0) kexue::rope(table, wm, 11);
            if (form == 1) kexue::rope(table, wm, pos);
            if (form == 2) kexue::rope_with_bias(table, wm, bias, 11);
            if (form == 3) kexue::rope_with_bias(table, wm, bias, pos);
          });
          if (form == 0) kexue::rope(table, xm, 11);
          if (form == 1) kexue::rope(table, xm, pos);
          if (form == 2) kexue::rope_with_bias(table, xm, bias, 11);
          if (form == 3) kexue::rope_with_bias(table, xm, bias, pos);
          INFO("form " << form);
          CHECK(bits_vec(x) == want);  // padding included: the kernel leaves it as it was (and the T form too)
        }
        // Batched: q [2, 4, 7, dim], k [2, 2, 7, dim] (GQA), both thread counts, with and without biases.
        const Index B = 2, HQ = 4, HK = 2, SQ = 7;
        const auto qv = random_16<S>(std::size_t(B * HQ * SQ * dim), 31), kv = random_16<S>(std::size_t(B * HK * SQ * dim), 32);
        const auto qb_f = random_values<T>(HQ * dim, 33, T(-1), T(1));
        const Eigen::Map<const kexue::Vector<T>> qb(qb_f.data(), HQ * dim), kb(bias_f.data(), dim);
        for (int form = 0; form < 3; ++form) {
          std::vector<T> wq(qv.size()), wk(kv.size());
          for (std::size_t i = 0; i < qv.size(); ++i) wq[i] = kexue::detail::as_compute<T>(qv[i]);
          for (std::size_t i = 0; i < kv.size(); ++i) wk[i] = kexue::detail::as_compute<T>(kv[i]);
          auto tq = TensorView<T>::contiguous(wq.data(), B, HQ, SQ, dim);
          auto tk = TensorView<T>::contiguous(wk.data(), B, HK, SQ, dim);
          if (form == 0) kexue::rope(table, tq, tk, 40);
          if (form == 1) kexue::rope_with_bias(table, tq, tk, qb, kb, 40);
          if (form == 2) kexue::rope_with_bias(table, tq, qb, 40);
          std::vector<std::uint16_t> want_q(qv.size()), want_k(kv.size());
          for (std::size_t i = 0; i < qv.size(); ++i) want_q[i] = bits_of(kexue::detail::round_to<S>(wq[i]));
          for (std::size_t i = 0; i < kv.size(); ++i)
            want_k[i] = form == 2 ? bits_of(kv[i]) : bits_of(kexue::detail::round_to<S>(wk[i]));
          for (int threads : {1, 2}) {
            use_threads(threads);
            std::vector<S> q(qv), k(kv);
            auto sq = TensorView<S>::contiguous(q.data(), B, HQ, SQ, dim);
            auto sk = TensorView<S>::contiguous(k.data(), B, HK, SQ, dim);
            if (form == 0) kexue::rope(table, sq, sk, 40);
            if (form == 1) kexue::rope_with_bias(table, sq, sk, qb, kb, 40);
            if (form == 2) kexue::rope_with_bias(table, sq, qb, 40);
            INFO("batched form " << form << " threads " << threads);
            CHECK(bits_vec(q) == want_q);
            CHECK(bits_vec(k) == want_k);
          }
        }
      }
    }
  }
  use_threads(saved_threads);
}

}  // namespace

TEST_CASE("rope on fp16 / bf16 rows equals the float or double kernel on the widened rows, rounded once",
          "[rope][half]") {
  check_rope_16bit<float, Eigen::half>();
  check_rope_16bit<float, Eigen::bfloat16>();
  check_rope_16bit<double, Eigen::half>();
  check_rope_16bit<double, Eigen::bfloat16>();
}

TEST_CASE("rope on 16-bit rows: a single rounding (not the float then the 16-bit rounding) and bad input",
          "[rope][half][errors]") {
  // from_double rounds once: a double just above a bf16 tie whose float rounding lands on the tie.
  const double x = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);  // 1 + half a bf16 ulp + a little
  CHECK(float(kexue::detail::round_to<Eigen::bfloat16>(x)) == float(1.0 + std::ldexp(1.0, -7)));
  CHECK(float(kexue::detail::from_float<Eigen::bfloat16>(float(x))) == 1.0f);  // float first: the tie, to even
  RopeTable<float> table(8, 4);
  Matrix<Eigen::half> x3(2, 6);
  x3.setConstant(Eigen::half(1.0f));
  throws_with([&] { kexue::rope(table, x3, 0); }, "x has 6 columns");
  Matrix<Eigen::half> x4(3, 4);
  x4.setConstant(Eigen::half(1.0f));
  throws_with([&] { kexue::rope(table, x4, 6); }, "rope: rows at positions [6, 9)");
  CHECK(float(x4(0, 0)) == 1.0f);
}
