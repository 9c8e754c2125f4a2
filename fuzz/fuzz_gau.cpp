// SPDX-License-Identifier: MIT
// Differential fuzzing of the GAU layer (gau.hpp) against the scalar reference (tests/reference/gau_reference.hpp):
// the three normalisations, causal, key_length, key masks, reverse causal and UniLM segment ids (post 9529),
// relu2_length, explicit and bert4keras scales, zero_padded_rows, RoPE or none, weights with and without biases and
// offsets, in place (out = x) or not, rows across the 128-row query tile, strided x/out with NaN padding; invalid
// options and shapes. Asserts kexue::Error exactly for invalid input (out untouched), padding never written, finite
// output wherever the reference is finite (float: moderate inputs only, double: +-inf, NaN, denormals and 1e30 too), and
// |got - ref| <= (64 eps(T) (D + e + s + n) + 4 (D + s + 8) eps(T) c L1_i) (1 + max |ref|) (every row a chain of four
// GEMM-like sums, plus the logits' rounding: L1_i is row i's largest |scale| sum |q k|, c the SoftmaxPlus factor,
// times 2 (L1_i + 1) for relu^2).
// Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_gau -max_total_time=600 -max_len=4096
#include <cstdint>
#include <optional>

#include "fuzz_input.hpp"
#include "kexue/gau.hpp"
#include "reference/gau_reference.hpp"

using namespace kexue_fuzz;

namespace {

template <class T>
void fuzz_gau(FuzzInput& in) {
  const Index n = in.size(140), D = in.range(1, 10), e = in.range(1, 10), s = 2 * in.range(1, 5);
  const bool special = std::is_same<T, double>::value && in.chance(48);
  const bool biases = in.flag(), offsets = in.flag(), use_rope = in.flag(), in_place = in.flag();
  kexue::GauOptions o;
  bool invalid = false;
  o.attention.normalization = static_cast<kexue::Normalization>(in.byte() % 3);
  o.attention.causal = in.flag();
  o.attention_scale = !in.chance(64);
  o.zero_padded_rows = in.chance(64);
  if (in.flag()) {
    o.attention.key_length = in.range(-1, n + 1);
    invalid = invalid || *o.attention.key_length < 0 || *o.attention.key_length > n;
  }
  if (in.chance(32)) o.attention.scale = double(in.range(-100, 100)) / 50.0;
  if (in.chance(32)) {
    o.attention.relu2_length = in.range(0, 50);
    invalid = invalid || *o.attention.relu2_length < 1;
  }
  if (in.chance(16)) {
    o.attention.train_length = in.range(0, 3);
    invalid = invalid || o.attention.train_length < 2;
  }
  std::vector<unsigned char> mask;
  if (in.chance(48)) {
    mask.resize(std::size_t(in.chance(16) ? n + 1 : n));
    invalid = invalid || Index(mask.size()) != n;
    for (auto& x : mask) x = in.byte() < 200 ? 1 : 0;
    o.key_mask = kexue::KeyMask(mask.data(), Index(mask.size()));
  }
  // The masks of post 9529 (SPEC 7.3): reverse causal (with causal: invalid) and UniLM segment ids (int32 or
  // int64; sometimes a negative id or the wrong length: invalid).
  if (in.chance(48)) {
    o.attention.reverse_causal = true;
    invalid = invalid || o.attention.causal;
  }
  std::vector<std::int64_t> seg64;
  std::vector<std::int32_t> seg32;
  if (in.chance(48)) {
    const Index len = in.chance(16) ? n + 1 : n;
    invalid = invalid || len != n;
    const std::uint8_t density = in.byte();
    seg64.resize(std::size_t(len));
    for (auto& x : seg64) x = in.byte() < density / 4 ? std::int64_t(in.range(1, 3)) : 0;
    if (len > 0 && in.chance(16)) {
      seg64[std::size_t(in.range(0, len - 1))] = -1;
      invalid = true;
    }
    if (in.flag()) {
      seg32.assign(seg64.begin(), seg64.end());
      o.attention.segments = kexue::SegmentIds(seg32);
    } else {
      o.attention.segments = kexue::SegmentIds(seg64);
    }
  }
  const Index table_pos = in.chance(16) ? std::max<Index>(n - 1, 0) : n;
  invalid = invalid || (use_rope && table_pos < n);
  const kexue::RopeTable<T> table(table_pos, s);

  auto mat = [&](Index r, Index c) {
    kexue::Matrix<T> m(r, c);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = T(in.value<T>(false) / 8);
    return m;
  };
  auto vec = [&](Index c, bool present) {
    kexue::Vector<T> v(present ? c : 0);
    for (Index i = 0; i < v.size(); ++i) v[i] = T(in.value<T>(false) / 8);
    return v;
  };
  kexue::GauWeights<T> w;
  w.w_in = mat(D, 2 * e + s);
  w.b_in = vec(2 * e + s, biases);
  w.gamma_q = vec(s, true);
  w.gamma_k = vec(s, true);
  w.beta_q = vec(s, offsets);
  w.beta_k = vec(s, offsets);
  w.w_out = mat(e, D);
  w.b_out = vec(D, biases);
  const Index xcols = in.chance(8) ? D + 1 : D;
  invalid = invalid || (xcols != D && n > 0);
  Strided<T> x = matrix<T>(in, n, xcols, special, 4);
  for (auto& v : x.buf) v = T(v / 4);
  const Strided<T> x0 = x;
  Strided<T> out_buf = sentinel<T>(n, xcols, in.range(0, 4));
  Strided<T>& out = in_place ? x : out_buf;
  auto call = [&] { kexue::gau(w, x.cmap(), out.map(), o, use_rope ? &table : nullptr); };
  if (!run_checked(invalid, out.buf, call, "gau error contract")) return;
  expect(out.padding_intact(), "gau wrote into out's row padding");
  if (n == 0) return;
  std::vector<double> l1;
  const auto want = kexue_test::gau_reference(w, x0.to_double(), o, use_rope, -1, &l1);
  const double scale = want.allFinite() ? want.cwiseAbs().maxCoeff() : 0.0;
  // Every output a chain of four GEMM-like sums, plus what a logit's rounding error does to the weights: a float
  // logit of magnitude up to L1 (row i's largest |scale| sum_c |q_c k_c|) is off by about (D + s + 8) eps L1 (the
  // projection's and the dot product's chains), which moves each softmax weight by that much relatively (times
  // the SoftmaxPlus factor) and a relu^2 weight a^2 by 2 a times it. Fuzz finding 3535 (float, softmax, n = 16,
  // key_length 4, D = 10, s = 8, no RoPE): logits in the hundreds, an output 3e-4 relatively off, bitwise the same
  // before and after the masks of post 9529; the bound had no logit term.
  double factor = 1;
  if (o.attention.normalization == kexue::Normalization::SoftmaxPlus)
    factor = std::max(1.0, std::log(double(std::max<Index>(n, o.attention.min_length))) /
                               std::log(double(std::max<Index>(o.attention.train_length, 2))));
  for (Index i = 0; i < n; ++i) {
    const double li = l1.empty() ? 0.0 : l1[std::size_t(i)];
    double logit = 4 * double(D + s + 8) * eps_of<T>() * factor * li;
    if (o.attention.normalization == kexue::Normalization::SquaredRelu) logit *= 2 * (li + 1);
    const double bound = (64 * eps_of<T>() * double(D + e + s + n) + logit) * (1 + scale) + tiny<T>();
    for (Index c = 0; c < D; ++c)
      expect_near(double(out(i, c)), want(i, c), special ? HUGE_VAL : bound, "gau vs reference");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  if (in.flag())
    fuzz_gau<float>(in);
  else
    fuzz_gau<double>(in);
  return 0;
}
