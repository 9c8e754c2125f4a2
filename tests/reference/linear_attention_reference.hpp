// SPDX-License-Identifier: MIT
#pragma once
// Scalar, double-accumulating references for linear attention (SPEC 5.2) and FLASH mixed-chunk attention
// (SPEC 3.5), written for clarity: the O(n m) similarity form, one query at a time. Nothing here is chunked, so a
// chunking bug in the library cannot cancel against the same bug in the reference.

#include <algorithm>
#include <cmath>
#include <vector>

#include "kexue/core.hpp"

namespace kexue_ref {

using kexue::Index;
using MatrixD = kexue::Matrix<double>;

/// phi of SPEC 5.2: 0 = elu + 1, 1 = relu, 2 = identity.
inline double feature(int map, double x) {
  if (map == 0) return x > 0 ? x + 1 : std::exp(x);
  if (map == 1) return x > 0 ? x : 0;
  return x;
}

/// o_i = sum_j sim(i, j) v_j / (sum_j sim(i, j) + eps) over keys j < key_length and, when causal, j <= i + (m - n);
/// sim(i, j) = phi(q_i) . phi(k_j). A zero denominator gives a zero row.
template <class M>
MatrixD linear_attention(const M& q, const M& k, const M& v, int map, bool causal, double eps, Index key_length) {
  const Index n = q.rows(), m = k.rows(), d = q.cols(), dv = v.cols();
  MatrixD out = MatrixD::Zero(n, dv);
  for (Index i = 0; i < n; ++i) {
    double den = eps;
    std::vector<double> num(static_cast<std::size_t>(dv), 0.0);
    for (Index j = 0; j < std::min(m, key_length); ++j) {
      if (causal && j > i + (m - n)) continue;
      double sim = 0;
      for (Index p = 0; p < d; ++p) sim += feature(map, double(q(i, p))) * feature(map, double(k(j, p)));
      den += sim;
      for (Index c = 0; c < dv; ++c) num[static_cast<std::size_t>(c)] += sim * double(v(j, c));
    }
    for (Index c = 0; c < dv; ++c) out(i, c) = den != 0 ? num[static_cast<std::size_t>(c)] / den : 0.0;
  }
  return out;
}

/// FLASH mixed-chunk attention, one query at a time. Query i lies in chunk g = i / c. Quadratic part: keys j of the
/// same chunk (j <= i when causal, j < key_length) weighted relu(scale q_i.k_j)^2 / quad_norm. Linear part:
/// sum over keys j < key_length of (ql_i . kl_j) v_j, for every j (non-causal) or j in earlier chunks (causal),
/// divided by L = min(n, key_length), or (prefix) by the number of such keys, with an empty sum giving 0.
template <class M>
MatrixD flash(const M& qq, const M& kq, const M& ql, const M& kl, const M& v, Index c, bool causal, double scale,
              double quad_norm, bool prefix, Index key_length) {
  const Index n = qq.rows(), e = v.cols(), L = std::min(n, key_length);
  MatrixD out = MatrixD::Zero(n, e);
  for (Index i = 0; i < n; ++i) {
    const Index g0 = i / c * c, g1 = std::min(n, g0 + c);
    for (Index j = g0; j < g1; ++j) {
      if (j >= L || (causal && j > i)) continue;
      double s = 0;
      for (Index p = 0; p < qq.cols(); ++p) s += double(qq(i, p)) * double(kq(j, p));
      const double r = std::max(scale * s, 0.0);
      for (Index x = 0; x < e; ++x) out(i, x) += r * r / quad_norm * double(v(j, x));
    }
    const Index lin_end = causal ? std::min(g0, L) : L;
    const double norm = prefix && causal ? double(lin_end) : double(L);
    if (lin_end == 0 || norm == 0) continue;
    for (Index j = 0; j < lin_end; ++j) {
      double s = 0;
      for (Index p = 0; p < ql.cols(); ++p) s += double(ql(i, p)) * double(kl(j, p));
      for (Index x = 0; x < e; ++x) out(i, x) += s / norm * double(v(j, x));
    }
  }
  return out;
}

}  // namespace kexue_ref
