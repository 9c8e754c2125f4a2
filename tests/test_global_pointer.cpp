// SPDX-License-Identifier: MIT
// GlobalPointer family (SPEC 2): scores against PyTorch (bert4keras semantics) and the scalar reference,
// decoding against a brute-force scan, the multi-label loss against torch autograd, errors, batching and
// thread-count invariance.
#include <kexue/global_pointer.hpp>
#include <kexue/half.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../fuzz/fuzz_bounds.hpp"  // the fuzz target's error bound, for its regression case
#include "reference/global_pointer_reference.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::Index;
using kexue::Matrix;
using kexue::MaskConvention;
using kexue_test::nmse;
using kexue_test::set_threads;
using MatD = Matrix<double>;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

template <class T>
using StrideMap = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;

const kexue_test::RefData& ref() {
  static const kexue_test::RefData data("global_pointer");
  return data;
}

template <class T>
Matrix<T> random_matrix(Index r, Index c, std::uint32_t seed, T scale = T(1)) {
  auto v = kexue_test::random_values<T>(r * c, seed, T(-1), T(1));
  Matrix<T> m(r, c);
  for (Index i = 0; i < r * c; ++i) m.data()[i] = v[std::size_t(i)] * scale;
  return m;
}

kexue::GlobalPointerOptions opts(MaskConvention c, double fill = -kInf, bool tril = true, bool scale = true) {
  kexue::GlobalPointerOptions o;
  o.convention = c;
  o.fill = fill;
  o.tril_mask = tril;
  o.scale = scale;
  return o;
}

kexue::GlobalPointerOptions norope() {
  kexue::GlobalPointerOptions o;
  o.rope = false;
  return o;
}

template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) {
      const auto x = a(i, j), y = b(i, j);
      if (!(x == y) && !(std::isnan(x) && std::isnan(y))) return false;
    }
  return true;
}

}  // namespace

TEMPLATE_TEST_CASE("global_pointer one head matches PyTorch (bert4keras semantics)", "[global_pointer]", float,
                   double) {
  using T = TestType;
  for (std::string tag : {"a", "b", "c", "d"}) {
    const std::string base = "head_" + tag + "/";
    const Matrix<T> q = ref().matrix<T>(base + "q"), k = ref().matrix<T>(base + "k");
    const Index n = q.rows(), d = q.cols(), length = Index(ref().scalar(base + "length"));
    kexue::RopeTable<T> table(64, d);
    const std::pair<const char*, kexue::GlobalPointerOptions> variants[] = {
        {"current", opts(MaskConvention::Current)},
        {"current_fill", opts(MaskConvention::Current, -1e4)},
        {"current_noscale_notril", opts(MaskConvention::Current, -kInf, false, false)},
        {"bert4keras2021", opts(MaskConvention::Bert4keras2021)},
        {"torch_port", opts(MaskConvention::TorchPort)},
        {"current_norope", norope()},
    };
    for (const auto& v : variants) {
      INFO(base << v.first);
      Matrix<T> s(n, n);
      kexue::global_pointer(table, q, k, s, length, v.second);
      const Matrix<T> want = ref().matrix<T>(base + v.first);
      CHECK(nmse(s, want) < kexue_test::nmse_bound<T>());
      if (v.second.convention == MaskConvention::Current)
        for (Index i = 0; i < n; ++i)
          for (Index j = 0; j < n; ++j)
            if (!(j < length && i < length && (j >= i || !v.second.tril_mask))) CHECK(s(i, j) == T(v.second.fill));
    }
  }
}

TEMPLATE_TEST_CASE("global_pointer layer matches PyTorch", "[global_pointer]", float, double) {
  using T = TestType;
  kexue::GlobalPointerWeights<T> w{ref().matrix<T>("layer/w"), ref().vector<T>("layer/b"),
                                   Index(ref().scalar("layer/heads")), Index(ref().scalar("layer/head_size"))};
  const Matrix<T> h = ref().matrix<T>("layer/h");
  const Index n = h.rows();
  kexue::RopeTable<T> table(n, w.head_size);
  for (Index length : {7, 11}) {
    const std::string base = "layer/len" + std::to_string(length) + "/";
    const std::pair<const char*, kexue::GlobalPointerOptions> variants[] = {
        {"current", opts(MaskConvention::Current)},
        {"fill", opts(MaskConvention::Current, -1e12)},
        {"bert4keras2021", opts(MaskConvention::Bert4keras2021)},
    };
    for (const auto& v : variants) {
      INFO(base << v.first);
      Matrix<T> s(w.heads * n, n);
      kexue::global_pointer(w, table, h, s, length, v.second);
      CHECK(nmse(s, ref().matrix<T>(base + v.first)) < kexue_test::nmse_bound<T>());
    }
  }
}

TEMPLATE_TEST_CASE("efficient_global_pointer matches PyTorch", "[global_pointer]", float, double) {
  using T = TestType;
  kexue::EfficientGlobalPointerWeights<T> w{ref().matrix<T>("efficient/w_p"), ref().vector<T>("efficient/b_p"),
                                            ref().matrix<T>("efficient/w_c"), ref().vector<T>("efficient/b_c"),
                                            Index(ref().scalar("efficient/heads")),
                                            Index(ref().scalar("efficient/head_size"))};
  const Matrix<T> h = ref().matrix<T>("efficient/h");
  const Index n = h.rows();
  kexue::RopeTable<T> table(n, w.head_size);
  for (Index length : {6, 11}) {
    const std::string base = "efficient/len" + std::to_string(length) + "/";
    const std::pair<const char*, kexue::GlobalPointerOptions> variants[] = {
        {"current", opts(MaskConvention::Current)},
        {"fill", opts(MaskConvention::Current, -1e12)},
        {"bert4keras2021", opts(MaskConvention::Bert4keras2021)},
        {"torch_port", opts(MaskConvention::TorchPort)},
    };
    for (const auto& v : variants) {
      INFO(base << v.first);
      Matrix<T> s(w.heads * n, n);
      kexue::efficient_global_pointer(w, table, h, s, length, v.second);
      CHECK(nmse(s, ref().matrix<T>(base + v.first)) < kexue_test::nmse_bound<T>());
    }
  }
}

TEMPLATE_TEST_CASE("global_pointer SIMD kernel matches the scalar reference over odd sizes and strides",
                   "[global_pointer]", float, double) {
  using T = TestType;
  const MaskConvention conventions[] = {MaskConvention::Current, MaskConvention::Bert4keras2021,
                                        MaskConvention::TorchPort};
  std::uint32_t seed = 1000;
  for (Index n : {0, 1, 5, 6, 7, 13, 16, 17, 33, 50}) {
    for (Index d : {2, 10, 64}) {
      for (Index offset : {0, 1}) {
        const Index ld = n + 5, ldq = d + 3;
        kexue_test::PaddedBuffer<T> qb(n * ldq, offset), kb(n * ldq, offset), sb(n * ld, offset);
        StrideMap<T> q(qb.data(), n, d, Eigen::OuterStride<>(ldq)), k(kb.data(), n, d, Eigen::OuterStride<>(ldq));
        q = random_matrix<T>(n, d, ++seed, T(2));
        k = random_matrix<T>(n, d, ++seed, T(2));
        kexue::RopeTable<T> table(n + 3, d);
        // The reference's raw dot products once; each variant only changes the masking.
        const MatD raw = kexue_ref::global_pointer(q.template cast<double>(), k.template cast<double>(), n,
                                                   opts(MaskConvention::Current, -kInf, false, false));
        for (Index length : {n, n / 2, Index(0)}) {
          for (auto conv : conventions) {
            for (bool tril : {true, false}) {
              const auto o = opts(conv, conv == MaskConvention::Current && tril ? -kInf : -7.0, tril, n % 2 == 0);
              INFO("n " << n << " d " << d << " offset " << offset << " length " << length << " tril " << tril
                        << " convention " << int(conv));
              StrideMap<T> s(sb.data(), n, n, Eigen::OuterStride<>(ld));
              kexue::global_pointer(table, q, k, s, length, o);
              MatD want(n, n);
              const double scale = o.scale ? 1.0 / std::sqrt(double(d)) : 1.0;
              for (Index i = 0; i < n; ++i)
                for (Index j = 0; j < n; ++j) want(i, j) = kexue_ref::mask_cell(raw(i, j), i, j, length, o, scale, false);
              CHECK(nmse(Matrix<T>(s), want) < kexue_test::nmse_bound<T>());
              // Between rows the padding of the scores must be untouched.
              bool gaps_nan = true;
              for (Index i = 0; i + 1 < n; ++i)
                for (Index j = n; j < ld; ++j) gaps_nan = gaps_nan && std::isnan(sb.data()[i * ld + j]);
              CHECK(gaps_nan);
              CHECK(sb.guards_intact(n * ld - (n > 0 ? ld - n : 0)));
            }
          }
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("layer and efficient layer match the scalar reference at head_size 64", "[global_pointer]", float,
                   double) {
  using T = TestType;
  const Index n = 25, D = 20, A = 3, d = 64;
  kexue::GlobalPointerWeights<T> w{random_matrix<T>(D, 2 * A * d, 7, T(0.3)), random_matrix<T>(2 * A * d, 1, 8), A, d};
  kexue::EfficientGlobalPointerWeights<T> e{random_matrix<T>(D, 2 * d, 9, T(0.3)), random_matrix<T>(2 * d, 1, 10),
                                            random_matrix<T>(2 * d, 2 * A, 11, T(0.3)),
                                            random_matrix<T>(2 * A, 1, 12), A, d};
  const Matrix<T> h = random_matrix<T>(n, D, 13);
  kexue::RopeTable<T> table(n, d);
  const MatD hd = h.template cast<double>();
  for (Index length : {n, Index(14)}) {
    for (int variant = 0; variant < 4; ++variant) {
      const auto o = variant == 3 ? norope() : opts(MaskConvention(variant));
      Matrix<T> s(A * n, n);
      kexue::global_pointer(w, table, h, s, length, o);
      CHECK(nmse(s, kexue_ref::global_pointer_layer(hd, w.w.template cast<double>(), w.b.template cast<double>(), A, d,
                                                    length, o)) < kexue_test::nmse_bound<T>());
      kexue::efficient_global_pointer(e, table, h, s, length, o);
      CHECK(nmse(s, kexue_ref::efficient_global_pointer(hd, e.w_p.template cast<double>(), e.b_p.template cast<double>(),
                                                        e.w_c.template cast<double>(), e.b_c.template cast<double>(),
                                                        A, d, length, o)) < kexue_test::nmse_bound<T>());
    }
  }
  // No bias vectors (use_bias = False).
  w.b.resize(0);
  e.b_p.resize(0);
  e.b_c.resize(0);
  Matrix<T> s(A * n, n);
  kexue::global_pointer(w, table, h, s, n);
  CHECK(nmse(s, kexue_ref::global_pointer_layer(hd, w.w.template cast<double>(), Eigen::VectorXd(), A, d, n)) <
        kexue_test::nmse_bound<T>());
  kexue::efficient_global_pointer(e, table, h, s, n);
  CHECK(nmse(s, kexue_ref::efficient_global_pointer(hd, e.w_p.template cast<double>(), Eigen::VectorXd(),
                                                    e.w_c.template cast<double>(), Eigen::VectorXd(), A, d, n)) <
        kexue_test::nmse_bound<T>());
}

TEST_CASE("global_pointer properties: relative positions, conventions agree on kept cells", "[global_pointer]") {
  // With the same q at every row and the same k at every row, RoPE makes s(i, j) depend on j - i only.
  const Index n = 20, d = 16;
  Matrix<double> q(n, d), k(n, d);
  const Matrix<double> q0 = random_matrix<double>(1, d, 3), k0 = random_matrix<double>(1, d, 4);
  for (Index i = 0; i < n; ++i) {
    q.row(i) = q0;
    k.row(i) = k0;
  }
  kexue::RopeTable<double> table(n, d);
  Matrix<double> s(n, n);
  kexue::global_pointer(table, q, k, s, n);
  for (Index i = 1; i < n; ++i)
    for (Index j = i; j < n; ++j) CHECK(s(i, j) == Approx(s(0, j - i)).epsilon(1e-12).margin(1e-12));
  // Kept cells are the same under every convention.
  Matrix<double> s2(n, n);
  for (auto conv : {MaskConvention::Bert4keras2021, MaskConvention::TorchPort}) {
    const Matrix<double> qr = random_matrix<double>(n, d, 5), kr = random_matrix<double>(n, d, 6);
    kexue::global_pointer(table, qr, kr, s, 13);
    kexue::global_pointer(table, qr, kr, s2, 13, opts(conv));
    for (Index i = 0; i < 13; ++i)
      for (Index j = i; j < 13; ++j) CHECK(s(i, j) == Approx(s2(i, j)).epsilon(1e-12));
  }
}

TEMPLATE_TEST_CASE("batched forms equal the 2-D calls bitwise; 1 and 2 threads agree bitwise", "[global_pointer]",
                   float, double) {
  using T = TestType;
  const Index B = 2, H = 3, n = 29, d = 16, D = 10;
  // q, k as one fused projection [B, n, H, d] viewed as [B, H, n, d].
  const Matrix<T> qbuf = random_matrix<T>(B * n, H * d, 21), kbuf = random_matrix<T>(B * n, H * d, 22);
  auto qv = kexue::TensorView<const T>::seq_major(qbuf.data(), B, n, H, d);
  auto kv = kexue::TensorView<const T>::seq_major(kbuf.data(), B, n, H, d);
  Matrix<T> sbuf(B * H * n, n);
  auto sv = kexue::TensorView<T>::contiguous(sbuf.data(), B, H, n, n);
  kexue::RopeTable<T> table(n, d);
  const std::vector<Index> lengths{n, 17};
  kexue::global_pointer(table, qv, kv, sv, lengths);
  for (Index b = 0; b < B; ++b)
    for (Index a = 0; a < H; ++a) {
      Matrix<T> s(n, n);
      kexue::global_pointer(table, qv.matrix(b, a), kv.matrix(b, a), s, lengths[std::size_t(b)]);
      CHECK(bitwise_equal(s, sbuf.middleRows((b * H + a) * n, n)));
    }

  kexue::GlobalPointerWeights<T> w{random_matrix<T>(D, 2 * H * d, 23), random_matrix<T>(2 * H * d, 1, 24), H, d};
  kexue::EfficientGlobalPointerWeights<T> e{random_matrix<T>(D, 2 * d, 25), random_matrix<T>(2 * d, 1, 26),
                                            random_matrix<T>(2 * d, 2 * H, 27), random_matrix<T>(2 * H, 1, 28), H, d};
  const Matrix<T> h = random_matrix<T>(B * n, D, 29);
  Matrix<T> batched(B * H * n, n), eb(B * H * n, n);
  kexue::global_pointer(w, table, h, batched, lengths);
  kexue::efficient_global_pointer(e, table, h, eb, lengths);
  for (Index b = 0; b < B; ++b) {
    Matrix<T> one(H * n, n);
    kexue::global_pointer(w, table, h.middleRows(b * n, n), one, lengths[std::size_t(b)]);
    CHECK(bitwise_equal(one, batched.middleRows(b * H * n, H * n)));
    kexue::efficient_global_pointer(e, table, h.middleRows(b * n, n), one, lengths[std::size_t(b)]);
    CHECK(bitwise_equal(one, eb.middleRows(b * H * n, H * n)));
  }

#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  Matrix<T> t1(B * H * n, n), t2(B * H * n, n), e1(B * H * n, n), e2(B * H * n, n), q1(B * H * n, n);
  set_threads(1);
  kexue::global_pointer(w, table, h, t1, lengths);
  kexue::efficient_global_pointer(e, table, h, e1, lengths);
  auto s1 = kexue::TensorView<T>::contiguous(q1.data(), B, H, n, n);
  kexue::global_pointer(table, qv, kv, s1, lengths);
  auto spans1 = kexue::global_pointer_spans(w, table, h.topRows(n), n);
  set_threads(2);
  kexue::global_pointer(w, table, h, t2, lengths);
  kexue::efficient_global_pointer(e, table, h, e2, lengths);
  auto spans2 = kexue::global_pointer_spans(w, table, h.topRows(n), n);
  set_threads(saved);
  CHECK(bitwise_equal(t1, t2));
  CHECK(bitwise_equal(e1, e2));
  CHECK(bitwise_equal(q1, sbuf));
  CHECK(spans1 == spans2);
#endif
}

TEMPLATE_TEST_CASE("decode_spans matches a brute-force scan; the lean path matches dense decoding",
                   "[global_pointer]", float, double) {
  using T = TestType;
  const Index H = 3, n = 23;
  Matrix<T> s = random_matrix<T>(H * n, n, 31, T(3));
  for (Index i = 0; i < H * n; i += 4) s(i, (i * 7) % n) = T(-kInf);
  s(2, 5) = std::numeric_limits<T>::quiet_NaN();
  const MatD sd = s.template cast<double>();
  for (double thr : {0.0, 1.5, -0.25}) {
    for (bool ex : {false, true}) {
      for (Index len : {n, Index(15), Index(2), Index(0)}) {
        kexue::DecodeOptions o;
        o.threshold = thr;
        o.exclude_boundary_tokens = ex;
        o.length = len;
        const auto got = kexue::decode_spans(s, H, o);
        const auto want = kexue_ref::decode(sd, H, o);
        REQUIRE(got.size() == want.size());
        for (std::size_t i = 0; i < got.size(); ++i) {
          CHECK(got[i].head == want[i].head);
          CHECK(got[i].start == want[i].start);
          CHECK(got[i].end == want[i].end);
          CHECK(got[i].score == want[i].score);
        }
      }
    }
  }
  CHECK(kexue::decode_spans(s, H).size() == kexue::decode_spans(s, H, 0.0).size());
  // A threshold between two representable T values: a cell equal to T(threshold) rounded up is above it.
  Matrix<T> one = Matrix<T>::Constant(1, 1, T(0.1));
  CHECK(kexue::decode_spans(one, 1, 0.1).size() == (double(T(0.1)) > 0.1 ? 1u : 0u));
  CHECK(kexue::decode_spans(one, 1, std::nextafter(double(T(0.1)), 0.0)).size() == 1u);

  // Lean path: identical spans (same kernel, so the same scores bit for bit) without the n x n matrices.
  const Index m = 31, D = 12, d = 8;
  kexue::GlobalPointerWeights<T> w{random_matrix<T>(D, 2 * H * d, 32), random_matrix<T>(2 * H * d, 1, 33), H, d};
  kexue::EfficientGlobalPointerWeights<T> e{random_matrix<T>(D, 2 * d, 34), random_matrix<T>(2 * d, 1, 35),
                                            random_matrix<T>(2 * d, 2 * H, 36), random_matrix<T>(2 * H, 1, 37), H, d};
  const Matrix<T> h = random_matrix<T>(m, D, 38, T(2));
  kexue::RopeTable<T> table(m, d);
  Matrix<T> dense(H * m, m);
  for (auto conv : {MaskConvention::Current, MaskConvention::Bert4keras2021, MaskConvention::TorchPort}) {
    for (double fill : {-kInf, 5.0}) {
      for (Index len : {m, Index(22)}) {
        {
          const bool ex = len == m;
          INFO("convention " << int(conv) << " fill " << fill << " length " << len << " exclude " << ex);
          const auto o = opts(conv, fill);
          kexue::DecodeOptions dec;
          dec.threshold = 0.5;
          dec.exclude_boundary_tokens = ex;
          kexue::global_pointer(w, table, h, dense, len, o);
          dec.length = len;
          const auto want = kexue::decode_spans(dense, H, dec);
          dec.length.reset();
          CHECK(kexue::global_pointer_spans(w, table, h, len, dec, o) == want);
          CHECK(!want.empty());
          kexue::efficient_global_pointer(e, table, h, dense, len, o);
          dec.length = len;
          const auto ewant = kexue::decode_spans(dense, H, dec);
          dec.length.reset();
          CHECK(kexue::efficient_global_pointer_spans(e, table, h, len, dec, o) == ewant);
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("multilabel_crossentropy matches torch autograd", "[global_pointer][loss]", float, double) {
  using T = TestType;
  const double tol = std::is_same<T, float>::value ? 1e-5 : 1e-12;
  struct Case {
    const char* name;
    bool soft;
    bool blocks;
  };
  for (const Case& c : {Case{"loss_spec", false, false}, Case{"loss_spec_soft", true, false},
                        Case{"loss_hard", false, false}, Case{"loss_soft", true, false},
                        Case{"loss_blocks", false, true}}) {
    INFO(c.name);
    const std::string base = std::string(c.name) + "/";
    const Matrix<T> s = ref().matrix<T>(base + "scores"), t = ref().matrix<T>(base + "labels");
    Matrix<T> g(s.rows(), s.cols());
    g.setConstant(T(99));
    kexue::MultilabelOptions o;
    o.soft = c.soft;
    double loss;
    if (c.blocks) {
      loss = kexue::global_pointer_crossentropy(s, t, &g);
    } else {
      loss = kexue::multilabel_crossentropy(s, t, &g, o);
    }
    CHECK(loss == Approx(ref().scalar(base + "loss")).epsilon(tol));
    CHECK(nmse(g, ref().matrix<double>(base + "grad")) < (std::is_same<T, float>::value ? 1e-12 : 1e-24));
    CHECK(kexue::multilabel_crossentropy(s, t, nullptr, o) == (c.blocks ? kexue::multilabel_crossentropy(s, t, nullptr, o) : loss));
  }
  // SPEC 2.4's derived vector, spelled out.
  Matrix<T> s(1, 4), y(1, 4), g(1, 4);
  s << 2, -1, 0.5, -3;
  y << 1, 0, 0, 1;
  CHECK(kexue::multilabel_crossentropy(s, y, &g) == Approx(4.1591158407).epsilon(1e-6));
  CHECK(double(g(0, 1)) == Approx(0.1219516523).epsilon(1e-5));
  CHECK(double(g(0, 2)) == Approx(0.5465493873).epsilon(1e-5));
  CHECK(double(g(0, 0)) == Approx(-0.0063774609).epsilon(1e-5));
  CHECK(double(g(0, 3)) == Approx(-0.9464991226).epsilon(1e-5));
  y << T(0.9), T(0.1), 0, 1;
  kexue::MultilabelOptions soft;
  soft.soft = true;
  CHECK(kexue::multilabel_crossentropy(s, y, nullptr, soft) == Approx(4.3804625689).epsilon(1e-6));
  // A fully masked row contributes 0 loss and 0 gradient; the mean still counts it.
  const Matrix<T> hs = ref().matrix<T>("loss_hard/scores"), ht = ref().matrix<T>("loss_hard/labels");
  Matrix<T> hg(hs.rows(), hs.cols());
  kexue::multilabel_crossentropy(hs, ht, &hg);
  CHECK(hg.row(3).cwiseAbs().maxCoeff() == T(0));
  for (Index j = 0; j < 5; ++j) CHECK(hg(0, j) == T(0));
}

TEMPLATE_TEST_CASE("multilabel_crossentropy matches the scalar reference; huge and -inf logits",
                   "[global_pointer][loss]", float, double) {
  using T = TestType;
  const Index rows = 6, cols = 37;
  Matrix<T> s = random_matrix<T>(rows, cols, 41, T(30));
  Matrix<T> t = random_matrix<T>(rows, cols, 42, T(1)).cwiseAbs();
  s(1, 3) = s(2, 0) = T(-kInf);
  for (bool soft : {false, true}) {
    Matrix<T> lab = t;
    if (!soft) lab = (t.array() > T(0.5)).template cast<T>();
    kexue::MultilabelOptions o;
    o.soft = soft;
    for (Index group : {1, 2, 3}) {
      o.rows_per_sample = group;
      Matrix<T> g(rows, cols);
      const double loss = kexue::multilabel_crossentropy(s, lab, &g, o);
      double want = 0;
      const Index samples = rows / group;
      for (Index p = 0; p < samples; ++p) {
        std::vector<double> sv, tv, gv;
        for (Index r = p * group; r < (p + 1) * group; ++r)
          for (Index c = 0; c < cols; ++c) {
            sv.push_back(double(s(r, c)));
            tv.push_back(double(lab(r, c)));
          }
        want += kexue_ref::mlce_row(sv, tv, &gv) / double(samples);
        for (Index r = p * group, i = 0; r < (p + 1) * group; ++r)
          for (Index c = 0; c < cols; ++c, ++i) CHECK(double(g(r, c)) == Approx(gv[std::size_t(i)] / double(samples)).margin(1e-6));
      }
      CHECK(std::isfinite(loss));
      CHECK(loss == Approx(want).epsilon(1e-6));
    }
  }
  // +inf logit on a negative: the loss is +inf, never NaN, and the gradient stays finite.
  s(0, 0) = T(kInf);
  Matrix<T> lab = Matrix<T>::Zero(rows, cols), g(rows, cols);
  const double loss = kexue::multilabel_crossentropy(s, lab, &g);
  CHECK(std::isinf(loss));
  CHECK(g.allFinite());
}

TEMPLATE_TEST_CASE("sparse_multilabel_crossentropy matches torch autograd", "[global_pointer][loss]", float, double) {
  using T = TestType;
  const double tol = std::is_same<T, float>::value ? 1e-5 : 1e-12;
  const Matrix<T> s = ref().matrix<T>("sparse/scores");
  for (const char* name : {"sparse", "sparse_mask_zero"}) {
    INFO(name);
    const std::string base = std::string(name) + "/";
    const Eigen::Matrix<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> pos =
        ref().matrix<double>(base + "positives").template cast<int>();
    Matrix<T> g(s.rows(), s.cols());
    const bool mask_zero = std::string(name) == "sparse_mask_zero";
    CHECK(kexue::sparse_multilabel_crossentropy(s, pos, &g, mask_zero) == Approx(ref().scalar(base + "loss")).epsilon(tol));
    CHECK(nmse(g, ref().matrix<double>(base + "grad")) < (std::is_same<T, float>::value ? 1e-12 : 1e-24));
  }
  // The sparse form equals the dense hard form with the same positives.
  Matrix<T> dense = Matrix<T>::Zero(s.rows(), s.cols());
  const Matrix<double> p = ref().matrix<double>("sparse/positives");
  for (Index r = 0; r < p.rows(); ++r)
    for (Index c = 0; c < p.cols(); ++c) dense(r, Index(p(r, c))) = T(1);
  CHECK(kexue::sparse_multilabel_crossentropy(s, p) == Approx(kexue::multilabel_crossentropy(s, dense)).epsilon(tol));
}

TEMPLATE_TEST_CASE("bad input throws kexue::Error and leaves outputs untouched", "[global_pointer][errors]", float,
                   double) {
  using T = TestType;
  const Index n = 9, d = 8, D = 5, A = 2;
  const Matrix<T> q = random_matrix<T>(n, d, 51), k = random_matrix<T>(n, d, 52), h = random_matrix<T>(n, D, 53);
  kexue::RopeTable<T> table(n, d), short_table(n - 1, d), wrong_dim(n, d + 2);
  Matrix<T> s = Matrix<T>::Constant(n, n, T(42));
  auto untouched = [&] { return (s.array() == T(42)).all(); };
  CHECK_THROWS_AS(kexue::global_pointer(table, q, k, s, n + 1), kexue::Error);
  CHECK_THROWS_AS(kexue::global_pointer(table, q, k, s, -1), kexue::Error);
  CHECK_THROWS_AS(kexue::global_pointer(short_table, q, k, s, n), kexue::Error);
  Matrix<T> s_norope(n, n);
  CHECK_NOTHROW(kexue::global_pointer(short_table, q, k, s_norope, n, norope()));  // no rotation: no positions
  CHECK_THROWS_AS(kexue::global_pointer(wrong_dim, q, k, s, n), kexue::Error);
  CHECK_THROWS_AS(kexue::global_pointer(table, q, k.leftCols(d - 2), s, n), kexue::Error);
  Matrix<T> small(n, n - 1);
  CHECK_THROWS_AS(kexue::global_pointer(table, q, k, small, n), kexue::Error);
  kexue::GlobalPointerOptions nan_fill;
  nan_fill.fill = std::nan("");
  CHECK_THROWS_AS(kexue::global_pointer(table, q, k, s, n, nan_fill), kexue::Error);
  CHECK(untouched());
  try {
    kexue::global_pointer(table, q, k, s, n + 1);
  } catch (const kexue::Error& e) {
    CHECK(std::string(e.what()).find("global_pointer: length 10") != std::string::npos);
  }

  kexue::GlobalPointerWeights<T> w{random_matrix<T>(D, 2 * A * d, 54), random_matrix<T>(2 * A * d, 1, 55), A, d};
  Matrix<T> sl = Matrix<T>::Constant(A * n, n, T(42));
  auto wrong = w;
  wrong.heads = 3;  // heads * head_size no longer matches w
  CHECK_THROWS_AS(kexue::global_pointer(wrong, table, h, sl, n), kexue::Error);
  try {
    kexue::global_pointer(wrong, table, h, sl, n);
  } catch (const kexue::Error& e) {
    CHECK(std::string(e.what()).find("weights.w has shape [5 x 32]") != std::string::npos);
  }
  wrong = w;
  wrong.b.resize(3);
  CHECK_THROWS_AS(kexue::global_pointer(wrong, table, h, sl, n), kexue::Error);
  CHECK_THROWS_AS(kexue::global_pointer(w, table, h.leftCols(D - 1), sl, n), kexue::Error);
  CHECK_THROWS_AS(kexue::global_pointer(w, table, h, sl, n + 1), kexue::Error);
  CHECK_THROWS_AS(kexue::global_pointer(w, table, h, sl, std::vector<Index>{4, 4}), kexue::Error);
  CHECK_THROWS_AS(kexue::global_pointer_spans(w, table, h, n + 1), kexue::Error);
  kexue::EfficientGlobalPointerWeights<T> e{random_matrix<T>(D, 2 * d, 56), {}, random_matrix<T>(2 * d, 2 * A, 57),
                                            {}, A, d};
  auto ewrong = e;
  ewrong.heads = 3;
  CHECK_THROWS_AS(kexue::efficient_global_pointer(ewrong, table, h, sl, n), kexue::Error);
  CHECK_THROWS_AS(kexue::efficient_global_pointer_spans(ewrong, table, h, n), kexue::Error);
  CHECK((sl.array() == T(42)).all());

  CHECK_THROWS_AS(kexue::decode_spans(sl.topRows(n + 1), A), kexue::Error);
  kexue::DecodeOptions dl;
  dl.length = n + 1;
  CHECK_THROWS_AS(kexue::decode_spans(sl, A, dl), kexue::Error);

  Matrix<T> sc = random_matrix<T>(4, 6, 58), lab = Matrix<T>::Zero(4, 6), g = Matrix<T>::Constant(4, 6, T(42));
  CHECK_THROWS_AS(kexue::multilabel_crossentropy(sc, lab.leftCols(5), &g), kexue::Error);
  Matrix<T> g_bad(4, 5);
  CHECK_THROWS_AS(kexue::multilabel_crossentropy(sc, lab, &g_bad), kexue::Error);
  lab(1, 1) = T(0.5);
  CHECK_THROWS_AS(kexue::multilabel_crossentropy(sc, lab, &g), kexue::Error);  // hard labels must be 0/1
  lab(1, 1) = T(1.5);
  kexue::MultilabelOptions soft;
  soft.soft = true;
  CHECK_THROWS_AS(kexue::multilabel_crossentropy(sc, lab, &g, soft), kexue::Error);
  lab(1, 1) = T(0);
  kexue::MultilabelOptions grp;
  grp.rows_per_sample = 3;
  CHECK_THROWS_AS(kexue::multilabel_crossentropy(sc, lab, &g, grp), kexue::Error);
  Eigen::MatrixXi pos(4, 2);
  pos << 0, 1, 2, 2, 0, 1, 0, 1;
  CHECK_THROWS_AS(kexue::sparse_multilabel_crossentropy(sc, pos, &g), kexue::Error);  // duplicate
  pos(1, 1) = 6;
  CHECK_THROWS_AS(kexue::sparse_multilabel_crossentropy(sc, pos, &g), kexue::Error);  // out of range
  CHECK((g.array() == T(42)).all());
}

TEST_CASE("empty sequences and length 0", "[global_pointer]") {
  kexue::RopeTable<float> table(4, 8);
  Matrix<float> q(0, 8), k(0, 8), s(0, 0);
  kexue::global_pointer(table, q, k, s, 0);
  kexue::GlobalPointerWeights<float> w{Matrix<float>::Ones(3, 32), {}, 2, 8};
  Matrix<float> h(0, 3), sl(0, 0);
  kexue::global_pointer(w, table, h, sl, 0);
  CHECK(kexue::global_pointer_spans(w, table, h, 0).empty());
  CHECK(kexue::decode_spans(sl, 2).empty());
  Matrix<float> h4 = Matrix<float>::Ones(4, 3), s4(8, 4);
  kexue::global_pointer(w, table, h4, s4, 0);
  CHECK((s4.array() == -std::numeric_limits<float>::infinity()).all());
  CHECK(kexue::multilabel_crossentropy(Matrix<float>(0, 3), Matrix<float>(0, 3)) == 0.0);
}

TEST_CASE("fuzz finding 0100001001000010: RoPE'd scores are accurate to the rotated pairs' norms", "[global_pointer]"
          "[fuzz-regression]") {
  // fuzz_global_pointer input 01 00 00 10 01 00 00 10: float, one head, n = 38, head_size 2, length 30, no tril
  // mask, scaled. At cell (15, 15) q = (0.204, 119.96) and k = (123.64, 0.0264) have a score of 20.1014, but the
  // rotation by 15 rad turns them into q' = (-78.2, -91.0), k' = (-93.9, 80.4), whose products 7343 and -7315
  // cancel to it: the float result is off by 1.3e-3 = 0.75 eps r_q r_k (r = the pairs' 2-norms), an accurate
  // result for the terms actually summed. The fuzz target's bound scaled with the unrotated |q| . |k| = 28.4 and
  // reported it; it now uses the pair norms (fuzz/fuzz_bounds.hpp), checked here for every cell of the finding.
  using T = float;
  const Index n = 38, d = 2, length = 30;
  Matrix<T> q = random_matrix<T>(n, d, 181, T(100)), k = random_matrix<T>(n, d, 182, T(100));
  q(15, 0) = 0.204345703f;
  q(15, 1) = 119.960938f;
  k(15, 0) = 123.636719f;
  k(15, 1) = 0.0263671875f;
  const kexue::RopeTable<T> table(41, d);
  const auto o = opts(MaskConvention::Current, -kInf, false, true);
  Matrix<T> s(n, n);
  kexue::global_pointer(table, q, k, s, length, o);
  const MatD Q = q.cast<double>(), K = k.cast<double>();
  const MatD want = kexue_ref::global_pointer(Q, K, length, o);
  const double scale = 1 / std::sqrt(double(d)), u = std::numeric_limits<T>::epsilon();
  int checked = 0;
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) {
      if (!std::isfinite(want(i, j))) {
        CHECK(double(s(i, j)) == want(i, j));  // masked: the fill
        continue;
      }
      const double mag = kexue_fuzz_bounds::rotated_dot_magnitude(d, [&](Index p) { return Q(i, p); },
                                                                  [&](Index p) { return K(j, p); }) *
                         scale;
      INFO("cell " << i << ", " << j << " got " << s(i, j) << " want " << want(i, j));
      CHECK(std::abs(double(s(i, j)) - want(i, j)) <= 16 * u * double(d + 8) * (mag + std::abs(want(i, j))));
      ++checked;
    }
  CHECK(checked == length * length);
  CHECK(double(s(15, 15)) == Approx(want(15, 15)).epsilon(1e-4));
}

// ---- 16-bit inputs (issue 13): projected q, k as Eigen::half / Eigen::bfloat16, float scores -------------------

TEMPLATE_TEST_CASE("global_pointer on fp16 / bf16 q, k equals the float kernel on the widened inputs, bitwise",
                   "[global_pointer][half]", Eigen::half, Eigen::bfloat16) {
  using S = TestType;
  auto to16 = [](const Matrix<float>& m) {
    Matrix<S> out(m.rows(), m.cols());
    kexue::convert(m, out);
    return out;
  };
  auto widen = [](const auto& m) {
    Matrix<float> out(m.rows(), m.cols());
    kexue::convert(m, out);
    return out;
  };
  // 2-D: sizes across the lane count and the row blocks, with and without RoPE, every mask convention.
  for (Index n : {Index(1), Index(5), Index(17), Index(40)}) {
    for (Index d : {Index(2), Index(8), Index(22), Index(64)}) {
      const Matrix<S> q = to16(random_matrix<float>(n, d, 31)), k = to16(random_matrix<float>(n, d, 32));
      const Matrix<float> qf = widen(q), kf = widen(k);
      kexue::RopeTable<float> table(64, d);
      for (const auto& o : {opts(MaskConvention::Current), opts(MaskConvention::Bert4keras2021), norope()}) {
        Matrix<float> s(n, n), want(n, n);
        kexue::global_pointer(table, q, k, s, n - n / 3, o);
        kexue::global_pointer(table, qf, kf, want, n - n / 3, o);
        INFO("n " << n << " d " << d);
        CHECK(bitwise_equal(s, want));
      }
    }
  }
  // Batched, q and k as seq-major views of fused 16-bit projections.
  const Index B = 2, H = 3, n = 29, d = 16;
  const Matrix<S> qbuf = to16(random_matrix<float>(B * n, H * d, 21)), kbuf = to16(random_matrix<float>(B * n, H * d, 22));
  const Matrix<float> qfb = widen(qbuf), kfb = widen(kbuf);
  Matrix<float> sbuf(B * H * n, n), want(B * H * n, n);
  kexue::RopeTable<float> table(n, d);
  const std::vector<Index> lengths{n, 17};
  kexue::global_pointer(table, kexue::TensorView<const S>::seq_major(qbuf.data(), B, n, H, d),
                        kexue::TensorView<const S>::seq_major(kbuf.data(), B, n, H, d),
                        kexue::TensorView<float>::contiguous(sbuf.data(), B, H, n, n), lengths);
  kexue::global_pointer(table, kexue::TensorView<const float>::seq_major(qfb.data(), B, n, H, d),
                        kexue::TensorView<const float>::seq_major(kfb.data(), B, n, H, d),
                        kexue::TensorView<float>::contiguous(want.data(), B, H, n, n), lengths);
  CHECK(bitwise_equal(sbuf, want));
  // Bad input: k's shape, before scores is written.
  const Matrix<S> k2 = to16(random_matrix<float>(5, 7, 33)), q2 = to16(random_matrix<float>(5, 8, 34));
  Matrix<float> s2 = Matrix<float>::Constant(5, 5, 3.0f);
  kexue::RopeTable<float> t2(8, 8);
  kexue_test::throws_with([&] { kexue::global_pointer(t2, q2, k2, s2, 5); }, "global_pointer: k has shape [5 x 7]");
  CHECK(s2(0, 0) == 3.0f);
}
