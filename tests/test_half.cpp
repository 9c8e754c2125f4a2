// SPDX-License-Identifier: MIT
// kexue::convert and the 16-bit storage types: bit for bit against torch's `.to(torch.float16 / torch.bfloat16)`
// (tests/reference/data/half.txt, every float32 class), exhaustively against an independent formula for the
// widening, through every length and pointer offset (vector bodies and scalar tails), and the bad-input contract.
#include "kexue/half.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "catch_compat.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

namespace kd = kexue::detail;
using kexue::Index;
using kexue_test::RefData;
using kexue_test::throws_with;

namespace {

float f32(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
std::uint32_t bits32(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
template <class H>
std::uint16_t bits16(H h) {
  std::uint16_t u;
  std::memcpy(&u, static_cast<const void*>(&h), 2);
  return u;
}
template <class H>
H from16(std::uint16_t u) {
  H h;
  std::memcpy(static_cast<void*>(&h), &u, 2);
  return h;
}

/// Narrows x with kexue::convert at a pointer offset (so vector bodies, unaligned loads and scalar tails all
/// run) and returns the bits; the 16-bit guard values around the output must survive.
template <class H>
std::vector<std::uint16_t> narrow(const std::vector<float>& x, Index offset) {
  const Index n = Index(x.size());
  std::vector<float> src(std::size_t(n + offset), 0.0f);
  if (n > 0) std::memcpy(src.data() + offset, x.data(), x.size() * 4);
  std::vector<H> dst(std::size_t(n + offset + 8), from16<H>(0x5A5A));
  kexue::convert(Eigen::Map<const kexue::Vector<float>>(src.data() + offset, n),
                 Eigen::Map<kexue::Vector<H>>(dst.data() + offset, n));
  std::vector<std::uint16_t> out(x.size());
  for (Index i = 0; i < n; ++i) out[std::size_t(i)] = bits16(dst[std::size_t(offset + i)]);
  for (Index i = 0; i < offset; ++i) CHECK(bits16(dst[std::size_t(i)]) == 0x5A5A);
  for (Index i = 0; i < 8; ++i) CHECK(bits16(dst[std::size_t(offset + n + i)]) == 0x5A5A);
  return out;
}

/// The same for widening; dst_offset floats into a 64-byte-aligned buffer (the kernel aligns its stores to the
/// register and streams outputs past kConvertStreamBytes), with guard values on both sides.
template <class H>
std::vector<std::uint32_t> widen(const std::vector<std::uint16_t>& h, Index offset, Index dst_offset = 0) {
  const Index n = Index(h.size());
  std::vector<H> src(std::size_t(n + offset), from16<H>(0));
  for (Index i = 0; i < n; ++i) src[std::size_t(offset + i)] = from16<H>(h[std::size_t(i)]);
  kd::AlignedVector<float> dst(std::size_t(dst_offset + n + 8), 7.0f);
  kexue::convert(Eigen::Map<const kexue::Vector<H>>(src.data() + offset, n),
                 Eigen::Map<kexue::Vector<float>>(dst.data() + dst_offset, n));
  int guards = 0;
  for (Index i = 0; i < dst_offset; ++i) guards += dst[std::size_t(i)] != 7.0f;
  for (Index i = 0; i < 8; ++i) guards += dst[std::size_t(dst_offset + n + i)] != 7.0f;
  CHECK(guards == 0);
  std::vector<std::uint32_t> out(h.size());
  for (Index i = 0; i < n; ++i) out[std::size_t(i)] = bits32(dst[std::size_t(dst_offset + i)]);
  return out;
}

/// Independent fp16 -> float: the value (-1)^s m 2^(e-25) computed in double.
std::uint32_t half_to_float_formula(std::uint16_t h) {
  const bool neg = (h & 0x8000) != 0;
  const int e = (h >> 10) & 0x1F, m = h & 0x3FF;
  if (e == 0x1F) {
    if (m == 0) return neg ? 0xFF800000u : 0x7F800000u;
    return (neg ? 0x80000000u : 0u) | 0x7FC00000u | (std::uint32_t(m) << 13);  // quiet, payload kept
  }
  const double v = e == 0 ? std::ldexp(double(m), -24) : std::ldexp(double(m + 1024), e - 25);
  return bits32(float(neg ? -v : v));
}

}  // namespace

TEST_CASE("convert float -> fp16 / bf16 equals torch's .to() bit for bit on every float32 class", "[half]") {
  RefData ref("half");
  const auto& in = ref.values("narrow/f32");
  const auto& want_h = ref.values("narrow/f16");
  const auto& want_b = ref.values("narrow/bf16");
  std::vector<float> x;
  for (double b : in) x.push_back(f32(std::uint32_t(b)));
  INFO("arch " << kd::simd_arch_name());
  for (Index offset : {0, 1, 3}) {
    const auto h = narrow<Eigen::half>(x, offset);
    const auto b = narrow<Eigen::bfloat16>(x, offset);
    int bad_h = 0, bad_b = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (h[i] != std::uint16_t(want_h[i]) && bad_h++ < 5)
        UNSCOPED_INFO("fp16 of 0x" << std::hex << bits32(x[i]) << ": 0x" << h[i] << " want 0x"
                                    << std::uint16_t(want_h[i]));
      if (b[i] != std::uint16_t(want_b[i]) && bad_b++ < 5)
        UNSCOPED_INFO("bf16 of 0x" << std::hex << bits32(x[i]) << ": 0x" << b[i] << " want 0x"
                                    << std::uint16_t(want_b[i]));
      // The scalar helpers (tails, references) agree too.
      bad_h += bits16(kd::from_float<Eigen::half>(x[i])) != std::uint16_t(want_h[i]);
      bad_b += bits16(kd::from_float<Eigen::bfloat16>(x[i])) != std::uint16_t(want_b[i]);
    }
    CHECK(bad_h == 0);
    CHECK(bad_b == 0);
  }
}

TEST_CASE("convert fp16 / bf16 -> float equals torch's .to(torch.float32) bit for bit", "[half]") {
  RefData ref("half");
  for (const char* name : {"f16", "bf16"}) {
    const auto& h = ref.values(std::string("widen_") + name + "/h");
    const auto& want = ref.values(std::string("widen_") + name + "/f32");
    std::vector<std::uint16_t> hb;
    for (double v : h) hb.push_back(std::uint16_t(v));
    for (Index offset : {0, 1, 5}) {
      const auto got = std::string(name) == "f16" ? widen<Eigen::half>(hb, offset) : widen<Eigen::bfloat16>(hb, offset);
      int bad = 0;
      for (std::size_t i = 0; i < hb.size(); ++i) bad += got[i] != std::uint32_t(want[i]);
      INFO(name << " offset " << offset);
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("widening every 16-bit pattern is exact, and narrowing it back is the identity", "[half]") {
  std::vector<std::uint16_t> all(65536);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = std::uint16_t(i);
  const auto hf = widen<Eigen::half>(all, 0);
  const auto bf = widen<Eigen::bfloat16>(all, 0);
  std::vector<float> hx(all.size()), bx(all.size());
  int bad_h = 0, bad_b = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    bad_h += hf[i] != half_to_float_formula(all[i]);
    bad_b += bf[i] != std::uint32_t(all[i]) << 16;  // bf16 is the upper half of a float, NaNs included (torch too)
    hx[i] = f32(hf[i]);
    bx[i] = f32(bf[i]);
  }
  CHECK(bad_h == 0);
  CHECK(bad_b == 0);
  const auto h2 = narrow<Eigen::half>(hx, 0);
  const auto b2 = narrow<Eigen::bfloat16>(bx, 0);
  int round_h = 0, round_b = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    const bool nan_h = (all[i] & 0x7FFF) > 0x7C00, nan_b = (all[i] & 0x7FFF) > 0x7F80;
    round_h += nan_h ? h2[i] != ((all[i] & 0x8000) | 0x7E00) : h2[i] != all[i];
    round_b += nan_b ? b2[i] != kd::kBf16NaN : b2[i] != all[i];
  }
  CHECK(round_h == 0);
  CHECK(round_b == 0);
}

TEST_CASE("the vector conversions equal the scalar ones on random bits at every length", "[half]") {
  // Random bit patterns (every class, in proportion) and random values near 1 and near fp16's limits.
  std::mt19937 e(77);
  std::vector<float> x(1 << 16);
  for (std::size_t i = 0; i < x.size(); ++i) {
    switch (i % 3) {
      case 0: x[i] = f32(e()); break;
      case 1: x[i] = std::ldexp(float(e() % 1000000) / 1e6f + 0.5f, int(e() % 50) - 30); break;
      default: x[i] = f32((e() % 0x10000000u) + 0x30000000u); break;
    }
  }
  int bad = 0;
  for (Index n : {Index(0), Index(1), Index(3), Index(7), Index(15), Index(16), Index(17), Index(33), Index(65), Index(65536)}) {
    for (Index offset : {0, 1, 4}) {
      std::vector<float> part(x.begin(), x.begin() + n);
      const auto h = narrow<Eigen::half>(part, offset);
      const auto b = narrow<Eigen::bfloat16>(part, offset);
      for (Index i = 0; i < n; ++i) {
        bad += h[std::size_t(i)] != kd::generic::float_to_half_bits(part[std::size_t(i)]);
        bad += b[std::size_t(i)] != kd::generic::float_to_bf16_bits(part[std::size_t(i)]);
      }
    }
  }
  CHECK(bad == 0);
}

TEST_CASE("widening at every output alignment and past the streaming size equals the scalar conversion", "[half]") {
  // Output offsets across a whole register (the scalar head, aligned stores) and a length whose output passes
  // kConvertStreamBytes (non-temporal stores), each with a tail that is not a whole register.
  std::mt19937 e(91);
  const Index big = kd::kConvertStreamBytes / Index(sizeof(float)) + 3 * kd::kLanes<float> + 5;
  std::vector<std::uint16_t> bits(static_cast<std::size_t>(big));
  for (auto& b : bits) b = std::uint16_t(e());
  int bad = 0;
  for (Index n : {Index(1), Index(40), Index(1000), big}) {
    const std::vector<std::uint16_t> part(bits.begin(), bits.begin() + n);
    for (Index dst_offset = 0; dst_offset <= kd::kLanes<float>; ++dst_offset) {
      if (n == big && dst_offset % 3 != 0) continue;  // a few offsets suffice at 16 MiB
      const auto h = widen<Eigen::half>(part, 1, dst_offset);
      const auto b = widen<Eigen::bfloat16>(part, 0, dst_offset);
      for (Index i = 0; i < n; ++i) {
        bad += h[std::size_t(i)] != half_to_float_formula(part[std::size_t(i)]);
        bad += b[std::size_t(i)] != std::uint32_t(part[std::size_t(i)]) << 16;
      }
    }
  }
  CHECK(bad == 0);
}

TEST_CASE("16-bit matrices, maps and tensor views", "[half]") {
  // kexue::Matrix<Eigen::half>, a row-major Map over a caller's bf16 buffer, TensorView<const Eigen::bfloat16>.
  kexue::Matrix<float> a(3, 5);
  for (Index i = 0; i < a.size(); ++i) a.data()[i] = 0.1f * float(i) - 0.7f;
  kexue::Matrix<Eigen::half> h(3, 5);
  kexue::convert(a, h);
  kexue::Matrix<float> back(3, 5);
  kexue::convert(h, back);
  // fp16 keeps 11 bits; below its range (|x| < 2^-14) the step is 2^-24, so a value rounds within 2^-25 absolute.
  // 0.1f * 7 - 0.7f is 0 or a few 1e-8 depending on whether the compiler fuses it into an FMA (aarch64 -O2 does).
  for (Index i = 0; i < a.size(); ++i)
    CHECK(std::abs(back.data()[i] - a.data()[i]) <= std::abs(a.data()[i]) * 1e-3f + std::ldexp(1.f, -25));
  std::vector<Eigen::bfloat16> buf(2 * 3 * 5);
  Eigen::Map<kexue::Matrix<Eigen::bfloat16>> m(buf.data() + 15, 3, 5);
  kexue::convert(a, m);
  const auto view = kexue::TensorView<const Eigen::bfloat16>::contiguous(buf.data(), 1, 2, 3, 5);
  kexue::Matrix<float> row1(3, 5);
  kexue::convert(view.matrix(0, 1), row1);
  for (Index i = 0; i < a.size(); ++i) {
    CHECK(bits16(buf[std::size_t(15 + i)]) == kd::generic::float_to_bf16_bits(a.data()[i]));
    CHECK(row1.data()[i] == kd::to_float(buf[std::size_t(15 + i)]));
  }
  // A block of whole rows is contiguous; a column-major vector of the same size too.
  kexue::Matrix<float> two(2, 5);
  kexue::convert(h.topRows(2), two);
  CHECK(two(1, 4) == kd::to_float(h(1, 4)));
  kexue::Vector<Eigen::half> v(5);
  kexue::convert(a.row(2).transpose(), v);
  CHECK(bits16(v[3]) == bits16(h(2, 3)));
}

TEST_CASE("convert rejects bad input before writing", "[half][bad_input]") {
  kexue::Matrix<float> a = kexue::Matrix<float>::Constant(4, 6, 1.5f);
  kexue::Matrix<Eigen::half> h = kexue::Matrix<Eigen::half>::Constant(4, 6, Eigen::half(2.0f));
  kexue::Matrix<Eigen::half> wrong = kexue::Matrix<Eigen::half>::Constant(4, 5, Eigen::half(2.0f));
  throws_with([&] { kexue::convert(a, wrong); }, "convert: dst has shape [4 x 5] but src has shape [4 x 6]");
  CHECK(float(wrong(0, 0)) == 2.0f);
  throws_with([&] { kexue::convert(a.leftCols(5), wrong); }, "convert: src must be contiguous");
  throws_with([&] { kexue::convert(a.leftCols(5).eval(), h.leftCols(5)); }, "convert: dst must be contiguous");
  Eigen::Matrix<Eigen::half, 4, 6, Eigen::ColMajor> col;
  col.setConstant(Eigen::half(2.0f));
  throws_with([&] { kexue::convert(a, col); }, "is row-major but dst is column-major");
  CHECK(float(col(3, 5)) == 2.0f);
  CHECK(float(h(3, 5)) == 2.0f);
  // Overlap: a float buffer narrowed into its own bytes.
  std::vector<float> buf(16, 1.0f);
  Eigen::Map<kexue::Vector<Eigen::bfloat16>> alias(reinterpret_cast<Eigen::bfloat16*>(buf.data()) + 2, 16);
  throws_with([&] { kexue::convert(Eigen::Map<kexue::Vector<float>>(buf.data(), 16), alias); },
              "convert: src and dst overlap in memory");
  CHECK(buf[0] == 1.0f);
  // Empty is fine.
  kexue::Matrix<float> e0(0, 3);
  kexue::Matrix<Eigen::bfloat16> e1(0, 3);
  kexue::convert(e0, e1);
}
