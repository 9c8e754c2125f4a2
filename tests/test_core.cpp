// SPDX-License-Identifier: MIT
// Core types: argument views over every accepted Eigen object, error messages, TensorView strides, and the
// parallel loop.
#include <string>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/view.hpp"
#include "support.hpp"

using namespace kexue_test;
namespace kd = kexue::detail;

TEST_CASE("views accept matrices, maps with a row stride, blocks and vectors", "[core]") {
  kexue::Matrix<float> m(4, 6);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = float(i);
  auto v = kd::make_view("f", "m", m);
  CHECK(v.rows == 4);
  CHECK(v.cols == 6);
  CHECK(v(2, 3) == m(2, 3));

  Eigen::Map<const kexue::Matrix<float>, 0, Eigen::OuterStride<>> strided(m.data(), 2, 3, Eigen::OuterStride<>(12));
  auto vs = kd::make_view("f", "strided", strided);
  CHECK(vs.stride == 12);
  CHECK(vs(1, 2) == m(2, 2));

  auto vb = kd::make_view("f", "block", m.middleRows(1, 2));
  CHECK(vb.rows == 2);
  CHECK(vb(0, 0) == m(1, 0));
  auto vc = kd::make_view("f", "cols", m.block(0, 2, 3, 2));
  CHECK(vc(2, 1) == m(2, 3));

  kexue::Vector<double> vec(5);
  auto vv = kd::make_view("f", "vec", vec);
  CHECK(vv.rows == 1);
  CHECK(vv.cols == 5);

  auto out = kd::make_mut_view("f", "out", m.row(3));
  out(0, 0) = -1;
  CHECK(m(3, 0) == -1);
}

TEST_CASE("errors name the function, the argument and the shapes", "[core]") {
  kexue::Matrix<float> m(3, 5);
  auto v = kd::make_view("attention", "k", m);
  try {
    kd::require_shape("attention", "k", v, -1, 64, "q has ");
    FAIL("no error thrown");
  } catch (const kexue::Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("attention") != std::string::npos);
    CHECK(msg.find("k has shape [3 x 5]") != std::string::npos);
    CHECK(msg.find("[-1 x 64]") != std::string::npos);
  }
  CHECK_THROWS_AS(kd::require(false, "f", "x"), std::invalid_argument);
}

TEST_CASE("overlaps detects aliasing", "[core]") {
  kexue::Matrix<float> m(4, 4);
  auto top = kd::make_view("f", "top", m.topRows(2));
  auto bottom = kd::make_view("f", "bottom", m.bottomRows(2));
  auto all = kd::make_view("f", "all", m);
  CHECK_FALSE(kd::overlaps(top, bottom));
  CHECK(kd::overlaps(top, all));
}

TEST_CASE("TensorView addresses [batch, heads, seq, dim] with any strides", "[core]") {
  std::vector<float> buf(2 * 3 * 4 * 5);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = float(i);
  auto t = kexue::TensorView<float>::contiguous(buf.data(), 2, 3, 4, 5);
  CHECK(*t.row(1, 2, 3) == float(((1 * 3 + 2) * 4 + 3) * 5));
  auto s = kexue::TensorView<float>::seq_major(buf.data(), 2, 4, 3, 5);  // memory [b, s, h, d]
  CHECK(*s.row(1, 2, 3) == float(((1 * 4 + 3) * 3 + 2) * 5));
  kexue::TensorView<const float> c = t;
  CHECK(c.matrix(1, 1)(2, 4) == *t.row(1, 1, 2) + 4);
}

TEST_CASE("parallel_for visits every item once", "[core][parallel]") {
  for (Index n : {0, 1, 2, 17, 1000}) {
    std::vector<int> hits(static_cast<std::size_t>(n), 0);
    kd::parallel_for(n, [&](Index i) { hits[static_cast<std::size_t>(i)] += 1; });
    for (int h : hits) CHECK(h == 1);
  }
  CHECK(kd::max_threads() >= 1);
}
