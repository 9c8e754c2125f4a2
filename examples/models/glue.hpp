// SPDX-License-Identifier: MIT
#pragma once
// The glue between kexue's kernels that every model of examples/models needs: embedding lookup, SiLU and
// argmax. Plain Eigen on purpose: these are the few lines a user writes around the library, not kernels.
#include <kexue/core.hpp>
#include <kexue/gau.hpp>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace kexue_models {

using kexue::Index;
using kexue::Matrix;
using kexue::Vector;

/// out.row(r) = table.row(ids[r]) (+ add.row(extra[r]) when `add` is given): token (+ segment) embeddings.
/// extra must have ids.size() entries; an id outside its table throws std::out_of_range.
template <class T>
void embed(const Matrix<T>& table, const std::vector<int>& ids, Matrix<T>& out, const Matrix<T>* add = nullptr,
           const std::vector<int>* extra = nullptr) {
  out.resize(Index(ids.size()), table.cols());
  for (Index r = 0; r < Index(ids.size()); ++r) {
    const int id = ids[std::size_t(r)];
    if (id < 0 || id >= table.rows())
      throw std::out_of_range("embed: id " + std::to_string(id) + " outside the table of " +
                              std::to_string(table.rows()) + " rows");
    out.row(r) = table.row(id);
    if (add) {
      const int e = (*extra)[std::size_t(r)];
      if (e < 0 || e >= add->rows())
        throw std::out_of_range("embed: id " + std::to_string(e) + " outside the table of " +
                                std::to_string(add->rows()) + " rows");
      out.row(r) += add->row(e);
    }
  }
}

/// x <- x * sigmoid(x), elementwise (SiLU / swish), written as x / (1 + exp(-x)) as torch's silu does. An
/// Eigen array expression, so exp is Eigen's vectorised one (a scalar std::exp per element was a third of the
/// denoiser's time).
template <class Derived>
void silu(Eigen::MatrixBase<Derived>& x) {
  using T = typename Derived::Scalar;
  x.array() = x.array() / (T(1) + (-x.array()).exp());
}

/// Index of the largest entry of row r (the first one on ties), as torch.argmax.
template <class T>
Index argmax_row(const Matrix<T>& m, Index r) {
  Index best = 0;
  for (Index j = 1; j < m.cols(); ++j)
    if (m(r, j) > m(r, best)) best = j;
  return best;
}

/// A GAU layer's weights in another scalar type.
template <class U, class T>
kexue::GauWeights<U> cast_gau(const kexue::GauWeights<T>& g) {
  kexue::GauWeights<U> o;
  o.w_in = g.w_in.template cast<U>();
  o.b_in = g.b_in.template cast<U>();
  o.gamma_q = g.gamma_q.template cast<U>();
  o.beta_q = g.beta_q.template cast<U>();
  o.gamma_k = g.gamma_k.template cast<U>();
  o.beta_k = g.beta_k.template cast<U>();
  o.w_out = g.w_out.template cast<U>();
  o.b_out = g.b_out.template cast<U>();
  return o;
}

}  // namespace kexue_models
