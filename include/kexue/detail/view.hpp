// SPDX-License-Identifier: MIT
#pragma once
// Every public kernel accepts any row-major Eigen dense object with unit inner stride (Matrix, Map with a
// row stride, a block of rows, a vector). Kernels work on this raw view so that one instantiation serves
// them all and the inner loops see plain pointers.


#include <type_traits>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"

namespace kexue::detail {

/// Raw row-major view: element (r, c) is data[r * stride + c].
template <class T>
struct View {
  T* data = nullptr;
  Index rows = 0, cols = 0, stride = 0;
  T* row(Index r) const { return data + r * stride; }
  T& operator()(Index r, Index c) const { return data[r * stride + c]; }
  Index size() const { return rows * cols; }
};

template <class Derived>
constexpr bool is_row_major_or_vector() {
  return (Derived::Flags & Eigen::RowMajorBit) != 0 || Derived::ColsAtCompileTime == 1 ||
         Derived::RowsAtCompileTime == 1;
}

template <class Derived>
using scalar_of = typename Derived::Scalar;

/// kAllow16Bit: the kernel also takes Eigen::half / Eigen::bfloat16 (the 16-bit storage forms); every other
/// kernel keeps the float-or-double check.
template <class Derived, bool kAllow16Bit = false>
View<const scalar_of<Derived>> make_view(const char* function, const char* name,
                                         const Eigen::DenseBase<Derived>& m) {
  static_assert(is_row_major_or_vector<Derived>(),
                "kexue kernels take row-major matrices (kexue::Matrix<T> or a RowMajor Map/Block)");
  static_assert(std::is_same<scalar_of<Derived>, float>::value || std::is_same<scalar_of<Derived>, double>::value ||
                    (kAllow16Bit && kIs16Bit<scalar_of<Derived>>),
                "kexue kernels take float or double (the 16-bit forms also Eigen::half / Eigen::bfloat16)");
  const auto& d = m.derived();
  // A column vector is viewed as one row of length size(): flat data.
  const bool column_vector = Derived::ColsAtCompileTime == 1 && (Derived::Flags & Eigen::RowMajorBit) == 0;
  if (column_vector) {
    require(d.size() <= 1 || d.innerStride() == 1, function, name, " must have unit inner stride");
    return {d.data(), d.size() == 0 ? 0 : 1, d.size(), d.size()};
  }
  require(d.cols() <= 1 || d.innerStride() == 1, function, name, " must have unit inner stride, got ",
          d.innerStride());
  return {d.data(), d.rows(), d.cols(), d.rows() <= 1 ? d.cols() : d.outerStride()};
}

/// Mutable view of an output argument. Outputs are taken as const references so that temporaries such
/// as Eigen::Map or a Block can be passed directly (the idiom the Eigen documentation recommends).
template <class Derived, bool kAllow16Bit = false>
View<scalar_of<Derived>> make_mut_view(const char* function, const char* name, const Eigen::DenseBase<Derived>& m) {
  static_assert(bool(Derived::Flags & Eigen::LvalueBit), "kexue: an output argument must be writable");
  View<const scalar_of<Derived>> v = make_view<Derived, kAllow16Bit>(function, name, m);
  return {const_cast<scalar_of<Derived>*>(v.data), v.rows, v.cols, v.stride};
}

/// Flat view (pointer + size) of contiguous data of any shape: DDPM and other elementwise kernels.
template <class Derived>
const scalar_of<Derived>* flat_data(const char* function, const char* name, const Eigen::DenseBase<Derived>& m) {
  const auto& d = m.derived();
  const bool contiguous = d.size() <= 1 || (d.innerStride() == 1 && (d.outerStride() == d.innerSize() ||
                                                                      d.outerSize() <= 1));
  require(contiguous, function, name, " must be contiguous");
  return d.data();
}

/// True when the memory ranges of two views overlap (aliasing checks).
template <class A, class B>
bool overlaps(const View<A>& a, const View<B>& b) {
  if (a.size() == 0 || b.size() == 0) return false;
  const char* a0 = reinterpret_cast<const char*>(a.data);
  const char* a1 = reinterpret_cast<const char*>(a.row(a.rows - 1) + a.cols);
  const char* b0 = reinterpret_cast<const char*>(b.data);
  const char* b1 = reinterpret_cast<const char*>(b.row(b.rows - 1) + b.cols);
  return a0 < b1 && b0 < a1;
}

}  // namespace kexue::detail
