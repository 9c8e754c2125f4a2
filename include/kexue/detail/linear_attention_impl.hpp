// SPDX-License-Identifier: MIT
#pragma once
// Per-head kernels of linear attention (SPEC 5.2) and FLASH mixed-chunk attention (SPEC 3.5). They work on raw
// views whose arguments were validated by the public functions, and use a per-thread workspace whose size depends
// only on (chunk, d, dv): one allocation the first time a thread sees a shape, none afterwards.
//
// The causal form is chunk-wise (fla's "chunk" form): for a chunk of C rows,
//   O   = phi(Q) S_prev + tril(phi(Q) phi(K)^T) V,   den = phi(Q) z_prev + rowsum(tril(phi(Q) phi(K)^T)),
//   S  += phi(K)^T V,  z += sum_j phi(k_j),
// which is O(n (d dv + C (d + dv))) time and keeps only the d x dv state: no n x d x dv tensor.

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/linear_attention_simd.hpp"
#include "kexue/detail/view.hpp"

namespace kexue::detail {

/// Chunk length of the causal linear-attention kernel. The intra-chunk products cost O(C (d + dv)) per row and
/// the state products O(d dv) per row, so C ~ d balances them; 64 also keeps every chunk buffer at 16 KB (fp32,
/// d = 64), so the whole working set of one head stays in L1 + L2. Measured on the shape (causal, n = 8192,
/// d = dv = 64, one thread, best CPU time per head, on a loaded machine): C = 32: 2.86 ms, 48: 2.72 ms, 64: 2.83 ms,
/// 96: 3.18 ms, 128: 3.51 ms; 48 and 64 are within noise, and 64 keeps the tiles whole for d = 64.
constexpr Index kLinearChunk = 64;

/// The (b, h) slice of a [batch, heads, seq, dim] view as a 2-D view.
template <class T>
inline View<const T> head_view(const TensorView<const T>& t, Index b, Index h) {
  return {t.row(b, h, 0), t.seq(), t.dim(), t.strides[2]};
}
template <class T>
inline View<T> head_view_mut(const TensorView<T>& t, Index b, Index h) {
  return {t.row(b, h, 0), t.seq(), t.dim(), t.strides[2]};
}

/// Running state of one head in double: S [d x dv] row-major and z [d]. nullptr when the call starts from zero.
struct StateRef {
  double* s = nullptr;
  double* z = nullptr;
};

template <class T>
struct LinearWorkspace {
  std::vector<T> qphi, kphi, kphit, vb, a, o, s, ds, z, dz, den;
  std::vector<double> sd, zd;
  // cp, dvp: padded column counts; ldk, ldv: row strides of the B-operand buffers, one tile wider than the rows
  // so that a power-of-two row length cannot map a whole B panel onto a few L1 sets.
  Index chunk = 0, cp = 0, d = 0, dv = 0, dvp = 0, ldk = 0, ldv = 0;

  void prepare(Index chunk_, Index d_, Index dv_) {
    chunk = chunk_;
    cp = pad_cols<T>(chunk_);
    d = d_;
    dv = dv_;
    dvp = pad_cols<T>(dv_);
    ldk = cp + kNR<T>;
    ldv = dvp + kNR<T>;
    auto fit = [](auto& v, Index n) {
      if (static_cast<Index>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
    };
    fit(qphi, chunk * std::max<Index>(d, 1));
    fit(kphi, chunk * std::max<Index>(d, 1));
    fit(dz, std::max<Index>(d, 1));
    fit(kphit, std::max<Index>(d, 1) * ldk);
    fit(vb, cp * ldv);
    fit(a, chunk * ldk);
    fit(o, chunk * ldv);
    fit(s, std::max<Index>(d, 1) * ldv);
    fit(ds, std::max<Index>(d, 1) * ldv);
    fit(sd, std::max<Index>(d, 1) * ldv);
    fit(z, std::max<Index>(d, 1));
    fit(zd, std::max<Index>(d, 1));
    fit(den, chunk);
    // Padding columns of V and of the state must be zero: they flow through the products into padding columns only.
    std::fill(vb.begin(), vb.begin() + cp * ldv, T(0));
    std::fill(kphit.begin(), kphit.begin() + std::max<Index>(d, 1) * ldk, T(0));
  }
};

template <class T>
inline LinearWorkspace<T>& linear_workspace() {
  thread_local LinearWorkspace<T> w;
  return w;
}

/// The running state S, z of one head while a call runs: T for the products, plus a double master copy when the
/// caller asked for double accumulation of float data (S_double += (phi(K)^T V)_chunk, then S = float(S_double)).
template <class T>
struct RunningState {
  LinearWorkspace<T>& w;
  bool wide;  // double master copy in use

  RunningState(LinearWorkspace<T>& w_, bool double_state, const StateRef& init)
      : w(w_), wide(double_state && !std::is_same<T, double>::value) {
    const Index d = w.d, dv = w.dv, ldv = w.ldv;
    std::fill(w.s.begin(), w.s.begin() + std::max<Index>(d, 1) * ldv, T(0));
    std::fill(w.sd.begin(), w.sd.begin() + std::max<Index>(d, 1) * ldv, 0.0);
    std::fill(w.z.begin(), w.z.begin() + std::max<Index>(d, 1), T(0));
    std::fill(w.zd.begin(), w.zd.begin() + std::max<Index>(d, 1), 0.0);
    if (init.s) {
      for (Index p = 0; p < d; ++p) {
        for (Index c = 0; c < dv; ++c) {
          w.sd[p * ldv + c] = init.s[p * dv + c];
          w.s[p * ldv + c] = static_cast<T>(init.s[p * dv + c]);
        }
        w.zd[p] = init.z[p];
        w.z[p] = static_cast<T>(init.z[p]);
      }
    }
  }

  /// S += phi(K)^T V and z += sum_j phi(k_j) for the `count` keys in the chunk buffers: phi(K)^T in kphit
  /// [d x cp] when `transposed`, else phi(K) as rows in kphi [count x d] (the non-causal path, which needs no
  /// score product and so skips the transpose).
  void absorb(Index count, bool transposed) {
    const Index d = w.d, dvp = w.dvp, ldv = w.ldv, ldk = w.ldk;
    if (count == 0 || d == 0) return;
    const T* a = transposed ? w.kphit.data() : w.kphi.data();
    const Index ars = transposed ? ldk : 1, aps = transposed ? 1 : d;
    T* dz = w.dz.data();
    if (transposed) {
      for (Index p = 0; p < d; ++p) dz[p] = row_sum(w.kphit.data() + p * ldk, count);
    } else {
      std::fill(dz, dz + d, T(0));
      for (Index j = 0; j < count; ++j) axpy(T(1), w.kphi.data() + j * d, dz, d);
    }
    if (!wide) {
      gemm<T>(d, dvp, count, a, ars, aps, w.vb.data(), ldv, w.s.data(), ldv, true);
      for (Index p = 0; p < d; ++p) w.z[p] += dz[p];
      return;
    }
    gemm<T>(d, dvp, count, a, ars, aps, w.vb.data(), ldv, w.ds.data(), ldv, false);
    for (Index i = 0; i < d * ldv; ++i) {
      w.sd[i] += static_cast<double>(w.ds[i]);
      w.s[i] = static_cast<T>(w.sd[i]);
    }
    for (Index p = 0; p < d; ++p) {
      w.zd[p] += static_cast<double>(dz[p]);
      w.z[p] = static_cast<T>(w.zd[p]);
    }
  }

  void store(const StateRef& out) const {
    if (!out.s) return;
    const Index d = w.d, dv = w.dv, ldv = w.ldv;
    for (Index p = 0; p < d; ++p) {
      for (Index c = 0; c < dv; ++c)
        out.s[p * dv + c] = wide ? w.sd[p * ldv + c] : static_cast<double>(w.s[p * ldv + c]);
      out.z[p] = wide ? w.zd[p] : static_cast<double>(w.z[p]);
    }
  }
};

/// Loads `count` key rows starting at row `k0` into the chunk buffers: phi(K)^T into kphit [d x cp] and V into
/// vb [cp x dvp]. Keys at or past `key_length` are padding: their phi column and V row are zero, so neither a
/// garbage value nor a NaN in a padded row can reach the result.
/// A row of S (T itself, or Eigen::half / Eigen::bfloat16) as T: a copy, or the exact widening.
template <class T, class S>
inline void copy_row_as(const S* src, T* dst, Index n) {
  if constexpr (std::is_same<S, T>::value) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
  } else {
    constexpr Index L = kLanes<T>;
    Index i = 0;
    for (; i + L <= n; i += L) store(dst + i, load_as<T>(src + i));
    for (; i < n; ++i) dst[i] = as_compute<T>(src[i]);
  }
}

template <class T, class S>
inline void load_keys(LinearWorkspace<T>& w, Phi f, const View<const S>& k, const View<const S>& v, Index k0,
                      Index count, Index key_length, bool transposed) {
  const Index d = w.d, dv = w.dv, ldv = w.ldv, ldk = w.ldk;
  for (Index j = 0; j < count; ++j) {
    const Index row = k0 + j;
    T* vrow = w.vb.data() + j * ldv;
    if (row < key_length) {
      if (transposed)
        phi_row_to_column(f, k.row(row), w.kphit.data() + j, ldk, d);
      else
        phi_row(f, k.row(row), w.kphi.data() + j * d, d);
      copy_row_as(v.row(row), vrow, dv);
    } else {
      if (transposed)
        for (Index p = 0; p < d; ++p) w.kphit[p * ldk + j] = T(0);
      else
        std::fill(w.kphi.data() + j * d, w.kphi.data() + (j + 1) * d, T(0));
      std::fill(vrow, vrow + dv, T(0));
    }
  }
}

/// out row = o row / (den + eps); a zero denominator (no visible key, eps = 0) gives a zero row, not 0/0.
template <class T>
inline void write_normalised(const T* o, T den, T eps, T* out, Index dv) {
  const T q = den + eps;
  const T r = q != T(0) ? T(1) / q : T(0);
  for (Index c = 0; c < dv; ++c) out[c] = o[c] * r;
}

/// One head of linear attention. Non-causal: every query sees keys [0, key_length). Causal: query i sees keys
/// j <= i + (m - n), j < key_length (bottom-right aligned, as attention's causal mask). `state` (optional) seeds
/// the running state and receives the final one (the streaming form).
/// Streaming calls of at most this many tokens (decoding) skip the chunk machinery: setting up the chunk buffers
/// and converting the state costs several times the O(d dv) work of one token.
constexpr Index kRecurrentRows = 4;

/// The recurrence of SPEC 5.2 token by token, directly on the caller's double state (decode steps): for each token
/// i, S += phi(k_i) v_i^T and z += phi(k_i) (if i < key_length), then o_i = phi(q_i)^T S / (phi(q_i)^T z + eps).
template <class T, class S>
inline void linear_recurrent_head(const View<const S>& q, const View<const S>& k, const View<const S>& v,
                                  const View<T>& out, Phi f, T eps, Index key_length, const StateRef& state) {
  const Index n = q.rows, d = q.cols, dv = v.cols;
  double* s = state.s;
  double* z = state.z;
  T fk[256], fq[256];  // d <= 256 on this path (checked by the caller)
  double num[256];
  for (Index i = 0; i < n; ++i) {
    if (i < key_length) {
      phi_row(f, k.row(i), fk, d);
      const S* vi = v.row(i);
      for (Index p = 0; p < d; ++p) {
        const double kp = static_cast<double>(fk[p]);
        z[p] += kp;
        double* sp = s + p * dv;
        for (Index c = 0; c < dv; ++c) sp[c] += kp * static_cast<double>(as_compute<T>(vi[c]));
      }
    }
    phi_row(f, q.row(i), fq, d);
    double den = static_cast<double>(eps);
    std::fill(num, num + dv, 0.0);
    for (Index p = 0; p < d; ++p) {
      const double qp = static_cast<double>(fq[p]);
      den += qp * z[p];
      const double* sp = s + p * dv;
      for (Index c = 0; c < dv; ++c) num[c] += qp * sp[c];
    }
    const double r = den != 0 ? 1.0 / den : 0.0;
    T* o = out.row(i);
    for (Index c = 0; c < dv; ++c) o[c] = static_cast<T>(num[c] * r);
  }
}

/// q, k, v may be stored as S = Eigen::half / Eigen::bfloat16 with T = out's type: they are widened as they are
/// read into the T chunk buffers (phi rows, V rows), so the result is the T kernel's on the widened inputs.
template <class T, class S>
inline void linear_attention_head(const View<const S>& q, const View<const S>& k, const View<const S>& v,
                                  const View<T>& out, Phi f, bool causal, T eps, Index key_length, bool double_state,
                                  const StateRef& state, Index chunk = kLinearChunk) {
  const Index n = q.rows, m = k.rows, d = q.cols, dv = v.cols;
  if (state.s && causal && n == m && n <= kRecurrentRows && d <= 256 && dv <= 256) {
    linear_recurrent_head(q, k, v, out, f, eps, key_length, state);
    return;
  }
  LinearWorkspace<T>& w = linear_workspace<T>();
  w.prepare(chunk, d, dv);
  RunningState<T> st(w, double_state, state);
  const Index dvp = w.dvp, ldv = w.ldv, ldk = w.ldk;

  if (!causal) {
    const Index valid = std::min(m, key_length);
    for (Index k0 = 0; k0 < valid; k0 += chunk) {
      const Index cc = std::min(chunk, valid - k0);
      load_keys(w, f, k, v, k0, cc, key_length, false);
      st.absorb(cc, false);
    }
    for (Index t = 0; t < n; t += chunk) {
      const Index cc = std::min(chunk, n - t);
      for (Index i = 0; i < cc; ++i) phi_row(f, q.row(t + i), w.qphi.data() + i * d, d);
      gemm<T>(cc, dvp, d, w.qphi.data(), d, 1, w.s.data(), ldv, w.o.data(), ldv, false);
      for (Index i = 0; i < cc; ++i) {
        const T den = dot(w.qphi.data() + i * d, w.z.data(), d);
        write_normalised(w.o.data() + i * ldv, den, eps, out.row(t + i), dv);
      }
    }
    st.store(state);
    return;
  }

  // Causal, bottom-right aligned: query i pairs with key i + off. Keys before the first query's diagonal are a
  // prefix every query sees; queries before the first key see nothing.
  const Index off = m - n;
  for (Index k0 = 0; k0 < std::min(off, key_length); k0 += chunk) {
    const Index cc = std::min(chunk, std::min(off, key_length) - k0);
    load_keys(w, f, k, v, k0, cc, key_length, false);
    st.absorb(cc, false);
  }
  const Index q_begin = std::max<Index>(0, -off);
  for (Index i = 0; i < std::min(q_begin, n); ++i) std::fill(out.row(i), out.row(i) + dv, T(0));
  for (Index t = q_begin; t < n; t += chunk) {
    const Index cc = std::min(chunk, n - t);
    const Index k0 = t + off;
    for (Index i = 0; i < cc; ++i) phi_row(f, q.row(t + i), w.qphi.data() + i * d, d);
    load_keys(w, f, k, v, k0, cc, key_length, true);
    // Intra-chunk scores, lower triangle only; the rest of each row tile is zeroed so the A V product and the
    // row sums can run over whole tiles.
    T* a = w.a.data();
    gemm_lower<T>(cc, d, 0, w.qphi.data(), d, 1, w.kphit.data(), ldk, a, ldk);
    for (Index i = 0; i < cc; ++i) {
      const Index tile_end = std::min(cc, (i / kMR + 1) * kMR);
      std::fill(a + i * ldk + i + 1, a + i * ldk + std::max(tile_end, i + 1), T(0));
      w.den[i] = dot(w.qphi.data() + i * d, w.z.data(), d) + row_sum(a + i * ldk, i + 1);
    }
    gemm<T>(cc, dvp, d, w.qphi.data(), d, 1, w.s.data(), ldv, w.o.data(), ldv, false);
    // A key later in the chunk must not reach an earlier row even when its v is inf or NaN (see gemm_lower_a).
    gemm_lower_a<T>(cc, dvp, cc, 0, a, ldk, w.vb.data(), ldv, w.o.data(), ldv, rows_finite(w.vb.data(), cc, dv, ldv));
    for (Index i = 0; i < cc; ++i) write_normalised(w.o.data() + i * ldv, w.den[i], eps, out.row(t + i), dv);
    st.absorb(cc, true);
  }
  st.store(state);
}

// ---- FLASH mixed-chunk attention (SPEC 3.5) -------------------------------------------------------------------

/// How the causal linear (cross-chunk) part is normalised.
enum class FlashNorm { SequenceLength, Prefix };

template <class T>
struct FlashWorkspace {
  std::vector<T> qq, kqt, lq, klt, vb, a, o, s, ss;
  // cp, ep: padded column counts; ldk, ldv: row strides, one tile wider (see LinearWorkspace).
  Index c = 0, cp = 0, sq = 0, sl = 0, e = 0, ep = 0, ldk = 0, ldv = 0;

  void prepare(Index c_, Index sq_, Index sl_, Index e_) {
    c = c_;
    cp = pad_cols<T>(c_);
    sq = sq_;
    sl = sl_;
    e = e_;
    ep = pad_cols<T>(e_);
    ldk = cp + kNR<T>;
    ldv = ep + kNR<T>;
    auto fit = [](auto& v, Index n) {
      if (static_cast<Index>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
    };
    const Index sq1 = std::max<Index>(sq, 1), sl1 = std::max<Index>(sl, 1);
    fit(qq, c * sq1);
    fit(kqt, sq1 * ldk);
    fit(lq, c * sl1);
    fit(klt, sl1 * ldk);
    fit(vb, cp * ldv);
    fit(a, c * ldk);
    fit(o, c * ldv);
    fit(s, sl1 * ldv);
    fit(ss, sl1 * ldv);
    std::fill(vb.begin(), vb.begin() + cp * ldv, T(0));
    std::fill(kqt.begin(), kqt.begin() + sq1 * ldk, T(0));
    std::fill(klt.begin(), klt.begin() + sl1 * ldk, T(0));
    std::fill(s.begin(), s.begin() + sl1 * ldv, T(0));
  }
};

template <class T>
inline FlashWorkspace<T>& flash_workspace() {
  thread_local FlashWorkspace<T> w;
  return w;
}

/// Loads the keys of one chunk: K_quad^T, K_lin^T (transposed, zero columns for padded keys) and V.
template <class T>
inline void flash_load_keys(FlashWorkspace<T>& w, const View<const T>& kq, const View<const T>& kl,
                            const View<const T>& v, Index k0, Index count, Index key_length) {
  for (Index j = 0; j < count; ++j) {
    const Index row = k0 + j;
    const bool valid = row < key_length;
    for (Index p = 0; p < w.sq; ++p) w.kqt[p * w.ldk + j] = valid ? kq(row, p) : T(0);
    for (Index p = 0; p < w.sl; ++p) w.klt[p * w.ldk + j] = valid ? kl(row, p) : T(0);
    T* vrow = w.vb.data() + j * w.ldv;
    if (valid && w.e > 0)
      std::memcpy(vrow, v.row(row), static_cast<std::size_t>(w.e) * sizeof(T));
    else
      std::fill(vrow, vrow + w.e, T(0));
  }
}

/// One head of FLASH mixed-chunk attention. For chunk g (rows [g c, g c + c)):
///   O_g = relu(scale Qq_g Kq_g^T)^2 / quad_norm  V_g   (upper triangle masked when causal)
///       + Ql_g S_g / lin_norm_g,
/// S_g = sum of Kl_h^T V_h over all chunks (non-causal) or over h < g (causal). Keys at or past key_length are
/// masked from both parts.
template <class T>
inline void flash_head(const View<const T>& qq, const View<const T>& kq, const View<const T>& ql,
                       const View<const T>& kl, const View<const T>& v, const View<T>& out, Index chunk, bool causal,
                       T scale, T quad_norm, FlashNorm norm, Index key_length) {
  const Index n = qq.rows, sq = qq.cols, sl = ql.cols, e = v.cols;
  FlashWorkspace<T>& w = flash_workspace<T>();
  w.prepare(chunk, sq, sl, e);
  const Index cp = w.cp, ep = w.ep, ldk = w.ldk, ldv = w.ldv;
  const Index valid = std::min(n, key_length);
  const T inv_quad = T(1) / quad_norm;
  const T seq_norm = valid > 0 ? T(1) / static_cast<T>(valid) : T(0);

  if (!causal) {
    for (Index k0 = 0; k0 < valid; k0 += chunk) {
      const Index cc = std::min(chunk, valid - k0);
      flash_load_keys(w, kq, kl, v, k0, cc, key_length);
      gemm<T>(sl, ep, cc, w.klt.data(), ldk, 1, w.vb.data(), ldv, w.s.data(), ldv, true);
    }
    for (Index i = 0; i < sl * ldv; ++i) w.s[i] *= seq_norm;
  }
  Index absorbed = 0;  // keys summed into s so far (causal)
  for (Index t = 0; t < n; t += chunk) {
    const Index cc = std::min(chunk, n - t);
    for (Index i = 0; i < cc; ++i) {
      std::memcpy(w.qq.data() + i * sq, qq.row(t + i), static_cast<std::size_t>(sq) * sizeof(T));
      std::memcpy(w.lq.data() + i * sl, ql.row(t + i), static_cast<std::size_t>(sl) * sizeof(T));
    }
    flash_load_keys(w, kq, kl, v, t, cc, key_length);
    // Columns past this chunk's keys (cc <= j < cp) hold zero keys; their weights are dropped by the row lengths.
    T* a = w.a.data();
    if (causal) {
      gemm_lower<T>(cc, sq, 0, w.qq.data(), sq, 1, w.kqt.data(), ldk, a, ldk);
      for (Index i = 0; i < cc; ++i) {
        relu2_row(a + i * ldk, scale, inv_quad, i + 1);
        const Index tile_end = std::min(cc, (i / kMR + 1) * kMR);
        std::fill(a + i * ldk + i + 1, a + i * ldk + std::max(tile_end, i + 1), T(0));
      }
    } else {
      gemm<T>(cc, cp, sq, w.qq.data(), sq, 1, w.kqt.data(), ldk, a, ldk, false);
      // Padded keys have zero K rows, so their score is 0 and relu(0)^2 = 0: no separate mask is needed.
      for (Index i = 0; i < cc; ++i) relu2_row(a + i * ldk, scale, inv_quad, cc);
    }
    // Linear part first (it initialises O), then the quadratic part accumulates.
    const T* sv = w.s.data();
    if (causal) {
      T lin = T(0);
      if (absorbed > 0) lin = norm == FlashNorm::Prefix ? T(1) / static_cast<T>(absorbed) : seq_norm;
      for (Index i = 0; i < sl * ldv; ++i) w.ss[i] = w.s[i] * lin;
      sv = w.ss.data();
    }
    gemm<T>(cc, ep, sl, w.lq.data(), sl, 1, sv, ldv, w.o.data(), ldv, false);
    if (causal)  // a later key of the chunk must not reach an earlier row, even with an inf or NaN v
      gemm_lower_a<T>(cc, ep, cc, 0, a, ldk, w.vb.data(), ldv, w.o.data(), ldv, rows_finite(w.vb.data(), cc, e, ldv));
    else
      gemm<T>(cc, ep, cc, a, ldk, 1, w.vb.data(), ldv, w.o.data(), ldv, true);
    for (Index i = 0; i < cc; ++i)
      std::memcpy(out.row(t + i), w.o.data() + i * ldv, static_cast<std::size_t>(e) * sizeof(T));
    if (causal) {
      gemm<T>(sl, ep, cc, w.klt.data(), ldk, 1, w.vb.data(), ldv, w.s.data(), ldv, true);
      absorbed += std::max<Index>(0, std::min(cc, key_length - t));
    }
  }
}

}  // namespace kexue::detail
