// SPDX-License-Identifier: MIT
#pragma once
// Scalar, double-accumulating reference of kexue::attention (SPEC 3.3), written for clarity: it builds the
// whole logits matrix, masks it with -inf like bert4keras' attention_normalize, and normalises each row.
// The only deviation from bert4keras is the documented one: a row with no visible key is 0, not NaN. A key a
// row cannot see takes no part in that row at all (its k and v are never combined with the row), so inf or
// NaN in a hidden key cannot reach the row, where softmax(q k^T) v would form 0 * inf = NaN.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kexue/attention.hpp"

namespace kexue_test {

struct RefAttentionArgs {
  kexue::Normalization norm = kexue::Normalization::Softmax;
  bool causal = false;
  double scale = 0;        // 0: 1/sqrt(d)
  long key_length = -1;    // -1: m
  long train_length = 512;
  long min_length = 16;
  long relu2_length = 0;   // 0: per-row l
  const unsigned char* mask = nullptr;
};

/// out[n x dv] = A v with row-major q[n x d], k[m x d], v[m x dv]; also returns A [n x m] if wanted.
inline std::vector<double> reference_attention(const std::vector<double>& q, const std::vector<double>& k,
                                               const std::vector<double>& v, long n, long m, long d, long dv,
                                               const RefAttentionArgs& a, std::vector<double>* weights = nullptr) {
  const double ninf = -std::numeric_limits<double>::infinity();
  const double scale = a.scale != 0 ? a.scale : 1.0 / std::sqrt(double(d));
  const long kl = a.key_length < 0 ? m : a.key_length;
  std::vector<double> A(static_cast<size_t>(n * m), 0.0), out(static_cast<size_t>(n * dv), 0.0);
  for (long i = 0; i < n; ++i) {
    std::vector<double> logits(static_cast<size_t>(m));
    std::vector<char> visible(static_cast<size_t>(m));
    long l = 0;
    for (long j = 0; j < m; ++j) {
      bool keep = j < kl;
      if (a.mask && !a.mask[j]) keep = false;
      if (a.causal && j > i + (m - n)) keep = false;
      visible[j] = keep;
      logits[j] = ninf;
      if (!keep) continue;
      double s = 0;
      for (long c = 0; c < d; ++c) s += q[i * d + c] * k[j * d + c];
      logits[j] = s * scale;
      ++l;
    }
    if (l == 0) continue;  // no visible key: zeros
    double* row = &A[i * m];
    if (a.norm == kexue::Normalization::SquaredRelu) {
      const double L = a.relu2_length > 0 ? double(a.relu2_length) : double(l);
      for (long j = 0; j < m; ++j) {
        const double r = logits[j] > 0 ? logits[j] : 0.0;  // relu(-inf) = 0
        row[j] = r * r / L;
      }
    } else {
      double factor = 1.0;
      if (a.norm == kexue::Normalization::SoftmaxPlus)
        factor = std::log(std::max(double(l), double(a.min_length))) / std::log(double(a.train_length));
      double mx = ninf;
      for (long j = 0; j < m; ++j) mx = std::max(mx, logits[j] * factor);
      double sum = 0;
      for (long j = 0; j < m; ++j) {
        row[j] = visible[j] ? std::exp(logits[j] * factor - mx) : 0.0;
        sum += row[j];
      }
      for (long j = 0; j < m; ++j) row[j] /= sum;
    }
    for (long j = 0; j < m; ++j)
      if (visible[j])
        for (long e = 0; e < dv; ++e) out[i * dv + e] += row[j] * v[j * dv + e];
  }
  if (weights) *weights = A;
  return out;
}

}  // namespace kexue_test
