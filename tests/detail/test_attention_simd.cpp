// SPDX-License-Identifier: MIT
// The bf16-pairs micro-kernels of detail/attention_simd.hpp (the q, k, v bf16 attention's products where
// kPreferBf16Dot) against scalar references written here, bit for bit, on whatever width and instruction set this
// build has (vdpbf16ps and vcvtne2ps2bf16 under AVX512-BF16, the widened generic forms elsewhere):
// - pair_dot: C (op)= the chain (c + a_odd b_odd) + a_even b_even over the pairs, each addition rounded to float;
// - pair_dot_masked: the same chain with each hidden (row, key) product left out, equal to pair_dot where V is
//   finite, and unaffected by inf / NaN in the V of keys no row sees;
// - pack_weight_pairs: each weight rounded to nearest even (subnormals flushed), odd key counts padded with 0,
//   squared-ReLU weights saturated at the largest bf16.
// Inputs are normal numbers only: vdpbf16ps flushes subnormal inputs and results to zero, the generic form does not.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "catch_compat.hpp"
#include "kexue/detail/attention_kernel.hpp"  // kRowRegs; the micro-kernels are in attention_simd.hpp

namespace kd = kexue::detail;
using kexue::Index;

namespace {

constexpr int NR = kd::kRowRegs;
constexpr Index L = kd::kLanes<float>;
constexpr Index W = NR * L;

float bits_float(std::uint32_t u) { return kd::generic::bits_float(u); }
float even_of(std::uint32_t pair) { return bits_float(pair << 16); }
float odd_of(std::uint32_t pair) { return bits_float(pair & 0xFFFF0000u); }

/// A normal bf16 of either sign with magnitude in [2^-27, 2^5).
std::uint32_t normal_bf16(std::mt19937& e) { return std::uint32_t(((e() % 32) + 100) << 7 | (e() & 0x807Fu)); }
std::uint32_t normal_pair(std::mt19937& e) { return normal_bf16(e) | normal_bf16(e) << 16; }

template <class X>
kd::AlignedVector<X> aligned(std::size_t n, X fill = X()) {
  return kd::AlignedVector<X>(n, fill);
}

}  // namespace

TEST_CASE("pair_dot equals the pair chain in float, bit for bit", "[detail][attention][pairs]") {
  INFO("arch " << kd::simd_arch_name() << (kd::kNativeBf16Dot ? ", vdpbf16ps" : ", widened pairs"));
  std::mt19937 e(5);
  for (Index nt : {Index(1), Index(2), Index(7), Index(32)}) {
    for (Index nx : {Index(1), Index(3), Index(4), Index(5), Index(kd::kBlockCols + 3), Index(64)}) {
      for (Index bx_is_one : {0, 1}) {
        // The two layouts of the attention kernel: q k^T (B rows of nt pairs: bx = nt, bt = 1) and P V (B rows of
        // nx columns per key pair: bx = 1, bt = nx).
        const Index bx = bx_is_one ? 1 : nt, bt = bx_is_one ? nx : 1;
        auto A = aligned<std::uint32_t>(std::size_t(nt * W));
        auto B = aligned<std::uint32_t>(std::size_t(nt * nx));
        for (auto& a : A) a = normal_pair(e);
        for (auto& b : B) b = normal_pair(e);
        auto C = aligned<float>(std::size_t(nx * W)), C0 = aligned<float>(std::size_t(nx * W));
        auto alpha = aligned<float>(std::size_t(W));
        for (auto& c : C0) c = std::ldexp(float(int(e() % 2000) - 1000), -9);
        for (auto& a : alpha) a = std::ldexp(float(e() % 1000 + 1), -10);
        for (int scale_add = 0; scale_add < 2; ++scale_add) {
          C = C0;
          if (scale_add)
            kd::pair_dot<NR, kd::Combine::ScaleAdd>(A.data(), W, B.data(), bx, bt, nt, nx, C.data(), W, alpha.data());
          else
            kd::pair_dot<NR, kd::Combine::Store>(A.data(), W, B.data(), bx, bt, nt, nx, C.data(), W, nullptr);
          int bad = 0;
          for (Index x = 0; x < nx; ++x)
            for (Index r = 0; r < W; ++r) {
              float acc = 0.0f;
              for (Index t = 0; t < nt; ++t) {
                const std::uint32_t a = A[std::size_t(t * W + r)], b = B[std::size_t(x * bx + t * bt)];
                acc = acc + odd_of(a) * odd_of(b);  // products of two bf16 are exact in float
                acc = acc + even_of(a) * even_of(b);
              }
              const float c0 = C0[std::size_t(x * W + r)];
              const float want = scale_add ? kd::madd(c0, alpha[std::size_t(r)], acc) : acc;
              bad += std::memcmp(&want, &C[std::size_t(x * W + r)], sizeof want) != 0;
            }
          CAPTURE(nt, nx, bx, scale_add);
          CHECK(bad == 0);
        }
      }
    }
  }
}

TEST_CASE("pair_dot_masked leaves hidden products out and equals pair_dot where V is finite",
          "[detail][attention][pairs]") {
  std::mt19937 e(6);
  for (Index nb : {Index(1), Index(2), Index(9), Index(63), Index(64)}) {
    for (int kind = 0; kind < 4; ++kind) {  // keys mask, lower window edge, upper edge, all three
      const Index nt = (nb + 1) / 2, dv = 11;
      std::vector<unsigned char> keys(std::size_t(nb + 1), 1);
      auto lo = aligned<float>(std::size_t(W)), hi = aligned<float>(std::size_t(W));
      kd::TileMask<float> tm;
      if (kind == 0 || kind == 3) {
        for (auto& k : keys) k = e() % 3 != 0;
        tm.keys = keys.data();
      }
      for (Index r = 0; r < W; ++r) {
        lo[std::size_t(r)] = float(std::min<Index>(nb, r / 3));
        hi[std::size_t(r)] = float(std::max<Index>(0, nb - r / 2));
      }
      if (kind == 1 || kind == 3) tm.lo = lo.data();
      if (kind == 2 || kind == 3) tm.hi = hi.data();
      auto visible = [&](Index r, Index j) {
        return j < nb && (!tm.keys || keys[std::size_t(j)]) && (!tm.lo || float(j) >= lo[std::size_t(r)]) &&
               (!tm.hi || float(j) < hi[std::size_t(r)]);
      };
      // Weights: 0 where hidden (as the softmax leaves them), normal bf16 elsewhere; the padding key's weight is 0.
      auto A = aligned<std::uint32_t>(std::size_t(nt * W));
      for (Index t = 0; t < nt; ++t)
        for (Index r = 0; r < W; ++r) {
          const std::uint32_t pe = visible(r, 2 * t) ? normal_bf16(e) & 0x7FFFu : 0u;
          const std::uint32_t po = visible(r, 2 * t + 1) ? normal_bf16(e) & 0x7FFFu : 0u;
          A[std::size_t(t * W + r)] = pe | po << 16;
        }
      auto V = aligned<std::uint32_t>(std::size_t(nt * dv));
      for (auto& v : V) v = normal_pair(e);
      auto C0 = aligned<float>(std::size_t(dv * W)), alpha = aligned<float>(std::size_t(W), 0.5f);
      for (auto& c : C0) c = float(int(e() % 200) - 100) / 64.0f;
      auto plain = C0, masked = C0;
      kd::pair_dot<NR, kd::Combine::ScaleAdd>(A.data(), W, V.data(), 1, dv, nt, dv, plain.data(), W, alpha.data());
      kd::pair_dot_masked<NR>(A.data(), W, V.data(), dv, nt, nb, dv, masked.data(), W, alpha.data(), tm);
      CAPTURE(nb, kind);
      CHECK(std::memcmp(plain.data(), masked.data(), plain.size() * sizeof(float)) == 0);
      // inf / NaN in V where no row sees the key (masked keys, and the padding key of an odd nb): the masked
      // kernel gives the same bits; the scalar chain with hidden products left out agrees.
      bool poisoned = false;
      for (Index j = 0; j < 2 * nt; ++j) {
        bool seen = false;
        for (Index r = 0; r < W; ++r) seen |= visible(r, j);
        if (seen) continue;
        poisoned = true;
        for (Index c = 0; c < dv; ++c) {
          std::uint32_t& v = V[std::size_t(j / 2 * dv + c)];
          const std::uint32_t bad = (c % 2) ? 0x7FC0u : 0xFF80u;  // NaN, -inf
          v = j % 2 ? ((v & 0xFFFFu) | bad << 16) : ((v & 0xFFFF0000u) | bad);
        }
      }
      // The scalar chain with hidden products left out, against got (NaN matches NaN: only the payload may differ).
      auto chain_mismatches = [&](const kd::AlignedVector<float>& got) {
        int differ = 0;
        for (Index x = 0; x < dv; ++x)
          for (Index r = 0; r < W; ++r) {
            float acc = 0.0f;
            for (Index t = 0; t < nt; ++t) {
              const std::uint32_t a = A[std::size_t(t * W + r)], b = V[std::size_t(t * dv + x)];
              if (visible(r, 2 * t + 1)) acc = acc + odd_of(a) * odd_of(b);
              if (visible(r, 2 * t)) acc = acc + even_of(a) * even_of(b);
            }
            const float want = kd::madd(C0[std::size_t(x * W + r)], 0.5f, acc), g = got[std::size_t(x * W + r)];
            differ += !(std::isnan(want) && std::isnan(g)) && std::memcmp(&want, &g, sizeof want) != 0;
          }
        return differ;
      };
      auto again = C0;
      kd::pair_dot_masked<NR>(A.data(), W, V.data(), dv, nt, nb, dv, again.data(), W, alpha.data(), tm);
      CHECK(std::memcmp(again.data(), masked.data(), again.size() * sizeof(float)) == 0);
      CHECK(chain_mismatches(again) == 0);
      if (nb % 2 == 1) CHECK(poisoned);  // at least the padding key
      // inf / NaN also in keys only some rows see (a window edge): those rows get NaN or inf, the others keep the
      // scalar chain's bits.
      for (Index j = 0; j < nb; ++j) {
        bool hidden_somewhere = false;
        for (Index r = 0; r < W; ++r) hidden_somewhere |= !visible(r, j);
        if (!hidden_somewhere || j % 3 != 0) continue;
        std::uint32_t& v = V[std::size_t(j / 2 * dv + j % dv)];
        v = j % 2 ? ((v & 0xFFFFu) | 0x7F800000u) : ((v & 0xFFFF0000u) | 0x7FC0u);  // +inf, NaN
      }
      auto window = C0;
      kd::pair_dot_masked<NR>(A.data(), W, V.data(), dv, nt, nb, dv, window.data(), W, alpha.data(), tm);
      CHECK(chain_mismatches(window) == 0);
    }
  }
}

TEST_CASE("pair_dot_masked takes the plain kernel's arithmetic for tiny products too", "[detail][attention][pairs]") {
  // V of magnitude 2^-118 and weights below 1: products and sums in float's subnormal range, which vdpbf16ps
  // flushes to zero. The masked kernel runs the same dot_bf16_pairs, so it still gives the plain kernel's bits.
  std::mt19937 e(8);
  const Index nb = 40, nt = nb / 2, dv = 9;
  std::vector<unsigned char> keys(static_cast<std::size_t>(nb));
  for (auto& k : keys) k = e() % 4 != 0;
  kd::TileMask<float> tm;
  tm.keys = keys.data();
  auto A = aligned<std::uint32_t>(std::size_t(nt * W));
  for (Index t = 0; t < nt; ++t)
    for (Index r = 0; r < W; ++r) {
      const std::uint32_t pe = keys[std::size_t(2 * t)] ? 0x3F00u + (e() & 0x7Fu) : 0u;  // [0.5, 1)
      const std::uint32_t po = keys[std::size_t(2 * t + 1)] ? 0x3E00u + (e() & 0xFFu) : 0u;
      A[std::size_t(t * W + r)] = pe | po << 16;
    }
  auto V = aligned<std::uint32_t>(std::size_t(nt * dv));
  for (auto& v : V) v = (0x0480u | (e() & 0x807Fu)) | (0x0480u | (e() & 0x807Fu)) << 16;  // +-2^-118 .. 2^-117
  auto C0 = aligned<float>(std::size_t(dv * W), 0.0f), alpha = aligned<float>(std::size_t(W), 1.0f);
  auto plain = C0, masked = C0;
  kd::pair_dot<NR, kd::Combine::ScaleAdd>(A.data(), W, V.data(), 1, dv, nt, dv, plain.data(), W, alpha.data());
  kd::pair_dot_masked<NR>(A.data(), W, V.data(), dv, nt, nb, dv, masked.data(), W, alpha.data(), tm);
  CHECK(std::memcmp(plain.data(), masked.data(), plain.size() * sizeof(float)) == 0);
}

TEST_CASE("pack_weight_pairs rounds each weight to nearest even, pads odd key counts, saturates when asked",
          "[detail][attention][pairs]") {
  std::mt19937 e(7);
  for (Index nb : {Index(1), Index(2), Index(17), Index(64)}) {
    auto P = aligned<float>(std::size_t(nb * W));
    for (auto& p : P) {
      switch (e() % 5) {
        case 0: p = bits_float(e() & 0x007FFFFFu); break;                       // subnormal or 0
        case 1: p = bits_float((e() % 0x3F800000u) & 0xFFFF8000u); break;        // a tie (or exact)
        case 2: p = bits_float(0x7F7F8000u + (e() & 0x7FFFu)); break;            // above the largest bf16
        case 3: p = std::numeric_limits<float>::infinity(); break;
        default: p = bits_float(e() % 0x3F800001u); break;                      // [0, 1]
      }
    }
    const Index nt = (nb + 1) / 2;
    for (int saturate = 0; saturate < 2; ++saturate) {
      auto got = aligned<std::uint32_t>(std::size_t(nt * W), 0xDEADBEEFu);
      if (saturate)
        kd::pack_weight_pairs<NR, true>(P.data(), nb, got.data());
      else
        kd::pack_weight_pairs<NR, false>(P.data(), nb, got.data());
      auto one = [&](Index j, Index r) -> std::uint32_t {
        if (j >= nb) return 0u;
        float p = P[std::size_t(j * W + r)];
        if (saturate) p = std::min(p, bits_float(0x7F7F0000u));
        if (p < std::numeric_limits<float>::min()) p = 0.0f;  // flushed
        return kd::generic::bits16(kd::generic::from_float<Eigen::bfloat16>(p));
      };
      int bad = 0;
      for (Index t = 0; t < nt; ++t)
        for (Index r = 0; r < W; ++r) bad += got[std::size_t(t * W + r)] != (one(2 * t, r) | one(2 * t + 1, r) << 16);
      CAPTURE(nb, saturate);
      CHECK(bad == 0);
    }
  }
}
