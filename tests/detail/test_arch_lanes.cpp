// SPDX-License-Identifier: MIT
// The named lane helpers of detail/arch/ops.hpp (what kernels call: the per-architecture version where one exists)
// against their portable versions in detail/arch/generic.hpp, bit for bit, on the same inputs: values with every
// sign and magnitude (NaN and infinities included for the pure data movements), words with every bit pattern that
// matters for the integer multiply. Buffers are sized by the lane count, so the test runs on any width.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "catch_compat.hpp"
#include "kexue/detail/arch/ops.hpp"

namespace kd = kexue::detail;
namespace gen = kexue::detail::generic;
using kexue::Index;

namespace {

template <class T>
bool same_bits(const kd::Batch<T>& a, const kd::Batch<T>& b) {
  constexpr std::size_t L = kd::Batch<T>::size;
  alignas(64) T x[L], y[L];
  a.store_aligned(x);
  b.store_aligned(y);
  return std::memcmp(x, y, sizeof x) == 0;
}

template <class T>
std::vector<T> values(std::size_t n, std::uint32_t seed) {
  std::mt19937 e(seed);
  std::uniform_real_distribution<double> u(-3, 3);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(std::ldexp(u(e), int(e() % 40) - 20));
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("arch lane helpers equal their generic versions bit for bit", "[detail][arch]", float, double) {
  using T = TestType;
  using B = kd::Batch<T>;
  constexpr Index L = kd::kLanes<T>;
  INFO("arch " << kd::simd_arch_name() << ", " << L << " lanes");
  const Index n = 64 * L;
  std::vector<T> a = values<T>(std::size_t(n), 1), b = values<T>(std::size_t(n), 2), c = values<T>(std::size_t(n), 3);
  a[0] = std::numeric_limits<T>::quiet_NaN();
  a[1] = std::numeric_limits<T>::infinity();
  a[2] = -T(0);
  b[3] = T(0);
  int swap_bad = 0, dup_bad = 0, fms_bad = 0;
  for (Index i = 0; i + L <= n; i += L) {
    const B va = B::load_unaligned(&a[std::size_t(i)]), vb = B::load_unaligned(&b[std::size_t(i)]),
            vc = B::load_unaligned(&c[std::size_t(i)]);
    swap_bad += !same_bits<T>(kd::swap_adjacent<T>(va), gen::swap_adjacent<T>(va));
    // Every offset, so the pair loads are tried unaligned too (and read only L/2 values: a + n - L/2 is in range).
    dup_bad += !same_bits<T>(kd::load_dup_pairs<T>(&a[std::size_t(i + L / 2)]),
                             gen::load_dup_pairs<T>(&a[std::size_t(i + L / 2)]));
    if (i >= 4 * L) fms_bad += !same_bits<T>(kd::fmaddsub<T>(va, vb, vc), gen::fmaddsub<T>(va, vb, vc));
  }
  CHECK(swap_bad == 0);
  CHECK(dup_bad == 0);
  CHECK(fms_bad == 0);
  // The generic versions do what they say (so that agreeing with them means something).
  alignas(64) T x[L > 1 ? L : 2], y[L > 1 ? L : 2];
  gen::swap_adjacent<T>(B::load_unaligned(&b[0])).store_aligned(x);
  gen::load_dup_pairs<T>(&c[0]).store_aligned(y);
  for (Index l = 0; l < L; ++l) {
    CHECK(x[l] == b[std::size_t(l ^ 1)]);
    CHECK(y[l] == c[std::size_t(l / 2)]);
  }
  gen::fmaddsub<T>(B::load_unaligned(&a[4 * L]), B::load_unaligned(&b[4 * L]), B::load_unaligned(&c[4 * L]))
      .store_aligned(x);
  for (Index l = 0; l < L; ++l) {
    const std::size_t k = std::size_t(4 * L + l);
    CHECK(x[l] == kd::madd(a[k], b[k], l % 2 == 0 ? -c[k] : c[k]));
  }
}

TEMPLATE_TEST_CASE("arch fmadd / fnmadd / fmsub round as madd() in every lane", "[detail][arch]", float, double) {
  // Where kFusedFma, one rounding (on AVX-512 too, where xsimd 8.1's own fma is a multiply and an add); else two.
  using T = TestType;
  using B = kd::Batch<T>;
  constexpr Index L = kd::kLanes<T>;
  const Index n = 64 * L;
  std::vector<T> a = values<T>(std::size_t(n), 4), b = values<T>(std::size_t(n), 5), c = values<T>(std::size_t(n), 6);
  // Products whose rounding is visible: c close to -a b.
  for (Index i = 0; i < n; i += 3) c[std::size_t(i)] = -a[std::size_t(i)] * b[std::size_t(i)] * T(1.0000001);
  int bad = 0, generic_bad = 0;
  for (Index i = 0; i + L <= n; i += L) {
    const B va = B::load_unaligned(&a[std::size_t(i)]), vb = B::load_unaligned(&b[std::size_t(i)]),
            vc = B::load_unaligned(&c[std::size_t(i)]);
    alignas(64) T f[L], g[L], h[L];
    kd::fmadd<T>(va, vb, vc).store_aligned(f);
    kd::fnmadd<T>(va, vb, vc).store_aligned(g);
    kd::fmsub<T>(va, vb, vc).store_aligned(h);
    for (Index l = 0; l < L; ++l) {
      const std::size_t k = std::size_t(i + l);
      bad += f[l] != kd::madd(a[k], b[k], c[k]) || g[l] != kd::madd(-a[k], b[k], c[k]) ||
             h[l] != kd::madd(a[k], b[k], -c[k]);
    }
    generic_bad += !same_bits<T>(kd::fmadd<T>(va, vb, vc), gen::fmadd<T>(va, vb, vc)) ||
                   !same_bits<T>(kd::fnmadd<T>(va, vb, vc), gen::fnmadd<T>(va, vb, vc)) ||
                   !same_bits<T>(kd::fmsub<T>(va, vb, vc), gen::fmsub<T>(va, vb, vc));
  }
  CHECK(bad == 0);
  CHECK(generic_bad == 0);
  // sqrt is correctly rounded in every lane.
  int sqrt_bad = 0;
  for (Index i = 0; i + L <= n; i += L) {
    alignas(64) T r[L];
    kd::sqrt_ieee<T>(xsimd::abs(B::load_unaligned(&a[std::size_t(i)]))).store_aligned(r);
    for (Index l = 0; l < L; ++l) sqrt_bad += r[l] != std::sqrt(std::abs(a[std::size_t(i + l)]));
  }
  CHECK(sqrt_bad == 0);
}

TEST_CASE("arch mulhilo_u32 equals the 64-bit product", "[detail][arch]") {
  using U = kd::Batch<std::uint32_t>;
  constexpr std::size_t L = U::size;
  std::mt19937 e(5);
  std::vector<std::uint32_t> a(64 * L), m(64 * L);
  const std::uint32_t specials[] = {0u, 1u, 2u, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu, 0xD2511F53u, 0xCD9E8D57u};
  for (std::size_t i = 0; i < a.size(); ++i) {
    a[i] = i < 64 ? specials[i % 8] : e();
    m[i] = i < 64 ? specials[i / 8] : e();  // per-lane multipliers, not only broadcasts
  }
  int bad = 0, generic_bad = 0;
  for (std::size_t i = 0; i < a.size(); i += L) {
    const U va = U::load_unaligned(&a[i]), vm = U::load_unaligned(&m[i]);
    U hi, lo, ghi, glo;
    kd::mulhilo_u32(va, vm, &hi, &lo);
    gen::mulhilo_u32(va, vm, &ghi, &glo);
    bad += !same_bits<std::uint32_t>(hi, ghi) || !same_bits<std::uint32_t>(lo, glo);
    alignas(64) std::uint32_t h[L], l[L];
    ghi.store_aligned(h);
    glo.store_aligned(l);
    for (std::size_t k = 0; k < L; ++k) {
      const std::uint64_t p = std::uint64_t(a[i + k]) * m[i + k];
      generic_bad += h[k] != std::uint32_t(p >> 32) || l[k] != std::uint32_t(p);
    }
  }
  CHECK(bad == 0);
  CHECK(generic_bad == 0);
}

TEST_CASE("arch reinterpret, halves and opaque move bits unchanged", "[detail][arch]") {
  using F = kd::Batch<float>;
  using I = kd::Batch<std::int32_t>;
  using U = kd::Batch<std::uint32_t>;
  constexpr std::size_t L = F::size;
  std::vector<float> f = values<float>(4 * L, 9);
  f[0] = std::numeric_limits<float>::quiet_NaN();
  f[1] = -0.0f;
  const F v = F::load_unaligned(f.data());
  CHECK(same_bits<std::int32_t>(kd::reinterpret<std::int32_t>(v), gen::reinterpret<std::int32_t>(v)));
  CHECK(same_bits<std::uint32_t>(kd::reinterpret<std::uint32_t>(v), gen::reinterpret<std::uint32_t>(v)));
  const I iv = kd::reinterpret<std::int32_t>(v);
  const U uv = kd::reinterpret<std::uint32_t>(iv);
  CHECK(same_bits<float>(kd::reinterpret<float>(iv), v));
  CHECK(same_bits<float>(kd::reinterpret<float>(uv), v));
  CHECK(same_bits<float>(gen::reinterpret<float>(uv), v));
  alignas(64) std::uint32_t bits[L];
  uv.store_aligned(bits);
  for (std::size_t k = 0; k < L; ++k) {
    std::uint32_t want;
    std::memcpy(&want, &f[k], sizeof want);
    CHECK(bits[k] == want);
  }
  // store_halves / load_halves: lanes [0, L/2) and [L/2, L) to and from unrelated places.
  std::vector<float> lo(L, 7.0f), hi(L, 7.0f), glo(L, 7.0f), ghi(L, 7.0f);
  kd::store_halves<float>(lo.data() + 1, hi.data(), v);
  gen::store_halves<float>(glo.data() + 1, ghi.data(), v);
  CHECK(std::memcmp(lo.data(), glo.data(), L * sizeof(float)) == 0);
  CHECK(std::memcmp(hi.data(), ghi.data(), L * sizeof(float)) == 0);
  CHECK(std::memcmp(lo.data() + 1, f.data(), L / 2 * sizeof(float)) == 0);
  CHECK(std::memcmp(hi.data(), f.data() + L / 2, L / 2 * sizeof(float)) == 0);
  CHECK(lo[0] == 7.0f);  // nothing written before or after a half
  if (L / 2 + 1 < L) CHECK(lo[L / 2 + 1] == 7.0f);
  const F back = kd::load_halves<float>(f.data() + L, f.data() + 2 * L);
  CHECK(same_bits<float>(back, gen::load_halves<float>(f.data() + L, f.data() + 2 * L)));
  alignas(64) float w[L];
  back.store_aligned(w);
  for (std::size_t k = 0; k < L; ++k) CHECK(std::memcmp(&w[k], &f[k < L / 2 ? L + k : 2 * L + k - L / 2], 4) == 0);
  CHECK(same_bits<float>(kd::opaque<float>(v), v));
  CHECK(same_bits<float>(gen::opaque<float>(v), v));
}

TEMPLATE_TEST_CASE("arch load_widen / store_narrow equal their generic versions bit for bit", "[detail][arch][half]",
                   Eigen::half, Eigen::bfloat16) {
  // Every 16-bit pattern widened; floats of every class (random bits, ties, NaNs with payloads, subnormals,
  // fp16 overflow) narrowed; at every offset, so unaligned loads and stores run too. The generic versions are
  // themselves checked against torch's bits in tests/test_half.cpp.
  using H = TestType;
  using F = kd::Batch<float>;
  constexpr std::size_t L = F::size;
  INFO("arch " << kd::simd_arch_name() << ", " << L << " lanes");
  std::vector<H> h(65536 + L);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = gen::from_bits16<H>(std::uint16_t(i));
  int widen_bad = 0;
  for (std::size_t i = 0; i + L <= h.size(); i += L - 1) {  // stride L - 1: every offset mod L
    widen_bad += !same_bits<float>(kd::load_widen<H>(&h[i]), gen::load_widen<H>(&h[i]));
  }
  CHECK(widen_bad == 0);
  std::mt19937 e(13);
  std::vector<float> f(1 << 15);
  const std::uint32_t specials[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFFFFFFFFu, 0x7FBFE000u, 0x7F800000u,
                                    0xFF800000u, 0x477FF000u, 0x477FEFFFu, 0x477FE000u, 0x33000000u, 0x33000001u,
                                    0x00018000u, 0x00008000u, 0x3F808000u, 0x3F818000u, 0x7F7FFFFFu, 0x80000000u};
  for (std::size_t i = 0; i < f.size(); ++i) {
    const std::uint32_t r = e();
    // Random bits; and bits with the low 13 or 16 bits forced to a tie.
    const std::uint32_t u = i < 18 ? specials[i] : i % 3 == 0 ? r : i % 3 == 1 ? (r & ~0x1FFFu) | 0x1000u : (r & ~0xFFFFu) | 0x8000u;
    std::memcpy(&f[i], &u, 4);
  }
  int narrow_bad = 0;
  std::vector<H> a(L + 1), b(L + 1);
  for (std::size_t i = 0; i + L <= f.size(); i += L - 1) {
    const F v = F::load_unaligned(&f[i]);
    const std::size_t off = (i / (L > 1 ? L - 1 : 1)) % 2;  // odd and even output addresses
    kd::store_narrow<H>(&a[off], v);
    gen::store_narrow<H>(&b[off], v);
    for (std::size_t l = 0; l < L; ++l) narrow_bad += gen::bits16(a[off + l]) != gen::bits16(b[off + l]);
  }
  CHECK(narrow_bad == 0);
  // The generic versions do what they say: the scalar conversion in every lane.
  alignas(64) float w[L];
  gen::load_widen<H>(&h[0x3C00]).store_aligned(w);
  for (std::size_t l = 0; l < L; ++l) CHECK(gen::bits_float(gen::float_bits(w[l])) == gen::to_float(h[0x3C00 + l]));
  gen::store_narrow<H>(&a[0], F::load_unaligned(&f[0]));
  for (std::size_t l = 0; l < L; ++l) CHECK(gen::bits16(a[l]) == gen::bits16(gen::from_float<H>(f[l])));
}

TEST_CASE("arch dot_bf16_pairs equals its generic version on normal numbers", "[detail][arch][half]") {
  // vdpbf16ps (where kNativeBf16Dot) against two widened FMAs, odd product first; normal inputs and results
  // only (the instruction flushes subnormals to zero).
  using F = kd::Batch<float>;
  using U = kd::Batch<std::uint32_t>;
  constexpr std::size_t L = F::size;
  INFO("arch " << kd::simd_arch_name() << (kd::kNativeBf16Dot ? ", vdpbf16ps" : ", no native bf16 dot"));
  std::mt19937 e(21);
  auto normal_bf16 = [&] { return std::uint32_t(((e() % 60) + 100) << 7 | (e() & 0x807Fu)); };
  int bad = 0;
  for (int it = 0; it < 4000; ++it) {
    alignas(64) std::uint32_t a[L], b[L];
    alignas(64) float c[L];
    for (std::size_t l = 0; l < L; ++l) {
      a[l] = normal_bf16() | normal_bf16() << 16;
      b[l] = normal_bf16() | normal_bf16() << 16;
      c[l] = std::ldexp(float(int(e() % 2000000) - 1000000), int(e() % 30) - 40);
    }
    const F acc = F::load_aligned(c);
    const U va = U::load_aligned(a), vb = U::load_aligned(b);
    bad += !same_bits<float>(kd::dot_bf16_pairs(acc, va, vb), gen::dot_bf16_pairs(acc, va, vb));
  }
  CHECK(bad == 0);
  // The generic version is the chain it documents.
  alignas(64) std::uint32_t a[L], b[L];
  alignas(64) float c[L], r[L];
  for (std::size_t l = 0; l < L; ++l) {
    a[l] = 0x3F804000u + std::uint32_t(l);  // pairs (bf16 1.0 + l ulp, bf16 1.5)... as bits
    b[l] = 0x40003F81u;
    c[l] = 0.25f * float(l);
  }
  gen::dot_bf16_pairs(F::load_aligned(c), U::load_aligned(a), U::load_aligned(b)).store_aligned(r);
  for (std::size_t l = 0; l < L; ++l) {
    const float ae = gen::bits_float(a[l] << 16), ao = gen::bits_float(a[l] & 0xFFFF0000u);
    const float be = gen::bits_float(b[l] << 16), bo = gen::bits_float(b[l] & 0xFFFF0000u);
    CHECK(r[l] == std::fma(ae, be, std::fma(ao, bo, c[l])));
  }
}

TEST_CASE("arch round_bf16_pairs equals its generic version, which rounds to nearest even after flushing subnormals",
          "[detail][arch][half]") {
  using F = kd::Batch<float>;
  using U = kd::Batch<std::uint32_t>;
  constexpr std::size_t L = F::size;
  INFO("arch " << kd::simd_arch_name());
  std::mt19937 e(22);
  // Every class but NaN: normals, ties (low 16 bits 0x8000), subnormals, zeros, values that round to inf, inf.
  auto any_float = [&]() -> float {
    std::uint32_t u = e();
    switch (e() % 6) {
      case 0: u = (u & 0x807F0000u) | (e() % 2 ? 0x8000u : 0x7FFFu) | (u & 0x3F800000u); break;
      case 1: u &= 0x807FFFFFu; break;                                    // subnormal or zero
      case 2: u = (u & 0x80000000u) | (0x7F7F8000u + (u & 0x7FFFu)); break;  // at or above bf16 max + half an ulp
      case 3: u = (u & 0x80000000u) | 0x7F800000u; break;                  // inf
      default: break;
    }
    if ((u & 0x7F800000u) == 0x7F800000u) u &= 0xFF800000u;  // no NaN
    return gen::bits_float(u);
  };
  int bad = 0, wrong = 0;
  for (int it = 0; it < 20000; ++it) {
    alignas(64) float lo[L], hi[L];
    alignas(64) std::uint32_t got[L], want[L];
    for (std::size_t l = 0; l < L; ++l) lo[l] = any_float(), hi[l] = any_float();
    kd::round_bf16_pairs(F::load_aligned(lo), F::load_aligned(hi)).store_aligned(got);
    gen::round_bf16_pairs(F::load_aligned(lo), F::load_aligned(hi)).store_aligned(want);
    for (std::size_t l = 0; l < L; ++l) {
      bad += got[l] != want[l];
      auto one = [](float x) -> std::uint32_t {
        const std::uint32_t u = gen::float_bits(x);
        const float flushed = (u & 0x7FFFFFFFu) < 0x00800000u ? gen::bits_float(u & 0x80000000u) : x;
        return gen::bits16(gen::from_float<Eigen::bfloat16>(flushed));
      };
      wrong += want[l] != (one(lo[l]) | one(hi[l]) << 16);
    }
  }
  CHECK(bad == 0);
  CHECK(wrong == 0);
  // The pair layout dot_bf16_pairs reads: lo in the low half (the even element).
  alignas(64) float lo[L], hi[L];
  for (std::size_t l = 0; l < L; ++l) lo[l] = 1.5f + float(l), hi[l] = -0.25f * float(l + 1);
  const U pairs = kd::round_bf16_pairs(F::load_aligned(lo), F::load_aligned(hi));
  alignas(64) float even[L], odd[L];
  kd::bf16_even(pairs).store_aligned(even);
  kd::bf16_odd(pairs).store_aligned(odd);
  for (std::size_t l = 0; l < L; ++l) {
    CHECK(even[l] == lo[l]);
    CHECK(odd[l] == hi[l]);
  }
}

TEMPLATE_TEST_CASE("arch store_stream stores what its generic version stores", "[detail][arch]", float, double) {
  using T = TestType;
  using B = kd::Batch<T>;
  constexpr Index L = kd::kLanes<T>;
  const Index n = 16 * L;
  std::vector<T> v = values<T>(std::size_t(n), 7);
  v[0] = std::numeric_limits<T>::quiet_NaN();
  v[1] = -std::numeric_limits<T>::infinity();
  v[2] = -T(0);
  alignas(64) T got[16 * 16], want[16 * 16];  // 16 registers of up to 16 lanes, register-aligned
  std::memset(got, 0x5A, sizeof got);
  std::memset(want, 0x5A, sizeof want);
  for (Index i = 0; i + L <= n; i += L) {
    const B x = B::load_unaligned(&v[std::size_t(i)]);
    kd::store_stream<T>(got + i, x);
    gen::store_stream<T>(want + i, x);
  }
  kd::stream_fence();
  CHECK(std::memcmp(got, want, sizeof got) == 0);
  CHECK(std::memcmp(got, v.data(), std::size_t(n) * sizeof(T)) == 0);  // and the generic one stores v
}

TEMPLATE_TEST_CASE("arch at_least equals its generic version, and a NaN x gives the bound", "[detail][arch]", float,
                   double) {
  using T = TestType;
  using B = kd::Batch<T>;
  constexpr Index L = kd::kLanes<T>;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  // Every pair from this list, as x and as the bound, in every lane position.
  const std::vector<T> special = {nan, -nan, inf, -inf, T(0), -T(0), T(1), T(-1), T(2.5), std::numeric_limits<T>::max(),
                                  std::numeric_limits<T>::denorm_min()};
  std::vector<T> xs, bs;
  for (T a : special)
    for (T b : special) {
      xs.push_back(a);
      bs.push_back(b);
    }
  while (xs.size() % std::size_t(L) != 0) {
    xs.push_back(T(0.5));
    bs.push_back(T(-0.5));
  }
  int arch_bad = 0, rule_bad = 0;
  for (std::size_t i = 0; i < xs.size(); i += std::size_t(L)) {
    const B x = B::load_unaligned(&xs[i]), b = B::load_unaligned(&bs[i]);
    arch_bad += !same_bits<T>(kd::at_least<T>(x, b), gen::at_least<T>(x, b));
    alignas(64) T got[L > 1 ? L : 2];
    gen::at_least<T>(x, b).store_aligned(got);
    for (Index l = 0; l < L; ++l) {  // the generic version is the stated expression, bit for bit
      const T xv = xs[i + std::size_t(l)], bv = bs[i + std::size_t(l)];
      const T want = bv < xv ? xv : bv;
      rule_bad += std::memcmp(&got[l], &want, sizeof(T)) != 0;
      if (std::isnan(xv) && !std::isnan(bv)) rule_bad += std::memcmp(&got[l], &bv, sizeof(T)) != 0;
    }
  }
  CHECK(arch_bad == 0);
  CHECK(rule_bad == 0);
}
