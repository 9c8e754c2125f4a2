// SPDX-License-Identifier: MIT
// Tests of kexue/gau.hpp: PyTorch (bert4keras semantics) reference data, the scalar double reference over
// odd sizes and strided NaN-guarded buffers, masking properties, batched vs 2-D, thread determinism, errors.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kexue/gau.hpp"
#include "reference/gau_reference.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using kexue::GauOptions;
using kexue::GauWeights;
using kexue::GauWorkspace;
using kexue::Index;
using kexue::Matrix;
using kexue::Normalization;
using kexue::RopeTable;
using kexue::TensorView;
using kexue::Vector;
using namespace kexue_test;

namespace {

template <class T>
using RowMap = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;

template <class T>
GauWeights<T> ref_weights(const RefData& ref, const std::string& tag) {
  GauWeights<T> w;
  w.w_in = ref.matrix<T>(tag + "/w_in");
  w.gamma_q = ref.vector<T>(tag + "/gamma_q");
  w.gamma_k = ref.vector<T>(tag + "/gamma_k");
  w.w_out = ref.matrix<T>(tag + "/w_out");
  if (ref.has(tag + "/b_in")) {
    w.b_in = ref.vector<T>(tag + "/b_in");
    w.beta_q = ref.vector<T>(tag + "/beta_q");
    w.beta_k = ref.vector<T>(tag + "/beta_k");
    w.b_out = ref.vector<T>(tag + "/b_out");
  }
  return w;
}

/// Random weights with D, e, s; biases when `bias`.
template <class T>
GauWeights<T> random_weights(Index D, Index e, Index s, bool bias, std::uint32_t seed) {
  GauWeights<T> w;
  auto fill = [&](auto& m, std::uint32_t sd, double lo, double hi) {
    auto v = random_values<T>(m.size(), sd, T(lo), T(hi));
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = v[static_cast<std::size_t>(i)];
  };
  const double a = std::sqrt(3.0 / double(D)), b = std::sqrt(3.0 / double(e));
  w.w_in.resize(D, 2 * e + s);
  fill(w.w_in, seed, -a, a);
  w.gamma_q.resize(s);
  fill(w.gamma_q, seed + 1, 0.5, 1.5);
  w.gamma_k.resize(s);
  fill(w.gamma_k, seed + 2, 0.5, 1.5);
  w.w_out.resize(e, D);
  fill(w.w_out, seed + 3, -b, b);
  if (bias) {
    w.b_in.resize(2 * e + s);
    fill(w.b_in, seed + 4, -0.5, 0.5);
    w.beta_q.resize(s);
    fill(w.beta_q, seed + 5, -0.5, 0.5);
    w.beta_k.resize(s);
    fill(w.beta_k, seed + 6, -0.5, 0.5);
    w.b_out.resize(D);
    fill(w.b_out, seed + 7, -0.5, 0.5);
  }
  return w;
}

template <class T>
Matrix<T> random_matrix(Index rows, Index cols, std::uint32_t seed, double scale = 1.0) {
  Matrix<T> m(rows, cols);
  auto v = random_values<T>(m.size(), seed, T(-scale), T(scale));
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = v[static_cast<std::size_t>(i)];
  return m;
}

GauOptions make_options(Normalization norm, bool causal = false, Index key_length = -1) {
  GauOptions o;
  o.attention.normalization = norm;
  o.attention.causal = causal;
  if (key_length >= 0) o.attention.key_length = key_length;
  return o;
}

const char* const kCaseNames[] = {"relu2_bias_rope",
                                  "relu2_bias",
                                  "relu2_nobias_rope",
                                  "relu2_bias_rope_keylen",
                                  "relu2_fixed_length",
                                  "relu2_noscale",
                                  "softmax_bias_rope",
                                  "softmax_nobias",
                                  "softmax_nobias_rope_keylen",
                                  "softmax_huge",
                                  "softmax_plus_nobias_rope",
                                  "softmax_plus_bias_keylen",
                                  "softmax_plus_short",
                                  "softmax_plus_causal",
                                  "relu2_causal_keylen",
                                  "softmax_single"};

const char* case_tag(const std::string& name) {
  return name.find("nobias") != std::string::npos || name == "relu2_noscale" || name == "softmax_plus_short" ||
                 name == "softmax_plus_causal"
             ? "nobias"
             : "bias";
}

GauOptions ref_options(const RefData& ref, const std::string& name) {
  GauOptions o;
  const int method = int(ref.scalar(name + "/method"));
  o.attention.normalization = method == 0   ? Normalization::Softmax
                              : method == 1 ? Normalization::SoftmaxPlus
                                            : Normalization::SquaredRelu;
  o.attention.causal = ref.scalar(name + "/causal") != 0;
  o.attention_scale = ref.scalar(name + "/attention_scale") != 0;
  if (ref.scalar(name + "/key_length") >= 0) o.attention.key_length = Index(ref.scalar(name + "/key_length"));
  if (ref.scalar(name + "/relu2_length") >= 0) o.attention.relu2_length = Index(ref.scalar(name + "/relu2_length"));
  return o;
}

template <class T>
void check_pytorch_cases() {
  const RefData ref("gau");
  for (const char* raw : kCaseNames) {
    const std::string name = raw;
    INFO("case " << name << " in " << (sizeof(T) == 4 ? "float" : "double"));
    const GauWeights<T> w = ref_weights<T>(ref, case_tag(name));
    const Matrix<T> x = ref.matrix<T>(name + "/x");
    const Matrix<double> want = ref.matrix<double>(name + "/out");
    const GauOptions o = ref_options(ref, name);
    const bool rope = ref.scalar(name + "/rope") != 0;
    const RopeTable<T> table(x.rows(), w.key_size());
    Matrix<T> out(x.rows(), x.cols());
    kexue::gau(w, x, out, o, rope ? &table : nullptr);
    const Matrix<double> got = out.template cast<double>().eval();
    // float: inputs are exact (float32-drawn), the error is rounding through two GEMMs and the attention.
    CHECK(nmse(got, want) < (sizeof(T) == 4 ? 1e-10 : 1e-24));
    // The scalar reference is a second, independent transcription of SPEC 3.2.
    if (sizeof(T) == 8) CHECK(nmse(got, gau_reference(w, x.template cast<double>().eval(), o, rope)) < 1e-24);
  }
}

}  // namespace

TEST_CASE("gau matches the PyTorch bert4keras GAU (float)", "[gau]") { check_pytorch_cases<float>(); }
TEST_CASE("gau matches the PyTorch bert4keras GAU (double)", "[gau]") { check_pytorch_cases<double>(); }

TEMPLATE_TEST_CASE("gau batched form matches PyTorch with one key length per sequence", "[gau]", float, double) {
  using T = TestType;
  const RefData ref("gau");
  const GauWeights<T> w = ref_weights<T>(ref, "nobias");
  const Matrix<T> x = ref.matrix<T>("batch/x");  // [batch * n, D]
  const auto& shape = ref.shape("batch/x");
  const Index batch = shape[0], n = shape[1], D = shape[2];
  std::vector<Index> lengths;
  for (double l : ref.values("batch/lengths")) lengths.push_back(Index(l));
  GauOptions o;
  o.attention.normalization = Normalization::SoftmaxPlus;
  const RopeTable<T> table(n, w.key_size());
  Matrix<T> out(batch * n, D);
  kexue::gau(w, TensorView<const T>::contiguous(x.data(), batch, 1, n, D),
             TensorView<T>::contiguous(out.data(), batch, 1, n, D), lengths, o, &table);
  CHECK(nmse(out.template cast<double>().eval(), ref.matrix<double>("batch/out")) < (sizeof(T) == 4 ? 1e-10 : 1e-24));
  // Each sequence gives exactly the bits of the 2-D call.
  for (Index b = 0; b < batch; ++b) {
    GauOptions ob = o;
    ob.attention.key_length = lengths[static_cast<std::size_t>(b)];
    Matrix<T> one(n, D);
    kexue::gau(w, x.middleRows(b * n, n), one, ob, &table);
    CHECK(max_abs_diff(out.middleRows(b * n, n).eval(), one) == 0.0);
  }
}

TEMPLATE_TEST_CASE("gau vs the scalar reference over odd sizes, strided rows and NaN guards", "[gau]", float, double) {
  using T = TestType;
  const Index D = 13, e = 11, s = 6;
  const Index xs = D + 3;  // row strides longer than D, and start offsets that break alignment
  for (bool bias : {true, false}) {
    const GauWeights<T> w = random_weights<T>(D, e, s, bias, bias ? 7u : 8u);
    // 130 and 257 run several row tiles (48 rows at these n), 400 makes the A v product of the later
    // (causal) query tiles cross the GEMM's 384-deep k block on a prefix of the packed v (257 runs two
    // variants and 400 one: the scalar reference is O(n^2) and this suite also runs under Debug + ASan).
    for (Index n : {1, 2, 7, 33, 130, 257, 400}) {
      const RopeTable<T> table(n, s);
      const Matrix<T> xd = random_matrix<T>(n, D, std::uint32_t(100 + n));
      for (int variant = 0; variant < 6; ++variant) {
        if (n == 257 && (variant % 3 != 0 || !bias)) continue;
        if (n == 400 && (variant != 2 || !bias)) continue;
        GauOptions o;
        bool rope = variant % 2 == 0;
        if (variant == 0) o = make_options(Normalization::SquaredRelu);
        if (variant == 1) o = make_options(Normalization::Softmax, false, std::max<Index>(1, n - 3));
        if (variant == 2) o = make_options(Normalization::SoftmaxPlus, true);
        if (variant == 3) o = make_options(Normalization::SquaredRelu, true, (n + 1) / 2);
        if (variant == 4) {
          o = make_options(Normalization::Softmax, true, 0);  // no row sees a key
        }
        if (variant == 5) {
          o = make_options(Normalization::SquaredRelu);
          o.attention.relu2_length = 512;
          o.attention_scale = false;
          o.attention.scale = 0.3;
        }
        INFO("n = " << n << ", bias = " << bias << ", variant " << variant);
        PaddedBuffer<T> xb(n * xs, 1), ob(n * xs, 3);
        RowMap<T> x(xb.data(), n, D, Eigen::OuterStride<>(xs)), out(ob.data(), n, D, Eigen::OuterStride<>(xs));
        x = xd;
        kexue::gau(w, x, out, o, rope ? &table : nullptr);
        CHECK(ob.guards_intact(n * xs));
        bool gaps_nan = true;  // the 3 values after each row belong to nobody
        for (Index r = 0; r < n; ++r)
          for (Index c = D; c < xs; ++c) gaps_nan = gaps_nan && (r == n - 1 || std::isnan(ob.data()[r * xs + c]));
        CHECK(gaps_nan);
        const Matrix<double> want = gau_reference(w, xd.template cast<double>().eval(), o, rope);
        const Matrix<T> got = out;
        CHECK(nmse(got.template cast<double>().eval(), want) < (sizeof(T) == 4 ? 1e-10 : 1e-24));
        if (variant == 4) {
          // No visible key: A = 0, so every row is exactly b_out (or 0).
          Matrix<T> bias_rows(n, D);
          for (Index r = 0; r < n; ++r)
            for (Index c = 0; c < D; ++c) bias_rows(r, c) = bias ? w.b_out[c] : T(0);
          CHECK(max_abs_diff(got, bias_rows) == 0.0);
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("gau masking: padded and future tokens do not reach visible rows", "[gau]", float, double) {
  using T = TestType;
  const Index D = 16, e = 24, s = 8, n = 150;
  const GauWeights<T> w = random_weights<T>(D, e, s, true, 3);
  const RopeTable<T> table(n, s);
  const Matrix<T> x = random_matrix<T>(n, D, 11);
  Matrix<T> x2 = x;
  for (Index r = 100; r < n; ++r) x2.row(r) *= T(-3);
  for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
    INFO("normalization " << int(norm));
    // Keys [100, n) are padding: rows < 100 must not change (bitwise) when the padding does.
    const GauOptions pad = make_options(norm, false, 100);
    Matrix<T> a(n, D), b(n, D);
    kexue::gau(w, x, a, pad, &table);
    kexue::gau(w, x2, b, pad, &table);
    CHECK(max_abs_diff(a.topRows(100).eval(), b.topRows(100).eval()) == 0.0);
    // Padded query rows are still computed, as in bert4keras: they differ.
    CHECK(max_abs_diff(a.bottomRows(50).eval(), b.bottomRows(50).eval()) > 0.0);
    // Causal: rows < 100 do not see rows >= 100.
    const GauOptions causal = make_options(norm, true);
    kexue::gau(w, x, a, causal, &table);
    kexue::gau(w, x2, b, causal, &table);
    CHECK(max_abs_diff(a.topRows(100).eval(), b.topRows(100).eval()) == 0.0);
    // The first causal row sees only itself: for softmax A = 1, so out_0 = (u_0 * v_0) W_out + b_out.
    if (norm != Normalization::SquaredRelu) {
      const Vector<double> hidden =
          ((x.row(0).template cast<double>().eval() * w.w_in.template cast<double>().eval()).transpose() +
           w.b_in.template cast<double>().eval());
      Vector<double> g(e);
      for (Index c = 0; c < e; ++c) {
        auto sw = [](double t) { return t / (1 + std::exp(-t)); };
        g[c] = sw(hidden[c]) * sw(hidden[e + c]);
      }
      const Vector<double> o0 =
          (g.transpose() * w.w_out.template cast<double>().eval()).transpose() + w.b_out.template cast<double>().eval();
      Matrix<double> got = a.row(0).template cast<double>().eval(), want = o0.transpose();
      CHECK(nmse(got, want) < (sizeof(T) == 4 ? 1e-11 : 1e-26));
    }
  }
}

TEMPLATE_TEST_CASE("gau zero_padded_rows skips padding rows and keeps the others", "[gau]", float, double) {
  using T = TestType;
  const Index D = 16, e = 24, s = 8, n = 140;
  const GauWeights<T> w = random_weights<T>(D, e, s, true, 4);
  const RopeTable<T> table(n, s);
  const Matrix<T> x = random_matrix<T>(n, D, 21);
  for (Index key_length : {Index(0), Index(1), Index(129), n}) {
    for (bool causal : {false, true}) {
      INFO("key_length " << key_length << ", causal " << causal);
      GauOptions o = make_options(Normalization::SoftmaxPlus, causal, key_length);
      Matrix<T> full(n, D), skipped(n, D);
      kexue::gau(w, x, full, o, &table);
      o.zero_padded_rows = true;
      skipped.setConstant(std::numeric_limits<T>::quiet_NaN());
      kexue::gau(w, x, skipped, o, &table);
      CHECK((skipped.bottomRows(n - key_length).array() == T(0)).all());
      CHECK(nmse(skipped.topRows(key_length).template cast<double>().eval(),
                 full.topRows(key_length).template cast<double>().eval()) < (sizeof(T) == 4 ? 1e-12 : 1e-28));
      const Matrix<double> want = gau_reference(w, x.template cast<double>().eval(), o, true);
      CHECK(nmse(skipped.template cast<double>().eval(), want) < (sizeof(T) == 4 ? 1e-10 : 1e-24));
      // Batched with per-sequence lengths, in place.
      Matrix<T> inplace = x;
      GauOptions ob = o;
      ob.attention.key_length.reset();
      kexue::gau(w, TensorView<const T>::contiguous(inplace.data(), 1, 1, n, D),
                 TensorView<T>::contiguous(inplace.data(), 1, 1, n, D), {key_length}, ob, &table);
      CHECK(max_abs_diff(inplace, skipped) == 0.0);
    }
  }
}

TEMPLATE_TEST_CASE("gau with an arbitrary key mask (left padding, holes)", "[gau]", float, double) {
  using T = TestType;
  const Index D = 12, e = 20, s = 6, n = 140;
  const GauWeights<T> w = random_weights<T>(D, e, s, true, 6);
  const RopeTable<T> table(n, s);
  const Matrix<T> x = random_matrix<T>(n, D, 31);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n), 1);
  for (Index j = 0; j < 20; ++j) mask[static_cast<std::size_t>(j)] = 0;  // left padding
  for (Index j = 60; j < n; j += 7) mask[static_cast<std::size_t>(j)] = 0;
  Matrix<T> x2 = x;  // differs only at masked tokens
  for (Index j = 0; j < n; ++j)
    if (!mask[static_cast<std::size_t>(j)]) x2.row(j) *= T(-2);
  for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
    for (int variant = 0; variant < 3; ++variant) {
      INFO("normalization " << int(norm) << ", variant " << variant);
      GauOptions o = make_options(norm, variant == 1, variant == 2 ? 100 : -1);
      o.key_mask = kexue::KeyMask(mask);
      Matrix<T> a(n, D), b(n, D);
      kexue::gau(w, x, a, o, &table);
      const Matrix<double> want = gau_reference(w, x.template cast<double>().eval(), o, true);
      CHECK(nmse(a.template cast<double>().eval(), want) < (sizeof(T) == 4 ? 1e-10 : 1e-24));
      // Causal rows 0..19 see only masked keys: A = 0, out = b_out exactly.
      if (variant == 1) {
        for (Index r = 0; r < 20; ++r)
          for (Index c = 0; c < D; ++c) CHECK(a(r, c) == w.b_out[c]);
      }
      kexue::gau(w, x2, b, o, &table);
      double unmasked_diff = 0;
      for (Index r = 0; r < n; ++r)
        if (mask[static_cast<std::size_t>(r)])
          unmasked_diff = std::max(unmasked_diff, max_abs_diff(a.row(r).eval(), b.row(r).eval()));
      CHECK(unmasked_diff == 0.0);
    }
  }
  // An all-ones mask is no mask.
  std::vector<std::uint8_t> ones(static_cast<std::size_t>(n), 1);
  GauOptions o = make_options(Normalization::SoftmaxPlus);
  Matrix<T> plain(n, D), masked(n, D);
  kexue::gau(w, x, plain, o, &table);
  o.key_mask = kexue::KeyMask(ones);
  kexue::gau(w, x, masked, o, &table);
  CHECK(max_abs_diff(plain, masked) == 0.0);
}

TEMPLATE_TEST_CASE("gau: NaN or inf in tokens a row cannot see never reaches it", "[gau]", float, double) {
  // A masked token's or a later token's x row holding NaN / inf makes its v row non-finite; the rows that cannot
  // see it must stay finite and bitwise equal to a run with finite values there (0 * inf must not be formed).
  using T = TestType;
  const Index D = 12, e = 20, s = 6, n = 160;  // two row tiles: the poison sits in the second
  const GauWeights<T> w = random_weights<T>(D, e, s, true, 9);
  const RopeTable<T> table(n, s);
  const Matrix<T> x = random_matrix<T>(n, D, 41);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n), 1);
  for (Index j : {3, 50, 151, 152}) mask[static_cast<std::size_t>(j)] = 0;
  const T poisons[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                       -std::numeric_limits<T>::infinity()};
  for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
    for (T poison : poisons) {
      INFO("normalization " << int(norm) << ", poison " << poison);
      // Key mask (non-causal and causal): the masked tokens hold the poison.
      for (bool causal : {false, true}) {
        GauOptions o = make_options(norm, causal);
        o.key_mask = kexue::KeyMask(mask);
        Matrix<T> bad = x;
        for (Index j : {3, 50, 151, 152}) bad.row(j).setConstant(poison);
        Matrix<T> a(n, D), b(n, D);
        kexue::gau(w, x, a, o, &table);
        kexue::gau(w, bad, b, o, &table);
        Index differ = 0, nonfinite = 0;
        for (Index r = 0; r < n; ++r) {
          if (!mask[static_cast<std::size_t>(r)]) continue;  // a masked token's own row is its own business
          nonfinite += !b.row(r).allFinite();
          differ += std::memcmp(a.row(r).data(), b.row(r).data(), sizeof(T) * std::size_t(D)) != 0;
        }
        CHECK(nonfinite == 0);
        CHECK(differ == 0);
      }
      // Causal: a poisoned later token (row 120) leaves rows 0..119 untouched; rows >= 120 see it.
      GauOptions o = make_options(norm, true);
      Matrix<T> bad = x;
      bad.row(120).setConstant(poison);
      Matrix<T> a(n, D), b(n, D);
      kexue::gau(w, x, a, o, &table);
      kexue::gau(w, bad, b, o, &table);
      CHECK(b.topRows(120).allFinite());
      CHECK(std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(120 * D)) == 0);
    }
  }
}

TEMPLATE_TEST_CASE("gau huge inputs give finite outputs, and out may be x", "[gau]", float, double) {
  using T = TestType;
  const Index D = 16, e = 24, s = 8, n = 40;
  const GauWeights<T> w = random_weights<T>(D, e, s, true, 5);
  const RopeTable<T> table(n, s);
  const Matrix<T> x = random_matrix<T>(n, D, 12, 300.0);  // logits ~1e5: softmax rows are one-hot
  for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
    Matrix<T> out(n, D);
    kexue::gau(w, x, out, make_options(norm), &table);
    CHECK(out.allFinite());
    Matrix<T> inplace = x;
    kexue::gau(w, inplace, inplace, make_options(norm), &table);
    CHECK(max_abs_diff(inplace, out) == 0.0);
    if (norm == Normalization::Softmax) {
      const Matrix<double> want = gau_reference(w, x.template cast<double>().eval(), make_options(norm), true);
      CHECK(nmse(out.template cast<double>().eval(), want) < (sizeof(T) == 4 ? 1e-8 : 1e-20));
    }
  }
}

TEMPLATE_TEST_CASE("gau is bitwise identical for 1 and 2 threads, with and without a workspace", "[gau]", float,
                   double) {
  using T = TestType;
  const Index D = 20, e = 36, s = 12;
  const GauWeights<T> w = random_weights<T>(D, e, s, false, 9);
  GauWorkspace<T> ws;
  for (Index n : {300, 50, 3}) {
    const RopeTable<T> table(n, s);
    const Matrix<T> x = random_matrix<T>(n, D, std::uint32_t(n));
    const GauOptions o = make_options(Normalization::SoftmaxPlus, n == 300, n - 1);
    Matrix<T> one(n, D), two(n, D), reused(n, D);
    set_threads(1);
    kexue::gau(w, x, one, o, &table);
    set_threads(2);
    kexue::gau(w, x, two, o, &table);
    kexue::gau(w, x, reused, ws, o, &table);  // grows at n = 300, then reused for smaller n
    set_threads(hardware_threads());
    CHECK(max_abs_diff(one, two) == 0.0);
    CHECK(max_abs_diff(one, reused) == 0.0);
    CHECK(ws.bytes() > 0);
  }
  // Batched: 4 sequences run one per thread, 1 sequence runs its tiles in parallel; same bits as 2-D.
  const Index n = 140;
  const RopeTable<T> table(n, s);
  for (Index batch : {Index(1), Index(4)}) {
    const Matrix<T> x = random_matrix<T>(batch * n, D, 77);
    const std::vector<Index> lengths = batch == 1 ? std::vector<Index>{130} : std::vector<Index>{140, 1, 70, 129};
    Matrix<T> ref_out(batch * n, D), got1(batch * n, D), got2(batch * n, D);
    const GauOptions o = make_options(Normalization::SquaredRelu);
    for (Index b = 0; b < batch; ++b) {
      GauOptions ob = o;
      ob.attention.key_length = lengths[static_cast<std::size_t>(b)];
      Matrix<T> tmp(n, D);
      kexue::gau(w, x.middleRows(b * n, n), tmp, ob, &table);
      ref_out.middleRows(b * n, n) = tmp;
    }
    auto xv = TensorView<const T>::contiguous(x.data(), batch, 1, n, D);
    set_threads(1);
    kexue::gau(w, xv, TensorView<T>::contiguous(got1.data(), batch, 1, n, D), lengths, o, &table);
    set_threads(2);
    GauWorkspace<T> bws;
    kexue::gau(w, xv, TensorView<T>::contiguous(got2.data(), batch, 1, n, D), lengths, bws, o, &table);
    set_threads(hardware_threads());
    CHECK(max_abs_diff(got1, ref_out) == 0.0);
    CHECK(max_abs_diff(got2, ref_out) == 0.0);
    // In place on the batch.
    Matrix<T> inplace = x;
    kexue::gau(w, TensorView<const T>::contiguous(inplace.data(), batch, 1, n, D),
               TensorView<T>::contiguous(inplace.data(), batch, 1, n, D), lengths, o, &table);
    CHECK(max_abs_diff(inplace, ref_out) == 0.0);
  }
}

TEST_CASE("gau: bad input throws kexue::Error naming the argument, before writing", "[gau]") {
  using T = float;
  const Index D = 8, e = 10, s = 4, n = 6;
  const GauWeights<T> good = random_weights<T>(D, e, s, true, 1);
  const Matrix<T> x = random_matrix<T>(n, D, 2);
  const RopeTable<T> table(n, s);
  auto expect_error = [&](const GauWeights<T>& w, const Matrix<T>& xin, Matrix<T> out, const GauOptions& o,
                          const RopeTable<T>* rope, const std::string& needle) {
    INFO("expecting an error mentioning '" << needle << "'");
    out.setConstant(T(7));
    bool thrown = false;
    try {
      kexue::gau(w, xin, out, o, rope);
    } catch (const kexue::Error& err) {
      thrown = true;
      const std::string msg = err.what();
      INFO("message: " << msg);
      CHECK(msg.rfind("gau: ", 0) == 0);
      CHECK(msg.find(needle) != std::string::npos);
    }
    CHECK(thrown);
    CHECK((out.array() == T(7)).all());
  };
  const GauOptions o;
  Matrix<T> out(n, D);
  {
    GauWeights<T> w = good;
    w.w_in.conservativeResize(D, 2 * e + s + 1);
    expect_error(w, x, out, o, nullptr, "w_in");
  }
  {
    GauWeights<T> w = good;
    w.b_in.conservativeResize(2 * e + s - 1);
    expect_error(w, x, out, o, nullptr, "b_in");
  }
  {
    GauWeights<T> w = good;
    w.gamma_k.conservativeResize(s + 2);
    expect_error(w, x, out, o, nullptr, "gamma_k");
  }
  {
    GauWeights<T> w = good;
    w.beta_q.conservativeResize(1);
    expect_error(w, x, out, o, nullptr, "beta_q");
  }
  {
    GauWeights<T> w = good;
    w.b_out.conservativeResize(D + 1);
    expect_error(w, x, out, o, nullptr, "b_out");
  }
  {
    GauWeights<T> w = good;
    w.w_out.conservativeResize(e, D - 1);
    expect_error(w, x, out, o, nullptr, "w_out");
  }
  {
    GauWeights<T> w = good;
    w.gamma_q.resize(0);
    expect_error(w, x, out, o, nullptr, "gamma_q");
  }
  expect_error(good, random_matrix<T>(n, D + 1, 3), out, o, nullptr, "x has shape [6 x 9]");
  expect_error(good, x, Matrix<T>(n + 1, D), o, nullptr, "out has shape [7 x 8]");
  expect_error(good, x, Matrix<T>(n, D + 2), o, nullptr, "out has shape");
  {
    GauOptions bad = o;
    bad.attention.key_length = n + 1;
    expect_error(good, x, out, bad, nullptr, "key_length is 7");
    bad.attention.key_length = -1;
    expect_error(good, x, out, bad, nullptr, "key_length is -1");
  }
  {
    GauOptions bad = o;
    bad.attention.train_length = 1;
    expect_error(good, x, out, bad, nullptr, "train_length");
  }
  {
    GauOptions bad = o;
    bad.attention.relu2_length = 0;
    expect_error(good, x, out, bad, nullptr, "relu2_length");
  }
  {
    GauOptions bad = o;
    bad.attention.scale = std::numeric_limits<double>::infinity();
    expect_error(good, x, out, bad, nullptr, "scale");
  }
  {
    const RopeTable<T> wrong_dim(n, s + 2), short_table(n - 1, s);
    expect_error(good, x, out, o, &wrong_dim, "rope_table has dim 6");
    expect_error(good, x, out, o, &short_table, "rope_table covers positions [0, 5)");
  }
  {
    GauOptions bad = o;
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(n - 1), 1);
    bad.key_mask = kexue::KeyMask(mask);
    expect_error(good, x, out, bad, nullptr, "key_mask has 5 entries");
  }
  {
    // out aliasing a weight.
    GauWeights<T> w = good;
    Eigen::Map<Matrix<T>> alias(w.w_in.data(), n, D);
    const Matrix<T> before = w.w_in;
    CHECK_THROWS_AS(kexue::gau(w, x, alias, o), kexue::Error);
    CHECK(max_abs_diff(w.w_in, before) == 0.0);
  }
  // Batched form.
  const Index batch = 2;
  const Matrix<T> xb = random_matrix<T>(batch * n, D, 4);
  Matrix<T> ob(batch * n, D);
  auto xv = TensorView<const T>::contiguous(xb.data(), batch, 1, n, D);
  auto ov = TensorView<T>::contiguous(ob.data(), batch, 1, n, D);
  auto expect_batched = [&](TensorView<const T> xin, TensorView<T> oin, const std::vector<Index>& lengths,
                            const GauOptions& opt, const std::string& needle) {
    INFO("expecting an error mentioning '" << needle << "'");
    ob.setConstant(T(7));
    bool thrown = false;
    try {
      kexue::gau(good, xin, oin, lengths, opt);
    } catch (const kexue::Error& err) {
      thrown = true;
      INFO("message: " << err.what());
      CHECK(std::string(err.what()).find(needle) != std::string::npos);
    }
    CHECK(thrown);
    CHECK((ob.array() == T(7)).all());
  };
  expect_batched(xv, ov, {n, n, n}, o, "lengths has 3 entries");
  expect_batched(xv, ov, {n, n + 1}, o, "lengths[b] is 7");
  {
    GauOptions both = o;
    both.attention.key_length = 2;
    expect_batched(xv, ov, {n, n}, both, "both given");
  }
  expect_batched(TensorView<const T>::contiguous(xb.data(), 1, 2, n, D), ov, {}, o, "heads");
  {
    GauOptions with_mask = o;
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(n), 1);
    with_mask.key_mask = kexue::KeyMask(mask);
    expect_batched(xv, ov, {}, with_mask, "key_mask");
  }
  expect_batched(xv, TensorView<T>::contiguous(ob.data(), batch, 1, n - 1, D), {}, o, "out has shape");
  {
    // out is x shifted by one row: would overwrite the next sequence's input.
    Matrix<T> buf(batch * n + 1, D);
    buf.setConstant(T(7));
    bool thrown = false;
    try {
      kexue::gau(good, TensorView<const T>::contiguous(buf.data(), batch, 1, n, D),
                 TensorView<T>::contiguous(buf.data() + D, batch, 1, n, D), {}, o);
    } catch (const kexue::Error&) {
      thrown = true;
    }
    CHECK(thrown);
    CHECK((buf.array() == T(7)).all());
  }
}

TEMPLATE_TEST_CASE("gau on gau_pack()ed weights gives the bits of gau on the weights, 2-D and batched", "[gau][packed]",
                   float, double) {
  using T = TestType;
  const Index e = 36, s = 12;
  for (const bool bias : {false, true}) {
    const Index D = bias ? 20 : 400;  // 400: W_in's packed panels cross the GEMM's 384-deep k block
    const GauWeights<T> w = random_weights<T>(D, e, s, bias, bias ? 31 : 32);
    kexue::GauPackedWeights<T> packed;
    {
      const GauWeights<T> copy = w;  // the packed layer must not refer to the weights it came from
      packed = kexue::gau_pack(copy);
    }
    CHECK(packed.hidden() == D);
    CHECK(packed.units() == e);
    CHECK(packed.key_size() == s);
    CHECK(packed.bytes() >= std::size_t(D * (2 * e + s) + e * D) * sizeof(T));
    const kexue::GauPackedWeights<T> copied = packed;  // copies hold their own panels
    GauWorkspace<T> ws_plain, ws_packed;
    for (Index n : {300, 50, 3}) {
      const RopeTable<T> table(n, s);
      const Matrix<T> x = random_matrix<T>(n, D, std::uint32_t(n + 5));
      for (int variant = 0; variant < 3; ++variant) {
        GauOptions o = variant == 0   ? make_options(Normalization::SquaredRelu)
                       : variant == 1 ? make_options(Normalization::SoftmaxPlus, true, n - 1)
                                      : make_options(Normalization::Softmax, false, std::max<Index>(1, n / 2));
        INFO("n " << n << " variant " << variant << " bias " << bias);
        Matrix<T> want(n, D), got1(n, D), got2(n, D), got3(n, D);
        kexue::gau(w, x, want, ws_plain, o, variant == 2 ? nullptr : &table);
        set_threads(1);
        kexue::gau(packed, x, got1, ws_packed, o, variant == 2 ? nullptr : &table);
        set_threads(2);
        kexue::gau(copied, x, got2, o, variant == 2 ? nullptr : &table);
        set_threads(hardware_threads());
        Matrix<T> inplace = x;
        kexue::gau(packed, inplace, inplace, ws_packed, o, variant == 2 ? nullptr : &table);
        CHECK(max_abs_diff(want, got1) == 0.0);
        CHECK(max_abs_diff(want, got2) == 0.0);
        CHECK(max_abs_diff(want, inplace) == 0.0);
      }
    }
    // The workspace of packed calls holds no packed weights.
    CHECK(ws_packed.bytes() < ws_plain.bytes());
    // Batched: one key length per sequence, sequences in parallel or tiles in parallel.
    const Index n = 70, batch = 3;
    const RopeTable<T> table(n, s);
    const Matrix<T> x = random_matrix<T>(batch * n, D, 78);
    const std::vector<Index> lengths{70, 9, 41};
    const GauOptions o = make_options(Normalization::SoftmaxPlus);
    auto xv = TensorView<const T>::contiguous(x.data(), batch, 1, n, D);
    Matrix<T> want(batch * n, D), got(batch * n, D);
    GauWorkspace<T> bws;
    kexue::gau(w, xv, TensorView<T>::contiguous(want.data(), batch, 1, n, D), lengths, o, &table);
    for (int threads : {1, 2}) {
      set_threads(threads);
      kexue::gau(packed, xv, TensorView<T>::contiguous(got.data(), batch, 1, n, D), lengths, bws, o, &table);
      set_threads(hardware_threads());
      CHECK(max_abs_diff(want, got) == 0.0);
    }
    got.setZero();
    kexue::gau(packed, xv, TensorView<T>::contiguous(got.data(), batch, 1, n, D), lengths, o, &table);
    CHECK(max_abs_diff(want, got) == 0.0);
  }
}

TEST_CASE("gau_pack and gau on packed weights: bad input throws kexue::Error naming the argument", "[gau][packed]") {
  using T = float;
  const Index D = 8, e = 10, s = 4, n = 6;
  const GauWeights<T> good = random_weights<T>(D, e, s, true, 1);
  auto message = [](auto&& call) {
    try {
      call();
    } catch (const kexue::Error& err) {
      return std::string(err.what());
    }
    return std::string("(no error)");
  };
  {
    GauWeights<T> w = good;
    w.w_in.conservativeResize(D, 2 * e + s + 1);
    const std::string msg = message([&] { kexue::gau_pack(w); });
    INFO(msg);
    CHECK(msg.rfind("gau_pack: ", 0) == 0);
    CHECK(msg.find("w_in") != std::string::npos);
  }
  {
    GauWeights<T> w = good;
    w.beta_k.resize(s + 1);
    const std::string msg = message([&] { kexue::gau_pack(w); });
    INFO(msg);
    CHECK(msg.find("beta_k") != std::string::npos);
  }
  const Matrix<T> x = random_matrix<T>(n, D, 2);
  Matrix<T> out = Matrix<T>::Constant(n, D, T(7));
  {
    const kexue::GauPackedWeights<T> empty;
    const std::string msg = message([&] { kexue::gau(empty, x, out); });
    INFO(msg);
    CHECK(msg.find("gau_pack") != std::string::npos);
  }
  {
    kexue::GauPackedWeights<T> source = kexue::gau_pack(good);
    const kexue::GauPackedWeights<T> taken = std::move(source);
    CHECK(!taken.empty());
    const std::string msg = message([&] { kexue::gau(source, x, out); });  // moved from
    INFO(msg);
    CHECK(msg.find("empty GauPackedWeights") != std::string::npos);
  }
  const kexue::GauPackedWeights<T> packed = kexue::gau_pack(good);
  {
    const Matrix<T> wide = random_matrix<T>(n, D + 1, 3);
    Matrix<T> out2 = Matrix<T>::Constant(n, D + 1, T(7));
    const std::string msg = message([&] { kexue::gau(packed, wide, out2); });
    INFO(msg);
    CHECK(msg.rfind("gau: ", 0) == 0);
    CHECK(msg.find("x has shape") != std::string::npos);
  }
  {
    const RopeTable<T> table(n, s + 2);
    const std::string msg = message([&] { kexue::gau(packed, x, out, GauOptions{}, &table); });
    INFO(msg);
    CHECK(msg.find("rope_table") != std::string::npos);
  }
  CHECK((out.array() == T(7)).all());
}

TEST_CASE("gau: empty sequences are a no-op", "[gau]") {
  const GauWeights<double> w = random_weights<double>(8, 10, 4, true, 1);
  Matrix<double> x(0, 8), out(0, 8);
  kexue::gau(w, x, out);
  kexue::gau(w, TensorView<const double>::contiguous(x.data(), 0, 1, 5, 8),
             TensorView<double>::contiguous(out.data(), 0, 1, 5, 8));
  CHECK(out.size() == 0);
}

TEMPLATE_TEST_CASE("gau with the masks of post 9529: UniLM segments and reverse causal (SPEC 7.3)", "[gau][masks]",
                   float, double) {
  // Against the double reference (which builds c = cumsum(ids) and tests c[j] <= c[i] literally), combined with
  // key_length, a key mask and every normalisation; rows cross the GAU's row tiles (n = 160 > 144).
  using T = TestType;
  const Index D = 12, e = 20, s = 8, n = 160;
  const GauWeights<T> w = random_weights<T>(D, e, s, true, 95);
  const RopeTable<T> table(n, s);
  const Matrix<T> x = random_matrix<T>(n, D, 29);
  std::vector<std::int32_t> seg(static_cast<std::size_t>(n), 0);
  for (Index j = 50; j < n; ++j) seg[static_cast<std::size_t>(j)] = (j % 13 == 0 || j == 50) ? 1 : 0;
  std::vector<std::int64_t> seg64(seg.begin(), seg.end());
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n), 1);
  for (Index j = 7; j < n; j += 9) mask[static_cast<std::size_t>(j)] = 0;
  for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
    for (int variant = 0; variant < 6; ++variant) {
      // 0 UniLM, 1 UniLM + key_length + mask (int64 ids), 2 reverse, 3 reverse + key_length + mask,
      // 4 UniLM + reverse, 5 head_directions = {ReverseCausal}.
      GauOptions o = make_options(norm);
      if (variant <= 1 || variant == 4) {
        if (variant == 1)
          o.attention.segments = kexue::SegmentIds(seg64);
        else
          o.attention.segments = kexue::SegmentIds(seg);
      }
      if (variant >= 2 && variant <= 4) o.attention.reverse_causal = true;
      const kexue::HeadDirection rev[] = {kexue::HeadDirection::ReverseCausal};
      if (variant == 5) o.attention.head_directions = kexue::HeadDirections(rev, 1);
      if (variant == 1 || variant == 3) {
        o.attention.key_length = 130;
        o.key_mask = kexue::KeyMask(mask);
      }
      INFO("normalization " << int(norm) << ", variant " << variant);
      Matrix<T> got(n, D);
      kexue::gau(w, x, got, o, &table);
      GauOptions ro = o;
      if (variant == 5) {
        ro.attention.head_directions.reset();
        ro.attention.reverse_causal = true;
      }
      const Matrix<double> want = gau_reference(w, x.template cast<double>().eval(), ro, true);
      CHECK(nmse(got.template cast<double>().eval(), want) < (sizeof(T) == 4 ? 1e-10 : 1e-24));
      // Thread count: bitwise.
      set_threads(1);
      Matrix<T> one(n, D);
      kexue::gau(w, x, one, o, &table);
      set_threads(2);
      Matrix<T> two(n, D);
      kexue::gau(w, x, two, o, &table);
      set_threads(hardware_threads());
      CHECK(max_abs_diff(one, two) == 0.0);
      CHECK(max_abs_diff(one, got) == 0.0);
    }
  }
}

TEMPLATE_TEST_CASE("batched gau: per-sequence segment ids equal the 2-D calls; hidden tokens stay out", "[gau][masks]",
                   float, double) {
  using T = TestType;
  const Index D = 12, e = 20, s = 8, n = 100, B = 3;
  const GauWeights<T> w = random_weights<T>(D, e, s, false, 96);
  const RopeTable<T> table(n, s);
  const Matrix<T> x = random_matrix<T>(B * n, D, 37);
  std::vector<std::int32_t> seg(static_cast<std::size_t>(B * n), 0);
  for (Index b = 0; b < B; ++b)
    for (Index j = 20 + 30 * b; j < n; ++j) seg[static_cast<std::size_t>(b * n + j)] = 1;
  GauOptions o = make_options(Normalization::SoftmaxPlus);
  o.attention.segments = kexue::SegmentIds(seg);
  Matrix<T> out(B * n, D);
  kexue::gau(w, TensorView<const T>::contiguous(x.data(), B, 1, n, D), TensorView<T>::contiguous(out.data(), B, 1, n, D),
             {90, 100, 60}, o, &table);
  const Index lengths[] = {90, 100, 60};
  for (Index b = 0; b < B; ++b) {
    GauOptions ob = o;
    ob.attention.segments = kexue::SegmentIds(seg.data() + b * n, n);
    ob.attention.key_length = lengths[b];
    Matrix<T> one(n, D);
    kexue::gau(w, x.middleRows(b * n, n), one, ob, &table);
    CHECK(max_abs_diff(one, out.middleRows(b * n, n).eval()) == 0.0);
  }
  // Hidden tokens: under UniLM the source rows (the first 20 of sequence 0) never see the target; poison the
  // target tokens' x rows and the source rows keep their bits. Under reverse causal, rows after a poisoned token
  // do not see it.
  const T poison = std::numeric_limits<T>::quiet_NaN();
  for (int kind = 0; kind < 2; ++kind) {
    GauOptions ok = make_options(Normalization::SquaredRelu);
    if (kind == 0)
      ok.attention.segments = kexue::SegmentIds(seg.data(), n);
    else
      ok.attention.reverse_causal = true;
    const Matrix<T> x0 = x.topRows(n);
    Matrix<T> bad = x0;
    if (kind == 0)
      bad.bottomRows(n - 20).setConstant(poison);
    else
      bad.row(30).setConstant(poison);
    Matrix<T> a(n, D), c(n, D);
    kexue::gau(w, x0, a, ok, &table);
    kexue::gau(w, bad, c, ok, &table);
    const Index first = kind == 0 ? 0 : 31, last = kind == 0 ? 20 : n;
    CHECK(c.middleRows(first, last - first).allFinite());
    CHECK(std::memcmp(a.row(first).data(), c.row(first).data(), sizeof(T) * std::size_t((last - first) * D)) == 0);
  }
}

TEST_CASE("gau masks of post 9529: bad input", "[gau][masks]") {
  const GauWeights<float> w = random_weights<float>(8, 8, 4, false, 97);
  const Matrix<float> x = random_matrix<float>(5, 8, 38);
  Matrix<float> out = Matrix<float>::Constant(5, 8, 7.f);
  std::vector<std::int32_t> neg = {0, 1, 0, -2, 0}, short_ids = {0, 1};
  GauOptions o;
  o.attention.segments = kexue::SegmentIds(neg);
  throws_with([&] { kexue::gau(w, x, out, o); }, "gau: options.attention.segments[3] = -2 is negative");
  o.attention.segments = kexue::SegmentIds(short_ids);
  throws_with([&] { kexue::gau(w, x, out, o); }, "options.attention.segments has 2 ids but the sequence has 5");
  o = GauOptions();
  o.attention.causal = o.attention.reverse_causal = true;
  throws_with([&] { kexue::gau(w, x, out, o); }, "causal and options.attention.reverse_causal are both set");
  o = GauOptions();
  const kexue::HeadDirection two[] = {kexue::HeadDirection::Causal, kexue::HeadDirection::ReverseCausal};
  o.attention.head_directions = kexue::HeadDirections(two, 2);
  throws_with([&] { kexue::gau(w, x, out, o); }, "head_directions has 2 entries but a GAU layer has one head");
  CHECK((out.array() == 7.f).all());
  // Batched: segments of neither n nor batch x n ids.
  std::vector<std::int32_t> ids(7, 0);
  o = GauOptions();
  o.attention.segments = kexue::SegmentIds(ids);
  Matrix<float> xb = random_matrix<float>(10, 8, 39), ob(10, 8);
  throws_with([&] {
    kexue::gau(w, TensorView<const float>::contiguous(xb.data(), 2, 1, 5, 8), TensorView<float>::contiguous(ob.data(), 2, 1, 5, 8),
               {}, o);
  }, "options.attention.segments has 7 ids but needs n = 5 (shared) or batch x n = 10");
}

// ---- bf16 weights and activations (issue 13, part 4) ----------------------------------------------------------

namespace {

using BF = Eigen::bfloat16;

template <class M>
Matrix<BF> to_bf16(const M& m) {
  Matrix<BF> r(m.rows(), m.cols());
  kexue::convert(m, r);
  return r;
}

Matrix<float> to_float(const Matrix<BF>& m) {
  Matrix<float> r(m.rows(), m.cols());
  kexue::convert(m, r);
  return r;
}

Vector<BF> vec_bf16(const Vector<float>& v) {
  Vector<BF> r(v.size());
  for (Index i = 0; i < v.size(); ++i) r[i] = BF(v[i]);
  return r;
}

Vector<float> vec_float(const Vector<BF>& v) {
  Vector<float> r(v.size());
  for (Index i = 0; i < v.size(); ++i) r[i] = float(v[i]);
  return r;
}

GauWeights<BF> weights_bf16(const GauWeights<float>& w) {
  GauWeights<BF> r;
  r.w_in = to_bf16(w.w_in);
  r.w_out = to_bf16(w.w_out);
  r.b_in = vec_bf16(w.b_in);
  r.gamma_q = vec_bf16(w.gamma_q);
  r.beta_q = vec_bf16(w.beta_q);
  r.gamma_k = vec_bf16(w.gamma_k);
  r.beta_k = vec_bf16(w.beta_k);
  r.b_out = vec_bf16(w.b_out);
  return r;
}

GauWeights<float> weights_widened(const GauWeights<BF>& w) {
  GauWeights<float> r;
  r.w_in = to_float(w.w_in);
  r.w_out = to_float(w.w_out);
  r.b_in = vec_float(w.b_in);
  r.gamma_q = vec_float(w.gamma_q);
  r.beta_q = vec_float(w.beta_q);
  r.gamma_k = vec_float(w.gamma_k);
  r.beta_k = vec_float(w.beta_k);
  r.b_out = vec_float(w.b_out);
  return r;
}

// Tolerance of the bf16 GAU against the float GAU on the widened weights and x. Only x W_in is summed in another
// order (the bf16 GEMM adds two exact bf16 products per step, the float GEMM one: each element of u, v, z differs by
// a few float ulps of sum |x w|); the rest is the float kernel on those values. 2e-5 of max(1, max |out|) is ~170
// float ulps: the measured difference is below 1e-6 here, while rounding any intermediate (u, v, z, A, g) to bf16
// would cost ~1e-3 (checked below: the float GAU on unrounded weights is that far away).
constexpr double kBf16GauTol = 2e-5;

double gau_scale(const Matrix<float>& m) { return std::max(1.0, double(m.cwiseAbs().maxCoeff())); }

// Relative RMS error; 0 when both are exactly zero.
double rel_rms(const Matrix<float>& got, const Matrix<float>& ref) {
  const double num = (got.cast<double>() - ref.cast<double>()).squaredNorm();
  const double den = ref.cast<double>().squaredNorm();
  return den > 0 ? std::sqrt(num / den) : (num == 0 ? 0.0 : 1.0);
}

}  // namespace

TEST_CASE("gau with bf16 weights and x equals the float gau on the widened values (float or bf16 out)", "[gau][bf16]") {
  const Index D = 19, e = 36, s = 12;  // odd D: the bf16 GEMM pads its last depth pair
  for (bool bias : {true, false}) {
    const GauWeights<float> w0 = random_weights<float>(D, e, s, bias, bias ? 5 : 6);
    const GauWeights<BF> wb = weights_bf16(w0);
    const GauWeights<float> wf = weights_widened(wb);
    for (Index n : {Index(1), Index(50), Index(150)}) {
      const RopeTable<float> table(n, s);
      const Matrix<float> x0 = random_matrix<float>(n, D, std::uint32_t(n + 3));
      const Matrix<BF> xb = to_bf16(x0);
      const Matrix<float> xf = to_float(xb);
      std::vector<unsigned char> mask(static_cast<std::size_t>(n), 1);
      for (Index j = 0; j < n; j += 3) mask[static_cast<std::size_t>(j)] = 0;
      std::vector<std::int32_t> seg(static_cast<std::size_t>(n), 0);
      seg[0] = 1;
      if (n > 10) seg[static_cast<std::size_t>(n / 3)] = 1;
      for (int variant = 0; variant < 7; ++variant) {
        INFO("bias " << bias << ", n " << n << ", variant " << variant);
        GauOptions o;
        const RopeTable<float>* rope = variant % 2 == 0 ? &table : nullptr;
        switch (variant) {
          case 0: break;  // SquaredRelu, bert4keras defaults
          case 1: o = make_options(Normalization::Softmax, true, std::max<Index>(0, n - 7)); break;
          case 2: o = make_options(Normalization::SoftmaxPlus, false, std::max<Index>(0, n - 4)); break;
          case 3: o.key_mask = kexue::KeyMask(mask.data(), n); break;
          case 4: o.attention.segments = seg; break;
          case 5: o = make_options(Normalization::Softmax); o.attention.reverse_causal = true; break;
          case 6: o = make_options(Normalization::SquaredRelu, false, std::max<Index>(0, n - 5));
                  o.zero_padded_rows = true; break;
        }
        Matrix<float> ref(n, D), got(n, D);
        kexue::gau(wf, xf, ref, o, rope);
        kexue::gau(wb, xb, got, o, rope);
        const double tol = kBf16GauTol * gau_scale(ref);
        CHECK(max_abs_diff(got, ref) <= tol);
        if (o.zero_padded_rows)
          for (Index r = *o.attention.key_length; r < n; ++r) CHECK(got.row(r).cwiseAbs().maxCoeff() == 0.0f);
        // bf16 out: the float result rounded once (nearest even), bit for bit.
        Matrix<BF> got16(n, D);
        kexue::gau(wb, xb, got16, o, rope);
        const Matrix<BF> rounded = to_bf16(got);
        CHECK(std::memcmp(got16.data(), rounded.data(), sizeof(BF) * std::size_t(n * D)) == 0);
        // bf16 activations (v, A, g rounded to bf16): bf16-sized errors, the bound for bf16 compute.
        GauOptions oa = o;
        oa.bf16_activations = true;
        Matrix<float> act(n, D);
        kexue::gau(wb, xb, act, oa, rope);
        CHECK(rel_rms(act, ref) <= 1e-2);
        if (o.zero_padded_rows)
          for (Index r = *o.attention.key_length; r < n; ++r) CHECK(act.row(r).cwiseAbs().maxCoeff() == 0.0f);
      }
    }
  }
  // The tolerance can fail: the float GAU on the unrounded weights and x (what rounding intermediates to bf16
  // would resemble) is far outside it.
  const Index n = 50;
  const GauWeights<float> w0 = random_weights<float>(D, e, s, true, 5);
  const Matrix<float> x0 = random_matrix<float>(n, D, 53);
  Matrix<float> exact(n, D), got(n, D);
  kexue::gau(w0, x0, exact);
  kexue::gau(weights_bf16(w0), to_bf16(x0), got);
  CHECK(max_abs_diff(got, exact) > 10 * kBf16GauTol * gau_scale(exact));
}

TEST_CASE("gau bf16: hidden tokens never reach visible rows; in place on bf16 x", "[gau][bf16]") {
  const Index D = 24, e = 20, s = 8, n = 60, kl = 45;
  const GauWeights<BF> wb = weights_bf16(random_weights<float>(D, e, s, true, 21));
  const GauWeights<float> wf = weights_widened(wb);
  Matrix<BF> xb = to_bf16(random_matrix<float>(n, D, 22));
  Matrix<BF> poisoned = xb;
  for (Index r = kl; r < n; ++r)
    for (Index c = 0; c < D; ++c) poisoned(r, c) = BF(r % 2 ? std::numeric_limits<float>::quiet_NaN() : 1e30f);
  const GauOptions o = make_options(Normalization::Softmax, false, kl);
  Matrix<float> clean(n, D), dirty(n, D), ref(n, D);
  kexue::gau(wb, xb, clean, o);
  kexue::gau(wb, poisoned, dirty, o);
  kexue::gau(wf, to_float(xb), ref, o);
  CHECK(max_abs_diff(clean.topRows(kl), dirty.topRows(kl)) == 0.0);
  CHECK(max_abs_diff(clean, ref) <= kBf16GauTol * gau_scale(ref));
  for (Index len : {kl, kl - 1}) {  // odd and even key counts (the bf16 GEMM pairs keys)
    GauOptions oa = make_options(Normalization::SquaredRelu, false, len);
    oa.bf16_activations = true;
    Matrix<float> a_clean(n, D), a_dirty(n, D);
    kexue::gau(wb, xb, a_clean, oa);
    kexue::gau(wb, poisoned, a_dirty, oa);
    CHECK(a_clean.allFinite());
    CHECK(max_abs_diff(a_clean.topRows(kl), a_dirty.topRows(kl)) == 0.0);
  }
  // out = x (bf16 in place): x is read completely before out is written.
  Matrix<BF> inplace = xb, separate(n, D);
  kexue::gau(wb, xb, separate, o);
  kexue::gau(wb, inplace, inplace, o);
  CHECK(std::memcmp(inplace.data(), separate.data(), sizeof(BF) * std::size_t(n * D)) == 0);
}

TEST_CASE("gau bf16 is bitwise identical for 1 and 2 threads, with and without a workspace", "[gau][bf16]") {
  const Index D = 33, e = 40, s = 16;
  const GauWeights<BF> wb = weights_bf16(random_weights<float>(D, e, s, true, 31));
  GauWorkspace<BF> ws;
  for (Index n : {300, 50, 3}) {
    const RopeTable<float> table(n, s);
    const Matrix<BF> x = to_bf16(random_matrix<float>(n, D, std::uint32_t(n)));
    for (bool act : {false, true}) {
      GauOptions o = make_options(Normalization::SoftmaxPlus, n == 300, n - 1);
      o.bf16_activations = act;
      Matrix<float> one(n, D), two(n, D), reused(n, D);
      set_threads(1);
      kexue::gau(wb, x, one, o, &table);
      set_threads(2);
      kexue::gau(wb, x, two, o, &table);
      kexue::gau(wb, x, reused, ws, o, &table);
      set_threads(hardware_threads());
      CHECK(max_abs_diff(one, two) == 0.0);
      CHECK(max_abs_diff(one, reused) == 0.0);
      CHECK(ws.bytes() > 0);
    }
  }
}

TEST_CASE("gau bf16: bad input throws kexue::Error naming the argument, before writing", "[gau][bf16]") {
  const Index D = 8, e = 10, s = 4, n = 6;
  const GauWeights<BF> good = weights_bf16(random_weights<float>(D, e, s, true, 1));
  const Matrix<BF> x = to_bf16(random_matrix<float>(n, D, 2));
  const RopeTable<float> table(n, s);
  const float sentinel = 12345.0f;
  auto expect = [&](auto&& call, const std::string& part) {
    Matrix<float> out = Matrix<float>::Constant(n, D, sentinel);
    throws_with([&] { call(out); }, part);
    CHECK((out.array() == sentinel).all());
  };
  expect([&](Matrix<float>& out) { kexue::gau(good, x.leftCols(D - 1), out.leftCols(D - 1)); }, "x has shape");
  expect([&](Matrix<float>& out) { kexue::gau(good, x, out.topRows(n - 1)); }, "out");
  {
    GauWeights<BF> w = good;
    w.b_in.resize(3);
    expect([&](Matrix<float>& out) { kexue::gau(w, x, out); }, "weights.b_in has 3 values");
  }
  {
    GauWeights<BF> w = good;
    w.w_out.resize(e, D + 1);
    expect([&](Matrix<float>& out) { kexue::gau(w, x, out); }, "weights.w_out");
  }
  const RopeTable<float> wrong(n, s + 2);
  expect([&](Matrix<float>& out) { kexue::gau(good, x, out, GauOptions{}, &wrong); }, "rope_table has dim");
  expect([&](Matrix<float>& out) { kexue::gau(good, x, out, make_options(Normalization::Softmax, false, n + 1)); },
         "options.attention.key_length");
  std::vector<unsigned char> short_mask(static_cast<std::size_t>(n - 1), 1);
  GauOptions om;
  om.key_mask = kexue::KeyMask(short_mask.data(), n - 1);
  expect([&](Matrix<float>& out) { kexue::gau(good, x, out, om); }, "options.key_mask has");
  GauOptions both = make_options(Normalization::Softmax, true);
  both.attention.reverse_causal = true;
  expect([&](Matrix<float>& out) { kexue::gau(good, x, out, both); }, "reverse_causal");
}

TEST_CASE("batched gau with bf16 weights: each sequence is the 2-D bf16 gau on it, bit for bit", "[gau][bf16]") {
  const Index D = 19, e = 36, s = 12, n = 70, B = 3;  // odd D: the bf16 GEMM pads its last depth pair
  const GauWeights<BF> wb = weights_bf16(random_weights<float>(D, e, s, true, 41));
  const RopeTable<float> table(n, s);
  const Matrix<BF> x = to_bf16(random_matrix<float>(B * n, D, 42));
  const auto xv = TensorView<const BF>::contiguous(x.data(), B, 1, n, D);
  std::vector<std::int32_t> seg(static_cast<std::size_t>(B * n), 0);
  for (Index b = 0; b < B; ++b)
    for (Index j = 10 + 20 * b; j < n; ++j) seg[static_cast<std::size_t>(b * n + j)] = 1;
  const std::vector<Index> lengths = {n, 45, 0};  // full, padded, empty
  GauWorkspace<BF> ws;
  for (int variant = 0; variant < 4; ++variant) {
    GauOptions o;
    switch (variant) {
      case 0: break;  // SquaredRelu, bert4keras defaults
      case 1: o = make_options(Normalization::Softmax, true); break;
      case 2: o = make_options(Normalization::SoftmaxPlus); o.attention.segments = kexue::SegmentIds(seg); break;
      case 3: o = make_options(Normalization::SquaredRelu); o.zero_padded_rows = true; break;
    }
    for (bool act : {false, true}) {
      o.bf16_activations = act;
      INFO("variant " << variant << ", bf16 activations " << act);
      // The 2-D calls, one sequence at a time, are the reference.
      Matrix<float> ref(B * n, D);
      Matrix<BF> ref16(B * n, D);
      for (Index b = 0; b < B; ++b) {
        GauOptions ob = o;
        if (o.attention.segments) ob.attention.segments = kexue::SegmentIds(seg.data() + b * n, n);
        ob.attention.key_length = lengths[static_cast<std::size_t>(b)];
        Matrix<float> one(n, D);
        Matrix<BF> one16(n, D);
        kexue::gau(wb, x.middleRows(b * n, n), one, ob, &table);
        kexue::gau(wb, x.middleRows(b * n, n), one16, ob, &table);
        ref.middleRows(b * n, n) = one;
        ref16.middleRows(b * n, n) = one16;
      }
      CHECK(ref.allFinite());
      for (int threads : {1, 2}) {  // 2 threads and 3 sequences: the sequences run in parallel
        set_threads(threads);
        Matrix<float> got(B * n, D);
        Matrix<BF> got16(B * n, D);
        kexue::gau(wb, xv, TensorView<float>::contiguous(got.data(), B, 1, n, D), lengths, ws, o, &table);
        kexue::gau(wb, xv, TensorView<BF>::contiguous(got16.data(), B, 1, n, D), lengths, o, &table);
        // In place on bf16 x: each sequence reads its x before writing its out.
        Matrix<BF> inplace = x;
        kexue::gau(wb, TensorView<const BF>::contiguous(inplace.data(), B, 1, n, D),
                   TensorView<BF>::contiguous(inplace.data(), B, 1, n, D), lengths, ws, o, &table);
        set_threads(hardware_threads());
        INFO("threads " << threads);
        CHECK(std::memcmp(got.data(), ref.data(), sizeof(float) * std::size_t(B * n * D)) == 0);
        CHECK(std::memcmp(got16.data(), ref16.data(), sizeof(BF) * std::size_t(B * n * D)) == 0);
        CHECK(std::memcmp(inplace.data(), ref16.data(), sizeof(BF) * std::size_t(B * n * D)) == 0);
      }
    }
  }
  // Bad input throws before out is written: a lengths entry out of range, lengths of the wrong count, and a float
  // out overlapping the bf16 x (no in-place use across types).
  Matrix<float> out = Matrix<float>::Constant(B * n, D, 7.0f);
  const auto ov = TensorView<float>::contiguous(out.data(), B, 1, n, D);
  throws_with([&] { kexue::gau(wb, xv, ov, std::vector<Index>{n, n + 1, 0}); }, "lengths[b]");
  throws_with([&] { kexue::gau(wb, xv, ov, std::vector<Index>{n, n}); }, "lengths has 2 entries");
  CHECK((out.array() == 7.0f).all());
  Matrix<float> buf = Matrix<float>::Constant(B * n, D, 7.0f);
  const auto alias_x = TensorView<const BF>::contiguous(reinterpret_cast<const BF*>(buf.data()), B, 1, n, D);
  throws_with([&] { kexue::gau(wb, alias_x, TensorView<float>::contiguous(buf.data(), B, 1, n, D)); },
              "out overlaps x");
  CHECK((buf.array() == 7.0f).all());
}

TEMPLATE_TEST_CASE("gau: a NaN in one token reaches exactly the rows that attend to it", "[gau][nan]", float, double) {
  // End to end: the NaN token's v row is NaN too, so this holds even where a NaN logit was dropped (the logit rule
  // itself is tested on the kernels, in test_attention and test_flash); it pins down that no path hides the NaN.
  using T = TestType;
  const Index n = 40, D = 24, e = 48, s = 16, j = 17;
  const GauWeights<T> w = random_weights<T>(D, e, s, true, 77);
  const Matrix<T> x = Matrix<T>::Random(n, D);
  for (int norm = 0; norm < 3; ++norm)
    for (bool causal : {false, true}) {
      GauOptions o;
      o.attention.normalization = static_cast<Normalization>(norm);
      o.attention.causal = causal;
      Matrix<T> clean(n, D), got(n, D);
      kexue::gau(w, x, clean, o);
      Matrix<T> xn = x;
      xn(j, 3) = std::numeric_limits<T>::quiet_NaN();
      kexue::gau(w, xn, got, o);
      expect_nan_reaches(clean, got, [&](Index i) { return !causal || i >= j; },
                         "norm " + std::to_string(norm) + " causal " + std::to_string(causal));
    }
}
