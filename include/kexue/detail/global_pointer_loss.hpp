// SPDX-License-Identifier: MIT
#pragma once
// The multi-label categorical cross-entropy of SPEC 2.4 (dense hard/soft labels and the sparse form).
// Every sample is independent: its loss goes into its own slot and the mean is summed in sample order
// afterwards, so the result is bitwise identical for any thread count. Arithmetic is in double: the loss
// is a sum of exponentials whose terms span many orders of magnitude.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"

namespace kexue::detail {

constexpr double kMlceInf = std::numeric_limits<double>::infinity();

/// Stable logsumexp over a set given through a visitor, with an extra 0 entry: log(1 + sum e^v).
/// visit(f) calls f(v) for every member; members of -inf are skipped by the caller.
struct LseWithZero {
  double m = 0;      // running max, starts at the appended 0
  double z = 1;      // sum of e^(v - m), starts with e^(0 - 0)
  Index n_inf = 0;   // +inf members: the loss is +inf and their gradient weight is 1 / n_inf
  void add_max(double v) {
    if (v == kMlceInf) ++n_inf;
    else if (v > m) m = v;
  }
  // Second pass, after every add_max.
  void add_sum(double v) {
    if (v != kMlceInf) z += std::exp(v - m);
  }
  void start_sum() { z = std::exp(-m); }
  double value() const { return n_inf > 0 ? kMlceInf : m + std::log(z); }
  /// d value / d v for a member v.
  double weight(double v) const {
    if (n_inf > 0) return v == kMlceInf ? 1.0 / double(n_inf) : 0.0;
    return std::exp(v - m) / z;
  }
};

/// Entry of one cell in the negative and positive sets (-inf: not a member).
inline void mlce_terms(double s, double t, bool soft, double& neg, double& pos) {
  if (s == -kMlceInf) {
    // Masked cells are in neither set (SPEC 2.4: -s = +inf would otherwise poison the positive term).
    neg = pos = -kMlceInf;
    return;
  }
  if (!soft) {
    neg = t == 0 ? s : -kMlceInf;
    pos = t == 1 ? -s : -kMlceInf;
    return;
  }
  neg = t < 1 ? s + std::log1p(-t) : -kMlceInf;
  pos = t > 0 ? -s + std::log(t) : -kMlceInf;
}

template <class T, class TL>
double mlce(const char* fn, const View<const T>& s, const View<const TL>& l, View<T>* g, bool soft,
            Index rows_per_sample) {
  require_shape(fn, "labels", l, s.rows, s.cols, "scores has shape ");
  require(rows_per_sample >= 1, fn, "rows_per_sample must be >= 1, got ", rows_per_sample);
  require(s.rows % rows_per_sample == 0, fn, "scores has ", s.rows, " rows, not a multiple of rows_per_sample ",
          rows_per_sample);
  for (Index r = 0; r < l.rows; ++r)
    for (Index c = 0; c < l.cols; ++c) {
      const double t = static_cast<double>(l(r, c));
      if (soft)
        require(t >= 0 && t <= 1, fn, "labels(", r, ", ", c, ") = ", t, " is not a probability in [0, 1]");
      else
        require(t == 0 || t == 1, fn, "labels(", r, ", ", c, ") = ", t,
                " is not 0 or 1 (soft labels: MultilabelOptions::soft)");
    }
  const Index samples = s.rows / rows_per_sample;
  if (samples == 0) return 0.0;
  std::vector<double> losses(static_cast<std::size_t>(samples));
  const double inv = 1.0 / double(samples);
  parallel_for(samples, [&](Index sample) {
    const Index r0 = sample * rows_per_sample, r1 = r0 + rows_per_sample;
    LseWithZero neg, pos;
    double vn, vp;
    for (Index r = r0; r < r1; ++r)
      for (Index c = 0; c < s.cols; ++c) {
        mlce_terms(double(s(r, c)), double(l(r, c)), soft, vn, vp);
        if (vn != -kMlceInf) neg.add_max(vn);
        if (vp != -kMlceInf) pos.add_max(vp);
      }
    neg.start_sum();
    pos.start_sum();
    for (Index r = r0; r < r1; ++r)
      for (Index c = 0; c < s.cols; ++c) {
        mlce_terms(double(s(r, c)), double(l(r, c)), soft, vn, vp);
        if (vn != -kMlceInf) neg.add_sum(vn);
        if (vp != -kMlceInf) pos.add_sum(vp);
      }
    losses[std::size_t(sample)] = neg.value() + pos.value();
    if (!g) return;
    for (Index r = r0; r < r1; ++r)
      for (Index c = 0; c < s.cols; ++c) {
        mlce_terms(double(s(r, c)), double(l(r, c)), soft, vn, vp);
        const double gn = vn != -kMlceInf ? neg.weight(vn) : 0.0;
        const double gp = vp != -kMlceInf ? pos.weight(vp) : 0.0;  // d(-s)/ds = -1
        (*g)(r, c) = static_cast<T>((gn - gp) * inv);
      }
  });
  double total = 0;
  for (double x : losses) total += x;
  return total * inv;
}

template <class T>
double sparse_mlce(const char* fn, const View<const T>& s, const std::vector<Index>& pos, Index k, View<T>* g,
                   bool mask_zero) {
  const Index rows = s.rows, C = s.cols;
  // Distinct positives per row (the padding index 0 may repeat under mask_zero).
  std::vector<Index> sorted;
  for (Index r = 0; r < rows; ++r) {
    sorted.assign(pos.begin() + r * k, pos.begin() + (r + 1) * k);
    std::sort(sorted.begin(), sorted.end());
    for (Index i = 1; i < k; ++i) {
      const Index v = sorted[std::size_t(i)];
      require(v != sorted[std::size_t(i - 1)] || (mask_zero && v == 0), fn, "positives row ", r,
              " lists class ", v, " twice");
    }
  }
  if (rows == 0) return 0.0;
  std::vector<double> losses(static_cast<std::size_t>(rows));
  const double inv = 1.0 / double(rows);
  parallel_for(rows, [&](Index r) {
    thread_local std::vector<unsigned char> is_pos;
    is_pos.assign(static_cast<std::size_t>(C), 0);
    const Index* pr = pos.data() + r * k;
    for (Index i = 0; i < k; ++i) is_pos[std::size_t(pr[i])] = 1;
    if (mask_zero && C > 0) is_pos[0] = 2;  // class 0 is padding: in no set
    const T* sr = s.row(r);
    LseWithZero neg, ps;
    for (Index c = 0; c < C; ++c) {
      const double v = double(sr[c]);
      if (v == -kMlceInf || is_pos[std::size_t(c)] == 2) continue;
      if (is_pos[std::size_t(c)]) ps.add_max(-v);
      else neg.add_max(v);
    }
    neg.start_sum();
    ps.start_sum();
    for (Index c = 0; c < C; ++c) {
      const double v = double(sr[c]);
      if (v == -kMlceInf || is_pos[std::size_t(c)] == 2) continue;
      if (is_pos[std::size_t(c)]) ps.add_sum(-v);
      else neg.add_sum(v);
    }
    losses[std::size_t(r)] = neg.value() + ps.value();
    if (!g) return;
    T* gr = g->row(r);
    for (Index c = 0; c < C; ++c) {
      const double v = double(sr[c]);
      double w = 0;
      if (v != -kMlceInf && is_pos[std::size_t(c)] != 2) w = is_pos[std::size_t(c)] ? -ps.weight(-v) : neg.weight(v);
      gr[c] = static_cast<T>(w * inv);
    }
  });
  double total = 0;
  for (double x : losses) total += x;
  return total * inv;
}

}  // namespace kexue::detail
