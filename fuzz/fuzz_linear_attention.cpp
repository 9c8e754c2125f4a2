// SPDX-License-Identifier: MIT
// Differential fuzzing of kexue::linear_attention (linear_attention.hpp) against the O(n m) scalar reference
// (tests/reference/linear_attention_reference.hpp): the three feature maps, causal and non-causal with n != m,
// key_length, eps (including 0 and invalid values), the double state, lengths across the 64-row chunk, strided
// rows with NaN padding, and the streaming form fed in random pieces. Asserts kexue::Error exactly for invalid
// input (out and state untouched), padding never written, finite output where the reference row is finite and
// its terms fit in T, and |got - ref| <= 8 eps(T) (d + m + 16) sum_j |phi(q_i)| . |phi(k_j)| (vmax + |ref|) / |den|
// + 8 U (vmax + |ref| + 1) / |den| per row (the forward error of a ratio of two sums; den = phi(q_i) . z + eps;
// U = smallest normal of T times sum_j sum_p (|phi(q_ip)| + |phi(k_jp)| + 1), the error of feature values and
// products that underflow in T), promised only where |den| > 1e3 (eps(T) mass + U) and the state S = phi(K)^T V
// fits in T. Derivation and the findings that added U (0102003b: a similarity of 1e-53, zero in float) and the
// state's range (2b2727ab: S(5, 12) = 1e60, inf in float, times phi(q_5) = 0): fuzz_bounds.hpp.
// Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_linear_attention -max_total_time=600 -max_len=4096
#include <optional>

#include "fuzz_bounds.hpp"
#include "fuzz_input.hpp"
#include "kexue/linear_attention.hpp"
#include "reference/linear_attention_reference.hpp"

using namespace kexue_fuzz;

namespace {

struct Case {
  kexue::LinearAttentionOptions o;
  bool invalid = false;
};

Case random_case(FuzzInput& in, Index m) {
  Case c;
  c.o.feature_map = static_cast<kexue::FeatureMap>(in.byte() % 3);
  c.o.causal = in.flag();
  c.o.double_state = in.flag();
  switch (in.byte() % 8) {
    case 0: c.o.eps = 0; break;
    case 1: c.o.eps = double(in.range(0, 1000)) / 100.0; break;
    case 2:
      c.o.eps = in.flag() ? -1e-6 : std::numeric_limits<double>::quiet_NaN();
      c.invalid = true;
      break;
    default: break;
  }
  if (in.flag()) {
    c.o.key_length = in.range(-1, m + 1);
    c.invalid = c.invalid || *c.o.key_length < 0 || *c.o.key_length > m;
  }
  return c;
}

/// Compares out with the reference for rows [row0, row0 + out rows) of a query block whose keys are k rows
/// [0, key_end) (streaming: every key so far).
template <class T>
void check(const Case& c, const kexue::Matrix<double>& q, const kexue::Matrix<double>& k,
           const kexue::Matrix<double>& v, const Strided<T>& out, bool causal, Index key_length, bool moderate) {
  const int map = static_cast<int>(c.o.feature_map);
  const Index n = q.rows(), m = k.rows(), d = q.cols();
  const auto want = kexue_ref::linear_attention(q, k, v, map, causal, c.o.eps, key_length);
  const double vmax = v.size() ? v.cwiseAbs().maxCoeff() : 0.0;
  const bool v_finite = v.allFinite();
  for (Index i = 0; i < n; ++i) {
    const Index visible = std::max<Index>(0, std::min(causal ? i + (m - n) + 1 : m, std::min(m, key_length)));
    // A non-finite value of a key the row does not see (a future key under causal) may still reach it as
    // 0 * inf = NaN: the chunked kernel multiplies masked similarities by the whole chunk of values, as a
    // matrix product (and attention, and PyTorch) does. Reported; only rows of an all-finite v are promised.
    // (A non-finite q_i makes phi(q_i) . S non-finite even with no visible key, S = 0: no promise there.)
    if (!v_finite || !q.row(i).allFinite()) continue;
    // The bound and the conditions of the promise (sums that fit in T, a denominator clear of rounding and
    // underflow) are derived in fuzz_bounds.hpp.
    const auto bound = kexue_fuzz_bounds::la_row_bound<T>(
        map, c.o.eps, d, m, visible, [&](Index p) { return q(i, p); }, [&](Index j, Index p) { return k(j, p); },
        vmax);
    if (!bound.promised) continue;
    for (Index e = 0; e < out.cols; ++e) {
      const double got = double(out(i, e)), ref = want(i, e);
      if (!std::isfinite(ref)) continue;
      expect(std::isfinite(got), "linear_attention: non-finite output where the reference is finite", got, ref);
      if (!moderate) continue;
      expect(std::abs(got - ref) <= bound(ref), "linear_attention vs reference", got, ref);
    }
  }
}

template <class T>
void fuzz_one_shot(FuzzInput& in) {
  const Index n = in.size(150), m = in.size(150), d = in.range(1, 24), dv = in.range(1, 24);
  const bool special = in.chance(64);
  const Index shift = in.range(0, 5);
  Case c = random_case(in, m);
  const Index orows = in.chance(6) ? n + 1 : n;
  c.invalid = c.invalid || orows != n;
  // q and k take special values (+-inf, NaN, 1e30) in every feature map and precision: elu+1 once hit undefined
  // behaviour in xsimd 8.1's double exp on -1e30 (fixed by clamping; regression test in test_linear_attention).
  const bool qk_special = special;
  Strided<T> q = matrix<T>(in, n, d, qk_special), k = matrix<T>(in, m, d, qk_special), v = matrix<T>(in, m, dv, special);
  for (auto& x : q.buf) x = T(std::ldexp(double(x), -int(shift)));
  Strided<T> out = sentinel<T>(orows, dv, in.range(0, 5));
  if (!run_checked(c.invalid, out.buf, [&] { kexue::linear_attention(q.cmap(), k.cmap(), v.cmap(), out.map(), c.o); },
                   "linear_attention error contract"))
    return;
  expect(out.padding_intact(), "linear_attention wrote into out's row padding");
  if (!(q.all_finite() && k.all_finite() && v.all_finite()) && !special) return;
  check(c, q.to_double(), k.to_double(), v.to_double(), out, c.o.causal, c.o.key_length.value_or(m), !special);
}

/// The streaming form fed in random pieces equals the causal reference over the whole prefix.
template <class T>
void fuzz_streaming(FuzzInput& in) {
  const Index d = in.range(1, 16), dv = in.range(1, 16), pieces = in.range(1, 4);
  const bool special = in.chance(32);
  Case c = random_case(in, 0);
  c.o.key_length.reset();
  c.invalid = false;
  if (c.o.eps < 0 || std::isnan(c.o.eps)) c.o.eps = 1e-6;
  kexue::LinearAttentionState<T> state(d, dv);
  const bool wrong_state = in.chance(8);
  kexue::LinearAttentionState<T> other(d + 1, dv);
  kexue::Matrix<double> qall(0, d), kall(0, d), vall(0, dv);
  for (Index p = 0; p < pieces; ++p) {
    const Index n = in.size(80);
    const bool qk_special = special;
    Strided<T> q = matrix<T>(in, n, d, qk_special), k = matrix<T>(in, n, d, qk_special),
               v = matrix<T>(in, n, dv, special);
    for (auto& x : q.buf) x = T(x / 8);
    Strided<T> out = sentinel<T>(n, dv, in.range(0, 3));
    if (wrong_state) {
      const auto s0 = other.s();
      run_checked(true, out.buf, [&] { kexue::linear_attention(q.cmap(), k.cmap(), v.cmap(), out.map(), other, c.o); },
                  "streaming with a state of the wrong shape");
      expect(other.s() == s0 && other.tokens() == 0, "a rejected streaming call changed the state");
      return;
    }
    kexue::linear_attention(q.cmap(), k.cmap(), v.cmap(), out.map(), state, c.o);
    expect(out.padding_intact(), "streaming linear_attention wrote into out's row padding");
    const Index base = qall.rows();
    qall.conservativeResize(base + n, d);
    kall.conservativeResize(base + n, d);
    vall.conservativeResize(base + n, dv);
    qall.bottomRows(n) = q.to_double();
    kall.bottomRows(n) = k.to_double();
    vall.bottomRows(n) = v.to_double();
    if (n == 0) continue;
    // Query rows of this piece see every earlier key plus the piece's own keys up to themselves: causal
    // alignment j <= i + (m - n) with m = base + n keys and these n queries.
    const kexue::Matrix<double> qp = qall.bottomRows(n);
    Strided<T> piece_out(n, dv, 0);
    for (Index i = 0; i < n; ++i) std::copy(out.row(i), out.row(i) + dv, piece_out.row(i));
    check(c, qp, kall, vall, piece_out, true, base + n, !special);
  }
  expect(state.tokens() == qall.rows(), "streaming state counts every absorbed key");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const bool single = in.flag();
  if (in.byte() % 4 != 0)
    single ? fuzz_one_shot<float>(in) : fuzz_one_shot<double>(in);
  else
    single ? fuzz_streaming<float>(in) : fuzz_streaming<double>(in);
  return 0;
}
