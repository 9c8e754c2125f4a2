// SPDX-License-Identifier: MIT
// Linear attention (SPEC 5.2): PyTorch reference data for every feature map, causal and non-causal, n != m, key
// padding, float and double; the chunked kernel against the scalar O(n m) reference over odd sizes, misaligned
// rows and NaN guards; streaming in pieces == one-shot; last causal row == non-causal; batched == 2-D (with GQA and
// per-batch key lengths); bitwise determinism across thread counts; errors leave outputs untouched.
#include <string>
#include <vector>

#include "../fuzz/fuzz_bounds.hpp"  // the fuzz target's error bound, for its regression cases
#include "kexue/linear_attention.hpp"
#include "kexue/half.hpp"
#include "reference/linear_attention_reference.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace kexue_test;
using kexue::FeatureMap;
using kexue::LinearAttentionOptions;
using kexue::Matrix;

namespace {

FeatureMap map_of(int i) { return i == 0 ? FeatureMap::EluPlusOne : i == 1 ? FeatureMap::Relu : FeatureMap::Identity; }

template <class T>
Matrix<T> random_matrix(Index rows, Index cols, std::uint32_t seed, T lo = T(-1.5), T hi = T(1.5)) {
  Matrix<T> m(rows, cols);
  const auto v = random_values<T>(rows * cols, seed, lo, hi);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = v[static_cast<std::size_t>(i)];
  return m;
}

template <class T>
double tol() {
  return std::is_same<T, float>::value ? 1e-10 : 1e-24;
}

template <class T>
void check_reference_data() {
  RefData ref("linear_attention");
  const int count = static_cast<int>(ref.scalar("la/count"));
  REQUIRE(count >= 11);
  for (int c = 0; c < count; ++c) {
    const std::string p = "la" + std::to_string(c) + "/";
    const Matrix<T> q = ref.matrix<T>(p + "q"), k = ref.matrix<T>(p + "k"), v = ref.matrix<T>(p + "v");
    const Matrix<double> want = ref.matrix<double>(p + "out");
    LinearAttentionOptions o;
    o.feature_map = map_of(static_cast<int>(ref.scalar(p + "feature")));
    o.causal = ref.scalar(p + "causal") != 0;
    o.eps = ref.scalar(p + "eps");
    o.key_length = static_cast<Index>(ref.scalar(p + "key_length"));
    for (bool wide : {false, true}) {
      o.double_state = wide;
      Matrix<T> out(q.rows(), v.cols());
      kexue::linear_attention(q, k, v, out, o);
      INFO("case " << c << " double_state " << wide);
      CHECK(nmse(out, want) < tol<T>());
      // The scalar reference agrees with PyTorch on the same (rounded) inputs: both sides are independent.
      const auto mine = kexue_ref::linear_attention(q, k, v, static_cast<int>(ref.scalar(p + "feature")), o.causal,
                                                    o.eps, *o.key_length);
      CHECK(nmse(mine, want) < 1e-24);
    }
  }
}

}  // namespace

TEST_CASE("linear attention matches PyTorch: every feature map, causal, n != m, key padding", "[linear]") {
  check_reference_data<float>();
  check_reference_data<double>();
}

TEMPLATE_TEST_CASE("chunked kernel matches the scalar reference over odd sizes, misaligned, NaN-guarded", "[linear]",
                   float, double) {
  using T = TestType;
  const Index L = kexue::detail::kLanes<T>;
  std::uint32_t seed = 1;
  struct Shape {
    Index n, m, d, dv;
  };
  const std::vector<Shape> shapes = {{0, 0, 3, 2},         {1, 1, 1, 1},     {3, 5, 7, 3},
                                     {7, 7, L - 1, L + 1}, {9, 9, L, L},     {17, 13, 5, 2 * L + 1},
                                     {63, 63, 8, 9},       {64, 64, 16, 16}, {65, 65, 3 * L, 8 * L + 2},
                                     {130, 130, 13, 7},    {70, 150, 6, 5},  {150, 70, 6, 5}};
  for (const auto& s : shapes) {
    for (int map = 0; map < 3; ++map) {
      for (bool causal : {false, true}) {
        {
          // Pointer offsets 0, 1 and L/4 in turn (every shape x map x causal combination sees one of them).
          const Index off = std::vector<Index>{0, 1, L / 4}[seed % 3];
          const T lo = map == 2 ? T(0.05) : T(-1.5);
          const Index stride_q = s.d + 3, stride_v = s.dv + 2, stride_o = s.dv + 5;
          PaddedBuffer<T> bq(s.n * stride_q, off), bk(s.m * stride_q, off), bv(s.m * stride_v, off),
              bo(s.n * stride_o, off);
          Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>> q(bq.data(), s.n, s.d, Eigen::OuterStride<>(stride_q)),
              k(bk.data(), s.m, s.d, Eigen::OuterStride<>(stride_q)),
              v(bv.data(), s.m, s.dv, Eigen::OuterStride<>(stride_v)),
              o(bo.data(), s.n, s.dv, Eigen::OuterStride<>(stride_o));
          q = random_matrix<T>(s.n, s.d, seed++, lo);
          k = random_matrix<T>(s.m, s.d, seed++, lo);
          v = random_matrix<T>(s.m, s.dv, seed++);
          const Index key_length = s.m > 4 ? s.m - 3 : s.m;
          // Padded key rows hold NaN: they must not reach the result.
          for (Index j = key_length; j < s.m; ++j) {
            k.row(j).setConstant(std::numeric_limits<T>::quiet_NaN());
            v.row(j).setConstant(std::numeric_limits<T>::quiet_NaN());
          }
          LinearAttentionOptions opt;
          opt.feature_map = map_of(map);
          opt.causal = causal;
          opt.key_length = key_length;
          kexue::linear_attention(q, k, v, o, opt);
          const auto want =
              kexue_ref::linear_attention(Matrix<T>(q), Matrix<T>(k), Matrix<T>(v), map, causal, opt.eps, key_length);
          INFO("n " << s.n << " m " << s.m << " d " << s.d << " dv " << s.dv << " map " << map << " causal " << causal
                    << " offset " << off);
          CHECK(nmse(Matrix<T>(o), want) < tol<T>());
          CHECK(bo.guards_intact(s.n * stride_o));
          // The gap between rows of out is not ours to write.
          for (Index i = 0; i < s.n; ++i)
            for (Index c = s.dv; c < stride_o; ++c) CHECK(std::isnan(bo.data()[i * stride_o + c]));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("streaming in 1, 2, 7, 67 and 203 pieces equals the one-shot causal call", "[linear][stream]", float,
                   double) {
  using T = TestType;
  const Index n = 203, d = 24, dv = 20;
  const Matrix<T> q = random_matrix<T>(n, d, 11), k = random_matrix<T>(n, d, 12), v = random_matrix<T>(n, dv, 13);
  for (int map = 0; map < 2; ++map) {
    for (bool wide : {false, true}) {
      LinearAttentionOptions o;
      o.feature_map = map_of(map);
      o.causal = true;
      o.double_state = wide;
      Matrix<T> one(n, dv);
      kexue::linear_attention(q, k, v, one, o);
      for (Index pieces : {Index(1), Index(2), Index(7), n / 3, n}) {  // n / 3: pieces of 3 tokens (decode path)
        kexue::LinearAttentionState<T> state(d, dv);
        Matrix<T> out(n, dv);
        Index begin = 0;
        for (Index p = 0; p < pieces; ++p) {
          const Index end = n * (p + 1) / pieces;
          kexue::linear_attention(q.middleRows(begin, end - begin), k.middleRows(begin, end - begin),
                                  v.middleRows(begin, end - begin), out.middleRows(begin, end - begin), state, o);
          begin = end;
        }
        INFO("pieces " << pieces << " map " << map << " double_state " << wide);
        CHECK(state.tokens() == n);
        if (pieces == 1) {
          CHECK(max_abs_diff(out, one) == 0);  // the same chunks in the same order
        } else {
          CHECK(nmse(out, one) < tol<T>());
        }
        // The state holds S = sum phi(k) v^T and z = sum phi(k).
        Matrix<double> s_want = Matrix<double>::Zero(d, dv);
        Eigen::VectorXd z_want = Eigen::VectorXd::Zero(d);
        for (Index j = 0; j < n; ++j)
          for (Index p = 0; p < d; ++p) {
            const double f = kexue_ref::feature(map, double(k(j, p)));
            z_want[p] += f;
            for (Index c = 0; c < dv; ++c) s_want(p, c) += f * double(v(j, c));
          }
        CHECK(nmse(state.s(), s_want) < tol<T>());
        CHECK(nmse(state.z(), z_want) < tol<T>());
      }
    }
  }
}

TEMPLATE_TEST_CASE("the last causal row equals the non-causal output when n = m", "[linear]", float, double) {
  using T = TestType;
  for (Index n : {1, 5, 64, 129}) {
    const Index d = 16, dv = 12;
    const Matrix<T> q = random_matrix<T>(n, d, 21), k = random_matrix<T>(n, d, 22), v = random_matrix<T>(n, dv, 23);
    LinearAttentionOptions o;
    o.eps = 0;  // so the first causal row is exactly v_0 up to rounding
    Matrix<T> full(n, dv), causal(n, dv);
    kexue::linear_attention(q, k, v, full, o);
    o.causal = true;
    kexue::linear_attention(q, k, v, causal, o);
    const Matrix<T> a = causal.row(n - 1), b = full.row(n - 1);
    CHECK(nmse(a, b) < tol<T>());
    // ... and a causal first row sees only key 0: it equals v_0.
    const Matrix<T> v0 = v.row(0), c0 = causal.row(0);
    CHECK(nmse(c0, v0) < (std::is_same<T, float>::value ? 1e-10 : 1e-20));
  }
}

TEST_CASE("double state accumulation: a long float sequence stays close to the double result", "[linear]") {
  const Index n = 6000, d = 8, dv = 8;
  const Matrix<double> qd = random_matrix<double>(n, d, 31), kd = random_matrix<double>(n, d, 32),
                       vd = random_matrix<double>(n, dv, 33);
  const Matrix<float> q = qd.cast<float>(), k = kd.cast<float>(), v = vd.cast<float>();
  LinearAttentionOptions o;
  o.causal = true;
  Matrix<double> want(n, dv);
  kexue::linear_attention(Matrix<double>(q.cast<double>()), Matrix<double>(k.cast<double>()),
                          Matrix<double>(v.cast<double>()), want, o);
  Matrix<float> narrow(n, dv), wide(n, dv);
  kexue::linear_attention(q, k, v, narrow, o);
  o.double_state = true;
  kexue::linear_attention(q, k, v, wide, o);
  const double e_narrow = nmse(narrow, want), e_wide = nmse(wide, want);
  INFO("float state nmse " << e_narrow << ", double state nmse " << e_wide);
  CHECK(e_wide < 1e-12);
  CHECK(e_narrow < 1e-9);
  CHECK(e_wide <= e_narrow);
}

TEMPLATE_TEST_CASE("empty inputs, no visible key, huge values: zeros or finite, never NaN", "[linear]", float, double) {
  using T = TestType;
  LinearAttentionOptions o;
  // n = 0 and m = 0.
  Matrix<T> q0(0, 4), k0(0, 4), v0(0, 3), o0(0, 3);
  kexue::linear_attention(q0, k0, v0, o0, o);
  Matrix<T> q = random_matrix<T>(5, 4, 41), out(5, 3);
  out.setConstant(T(7));
  kexue::linear_attention(q, k0, v0, out, o);
  CHECK(out.isZero(0));
  // key_length = 0 with eps = 0: 0 / 0 is defined as 0.
  const Matrix<T> k = random_matrix<T>(6, 4, 42), v = random_matrix<T>(6, 3, 43);
  o.eps = 0;
  o.key_length = 0;
  for (bool causal : {false, true}) {
    o.causal = causal;
    out.setConstant(T(7));
    kexue::linear_attention(q, k, v, out, o);
    CHECK(out.isZero(0));
  }
  // Causal with m < n: the first n - m queries see nothing.
  o.key_length.reset();
  Matrix<T> out8(8, 3);
  kexue::linear_attention(random_matrix<T>(8, 4, 44), k.topRows(3), v.topRows(3), out8, o);
  CHECK(out8.topRows(5).isZero(0));
  CHECK(out8.bottomRows(3).allFinite());
  // Huge positive inputs: elu + 1 is x + 1 and never overflows through exp; huge negative ones give exp -> 0.
  Matrix<T> big = random_matrix<T>(5, 4, 45) * T(1e4);
  o.causal = false;
  o.eps = 1e-6;
  kexue::linear_attention(big, big, v.topRows(5), out, o);
  CHECK(out.allFinite());
  // -inf features: elu + 1 and relu map them to 0, so such a key simply has no weight.
  Matrix<T> kinf = k.topRows(5);
  kinf.row(2).setConstant(-std::numeric_limits<T>::infinity());
  for (int map = 0; map < 2; ++map) {
    o.feature_map = map_of(map);
    for (bool causal : {false, true}) {
      o.causal = causal;
      kexue::linear_attention(q, kinf, v.topRows(5), out, o);
      CHECK(out.allFinite());
      const auto want = kexue_ref::linear_attention(q, kinf, Matrix<T>(v.topRows(5)), map, causal, o.eps, 5);
      CHECK(nmse(out, want) < tol<T>());
    }
  }
}

TEMPLATE_TEST_CASE("batched form equals the 2-D form per head, with GQA and per-batch key lengths", "[linear][batched]",
                   float, double) {
  using T = TestType;
  const Index B = 2, H = 4, Hkv = 2, n = 77, m = 77, d = 12, dv = 10;
  // q in [batch, seq, heads, dim] memory (seq-major view), k and v contiguous, out with a padded row stride.
  std::vector<T> qbuf(B * n * H * d), kbuf(B * Hkv * m * d), vbuf(B * Hkv * m * dv), obuf(B * H * n * (dv + 3), T(-1));
  const auto rq = random_values<T>(static_cast<Index>(qbuf.size()), 51);
  const auto rk = random_values<T>(static_cast<Index>(kbuf.size()), 52);
  const auto rv = random_values<T>(static_cast<Index>(vbuf.size()), 53);
  std::copy(rq.begin(), rq.end(), qbuf.begin());
  std::copy(rk.begin(), rk.end(), kbuf.begin());
  std::copy(rv.begin(), rv.end(), vbuf.begin());
  auto tq = kexue::TensorView<T>::seq_major(qbuf.data(), B, n, H, d);
  auto tk = kexue::TensorView<T>::contiguous(kbuf.data(), B, Hkv, m, d);
  auto tv = kexue::TensorView<T>::contiguous(vbuf.data(), B, Hkv, m, dv);
  kexue::TensorView<T> to(obuf.data(), {B, H, n, dv}, {H * n * (dv + 3), n * (dv + 3), dv + 3});
  for (bool causal : {false, true}) {
    LinearAttentionOptions o;
    o.causal = causal;
    const std::vector<Index> lengths = {m, 50};
    kexue::linear_attention(tq, tk, tv, to, o, lengths);
    for (Index b = 0; b < B; ++b) {
      for (Index h = 0; h < H; ++h) {
        LinearAttentionOptions o2 = o;
        o2.key_length = lengths[static_cast<std::size_t>(b)];
        Matrix<T> want(n, dv);
        kexue::linear_attention(tq.matrix(b, h), tk.matrix(b, h / 2), tv.matrix(b, h / 2), want, o2);
        const Matrix<T> got = to.matrix(b, h);
        CHECK(max_abs_diff(got, want) == 0);
      }
    }
  }
#if defined(_OPENMP)
  // Bitwise identical for 1 and 2 threads.
  LinearAttentionOptions o;
  o.causal = true;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  kexue::linear_attention(tq, tk, tv, to, o);
  const std::vector<T> one = obuf;
  omp_set_num_threads(2);
  kexue::linear_attention(tq, tk, tv, to, o);
  omp_set_num_threads(saved);
  CHECK(std::equal(one.begin(), one.end(), obuf.begin(), [](T a, T b) { return a == b || (a != a && b != b); }));
#endif
  // Batched streaming: two halves with per-head states equal the one-shot batched causal call.
  LinearAttentionOptions os;
  os.causal = true;
  std::vector<T> full(obuf.size());
  kexue::TensorView<T> tf(full.data(), to.shape, to.strides);
  auto tk4 = kexue::TensorView<T>::contiguous(kbuf.data(), B, Hkv, m, d);
  kexue::linear_attention(tq, tk4, tv, tf, os);
  std::vector<kexue::LinearAttentionState<T>> states(B * H, kexue::LinearAttentionState<T>(d, dv));
  const Index half = 40;
  auto slice = [](auto t, Index s0, Index len) {
    t.data = t.row(0, 0, s0);
    t.shape[2] = len;
    return t;
  };
  kexue::linear_attention(slice(tq, 0, half), slice(tk4, 0, half), slice(tv, 0, half), slice(to, 0, half), states, os);
  kexue::linear_attention(slice(tq, half, n - half), slice(tk4, half, n - half), slice(tv, half, n - half),
                          slice(to, half, n - half), states, os);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const Matrix<T> got = to.matrix(b, h), want = tf.matrix(b, h);
      CHECK(nmse(got, want) < tol<T>());
    }
  CHECK(states[3].tokens() == n);
}

TEST_CASE("bad input throws kexue::Error and leaves the output untouched", "[linear][errors]") {
  const Matrix<float> q = random_matrix<float>(5, 4, 61), k = random_matrix<float>(6, 4, 62),
                      v = random_matrix<float>(6, 3, 63);
  Matrix<float> out = Matrix<float>::Constant(5, 3, 42.f);
  auto untouched = [&] { return (out.array() == 42.f).all(); };
  LinearAttentionOptions o;
  CHECK_THROWS_AS(kexue::linear_attention(q, Matrix<float>(6, 5), v, out, o), kexue::Error);
  CHECK(untouched());
  CHECK_THROWS_AS(kexue::linear_attention(q, k, Matrix<float>(5, 3), out, o), kexue::Error);
  CHECK_THROWS_AS(kexue::linear_attention(q, k, v, Matrix<float>(5, 2), o), kexue::Error);
  CHECK_THROWS_AS(kexue::linear_attention(q, k, v, Matrix<float>(4, 3), o), kexue::Error);
  CHECK_THROWS_AS(kexue::linear_attention(Matrix<float>(5, 0), Matrix<float>(6, 0), v, out, o), kexue::Error);
  o.eps = -1e-6;
  CHECK_THROWS_AS(kexue::linear_attention(q, k, v, out, o), kexue::Error);
  o.eps = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(kexue::linear_attention(q, k, v, out, o), kexue::Error);
  o.eps = 1e-6;
  o.key_length = 7;
  CHECK_THROWS_AS(kexue::linear_attention(q, k, v, out, o), kexue::Error);
  o.key_length = -1;
  CHECK_THROWS_AS(kexue::linear_attention(q, k, v, out, o), kexue::Error);
  o.key_length.reset();
  CHECK(untouched());
  // Message names the function, the argument and the shapes.
  try {
    kexue::linear_attention(q, Matrix<float>(6, 5), v, out, o);
  } catch (const kexue::Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("linear_attention") != std::string::npos);
    CHECK(msg.find("k has shape [6 x 5]") != std::string::npos);
  }
  // Streaming: state shape mismatch, and one key per query.
  kexue::LinearAttentionState<float> bad(4, 2), good(4, 3);
  CHECK_THROWS_AS(kexue::linear_attention(q, k.topRows(5), v.topRows(5), out, bad, o), kexue::Error);
  CHECK_THROWS_AS(kexue::linear_attention(q, k, v, out, good, o), kexue::Error);
  CHECK(untouched());
  CHECK(good.tokens() == 0);
  CHECK(good.s().isZero(0));
  CHECK_THROWS_AS(kexue::LinearAttentionState<double>(0, 3), kexue::Error);
  // Aliasing.
  Matrix<float> qv = random_matrix<float>(5, 4, 64);
  CHECK_THROWS_AS(kexue::linear_attention(qv, qv, qv.leftCols(4), qv.leftCols(4), o), kexue::Error);
  // Batched: heads not a multiple of kv heads, batch mismatch, bad key_lengths size.
  std::vector<float> buf(2 * 3 * 5 * 4, 0.f), obuf(2 * 3 * 5 * 3, 42.f), kbuf(2 * 2 * 5 * 4, 0.f),
      vbuf(2 * 2 * 5 * 3, 0.f);
  auto tq = kexue::TensorView<float>::contiguous(buf.data(), 2, 3, 5, 4);
  auto tk = kexue::TensorView<float>::contiguous(kbuf.data(), 2, 2, 5, 4);
  auto tv = kexue::TensorView<float>::contiguous(vbuf.data(), 2, 2, 5, 3);
  auto to = kexue::TensorView<float>::contiguous(obuf.data(), 2, 3, 5, 3);
  CHECK_THROWS_AS(kexue::linear_attention(tq, tk, tv, to, o), kexue::Error);
  auto tk3 = kexue::TensorView<float>::contiguous(kbuf.data(), 1, 3, 5, 4);
  CHECK_THROWS_AS(kexue::linear_attention(tq, tk3, tv, to, o), kexue::Error);
  auto tk1 = kexue::TensorView<float>::contiguous(kbuf.data(), 2, 1, 5, 4);
  auto tv1 = kexue::TensorView<float>::contiguous(vbuf.data(), 2, 1, 5, 3);
  CHECK_THROWS_AS(kexue::linear_attention(tq, tk1, tv1, to, o, std::vector<Index>{5}), kexue::Error);
  CHECK_THROWS_AS(kexue::linear_attention(tq, tk1, tv1, to, o, std::vector<Index>{5, 6}), kexue::Error);
  std::vector<kexue::LinearAttentionState<float>> states(5, kexue::LinearAttentionState<float>(4, 3));
  CHECK_THROWS_AS(kexue::linear_attention(tq, tk1, tv1, to, states, o), kexue::Error);
  CHECK(std::all_of(obuf.begin(), obuf.end(), [](float x) { return x == 42.f; }));
}

TEMPLATE_TEST_CASE("EluPlusOne takes -inf and huge negative features without undefined behaviour",
                   "[linear_attention][fuzz-regression]", float, double) {
  // Found by fuzz/fuzz_linear_attention.cpp: xsimd 8.1's double exp converted -1e30 to an integer (UBSan
  // float-cast-overflow). phi(-inf) = phi(-1e30) = 0: such a key carries no weight, such a query sees only eps.
  using T = TestType;
  kexue::Matrix<T> q = kexue::Matrix<T>::Constant(9, 8, T(0.5)), k = q, v = kexue::Matrix<T>::Constant(9, 8, T(1));
  q(1, 3) = T(-1e30);
  q(2, 0) = -std::numeric_limits<T>::infinity();
  k(4, 5) = T(-1e30);
  k(7, 7) = -std::numeric_limits<T>::infinity();
  kexue::Matrix<T> out(9, 8);
  for (bool causal : {false, true}) {
    kexue::LinearAttentionOptions o;
    o.causal = causal;
    kexue::linear_attention(q, k, v, out, o);
    // Every value is 1, so each row is a weighted mean of ones: phi(q)^T z / (phi(q)^T z + eps).
    for (kexue::Index i = 0; i < out.size(); ++i) {
      CHECK(std::isfinite(double(out.data()[i])));
      CHECK(out.data()[i] == Approx(1.0).epsilon(1e-4));
    }
  }
}

TEMPLATE_TEST_CASE("causal: inf, NaN and 1e30 in keys a row cannot see yet never reach it", "[linear][hidden]", float,
                   double) {
  // Query i sees keys j <= i + (m - n); keys [p, m) hold garbage in k and v. Every row that sees none of them must
  // be finite and bitwise equal to the run with clean keys, whatever the feature map or state precision. (The
  // chunk's lower-triangular A V product runs over whole row tiles; a zero weight times an inf value is NaN.)
  using T = TestType;
  const Index d = 8, dv = 13;
  struct Case {
    Index n, m, p;
  };
  const Case cases[] = {{150, 150, 1}, {150, 150, 5}, {150, 150, 67}, {150, 150, 131}, {50, 150, 110}, {6, 100, 96}};
  const T bad[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                   -std::numeric_limits<T>::infinity(), T(1e30)};
  int checked_rows = 0;
  for (const auto& c : cases) {
    const Matrix<T> q = random_matrix<T>(c.n, d, 51), k = random_matrix<T>(c.m, d, 52),
                    v = random_matrix<T>(c.m, dv, 53);
    const Index rows = std::min(c.n, c.p - (c.m - c.n));  // rows i with i + m - n < p
    REQUIRE(rows > 0);
    for (int map = 0; map < 3; ++map) {
      for (bool wide : {false, true}) {
        LinearAttentionOptions o;
        o.feature_map = map_of(map);
        o.causal = true;
        o.double_state = wide;
        Matrix<T> clean(c.n, dv);
        kexue::linear_attention(q, k, v, clean, o);
        for (T x : bad) {
          Matrix<T> kp = k, vp = v, out(c.n, dv);
          kp.bottomRows(c.m - c.p).setConstant(x);
          vp.bottomRows(c.m - c.p).setConstant(x);
          kexue::linear_attention(q, kp, vp, out, o);
          INFO("n " << c.n << " m " << c.m << " p " << c.p << " map " << map << " double_state " << wide << " bad "
                    << double(x));
          CHECK(out.topRows(rows).allFinite());
          CHECK(max_abs_diff(out.topRows(rows), clean.topRows(rows)) == 0.0);
        }
        checked_rows += int(rows);
      }
    }
  }
  CHECK(checked_rows > 0);
  // The streaming form runs the same chunked kernel for pieces of more than 4 tokens.
  const Index n = 100, p = 70;
  const Matrix<T> q = random_matrix<T>(n, d, 54), k = random_matrix<T>(n, d, 55), v = random_matrix<T>(n, dv, 56);
  Matrix<T> kp = k, vp = v, clean(n, dv), out(n, dv);
  kp.bottomRows(n - p).setConstant(std::numeric_limits<T>::infinity());
  vp.bottomRows(n - p).setConstant(std::numeric_limits<T>::infinity());
  kexue::LinearAttentionState<T> s1(d, dv), s2(d, dv);
  kexue::linear_attention(q, k, v, clean, s1);
  kexue::linear_attention(q, kp, vp, out, s2);
  CHECK(out.topRows(p).allFinite());
  CHECK(max_abs_diff(out.topRows(p), clean.topRows(p)) == 0.0);
}

TEST_CASE("fuzz finding 0102003b: a similarity below float's range gives the documented zero row", "[linear]"
          "[fuzz-regression]") {
  // fuzz_linear_attention input 01 02 00 3b: float, elu + 1, causal, n = 146 queries, m = 75 keys, d = 1, eps = 0.
  // Query 71 sees key 0 only (bottom-right aligned: j <= i + m - n = i - 71); phi(k_0) = exp(-122.25) = 8e-54 is
  // below float's range, so the float similarity and denominator are exactly 0 and the kernel writes the zero row
  // linear_attention.hpp documents, while the double reference gives v_0. The fuzz target had promised float
  // accuracy there; its bound (fuzz/fuzz_bounds.hpp) now charges every feature value and product that underflows
  // in T. Checked here: that bound holds for every row of the finding (it did not before), the float zero row,
  // and the double kernel's v_0 (double holds 8e-54).
  const Index n = 146, m = 75, d = 1, dv = 11;
  Matrix<double> q = random_matrix<double>(n, d, 171), k = random_matrix<double>(m, d, 172),
                 v = random_matrix<double>(m, dv, 173, -8.0, 8.0);
  q(71, 0) = 0.241363525;
  k(0, 0) = -122.253906;
  const double v0[dv] = {-2.97851562, 7.98803711, -3.67602539, 38.984375,   1.91796875, -2.51245117,
                         -7.90991211, -5.94750977, 4.45068359,  -5.16259766, -1.72998047};
  for (Index c = 0; c < dv; ++c) v(0, c) = v0[c];
  const Matrix<float> qf = q.cast<float>(), kf = k.cast<float>(), vf = v.cast<float>();
  const Matrix<double> qd = qf.cast<double>(), kd = kf.cast<double>(), vd = vf.cast<double>();
  LinearAttentionOptions o;
  o.causal = true;
  o.eps = 0;
  const Matrix<double> want = kexue_ref::linear_attention(qd, kd, vd, 0, true, 0.0, m);
  const double vmax = vd.cwiseAbs().maxCoeff();
  for (bool wide : {false, true}) {
    o.double_state = wide;
    Matrix<float> out(n, dv);
    kexue::linear_attention(qf, kf, vf, out, o);
    INFO("double_state " << wide);
    CHECK(out.row(71).cwiseAbs().maxCoeff() == 0.0f);
    int promised = 0;
    for (Index i = 0; i < n; ++i) {
      const Index visible = std::max<Index>(0, std::min(m, i + (m - n) + 1));
      const auto bound = kexue_fuzz_bounds::la_row_bound<float>(
          0, 0.0, d, m, visible, [&](Index p) { return qd(i, p); }, [&](Index j, Index p) { return kd(j, p); }, vmax);
      if (!bound.promised) continue;
      ++promised;
      for (Index c = 0; c < dv; ++c) {
        INFO("row " << i << " column " << c << " got " << out(i, c) << " want " << want(i, c));
        CHECK(std::abs(double(out(i, c)) - want(i, c)) <= bound(want(i, c)));
      }
    }
    CHECK(promised > 0);  // the rows that see key 1 and later keys (phi ~ 1) are still checked
  }
  Matrix<double> outd(n, dv);
  kexue::linear_attention(qd, kd, vd, outd, o);
  for (Index c = 0; c < dv; ++c) CHECK(outd(71, c) == Approx(vd(0, c)).epsilon(1e-12));
}

TEST_CASE("fuzz 2b2727ab: a state entry past float's range times phi(q) = 0 is not promised; in range it is exact",
          "[fuzz-regression]") {
  // fuzz_linear_attention input 2b 27 27 ab: float, relu, non-causal, double_state, eps = 1e-6, n = 32 queries,
  // m = 1 key, d = 7, dv = 22. k_0 holds 1e30 at p = 5 and v_0 holds 1e30 at column 12, so the state entry
  // S(5, 12) = phi(k_05) v_0,12 = 1e60 is inf in float; phi(q_4) is 0 at p = 5 (relu of -2.0) and 0 * inf = NaN,
  // while the double reference sums s_0 v_0 (s_0 = 559) and gives 1e30. The fuzz target promised a finite value
  // there; its bound (fuzz/fuzz_bounds.hpp) now also requires the state to fit in T, and linear_attention.hpp
  // documents the range. Checked here: row 4 is no longer promised at 1e30 (it was, and was NaN) and is at 1e15;
  // at 1e15 the bound holds for every promised row (at 1e30 no row is promised: the state does not depend on q);
  // the in-range columns of row 4 at both sizes; and the double kernel's 1e30 (double holds the state).
  const Index n = 32, m = 1, d = 7, dv = 22;
  Matrix<double> q = random_matrix<double>(n, d, 181, -3.0, 3.0), v = random_matrix<double>(m, dv, 183, -8.0, 8.0);
  Matrix<double> k(m, d);
  k << -3.12451, -7.03271, -5.38477, 87.207, 7.64844, 1e30, -6.32251;
  q.row(4) << -2.6897, -2.54065, -2.73926, 3.6864, 31.1484, -2.00793, 2.4231;
  v(0, 12) = 1e30;
  LinearAttentionOptions o;
  o.feature_map = FeatureMap::Relu;
  o.double_state = true;
  for (const double big : {1e30, 1e15}) {
    k(0, 5) = big;
    v(0, 12) = big;
    const Matrix<float> qf = q.cast<float>(), kf = k.cast<float>(), vf = v.cast<float>();
    const Matrix<double> qd = qf.cast<double>(), kd = kf.cast<double>(), vd = vf.cast<double>();
    const Matrix<double> want = kexue_ref::linear_attention(qd, kd, vd, 1, false, o.eps, m);
    const double vmax = vd.cwiseAbs().maxCoeff();
    Matrix<float> out(n, dv);
    kexue::linear_attention(qf, kf, vf, out, o);
    INFO("k_05 = v_0,12 = " << big);
    for (Index i = 0; i < n; ++i) {
      const auto bound = kexue_fuzz_bounds::la_row_bound<float>(
          1, o.eps, d, m, m, [&](Index p) { return qd(i, p); }, [&](Index j, Index p) { return kd(j, p); }, vmax);
      if (i == 4) CHECK(bound.promised == (big < 1e20));
      if (!bound.promised) continue;
      for (Index c = 0; c < dv; ++c) {
        INFO("row " << i << " column " << c << " got " << out(i, c) << " want " << want(i, c));
        CHECK(std::abs(double(out(i, c)) - want(i, c)) <= bound(want(i, c)));
      }
    }
    // Row 4's columns other than 12 never touch the overflowing entry: v_0,c exactly up to rounding.
    for (Index c = 0; c < dv; ++c) {
      if (c == 12 && big > 1e20) continue;
      INFO("row 4 column " << c);
      CHECK(double(out(4, c)) == Approx(want(4, c)).epsilon(1e-5));
    }
    Matrix<double> outd(n, dv);
    kexue::linear_attention(qd, kd, vd, outd, o);
    CHECK(outd(4, 12) == Approx(want(4, 12)).epsilon(1e-12));  // double holds the state 1e60
  }
}

// ---- 16-bit inputs (issue 13): q, k, v as Eigen::half / Eigen::bfloat16, out float ----------------------------

namespace {

template <class S>
Matrix<S> to16(const Matrix<float>& m) {
  Matrix<S> out(m.rows(), m.cols());
  kexue::convert(m, out);
  return out;
}
template <class S>
Matrix<float> widened(const Matrix<S>& m) {
  Matrix<float> out(m.rows(), m.cols());
  kexue::convert(m, out);
  return out;
}

template <class S>
void check_linear_16bit() {
  // Sizes across the lane count and the chunk (64), n != m, every feature map, causal or not, key padding: the
  // 16-bit call equals the float call on the widened inputs bit for bit (the widening happens where the float
  // kernel copies rows into its chunk buffers, so the arithmetic is the same).
  for (Index n : {Index(1), Index(7), Index(70), Index(131)}) {
    for (Index d : {Index(3), Index(16), Index(33)}) {
      const Index m = n + 5, dv = d + 2;
      const Matrix<S> q = to16<S>(random_matrix<float>(n, d, 1)), k = to16<S>(random_matrix<float>(m, d, 2)),
                      v = to16<S>(random_matrix<float>(m, dv, 3));
      const Matrix<float> qf = widened(q), kf = widened(k), vf = widened(v);
      for (int fm = 0; fm < 3; ++fm) {
        for (bool causal : {false, true}) {
          LinearAttentionOptions o;
          o.feature_map = map_of(fm);
          o.causal = causal;
          o.key_length = m - 2;
          Matrix<float> out(n, dv), want(n, dv);
          kexue::linear_attention(q, k, v, out, o);
          kexue::linear_attention(qf, kf, vf, want, o);
          INFO("n " << n << " d " << d << " map " << fm << " causal " << causal);
          CHECK(out == want);
        }
      }
      // Streaming (token by token and chunked pieces) on 16-bit inputs: the float streaming calls' bits.
      if (n >= 7) {
        kexue::LinearAttentionState<float> s16(d, dv), sf(d, dv);
        Index r = 0;
        for (Index piece : {Index(1), Index(2), Index(n)}) {
          const Index len = std::min(piece, n - r);
          if (len <= 0) break;
          Matrix<float> out(len, dv), want(len, dv);
          kexue::linear_attention(q.middleRows(r, len), k.middleRows(r, len), v.middleRows(r, len), out, s16);
          kexue::linear_attention(qf.middleRows(r, len), kf.middleRows(r, len), vf.middleRows(r, len), want, sf);
          CHECK(out == want);
          r += len;
        }
        CHECK(s16.s() == sf.s());
      }
    }
  }
  // Batched with GQA (4 query heads, 2 kv heads) and per-batch key lengths.
  const Index B = 2, H = 4, HK = 2, n = 37, d = 20, dv = 12;
  const auto qv = to16<S>(random_matrix<float>(B * H * n, d, 11)), kv = to16<S>(random_matrix<float>(B * HK * n, d, 12)),
             vv = to16<S>(random_matrix<float>(B * HK * n, dv, 13));
  const Matrix<float> qf = widened(qv), kf = widened(kv), vf = widened(vv);
  Matrix<float> out(B * H * n, dv), want(B * H * n, dv);
  using kexue::TensorView;
  for (bool causal : {false, true}) {
    LinearAttentionOptions o;
    o.causal = causal;
    kexue::linear_attention(TensorView<const S>::contiguous(qv.data(), B, H, n, d),
                            TensorView<const S>::contiguous(kv.data(), B, HK, n, d),
                            TensorView<const S>::contiguous(vv.data(), B, HK, n, dv),
                            TensorView<float>::contiguous(out.data(), B, H, n, dv), o, {n, n - 9});
    kexue::linear_attention(TensorView<const float>::contiguous(qf.data(), B, H, n, d),
                            TensorView<const float>::contiguous(kf.data(), B, HK, n, d),
                            TensorView<const float>::contiguous(vf.data(), B, HK, n, dv),
                            TensorView<float>::contiguous(want.data(), B, H, n, dv), o, {n, n - 9});
    INFO("batched causal " << causal);
    CHECK(out == want);
  }
}

}  // namespace

TEST_CASE("linear attention on fp16 / bf16 q, k, v equals the float kernel on the widened inputs", "[linear][half]") {
  check_linear_16bit<Eigen::half>();
  check_linear_16bit<Eigen::bfloat16>();
  // And against PyTorch's float64 result on the rounded inputs (the storage-only accuracy of issue 13).
  RefData ref("linear_attention");
  const std::string p = "la0/";
  const Matrix<float> q = ref.matrix<float>(p + "q"), k = ref.matrix<float>(p + "k"), v = ref.matrix<float>(p + "v");
  LinearAttentionOptions o;
  o.feature_map = map_of(static_cast<int>(ref.scalar(p + "feature")));
  o.causal = ref.scalar(p + "causal") != 0;
  o.eps = ref.scalar(p + "eps");
  o.key_length = static_cast<Index>(ref.scalar(p + "key_length"));
  Matrix<float> out(q.rows(), v.cols()), exact(q.rows(), v.cols());
  const auto qb = to16<Eigen::bfloat16>(q), kb = to16<Eigen::bfloat16>(k), vb = to16<Eigen::bfloat16>(v);
  kexue::linear_attention(qb, kb, vb, out, o);
  // float64 on the rounded inputs, through the double kernel (itself checked against PyTorch above).
  Matrix<double> qd = widened(qb).cast<double>(), kd = widened(kb).cast<double>(), vd = widened(vb).cast<double>();
  Matrix<double> outd(q.rows(), v.cols());
  kexue::linear_attention(qd, kd, vd, outd, o);
  CHECK(nmse(out, outd) < 1e-10);
}

TEST_CASE("linear attention on 16-bit inputs: bad input throws before writing", "[linear][half][errors]") {
  const Matrix<Eigen::half> q = to16<Eigen::half>(random_matrix<float>(4, 8, 1));
  const Matrix<Eigen::half> k = to16<Eigen::half>(random_matrix<float>(5, 7, 2));
  const Matrix<Eigen::half> v = to16<Eigen::half>(random_matrix<float>(5, 3, 3));
  Matrix<float> out = Matrix<float>::Constant(4, 3, 9.0f);
  throws_with([&] { kexue::linear_attention(q, k, v, out); }, "linear_attention: k has shape [5 x 7]");
  CHECK(out(0, 0) == 9.0f);
}

TEMPLATE_TEST_CASE("linear attention: phi of a NaN is 0 for relu and elu + 1, as for -1000", "[linear_attention][nan]",
                   float, double) {
  // x86's vmaxps and ARM64's fmax disagree on NaN, and the vector lanes disagreed with the scalar tails: phi(NaN) is
  // now 0 everywhere (a NaN counts as -inf), so a NaN in k or q gives the bits of -1000 there.
  using T = TestType;
  const Index n = 45, m = 45, d = 19, dv = 11;
  for (int map = 0; map < 2; ++map)
    for (bool causal : {false, true})
      for (Index col : {Index(2), d - 1}) {  // a vector lane and (d = 19) a scalar tail
        const Matrix<T> q = Matrix<T>::Random(n, d), k = Matrix<T>::Random(m, d), v = Matrix<T>::Random(m, dv);
        LinearAttentionOptions o;
        o.feature_map = static_cast<kexue::FeatureMap>(map);
        o.causal = causal;
        Matrix<T> got(n, dv), low(n, dv);
        Matrix<T> kn = k, kl = k, qn = q, ql = q;
        kn(20, col) = qn(7, col) = std::numeric_limits<T>::quiet_NaN();
        kl(20, col) = ql(7, col) = T(-1000);
        kexue::linear_attention(qn, kn, v, got, o);
        kexue::linear_attention(ql, kl, v, low, o);
        INFO("map " << map << " causal " << causal << " column " << col);
        CHECK(got.allFinite());
        CHECK(max_abs_diff(got, low) == 0.0);
      }
}
