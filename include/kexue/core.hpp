// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Types shared by every kernel family: index type, row-major matrices, the error type and
/// the strided 4-D view used by the batched [batch, heads, seq, dim] forms.

// The SIMD layer first: it includes the intrinsics headers under its own warning guard (see simd.hpp), and every
// public header reaches Eigen through this file, so Eigen cannot include them outside that guard.
#include "kexue/detail/simd.hpp"

#include <Eigen/Core>

#include <array>
#include <cstddef>
#include <stdexcept>
#include <type_traits>

#include "kexue/version.hpp"

namespace kexue {

/// Signed index type used for every size, position and stride.
using Index = std::ptrdiff_t;

/// Row-major dynamic matrix: the layout every kernel reads and writes.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Dynamic column vector (bias vectors, gains, flat data).
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

namespace detail {
/// True for the 16-bit storage types (Eigen 3.4's Eigen::half and Eigen::bfloat16; kexue has none of its own):
/// kernels that accept them widen to float in registers and round once when they store (kexue/half.hpp).
template <class T>
constexpr bool kIs16Bit = std::is_same<std::remove_const_t<T>, Eigen::half>::value ||
                          std::is_same<std::remove_const_t<T>, Eigen::bfloat16>::value;
}  // namespace detail

/// Thrown for bad input before any output is written; the message names the function,
/// the argument and the shapes involved.
struct Error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A strided view of a 4-D tensor [batch, heads, seq, dim] with unit stride along dim.
/// T may be const-qualified for inputs. Strides are in elements, not bytes.
template <class T>
struct TensorView {
  T* data = nullptr;                          ///< element (0, 0, 0, 0)
  std::array<Index, 4> shape{0, 0, 0, 0};    ///< batch, heads, seq, dim
  std::array<Index, 3> strides{0, 0, 0};     ///< elements between consecutive batch, head, seq entries

  /// An empty view (null data, all shapes 0).
  TensorView() = default;
  /// A view of data with the given [batch, heads, seq, dim] shape and batch, head, seq strides in elements.
  TensorView(T* data_, std::array<Index, 4> shape_, std::array<Index, 3> strides_)
      : data(data_), shape(shape_), strides(strides_) {}
  /// Converts a mutable view to a const one.
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value>>
  TensorView(const TensorView<U>& other) : data(other.data), shape(other.shape), strides(other.strides) {}

  /// A densely packed [batch, heads, seq, dim] buffer.
  static TensorView contiguous(T* data_, Index batch, Index heads, Index seq, Index dim) {
    return TensorView(data_, {batch, heads, seq, dim}, {heads * seq * dim, seq * dim, dim});
  }
  /// A densely packed [batch, seq, heads, dim] buffer (the layout a fused projection produces),
  /// viewed as [batch, heads, seq, dim].
  static TensorView seq_major(T* data_, Index batch, Index seq, Index heads, Index dim) {
    return TensorView(data_, {batch, heads, seq, dim}, {seq * heads * dim, dim, heads * dim});
  }

  /// shape[0]: number of batch entries.
  Index batch() const { return shape[0]; }
  /// shape[1]: number of heads.
  Index heads() const { return shape[1]; }
  /// shape[2]: sequence length (rows per head).
  Index seq() const { return shape[2]; }
  /// shape[3]: features per row (unit stride).
  Index dim() const { return shape[3]; }
  /// Pointer to the first element of row (b, h, s).
  T* row(Index b, Index h, Index s) const { return data + b * strides[0] + h * strides[1] + s * strides[2]; }
  /// The (b, h) slice as an Eigen map [seq, dim] with the seq stride.
  Eigen::Map<std::conditional_t<std::is_const<T>::value, const Matrix<std::remove_const_t<T>>, Matrix<T>>, 0,
             Eigen::OuterStride<>>
  matrix(Index b, Index h) const {
    return {row(b, h, 0), shape[2], shape[3], Eigen::OuterStride<>(strides[2])};
  }
};

}  // namespace kexue

namespace kexue {
/// Name of the instruction set the kernels were compiled for in this translation unit (e.g. "fma3+avx2").
inline const char* simd_arch() { return detail::simd_arch_name(); }
}  // namespace kexue
