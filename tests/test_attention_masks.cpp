// SPDX-License-Identifier: MIT
// The masks of post 9529 in kexue::attention (SPEC 7.3): UniLM / prefix LM from segment ids, reverse causal and the
// mixed forward/backward heads (head_directions), against PyTorch data with explicit n x n masks
// (tests/reference/cases_masks.py) and against the scalar reference over sizes that cross the query sub-tiles, the
// work items and the 64-key tiles (so the per-row window tile skipping is exercised at every edge), with
// key_length, key masks and every normalisation; batched and GQA forms against the 2-D form; keys a row cannot see
// never reach it; 1 and 2 threads bitwise equal; the diagnostics (attention_weights, attention_sparsity) and the
// rank argument of the post (attention_singular_values, attention_rank); bad input.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kexue/attention.hpp"
#include "reference/attention_reference.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace kexue_test;
using kexue::AttentionOptions;
using kexue::HeadDirection;
using kexue::Matrix;
using kexue::Vector;
using kexue::Normalization;
namespace kd = kexue::detail;

namespace {

const RefData& ref() {
  static const RefData r("masks");
  return r;
}

template <class T>
bool same_bits(const T* a, const T* b, Index count) {
  return std::memcmp(a, b, sizeof(T) * static_cast<std::size_t>(count)) == 0;
}

std::vector<std::string> mask_case_names() {
  std::vector<std::string> names;
  for (const char* norm : {"softmax", "softmax_plus", "squared_relu"}) {
    for (const char* seg : {"prefix", "multi"}) {
      names.push_back(std::string("unilm_") + seg + "_" + norm);
      names.push_back(std::string("unilm_") + seg + "_keylen_mask_" + norm);
    }
    for (const char* tag : {"unilm_zeros_", "reverse_", "reverse_keylen_mask_", "reverse_unilm_", "mixed_",
                            "mixed_keylen_mask_"})
      names.push_back(std::string(tag) + norm);
  }
  return names;
}

// One PyTorch case: every head through the 2-D call with its direction, and the heads together through the
// batched call (head_directions when mixed), int32 and int64 segment ids.
template <class T>
void check_torch_case(const std::string& name) {
  const RefData& r = ref();
  const auto dirs = r.values(name + "/dirs");
  const Index H = Index(dirs.size());
  const std::string g = "h" + std::to_string(H);
  const Matrix<T> q = r.matrix<T>(g + "/q"), k = r.matrix<T>(g + "/k"), v = r.matrix<T>(g + "/v");
  const Matrix<T> want = r.matrix<T>(name + "/out");  // [H * n, dv]
  const Index n = q.rows() / H, d = q.cols(), dv = v.cols();
  AttentionOptions o;
  o.normalization = static_cast<Normalization>(int(r.scalar(name + "/norm")));
  if (r.scalar(name + "/key_length") >= 0) o.key_length = Index(r.scalar(name + "/key_length"));
  std::vector<std::int32_t> seg32;
  std::vector<std::int64_t> seg64;
  if (r.has(name + "/segments"))
    for (double x : r.values(name + "/segments")) {
      seg32.push_back(std::int32_t(x));
      seg64.push_back(std::int64_t(x));
    }
  std::vector<unsigned char> mask;
  if (r.has(name + "/mask"))
    for (double x : r.values(name + "/mask")) mask.push_back(x != 0);
  INFO(name << (std::is_same<T, float>::value ? " float" : " double"));
  for (int width : {32, 64}) {
    if (!seg32.empty()) {
      if (width == 32)
        o.segments = kexue::SegmentIds(seg32);
      else
        o.segments = kexue::SegmentIds(seg64.data(), Index(seg64.size()));
    } else if (width == 64) {
      continue;
    }
    // 2-D, head by head.
    Matrix<T> out(H * n, dv);
    for (Index h = 0; h < H; ++h) {
      AttentionOptions oh = o;
      oh.causal = dirs[std::size_t(h)] == 1;
      oh.reverse_causal = dirs[std::size_t(h)] == 2;
      Matrix<T> oo = Matrix<T>::Constant(n, dv, T(7));
      if (mask.empty())
        kexue::attention(q.middleRows(h * n, n), k.middleRows(h * n, n), v.middleRows(h * n, n), oo, oh);
      else
        kexue::attention(q.middleRows(h * n, n), k.middleRows(h * n, n), v.middleRows(h * n, n),
                         kexue::KeyMask(mask), oo, oh);
      out.middleRows(h * n, n) = oo;
      // attention_weights with the same options, times v.
      Matrix<T> a(n, n);
      if (mask.empty())
        kexue::attention_weights(q.middleRows(h * n, n), k.middleRows(h * n, n), a, oh);
      else
        kexue::attention_weights(q.middleRows(h * n, n), k.middleRows(h * n, n), kexue::KeyMask(mask), a, oh);
      const Matrix<T> via = a * v.middleRows(h * n, n);
      CHECK(nmse(via, want.middleRows(h * n, n)) < nmse_bound<T>());
    }
    CHECK(nmse(out, want) < nmse_bound<T>());
    for (Index i = 0; i < H * n; ++i)
      if (want.row(i).cwiseAbs().maxCoeff() == 0) CHECK(out.row(i).cwiseAbs().maxCoeff() == T(0));
    // Batched [1, H, n, d]: the mixed cases through head_directions, the others with the one direction.
    std::vector<HeadDirection> hd;
    for (double x : dirs) hd.push_back(static_cast<HeadDirection>(int(x)));
    AttentionOptions ob = o;
    if (H > 1) {
      ob.head_directions = kexue::HeadDirections(hd);
    } else {
      ob.causal = dirs[0] == 1;
      ob.reverse_causal = dirs[0] == 2;
    }
    Matrix<T> outb = Matrix<T>::Constant(H * n, dv, T(7));
    const auto tq = kexue::TensorView<const T>::contiguous(q.data(), 1, H, n, d);
    const auto tk = kexue::TensorView<const T>::contiguous(k.data(), 1, H, n, d);
    const auto tv = kexue::TensorView<const T>::contiguous(v.data(), 1, H, n, dv);
    const auto to = kexue::TensorView<T>::contiguous(outb.data(), 1, H, n, dv);
    if (mask.empty())
      kexue::attention(tq, tk, tv, to, ob);
    else
      kexue::attention(tq, tk, tv, kexue::KeyMask(mask), to, ob);
    CHECK(same_bits(outb.data(), out.data(), outb.size()));  // every head gets the bits of its 2-D call
  }
}

// Segment patterns for the sweeps: prefix LM, several segments, zeros after ones, all zeros, every token its own
// segment (ids all 1: c strictly increasing, which is exactly causal), a long prefix.
std::vector<std::int64_t> segment_pattern(int kind, Index n) {
  std::vector<std::int64_t> s(static_cast<std::size_t>(n), 0);
  for (Index j = 0; j < n; ++j) {
    switch (kind) {
      case 0: s[j] = j >= n / 3 ? 1 : 0; break;
      case 1: s[j] = (j * 7) % 11 == 3 ? 1 + j % 3 : 0; break;
      case 2: s[j] = (j >= n / 4 && j < n / 2) ? 1 : 0; break;
      case 3: s[j] = 0; break;
      case 4: s[j] = 1; break;
      default: s[j] = j >= n - 5 ? 1 : 0; break;
    }
  }
  return s;
}

// The tiled kernel (and the one-row path of 1-2 row items) against the scalar reference: sizes around the query
// sub-tile, several sub-tiles per item, several items with a 1-row tail, across 64-key tiles.
template <class T>
void sweep_masks() {
  const Index W = kd::kTileRows<T>, item64 = kd::attention_item_rows<T>(64, 64);
  const Index sizes[] = {1, 2, 3, W - 1, W + 1, 65, item64 + 1, item64 + 2, 2 * item64 + 30, 300};
  const Index dims[][2] = {{3, 5}, {16, 16}, {64, 64}};
  std::uint32_t seed = 77;
  int checked = 0;
  for (Index n : sizes) {
    for (const auto& dd : dims) {
      const Index d = dd[0], dv = dd[1];
      for (int variant = 0; variant < 6; ++variant) {
        ++seed;
        AttentionOptions o;
        RefAttentionArgs ra;
        o.normalization = ra.norm = static_cast<Normalization>((variant + seed) % 3);
        // 0, 1: UniLM; 2, 3: reverse causal; 4: UniLM + reverse; 5: UniLM + causal.
        const bool unilm = variant <= 1 || variant >= 4;
        o.reverse_causal = ra.reverse_causal = variant == 2 || variant == 3 || variant == 4;
        o.causal = ra.causal = variant == 5;
        const auto seg = segment_pattern(int(seed % 6), n);
        std::vector<std::int32_t> seg32(seg.begin(), seg.end());
        if (unilm) {
          ra.segments = seg.data();
          if (seed % 2)
            o.segments = kexue::SegmentIds(seg32);
          else
            o.segments = kexue::SegmentIds(seg);
        }
        if (variant % 2 == 1 && n > 3) o.key_length = ra.key_length = n - 1 - Index(seed % 40) % (n / 2);
        std::vector<unsigned char> mask(static_cast<std::size_t>(n));
        for (Index j = 0; j < n; ++j) mask[j] = ((j * 5 + seed) % 7) != 0;
        const bool use_mask = seed % 3 == 0;
        if (use_mask) ra.mask = mask.data();
        const auto q = random_values<T>(n * d, seed * 3 + 1, T(-2), T(2)), k = random_values<T>(n * d, seed * 3 + 2, T(-2), T(2)),
                   v = random_values<T>(n * dv, seed * 3 + 3);
        Eigen::Map<const Matrix<T>> qm(q.data(), n, d), km(k.data(), n, d), vm(v.data(), n, dv);
        Matrix<T> out = Matrix<T>::Constant(n, dv, T(7));
        if (use_mask)
          kexue::attention(qm, km, vm, kexue::KeyMask(mask), out, o);
        else
          kexue::attention(qm, km, vm, out, o);
        const std::vector<double> qd(q.begin(), q.end()), kd_(k.begin(), k.end()), vd(v.begin(), v.end());
        const auto want = reference_attention(qd, kd_, vd, n, n, d, dv, ra);
        Matrix<double> got = out.template cast<double>();
        const Eigen::Map<const Matrix<double>> wm(want.data(), n, dv);
        INFO("n " << n << " d " << d << " variant " << variant << " seed " << seed << " mask " << use_mask);
        CHECK(nmse(got, wm) < nmse_bound<T>());
        bool zero_rows_exact = true;
        for (Index i = 0; i < n; ++i)
          if (wm.row(i).cwiseAbs().maxCoeff() == 0) zero_rows_exact &= out.row(i).cwiseAbs().maxCoeff() == T(0);
        CHECK(zero_rows_exact);
        ++checked;
      }
    }
  }
  CHECK(checked == 10 * 3 * 6);
}

}  // namespace

TEST_CASE("masks of post 9529 match PyTorch's explicit masks (UniLM, reverse causal, mixed heads)",
          "[attention][masks]") {
  REQUIRE(Index(ref().scalar("count")) == Index(mask_case_names().size()));
  for (const auto& name : mask_case_names()) {
    check_torch_case<float>(name);
    check_torch_case<double>(name);
  }
}

TEST_CASE("UniLM and reverse causal: tiled kernel against the scalar reference across tile edges",
          "[attention][masks]") {
  sweep_masks<float>();
  sweep_masks<double>();
}

TEST_CASE("UniLM with ids all 1 is causal; all 0 is bidirectional; reverse causal is causal on reversed rows",
          "[attention][masks]") {
  const Index n = 150, d = 16;
  const auto qv = random_values<double>(n * d, 11), kv = random_values<double>(n * d, 12),
             vv = random_values<double>(n * d, 13);
  Eigen::Map<const Matrix<double>> q(qv.data(), n, d), k(kv.data(), n, d), v(vv.data(), n, d);
  for (int norm = 0; norm < 3; ++norm) {
    AttentionOptions base;
    base.normalization = static_cast<Normalization>(norm);
    Matrix<double> a(n, d), b(n, d);
    // ids all 1: c = 1, 2, ..., n, so c[j] <= c[i] iff j <= i. Both take the same tiles with the same edges.
    std::vector<std::int32_t> ones(static_cast<std::size_t>(n), 1), zeros(static_cast<std::size_t>(n), 0);
    AttentionOptions o = base;
    o.segments = kexue::SegmentIds(ones);
    kexue::attention(q, k, v, a, o);
    o = base;
    o.causal = true;
    kexue::attention(q, k, v, b, o);
    CHECK(same_bits(a.data(), b.data(), a.size()));
    o = base;
    o.segments = kexue::SegmentIds(zeros);
    kexue::attention(q, k, v, a, o);
    kexue::attention(q, k, v, b, base);
    CHECK(same_bits(a.data(), b.data(), a.size()));
    // Reverse causal = causal on the reversed sequence (up to the order of the sums: compare values).
    const Matrix<double> qr = q.colwise().reverse(), kr = k.colwise().reverse(), vr = v.colwise().reverse();
    o = base;
    o.reverse_causal = true;
    kexue::attention(q, k, v, a, o);
    o = base;
    o.causal = true;
    kexue::attention(qr, kr, vr, b, o);
    const Matrix<double> br = b.colwise().reverse();
    CHECK(nmse(a, br) < 1e-24);
  }
}

TEST_CASE("rows with no visible key are zero: reverse causal past key_length, UniLM with a masked prefix",
          "[attention][masks]") {
  const Index n = 100, d = 8;
  const auto qv = random_values<float>(n * d, 21), kv = random_values<float>(n * d, 22),
             vv = random_values<float>(n * d, 23);
  Eigen::Map<const Matrix<float>> q(qv.data(), n, d), k(kv.data(), n, d), v(vv.data(), n, d);
  for (int norm = 0; norm < 3; ++norm) {
    AttentionOptions o;
    o.normalization = static_cast<Normalization>(norm);
    o.reverse_causal = true;
    o.key_length = 60;
    Matrix<float> out = Matrix<float>::Constant(n, d, 7.f);
    kexue::attention(q, k, v, out, o);
    CHECK(out.bottomRows(40).cwiseAbs().maxCoeff() == 0.f);
    CHECK(out.topRows(60).allFinite());
    if (norm != 2) CHECK(out.row(59).cwiseAbs().maxCoeff() > 0.f);  // (a relu^2 weight may be 0)
    // UniLM: the source (first 30) is masked out by the key mask, so the source rows see nothing.
    AttentionOptions u;
    u.normalization = o.normalization;
    std::vector<std::int32_t> seg(static_cast<std::size_t>(n), 0);
    for (Index j = 30; j < n; ++j) seg[j] = 1;
    u.segments = kexue::SegmentIds(seg);
    std::vector<unsigned char> mask(static_cast<std::size_t>(n), 1);
    for (Index j = 0; j < 30; ++j) mask[j] = 0;
    out.setConstant(7.f);
    kexue::attention(q, k, v, kexue::KeyMask(mask), out, u);
    CHECK(out.topRows(30).cwiseAbs().maxCoeff() == 0.f);
    CHECK(out.bottomRows(70).allFinite());
  }
}

TEST_CASE("SoftmaxPlus and SquaredRelu count l over the keys a row sees under UniLM / reverse causal",
          "[attention][masks]") {
  // v = 1 everywhere and q.k = scale^-1 (logit 1): a SquaredRelu row is sum_j 1 / l = 1 exactly when l is the
  // row's own visible count; with relu2_length = L fixed it is l / L.
  const Index n = 90, d = 4;
  Matrix<double> q = Matrix<double>::Constant(n, d, 1.0), k = q, v = Matrix<double>::Constant(n, 1, 1.0);
  std::vector<std::int32_t> seg(static_cast<std::size_t>(n), 0);
  for (Index j = 40; j < n; ++j) seg[j] = 1;
  AttentionOptions o;
  o.normalization = Normalization::SquaredRelu;
  o.scale = 0.25;  // logit = 0.25 * 4 = 1
  o.segments = kexue::SegmentIds(seg);
  Matrix<double> out(n, 1);
  kexue::attention(q, k, v, out, o);
  for (Index i = 0; i < n; ++i) CHECK(out(i, 0) == Approx(1.0).epsilon(1e-14));
  o.relu2_length = 200;
  kexue::attention(q, k, v, out, o);
  for (Index i = 0; i < n; ++i) {
    const double l = i < 40 ? 40.0 : double(i + 1);
    CHECK(out(i, 0) == Approx(l / 200).epsilon(1e-14));
  }
  o.relu2_length.reset();
  o.segments.reset();
  o.reverse_causal = true;
  o.relu2_length = 100;
  kexue::attention(q, k, v, out, o);
  for (Index i = 0; i < n; ++i) CHECK(out(i, 0) == Approx(double(n - i) / 100).epsilon(1e-14));
  // SoftmaxPlus: the same l enters the log factor; compare with the reference, whose l is the row's count.
  o = AttentionOptions();
  o.normalization = Normalization::SoftmaxPlus;
  o.reverse_causal = true;
  o.min_length = 2;
  o.train_length = 64;
  const auto qv = random_values<double>(n * d, 31, -3.0, 3.0), kv = random_values<double>(n * d, 32, -3.0, 3.0),
             vv = random_values<double>(n * 3, 33);
  Eigen::Map<const Matrix<double>> qm(qv.data(), n, d), km(kv.data(), n, d), vm(vv.data(), n, 3);
  Matrix<double> o3(n, 3);
  kexue::attention(qm, km, vm, o3, o);
  RefAttentionArgs ra;
  ra.norm = o.normalization;
  ra.reverse_causal = true;
  ra.min_length = 2;
  ra.train_length = 64;
  const auto want = reference_attention(qv, kv, vv, n, n, d, 3, ra);
  CHECK(nmse(o3, Eigen::Map<const Matrix<double>>(want.data(), n, 3)) < 1e-24);
}

TEST_CASE("batched: per-batch segment ids, GQA, mixed head directions equal the 2-D form", "[attention][masks]") {
  const Index B = 2, H = 4, Hk = 2, n = 130, d = 16, dv = 8, G = H / Hk;
  const auto q = random_values<float>(B * H * n * d, 41, -2.f, 2.f), k = random_values<float>(B * Hk * n * d, 42, -2.f, 2.f),
             v = random_values<float>(B * Hk * n * dv, 43);
  std::vector<std::int64_t> seg(static_cast<std::size_t>(B * n), 0);
  for (Index j = 50; j < n; ++j) seg[j] = 1;             // batch 0: source of 50
  for (Index j = 100; j < n; ++j) seg[n + j] = 1;        // batch 1: source of 100
  const HeadDirection dirs[] = {HeadDirection::Causal, HeadDirection::ReverseCausal, HeadDirection::Bidirectional,
                                HeadDirection::ReverseCausal};
  const auto tq = kexue::TensorView<const float>::contiguous(q.data(), B, H, n, d);
  const auto tk = kexue::TensorView<const float>::contiguous(k.data(), B, Hk, n, d);
  const auto tv = kexue::TensorView<const float>::contiguous(v.data(), B, Hk, n, dv);
  for (int norm = 0; norm < 3; ++norm) {
    for (int form = 0; form < 3; ++form) {
      // 0: per-batch segments; 1: mixed heads; 2: both, with key_length.
      AttentionOptions o;
      o.normalization = static_cast<Normalization>(norm);
      if (form != 1) o.segments = kexue::SegmentIds(seg);
      if (form != 0) o.head_directions = kexue::HeadDirections(dirs, H);
      if (form == 2) o.key_length = 120;
      std::vector<float> out(static_cast<std::size_t>(B * H * n * dv), 7.f);
      kexue::attention(tq, tk, tv, kexue::TensorView<float>::contiguous(out.data(), B, H, n, dv), o);
      bool same = true;
      for (Index b = 0; b < B; ++b)
        for (Index h = 0; h < H; ++h) {
          AttentionOptions oh;
          oh.normalization = o.normalization;
          oh.key_length = o.key_length;
          if (form != 1) oh.segments = kexue::SegmentIds(seg.data() + b * n, n);
          if (form != 0) {
            oh.causal = dirs[h] == HeadDirection::Causal;
            oh.reverse_causal = dirs[h] == HeadDirection::ReverseCausal;
          }
          Eigen::Map<const Matrix<float>> qh(q.data() + (b * H + h) * n * d, n, d);
          Eigen::Map<const Matrix<float>> kh(k.data() + (b * Hk + h / G) * n * d, n, d);
          Eigen::Map<const Matrix<float>> vh(v.data() + (b * Hk + h / G) * n * dv, n, dv);
          Matrix<float> oh2(n, dv);
          kexue::attention(qh, kh, vh, oh2, oh);
          same &= same_bits(out.data() + (b * H + h) * n * dv, oh2.data(), n * dv);
        }
      INFO("norm " << norm << " form " << form);
      CHECK(same);
#if defined(_OPENMP)
      const int saved = omp_get_max_threads();
      for (int threads : {1, 2}) {
        omp_set_num_threads(threads);
        std::vector<float> o2(out.size(), -7.f);
        kexue::attention(tq, tk, tv, kexue::TensorView<float>::contiguous(o2.data(), B, H, n, dv), o);
        CHECK(same_bits(o2.data(), out.data(), Index(out.size())));
      }
      omp_set_num_threads(saved);
#endif
    }
  }
  // Decoding-sized batched calls (n <= 2: the grouped one-row path) with mixed heads and segments.
  for (Index nn : {1, 2}) {
    const auto tq2 = kexue::TensorView<const float>::contiguous(q.data(), B, H, nn, d);
    const auto tk2 = kexue::TensorView<const float>::contiguous(k.data(), B, Hk, nn, d);
    const auto tv2 = kexue::TensorView<const float>::contiguous(v.data(), B, Hk, nn, dv);
    std::vector<std::int32_t> s2 = {0, 1, 1, 0};
    AttentionOptions o;
    o.head_directions = kexue::HeadDirections(dirs, H);
    o.segments = kexue::SegmentIds(s2.data(), B * nn);
    std::vector<float> out(static_cast<std::size_t>(B * H * nn * dv));
    kexue::attention(tq2, tk2, tv2, kexue::TensorView<float>::contiguous(out.data(), B, H, nn, dv), o);
    bool same = true;
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h) {
        AttentionOptions oh;
        oh.segments = kexue::SegmentIds(s2.data() + b * nn, nn);
        oh.causal = dirs[h] == HeadDirection::Causal;
        oh.reverse_causal = dirs[h] == HeadDirection::ReverseCausal;
        Eigen::Map<const Matrix<float>> qh(tq2.row(b, h, 0), nn, d), kh(tk2.row(b, h / G, 0), nn, d),
            vh(tv2.row(b, h / G, 0), nn, dv);
        Matrix<float> oh2(nn, dv);
        kexue::attention(qh, kh, vh, oh2, oh);
        same &= same_bits(out.data() + (b * H + h) * nn * dv, oh2.data(), nn * dv);
      }
    CHECK(same);
  }
}

TEST_CASE("keys a row cannot see under UniLM / reverse causal never reach it, whatever their k and v hold",
          "[attention][masks]") {
  // Poison k and v rows of keys that some rows cannot see; those rows must keep their bits and stay finite.
  const Index n = 200, d = 16, dv = 16;
  const auto qv = random_values<float>(n * d, 51), kv0 = random_values<float>(n * d, 52),
             vv0 = random_values<float>(n * dv, 53);
  const float bad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity(), 1e30f};
  std::vector<std::int32_t> seg(static_cast<std::size_t>(n), 0);
  for (Index j = 70; j < n; ++j) seg[j] = (j % 9 == 0) ? 1 : (j == 70 ? 1 : 0);
  int rows_checked = 0;
  for (int norm = 0; norm < 3; ++norm)
    for (int kind = 0; kind < 2; ++kind)
      for (float x : bad)
        for (Index p : {Index(5), Index(64), Index(71), Index(150)}) {
          AttentionOptions o;
          o.normalization = static_cast<Normalization>(norm);
          // kind 0: reverse causal, poison keys [0, p): rows i >= p see none of them.
          // kind 1: UniLM, poison keys [p, n): rows whose window ends at or before p see none of them.
          if (kind == 0)
            o.reverse_causal = true;
          else
            o.segments = kexue::SegmentIds(seg);
          auto kv = kv0, vv = vv0;
          for (Index j = kind == 0 ? 0 : p; j < (kind == 0 ? p : n); ++j) {
            for (Index c = 0; c < d; ++c) kv[j * d + c] = x;
            for (Index c = 0; c < dv; ++c) vv[j * dv + c] = x;
          }
          Eigen::Map<const Matrix<float>> q(qv.data(), n, d), k(kv.data(), n, d), v(vv.data(), n, dv),
              k0(kv0.data(), n, d), v0(vv0.data(), n, dv);
          Matrix<float> clean(n, dv), dirty(n, dv);
          kexue::attention(q, k0, v0, clean, o);
          kexue::attention(q, k, v, dirty, o);
          kd::RowWindows win(kd::WindowRule{n, n, n, false, kind == 0, seg.data(), nullptr}, nullptr);
          if (kind == 0) win = kd::RowWindows(kd::WindowRule{n, n, n, false, true, nullptr, nullptr}, nullptr);
          bool ok = true;
          for (Index i = 0; i < n; ++i) {
            Index lo, hi, count;
            win.at(i, lo, hi, count);
            const bool sees_bad = kind == 0 ? lo < p : hi > p;
            if (sees_bad) continue;
            ok &= dirty.row(i).allFinite() && same_bits(dirty.row(i).data(), clean.row(i).data(), dv);
            ++rows_checked;
          }
          INFO("norm " << norm << " kind " << kind << " x " << x << " p " << p);
          CHECK(ok);
        }
  CHECK(rows_checked > 1000);
}

TEST_CASE("diagnostics under UniLM / reverse causal: weights and l1/l2 sparsity count the row's keys",
          "[attention][masks]") {
  const Index n = 40, d = 8;
  const auto qv = random_values<double>(n * d, 61), kv = random_values<double>(n * d, 62);
  Eigen::Map<const Matrix<double>> q(qv.data(), n, d), k(kv.data(), n, d);
  std::vector<std::int32_t> seg(static_cast<std::size_t>(n), 0);
  for (Index j = 15; j < n; ++j) seg[j] = 1;
  AttentionOptions o;
  o.segments = kexue::SegmentIds(seg);
  Matrix<double> a(n, n);
  kexue::attention_weights(q, k, a, o);
  // Row i < 15 sees the 15 source keys; row i >= 15 sees keys [0, i].
  for (Index i = 0; i < n; ++i) {
    const Index hi = i < 15 ? 15 : i + 1;
    CHECK(a.row(i).head(hi).sum() == Approx(1.0).epsilon(1e-14));
    if (hi < n) CHECK(a.row(i).tail(n - hi).cwiseAbs().maxCoeff() == 0.0);
  }
  // Uniform rows over the visible keys have sparsity 1 only when n_i is the row's count.
  Matrix<double> u = Matrix<double>::Zero(n, n);
  for (Index i = 0; i < n; ++i) {
    const Index hi = i < 15 ? 15 : i + 1;
    u.row(i).head(hi).setConstant(1.0 / double(hi));
  }
  Vector<double> s(n);
  kexue::attention_sparsity(u, s, o);
  for (Index i = 0; i < n; ++i) CHECK(s(i) == Approx(1.0).epsilon(1e-14));
  AttentionOptions r;
  r.reverse_causal = true;
  kexue::attention_weights(q, k, a, r);
  for (Index i = 0; i < n; ++i) {
    CHECK(a.row(i).tail(n - i).sum() == Approx(1.0).epsilon(1e-14));
    if (i > 0) CHECK(a.row(i).head(i).cwiseAbs().maxCoeff() == 0.0);
  }
}

TEST_CASE("post 9529's rank argument: causal softmax attention has full rank, bidirectional decays",
          "[attention][masks][rank]") {
  // SPEC 7.3: a causal softmax matrix is lower triangular with a positive diagonal, so det = prod_i a_ii > 0 and
  // it has full rank; bidirectional softmax(q k^T) comes from a rank-d product, and for n > d its spectrum decays
  // (softmax raises the rank somewhat above d); q k^T itself has rank d. What floating point shows: the causal
  // determinant is positive but tiny (prod of n diagonal weights ~ 1/i), and its smallest singular values can be
  // far below sigma_max, so "full rank" is exact, not numerical; the low rank of the bidirectional matrix shows in
  // the bulk of its spectrum, e.g. the number of singular values above 1e-2 sigma_max (n = 64, d = 8, logits of
  // standard deviation 0.5: about 33 bidirectional against about 51 causal in numpy with other random numbers).
  const Index n = 64, d = 8;
  std::mt19937 gen(9529);
  std::normal_distribution<double> nd(0.0, 1.0);
  Matrix<double> q(n, d), k(n, d);
  for (Index i = 0; i < n * d; ++i) {
    q.data()[i] = nd(gen);
    k.data()[i] = nd(gen);
  }
  Matrix<double> causal(n, n), bidir(n, n);
  AttentionOptions o;
  o.scale = 0.5 / std::sqrt(double(d));
  kexue::attention_weights(q, k, bidir, o);
  o.causal = true;
  kexue::attention_weights(q, k, causal, o);
  Vector<double> sc(n), sb(n);
  kexue::attention_singular_values(causal, sc);
  kexue::attention_singular_values(bidir, sb);
  for (Index i = 1; i < n; ++i) {
    CHECK(sc(i) <= sc(i - 1));
    CHECK(sb(i) <= sb(i - 1));
  }
  // Row-stochastic: sigma_max >= 1 for both.
  CHECK(sc(0) >= 1 - 1e-12);
  CHECK(sb(0) >= 1 - 1e-12);
  // Causal: exactly lower triangular with a positive diagonal, so det = prod_i a_ii > 0: full rank.
  bool triangular = true, diagonal_positive = true;
  for (Index i = 0; i < n; ++i) {
    diagonal_positive &= causal(i, i) > 0;
    for (Index j = i + 1; j < n; ++j) triangular &= causal(i, j) == 0.0;
  }
  CHECK(triangular);
  CHECK(diagonal_positive);
  CHECK(sc(n - 1) > 0);
  const Index rc = kexue::attention_rank(causal, 1e-2), rb = kexue::attention_rank(bidir, 1e-2);
  INFO("singular values above 1e-2 sigma_max: causal " << rc << ", bidirectional " << rb << "; smallest "
                                                       << sc(n - 1) << " and " << sb(n - 1));
  CHECK(rb > d);        // softmax raises the rank above the product's d ...
  CHECK(rb + 8 < rc);   // ... but the bidirectional spectrum decays much faster than the causal one
  CHECK(rc > n / 2);
  // Without softmax (linear attention with the identity feature map): rank d exactly.
  const Matrix<double> s = q * k.transpose();
  CHECK(kexue::attention_rank(s) == d);
  CHECK(kexue::attention_rank(s, 1e-10) == d);
  // Edges and errors.
  const Matrix<double> zero = Matrix<double>::Zero(3, 4), empty(0, 0);
  CHECK(kexue::attention_rank(zero) == 0);
  CHECK(kexue::attention_rank(empty) == 0);
  const Matrix<double> eye = Matrix<double>::Identity(5, 5);
  CHECK(kexue::attention_rank(eye) == 5);
  Vector<double> wrong(n - 1);
  throws_with([&] { kexue::attention_singular_values(causal, wrong); }, "attention_singular_values: sv has shape");
  Matrix<double> nan = causal;
  nan(3, 4) = std::numeric_limits<double>::quiet_NaN();
  throws_with([&] { kexue::attention_rank(nan); }, "a(3, 4) = nan is not finite");
}

TEST_CASE("masks of post 9529: bad input throws kexue::Error naming the argument, before writing",
          "[attention][masks]") {
  const Index n = 6, d = 4;
  Matrix<float> q = Matrix<float>::Ones(n, d), k = q, v = q, out = Matrix<float>::Constant(n, d, 7.f);
  std::vector<std::int32_t> seg = {0, 0, 1, -1, 0, 1};
  AttentionOptions o;
  o.segments = kexue::SegmentIds(seg);
  throws_with([&] { kexue::attention(q, k, v, out, o); }, "attention: options.segments[3] = -1 is negative");
  throws_with([&] { kexue::attention_weights(q, k, out.leftCols(0), o); }, "weights");
  std::vector<std::int64_t> seg64 = {0, 0, 0, 0, std::numeric_limits<std::int64_t>::min(), 0};
  o.segments = kexue::SegmentIds(seg64);
  throws_with([&] { kexue::attention(q, k, v, out, o); }, "options.segments[4]");
  std::vector<std::int32_t> short_seg = {0, 1};
  o.segments = kexue::SegmentIds(short_seg);
  throws_with([&] { kexue::attention(q, k, v, out, o); }, "options.segments has 2 ids but needs m = 6");
  o = AttentionOptions();
  o.causal = o.reverse_causal = true;
  throws_with([&] { kexue::attention(q, k, v, out, o); }, "options.causal and options.reverse_causal are both set");
  // n != m: the decode path takes causal, not reverse causal or segments.
  Matrix<float> q1 = Matrix<float>::Ones(1, d), o1(1, d);
  o = AttentionOptions();
  o.reverse_causal = true;
  throws_with([&] { kexue::attention(q1, k, v, o1, o); }, "options.reverse_causal needs self-attention (n == m)");
  o = AttentionOptions();
  std::vector<std::int32_t> ok_seg(6, 0);
  o.segments = kexue::SegmentIds(ok_seg);
  throws_with([&] { kexue::attention(q1, k, v, o1, o); }, "options.segments needs self-attention (n == m)");
  // head_directions.
  const HeadDirection two[] = {HeadDirection::Causal, HeadDirection::ReverseCausal};
  o = AttentionOptions();
  o.head_directions = kexue::HeadDirections(two, 2);
  throws_with([&] { kexue::attention(q, k, v, out, o); }, "options.head_directions has 2 entries but q has 1 heads");
  o.head_directions = kexue::HeadDirections(two, 1);
  o.causal = true;
  throws_with([&] { kexue::attention(q, k, v, out, o); }, "replaces options.causal");
  const HeadDirection rev[] = {HeadDirection::ReverseCausal};
  o = AttentionOptions();
  o.head_directions = kexue::HeadDirections(rev, 1);
  throws_with([&] { kexue::attention(q1, k, v, o1, o); }, "options.head_directions[0] is ReverseCausal");
  CHECK(out.cwiseEqual(7.f).all());
  CHECK(o1.allFinite() == o1.allFinite());
}
