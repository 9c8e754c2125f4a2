// SPDX-License-Identifier: MIT
// kexue::attention with 16-bit storage (issue 13 item 2): K and V as Eigen::half / Eigen::bfloat16 with q and out
// float (the KV-cache case), and q, k, v all 16-bit with out float or 16-bit (rounded to nearest even).
// - PyTorch data (tests/reference/cases_attention_half.py): storage-only cases within the float kernel's tolerance
//   of float64 on the rounded inputs; bf16 compute within relative RMS 1e-2 and 2x PyTorch's own bf16 error.
// - Bitwise: every 16-bit form gives the float kernel's bits on the widened inputs (2-D, strided, batched with
//   GQA, the decode path n <= 2, every normalisation and mask: causal, key_length, KeyMask, reverse_causal,
//   segments, head_directions), and a 16-bit out is that float result rounded once.
// - Hidden keys: inf / NaN in 16-bit k / v rows a row cannot see never reach it.
// - Bad input throws before out is written; 1 and 2 threads give the same bits.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kexue/attention.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace kexue_test;
using kexue::AttentionOptions;
using kexue::HeadDirection;
using kexue::Matrix;
using kexue::Normalization;
using kexue::TensorView;
using half = Eigen::half;
using bf16 = Eigen::bfloat16;

namespace {

const RefData& ref() {
  static const RefData r("attention_half");
  return r;
}

template <class T>
bool same_bits(const T* a, const T* b, Index count) {
  return std::memcmp(a, b, sizeof(T) * static_cast<std::size_t>(count)) == 0;
}

template <class H>
Matrix<H> narrow(const Matrix<float>& x) {
  Matrix<H> y(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) y.data()[i] = kexue::detail::from_float<H>(x.data()[i]);
  return y;
}
template <class H>
Matrix<float> widen(const Matrix<H>& x) {
  Matrix<float> y(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) y.data()[i] = kexue::detail::to_float<H>(x.data()[i]);
  return y;
}
template <class H>
std::vector<H> narrow(const std::vector<float>& x) {
  std::vector<H> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = kexue::detail::from_float<H>(x[i]);
  return y;
}
template <class H>
std::vector<float> widen(const std::vector<H>& x) {
  std::vector<float> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = kexue::detail::to_float<H>(x[i]);
  return y;
}

Matrix<float> randn(Index r, Index c, std::uint32_t seed, float std = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd(0.0f, std);
  Matrix<float> x(r, c);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = nd(g);
  return x;
}

Normalization norm_of(double x) {
  return x == 0 ? Normalization::Softmax : x == 1 ? Normalization::SoftmaxPlus : Normalization::SquaredRelu;
}

AttentionOptions case_options(const std::string& name) {
  AttentionOptions o;
  o.normalization = norm_of(ref().scalar(name + "/norm"));
  o.causal = ref().scalar(name + "/causal") != 0;
  const double kl = ref().scalar(name + "/key_length");
  if (kl >= 0) o.key_length = Index(kl);
  return o;
}

std::vector<unsigned char> mask_of(const std::string& name) {
  std::vector<unsigned char> m;
  for (double x : ref().values(name)) m.push_back(x != 0);
  return m;
}

double rel_rms(const Matrix<float>& x, const Matrix<double>& ref64) {
  double num = 0, den = 0;
  for (Index i = 0; i < x.size(); ++i) {
    const double e = double(x.data()[i]) - ref64.data()[i];
    num += e * e;
    den += ref64.data()[i] * ref64.data()[i];
  }
  return std::sqrt(num / den);
}

// The storage-only data cases for one 16-bit type.
template <class H>
void check_kv_cases(const char* tname) {
  const Matrix<float> q = ref().matrix<float>("kv/q");
  const Matrix<float> kf = ref().matrix<float>(std::string("kv/") + tname + "/k");
  const Matrix<float> vf = ref().matrix<float>(std::string("kv/") + tname + "/v");
  const Matrix<H> k = narrow<H>(kf), v = narrow<H>(vf);
  REQUIRE(widen(k) == kf);  // the data holds exactly representable values
  REQUIRE(widen(v) == vf);
  const std::vector<unsigned char> mask = mask_of("kv/mask");
  int cases = 0;
  for (const char* norm : {"softmax", "softmax_plus", "squared_relu"}) {
    for (const char* mk : {"none", "causal", "keylen_mask", "causal_keylen_mask"}) {
      const std::string name = std::string("kv_") + tname + "_" + norm + "_" + mk;
      INFO(name);
      const AttentionOptions o = case_options(name);
      const bool use_mask = ref().scalar(name + "/use_mask") != 0;
      const Matrix<double> want = ref().matrix<double>(name + "/out");
      Matrix<float> got(q.rows(), vf.cols()), same(q.rows(), vf.cols());
      if (use_mask) {
        kexue::attention(q, k, v, mask, got, o);
        kexue::attention(q, kf, vf, mask, same, o);
      } else {
        kexue::attention(q, k, v, got, o);
        kexue::attention(q, kf, vf, same, o);
      }
      CHECK(nmse(got, want) < nmse_bound<float>());
      CHECK(same_bits(got.data(), same.data(), got.size()));
      ++cases;
    }
  }
  CHECK(cases == int(ref().scalar("kv/count")) / 2);
}

/// Fills a [B, H, n, d] buffer laid out seq-major with a row stride padding of 3 elements (a strided view).
struct Tensor4 {
  std::vector<float> data;
  TensorView<float> view;
  Tensor4(Index B, Index H, Index n, Index d, std::uint32_t seed, float std = 1.0f) {
    const Index ld = H * (d + 3);
    data.resize(static_cast<std::size_t>(B * n * ld));
    std::mt19937 g(seed);
    std::normal_distribution<float> nd(0.0f, std);
    for (auto& x : data) x = nd(g);
    view = TensorView<float>(data.data(), {B, H, n, d}, {n * ld, d + 3, ld});
  }
};

template <class H>
struct Tensor4h {
  std::vector<H> data;
  TensorView<H> view;
  std::vector<float> wide;  // the widened values in the same layout
  TensorView<float> wview;
  explicit Tensor4h(const Tensor4& t) : data(narrow<H>(t.data)) {
    wide = widen<H>(data);
    view = TensorView<H>(data.data(), t.view.shape, t.view.strides);
    wview = TensorView<float>(wide.data(), t.view.shape, t.view.strides);
  }
};

/// Runs the batched float kernel on widened inputs and every 16-bit form of type H on the same values, and checks
/// the bits: K/V 16-bit (q, out float); q, k, v 16-bit with out float; out 16-bit == the float result rounded.
template <class H>
void check_batched_bitwise(Index B, Index Hq, Index Hk, Index n, Index m, Index d, Index dv,
                           const AttentionOptions& o, const std::vector<unsigned char>* mask, std::uint32_t seed) {
  const Tensor4 q0(B, Hq, n, d, seed), k0(B, Hk, m, d, seed + 1, 1.5f), v0(B, Hk, m, dv, seed + 2);
  const Tensor4h<H> qh(q0), kh(k0), vh(v0);
  auto run = [&](auto q, auto k, auto v, auto out) {
    if (mask)
      kexue::attention(q, k, v, kexue::KeyMask(*mask), out, o);
    else
      kexue::attention(q, k, v, out, o);
  };
  const Index outn = B * Hq * n * dv;
  std::vector<float> want(static_cast<std::size_t>(outn), -7.0f), got(want), got2(want);
  auto oview = [&](std::vector<float>& x) { return TensorView<float>::contiguous(x.data(), B, Hq, n, dv); };
  // K/V cache: q float (the original values), k and v 16-bit.
  run(TensorView<const float>(q0.view), TensorView<const float>(kh.wview), TensorView<const float>(vh.wview),
      oview(want));
  run(TensorView<const float>(q0.view), TensorView<const H>(kh.view), TensorView<const H>(vh.view), oview(got));
  CHECK(same_bits(got.data(), want.data(), outn));
  // q, k, v 16-bit: the float kernel on the widened q.
  run(TensorView<const float>(qh.wview), TensorView<const float>(kh.wview), TensorView<const float>(vh.wview),
      oview(want));
  run(TensorView<const H>(qh.view), TensorView<const H>(kh.view), TensorView<const H>(vh.view), oview(got2));
  CHECK(same_bits(got2.data(), want.data(), outn));
  // out 16-bit, strided: rounded once from the float result.
  const Index ldo = dv + 5;
  std::vector<H> oh(static_cast<std::size_t>(B * Hq * n * ldo), kexue::detail::from_float<H>(-3.0f));
  run(TensorView<const H>(qh.view), TensorView<const H>(kh.view), TensorView<const H>(vh.view),
      TensorView<H>(oh.data(), {B, Hq, n, dv}, {Hq * n * ldo, n * ldo, ldo}));
  bool rounded = true, pad = true;
  for (Index r = 0; r < B * Hq * n; ++r)
    for (Index e = 0; e < ldo; ++e) {
      const H x = oh[static_cast<std::size_t>(r * ldo + e)];
      if (e < dv)
        rounded &= kexue::detail::to_float<H>(x) ==
                   kexue::detail::to_float<H>(kexue::detail::from_float<H>(want[static_cast<std::size_t>(r * dv + e)]));
      else
        pad &= kexue::detail::to_float<H>(x) == -3.0f;
    }
  CHECK(rounded);
  CHECK(pad);
}

}  // namespace

TEST_CASE("attention_half: 16-bit K/V against PyTorch float64 on the rounded values", "[attention][half]") {
  check_kv_cases<half>("f16");
  check_kv_cases<bf16>("bf16");
}

TEST_CASE("attention_half: decode row against a 16-bit cache, PyTorch data", "[attention][half]") {
  const Matrix<float> q = ref().matrix<float>("decode/q");
  auto one = [&](auto tag, const char* tname) {
    using H = decltype(tag);
    const Matrix<float> kf = ref().matrix<float>(std::string("decode/") + tname + "/k");
    const Matrix<float> vf = ref().matrix<float>(std::string("decode/") + tname + "/v");
    const Matrix<H> k = narrow<H>(kf), v = narrow<H>(vf);
    AttentionOptions o;
    o.key_length = 171;
    Matrix<float> got(1, vf.cols()), same(1, vf.cols());
    kexue::attention(q, k, v, got, o);
    kexue::attention(q, kf, vf, same, o);
    CHECK(nmse(got, ref().matrix<double>(std::string("decode/") + tname + "/out")) < nmse_bound<float>());
    CHECK(same_bits(got.data(), same.data(), got.size()));
  };
  one(half(), "f16");
  one(bf16(), "bf16");
}

TEST_CASE("attention_half: bf16 q, k, v within 1e-2 and twice PyTorch's bf16 error", "[attention][half]") {
  const Matrix<float> qf = ref().matrix<float>("bf16/q"), kf = ref().matrix<float>("bf16/k"),
                      vf = ref().matrix<float>("bf16/v");
  const Matrix<bf16> q = narrow<bf16>(qf), k = narrow<bf16>(kf), v = narrow<bf16>(vf);
  REQUIRE(widen(q) == qf);
  const std::vector<unsigned char> mask = mask_of("bf16/mask");
  int cases = 0;
  for (const char* norm : {"softmax", "softmax_plus", "squared_relu"}) {
    for (const char* mk : {"none", "causal", "keylen_mask"}) {
      const std::string name = std::string("bf16_") + norm + "_" + mk;
      INFO(name);
      const AttentionOptions o = case_options(name);
      const bool use_mask = ref().scalar(name + "/use_mask") != 0;
      const Matrix<double> want = ref().matrix<double>(name + "/out64");
      const double torch_err = ref().scalar(name + "/torch_err");
      Matrix<float> got(q.rows(), v.cols());
      Matrix<bf16> got16(q.rows(), v.cols());
      if (use_mask) {
        kexue::attention(q, k, v, mask, got, o);
        kexue::attention(q, k, v, mask, got16, o);
      } else {
        kexue::attention(q, k, v, got, o);
        kexue::attention(q, k, v, got16, o);
      }
      const double e32 = rel_rms(got, want), e16 = rel_rms(widen(got16), want);
      INFO("kexue float out " << e32 << ", bf16 out " << e16 << ", torch bf16 " << torch_err);
      CHECK(e32 <= 1e-2);
      CHECK(e32 <= 2 * torch_err);
      CHECK(e16 <= 1e-2);
      CHECK(e16 <= 2 * torch_err);
      // The bf16 output is the float output rounded to nearest even.
      CHECK(widen(got16) == widen(narrow<bf16>(got)));
      ++cases;
    }
  }
  CHECK(cases == int(ref().scalar("bf16/count")));
}

TEST_CASE("attention_half: every form is the float kernel on the widened inputs, bit for bit", "[attention][half]") {
  std::vector<unsigned char> mask(300);
  std::mt19937 g(7);
  for (auto& x : mask) x = (g() % 4) != 0;
  std::vector<std::int32_t> seg(300, 0);
  for (Index j = 40; j < 300; ++j) seg[static_cast<std::size_t>(j)] = (j % 37 == 0) ? 1 : 0;
  for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
    for (int mk = 0; mk < 7; ++mk) {
      // (B, Hq, Hk, n, m, d, dv): prefill across sub-tiles and key tiles; decode with GQA 8/2; n = 2.
      for (const auto& shape : std::vector<std::array<Index, 7>>{{2, 4, 2, 57, 57, 24, 16},
                                                                 {1, 2, 1, 130, 130, 64, 64},
                                                                 {2, 8, 2, 1, 150, 64, 64},
                                                                 {1, 4, 1, 2, 131, 20, 12}}) {
        const Index n = shape[3], m = shape[4];
        AttentionOptions o;
        o.normalization = norm;
        const std::vector<unsigned char>* mp = nullptr;
        std::vector<unsigned char> mv;
        std::vector<HeadDirection> dirs;
        switch (mk) {
          case 0: break;
          case 1: o.causal = true; break;
          case 2: o.key_length = m - 9; break;
          case 3:
            mv.assign(mask.begin(), mask.begin() + m);
            mp = &mv;
            o.causal = true;
            o.key_length = m - 3;
            break;
          case 4:
            if (n != m) continue;
            o.reverse_causal = true;
            break;
          case 5:
            if (n != m) continue;
            o.segments = kexue::SegmentIds(seg.data(), m);
            break;
          case 6:
            if (n != m) continue;
            for (Index h = 0; h < shape[1]; ++h)
              dirs.push_back(h % 3 == 0 ? HeadDirection::Causal
                                        : h % 3 == 1 ? HeadDirection::ReverseCausal : HeadDirection::Bidirectional);
            o.head_directions = kexue::HeadDirections(dirs);
            break;
        }
        INFO("norm " << int(norm) << " mask " << mk << " n " << n << " m " << m);
        check_batched_bitwise<half>(shape[0], shape[1], shape[2], n, m, shape[5], shape[6], o, mp, 100 + mk);
        check_batched_bitwise<bf16>(shape[0], shape[1], shape[2], n, m, shape[5], shape[6], o, mp, 200 + mk);
      }
    }
  }
}

TEST_CASE("attention_half: 2-D strided views and a 16-bit out", "[attention][half]") {
  const Index n = 41, m = 90, d = 19, dv = 13;
  const Matrix<float> qf = randn(n, d + 4, 1), kf = randn(m, d + 2, 2), vf = randn(m, dv + 6, 3);
  const Matrix<bf16> qh = narrow<bf16>(qf), kh = narrow<bf16>(kf), vh = narrow<bf16>(vf);
  const Matrix<float> qw = widen(qh), kw = widen(kh), vw = widen(vh);
  for (bool causal : {false, true}) {
    AttentionOptions o;
    o.causal = causal;
    Matrix<float> want(n, dv), got(n, dv + 3);
    got.setConstant(-5.0f);
    kexue::attention(qf.leftCols(d), kw.leftCols(d), vw.leftCols(dv), want, o);
    kexue::attention(qf.leftCols(d), kh.leftCols(d), vh.leftCols(dv), got.leftCols(dv), o);
    CHECK(Matrix<float>(got.leftCols(dv)) == want);
    CHECK((got.rightCols(3).array() == -5.0f).all());
    kexue::attention(qw.leftCols(d), kw.leftCols(d), vw.leftCols(dv), want, o);
    Matrix<bf16> o16(n, dv + 2);
    o16.setConstant(bf16(-5.0f));
    kexue::attention(qh.leftCols(d), kh.leftCols(d), vh.leftCols(dv), o16.leftCols(dv), o);
    CHECK(widen(Matrix<bf16>(o16.leftCols(dv))) == widen(narrow<bf16>(want)));
    CHECK((widen(Matrix<bf16>(o16.rightCols(2))).array() == -5.0f).all());
  }
}

TEST_CASE("attention_half: hidden 16-bit keys holding inf / NaN never reach a row", "[attention][half]") {
  auto one = [](auto tag) {
    using H = decltype(tag);
    for (Index n : {Index(1), Index(2), Index(50)}) {
      for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
        const Index m = 140, d = 32, dv = 32, kl = 121;
        Matrix<H> k = narrow<H>(randn(m, d, 11)), v = narrow<H>(randn(m, dv, 12));
        const Matrix<float> q = randn(n, d, 13);
        std::vector<unsigned char> mask(static_cast<std::size_t>(m), 1);
        const H inf = H(std::numeric_limits<float>::infinity()), nan = H(std::numeric_limits<float>::quiet_NaN());
        for (Index j = 0; j < m; ++j) {
          const bool hidden = j >= kl || j % 5 == 2;
          if (j < kl) mask[static_cast<std::size_t>(j)] = hidden ? 0 : 1;
          if (!hidden) continue;
          for (Index c = 0; c < d; ++c) k(j, c) = (j + c) % 2 ? inf : nan;
          for (Index c = 0; c < dv; ++c) v(j, c) = (j + c) % 3 ? nan : -inf;
        }
        AttentionOptions o;
        o.normalization = norm;
        o.key_length = kl;
        o.causal = n > 2;  // rows of the prefill case also have future keys hidden
        // Reference: the same call on clean hidden rows (zeros).
        Matrix<H> kc = k, vc = v;
        for (Index j = 0; j < m; ++j)
          if (j >= kl || !mask[static_cast<std::size_t>(j)]) {
            kc.row(j).setConstant(H(0.0f));
            vc.row(j).setConstant(H(0.0f));
          }
        Matrix<float> got(n, dv), want(n, dv);
        kexue::attention(q, k, v, mask, got, o);
        kexue::attention(q, kc, vc, mask, want, o);
        INFO("n " << n << " norm " << int(norm));
        CHECK(got.allFinite());
        CHECK(same_bits(got.data(), want.data(), got.size()));
        // Causal prefill: future keys with NaN V rows (visible to later rows only).
        if (n > 2) {
          Matrix<H> v2 = vc;
          const Index first_future = m - n + 1;  // row 0 sees keys [0, m - n]
          for (Index c = 0; c < dv; ++c) v2(first_future, c) = nan;
          mask.assign(static_cast<std::size_t>(m), 1);
          Matrix<float> g2(n, dv);
          AttentionOptions o2 = o;
          o2.key_length.reset();
          kexue::attention(q, kc, v2, g2, o2);
          CHECK(g2.row(0).allFinite());
        }
      }
    }
  };
  one(half());
  one(bf16());
}

TEST_CASE("attention_half: bad input throws before out is written", "[attention][half][bad_input]") {
  const Matrix<half> k(10, 8), v(10, 6), kbad(10, 7), vbad(9, 6);
  const Matrix<float> q = randn(4, 8, 1);
  Matrix<float> out(4, 6);
  out.setConstant(3.0f);
  throws_with([&] { kexue::attention(q, kbad, v, out); }, "k has 7 columns but q has 8");
  throws_with([&] { kexue::attention(q, k, vbad, out); }, "v has 9 rows but k has 10");
  Matrix<float> out_bad(4, 5);
  throws_with([&] { kexue::attention(q, k, v, out_bad); }, "out");
  AttentionOptions o;
  o.key_length = 11;
  throws_with([&] { kexue::attention(q, k, v, out, o); }, "key_length");
  std::vector<unsigned char> mask(9, 1);
  throws_with([&] { kexue::attention(q, k, v, mask, out); }, "key_mask has 9 entries");
  CHECK((out.array() == 3.0f).all());
  // All-16-bit with a 16-bit out.
  const Matrix<bf16> qb(4, 8), kb(10, 8), vb(10, 6);
  Matrix<bf16> ob(4, 6);
  ob.setConstant(bf16(3.0f));
  o.key_length = -1;
  throws_with([&] { kexue::attention(qb, kb, vb, ob, o); }, "key_length");
  AttentionOptions o2;
  o2.causal = true;
  o2.reverse_causal = true;
  throws_with([&] { kexue::attention(qb, kb, vb, ob, o2); }, "reverse_causal");
  CHECK(widen(ob) == Matrix<float>::Constant(4, 6, 3.0f));
  // Batched: heads not a multiple, dims that differ.
  std::vector<bf16> buf(2 * 3 * 5 * 8);
  std::vector<float> qbuf(2 * 4 * 5 * 8), obuf(2 * 4 * 5 * 8, 3.0f);
  const auto kt = TensorView<const bf16>::contiguous(buf.data(), 2, 3, 5, 8);
  const auto qt = TensorView<const float>::contiguous(qbuf.data(), 2, 4, 5, 8);
  const auto ot = TensorView<float>::contiguous(obuf.data(), 2, 4, 5, 8);
  throws_with([&] { kexue::attention(qt, kt, kt, ot); }, "not a multiple");
  for (float x : obuf) CHECK(x == 3.0f);
}

#if defined(_OPENMP)
TEST_CASE("attention_half: 1 and 2 threads give the same bits", "[attention][half][threads]") {
  const int saved = omp_get_max_threads();
  for (Index n : {Index(1), Index(100)}) {
    const Index B = 2, Hq = 8, Hk = 2, m = 200, d = 64;
    const Tensor4 q0(B, Hq, n, d, 31), k0(B, Hk, m, d, 32), v0(B, Hk, m, d, 33);
    const Tensor4h<bf16> qh(q0), kh(k0), vh(v0);
    const Tensor4h<half> kf(k0), vf(v0);
    AttentionOptions o;
    o.causal = true;
    std::vector<float> r[2][2];
    for (int t = 0; t < 2; ++t) {
      omp_set_num_threads(t + 1);
      for (auto& x : r[t]) x.assign(static_cast<std::size_t>(B * Hq * n * d), 0.0f);
      kexue::attention(TensorView<const float>(q0.view), TensorView<const half>(kf.view),
                       TensorView<const half>(vf.view), TensorView<float>::contiguous(r[t][0].data(), B, Hq, n, d), o);
      kexue::attention(TensorView<const bf16>(qh.view), TensorView<const bf16>(kh.view),
                       TensorView<const bf16>(vh.view), TensorView<float>::contiguous(r[t][1].data(), B, Hq, n, d), o);
    }
    omp_set_num_threads(saved);
    CHECK(r[0][0] == r[1][0]);
    CHECK(r[0][1] == r[1][1]);
  }
}
#endif
