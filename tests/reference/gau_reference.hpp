// SPDX-License-Identifier: MIT
#pragma once
// Scalar, double-precision reference of the GAU layer (SPEC.md 3.1-3.3), written for clarity: every loop is
// the formula of the spec, nothing is tiled or fused. The tests compare kexue::gau() against it.

#include <algorithm>
#include <cmath>
#include <vector>

#include "kexue/gau.hpp"

namespace kexue_test {

using kexue::Index;

inline double gau_ref_swish(double t) { return t / (1.0 + std::exp(-t)); }

/// RoPE of SPEC 1.2 (bert4keras, interleaved pairs, base 10000) of one row at `position`, in double.
inline void gau_ref_rope(std::vector<double>& row, Index position, double base = 10000.0) {
  const Index dim = static_cast<Index>(row.size());
  for (Index i = 0; i < dim / 2; ++i) {
    const double angle = double(position) * std::pow(base, -2.0 * double(i) / double(dim));
    const double a = row[2 * i], b = row[2 * i + 1];
    row[2 * i] = a * std::cos(angle) - b * std::sin(angle);
    row[2 * i + 1] = b * std::cos(angle) + a * std::sin(angle);
  }
}

/// out = GAU(x) for one sequence. `rope` rotates q and k at positions 0..n-1 (the default RopeTable).
/// key_length < 0 takes options.attention.key_length (default n). logit_l1, if given, receives per row i the
/// largest |scale| sum_c |q_ic k_jc| over the keys j it sees (how large a logit is, and the scale of the rounding
/// error a float dot product makes in it: fuzz/fuzz_gau.cpp's bound).
template <class T>
kexue::Matrix<double> gau_reference(const kexue::GauWeights<T>& w, const kexue::Matrix<double>& x,
                                    const kexue::GauOptions& options, bool rope, Index key_length = -1,
                                    std::vector<double>* logit_l1 = nullptr) {
  const Index n = x.rows(), D = w.w_in.rows(), e = w.w_out.rows(), s = w.gamma_q.size(), width = 2 * e + s;
  const kexue::AttentionOptions& ao = options.attention;
  if (key_length < 0) key_length = ao.key_length ? *ao.key_length : n;
  const double scale = ao.scale ? *ao.scale : (options.attention_scale ? 1.0 / std::sqrt(double(s)) : 1.0);

  // [u | v | z] = swish(x W_in + b_in)
  std::vector<std::vector<double>> h(n, std::vector<double>(width));
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < width; ++c) {
      double t = w.b_in.size() ? double(w.b_in[c]) : 0.0;
      for (Index d = 0; d < D; ++d) t += x(i, d) * double(w.w_in(d, c));
      h[i][c] = gau_ref_swish(t);
    }
  // q = gamma_q z + beta_q, k = gamma_k z + beta_k, then RoPE.
  std::vector<std::vector<double>> q(n, std::vector<double>(s)), k(n, std::vector<double>(s));
  for (Index i = 0; i < n; ++i) {
    for (Index c = 0; c < s; ++c) {
      const double z = h[i][2 * e + c];
      q[i][c] = z * double(w.gamma_q[c]) + (w.beta_q.size() ? double(w.beta_q[c]) : 0.0);
      k[i][c] = z * double(w.gamma_k[c]) + (w.beta_k.size() ? double(w.beta_k[c]) : 0.0);
    }
    if (rope) {
      gau_ref_rope(q[i], i);
      gau_ref_rope(k[i], i);
    }
  }
  kexue::Matrix<double> out(n, D);
  std::vector<double> a(n), gated(e);
  // UniLM (SPEC 7.3): c = cumsum(segment ids), key j visible to row i when c[j] <= c[i].
  std::vector<long long> cum(static_cast<std::size_t>(ao.segments ? n : 0));
  for (Index j = 0; j < Index(cum.size()); ++j) cum[j] = (j ? cum[j - 1] : 0) + (*ao.segments)[j];
  for (Index i = 0; i < n; ++i) {
    if (options.zero_padded_rows && i >= key_length) {
      out.row(i).setZero();
      continue;
    }
    // Which keys row i sees, and how many (l).
    Index l = 0;
    auto visible = [&](Index j) {
      return j < key_length && (!ao.causal || j <= i) && (!ao.reverse_causal || j >= i) &&
             (!ao.segments || cum[j] <= cum[i]) && (!options.key_mask || options.key_mask->data()[j] != 0);
    };
    for (Index j = 0; j < n; ++j) l += visible(j) ? 1 : 0;
    if (logit_l1) {
      logit_l1->resize(static_cast<std::size_t>(n), 0.0);
      double mx = 0;
      for (Index j = 0; j < n; ++j) {
        if (!visible(j)) continue;
        double t = 0;
        for (Index c = 0; c < s; ++c) t += std::abs(q[i][c] * k[j][c]);
        mx = std::max(mx, t * std::abs(scale));
      }
      (*logit_l1)[static_cast<std::size_t>(i)] = mx;
    }
    for (Index j = 0; j < n; ++j) {
      double dot = 0;
      for (Index c = 0; c < s; ++c) dot += q[i][c] * k[j][c];
      a[j] = scale * dot;
    }
    if (l == 0) {
      std::fill(a.begin(), a.end(), 0.0);
    } else if (ao.normalization == kexue::Normalization::SquaredRelu) {
      const double L = ao.relu2_length ? double(*ao.relu2_length) : double(l);
      for (Index j = 0; j < n; ++j) a[j] = visible(j) ? std::pow(std::max(a[j], 0.0), 2) / L : 0.0;
    } else {
      double temperature = 1.0;
      if (ao.normalization == kexue::Normalization::SoftmaxPlus)
        temperature = std::log(std::max(double(l), double(ao.min_length))) / std::log(double(ao.train_length));
      double mx = -HUGE_VAL;
      for (Index j = 0; j < n; ++j)
        if (visible(j)) mx = std::max(mx, a[j] * temperature);
      double sum = 0;
      for (Index j = 0; j < n; ++j) {
        a[j] = visible(j) ? std::exp(a[j] * temperature - mx) : 0.0;
        sum += a[j];
      }
      for (Index j = 0; j < n; ++j) a[j] /= sum;
    }
    // gated = u * (A v)
    for (Index c = 0; c < e; ++c) {
      double av = 0;
      for (Index j = 0; j < n; ++j) av += a[j] * h[j][e + c];
      gated[c] = h[i][c] * av;
    }
    for (Index d = 0; d < D; ++d) {
      double t = w.b_out.size() ? double(w.b_out[d]) : 0.0;
      for (Index c = 0; c < e; ++c) t += gated[c] * double(w.w_out(c, d));
      out(i, d) = t;
    }
  }
  return out;
}

}  // namespace kexue_test
