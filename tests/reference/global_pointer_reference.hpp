// SPDX-License-Identifier: MIT
#pragma once
// Scalar, double-accumulating reference of the GlobalPointer family (SPEC 2), written for clarity and
// independent of the library's kernels (its own sinusoid and rotation, SPEC 1.1-1.2). Tests compare the
// SIMD kernels against it.

#include <cmath>
#include <limits>
#include <vector>

#include "kexue/global_pointer.hpp"

namespace kexue_ref {

using kexue::Index;
using MatD = kexue::Matrix<double>;

/// x [n, d] rotated at positions 0..n-1, bert4keras interleaved pairs (2i, 2i+1).
inline MatD rope(const MatD& x) {
  MatD y = x;
  const Index d = x.cols();
  for (Index m = 0; m < x.rows(); ++m)
    for (Index i = 0; i < d / 2; ++i) {
      const double w = std::pow(10000.0, -2.0 * double(i) / double(d));
      const double c = std::cos(double(m) * w), s = std::sin(double(m) * w);
      y(m, 2 * i) = x(m, 2 * i) * c - x(m, 2 * i + 1) * s;
      y(m, 2 * i + 1) = x(m, 2 * i + 1) * c + x(m, 2 * i) * s;
    }
  return y;
}

/// The masked score of a cell from its pre-mask value, SPEC 2.2-2.3 (see kexue::MaskConvention).
/// GlobalPointer: x = raw dot product, scaled after masking for the legacy conventions.
/// Efficient: x = scaled dot product + biases, never scaled again.
inline double mask_cell(double x, Index i, Index j, Index length, const kexue::GlobalPointerOptions& o, double scale,
                        bool efficient) {
  const bool rv = i < length, cv = j < length, upper = !o.tril_mask || j >= i;
  const double m = o.legacy_magnitude;
  double y = 0;
  switch (o.convention) {
    case kexue::MaskConvention::Current:
      return rv && cv && upper ? (efficient ? x : x * scale) : o.fill;
    case kexue::MaskConvention::Bert4keras2021:
      y = rv ? x : -m;  // sequence_masking along the rows...
      y = cv ? y : -m;  // ...then along the columns
      break;
    case kexue::MaskConvention::TorchPort:
      y = cv ? x : -m;
      break;
  }
  if (!upper) y -= m;
  return efficient ? y : y * scale;
}

/// One head: q, k [n, d] -> [n, n].
inline MatD global_pointer(const MatD& q, const MatD& k, Index length, const kexue::GlobalPointerOptions& o = {}) {
  const Index n = q.rows(), d = q.cols();
  const MatD qr = o.rope ? rope(q) : q, kr = o.rope ? rope(k) : k;
  const double scale = o.scale ? 1.0 / std::sqrt(double(d)) : 1.0;
  MatD s(n, n);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) {
      double dot = 0;
      for (Index t = 0; t < d; ++t) dot += qr(i, t) * kr(j, t);
      s(i, j) = mask_cell(dot, i, j, length, o, scale, false);
    }
  return s;
}

/// The layer: h [n, D], w [D, 2Ad], b [2Ad] or empty -> [A*n, n].
inline MatD global_pointer_layer(const MatD& h, const MatD& w, const Eigen::VectorXd& b, Index heads, Index d,
                                 Index length, const kexue::GlobalPointerOptions& o = {}) {
  const Index n = h.rows();
  MatD y = h * w;
  if (b.size()) y.rowwise() += b.transpose();
  MatD out(heads * n, n);
  for (Index a = 0; a < heads; ++a)
    out.middleRows(a * n, n) = global_pointer(y.middleCols(2 * d * a, d), y.middleCols(2 * d * a + d, d), length, o);
  return out;
}

/// Efficient GlobalPointer (SPEC 2.6) -> [A*n, n].
inline MatD efficient_global_pointer(const MatD& h, const MatD& wp, const Eigen::VectorXd& bp, const MatD& wc,
                                     const Eigen::VectorXd& bc, Index heads, Index d, Index length,
                                     const kexue::GlobalPointerOptions& o = {}) {
  const Index n = h.rows();
  MatD p = h * wp;
  if (bp.size()) p.rowwise() += bp.transpose();
  MatD q(n, d), k(n, d);
  for (Index i = 0; i < n; ++i)
    for (Index t = 0; t < d; ++t) {
      q(i, t) = p(i, 2 * t);
      k(i, t) = p(i, 2 * t + 1);
    }
  MatD c = p * wc;
  if (bc.size()) c.rowwise() += bc.transpose();
  c *= 0.5;
  const MatD qr = o.rope ? rope(q) : q, kr = o.rope ? rope(k) : k;
  const double scale = o.scale ? 1.0 / std::sqrt(double(d)) : 1.0;
  MatD out(heads * n, n);
  for (Index a = 0; a < heads; ++a)
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < n; ++j) {
        double dot = 0;
        for (Index t = 0; t < d; ++t) dot += qr(i, t) * kr(j, t);
        out(a * n + i, j) = mask_cell(dot * scale + c(i, 2 * a + 1) + c(j, 2 * a), i, j, length, o, scale, true);
      }
  return out;
}

/// Brute-force decoding: every cell in scan order.
inline std::vector<kexue::Span> decode(const MatD& s, Index heads, const kexue::DecodeOptions& o) {
  const Index n = s.cols(), len = o.length.value_or(n);
  std::vector<kexue::Span> out;
  for (Index a = 0; a < heads; ++a)
    for (Index i = 0; i < len; ++i)
      for (Index j = 0; j < len; ++j) {
        if (o.exclude_boundary_tokens && (i == 0 || j == 0 || i == len - 1 || j == len - 1)) continue;
        if (s(a * n + i, j) > o.threshold) out.push_back({a, i, j, s(a * n + i, j)});
      }
  return out;
}

/// log(1 + sum e^v) written plainly (inputs are moderate in the tests that use it).
inline double log1p_sum_exp(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, x);
  double z = std::exp(-m);
  for (double x : v) z += std::exp(x - m);
  return m + std::log(z);
}

/// SPEC 2.4 for one sample (flattened), soft form (t in {0,1} gives the hard form); grad of this sample.
inline double mlce_row(const std::vector<double>& s, const std::vector<double>& t, std::vector<double>* grad) {
  std::vector<double> neg, pos;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (std::isinf(s[i]) && s[i] < 0) continue;
    if (t[i] < 1) neg.push_back(s[i] + std::log(1 - t[i]));
    if (t[i] > 0) pos.push_back(-s[i] + std::log(t[i]));
  }
  const double ln = log1p_sum_exp(neg), lp = log1p_sum_exp(pos);
  if (grad) {
    grad->assign(s.size(), 0.0);
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (std::isinf(s[i]) && s[i] < 0) continue;
      double g = 0;
      if (t[i] < 1) g += std::exp(s[i] + std::log(1 - t[i]) - ln);
      if (t[i] > 0) g -= std::exp(-s[i] + std::log(t[i]) - lp);
      (*grad)[i] = g;
    }
  }
  return ln + lp;
}

}  // namespace kexue_ref
