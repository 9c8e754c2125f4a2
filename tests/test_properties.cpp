// SPDX-License-Identifier: MIT
// Property tests over random shapes and seeds (Catch2 GENERATE) for every kernel family: the batched
// [batch, heads, seq, dim] forms give the bits of the 2-D forms per slice, results are bitwise identical for 1
// and 2 threads (omp_set_num_threads under _OPENMP), and the documented in-place / aliasing rules hold (an in
// place call gives the bits of the out-of-place call; streaming in pieces equals the one-shot call to rounding).
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "kexue/kexue.hpp"
#include "support.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace kexue_test;
using kexue::Matrix;
using kexue::TensorView;
using kexue::Vector;

namespace {

/// Runs f() once with 1 thread and once with 2 (when OpenMP is on), returning both results.
template <class F>
auto one_and_two_threads(F&& f) {
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  auto a = f();
  omp_set_num_threads(2);
  auto b = f();
  omp_set_num_threads(saved);
  return std::make_pair(a, b);
#else
  auto a = f();
  return std::make_pair(a, f());
#endif
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
bool bitwise_equal(const T* a, const T* b, Index n) {
  return n == 0 || std::memcmp(a, b, std::size_t(n) * sizeof(T)) == 0;
}

/// Random shape generator seeded per test.
struct Shapes {
  std::mt19937 gen;
  explicit Shapes(std::uint32_t seed) : gen(seed) {}
  Index operator()(Index lo, Index hi) { return std::uniform_int_distribution<Index>(lo, hi)(gen); }
};

template <class T>
std::vector<T> values(Index n, std::uint32_t seed, T scale = T(1)) {
  auto v = random_values<T>(n, seed, T(-1), T(1));
  for (auto& x : v) x *= scale;
  return v;
}

template <class T>
Matrix<T> slice(const TensorView<const T>& t, Index b, Index h) {
  return t.matrix(b, h);
}

}  // namespace

// ---- RoPE --------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("properties: RoPE batched == 2-D, threads, positions == offsets", "[properties][rope]", float, double) {
  using T = TestType;
  const std::uint32_t seed = GENERATE(1u, 2u, 3u);
  Shapes r(seed);
  const Index dim = 2 * r(1, 24), B = r(1, 3), H = r(1, 4), seq = r(0, 40), first = r(0, 8);
  kexue::RopeOptions o;
  o.layout = seed % 2 ? kexue::RopeLayout::Half : kexue::RopeLayout::Interleaved;
  o.rotary_dim = 2 * r(1, dim / 2);
  const kexue::RopeTable<T> table(first + seq, dim, o);
  const auto x0 = values<T>(B * H * seq * dim, seed);
  auto run = [&] {
    std::vector<T> x = x0;
    kexue::rope(table, TensorView<T>::contiguous(x.data(), B, H, seq, dim), first);
    return x;
  };
  const auto [one, two] = one_and_two_threads(run);
  CHECK(bitwise_equal(one, two));
  // Each (b, h) slice equals the 2-D call on it, and explicit positions first + s equal the offset form.
  std::vector<Index> pos(static_cast<std::size_t>(seq));
  for (Index s = 0; s < seq; ++s) pos[std::size_t(s)] = first + s;
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const Index off = ((b * H + h) * seq) * dim;
      Matrix<T> m = Eigen::Map<const Matrix<T>>(x0.data() + off, seq, dim), p = m;
      kexue::rope(table, m, first);
      kexue::rope(table, p, pos);
      CHECK(bitwise_equal(m.data(), one.data() + off, seq * dim));
      CHECK(bitwise_equal(p.data(), m.data(), seq * dim));
    }
  // q and k in one call equal two single-tensor calls.
  std::vector<T> q = x0, k = values<T>(B * H * seq * dim, seed + 7), q2 = q, k2 = k;
  kexue::rope(table, TensorView<T>::contiguous(q.data(), B, H, seq, dim), TensorView<T>::contiguous(k.data(), B, H, seq, dim),
              first);
  kexue::rope(table, TensorView<T>::contiguous(q2.data(), B, H, seq, dim), first);
  kexue::rope(table, TensorView<T>::contiguous(k2.data(), B, H, seq, dim), first);
  CHECK(bitwise_equal(q, q2));
  CHECK(bitwise_equal(k, k2));
}

// ---- attention ---------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("properties: attention batched/GQA == 2-D, threads", "[properties][attention]", float, double) {
  using T = TestType;
  const std::uint32_t seed = GENERATE(11u, 12u, 13u, 14u);
  Shapes r(seed);
  const Index B = r(1, 2), hkv = r(1, 2), G = r(1, 3), H = hkv * G, n = r(0, 70), m = r(0, 140), d = r(1, 24),
              dv = r(1, 24);
  kexue::AttentionOptions o;
  o.normalization = static_cast<kexue::Normalization>(seed % 3);
  o.causal = seed % 2 == 0;
  if (seed % 4 == 1) o.key_length = r(0, m);
  const auto q = values<T>(B * H * n * d, seed), k = values<T>(B * hkv * m * d, seed + 1),
             v = values<T>(B * hkv * m * dv, seed + 2);
  using CV = TensorView<const T>;
  const auto qv = CV::contiguous(q.data(), B, H, n, d), kv = CV::contiguous(k.data(), B, hkv, m, d),
             vv = CV::contiguous(v.data(), B, hkv, m, dv);
  auto run = [&] {
    std::vector<T> out(static_cast<std::size_t>(B * H * n * dv), T(-7));
    kexue::attention(qv, kv, vv, TensorView<T>::contiguous(out.data(), B, H, n, dv), o);
    return out;
  };
  const auto [one, two] = one_and_two_threads(run);
  CHECK(bitwise_equal(one, two));
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      Matrix<T> out(n, dv);
      kexue::attention(slice(qv, b, h), slice(kv, b, h / G), slice(vv, b, h / G), out, o);
      CHECK(bitwise_equal(out.data(), one.data() + (b * H + h) * n * dv, n * dv));
    }
}

// ---- GAU ---------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("properties: GAU batched == 2-D, in place == out of place, threads", "[properties][gau]", float, double) {
  using T = TestType;
  const std::uint32_t seed = GENERATE(21u, 22u, 23u);
  Shapes r(seed);
  const Index B = r(1, 3), n = r(1, 150), D = r(1, 12), e = r(1, 12), s = 2 * r(1, 6);
  kexue::GauWeights<T> w;
  auto mat = [&](Index rows, Index cols, std::uint32_t sd) {
    return Matrix<T>(Eigen::Map<const Matrix<T>>(values<T>(rows * cols, sd, T(0.3)).data(), rows, cols));
  };
  auto vec = [&](Index c, std::uint32_t sd) {
    return Vector<T>(Eigen::Map<const Vector<T>>(values<T>(c, sd, T(0.3)).data(), c));
  };
  w.w_in = mat(D, 2 * e + s, seed + 1);
  w.b_in = vec(2 * e + s, seed + 2);
  w.gamma_q = vec(s, seed + 3);
  w.gamma_k = vec(s, seed + 4);
  w.beta_q = vec(s, seed + 5);
  w.beta_k = vec(s, seed + 6);
  w.w_out = mat(e, D, seed + 7);
  w.b_out = vec(D, seed + 8);
  kexue::GauOptions o;
  o.attention.normalization = static_cast<kexue::Normalization>(seed % 3);
  o.attention.causal = seed % 2 == 1;
  const kexue::RopeTable<T> table(n, s);
  const auto x = values<T>(B * n * D, seed + 9);
  std::vector<Index> lengths;
  for (Index b = 0; b < B; ++b) lengths.push_back(r(0, n));
  auto run = [&] {
    std::vector<T> out(x.size(), T(-7));
    kexue::gau(w, TensorView<const T>::contiguous(x.data(), B, 1, n, D), TensorView<T>::contiguous(out.data(), B, 1, n, D),
               lengths, o, &table);
    return out;
  };
  const auto [one, two] = one_and_two_threads(run);
  CHECK(bitwise_equal(one, two));
  for (Index b = 0; b < B; ++b) {
    kexue::GauOptions ob = o;
    ob.attention.key_length = lengths[std::size_t(b)];
    const Matrix<T> xb = Eigen::Map<const Matrix<T>>(x.data() + b * n * D, n, D);
    Matrix<T> out(n, D), inplace = xb;
    kexue::gau(w, xb, out, ob, &table);
    CHECK(bitwise_equal(out.data(), one.data() + b * n * D, n * D));
    kexue::gau(w, inplace, inplace, ob, &table);  // documented: out may be x itself
    CHECK(bitwise_equal(inplace.data(), out.data(), n * D));
  }
  // The batched form in place (out = x) gives the same bits.
  std::vector<T> xi = x;
  kexue::gau(w, TensorView<const T>::contiguous(xi.data(), B, 1, n, D), TensorView<T>::contiguous(xi.data(), B, 1, n, D),
             lengths, o, &table);
  CHECK(bitwise_equal(xi, one));
}

// ---- linear attention and FLASH ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("properties: linear attention batched == 2-D, threads, streaming == one shot", "[properties][linear_attention]",
                   float, double) {
  using T = TestType;
  const std::uint32_t seed = GENERATE(31u, 32u, 33u);
  Shapes r(seed);
  const Index B = r(1, 2), hkv = r(1, 2), G = r(1, 2), H = hkv * G, n = r(1, 150), d = r(1, 20), dv = r(1, 20);
  kexue::LinearAttentionOptions o;
  o.feature_map = static_cast<kexue::FeatureMap>(seed % 2);  // EluPlusOne, Relu: positive denominators
  o.causal = true;
  const auto q = values<T>(B * H * n * d, seed), k = values<T>(B * hkv * n * d, seed + 1),
             v = values<T>(B * hkv * n * dv, seed + 2);
  using CV = TensorView<const T>;
  const auto qv = CV::contiguous(q.data(), B, H, n, d), kv = CV::contiguous(k.data(), B, hkv, n, d),
             vv = CV::contiguous(v.data(), B, hkv, n, dv);
  auto run = [&] {
    std::vector<T> out(static_cast<std::size_t>(B * H * n * dv), T(-7));
    kexue::linear_attention(qv, kv, vv, TensorView<T>::contiguous(out.data(), B, H, n, dv), o);
    return out;
  };
  const auto [one, two] = one_and_two_threads(run);
  CHECK(bitwise_equal(one, two));
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      Matrix<T> out(n, dv);
      kexue::linear_attention(slice(qv, b, h), slice(kv, b, h / G), slice(vv, b, h / G), out, o);
      CHECK(bitwise_equal(out.data(), one.data() + (b * H + h) * n * dv, n * dv));
      // Streaming the same head in random pieces gives the one-shot causal output to rounding.
      kexue::LinearAttentionState<T> state(d, dv);
      Matrix<T> pieces(n, dv);
      for (Index at = 0; at < n;) {
        const Index len = std::min(n - at, r(1, 70));
        kexue::linear_attention(slice(qv, b, h).middleRows(at, len), slice(kv, b, h / G).middleRows(at, len),
                                slice(vv, b, h / G).middleRows(at, len), pieces.middleRows(at, len), state, o);
        at += len;
      }
      CHECK(state.tokens() == n);
      CHECK(nmse(pieces, out) < (std::is_same<T, float>::value ? 1e-11 : 1e-26));
    }
}

TEMPLATE_TEST_CASE("properties: FLASH batched == 2-D, threads", "[properties][flash]", float, double) {
  using T = TestType;
  const std::uint32_t seed = GENERATE(41u, 42u, 43u);
  Shapes r(seed);
  const Index B = r(1, 2), H = r(1, 3), n = r(1, 150), s = r(1, 16), sl = r(1, 16), e = r(1, 16);
  kexue::FlashOptions o;
  o.chunk_size = r(1, 80);
  o.causal = seed % 2 == 1;
  o.linear_norm = seed % 3 == 0 ? kexue::FlashLinearNorm::Prefix : kexue::FlashLinearNorm::SequenceLength;
  const auto qq = values<T>(B * H * n * s, seed), kq = values<T>(B * H * n * s, seed + 1),
             ql = values<T>(B * H * n * sl, seed + 2), kl = values<T>(B * H * n * sl, seed + 3),
             v = values<T>(B * H * n * e, seed + 4);
  using CV = TensorView<const T>;
  const auto a = CV::contiguous(qq.data(), B, H, n, s), bq = CV::contiguous(kq.data(), B, H, n, s),
             c = CV::contiguous(ql.data(), B, H, n, sl), dd = CV::contiguous(kl.data(), B, H, n, sl),
             vv = CV::contiguous(v.data(), B, H, n, e);
  auto run = [&] {
    std::vector<T> out(static_cast<std::size_t>(B * H * n * e), T(-7));
    kexue::mixed_chunk_attention(a, bq, c, dd, vv, TensorView<T>::contiguous(out.data(), B, H, n, e), o);
    return out;
  };
  const auto [one, two] = one_and_two_threads(run);
  CHECK(bitwise_equal(one, two));
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      Matrix<T> out(n, e);
      kexue::mixed_chunk_attention(slice(a, b, h), slice(bq, b, h), slice(c, b, h), slice(dd, b, h), slice(vv, b, h), out, o);
      CHECK(bitwise_equal(out.data(), one.data() + (b * H + h) * n * e, n * e));
    }
}

// ---- GlobalPointer -----------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("properties: GlobalPointer batched == per sequence, heads == one head, threads",
                   "[properties][global_pointer]", float, double) {
  using T = TestType;
  const std::uint32_t seed = GENERATE(51u, 52u, 53u);
  Shapes r(seed);
  const Index B = r(1, 3), A = r(1, 3), d = 2 * r(1, 16), n = r(1, 60), D = r(1, 24);
  const kexue::RopeTable<T> table(n, d);
  kexue::GlobalPointerWeights<T> w;
  w.w = Eigen::Map<const Matrix<T>>(values<T>(D * 2 * A * d, seed, T(0.3)).data(), D, 2 * A * d);
  w.b = Eigen::Map<const Vector<T>>(values<T>(2 * A * d, seed + 1).data(), 2 * A * d);
  w.heads = A;
  w.head_size = d;
  const auto hv = values<T>(B * n * D, seed + 2);
  const Eigen::Map<const Matrix<T>> h(hv.data(), B * n, D);
  std::vector<Index> lengths;
  for (Index b = 0; b < B; ++b) lengths.push_back(r(0, n));
  auto run = [&] {
    std::vector<T> s(static_cast<std::size_t>(B * A * n * n), T(-7));
    kexue::global_pointer(w, table, h, Eigen::Map<Matrix<T>>(s.data(), B * A * n, n), lengths);
    return s;
  };
  const auto [one, two] = one_and_two_threads(run);
  CHECK(bitwise_equal(one, two));
  for (Index b = 0; b < B; ++b) {
    Matrix<T> s(A * n, n);
    kexue::global_pointer(w, table, h.middleRows(b * n, n), s, lengths[std::size_t(b)]);
    CHECK(bitwise_equal(s.data(), one.data() + b * A * n * n, A * n * n));
  }
  // Batched heads from projected q, k [B, A, n, d] (seq-major over one fused projection) equal one-head calls.
  const auto qk = values<T>(B * n * A * d, seed + 3), kk = values<T>(B * n * A * d, seed + 4);
  const auto qv = TensorView<const T>::seq_major(qk.data(), B, n, A, d), kv = TensorView<const T>::seq_major(kk.data(), B, n, A, d);
  auto run_heads = [&] {
    std::vector<T> s(static_cast<std::size_t>(B * A * n * n), T(-7));
    kexue::global_pointer(table, qv, kv, TensorView<T>::contiguous(s.data(), B, A, n, n), lengths);
    return s;
  };
  const auto [h1, h2] = one_and_two_threads(run_heads);
  CHECK(bitwise_equal(h1, h2));
  for (Index b = 0; b < B; ++b)
    for (Index a = 0; a < A; ++a) {
      Matrix<T> s(n, n);
      kexue::global_pointer(table, slice(qv, b, a), slice(kv, b, a), s, lengths[std::size_t(b)]);
      CHECK(bitwise_equal(s.data(), h1.data() + (b * A + a) * n * n, n * n));
    }
}

// ---- DDPM and random numbers -------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("properties: DDPM batched step == single steps, in place, threads", "[properties][ddpm]", float, double) {
  using T = TestType;
  const std::uint32_t seed = GENERATE(61u, 62u, 63u);
  Shapes r(seed);
  const kexue::DdpmSchedule sched(1000);
  const Index rows = r(1, 5), cols = r(0, 300);
  kexue::DdpmStepOptions o;
  o.prediction = static_cast<kexue::Prediction>(seed % 3);
  o.variance = seed % 2 ? kexue::Variance::FixedLarge : kexue::Variance::FixedSmall;
  std::vector<Index> t;
  for (Index i = 0; i < rows; ++i) t.push_back(r(0, 999));
  const auto m = values<T>(rows * cols, seed), x = values<T>(rows * cols, seed + 1), z = values<T>(rows * cols, seed + 2);
  using MC = Eigen::Map<const Matrix<T>>;
  Matrix<T> out(rows, cols);
  kexue::ddpm_step(sched, MC(m.data(), rows, cols), t, MC(x.data(), rows, cols), MC(z.data(), rows, cols), out, o);
  for (Index i = 0; i < rows; ++i) {
    kexue::DdpmStepOptions oi = o;
    oi.prev_t = t[std::size_t(i)] - 1;
    Vector<T> one(cols), inplace = MC(x.data(), rows, cols).row(i).transpose();
    kexue::ddpm_step(sched, MC(m.data(), rows, cols).row(i), t[std::size_t(i)], MC(x.data(), rows, cols).row(i),
                     MC(z.data(), rows, cols).row(i), one, oi);
    CHECK(bitwise_equal(one.data(), out.row(i).data(), cols));
    kexue::ddpm_step(sched, MC(m.data(), rows, cols).row(i), t[std::size_t(i)], inplace, MC(z.data(), rows, cols).row(i), inplace,
                     oi);  // documented: out may be the sample itself
    CHECK(bitwise_equal(inplace.data(), one.data(), cols));
  }
  // ddpm_add_noise and ddpm_velocity: out may be x0 or noise itself (documented), same bits as out of place.
  {
    const Index n = rows * cols, t0 = t[0];
    using VC = Eigen::Map<const Vector<T>>;
    Vector<T> ref(n), on_x = VC(x.data(), n), on_z = VC(z.data(), n);
    kexue::ddpm_add_noise(sched, VC(x.data(), n), VC(z.data(), n), t0, ref);
    kexue::ddpm_add_noise(sched, on_x, VC(z.data(), n), t0, on_x);
    kexue::ddpm_add_noise(sched, VC(x.data(), n), on_z, t0, on_z);
    CHECK(bitwise_equal(on_x.data(), ref.data(), n));
    CHECK(bitwise_equal(on_z.data(), ref.data(), n));
    Vector<T> vel(n), vel_x = VC(x.data(), n);
    kexue::ddpm_velocity(sched, VC(x.data(), n), VC(z.data(), n), t0, vel);
    kexue::ddpm_velocity(sched, vel_x, VC(z.data(), n), t0, vel_x);
    CHECK(bitwise_equal(vel_x.data(), vel.data(), n));
  }
  // A large flat step (several parallel chunks) and its Philox-fused form: 1 thread == 2 threads.
  const Index big = 70000 + r(0, 100);
  const auto mb = values<T>(big, seed + 3), xb = values<T>(big, seed + 4);
  auto run = [&] {
    Vector<T> out1(big);
    kexue::PhiloxGenerator g(seed, 5);
    kexue::ddpm_step(sched, Eigen::Map<const Vector<T>>(mb.data(), big), 500, Eigen::Map<const Vector<T>>(xb.data(), big), g, out1, o);
    return std::vector<T>(out1.data(), out1.data() + big);
  };
  const auto [one, two] = one_and_two_threads(run);
  CHECK(bitwise_equal(one, two));
}

TEMPLATE_TEST_CASE("properties: Philox fill is thread-count independent and split-invariant", "[properties][random]", float, double) {
  using T = TestType;
  const std::uint64_t seed = GENERATE(as<std::uint64_t>{}, 1, 99);
  const Index n = 4 * 512 * 32 + 777;  // above the serial threshold: the fill runs in parallel chunks
  auto run = [&] {
    std::vector<T> out(static_cast<std::size_t>(n));
    kexue::PhiloxGenerator g(seed, 3);
    g.normal(out.data(), n);
    return out;
  };
  const auto [one, two] = one_and_two_threads(run);
  CHECK(bitwise_equal(one, two));
  std::vector<T> parts(static_cast<std::size_t>(n));
  kexue::PhiloxGenerator g(seed, 3);
  g.normal(parts.data(), 1000);
  g.normal(parts.data() + 1000, n - 1000);
  CHECK(bitwise_equal(parts, one));
}
