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
// - attention_weights: float weights from 16-bit q / k are the float call's bits on the widened values; 16-bit
//   weights are the float64 weights rounded once (checked against a midpoint rounding written here, with
//   constructed values where rounding through float first would land on the other side of a midpoint).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
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

/// Options (and mask, head directions) of mask kind mk for an n x m problem with `heads` query heads: 0 none,
/// 1 causal, 2 key_length, 3 KeyMask + causal + key_length, 4 reverse causal, 5 UniLM segments, 6 mixed head
/// directions (4-6 need n == m: false otherwise, skip the case). o keeps pointers into seg and dirs.
bool mask_kind_options(int mk, Index n, Index m, Index heads, const std::vector<unsigned char>& mask,
                       const std::vector<std::int32_t>& seg, AttentionOptions& o, std::vector<unsigned char>& mv,
                       std::vector<HeadDirection>& dirs) {
  switch (mk) {
    case 0: break;
    case 1: o.causal = true; break;
    case 2: o.key_length = m - 9; break;
    case 3:
      mv = std::vector<unsigned char>(mask.begin(), mask.begin() + m);
      o.causal = true;
      o.key_length = m - 3;
      break;
    case 4:
      if (n != m) return false;
      o.reverse_causal = true;
      break;
    case 5:
      if (n != m) return false;
      o.segments = kexue::SegmentIds(seg.data(), m);
      break;
    case 6:
      if (n != m) return false;
      for (Index h = 0; h < heads; ++h)
        dirs.push_back(h % 3 == 0 ? HeadDirection::Causal
                                  : h % 3 == 1 ? HeadDirection::ReverseCausal : HeadDirection::Bidirectional);
      o.head_directions = kexue::HeadDirections(dirs);
      break;
  }
  return true;
}

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
  // q, k, v 16-bit: the float kernel on the widened q; for bf16 where kPreferBf16Dot, the default is the
  // bf16-pairs products instead (their own tests below), and the widened products are what it is with them off.
  run(TensorView<const float>(qh.wview), TensorView<const float>(kh.wview), TensorView<const float>(vh.wview),
      oview(want));
  const std::vector<unsigned char> no_mask;
  const kexue::KeyMask km(mask ? *mask : no_mask);
  auto run16 = [&](std::vector<float>& out, std::optional<bool> pairs) {
    kexue::detail::attention_batched<H, H, float>(TensorView<const H>(qh.view), TensorView<const H>(kh.view),
                                                  TensorView<const H>(vh.view), mask ? &km : nullptr, oview(out), o,
                                                  pairs);
  };
  run16(got2, false);
  CHECK(same_bits(got2.data(), want.data(), outn));
  run(TensorView<const H>(qh.view), TensorView<const H>(kh.view), TensorView<const H>(vh.view), oview(got2));
  if (std::is_same<H, bf16>::value && kexue::detail::kPreferBf16Dot) run16(want, true);
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

TEST_CASE("attention_half: bf16 pairs (vdpbf16ps's products, P in bf16) within 1e-2 and twice PyTorch's bf16 error",
          "[attention][half][pairs]") {
  // The bf16-pairs products that q, k, v all bf16 take where kPreferBf16Dot, forced here on every build: q k^T as
  // pairs of exact bf16 products, the weights rounded to bf16, P V as pairs again (vdpbf16ps or its widened form).
  const Matrix<float> qf = ref().matrix<float>("bf16/q"), kf = ref().matrix<float>("bf16/k"),
                      vf = ref().matrix<float>("bf16/v");
  const Matrix<bf16> q = narrow<bf16>(qf), k = narrow<bf16>(kf), v = narrow<bf16>(vf);
  const std::vector<unsigned char> mask = mask_of("bf16/mask");
  const kexue::KeyMask km(mask);
  INFO("bf16 pairs by default in this build: " << kexue::detail::kPreferBf16Dot);
  int cases = 0;
  for (const char* norm : {"softmax", "softmax_plus", "squared_relu"}) {
    for (const char* mk : {"none", "causal", "keylen_mask"}) {
      const std::string name = std::string("bf16_") + norm + "_" + mk;
      INFO(name);
      const AttentionOptions o = case_options(name);
      const kexue::KeyMask* mp = ref().scalar(name + "/use_mask") != 0 ? &km : nullptr;
      const Matrix<double> want = ref().matrix<double>(name + "/out64");
      const double torch_err = ref().scalar(name + "/torch_err");
      Matrix<float> got(q.rows(), v.cols()), widened(q.rows(), v.cols());
      Matrix<bf16> got16(q.rows(), v.cols());
      kexue::detail::attention_2d(q, k, v, mp, got, o, true);
      kexue::detail::attention_2d(q, k, v, mp, got16, o, true);
      kexue::detail::attention_2d(q, k, v, mp, widened, o, false);
      const double e32 = rel_rms(got, want), e16 = rel_rms(widen(got16), want), ew = rel_rms(widened, want);
      INFO("pairs float out " << e32 << ", bf16 out " << e16 << ", widened " << ew << ", torch bf16 " << torch_err);
      CHECK(e32 <= 1e-2);
      CHECK(e32 <= 2 * torch_err);
      CHECK(e16 <= 1e-2);
      CHECK(e16 <= 2 * torch_err);
      CHECK(e32 > ew);  // the weights really were rounded: the pairs path is not the widened float one
      CHECK(widen(got16) == widen(narrow<bf16>(got)));
      ++cases;
    }
  }
  CHECK(cases == 9);
}

TEST_CASE("attention_half: bf16 pairs in every form: close to the float kernel, hidden keys kept out, same bits "
          "for 1 and 2 threads", "[attention][half][pairs]") {
  std::vector<unsigned char> mask(300);
  std::mt19937 g(9);
  for (auto& x : mask) x = (g() % 4) != 0;
  std::vector<std::int32_t> seg(300, 0);
  for (Index j = 40; j < 300; ++j) seg[static_cast<std::size_t>(j)] = (j % 37 == 0) ? 1 : 0;
  const float kNaN = std::numeric_limits<float>::quiet_NaN(), kInf = std::numeric_limits<float>::infinity();
  int poisoned_cases = 0;
  for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
    for (int mk = 0; mk < 7; ++mk) {
      // (B, Hq, Hk, n, m, d, dv): odd d and dv, odd key counts per sub-tile, several key tiles and sub-tiles; the
      // decode path (n = 2) keeps the widened products.
      for (const auto& shape : std::vector<std::array<Index, 7>>{{2, 4, 2, 57, 57, 23, 17},
                                                                 {1, 2, 1, 130, 131, 64, 64},
                                                                 {1, 2, 2, 101, 101, 64, 64},
                                                                 {1, 4, 1, 2, 131, 20, 12}}) {
        const Index B = shape[0], Hq = shape[1], Hk = shape[2], n = shape[3], m = shape[4], d = shape[5],
                    dv = shape[6];
        AttentionOptions o;
        o.normalization = norm;
        std::vector<unsigned char> mv;
        std::vector<HeadDirection> dirs;
        if (!mask_kind_options(mk, n, m, Hq, mask, seg, o, mv, dirs)) continue;
        INFO("norm " << int(norm) << " mask " << mk << " n " << n << " m " << m << " d " << d);
        const Tensor4 q0(B, Hq, n, d, 300 + mk), k0(B, Hk, m, d, 301 + mk, 1.5f), v0(B, Hk, m, dv, 302 + mk);
        const Tensor4h<bf16> qh(q0), kh(k0), vh(v0);
        const kexue::KeyMask km(mv);
        const kexue::KeyMask* mp = mv.empty() ? nullptr : &km;
        const Index outn = B * Hq * n * dv;
        auto run = [&](const Tensor4h<bf16>& kk, const Tensor4h<bf16>& vv, std::vector<float>& out, bool pairs) {
          out.assign(static_cast<std::size_t>(outn), -7.0f);
          kexue::detail::attention_batched<bf16, bf16, float>(
              TensorView<const bf16>(qh.view), TensorView<const bf16>(kk.view), TensorView<const bf16>(vv.view), mp,
              TensorView<float>::contiguous(out.data(), B, Hq, n, dv), o, pairs);
        };
        std::vector<float> got, widened;
        run(kh, vh, got, true);
        run(kh, vh, widened, false);
        if (n <= 2) {
          CHECK(same_bits(got.data(), widened.data(), outn));  // decoding keeps the widened products
        } else {
          double num = 0, den = 0;
          for (Index i = 0; i < outn; ++i) {
            const double e = double(got[i]) - double(widened[i]);
            num += e * e;
            den += double(widened[i]) * double(widened[i]);
          }
          CHECK(std::sqrt(num / den) < 1e-2);
          CHECK(std::sqrt(num / den) > 0);
        }
        // Keys no row may see (key mask, past key_length) get inf / NaN in k and v: the same bits.
        if (mk == 2 || mk == 3) {
          Tensor4h<bf16> kp(kh), vp(vh);
          bool any = false;
          for (Index b = 0; b < B; ++b)
            for (Index h = 0; h < Hk; ++h)
              for (Index j = 0; j < m; ++j) {
                if (j < *o.key_length && (mv.empty() || mv[static_cast<std::size_t>(j)])) continue;
                any = true;
                bf16* kr = kp.data.data() + (kh.view.row(b, h, j) - kh.view.data);
                bf16* vr = vp.data.data() + (vh.view.row(b, h, j) - vh.view.data);
                for (Index c = 0; c < d; ++c) kr[c] = bf16((j + c) % 2 ? kNaN : kInf);
                for (Index c = 0; c < dv; ++c) vr[c] = bf16((j + c) % 3 ? -kInf : kNaN);
              }
          REQUIRE(any);
          std::vector<float> again;
          run(kp, vp, again, true);
          CHECK(same_bits(again.data(), got.data(), outn));
          ++poisoned_cases;
        }
#if defined(_OPENMP)
        const int saved = omp_get_max_threads();
        omp_set_num_threads(saved == 1 ? 2 : 1);
        std::vector<float> other;
        run(kh, vh, other, true);
        omp_set_num_threads(saved);
        CHECK(same_bits(other.data(), got.data(), outn));
#endif
      }
    }
  }
  CHECK(poisoned_cases == 3 * 2 * 4);
  // A prefix-LM (UniLM) prompt of P = W + 1 keys, W the rows of a sub-tile: the first sub-tile's rows all see keys
  // [0, P) (no window edge inside their key tile, so the plain pair product runs), an odd count, so its last key
  // pair also holds key P, which those rows cannot see (weight 0) but later rows do. inf / NaN in the V of keys >= P
  // must not reach the prompt's rows.
  const Index W = kexue::detail::kTileRows<float>, P = W + 1, n = 2 * W + 5, d = 32, dv = 24;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n), 0);
  for (Index j = P; j < n; ++j) ids[static_cast<std::size_t>(j)] = 1;
  const Tensor4 q0(1, 2, n, d, 501), k0(1, 1, n, d, 502), v0(1, 1, n, dv, 503);
  const Tensor4h<bf16> qh(q0), kh(k0);
  Tensor4h<bf16> vh(v0), vp(v0);
  for (Index j = P; j < n; ++j) {
    bf16* vr = vp.data.data() + (vh.view.row(0, 0, j) - vh.view.data);
    for (Index c = 0; c < dv; ++c) vr[c] = bf16(c % 2 ? std::numeric_limits<float>::quiet_NaN() : -kInf);
  }
  AttentionOptions o;
  o.segments = kexue::SegmentIds(ids.data(), n);
  std::vector<float> clean(static_cast<std::size_t>(2 * n * dv)), dirty(clean.size());
  for (int poisoned = 0; poisoned < 2; ++poisoned)
    kexue::detail::attention_batched<bf16, bf16, float>(
        TensorView<const bf16>(qh.view), TensorView<const bf16>(kh.view),
        TensorView<const bf16>(poisoned ? vp.view : vh.view), nullptr,
        TensorView<float>::contiguous((poisoned ? dirty : clean).data(), 1, 2, n, dv), o, true);
  for (Index h = 0; h < 2; ++h) {
    INFO("head " << h);
    CHECK(same_bits(dirty.data() + h * n * dv, clean.data() + h * n * dv, P * dv));  // the prompt's rows
    CHECK(std::isnan(dirty[static_cast<std::size_t>((h * n + P) * dv + 1)]));        // row P sees key P
  }
  // Every row of an n > 2 call takes the pairs products, also a work item's tail of one or two rows (items are sized
  // from the L2): a row's bits depend only on its q row and the keys, whichever item it falls in.
  const Index rows = kexue::detail::attention_item_rows<float>(d, dv), m2 = 77;
  const Tensor4 qa(1, 1, rows + 5, d, 601), ka(1, 1, m2, d, 602), va(1, 1, m2, dv, 603);
  const Tensor4h<bf16> qah(qa), kah(ka), vah(va);
  auto tail_run = [&](Index nrows, bool pairs) {
    std::vector<float> out(static_cast<std::size_t>(nrows * dv));
    kexue::detail::attention_batched<bf16, bf16, float>(
        TensorView<const bf16>(qah.view.data, {1, 1, nrows, d}, qah.view.strides), TensorView<const bf16>(kah.view),
        TensorView<const bf16>(vah.view), nullptr, TensorView<float>::contiguous(out.data(), 1, 1, nrows, dv),
        AttentionOptions(), pairs);
    return out;
  };
  const std::vector<float> tail1 = tail_run(rows + 1, true), tail5 = tail_run(rows + 5, true),
                           widened1 = tail_run(rows + 1, false);
  CHECK(same_bits(tail1.data(), tail5.data(), (rows + 1) * dv));
  CHECK(!same_bits(tail1.data() + rows * dv, widened1.data() + rows * dv, dv));
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
        if (!mask_kind_options(mk, n, m, shape[1], mask, seg, o, mv, dirs)) continue;
        if (!mv.empty()) mp = &mv;
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
    if (kexue::detail::kPreferBf16Dot)  // q, k, v bf16 take the bf16-pairs products here by default
      kexue::detail::attention_2d(qh.leftCols(d), kh.leftCols(d), vh.leftCols(dv), nullptr, want, o, true);
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

namespace {

template <class H>
std::uint16_t bits_of(H h) {
  std::uint16_t u;
  std::memcpy(&u, static_cast<const void*>(&h), sizeof u);
  return u;
}
template <class H>
H of_bits(std::uint16_t u) {
  H h;
  std::memcpy(static_cast<void*>(&h), &u, sizeof u);
  return h;
}

/// The value of the positive 16-bit pattern b as a double; for inf, the next step past the largest finite value
/// (2^16 for fp16, 2^128 for bf16), which is where rounding to nearest overflows.
template <class H>
double value_of(std::uint16_t b) {
  const std::uint16_t inf = std::is_same<H, half>::value ? 0x7C00 : 0x7F80;
  if (b == inf) return 2 * value_of<H>(inf - 1) - value_of<H>(inf - 2);
  return double(kexue::detail::to_float<H>(of_bits<H>(b)));
}

/// x rounded to H to nearest even in one step, written apart from the library's round-to-odd: the 16-bit values
/// lo <= |x| < hi around x are found by walking the bit patterns, and |x| is compared with their midpoint, which is
/// exact in double (two values of at most 11 significant bits); a tie goes to the even pattern.
template <class H>
H round_once(double x) {
  const std::uint16_t inf = std::is_same<H, half>::value ? 0x7C00 : 0x7F80;
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double ax = std::abs(x);
  std::uint16_t lo = std::min(bits_of(kexue::detail::from_float<H>(float(ax))), inf);  // a step from the answer
  while (lo > 0 && value_of<H>(lo) > ax) --lo;
  while (lo < inf && value_of<H>(std::uint16_t(lo + 1)) <= ax) ++lo;
  if (lo == inf) return of_bits<H>(std::uint16_t(sign | inf));
  const std::uint16_t hi = std::uint16_t(lo + 1);
  const double mid = (value_of<H>(lo) + value_of<H>(hi)) / 2;
  const std::uint16_t b = ax < mid ? lo : ax > mid ? hi : (lo % 2 == 0 ? lo : hi);
  return of_bits<H>(std::uint16_t(sign | b));
}

template <class H>
Matrix<double> to_double(const Matrix<H>& x) {
  Matrix<double> y(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) y.data()[i] = double(kexue::detail::to_float<H>(x.data()[i]));
  return y;
}

/// The options of the attention_weights cases: each normalisation, causal or not, key_length 33 of m = 37 keys.
std::vector<AttentionOptions> weights_options() {
  std::vector<AttentionOptions> all;
  for (Normalization norm : {Normalization::Softmax, Normalization::SoftmaxPlus, Normalization::SquaredRelu}) {
    for (bool causal : {false, true}) {
      AttentionOptions o;
      o.normalization = norm;
      o.causal = causal;
      o.key_length = 33;
      all.push_back(o);
    }
  }
  return all;
}

std::vector<unsigned char> weights_mask(Index m) {
  std::vector<unsigned char> mask(static_cast<std::size_t>(m));
  std::mt19937 g(17);
  for (auto& x : mask) x = (g() % 4) != 0;
  return mask;
}

template <class H>
void check_weights_float_out() {
  const Index n = 13, m = 37, d = 24;  // n < m: causal rows are bottom-right aligned; 1/sqrt(24) is not a float
  const Matrix<float> q = randn(n, d, 41);
  const Matrix<H> qh = narrow<H>(q), kh = narrow<H>(randn(m, d, 42, 1.5f));
  const Matrix<float> qw = widen(qh), kw = widen(kh);
  const std::vector<unsigned char> mask = weights_mask(m);
  for (const AttentionOptions& o : weights_options()) {
    INFO("norm " << int(o.normalization) << " causal " << o.causal);
    for (bool use_mask : {false, true}) {
      INFO("mask " << use_mask);
      Matrix<float> want(n, m), got(n, m);
      auto run = [&](const auto& qq, const auto& kk, Matrix<float>& w) {
        if (use_mask)
          kexue::attention_weights(qq, kk, mask, w, o);
        else
          kexue::attention_weights(qq, kk, w, o);
      };
      // KV cache: q float, k 16-bit.
      run(q, kw, want);
      got.setConstant(-1.0f);
      run(q, kh, got);
      CHECK(same_bits(got.data(), want.data(), got.size()));
      // q and k 16-bit.
      run(qw, kw, want);
      got.setConstant(-1.0f);
      run(qh, kh, got);
      CHECK(same_bits(got.data(), want.data(), got.size()));
      CHECK((want.array() == 0.0f).any());  // the masks hide something
    }
  }
}

template <class H>
void check_weights_16bit_out() {
  const Index n = 13, m = 37, d = 24, pad = 3;
  const Matrix<H> qh = narrow<H>(randn(n, d, 51)), kh = narrow<H>(randn(m, d, 52, 1.5f));
  const Matrix<double> q64 = to_double(qh), k64 = to_double(kh);
  const std::vector<unsigned char> mask = weights_mask(m);
  const H fill = kexue::detail::from_float<H>(-3.0f);
  for (const AttentionOptions& o : weights_options()) {
    INFO("norm " << int(o.normalization) << " causal " << o.causal);
    // The float64 weights: the 16-bit forms scale by 1/sqrt(d) rounded to float, as the float call does.
    AttentionOptions o64 = o;
    o64.scale = double(float(1.0 / std::sqrt(double(d))));
    Matrix<double> w64(n, m);
    kexue::attention_weights(q64, k64, mask, w64, o64);
    Matrix<H> got(n, m + pad);  // a strided output: the padding columns must stay as they are
    got.setConstant(fill);
    kexue::attention_weights(qh, kh, mask, got.leftCols(m), o);
    bool rounded = true, pad_kept = true;
    int double_rounding_differs = 0;
    for (Index i = 0; i < n; ++i) {
      for (Index j = 0; j < m; ++j) {
        const H want = round_once<H>(w64(i, j));
        rounded &= bits_of(got(i, j)) == bits_of(want);
        double_rounding_differs += bits_of(kexue::detail::from_float<H>(float(w64(i, j)))) != bits_of(want);
      }
      for (Index j = m; j < m + pad; ++j) pad_kept &= bits_of(got(i, j)) == bits_of(fill);
    }
    INFO(double_rounding_differs << " weights where double -> float -> 16-bit rounding differs");
    CHECK(rounded);
    CHECK(pad_kept);
  }
}

/// A 1 x 1 squared-ReLU weight (s q k)^2 / L with q = k = 1 and the float scale s, whose double value lies just
/// above a 16-bit midpoint and within half a float ulp of it, so that rounding to float lands on the midpoint and
/// then to even: the wrong side. Found by trying the floats next to sqrt(L M) for several midpoints M and L.
template <class H>
void check_weights_double_rounding_case() {
  const int mant = std::is_same<H, half>::value ? 10 : 7;  // explicit mantissa bits of H
  bool found = false;
  for (int L = 3; L < 40 && !found; L += 2) {
    for (int k = 0; k < 64 && !found; ++k) {
      const double mid = 1.0 + std::ldexp(2.0 * k + 1.0, -mant - 1);  // a midpoint of H in [1, 2)
      const float s0 = float(std::sqrt(L * mid));
      for (float s = std::nextafter(s0, 0.0f); s <= std::nextafter(s0, 4.0f) && !found; s = std::nextafter(s, 4.0f)) {
        const double w = double(s) * double(s) / L;  // what the kernel computes (a = 1 * 1 * s)
        const H once = round_once<H>(w);
        if (bits_of(once) == bits_of(kexue::detail::from_float<H>(float(w)))) continue;
        found = true;
        INFO("L " << L << " s " << s << " w " << w);
        AttentionOptions o;
        o.normalization = Normalization::SquaredRelu;
        o.relu2_length = L;
        o.scale = double(s);
        Matrix<H> q(1, 1), k(1, 1), got(1, 1);
        q(0, 0) = kexue::detail::from_float<H>(1.0f);
        k(0, 0) = q(0, 0);
        kexue::attention_weights(q, k, got, o);
        CHECK(bits_of(got(0, 0)) == bits_of(once));
        Matrix<float> got32(1, 1);
        kexue::attention_weights(q, k, got32, o);
        CHECK(got32(0, 0) == float(w));  // float weights: the plain rounding of the same double
      }
    }
  }
  CHECK(found);
}

}  // namespace

TEST_CASE("attention_weights: 16-bit q / k with float weights are the float call on the widened values",
          "[attention][half]") {
  check_weights_float_out<half>();
  check_weights_float_out<bf16>();
}

TEST_CASE("attention_weights: 16-bit weights are the float64 weights rounded once", "[attention][half]") {
  // The rounding itself at constructed ties: a double just above (or below) a 16-bit midpoint whose float rounding
  // is the midpoint, where float first then 16-bit (ties to even) gives the other neighbour.
  const double above_bf16 = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);   // 1 + half a bf16 ulp + a little
  const double above_half = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);  // 1 + half an fp16 ulp + a little
  const double below_half = 1.0 + 3 * std::ldexp(1.0, -11) - std::ldexp(1.0, -40);  // the tie with the even above
  CHECK(float(above_bf16) == float(1.0 + std::ldexp(1.0, -8)));                  // float lands on the midpoint
  CHECK(float(round_once<bf16>(above_bf16)) == float(1.0 + std::ldexp(1.0, -7)));
  CHECK(float(kexue::detail::round_to<bf16>(above_bf16)) == float(1.0 + std::ldexp(1.0, -7)));
  CHECK(float(kexue::detail::from_float<bf16>(float(above_bf16))) == 1.0f);     // the double rounding
  CHECK(float(round_once<half>(above_half)) == float(1.0 + std::ldexp(1.0, -10)));
  CHECK(float(kexue::detail::round_to<half>(above_half)) == float(1.0 + std::ldexp(1.0, -10)));
  CHECK(float(kexue::detail::from_float<half>(float(above_half))) == 1.0f);
  CHECK(float(round_once<half>(below_half)) == float(1.0 + std::ldexp(1.0, -10)));
  CHECK(float(kexue::detail::round_to<half>(below_half)) == float(1.0 + std::ldexp(1.0, -10)));
  CHECK(float(kexue::detail::from_float<half>(float(below_half))) == float(1.0 + std::ldexp(1.0, -9)));
  CHECK(float(round_once<half>(-above_half)) == -float(1.0 + std::ldexp(1.0, -10)));
  CHECK(float(kexue::detail::round_to<half>(-above_half)) == -float(1.0 + std::ldexp(1.0, -10)));
  // Exact ties, overflow and zero, for the test's own rounding.
  CHECK(float(round_once<half>(1.0 + std::ldexp(1.0, -11))) == 1.0f);
  CHECK(float(round_once<half>(1.0 + 3 * std::ldexp(1.0, -11))) == float(1.0 + std::ldexp(1.0, -9)));
  CHECK(std::isinf(float(round_once<half>(65520.0))));
  CHECK(float(round_once<half>(65519.99)) == 65504.0f);
  CHECK(bits_of(round_once<half>(-0.0)) == 0x8000);
  CHECK(float(round_once<half>(std::ldexp(1.0, -25) * 1.5)) == float(std::ldexp(1.0, -24)));  // subnormal
  check_weights_double_rounding_case<half>();
  check_weights_double_rounding_case<bf16>();
  check_weights_16bit_out<half>();
  check_weights_16bit_out<bf16>();
}

TEST_CASE("attention_weights: bad 16-bit input throws before the weights are written",
          "[attention][half][bad_input]") {
  const Matrix<float> q = randn(4, 8, 1);
  const Matrix<half> k = narrow<half>(randn(10, 8, 2)), kbad = narrow<half>(randn(10, 7, 3));
  Matrix<float> w(4, 10), wbad(4, 9);
  w.setConstant(3.0f);
  wbad.setConstant(3.0f);
  throws_with([&] { kexue::attention_weights(q, k, wbad); }, "attention_weights: weights has shape [4 x 9]");
  throws_with([&] { kexue::attention_weights(q, k, wbad); }, "[4 x 10]");
  throws_with([&] { kexue::attention_weights(q, kbad, w); }, "k has 7 columns but q has 8");
  std::vector<unsigned char> mask(9, 1);
  throws_with([&] { kexue::attention_weights(q, k, mask, w); }, "key_mask has 9 entries");
  CHECK((w.array() == 3.0f).all());
  CHECK((wbad.array() == 3.0f).all());
  // q, k and weights bf16.
  const Matrix<bf16> qb = narrow<bf16>(q), kb = narrow<bf16>(randn(10, 8, 4));
  Matrix<bf16> wb(4, 10), wbbad(5, 10);
  wb.setConstant(bf16(3.0f));
  wbbad.setConstant(bf16(3.0f));
  throws_with([&] { kexue::attention_weights(qb, kb, wbbad); }, "weights has shape [5 x 10]");
  AttentionOptions o;
  o.key_length = 11;
  throws_with([&] { kexue::attention_weights(qb, kb, wb, o); }, "options.key_length is 11");
  CHECK(widen(wb) == Matrix<float>::Constant(4, 10, 3.0f));
  CHECK(widen(wbbad) == Matrix<float>::Constant(5, 10, 3.0f));
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
