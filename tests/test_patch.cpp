// SPDX-License-Identifier: MIT
// Tests of kexue/patch.hpp: Keras-DDPM's Reshape -> Permute(1, 3, 2, 4, 5) -> Reshape written as index
// arithmetic, bitwise round trips (NaN payloads, -0, inf), batched images, strided buffers, SPEC 8's shapes,
// the coordinates against rope_2d's grid form, and errors before any write.

#include "kexue/patch.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kexue/rope.hpp"
#include "support.hpp"

using kexue::Index;
using kexue::Matrix;
using namespace kexue_test;

namespace {

/// Keras-DDPM: x.reshape(H/p, p, W/p, p, C).transpose(0, 2, 1, 3, 4).reshape(L, p*p*C), transcribed as the
/// index map of a 5-d array: element (a, dy, b, dx, c) of the reshaped image goes to patch a * (W/p) + b at
/// ((dy * p) + dx) * C + c.
template <class T>
Matrix<T> keras_ddpm_patchify(const Matrix<T>& image, Index C, Index p) {
  const Index H = image.rows(), W = image.cols() / C;
  Matrix<T> out(H / p * (W / p), p * p * C);
  for (Index a = 0; a < H / p; ++a)
    for (Index dy = 0; dy < p; ++dy)
      for (Index b = 0; b < W / p; ++b)
        for (Index dx = 0; dx < p; ++dx)
          for (Index c = 0; c < C; ++c) out(a * (W / p) + b, (dy * p + dx) * C + c) = image(a * p + dy, (b * p + dx) * C + c);
  return out;
}

template <class A, class B>
bool same_bits(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) {
      const auto x = a(i, j), y = b(i, j);
      if (std::memcmp(&x, &y, sizeof(x)) != 0) return false;
    }
  return true;
}

template <class T>
Matrix<T> special_image(Index rows, Index cols, std::uint32_t seed) {
  Matrix<T> m(rows, cols);
  const auto v = random_values<T>(rows * cols, seed);
  std::copy(v.begin(), v.end(), m.data());
  // Values a conversion or arithmetic would not preserve bit for bit.
  if (m.size() >= 4) {
    T nan_payload;
    if constexpr (sizeof(T) == 4) {
      const std::uint32_t bits = 0x7fc01234u;
      std::memcpy(&nan_payload, &bits, 4);
    } else {
      const std::uint64_t bits = 0x7ff8000000abcdefull;
      std::memcpy(&nan_payload, &bits, 8);
    }
    m.data()[0] = nan_payload;
    m.data()[1] = -T(0);
    m.data()[2] = std::numeric_limits<T>::infinity();
    m.data()[m.size() - 1] = std::numeric_limits<T>::denorm_min();
  }
  return m;
}

}  // namespace

TEMPLATE_TEST_CASE("patchify is Keras-DDPM's reshape/permute and unpatchify its bitwise inverse", "[patch]", float,
                   double) {
  using T = TestType;
  struct Shape {
    Index H, W, C, p;
  };
  const Shape shapes[] = {{4, 4, 1, 2},  {6, 9, 3, 3}, {8, 8, 3, 4},  {5, 7, 2, 1},
                          {16, 8, 5, 8}, {2, 6, 4, 2}, {64, 64, 3, 4}, {0, 4, 3, 2}};
  for (const Shape& s : shapes) {
    INFO("H " << s.H << " W " << s.W << " C " << s.C << " p " << s.p);
    const Matrix<T> image = special_image<T>(s.H, s.W * s.C, std::uint32_t(s.H * 100 + s.W));
    Matrix<T> patches(s.H / s.p * (s.W / s.p), s.p * s.p * s.C);
    kexue::patchify(image, s.C, s.p, patches);
    CHECK(same_bits(patches, keras_ddpm_patchify(image, s.C, s.p)));
    Matrix<T> back = Matrix<T>::Constant(s.H, s.W * s.C, T(42));
    kexue::unpatchify(patches, s.H, s.W, s.C, s.p, back);
    CHECK(same_bits(back, image));
  }
  // SPEC 8: 64x64x3 at p = 4 -> 16 x 16 patches of 48; 128x128x3 at p = 8 -> 16 x 16 patches of 192.
  Matrix<T> big = special_image<T>(128, 128 * 3, 9), big_patches(256, 192);
  kexue::patchify(big, 3, 8, big_patches);
  CHECK(same_bits(big_patches, keras_ddpm_patchify(big, 3, 8)));
  // A hand-checked 2x2 patch of a 4x4 one-channel image: pixels numbered row-major.
  Matrix<T> small(4, 4), small_patches(4, 4);
  for (Index i = 0; i < 16; ++i) small.data()[i] = T(i);
  kexue::patchify(small, 1, 2, small_patches);
  Matrix<T> want(4, 4);
  want << 0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15;
  CHECK(same_bits(small_patches, want));
}

TEST_CASE("patches: a batch [B, H, W, C] as [B H, W C] equals per-image calls", "[patch][batched]") {
  const Index B = 3, H = 6, W = 10, C = 3, p = 2, L = (H / p) * (W / p);
  const Matrix<float> images = special_image<float>(B * H, W * C, 5);
  Matrix<float> all(B * L, p * p * C);
  kexue::patchify(images, C, p, all);
  for (Index b = 0; b < B; ++b) {
    Matrix<float> one(L, p * p * C);
    kexue::patchify(images.middleRows(b * H, H), C, p, one);
    CHECK(same_bits(one, all.middleRows(b * L, L)));
  }
  Matrix<float> back(B * H, W * C);
  kexue::unpatchify(all, B * H, W, C, p, back);
  CHECK(same_bits(back, images));
}

TEST_CASE("patches: strided images and patch rows, nothing written outside them", "[patch]") {
  const Index H = 8, W = 12, C = 2, p = 4, L = 6, D = p * p * C;
  const Matrix<double> image = special_image<double>(H, W * C, 11);
  const Index istride = W * C + 3, pstride = D + 5;
  std::vector<double> ibuf(std::size_t(H * istride), -1.0), pbuf(std::size_t(L * pstride), -2.0);
  using Strided = Eigen::Map<Matrix<double>, Eigen::Unaligned, Eigen::OuterStride<>>;
  Strided simage(ibuf.data(), H, W * C, Eigen::OuterStride<>(istride));
  Strided spatches(pbuf.data(), L, D, Eigen::OuterStride<>(pstride));
  simage = image;
  kexue::patchify(simage, C, p, spatches);
  CHECK(same_bits(spatches, keras_ddpm_patchify(image, C, p)));
  for (Index l = 0; l < L; ++l)
    for (Index j = D; j < pstride; ++j) REQUIRE(pbuf[std::size_t(l * pstride + j)] == -2.0);
  std::fill(ibuf.begin(), ibuf.end(), -1.0);
  kexue::unpatchify(spatches, H, W, C, p, simage);
  CHECK(same_bits(simage, image));
  for (Index i = 0; i < H; ++i)
    for (Index j = W * C; j < istride; ++j) REQUIRE(ibuf[std::size_t(i * istride + j)] == -1.0);
}

TEST_CASE("patch_coordinates: the (row, col) of each patch, as rope_2d's grid form uses them", "[patch][rope]") {
  const auto c = kexue::patch_coordinates(12, 20, 4);
  CHECK(c.grid_height == 3);
  CHECK(c.grid_width == 5);
  REQUIRE(c.rows.size() == 15);
  for (Index l = 0; l < 15; ++l) {
    CHECK(c.rows[std::size_t(l)] == l / 5);
    CHECK(c.cols[std::size_t(l)] == l % 5);
  }
  const auto batched = kexue::patch_coordinates(12, 20, 4, 2);
  REQUIRE(batched.rows.size() == 30);
  CHECK(std::equal(c.rows.begin(), c.rows.end(), batched.rows.begin() + 15));
  CHECK(std::equal(c.cols.begin(), c.cols.end(), batched.cols.begin() + 15));
  // rope_2d with the coordinates equals rope_2d over the grid (SPEC 1.3: table dim 8, base 1000).
  kexue::RopeOptions o;
  o.base = 1000;
  const kexue::RopeTable<float> table(8, 8, o);
  Matrix<float> x(15, 16);
  const auto v = random_values<float>(15 * 16, 3);
  std::copy(v.begin(), v.end(), x.data());
  Matrix<float> y = x;
  kexue::rope_2d(table, x, c.rows, c.cols);
  kexue::rope_2d(table, y, c.grid_width);
  CHECK(same_bits(x, y));
}

TEST_CASE("patches: bad shapes throw kexue::Error naming them, before anything is written", "[patch][errors]") {
  const Matrix<float> image = Matrix<float>::Constant(6, 12, 1.f);  // H 6, W 4, C 3
  Matrix<float> patches = Matrix<float>::Constant(4, 27, 5.f);
  Matrix<float> patches2 = Matrix<float>::Constant(6, 12, 5.f);
  throws_with([&] { kexue::patchify(image, 3, 4, patches); }, "height 6 and width 4 does not divide into 4 x 4");
  throws_with([&] { kexue::patchify(image, 5, 2, patches); }, "image has 12 columns");
  throws_with([&] { kexue::patchify(image, 3, 0, patches); }, "patch size p must be > 0");
  throws_with([&] { kexue::patchify(image, 0, 2, patches); }, "channels must be > 0");
  throws_with([&] { kexue::patchify(image, 3, 2, patches); }, "patchify: patches has shape [4 x 27] but patches of the image need [6 x 12]");
  Matrix<float> shared = Matrix<float>::Constant(6, 12, 1.f);
  throws_with([&] { kexue::patchify(shared, 3, 2, shared); }, "overlap");
  Matrix<float> out = Matrix<float>::Constant(6, 12, 7.f);
  throws_with([&] { kexue::unpatchify(patches2, 6, 5, 3, 2, out); }, "does not divide");
  throws_with([&] { kexue::unpatchify(patches2, 6, 4, 2, 2, out); }, "unpatchify: image has shape [6 x 12]");
  throws_with([&] { kexue::unpatchify(patches, 6, 4, 3, 2, out); }, "patches has shape [4 x 27]");
  throws_with([] { (void)kexue::patch_coordinates(10, 8, 4); }, "patch_coordinates");
  CHECK((patches.array() == 5.f).all());
  CHECK((out.array() == 7.f).all());
  CHECK((shared.array() == 1.f).all());
}
