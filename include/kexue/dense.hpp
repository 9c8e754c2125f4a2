// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Dense (fully connected) layers with the weights packed once: out = act(x W + b), optionally times a gate
/// (SwiGLU's swish(x W1) * (x W3) in one pass), on kexue's packed GEMM (the one under gau()).
///
/// Why: the projections around the kernels (a decoder's q/k/v, output and MLP matrices, a denoiser's GAU
/// built by hand) are most of a model's flops, and a GEMM library packs W on every call (Eigen's packing of
/// W was 17% of a 128-token decoder prefill). An inference program packs each matrix at load with
/// dense_pack() and calls dense() on every request.
///
/// Every output element is one FMA chain over the depth in order, then + b, the activation and the gate, so
/// results are bitwise identical for any thread count and any number of rows (a single row, as in decoding,
/// takes a GEMV path over the same packed panels with the same chain).
///
/// Scratch: the packed rows of x live in thread-local buffers of the calling thread (144 x in_features
/// values per thread), grown to the largest call and reused; nothing else is allocated per call.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/gemm.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

/// The activation dense() applies after the bias.
enum class DenseActivation {
  None,  ///< out = x W + b
  Swish  ///< out = swish(x W + b) = y / (1 + exp(-y)) (SiLU; bert4keras' "swish", torch.nn.functional.silu)
};

/// A weight matrix W [in, out] (and a bias [out], optional) packed once for dense(). Immutable after
/// dense_pack(): one packed layer may serve any number of threads at once, and it does not refer to the
/// matrix it was packed from. The layout is this build's (SIMD width, GEMM tiles): not a file format.
template <class T>
class PackedDense {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "PackedDense: float or double");

 public:
  /// Empty: dense() on it throws kexue::Error. Use dense_pack().
  PackedDense() = default;

  /// Rows of W: columns of x.
  Index in_features() const { return in_; }
  /// Columns of W: columns of out.
  Index out_features() const { return out_; }
  /// True for a default-constructed or moved-from layer (dense() on it throws kexue::Error).
  bool empty() const { return packed_.empty(); }
  /// True when the layer adds a bias.
  bool has_bias() const { return bias_.size() != 0; }
  /// Bytes held (packed W and the bias).
  std::size_t bytes() const { return (packed_.size() + std::size_t(bias_.size())) * sizeof(T); }

  /// The packed W as the GEMM reads it (an implementation detail).
  detail::PackedB<T> detail_packed() const {
    return {packed_.data(), in_, out_, detail::gemm_round_up<T>(out_, detail::kGemmNr<T>)};
  }
  /// The bias, or nullptr (an implementation detail).
  const T* detail_bias() const { return has_bias() ? bias_.data() : nullptr; }

 private:
  template <class D>
  friend PackedDense<typename D::Scalar> dense_pack(const Eigen::MatrixBase<D>& w,
                                                    const Vector<typename D::Scalar>& bias);

  Index in_ = 0, out_ = 0;
  detail::GemmBuffer<T> packed_;
  Vector<T> bias_;
};

/// Packs W [in, out] (row-major, unit inner stride; in, out > 0) and an optional bias [out] (empty: none) for
/// dense(). Throws kexue::Error on an empty W or a bias of the wrong size. Packs in parallel over OpenMP threads.
template <class D>
PackedDense<typename D::Scalar> dense_pack(const Eigen::MatrixBase<D>& w,
                                           const Vector<typename D::Scalar>& bias = Vector<typename D::Scalar>()) {
  using T = typename D::Scalar;
  constexpr const char* fn = "dense_pack";
  const detail::View<const T> wv = detail::make_view(fn, "w", w);
  detail::require(wv.rows > 0 && wv.cols > 0, fn, "w has shape ", detail::shape_str(wv.rows, wv.cols),
                  "; a dense layer needs in, out > 0");
  detail::require(bias.size() == 0 || bias.size() == wv.cols, fn, "bias has ", bias.size(), " values but w has ",
                  wv.cols, " columns (or 0: no bias)");
  PackedDense<T> out;
  out.in_ = wv.rows;
  out.out_ = wv.cols;
  out.bias_ = bias;
  detail::gemm_pack_b(wv, false, detail::gemm_grow(out.packed_, detail::gemm_packed_b_size<T>(wv.rows, wv.cols)), true);
  return out;
}

namespace detail {

/// One row of out = epilogue(a W) (decoding): the micro-kernel's chain per element
/// (acc = fma(a_p, W(p, j), acc) for p in order from 0, then + bias, swish, * gate), four column panels at a
/// time so eight independent FMA chains hide the latency, over the same packed panels.
/// Column panels [p0, p1) of the row (kGemmNr<T> columns each).
template <class T>
void dense_row(const T* a, const PackedB<T>& b, T* c, const GemmEpilogue<T>& epi, const T* gate, Index p0, Index p1) {
  using B = Batch<T>;
  constexpr Index L = kLanes<T>, nr = kGemmNr<T>, group = 4;
  const Index k = b.k, n = b.n;
  for (Index g0 = p0; g0 < p1; g0 += group) {
    const Index g1 = std::min(p1, g0 + group);
    B acc[group][2];
    for (Index g = 0; g < group; ++g) acc[g][0] = acc[g][1] = B(T(0));
    for (Index k0 = 0; k0 < k; k0 += kGemmKc) {
      const Index kc = std::min(kGemmKc, k - k0);
      const T* block = b.data + k0 * b.npad;
      for (Index p = 0; p < kc; ++p) {
        const B ap(a[k0 + p]);
        for (Index g = g0; g < g1; ++g) {
          const T* bp = block + g * nr * kc + p * nr;
          acc[g - g0][0] = fmadd(ap, B::load_aligned(bp), acc[g - g0][0]);
          acc[g - g0][1] = fmadd(ap, B::load_aligned(bp + L), acc[g - g0][1]);
        }
      }
    }
    for (Index g = g0; g < g1; ++g) {
      const Index j0 = g * nr, cols = std::min(nr, n - j0);
      alignas(64) T tile[nr];
      alignas(64) T extra[nr];
      B r0 = acc[g - g0][0], r1 = acc[g - g0][1];
      if (epi.bias) {
        for (Index j = 0; j < nr; ++j) extra[j] = j < cols ? epi.bias[j0 + j] : T(0);
        r0 += load(extra);
        r1 += load(extra + L);
      }
      if (epi.swish) {
        r0 = gemm_swish(r0);
        r1 = gemm_swish(r1);
      }
      if (gate) {
        for (Index j = 0; j < nr; ++j) extra[j] = j < cols ? gate[j0 + j] : T(0);
        r0 *= load(extra);
        r1 *= load(extra + L);
      }
      store(tile, r0);
      store(tile + L, r1);
      std::copy(tile, tile + cols, c + j0);
    }
  }
}

}  // namespace detail

/// Dense layer: out = act(x W + b) for x [m, in] and out [m, out] (row-major, unit inner stride, out not
/// overlapping x). The bits of every row do not depend on m, the row's position or the thread count.
/// Throws kexue::Error on mismatched shapes, an empty layer or overlapping x and out, before writing.
template <class T, class Dx, class Do>
void dense(const PackedDense<T>& layer, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
           DenseActivation activation = DenseActivation::None);

/// Gated dense layer: out = act(x W + b) * gate, elementwise (SwiGLU: dense_gated(w1, x, x W3, h, Swish)).
/// gate: [m, out], not overlapping out. Otherwise as dense().
template <class T, class Dx, class Dg, class Do>
void dense_gated(const PackedDense<T>& layer, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Dg>& gate,
                 const Eigen::DenseBase<Do>& out, DenseActivation activation = DenseActivation::None);

namespace detail {

template <class T>
void dense_run(const char* fn, const PackedDense<T>& layer, const View<const T>& xv, const View<const T>* gv,
               const View<T>& ov, DenseActivation activation) {
  require(!layer.empty(), fn, "layer is an empty PackedDense (default-constructed or moved from); build it with ",
          "dense_pack()");
  require(xv.cols == layer.in_features(), fn, "x has shape ", shape_str(xv.rows, xv.cols), " but the layer takes ",
          layer.in_features(), " input features");
  require_shape(fn, "out", ov, xv.rows, layer.out_features(), "x and the layer imply ");
  require(activation == DenseActivation::None || activation == DenseActivation::Swish, fn,
          "activation has the invalid value ", static_cast<int>(activation));
  require(!overlaps(xv, ov), fn, "out overlaps x");
  if (gv) {
    require_shape(fn, "gate", *gv, xv.rows, layer.out_features(), "out is ");
    require(!overlaps(*gv, ov), fn, "out overlaps gate");
  }
  const Index m = xv.rows;
  if (m == 0) return;
  GemmEpilogue<T> epi;
  epi.bias = layer.detail_bias();
  epi.swish = activation == DenseActivation::Swish;
  epi.gate = gv ? gv->data : nullptr;
  epi.gate_stride = gv ? gv->stride : 0;
  const PackedB<T> packed = layer.detail_packed();
  if (m == 1) {  // decoding: a GEMV over items of 32 panels (512 float columns), no padded 6-row tile
    // Only for one row: each further row would read W again (a 512-column item is k x 2 KiB, past L2 for long k),
    // while the GEMM's padded tile reads it once for up to 6 rows.
    constexpr Index kPanelsPerItem = 32;
    const Index panels = packed.npad / kGemmNr<T>, items = (panels + kPanelsPerItem - 1) / kPanelsPerItem;
    parallel_for(items, [&](Index it) {
      const Index p0 = it * kPanelsPerItem, p1 = std::min(panels, p0 + kPanelsPerItem);
      dense_row(xv.row(0), packed, ov.row(0), epi, gv ? gv->row(0) : nullptr, p0, p1);
    });
    return;
  }
  // The calling thread's A buffers, one per worker (gemm_packed hands each worker its own through this reference;
  // inside the parallel region the thread_local would name each worker's own, empty, instance).
  thread_local std::vector<GemmBuffer<T>> apack;
  gemm_packed(xv, packed, ov, epi, apack);
}

}  // namespace detail

template <class T, class Dx, class Do>
void dense(const PackedDense<T>& layer, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Do>& out,
           DenseActivation activation) {
  static_assert(std::is_same<typename Dx::Scalar, T>::value && std::is_same<typename Do::Scalar, T>::value,
                "dense: x and out must have the layer's scalar type");
  constexpr const char* fn = "dense";
  const detail::View<const T> xv = detail::make_view(fn, "x", x);
  const detail::View<T> ov = detail::make_mut_view(fn, "out", out);
  detail::dense_run<T>(fn, layer, xv, nullptr, ov, activation);
}

template <class T, class Dx, class Dg, class Do>
void dense_gated(const PackedDense<T>& layer, const Eigen::DenseBase<Dx>& x, const Eigen::DenseBase<Dg>& gate,
                 const Eigen::DenseBase<Do>& out, DenseActivation activation) {
  static_assert(std::is_same<typename Dx::Scalar, T>::value && std::is_same<typename Dg::Scalar, T>::value &&
                    std::is_same<typename Do::Scalar, T>::value,
                "dense_gated: x, gate and out must have the layer's scalar type");
  constexpr const char* fn = "dense_gated";
  const detail::View<const T> xv = detail::make_view(fn, "x", x);
  const detail::View<const T> gv = detail::make_view(fn, "gate", gate);
  const detail::View<T> ov = detail::make_mut_view(fn, "out", out);
  detail::dense_run(fn, layer, xv, &gv, ov, activation);
}

}  // namespace kexue
