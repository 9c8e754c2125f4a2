// SPDX-License-Identifier: MIT
#pragma once
// Scalar, double-accumulating reference of kexue::attention (SPEC 3.3), written for clarity: it builds the
// whole logits matrix, masks it with -inf like bert4keras' attention_normalize, and normalises each row.
// The only deviation from bert4keras is the documented one: a row with no visible key is 0, not NaN. A key a
// row cannot see takes no part in that row at all (its k and v are never combined with the row), so inf or
// NaN in a hidden key cannot reach the row, where softmax(q k^T) v would form 0 * inf = NaN.
// frozen_one_row (at the end) is different in kind: a verbatim copy of the SIMD one-row (decode) kernel as it was
// before query heads sharing a KV head were grouped, the bit-exact yardstick for the grouped kernel.

#include <algorithm>
#include <cmath>
#include <cstdint>
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
  bool reverse_causal = false;                // keep j >= i (SPEC 7.3)
  const std::int64_t* segments = nullptr;     // UniLM: keep c[j] <= c[i], c = cumsum(segments) (n == m)
};

/// out[n x dv] = A v with row-major q[n x d], k[m x d], v[m x dv]; also returns A [n x m] if wanted.
inline std::vector<double> reference_attention(const std::vector<double>& q, const std::vector<double>& k,
                                               const std::vector<double>& v, long n, long m, long d, long dv,
                                               const RefAttentionArgs& a, std::vector<double>* weights = nullptr) {
  const double ninf = -std::numeric_limits<double>::infinity();
  const double scale = a.scale != 0 ? a.scale : 1.0 / std::sqrt(double(d));
  const long kl = a.key_length < 0 ? m : a.key_length;
  std::vector<double> A(static_cast<size_t>(n * m), 0.0), out(static_cast<size_t>(n * dv), 0.0);
  // bert4keras' UniLM_Mask, literally: the cumulative sum of the ids, then c[j] <= c[i].
  std::vector<std::int64_t> c(static_cast<size_t>(a.segments ? m : 0));
  for (long j = 0; j < long(c.size()); ++j) c[j] = (j ? c[j - 1] : 0) + a.segments[j];
  for (long i = 0; i < n; ++i) {
    std::vector<double> logits(static_cast<size_t>(m));
    std::vector<char> visible(static_cast<size_t>(m));
    long l = 0;
    for (long j = 0; j < m; ++j) {
      bool keep = j < kl;
      if (a.mask && !a.mask[j]) keep = false;
      if (a.causal && j > i + (m - n)) keep = false;
      if (a.reverse_causal && j < i) keep = false;
      if (a.segments && c[j] > c[i]) keep = false;
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

/// The one-row (decode) kernel as it was before query rows sharing a KV head were grouped (commit 2494720,
/// detail::attention_one_row): one query row against keys [0, lim) in chunks of kChunk keys, a dot product per
/// visible key, the online-softmax update per chunk, scale() and axpy() per key of nonzero weight. Kept here,
/// frozen, so that the grouped kernel can be checked bit for bit against the arithmetic it must preserve. One
/// deliberate change since: the per-key dot product is detail::dot_chain (one accumulator per key) instead of
/// detail::dot (four), in both the kernel and here, because dot()'s combining adds cost 3/4 of its FMAs at d = 64
/// with 16-float registers.
template <class T, kexue::Index kChunk = 64>
void frozen_one_row(const T* q, kexue::Index d, const T* k, kexue::Index ldk, const T* v, kexue::Index ldv,
                    kexue::Index dv, kexue::Index lim, const unsigned char* mask, T rowscale, bool relu2, T relu2_inv,
                    T* out) {
  namespace kd = kexue::detail;
  using kexue::Index;
  constexpr Index L = kd::kLanes<T>;
  const T ninf = -std::numeric_limits<T>::infinity();
  const T big = std::numeric_limits<T>::max();
  std::vector<T> sbuf(static_cast<size_t>(kChunk)), o(static_cast<size_t>(dv), T(0));
  T m = ninf, l = T(0);
  for (Index j0 = 0; j0 < lim; j0 += kChunk) {
    const Index nb = std::min(kChunk, lim - j0);
    T cmax = ninf;
    for (Index j = 0; j < kChunk; ++j) {
      if (j >= nb || (mask && !mask[j0 + j])) {
        sbuf[j] = relu2 ? T(0) : ninf;
        continue;
      }
      T sv = kd::dot_chain(q, k + (j0 + j) * ldk, d) * rowscale;
      if (relu2) {
        sv = sv > T(0) ? sv * sv : T(0);
      } else {
        sv = std::min(std::max(sv, -big), big);
        cmax = std::max(cmax, sv);
      }
      sbuf[j] = sv;
    }
    if (!relu2) {
      const T mnew = std::max(m, cmax);
      const T shift = mnew == ninf ? T(0) : mnew;
      const T alpha = kd::scalar_exp(m - shift);
      kd::Batch<T> sum(T(0));
      const kd::Batch<T> vshift(shift);
      for (Index j = 0; j < kChunk; j += L) {
        const kd::Batch<T> p = kd::fast_exp<T>(kd::load(sbuf.data() + j) - vshift);
        sum += p;
        kd::store(sbuf.data() + j, p);
      }
      l = l * alpha + kd::reduce_add<T>(sum);
      m = mnew;
      if (alpha != T(1)) kd::scale(alpha, o.data(), dv);
    }
    for (Index j = 0; j < nb; ++j)
      if (sbuf[j] != T(0)) kd::axpy(sbuf[j], v + (j0 + j) * ldv, o.data(), dv);
  }
  const T f = relu2 ? relu2_inv : (l > T(0) ? T(1) / l : T(0));
  for (Index e = 0; e < dv; ++e) out[e] = o[e] * f;
}

}  // namespace kexue_test
