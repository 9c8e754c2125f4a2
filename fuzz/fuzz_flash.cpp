// SPDX-License-Identifier: MIT
// Differential fuzzing of FLASH mixed-chunk attention (flash.hpp) against the one-query-at-a-time scalar
// reference (tests/reference/linear_attention_reference.hpp, kexue_ref::flash): chunk sizes around and beyond
// n, causal and not, both linear normalisers, key_length, explicit scale and quad_norm, invalid options, strided
// rows with NaN padding, and the batched form against the 2-D one. Asserts kexue::Error exactly for invalid
// input (out untouched), padding never written, finite output for finite inputs whose terms and linear state
// Kl^T V fit in T, and |got - ref| <= 16 eps(T) (s + s_lin + n + 16) (vmax sum_j [(scale |qq_i|.|kq_j|)^2 / quad_norm
// + |ql_i|.|kl_j|] + |ref|) per row (fuzz_bounds.hpp: flash_row_bound, and the finding 0081fb1e behind its state).
// Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_flash -max_total_time=600 -max_len=4096
#include <optional>

#include "fuzz_bounds.hpp"
#include "fuzz_input.hpp"
#include "kexue/flash.hpp"
#include "reference/linear_attention_reference.hpp"

using namespace kexue_fuzz;

namespace {

struct Case {
  kexue::FlashOptions o;
  bool invalid = false;
};

Case random_case(FuzzInput& in, Index n) {
  Case c;
  c.o.chunk_size = in.chance(8) ? -in.range(0, 2) : in.range(1, 80);
  c.invalid = c.o.chunk_size < 1;
  c.o.causal = in.flag();
  c.o.linear_norm = in.flag() ? kexue::FlashLinearNorm::Prefix : kexue::FlashLinearNorm::SequenceLength;
  switch (in.byte() % 6) {
    case 0: c.o.scale = double(in.range(-200, 200)) / 100.0; break;
    case 1:
      c.o.scale = std::numeric_limits<double>::infinity();
      c.invalid = true;
      break;
    default: break;
  }
  switch (in.byte() % 6) {
    case 0: c.o.quad_norm = double(in.range(1, 400)) / 4.0; break;
    case 1:
      c.o.quad_norm = -double(in.range(0, 3));
      c.invalid = true;
      break;
    default: break;
  }
  if (in.flag()) {
    c.o.key_length = in.range(-1, n + 1);
    c.invalid = c.invalid || *c.o.key_length < 0 || *c.o.key_length > n;
  }
  return c;
}

template <class T>
void check(const Case& c, const Strided<T>& qq, const Strided<T>& kq, const Strided<T>& ql, const Strided<T>& kl,
           const Strided<T>& v, const T* out, Index out_stride, bool moderate) {
  const Index n = qq.rows, s = qq.cols, sl = ql.cols, e = v.cols;
  const double scale = c.o.scale.value_or(1.0 / std::sqrt(double(s)));
  const double qn = c.o.quad_norm.value_or(double(c.o.chunk_size));
  const auto Q = qq.to_double(), K = kq.to_double(), QL = ql.to_double(), KL = kl.to_double(), V = v.to_double();
  const bool finite = qq.all_finite() && kq.all_finite() && ql.all_finite() && kl.all_finite() && v.all_finite();
  if (!finite && !moderate) return;
  const auto want = kexue_ref::flash(Q, K, QL, KL, V, std::min(c.o.chunk_size, std::max<Index>(n, 1)), c.o.causal,
                                     scale, qn, c.o.linear_norm == kexue::FlashLinearNorm::Prefix,
                                     c.o.key_length.value_or(n));
  const double vmax = v.max_abs();
  for (Index i = 0; i < n; ++i) {
    // The promise and the bound, with their derivation and the finding that added the state term: fuzz_bounds.hpp.
    const auto bound = kexue_fuzz_bounds::flash_row_bound<T>(i, n, s, sl, scale, qn, vmax, finite, Q, K, QL, KL);
    for (Index x = 0; x < e; ++x) {
      const double got = double(out[i * out_stride + x]), ref = want(i, x);
      if (bound.promised)
        expect(std::isfinite(got), "mixed_chunk_attention: non-finite output from finite inputs", got, ref);
      if (!moderate) continue;
      expect_near(got, ref, bound(ref), "mixed_chunk_attention vs reference");
    }
  }
}

template <class T>
void fuzz_2d(FuzzInput& in) {
  const Index n = in.size(150), s = in.range(1, 16), sl = in.range(1, 16), e = in.range(1, 16);
  const bool special = in.chance(64);
  Case c = random_case(in, n);
  const Index orows = in.chance(6) ? n + 1 : n;
  c.invalid = c.invalid || orows != n;
  Strided<T> qq = matrix<T>(in, n, s, special), kq = matrix<T>(in, n, s, special), ql = matrix<T>(in, n, sl, special),
             kl = matrix<T>(in, n, sl, special), v = matrix<T>(in, n, e, special);
  for (auto& x : qq.buf) x = T(x / 4);
  for (auto& x : ql.buf) x = T(x / 16);
  Strided<T> out = sentinel<T>(orows, e, in.range(0, 5));
  auto call = [&] {
    kexue::mixed_chunk_attention(qq.cmap(), kq.cmap(), ql.cmap(), kl.cmap(), v.cmap(), out.map(), c.o);
  };
  if (!run_checked(c.invalid, out.buf, call, "mixed_chunk_attention error contract")) return;
  expect(out.padding_intact(), "mixed_chunk_attention wrote into out's row padding");
  check(c, qq, kq, ql, kl, v, out.data(), out.stride, !special);
}

/// Batched over [B, H, n, *]: every head bitwise equal to the 2-D call on its slice.
template <class T>
void fuzz_batched(FuzzInput& in) {
  const Index B = in.range(1, 2), H = in.range(1, 3), n = in.size(70), s = in.range(1, 8), e = in.range(1, 8);
  Case c = random_case(in, n);
  Strided<T> qq = matrix<T>(in, B * H * n, s, false, 0), kq = matrix<T>(in, B * H * n, s, false, 0),
             ql = matrix<T>(in, B * H * n, s, false, 0), kl = matrix<T>(in, B * H * n, s, false, 0),
             v = matrix<T>(in, B * H * n, e, false, 0);
  Strided<T> out = sentinel<T>(B * H * n, e, 0);
  using CV = kexue::TensorView<const T>;
  auto cv = [&](const Strided<T>& m) { return CV::contiguous(m.data(), B, H, n, m.cols); };
  const auto ov = kexue::TensorView<T>::contiguous(out.data(), B, H, n, e);
  if (!run_checked(c.invalid, out.buf,
                   [&] { kexue::mixed_chunk_attention(cv(qq), cv(kq), cv(ql), cv(kl), cv(v), ov, c.o); },
                   "batched mixed_chunk_attention error contract"))
    return;
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      Strided<T> one = sentinel<T>(n, e, 0);
      kexue::mixed_chunk_attention(cv(qq).matrix(b, h), cv(kq).matrix(b, h), cv(ql).matrix(b, h),
                                   cv(kl).matrix(b, h), cv(v).matrix(b, h), one.map(), c.o);
      expect(n == 0 || std::memcmp(one.data(), ov.row(b, h, 0), std::size_t(n * e) * sizeof(T)) == 0,
             "batched mixed_chunk_attention differs from the 2-D call");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const bool single = in.flag();
  if (in.byte() % 4 != 0)
    single ? fuzz_2d<float>(in) : fuzz_2d<double>(in);
  else
    single ? fuzz_batched<float>(in) : fuzz_batched<double>(in);
  return 0;
}
