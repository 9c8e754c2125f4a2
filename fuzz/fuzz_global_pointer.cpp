// SPDX-License-Identifier: MIT
// Differential fuzzing of GlobalPointer (global_pointer.hpp) against the scalar reference
// (tests/reference/global_pointer_reference.hpp): one head from q, k, the layer and the Efficient layer from h,
// every mask convention, fill, tril_mask, scale, lengths in [0, n], sizes across the 6 x 2L register tile; span
// decoding against the brute-force scan, including the memory-lean path; the multi-label cross-entropy and its
// gradient. Asserts kexue::Error exactly for invalid input (scores untouched), padding never written, masked
// cells exactly the fill, finite scores wherever the reference is finite (and fits in T), and for unmasked cells
// |got - ref| <= 16 eps(T) (D + d + 8) (M scale + bias magnitudes + |ref|), M = sum over the rotated pairs t of
// |(q_i,2t, q_i,2t+1)| |(k_j,2t, k_j,2t+1)| (2-norms of |h| |w| + |b| in the layer forms). Pair norms, not the
// componentwise |q_i| . |k_j| of the unrotated rows: RoPE keeps a pair's norm, not its components, and the float
// rotation rounds relative to the rotated components (fuzz finding 0100001001000010; see fuzz_bounds.hpp).
// Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_global_pointer -max_total_time=600 -max_len=4096
#include <algorithm>
#include <optional>

#include "fuzz_bounds.hpp"
#include "fuzz_input.hpp"
#include "kexue/global_pointer.hpp"
#include "reference/global_pointer_reference.hpp"

using namespace kexue_fuzz;
using MatD = kexue::Matrix<double>;

namespace {

kexue::GlobalPointerOptions random_options(FuzzInput& in, bool& invalid) {
  kexue::GlobalPointerOptions o;
  o.tril_mask = !in.chance(64);
  o.scale = !in.chance(64);
  switch (in.byte() % 8) {
    case 0: o.fill = 0; break;
    case 1: o.fill = -1e12; break;
    case 2:
      o.fill = std::numeric_limits<double>::quiet_NaN();
      invalid = true;
      break;
    default: break;
  }
  switch (in.byte() % 6) {
    case 0: o.convention = kexue::MaskConvention::Bert4keras2021; break;
    case 1: o.convention = kexue::MaskConvention::TorchPort; break;
    default: break;
  }
  if (o.convention != kexue::MaskConvention::Current && in.chance(16)) {
    o.legacy_magnitude = std::numeric_limits<double>::infinity();
    invalid = true;
  }
  return o;
}

/// Compares scores [heads * n, n] with the reference; mag(a, i, j) bounds the pre-mask magnitude of a cell.
template <class T, class Mag>
void compare(const Strided<T>& got, const MatD& want, Index heads, Index n, double eps_terms, Mag&& mag,
             bool moderate) {
  for (Index a = 0; a < heads; ++a)
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < n; ++j) {
        const double g = double(got(a * n + i, j)), w = want(a * n + i, j);
        const double m = mag(a, i, j);
        if (!std::isfinite(w)) {
          // A masked cell holds the fill exactly (-inf included); other non-finite cells carry no promise.
          if (std::isinf(w) && moderate) expect(g == w, "global_pointer: masked cell is not the fill", g, w);
          continue;
        }
        if (std::abs(w) > 1e-3 * double(std::numeric_limits<T>::max()) ||
            m > 1e-3 * double(std::numeric_limits<T>::max()))
          continue;
        expect(std::isfinite(g), "global_pointer: non-finite score where the reference is finite", g, w);
        if (moderate)
          expect(std::abs(g - w) <= 16 * eps_of<T>() * eps_terms * (m + std::abs(w)) + tiny<T>(),
                 "global_pointer vs reference", g, w);
      }
}

template <class T>
void fuzz_head(FuzzInput& in) {
  const Index n = in.size(40), d = 2 * in.range(1, 20), length = in.range(-1, n + 1);
  const bool special = in.chance(48);
  bool invalid = length < 0 || length > n;
  const auto o = random_options(in, invalid);
  const Index table_pos = in.chance(8) ? std::max<Index>(0, n - 1) : n + in.range(0, 3);
  const Index table_dim = in.chance(8) ? d + 2 : d;
  invalid = invalid || table_dim != d || table_pos < n;
  const kexue::RopeTable<T> table(table_pos, table_dim);
  Strided<T> q = matrix<T>(in, n, d, special), k = matrix<T>(in, n, d, special);
  Strided<T> s = sentinel<T>(n, n, in.range(0, 5));
  if (!run_checked(invalid, s.buf, [&] { kexue::global_pointer(table, q.cmap(), k.cmap(), s.map(), length, o); },
                   "global_pointer(q, k) error contract"))
    return;
  expect(s.padding_intact(), "global_pointer wrote into the scores' row padding");
  if (n == 0) return;
  const MatD Q = q.to_double(), K = k.to_double();
  const MatD want = kexue_ref::global_pointer(Q, K, length, o);
  const double scale = o.scale ? 1.0 / std::sqrt(double(d)) : 1.0;
  const double legacy = o.convention == kexue::MaskConvention::Current ? 0.0 : 2 * o.legacy_magnitude;
  compare(s, want, 1, n, double(d + 8), [&](Index, Index i, Index j) {
    return (kexue_fuzz_bounds::rotated_dot_magnitude(d, [&](Index p) { return Q(i, p); }, [&](Index p) { return K(j, p); }) +
            legacy) *
           scale;
  }, !special);
}

template <class T>
void fuzz_layer(FuzzInput& in) {
  const Index n = in.size(24), D = in.range(1, 24), heads = in.range(1, 3), d = 2 * in.range(1, 8);
  const Index length = in.range(0, n);
  const bool efficient = in.flag(), bias = in.flag();
  bool invalid = false;
  const auto o = random_options(in, invalid);
  const kexue::RopeTable<T> table(n, d);
  Strided<T> h = matrix<T>(in, n, D, false);
  for (auto& x : h.buf) x = T(x / 8);
  Strided<T> s = sentinel<T>(heads * n, n, in.range(0, 3));
  auto fill = [&](Index r, Index c) {
    kexue::Matrix<T> m(r, c);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = T(in.value<T>(false) / 8);
    return m;
  };
  auto fillv = [&](Index c) {
    kexue::Vector<T> v(bias ? c : 0);
    for (Index i = 0; i < v.size(); ++i) v[i] = T(in.value<T>(false) / 8);
    return v;
  };
  const MatD H = h.to_double();
  const double legacy = o.convention == kexue::MaskConvention::Current ? 0.0 : 2 * o.legacy_magnitude;
  const double scale = o.scale ? 1.0 / std::sqrt(double(d)) : 1.0;
  if (!efficient) {
    kexue::GlobalPointerWeights<T> w{fill(D, 2 * heads * d), fillv(2 * heads * d), heads, d};
    if (!run_checked(invalid, s.buf, [&] { kexue::global_pointer(w, table, h.cmap(), s.map(), length, o); },
                     "global_pointer layer error contract"))
      return;
    if (n == 0) return;  // (the reference's Eigen blocks are not defined on empty matrices)
    const MatD W = w.w.template cast<double>();
    const Eigen::VectorXd b = w.b.template cast<double>();
    const MatD want = kexue_ref::global_pointer_layer(H, W, b, heads, d, length, o);
    MatD Y = H.cwiseAbs() * W.cwiseAbs();
    if (b.size()) Y.rowwise() += b.cwiseAbs().transpose();
    compare(s, want, heads, n, double(D + d + 8), [&](Index a, Index i, Index j) {
      return (kexue_fuzz_bounds::rotated_dot_magnitude(d, [&](Index p) { return Y(i, 2 * d * a + p); },
                                                       [&](Index p) { return Y(j, 2 * d * a + d + p); }) +
              legacy) *
             scale;
    }, true);
    // The memory-lean path decodes the same spans as decode_spans over the dense scores.
    if (o.convention == kexue::MaskConvention::Current) {
      kexue::DecodeOptions dec;
      dec.threshold = double(in.range(-8, 8)) / 4;
      dec.exclude_boundary_tokens = in.flag();
      const auto lean = kexue::global_pointer_spans(w, table, h.cmap(), length, dec, o);
      dec.length = length;
      const auto dense = kexue::decode_spans(s.cmap(), heads, dec);
      expect(lean.size() == dense.size(), "global_pointer_spans and decode_spans disagree on the span count",
             double(lean.size()), double(dense.size()));
      for (std::size_t x = 0; x < lean.size(); ++x)
        expect(lean[x].head == dense[x].head && lean[x].start == dense[x].start && lean[x].end == dense[x].end,
               "global_pointer_spans and decode_spans disagree");
      const auto brute = kexue_ref::decode(s.to_double(), heads, dec);
      auto sorted = brute;
      std::sort(sorted.begin(), sorted.end(), [](const kexue::Span& a, const kexue::Span& b) {
        return std::tie(a.head, a.start, a.end) < std::tie(b.head, b.start, b.end);
      });
      expect(sorted.size() == dense.size(), "decode_spans vs brute-force scan", double(dense.size()),
             double(sorted.size()));
      for (std::size_t x = 0; x < dense.size(); ++x) expect(dense[x] == sorted[x], "decode_spans vs brute force");
    }
  } else {
    kexue::EfficientGlobalPointerWeights<T> w{fill(D, 2 * d), fillv(2 * d), fill(2 * d, 2 * heads),
                                              fillv(2 * heads), heads, d};
    if (!run_checked(invalid, s.buf, [&] { kexue::efficient_global_pointer(w, table, h.cmap(), s.map(), length, o); },
                     "efficient_global_pointer error contract"))
      return;
    if (n == 0) return;
    const MatD Wp = w.w_p.template cast<double>(), Wc = w.w_c.template cast<double>();
    const Eigen::VectorXd bp = w.b_p.template cast<double>(), bc = w.b_c.template cast<double>();
    const MatD want = kexue_ref::efficient_global_pointer(H, Wp, bp, Wc, bc, heads, d, length, o);
    MatD P = H.cwiseAbs() * Wp.cwiseAbs();
    if (bp.size()) P.rowwise() += bp.cwiseAbs().transpose();
    MatD C = P * Wc.cwiseAbs();
    if (bc.size()) C.rowwise() += bc.cwiseAbs().transpose();
    compare(s, want, heads, n, double(D + 2 * d + 8), [&](Index a, Index i, Index j) {
      // q_t = p_i[2t], k_t = p_j[2t + 1] (SPEC 2.6's interleaved split), rotated in pairs (q_2u, q_2u+1).
      const double dot = kexue_fuzz_bounds::rotated_dot_magnitude(d, [&](Index t) { return P(i, 2 * t); },
                                                                 [&](Index t) { return P(j, 2 * t + 1); });
      return dot * scale + C(i, 2 * a + 1) + C(j, 2 * a) + legacy;
    }, true);
  }
  expect(s.padding_intact(), "global_pointer layer wrote into the scores' row padding");
}

template <class T>
void fuzz_loss(FuzzInput& in) {
  const Index rows = in.size(20), C = in.range(1, 40);
  const bool soft = in.flag(), special = in.chance(64);
  Strided<T> s = matrix<T>(in, rows, C, special, 0);
  for (auto& x : s.buf)
    if (in.chance(32)) x = -std::numeric_limits<T>::infinity();  // masked cells
  kexue::Matrix<T> labels(rows, C);
  for (Index i = 0; i < labels.size(); ++i)
    labels.data()[i] = soft ? T(in.byte()) / T(255) : T(in.chance(40) ? 1 : 0);
  kexue::MultilabelOptions o;
  o.soft = soft;
  kexue::Matrix<T> grad = kexue::Matrix<T>::Constant(rows, C, T(-7));
  const auto sm = s.cmap();
  const double loss = kexue::multilabel_crossentropy(sm, labels, grad, o);
  double want = 0;
  bool finite = true;
  kexue::Matrix<double> gwant(rows, C);
  for (Index r = 0; r < rows; ++r) {
    std::vector<double> sr(static_cast<std::size_t>(C)), tr(static_cast<std::size_t>(C)), g;
    for (Index c = 0; c < C; ++c) {
      sr[std::size_t(c)] = double(sm(r, c));
      tr[std::size_t(c)] = double(labels(r, c));
      finite = finite && !std::isnan(sr[std::size_t(c)]) && sr[std::size_t(c)] != HUGE_VAL;
    }
    want += kexue_ref::mlce_row(sr, tr, &g) / double(rows);
    for (Index c = 0; c < C; ++c) gwant(r, c) = g[std::size_t(c)] / double(rows);
  }
  if (rows == 0 || !finite || !std::isfinite(want)) return;
  double smax = 0;
  for (Index i = 0; i < rows; ++i)
    for (Index c = 0; c < C; ++c)
      if (std::isfinite(double(sm(i, c)))) smax = std::max(smax, std::abs(double(sm(i, c))));
  expect(std::isfinite(loss), "multilabel_crossentropy: non-finite loss where the reference is finite", loss, want);
  if (special) return;
  expect(std::abs(loss - want) <= 64 * eps_of<T>() * (double(C) + std::abs(want) + smax), "multilabel loss vs reference",
         loss, want);
  for (Index i = 0; i < rows; ++i)
    for (Index c = 0; c < C; ++c)
      expect(std::abs(double(grad(i, c)) - gwant(i, c)) <= 64 * eps_of<T>(), "multilabel gradient vs reference",
             double(grad(i, c)), gwant(i, c));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const bool single = in.flag();
  switch (in.byte() % 3) {
    case 0: single ? fuzz_head<float>(in) : fuzz_head<double>(in); break;
    case 1: single ? fuzz_layer<float>(in) : fuzz_layer<double>(in); break;
    default: single ? fuzz_loss<float>(in) : fuzz_loss<double>(in); break;
  }
  return 0;
}
