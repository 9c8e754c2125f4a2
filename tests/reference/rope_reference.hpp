// SPDX-License-Identifier: MIT
#pragma once
// Scalar, double-precision reference of RoPE, written for clarity: one pair at a time, the angle computed
// from the position and the inverse frequency on the spot (no table), the rotation written as the 2x2
// matrix of SPEC 1.2. The SIMD kernels of kexue/rope.hpp are compared against it.

#include <cmath>
#include <vector>

#include "kexue/rope.hpp"

namespace kexue_ref {

using kexue::Index;

/// The two dims that form pair i of a rotary block of r dims.
inline void rope_pair(kexue::RopeLayout layout, Index r, Index i, Index& a, Index& b) {
  if (layout == kexue::RopeLayout::Interleaved) {
    a = 2 * i;
    b = 2 * i + 1;
  } else {
    a = i;
    b = i + r / 2;
  }
}

/// out = amp * R_position (x + bias) on the first r dims; dims [r, dim) are x + bias. bias may be empty.
inline std::vector<double> rope_row(const std::vector<double>& x, const std::vector<double>& bias,
                                    kexue::RopeLayout layout, Index r, const std::vector<double>& inv_freq,
                                    double position, double amp = 1.0) {
  const Index dim = static_cast<Index>(x.size());
  std::vector<double> in(x);
  if (!bias.empty())
    for (Index j = 0; j < dim; ++j) in[std::size_t(j)] += bias[std::size_t(j)];
  std::vector<double> out(in);
  for (Index i = 0; i < r / 2; ++i) {
    Index a, b;
    rope_pair(layout, r, i, a, b);
    const double angle = position * inv_freq[std::size_t(i)];
    const double c = std::cos(angle) * amp, s = std::sin(angle) * amp;
    out[std::size_t(a)] = c * in[std::size_t(a)] - s * in[std::size_t(b)];
    out[std::size_t(b)] = s * in[std::size_t(a)] + c * in[std::size_t(b)];
  }
  return out;
}

/// Applies rope_row to every row of a row-major [rows, dim] buffer (any element type), returning doubles.
template <class T>
std::vector<double> rope_rows(const T* x, Index rows, Index dim, Index stride, const std::vector<double>& bias,
                              kexue::RopeLayout layout, Index r, const std::vector<double>& inv_freq,
                              const std::vector<Index>& positions, double amp = 1.0) {
  std::vector<double> out;
  out.reserve(std::size_t(rows * dim));
  for (Index i = 0; i < rows; ++i) {
    std::vector<double> row(x + i * stride, x + i * stride + dim);
    const std::vector<double> y = rope_row(row, bias, layout, r, inv_freq, double(positions[std::size_t(i)]), amp);
    out.insert(out.end(), y.begin(), y.end());
  }
  return out;
}

}  // namespace kexue_ref
