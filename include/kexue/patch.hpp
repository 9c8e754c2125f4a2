// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Patches (SPEC.md section 8): an image [H, W, C] as rows of p x p patches, the "lossless input" of a patch
/// diffusion transformer (Su's Keras-DDPM ddpm-gau.py: Reshape(H/p, p, W/p, p, C) -> Permute(1, 3, 2, 4, 5) ->
/// Reshape(L, p*p*C)).
///
/// Layouts (row-major throughout):
///     image   [H, W * C]: pixel (y, x) channel c at (y, x * C + c), i.e. an HWC image with W and C merged;
///     patches [L, p * p * C], L = (H / p) * (W / p): patch l = py * (W / p) + px (row-major patch order), and
///             inside it the order (dy, dx, c): patches(l, (dy * p + dx) * C + c) = image(py p + dy, (px p + dx) C + c).
/// Batched images [B, H, W, C] are the same call on [B * H, W * C]: since p divides H, the patches of image b are
/// rows [b L, (b + 1) L) of the result, as a per-image loop would give (pass height B * H to unpatchify).
/// patchify and unpatchify only move values, so each is the bitwise inverse of the other (NaN payloads and -0
/// included). patch_coordinates gives each patch's (row, col) on the patch grid: the coordinates rope_2d takes.

#include <cstring>
#include <type_traits>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

namespace detail {

struct PatchShape {
  Index height = 0, width = 0, channels = 0, p = 0;
  Index grid_h() const { return height / p; }
  Index grid_w() const { return width / p; }
  Index count() const { return grid_h() * grid_w(); }
  Index patch_size() const { return p * p * channels; }
};

inline void check_patch_shape(const char* fn, const PatchShape& s) {
  require(s.channels > 0, fn, "channels must be > 0, got ", s.channels);
  require(s.p > 0, fn, "patch size p must be > 0, got ", s.p);
  require(s.height >= 0 && s.width >= 0, fn, "height and width must be >= 0, got ", s.height, " and ", s.width);
  require(s.height % s.p == 0 && s.width % s.p == 0, fn, "an image of height ", s.height, " and width ", s.width,
          " does not divide into ", s.p, " x ", s.p, " patches (", s.height % s.p, " rows and ", s.width % s.p,
          " columns left over)");
}

/// Copies between the image and the patch rows; to_patches chooses the direction. Each copy is one patch row
/// segment of p * C contiguous values (a pixel row of the patch), so the copy runs at memcpy speed.
template <class T>
void patch_copy(const PatchShape& s, const View<T>& image, const View<T>& patches, bool to_patches) {
  const Index seg = s.p * s.channels;
  const Index gw = s.grid_w();
  for (Index py = 0; py < s.grid_h(); ++py)
    for (Index px = 0; px < gw; ++px) {
      T* patch = patches.row(py * gw + px);
      for (Index dy = 0; dy < s.p; ++dy) {
        T* pixels = image.row(py * s.p + dy) + px * seg;
        if (to_patches) {
          std::memcpy(patch + dy * seg, pixels, sizeof(T) * std::size_t(seg));
        } else {
          std::memcpy(pixels, patch + dy * seg, sizeof(T) * std::size_t(seg));
        }
      }
    }
}

}  // namespace detail

/// image [H, W * C] -> patches [(H / p) * (W / p), p * p * C] in Keras-DDPM's order (see the header comment).
/// H = image.rows(), W = image.cols() / channels. Throws kexue::Error if C does not divide the columns, p does
/// not divide H or W, patches has another shape, or the two overlap.
template <class I, class P>
void patchify(const Eigen::DenseBase<I>& image, Index channels, Index p, const Eigen::DenseBase<P>& patches) {
  static_assert(std::is_same<typename I::Scalar, typename P::Scalar>::value,
                "patchify: image and patches must have the same scalar type");
  using T = typename I::Scalar;
  const char* fn = "patchify";
  const detail::View<const T> img = detail::make_view(fn, "image", image);
  const detail::View<T> out = detail::make_mut_view(fn, "patches", patches);
  detail::require(channels > 0, fn, "channels must be > 0, got ", channels);
  detail::require(img.cols % channels == 0, fn, "image has ", img.cols, " columns (shape ",
                  detail::shape_str(img.rows, img.cols), "), not a multiple of channels = ", channels);
  const detail::PatchShape s{img.rows, img.cols / channels, channels, p};
  detail::check_patch_shape(fn, s);
  detail::require_shape(fn, "patches", out, s.count(), s.patch_size(), "patches of the image need ");
  detail::require(!detail::overlaps(img, out), fn, "image and patches overlap");
  detail::patch_copy(s, detail::View<T>{const_cast<T*>(img.data), img.rows, img.cols, img.stride}, out, true);
}

/// patches [(H / p) * (W / p), p * p * C] -> image [H, W * C]: the inverse of patchify, bit for bit.
/// For a batch of B images pass height = B * H. Throws kexue::Error on shapes that do not match.
template <class P, class I>
void unpatchify(const Eigen::DenseBase<P>& patches, Index height, Index width, Index channels, Index p,
                const Eigen::DenseBase<I>& image) {
  static_assert(std::is_same<typename I::Scalar, typename P::Scalar>::value,
                "unpatchify: image and patches must have the same scalar type");
  using T = typename I::Scalar;
  const char* fn = "unpatchify";
  const detail::View<const T> in = detail::make_view(fn, "patches", patches);
  const detail::View<T> img = detail::make_mut_view(fn, "image", image);
  const detail::PatchShape s{height, width, channels, p};
  detail::check_patch_shape(fn, s);
  detail::require_shape(fn, "image", img, height, width * channels, "height, width and channels give ");
  detail::require_shape(fn, "patches", in, s.count(), s.patch_size(), "the image needs ");
  detail::require(!detail::overlaps(img, in), fn, "image and patches overlap");
  detail::patch_copy(s, img, detail::View<T>{const_cast<T*>(in.data), in.rows, in.cols, in.stride}, false);
}

/// Each patch's position on the patch grid, in patchify's row order: rows[l] = (l mod L) / grid_width,
/// cols[l] = (l mod L) mod grid_width, L = grid_height * grid_width (repeated for each image of a batch).
/// rope_2d(table, x, coords.rows, coords.cols) rotates patch rows by them (SPEC 1.3; equivalently
/// rope_2d(table, x, coords.grid_width) for one image).
struct PatchCoordinates {
  Index grid_height = 0;   ///< H / p
  Index grid_width = 0;    ///< W / p
  std::vector<Index> rows; ///< patch row of each patch row of patchify's output
  std::vector<Index> cols; ///< patch column of each patch row
};

/// Coordinates of the patches of `batch` images of height x width pixels cut into p x p patches.
inline PatchCoordinates patch_coordinates(Index height, Index width, Index p, Index batch = 1) {
  const char* fn = "patch_coordinates";
  detail::check_patch_shape(fn, detail::PatchShape{height, width, 1, p});
  detail::require(batch >= 0, fn, "batch must be >= 0, got ", batch);
  PatchCoordinates c;
  c.grid_height = height / p;
  c.grid_width = width / p;
  const Index count = c.grid_height * c.grid_width;
  c.rows.reserve(std::size_t(batch * count));
  c.cols.reserve(std::size_t(batch * count));
  for (Index b = 0; b < batch; ++b)
    for (Index l = 0; l < count; ++l) {
      c.rows.push_back(l / c.grid_width);
      c.cols.push_back(l % c.grid_width);
    }
  return c;
}

}  // namespace kexue
