// SPDX-License-Identifier: MIT
// Differential fuzzing of kexue::attention (attention.hpp) against the scalar reference
// (tests/reference/attention_reference.hpp): the three normalisations, causal (n < m, n = m, n > m), key_length,
// key masks, explicit scales, relu2_length, SoftmaxPlus lengths; shapes across the 64-key and query-row tiles;
// strided rows with NaN padding; the batched/GQA form. Asserts kexue::Error exactly for invalid input (out
// untouched), no write into row padding, finite output whenever every input is finite (huge logits never
// overflow to NaN), and for moderate inputs |got - ref| <= eps(T) max|v| (16 + 2 m + 2 (d + 2) c L1) per row, with
// L1 the row's largest scale * sum_c |q_c k_c| ((d + 2) eps L1 bounds the logit error the dot product can make) and c the
// SoftmaxPlus factor (SquaredRelu: the L1^2 analogue). Hidden keys: with finite inputs, a second call with inf,
// NaN or +-1e30 written into k and/or v rows of keys some rows cannot see (padding past key_length, masked keys,
// a causal tail) must give every row that sees none of them the same bits as the first call. Batched decoding
// steps (n <= 2, 1-9 query heads per KV head, run as one row set per group) must give each head the bits of the
// 2-D call on that head alone; with the K/V cache rounded to fp16 or bf16, the bits of the float call on the
// widened cache; with q, k, v rounded to bf16 and the bf16-pairs products forced on, the reference within the
// float bound plus the weights' bf16 rounding, and the hidden-keys property again. The masks of post 9529 (reverse causal, UniLM segments, mixed head directions) have
// a target of their own, fuzz_masks (1 in 8 of the inputs that were 2-D before it existed).
// Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_attention -max_total_time=600 -max_len=4096
#include <cstring>
#include <optional>

#include "fuzz_bounds.hpp"
#include "fuzz_input.hpp"
#include "kexue/attention.hpp"
#include "reference/attention_reference.hpp"

using namespace kexue_fuzz;

namespace {

template <class T>
std::vector<double> flat(const Strided<T>& m) {
  std::vector<double> v;
  v.reserve(std::size_t(m.rows * m.cols));
  for (Index r = 0; r < m.rows; ++r)
    for (Index c = 0; c < m.cols; ++c) v.push_back(double(m(r, c)));
  return v;
}

struct Case {
  kexue::AttentionOptions o;
  std::vector<unsigned char> mask;
  bool use_mask = false;
  bool invalid = false;
};

Case random_case(FuzzInput& in, Index m, bool allow_mask = true) {
  Case c;
  c.o.normalization = static_cast<kexue::Normalization>(in.byte() % 3);
  c.o.causal = in.flag();
  if (in.flag()) {
    const Index kl = in.range(-1, m + 1);
    c.o.key_length = kl;
    c.invalid = c.invalid || kl < 0 || kl > m;
  }
  switch (in.byte() % 8) {
    case 0: c.o.scale = double(in.range(1, 400)) / 100.0; break;  // (the reference reads 0 as "default")
    case 1: c.o.scale = -double(in.range(1, 400)) / 100.0; break;
    case 2:
      c.o.scale = in.flag() ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
      c.invalid = true;
      break;
    default: break;
  }
  if (in.flag()) {
    c.o.train_length = in.range(0, 600);
    c.invalid = c.invalid || c.o.train_length < 2;
  }
  if (in.flag()) {
    c.o.min_length = in.range(0, 40);
    c.invalid = c.invalid || c.o.min_length < 1;
  }
  if (in.flag()) {
    c.o.relu2_length = in.range(0, 100);
    c.invalid = c.invalid || *c.o.relu2_length < 1;
  }
  if (allow_mask && in.flag()) {
    c.use_mask = true;
    const Index len = in.chance(16) ? m + 1 : m;  // sometimes the wrong length
    c.invalid = c.invalid || len != m;
    const std::uint8_t density = in.byte();
    c.mask.resize(std::size_t(len));
    for (auto& x : c.mask) x = in.byte() <= density ? 1 : 0;
  }
  return c;
}

kexue_test::RefAttentionArgs ref_args(const Case& c, const unsigned char* mask) {
  kexue_test::RefAttentionArgs a;
  a.norm = c.o.normalization;
  a.causal = c.o.causal;
  a.scale = c.o.scale ? *c.o.scale : 0.0;
  a.key_length = c.o.key_length ? long(*c.o.key_length) : -1;
  a.train_length = long(c.o.train_length);
  a.min_length = long(c.o.min_length);
  a.relu2_length = c.o.relu2_length ? long(*c.o.relu2_length) : 0;
  a.mask = mask;
  return a;
}

/// Row i's bound: fuzz_bounds.hpp (attention_row_l1, attention_row_bound), shared with the unit suite's regression
/// case of input 2f0000000000021a.
inline double row_l1(const std::vector<double>& q, const std::vector<double>& k, Index i, Index m, Index d,
                     double scale) {
  return kexue_fuzz_bounds::attention_row_l1(q.data(), k.data(), i, m, d, scale);
}

template <class T>
double row_bound(const Case& c, double l1, Index m, Index d, double vmax) {
  return kexue_fuzz_bounds::attention_row_bound<T>(int(c.o.normalization), l1, m, d, vmax, c.o.min_length,
                                                   c.o.train_length, c.o.relu2_length ? *c.o.relu2_length : 0);
}

template <class T>
void check(const Case& c, const Strided<T>& q, const Strided<T>& k, const Strided<T>& v, const T* out,
           Index out_stride, const unsigned char* mask, bool finite_inputs, bool moderate) {
  const Index n = q.rows, m = k.rows, d = q.cols, dv = v.cols;
  if (!finite_inputs && !moderate) return;
  const auto qd = flat(q), kd = flat(k), vd = flat(v);
  const double scale = c.o.scale ? *c.o.scale : 1.0 / std::sqrt(double(d));
  const double vmax = v.max_abs();
  const bool relu2 = c.o.normalization == kexue::Normalization::SquaredRelu;
  std::vector<double> want;
  if (moderate) want = kexue_test::reference_attention(qd, kd, vd, n, m, d, dv, ref_args(c, mask));
  for (Index i = 0; i < n; ++i) {
    const double l1 = row_l1(qd, kd, i, m, d, scale);
    // Softmax weights are <= 1, so finite inputs must give a finite row however large the logits. Squared
    // ReLU weights grow as the logit squared: only promised finite while that fits in T.
    const double tmax = double(std::numeric_limits<T>::max());
    const bool must_be_finite =
        finite_inputs && (!relu2 ? vmax * double(m + 1) < tmax : (l1 * l1 + 1) * (vmax + 1) * double(m + 1) < 1e-3 * tmax);
    for (Index e = 0; e < dv && must_be_finite; ++e)
      expect(std::isfinite(double(out[i * out_stride + e])), "attention: non-finite output from finite inputs",
             double(out[i * out_stride + e]));
    if (!moderate) continue;
    const double bound = row_bound<T>(c, l1, m, d, vmax);
    for (Index e = 0; e < dv; ++e)
      expect_near(double(out[i * out_stride + e]), want[std::size_t(i * dv + e)], bound, "attention vs reference");
  }
}

/// A value a hidden (padding, masked, future) key may hold: inf, -inf, NaN, +-1e30.
template <class T>
T poison_value(FuzzInput& in) {
  switch (in.byte() % 5) {
    case 0: return std::numeric_limits<T>::infinity();
    case 1: return -std::numeric_limits<T>::infinity();
    case 2: return std::numeric_limits<T>::quiet_NaN();
    case 3: return T(1e30);
    default: return T(-1e30);
  }
}

/// Whether query row i of n sees key j of m under c (and mask, if not null).
inline bool sees(const Case& c, Index i, Index j, Index n, Index m, const unsigned char* mask) {
  const Index kl = c.o.key_length ? *c.o.key_length : m;
  return j < kl && (!mask || mask[j] != 0) && (!c.o.causal || j <= i + (m - n));
}

/// Chooses the keys to poison: every key no row sees, plus (causal) a tail [p, m) that only later rows see.
inline std::vector<char> poisoned_keys(FuzzInput& in, const Case& c, Index n, Index m, const unsigned char* mask) {
  std::vector<char> bad(static_cast<std::size_t>(m), 0);
  const Index p = c.o.causal ? in.range(0, m) : m;
  for (Index j = 0; j < m; ++j) {
    bool anyone = false;
    for (Index i = 0; i < n && !anyone; ++i) anyone = sees(c, i, j, n, m, mask);
    bad[std::size_t(j)] = !anyone || j >= p;
  }
  return bad;
}

/// Row i of a (clean) and b (poisoned) agree bit for bit, and b is finite, wherever a's row is finite.
template <class T>
void expect_same_row(const T* a, const T* b, Index dv) {
  bool finite = true;
  for (Index e = 0; e < dv; ++e) finite = finite && std::isfinite(double(a[e]));
  if (!finite) return;
  for (Index e = 0; e < dv; ++e) {
    expect(std::isfinite(double(b[e])), "attention: a hidden key's inf/NaN reached a row that cannot see it",
           double(b[e]), double(a[e]));
    expect(std::memcmp(a + e, b + e, sizeof(T)) == 0, "attention: a hidden key's value changed a row's bits",
           double(b[e]), double(a[e]));
  }
}

/// Scales q down by 2^-s, s in [0, 7]: the fuzzer's values reach +-128, which makes every row one-hot and
/// the bound loose; realistic logits are O(1) to O(10).
template <class T>
void shrink(Index shift, Strided<T>& q) {
  const T f = T(std::ldexp(1.0, -int(shift)));
  for (auto& x : q.buf) x *= f;
}

template <class T>
void fuzz_2d(FuzzInput& in) {
  const Index n = in.size(70), m = in.size(140), d = in.range(1, 40), dv = in.range(1, 40);
  const bool special = in.chance(64);
  const Index shift = in.range(0, 7);
  Case c = random_case(in, m);
  const Index kcols = in.chance(6) ? d + 1 : d;  // sometimes mismatched
  const Index orows = in.chance(6) ? n + 1 : n;
  Strided<T> q = matrix<T>(in, n, d, special), k = matrix<T>(in, m, kcols, special), v = matrix<T>(in, m, dv, special);
  shrink(shift, q);
  c.invalid = c.invalid || kcols != d || orows != n;
  Strided<T> out = sentinel<T>(orows, dv, in.range(0, 5));
  const bool finite = q.all_finite() && k.all_finite() && v.all_finite();
  const bool moderate = !special;
  auto call = [&] {
    if (c.use_mask)
      kexue::attention(q.cmap(), k.cmap(), v.cmap(), kexue::KeyMask(c.mask.data(), Index(c.mask.size())), out.map(),
                       c.o);
    else
      kexue::attention(q.cmap(), k.cmap(), v.cmap(), out.map(), c.o);
  };
  if (!run_checked(c.invalid, out.buf, call, "attention error contract")) return;
  expect(out.padding_intact(), "attention wrote into out's row padding");
  check(c, q, k, v, out.data(), out.stride, c.use_mask ? c.mask.data() : nullptr, finite, moderate);
  if (!finite || !in.flag()) return;
  // Hidden keys: poison the keys some rows cannot see and compare those rows with the clean call.
  const unsigned char* mask = c.use_mask ? c.mask.data() : nullptr;
  const Strided<T> k_clean = k, v_clean = v;
  const auto bad = poisoned_keys(in, c, n, m, mask);
  const T x = poison_value<T>(in);
  const int target = int(in.range(1, 3));  // 1: k rows, 2: v rows, 3: both
  for (Index j = 0; j < m; ++j) {
    if (!bad[std::size_t(j)]) continue;
    if (target & 1) std::fill(k.row(j), k.row(j) + d, x);
    if (target & 2) std::fill(v.row(j), v.row(j) + dv, x);
  }
  Strided<T> clean = out;
  call();
  for (Index i = 0; i < n; ++i) {
    bool sees_bad = false;
    for (Index j = 0; j < m && !sees_bad; ++j) sees_bad = bad[std::size_t(j)] && sees(c, i, j, n, m, mask);
    if (!sees_bad) expect_same_row(clean.row(i), out.row(i), dv);
  }
  if (m == 0 || !in.flag()) return;
  // A visible NaN: one NaN in k gives that key weight 0 in every row that sees it (a NaN logit counts as the most
  // negative one, on every ISA and path), so with moderate values those rows stay finite; the other rows keep the
  // clean call's bits.
  k = k_clean;
  v = v_clean;
  const Index jn = in.range(0, m - 1);
  k.row(jn)[in.range(0, d - 1)] = std::numeric_limits<T>::quiet_NaN();
  call();
  for (Index i = 0; i < n; ++i) {
    if (!sees(c, i, jn, n, m, mask)) {
      expect_same_row(clean.row(i), out.row(i), dv);
      continue;
    }
    bool clean_finite = true;
    for (Index e = 0; e < dv; ++e) clean_finite = clean_finite && std::isfinite(double(clean.row(i)[e]));
    for (Index e = 0; e < dv && moderate && clean_finite; ++e)
      expect(std::isfinite(double(out.row(i)[e])), "attention: a NaN logit made its row non-finite",
             double(out.row(i)[e]), double(jn));
  }
}

/// A 16-bit KV cache (S = Eigen::half or Eigen::bfloat16) under float q: the result must be the float kernel's on
/// the widened cache, bit for bit (NaN compares equal to NaN), for prefill and decoding steps alike. k and v are
/// the float tensors of fuzz_batched (dense), rounded to S here (huge values become inf in fp16).
template <class S>
void check_16bit_cache(const kexue::AttentionOptions& o, const kexue::TensorView<const float>& qv,
                       const Strided<float>& k, const Strided<float>& v, Index B, Index hkv, Index m, Index n,
                       Index H) {
  const Index d = k.cols, dv = v.cols;
  std::vector<S> k16(std::size_t(std::max<Index>(1, k.rows * d))), v16(std::size_t(std::max<Index>(1, v.rows * dv)));
  std::vector<float> kw(k16.size()), vw(v16.size());
  for (Index r = 0; r < k.rows; ++r)
    for (Index c = 0; c < d; ++c) {
      k16[std::size_t(r * d + c)] = S(k(r, c));
      kw[std::size_t(r * d + c)] = float(k16[std::size_t(r * d + c)]);
    }
  for (Index r = 0; r < v.rows; ++r)
    for (Index c = 0; c < dv; ++c) {
      v16[std::size_t(r * dv + c)] = S(v(r, c));
      vw[std::size_t(r * dv + c)] = float(v16[std::size_t(r * dv + c)]);
    }
  Strided<float> o16 = sentinel<float>(B * n * H, dv, 0), ow = sentinel<float>(B * n * H, dv, 0);
  kexue::attention(qv, kexue::TensorView<const S>::contiguous(k16.data(), B, hkv, m, d),
                   kexue::TensorView<const S>::contiguous(v16.data(), B, hkv, m, dv),
                   kexue::TensorView<float>::seq_major(o16.data(), B, n, H, dv), o);
  kexue::attention(qv, kexue::TensorView<const float>::contiguous(kw.data(), B, hkv, m, d),
                   kexue::TensorView<const float>::contiguous(vw.data(), B, hkv, m, dv),
                   kexue::TensorView<float>::seq_major(ow.data(), B, n, H, dv), o);
  for (Index r = 0; r < B * n * H; ++r)
    for (Index e = 0; e < dv; ++e) {
      const float a = o16(r, e), x = ow(r, e);
      expect((std::isnan(a) && std::isnan(x)) || std::memcmp(&a, &x, sizeof(float)) == 0,
             "attention: a 16-bit KV cache differs from the float kernel on the widened cache", double(a), double(x));
    }
}

/// q, k, v rounded to bf16 with the bf16-pairs products forced on (the default where kPreferBf16Dot; every build
/// runs them, vdpbf16ps or widened pairs). q is seq-major [B, n, H, d], k and v head-major [B, hkv, m, *]. Each head
/// against the scalar reference on the rounded values, within the float kernel's bound plus 2^-8 sum_j a_ij |v_je|
/// (each weight is rounded to bf16 once, relative error <= 2^-9; the reference on |v| gives that sum); finite
/// wherever the widened products give a finite row; decoding steps (n <= 2) keep the widened products' bits; with
/// hidden keys poisoned (inf, NaN, +-1e30 in k and v), the rows that see none of them keep their bits.
void check_bf16_pairs(FuzzInput& in, const Case& c, const Strided<float>& q, const Strided<float>& k,
                      const Strided<float>& v, Index B, Index hkv, Index m, Index n, Index H, bool moderate) {
  using bf16 = Eigen::bfloat16;
  const Index d = q.cols, dv = v.cols;
  auto rounded = [](const Strided<float>& x) {
    std::vector<bf16> y(std::size_t(std::max<Index>(1, x.rows * x.cols)));
    for (Index r = 0; r < x.rows; ++r)
      for (Index e = 0; e < x.cols; ++e) y[std::size_t(r * x.cols + e)] = bf16(x(r, e));
    return y;
  };
  const std::vector<bf16> q16 = rounded(q);
  std::vector<bf16> k16 = rounded(k), v16 = rounded(v);
  auto run = [&](const std::vector<bf16>& kk, const std::vector<bf16>& vv, bool pairs) {
    Strided<float> o = sentinel<float>(B * n * H, dv, 0);
    kexue::detail::attention_batched<bf16, bf16, float>(
        kexue::TensorView<const bf16>::seq_major(q16.data(), B, n, H, d),
        kexue::TensorView<const bf16>::contiguous(kk.data(), B, hkv, m, d),
        kexue::TensorView<const bf16>::contiguous(vv.data(), B, hkv, m, dv), nullptr,
        kexue::TensorView<float>::seq_major(o.data(), B, n, H, dv), c.o, pairs);
    return o;
  };
  const Strided<float> got = run(k16, v16, true), widened = run(k16, v16, false);
  for (Index r = 0; r < B * n * H; ++r) {
    bool widened_finite = true;
    for (Index e = 0; e < dv; ++e) widened_finite = widened_finite && std::isfinite(widened(r, e));
    for (Index e = 0; e < dv; ++e) {
      const float a = got(r, e), x = widened(r, e);
      if (n <= kexue::detail::kSmallTileRows)
        expect((std::isnan(a) && std::isnan(x)) || std::memcmp(&a, &x, sizeof(float)) == 0,
               "attention: bf16 pairs changed a decoding step (it keeps the widened products)", double(a), double(x));
      else if (widened_finite)
        expect(std::isfinite(a), "attention: bf16 pairs gave a non-finite value where the widened products did not",
               double(a), double(x));
    }
  }
  if (moderate && n > kexue::detail::kSmallTileRows) {
    const double scale = c.o.scale ? *c.o.scale : 1.0 / std::sqrt(double(d));
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h) {
        const Index g = h / (H / hkv);
        std::vector<double> qd, kd, vd, va;
        for (Index s = 0; s < n; ++s)
          for (Index e = 0; e < d; ++e) qd.push_back(double(q16[std::size_t(((b * n + s) * H + h) * d + e)]));
        double vmax = 0;
        for (Index j = 0; j < m; ++j) {
          for (Index e = 0; e < d; ++e) kd.push_back(double(k16[std::size_t(((b * hkv + g) * m + j) * d + e)]));
          for (Index e = 0; e < dv; ++e) {
            const double x = double(v16[std::size_t(((b * hkv + g) * m + j) * dv + e)]);
            vd.push_back(x);
            va.push_back(std::abs(x));
            vmax = std::max(vmax, std::abs(x));
          }
        }
        const auto want = kexue_test::reference_attention(qd, kd, vd, n, m, d, dv, ref_args(c, nullptr));
        const auto wabs = kexue_test::reference_attention(qd, kd, va, n, m, d, dv, ref_args(c, nullptr));
        for (Index i = 0; i < n; ++i) {
          const double bound = row_bound<float>(c, row_l1(qd, kd, i, m, d, scale), m, d, vmax);
          for (Index e = 0; e < dv; ++e)
            expect_near(double(got((b * n + i) * H + h, e)), want[std::size_t(i * dv + e)],
                        bound + std::ldexp(wabs[std::size_t(i * dv + e)], -8), "attention bf16 pairs vs reference");
        }
      }
  }
  if (in.flag()) {
    const auto bad = poisoned_keys(in, c, n, m, nullptr);
    const bf16 x = bf16(poison_value<float>(in));
    for (Index b = 0; b < B; ++b)
      for (Index g = 0; g < hkv; ++g)
        for (Index j = 0; j < m; ++j)
          if (bad[std::size_t(j)]) {
            const Index row = (b * hkv + g) * m + j;
            std::fill(k16.begin() + row * d, k16.begin() + (row + 1) * d, x);
            std::fill(v16.begin() + row * dv, v16.begin() + (row + 1) * dv, x);
          }
    const Strided<float> again = run(k16, v16, true);
    for (Index i = 0; i < n; ++i) {
      bool sees_bad = false;
      for (Index j = 0; j < m && !sees_bad; ++j) sees_bad = bad[std::size_t(j)] && sees(c, i, j, n, m, nullptr);
      if (sees_bad) continue;
      for (Index b = 0; b < B; ++b)
        for (Index h = 0; h < H; ++h) expect_same_row(got.row((b * n + i) * H + h), again.row((b * n + i) * H + h), dv);
    }
  }
}

/// Batched [B, H, n, d] with H = G * Hkv (grouped-query attention); each head against the 2-D reference. Float
/// inputs also run with the K/V cache rounded to fp16 or bf16 (check_16bit_cache).
template <class T>
void fuzz_batched(FuzzInput& in) {
  const Index B = in.range(1, 2), hkv = in.range(1, 2), G = in.range(1, 9), H = hkv * G;
  const Index n = in.size(40), m = in.size(80), d = in.range(1, 24), dv = in.range(1, 24);
  const bool special = in.chance(48);
  const Index shift = in.range(0, 7);
  Case c = random_case(in, m, false);
  // Heads stored seq-major for q/out (a fused projection), head-major for k/v.
  Strided<T> q = matrix<T>(in, B * n * H, d, special, 0), k = matrix<T>(in, B * hkv * m, d, special, 0),
             v = matrix<T>(in, B * hkv * m, dv, special, 0);
  Strided<T> out = sentinel<T>(B * n * H, dv, 0);
  shrink(shift, q);
  const auto qv = kexue::TensorView<const T>::seq_major(q.data(), B, n, H, d);
  const auto kv = kexue::TensorView<const T>::contiguous(k.data(), B, hkv, m, d);
  const auto vv = kexue::TensorView<const T>::contiguous(v.data(), B, hkv, m, dv);
  const auto ov = kexue::TensorView<T>::seq_major(out.data(), B, n, H, dv);
  if (!run_checked(c.invalid, out.buf, [&] { kexue::attention(qv, kv, vv, ov, c.o); }, "batched attention errors"))
    return;
  const bool finite = q.all_finite() && k.all_finite() && v.all_finite();
  if (finite && in.flag()) {
    // Hidden keys (padding past key_length, a causal tail) of every batch and kv head: the rows that see none
    // of them keep their bits.
    const auto bad = poisoned_keys(in, c, n, m, nullptr);
    const T x = poison_value<T>(in);
    Strided<T> clean = out;
    Strided<T> kp = k, vp = v;
    for (Index b = 0; b < B; ++b)
      for (Index g = 0; g < hkv; ++g)
        for (Index j = 0; j < m; ++j)
          if (bad[std::size_t(j)]) {
            std::fill(kp.row((b * hkv + g) * m + j), kp.row((b * hkv + g) * m + j) + d, x);
            std::fill(vp.row((b * hkv + g) * m + j), vp.row((b * hkv + g) * m + j) + dv, x);
          }
    const auto kpv = kexue::TensorView<const T>::contiguous(kp.data(), B, hkv, m, d);
    const auto vpv = kexue::TensorView<const T>::contiguous(vp.data(), B, hkv, m, dv);
    const auto cv = kexue::TensorView<T>::seq_major(clean.data(), B, n, H, dv);
    kexue::attention(qv, kpv, vpv, ov, c.o);
    for (Index i = 0; i < n; ++i) {
      bool sees_bad = false;
      for (Index j = 0; j < m && !sees_bad; ++j) sees_bad = bad[std::size_t(j)] && sees(c, i, j, n, m, nullptr);
      if (sees_bad) continue;
      for (Index b = 0; b < B; ++b)
        for (Index h = 0; h < H; ++h) expect_same_row(cv.row(b, h, i), ov.row(b, h, i), dv);
    }
    std::copy(clean.buf.begin(), clean.buf.end(), out.buf.begin());  // the reference checks below use the clean run
  }
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      Strided<T> qh(n, d, 0), kh(m, d, 0), vh(m, dv, 0);
      for (Index s = 0; s < n; ++s) std::copy(qv.row(b, h, s), qv.row(b, h, s) + d, qh.row(s));
      const Index g = h / G;
      for (Index s = 0; s < m; ++s) {
        std::copy(kv.row(b, g, s), kv.row(b, g, s) + d, kh.row(s));
        std::copy(vv.row(b, g, s), vv.row(b, g, s) + dv, vh.row(s));
      }
      check(c, qh, kh, vh, ov.row(b, h, 0), ov.strides[2], nullptr, finite, !special);
      if (n <= kexue::detail::kSmallTileRows) {
        // A decoding step runs the G heads of a KV group as one row set: each head keeps the bits of the 2-D call
        // on its own q rows (NaN compares equal to NaN: only its payload may differ).
        Strided<T> oh = sentinel<T>(n, dv, 0);
        kexue::attention(qh.cmap(), kh.cmap(), vh.cmap(), oh.map(), c.o);
        for (Index s = 0; s < n; ++s)
          for (Index e = 0; e < dv; ++e) {
            const T a = ov.row(b, h, s)[e], x = oh.row(s)[e];
            expect((std::isnan(double(a)) && std::isnan(double(x))) || std::memcmp(&a, &x, sizeof(T)) == 0,
                   "attention: a grouped decode head differs from the same head alone", double(a), double(x));
          }
      }
    }
  if constexpr (std::is_same<T, float>::value) {
    if (in.flag()) {
      if (in.flag())
        check_16bit_cache<Eigen::half>(c.o, qv, k, v, B, hkv, m, n, H);
      else
        check_16bit_cache<Eigen::bfloat16>(c.o, qv, k, v, B, hkv, m, n, H);
    }
    if (in.flag()) check_bf16_pairs(in, c, q, k, v, B, hkv, m, n, H, !special && finite);
  }
}

/// The masks of post 9529 (SPEC 7.3): UniLM segment ids (int32 / int64, shared or per batch), reverse causal, mixed
/// head directions, combined with causal, key_length, key masks (shared or per batch) and every normalisation, in
/// the batched/GQA form (n = m). Each head against the scalar reference with its own mask; kexue::Error exactly for
/// invalid input (negative ids, wrong lengths, causal + reverse, head_directions with causal); hidden keys: poison
/// every key some row cannot see and compare the rows that see none of them bit for bit; each head bitwise equal
/// to its 2-D call.
template <class T>
void fuzz_masks(FuzzInput& in) {
  const Index B = in.range(1, 2), hkv = in.range(1, 2), G = in.range(1, 4), H = hkv * G;
  const Index n = in.size(140), d = in.range(1, 24), dv = in.range(1, 24);
  const bool special = in.chance(32);
  const Index shift = in.range(0, 7);
  Case c = random_case(in, n, false);
  bool invalid = c.invalid;
  // Direction: 0 none, 1 causal, 2 reverse, 3 causal + reverse (invalid), 4 mixed heads (+ sometimes causal: invalid).
  const int dir = int(in.byte() % 5);
  c.o.causal = dir == 1 || dir == 3;
  c.o.reverse_causal = dir == 2 || dir == 3;
  invalid = invalid || dir == 3;
  std::vector<kexue::HeadDirection> dirs;
  if (dir == 4) {
    const Index len = in.chance(16) ? H + 1 : H;
    invalid = invalid || len != H;
    for (Index h = 0; h < len; ++h) dirs.push_back(static_cast<kexue::HeadDirection>(in.byte() % 3));
    c.o.head_directions = kexue::HeadDirections(dirs);
    if (in.chance(16)) {
      c.o.causal = true;
      invalid = true;
    }
  }
  // Segments: none, int32 or int64, shared (n) or per batch (B n); sometimes a negative id or a wrong length.
  std::vector<std::int32_t> s32;
  std::vector<std::int64_t> s64;
  const int segkind = int(in.byte() % 3);
  if (segkind != 0) {
    const bool per_batch = B > 1 && in.flag();
    Index len = per_batch ? B * n : n;
    if (in.chance(12)) {
      len += 1;
      invalid = invalid || (len != n && len != B * n);  // (n + 1 is B n for B = 2, n = 1)
    }
    const std::uint8_t density = in.byte();
    s64.resize(std::size_t(len));
    for (auto& x : s64) x = in.byte() < density / 4 ? std::int64_t(in.range(1, 3)) : 0;
    if (len > 0 && in.chance(12)) {
      s64[std::size_t(in.range(0, len - 1))] = -std::int64_t(in.range(1, 5));
      invalid = true;
    }
    if (segkind == 1) {
      s32.assign(s64.begin(), s64.end());
      c.o.segments = kexue::SegmentIds(s32);
    } else {
      c.o.segments = kexue::SegmentIds(s64);
    }
  }
  std::vector<unsigned char> mask;
  Index mask_stride = 0;
  if (in.flag()) {
    const bool per_batch = B > 1 && in.flag();
    const std::uint8_t density = in.byte();
    mask.resize(std::size_t(per_batch ? B * n : n));
    for (auto& x : mask) x = in.byte() <= density ? 1 : 0;
    mask_stride = per_batch ? n : 0;
  }
  Strided<T> q = matrix<T>(in, B * n * H, d, special, 0), k = matrix<T>(in, B * hkv * n, d, special, 0),
             v = matrix<T>(in, B * hkv * n, dv, special, 0);
  shrink(shift, q);
  Strided<T> out = sentinel<T>(B * n * H, dv, 0);
  const auto qv = kexue::TensorView<const T>::contiguous(q.data(), B, H, n, d);
  auto kv = kexue::TensorView<const T>::contiguous(k.data(), B, hkv, n, d);
  auto vv = kexue::TensorView<const T>::contiguous(v.data(), B, hkv, n, dv);
  const auto ov = kexue::TensorView<T>::contiguous(out.data(), B, H, n, dv);
  auto call = [&](const kexue::TensorView<const T>& kk, const kexue::TensorView<const T>& vvv,
                  const kexue::TensorView<T>& oo) {
    if (mask.empty())
      kexue::attention(qv, kk, vvv, oo, c.o);
    else
      kexue::attention(qv, kk, vvv, kexue::KeyMask(mask.data(), Index(mask.size())), oo, c.o);
  };
  if (!run_checked(invalid, out.buf, [&] { call(kv, vv, ov); }, "attention masks error contract")) return;
  const bool finite = q.all_finite() && k.all_finite() && v.all_finite();
  // Per (b, h): the visibility of the scalar reference.
  auto head_args = [&](Index b, Index h) {
    kexue_test::RefAttentionArgs a = ref_args(c, mask.empty() ? nullptr : mask.data() + b * mask_stride);
    if (!dirs.empty()) {
      a.causal = dirs[std::size_t(h)] == kexue::HeadDirection::Causal;
      a.reverse_causal = dirs[std::size_t(h)] == kexue::HeadDirection::ReverseCausal;
    } else {
      a.reverse_causal = c.o.reverse_causal;
    }
    if (!s64.empty()) a.segments = s64.data() + (Index(s64.size()) == n ? 0 : b * n);
    return a;
  };
  auto visible = [&](const kexue_test::RefAttentionArgs& a, Index i, Index j) {
    const Index kl = a.key_length < 0 ? n : a.key_length;
    bool keep = j < kl && (!a.mask || a.mask[j]) && (!a.causal || j <= i) && (!a.reverse_causal || j >= i);
    if (keep && a.segments)
      for (Index t = i + 1; t <= j && keep; ++t) keep = a.segments[t] == 0;  // c[j] <= c[i]: no id > 0 in (i, j]
    return keep;
  };
  const double scale = c.o.scale ? *c.o.scale : 1.0 / std::sqrt(double(d));
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const auto a = head_args(b, h);
      std::vector<double> qd, kd, vd;
      for (Index s = 0; s < n; ++s) qd.insert(qd.end(), qv.row(b, h, s), qv.row(b, h, s) + d);
      for (Index s = 0; s < n; ++s) {
        kd.insert(kd.end(), kv.row(b, h / G, s), kv.row(b, h / G, s) + d);
        vd.insert(vd.end(), vv.row(b, h / G, s), vv.row(b, h / G, s) + dv);
      }
      double vmax = 0;
      for (double x : vd) vmax = std::max(vmax, std::abs(x));
      if (!special) {
        const auto want = kexue_test::reference_attention(qd, kd, vd, n, n, d, dv, a);
        for (Index i = 0; i < n; ++i) {
          const double l1 = row_l1(qd, kd, i, n, d, scale);
          const double bound = row_bound<T>(c, l1, n, d, vmax);
          for (Index e = 0; e < dv; ++e)
            expect_near(double(ov.row(b, h, i)[e]), want[std::size_t(i * dv + e)], bound, "attention masks vs reference");
        }
      }
      // The same head through the 2-D call: the same bits.
      Strided<T> qh(n, d, 0), kh(n, d, 0), vh(n, dv, 0), oh = sentinel<T>(n, dv, 0);
      for (Index s = 0; s < n; ++s) {
        std::copy(qv.row(b, h, s), qv.row(b, h, s) + d, qh.row(s));
        std::copy(kv.row(b, h / G, s), kv.row(b, h / G, s) + d, kh.row(s));
        std::copy(vv.row(b, h / G, s), vv.row(b, h / G, s) + dv, vh.row(s));
      }
      kexue::AttentionOptions o2 = c.o;
      o2.head_directions.reset();
      o2.causal = a.causal;
      o2.reverse_causal = a.reverse_causal;
      if (!s64.empty()) o2.segments = kexue::SegmentIds(a.segments, n);
      if (a.mask)
        kexue::attention(qh.cmap(), kh.cmap(), vh.cmap(), kexue::KeyMask(a.mask, n), oh.map(), o2);
      else
        kexue::attention(qh.cmap(), kh.cmap(), vh.cmap(), oh.map(), o2);
      for (Index s = 0; s < n; ++s)
        for (Index e = 0; e < dv; ++e) {
          const T x = ov.row(b, h, s)[e], y = oh.row(s)[e];
          expect((std::isnan(double(x)) && std::isnan(double(y))) || std::memcmp(&x, &y, sizeof(T)) == 0,
                 "attention masks: a batched head differs from its 2-D call", double(x), double(y));
        }
    }
  if (!finite || !in.flag()) return;
  // Hidden keys: poison a random set of keys; every row (of every head) that sees none of them keeps its bits.
  std::vector<char> bad(std::size_t(n), 0);
  const std::uint8_t density = in.byte();
  for (auto& x : bad) x = in.byte() < density / 2;
  const T x = poison_value<T>(in);
  Strided<T> kp = k, vp = v, dirty = sentinel<T>(B * n * H, dv, 0);
  for (Index r = 0; r < B * hkv * n; ++r)
    if (bad[std::size_t(r % n)]) {
      std::fill(kp.row(r), kp.row(r) + d, x);
      std::fill(vp.row(r), vp.row(r) + dv, x);
    }
  const auto dv_view = kexue::TensorView<T>::contiguous(dirty.data(), B, H, n, dv);
  call(kexue::TensorView<const T>::contiguous(kp.data(), B, hkv, n, d),
       kexue::TensorView<const T>::contiguous(vp.data(), B, hkv, n, dv), dv_view);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const auto a = head_args(b, h);
      for (Index i = 0; i < n; ++i) {
        bool sees_bad = false;
        for (Index j = 0; j < n && !sees_bad; ++j) sees_bad = bad[std::size_t(j)] && visible(a, i, j);
        if (!sees_bad) expect_same_row(ov.row(b, h, i), dv_view.row(b, h, i), dv);
      }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const bool single = in.flag();
  const std::uint8_t mode = in.byte();
  if (mode % 4 == 0)
    single ? fuzz_batched<float>(in) : fuzz_batched<double>(in);
  else if (mode >= 224)  // (mode % 4 != 0 was the 2-D target before the masks of post 9529; 1 in 8 of it moved)
    single ? fuzz_masks<float>(in) : fuzz_masks<double>(in);
  else
    single ? fuzz_2d<float>(in) : fuzz_2d<double>(in);
  return 0;
}
