// SPDX-License-Identifier: MIT
// The bad-input matrix (issue 8): every public function x {wrong shape, mismatched sizes, n = 0, negative or
// oversized lengths and positions, empty weights, aliasing where forbidden}. Each SECTION is one cell: a bad
// call must throw kexue::Error whose message names the function, the argument and the sizes involved, and
// every output (filled with a sentinel first) must be bitwise untouched; an n = 0 cell must NOT throw where
// the API defines the empty case. Mixing float and double arguments is rejected at compile time (a
// static_assert in every entry point), so that column of the matrix has no runtime cell.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kexue/kexue.hpp"
#include "support.hpp"

using namespace kexue_test;
using kexue::Matrix;
using kexue::Vector;
using MatF = Matrix<float>;
using VecF = Vector<float>;

namespace {

/// The bytes of an output before a call, to prove a throwing call wrote nothing.
struct Snap {
  const unsigned char* p;
  std::vector<unsigned char> saved;
  template <class M>
  explicit Snap(const M& m)
      : p(reinterpret_cast<const unsigned char*>(m.data())), saved(p, p + std::size_t(m.size()) * sizeof(*m.data())) {}
  bool intact() const { return saved.empty() || std::memcmp(saved.data(), p, saved.size()) == 0; }
};

/// call() must throw kexue::Error mentioning every word, leaving every snapshot intact.
template <class F>
void expect_error(F&& call, const std::vector<std::string>& words, const std::vector<Snap>& outputs = {}) {
  std::string msg;
  bool thrown = false;
  try {
    call();
  } catch (const kexue::Error& e) {
    thrown = true;
    msg = e.what();
  }
  INFO("message: " << msg);
  REQUIRE(thrown);
  for (const auto& w : words) {
    INFO("missing word: " << w);
    CHECK(msg.find(w) != std::string::npos);
  }
  for (const auto& s : outputs) CHECK(s.intact());
}

MatF filled(Index r, Index c, float v = 0.25f) { return MatF::Constant(r, c, v); }
MatF sentinel(Index r, Index c) { return MatF::Constant(r, c, -12345.5f); }

}  // namespace

// ---- RoPE --------------------------------------------------------------------------------------------------

TEST_CASE("bad input: RopeTable", "[bad_input][rope]") {
  SECTION("odd rotary dim") { expect_error([] { kexue::RopeTable<float>(8, 7); }, {"RopeTable", "rotary dim", "7", "odd"}); }
  SECTION("rotary_dim larger than dim") {
    kexue::RopeOptions o;
    o.rotary_dim = 10;
    expect_error([&] { kexue::RopeTable<float>(8, 8, o); }, {"RopeTable", "rotary_dim", "10", "8"});
  }
  SECTION("negative max_positions") {
    expect_error([] { kexue::RopeTable<float>(-1, 8); }, {"RopeTable", "max_positions", "-1"});
  }
  SECTION("empty dim") { expect_error([] { kexue::RopeTable<float>(4, 0); }, {"RopeTable", "dim", "0"}); }
  SECTION("scaling without original_max_positions") {
    kexue::RopeOptions o;
    o.scaling = kexue::RopeScaling::Yarn;
    o.factor = 4;
    expect_error([&] { kexue::RopeTable<float>(8, 8, o); }, {"RopeTable", "original_max_positions", "0"});
  }
  SECTION("freq_factors of the wrong size") {
    kexue::RopeOptions o;
    o.freq_factors = {1.0, 2.0};
    expect_error([&] { kexue::RopeTable<float>(8, 8, o); }, {"RopeTable", "freq_factors", "2", "4"});
  }
  SECTION("n = 0 positions is a valid (empty) table") { CHECK_NOTHROW(kexue::RopeTable<float>(0, 8)); }
}

TEST_CASE("bad input: rope", "[bad_input][rope]") {
  const kexue::RopeTable<float> table(16, 8);
  MatF x = sentinel(4, 8);
  SECTION("wrong shape (columns != table dim)") {
    MatF y = sentinel(4, 6);
    expect_error([&] { kexue::rope(table, y); }, {"rope", "x", "6", "[4 x 6]", "8"}, {Snap(y)});
  }
  SECTION("negative first_position") {
    expect_error([&] { kexue::rope(table, x, -1); }, {"rope", "first_position", "-1"}, {Snap(x)});
  }
  SECTION("oversized first_position") {
    expect_error([&] { kexue::rope(table, x, 13); }, {"rope", "13", "17", "16"}, {Snap(x)});
  }
  SECTION("positions: count mismatch") {
    const std::vector<Index> pos{0, 1, 2};
    expect_error([&] { kexue::rope(table, x, pos); }, {"rope", "positions", "3", "4"}, {Snap(x)});
  }
  SECTION("positions: negative") {
    const std::vector<int> pos{0, 1, -2, 3};
    expect_error([&] { kexue::rope(table, x, pos); }, {"rope", "positions[2]", "-2"}, {Snap(x)});
  }
  SECTION("positions: past the table") {
    const std::vector<Index> pos{0, 16, 2, 3};
    expect_error([&] { kexue::rope(table, x, pos); }, {"rope", "positions[1]", "16"}, {Snap(x)});
  }
  SECTION("rope_with_bias: bias of the wrong size") {
    const VecF bias = VecF::Zero(7);
    expect_error([&] { kexue::rope_with_bias(table, x, bias); }, {"rope_with_bias", "bias", "7", "8"}, {Snap(x)});
  }
  SECTION("rope_with_bias: empty bias") {
    const VecF bias(0);
    expect_error([&] { kexue::rope_with_bias(table, x, bias); }, {"rope_with_bias", "bias", "0", "8"}, {Snap(x)});
  }
  SECTION("rope_with_bias, explicit positions: count mismatch") {
    const VecF bias = VecF::Zero(8);
    const std::vector<Index> pos{0, 1, 2};
    expect_error([&] { kexue::rope_with_bias(table, x, bias, pos); }, {"rope_with_bias", "positions", "3", "4"}, {Snap(x)});
  }
  SECTION("rope_with_bias, explicit positions: negative and past the table") {
    const VecF bias = VecF::Zero(8);
    const std::vector<int> neg{0, 1, 2, -4};
    expect_error([&] { kexue::rope_with_bias(table, x, bias, neg); }, {"rope_with_bias", "positions[3]", "-4"}, {Snap(x)});
    const std::vector<Index> far{0, 1, 17, 3};
    expect_error([&] { kexue::rope_with_bias(table, x, bias, far); }, {"rope_with_bias", "positions[2]", "17", "16"}, {Snap(x)});
  }
  SECTION("rope_with_bias, explicit positions: wrong shapes") {
    const std::vector<Index> pos{0, 1, 2, 3};
    const VecF bias7 = VecF::Zero(7);
    expect_error([&] { kexue::rope_with_bias(table, x, bias7, pos); }, {"rope_with_bias", "bias", "7", "8"}, {Snap(x)});
    MatF y = sentinel(4, 6);
    const VecF bias = VecF::Zero(8);
    expect_error([&] { kexue::rope_with_bias(table, y, bias, pos); }, {"rope_with_bias", "x", "[4 x 6]", "8"}, {Snap(y)});
  }
  SECTION("rope_with_bias: bias aliasing x (both forms)") {
    const std::vector<Index> pos{0, 1, 2, 3};
    expect_error([&] { kexue::rope_with_bias(table, x, x.row(2).transpose(), pos); }, {"rope_with_bias", "bias", "x", "alias"},
                 {Snap(x)});
    expect_error([&] { kexue::rope_with_bias(table, x, x.row(0).transpose(), 1); }, {"rope_with_bias", "bias", "x", "alias"},
                 {Snap(x)});
  }
  SECTION("rope_with_bias: non-contiguous bias") {
    const MatF bm = MatF::Zero(8, 2);
    expect_error([&] { kexue::rope_with_bias(table, x, bm.col(0), std::vector<Index>{0, 1, 2, 3}); },
                 {"rope_with_bias", "bias", "contiguous"}, {Snap(x)});
  }
  SECTION("n = 0 rows at any valid or past-the-end offset is defined") {
    MatF empty(0, 8);
    CHECK_NOTHROW(kexue::rope(table, empty, 16));
    CHECK_NOTHROW(kexue::rope(table, empty, std::vector<Index>{}));
    const VecF bias = VecF::Zero(8);
    CHECK_NOTHROW(kexue::rope_with_bias(table, empty, bias, std::vector<Index>{}));
  }
}

TEST_CASE("bad input: rope_2d", "[bad_input][rope]") {
  const kexue::RopeTable<float> table(4, 4);
  MatF x = sentinel(6, 8);
  SECTION("wrong shape") {
    MatF y = sentinel(6, 4);
    expect_error([&] { kexue::rope_2d(table, y, 3); }, {"rope_2d", "x", "[6 x 4]", "8"}, {Snap(y)});
  }
  SECTION("grid_width 0") { expect_error([&] { kexue::rope_2d(table, x, 0); }, {"rope_2d", "grid_width", "0"}, {Snap(x)}); }
  SECTION("negative first_patch") {
    expect_error([&] { kexue::rope_2d(table, x, 3, -1); }, {"rope_2d", "first_patch", "-1"}, {Snap(x)});
  }
  SECTION("patch row outside the table") {
    expect_error([&] { kexue::rope_2d(table, x, 1); }, {"rope_2d", "row", "5", "4"}, {Snap(x)});
  }
  SECTION("explicit coordinates: count mismatch and past the table") {
    const std::vector<Index> rows{0, 1, 2, 3, 0, 1}, cols{0, 1, 2}, far{0, 1, 2, 3, 0, 4};
    expect_error([&] { kexue::rope_2d(table, x, rows, cols); }, {"rope_2d", "cols", "3", "6"}, {Snap(x)});
    expect_error([&] { kexue::rope_2d(table, x, rows, far); }, {"rope_2d", "cols[5]", "4"}, {Snap(x)});
  }
  SECTION("n = 0") {
    MatF empty(0, 8);
    CHECK_NOTHROW(kexue::rope_2d(table, empty, 3));
  }
}

TEST_CASE("bad input: batched rope", "[bad_input][rope]") {
  const kexue::RopeTable<float> table(8, 4);
  std::vector<float> qb(2 * 2 * 8 * 4, -12345.5f), kb(2 * 1 * 8 * 4, -12345.5f);
  auto q = kexue::TensorView<float>::contiguous(qb.data(), 2, 2, 8, 4);
  auto k = kexue::TensorView<float>::contiguous(kb.data(), 2, 1, 8, 4);
  const Snap sq(qb), sk(kb);
  SECTION("dim mismatch") {
    auto bad = kexue::TensorView<float>::contiguous(qb.data(), 2, 2, 4, 8);
    expect_error([&] { kexue::rope(table, bad); }, {"rope", "x", "dim 8", "4"}, {sq});
  }
  SECTION("negative extent") {
    kexue::TensorView<float> bad(qb.data(), {2, -1, 8, 4}, {64, 32, 4});
    expect_error([&] { kexue::rope(table, bad); }, {"rope", "x", "negative"}, {sq});
  }
  SECTION("oversized first_position") {
    expect_error([&] { kexue::rope(table, q, k, 1); }, {"rope", "[1, 9)", "8"}, {sq, sk});
  }
  SECTION("q and k batch mismatch") {
    auto k1 = kexue::TensorView<float>::contiguous(kb.data(), 1, 1, 8, 4);
    expect_error([&] { kexue::rope(table, q, k1); }, {"rope", "q is [2, 2, 8, 4]", "k is [1, 1, 8, 4]"}, {sq, sk});
  }
  SECTION("aliasing: q and k the same buffer") {
    expect_error([&] { kexue::rope(table, q, q); }, {"rope", "same buffer"}, {sq});
  }
  SECTION("positions of the wrong count") {
    const std::vector<Index> pos{0, 1, 2};
    expect_error([&] { kexue::rope(table, q, pos); }, {"rope", "positions", "3", "8", "16"}, {sq});
  }
  SECTION("rope_with_bias: bias neither [dim] nor [heads, dim]") {
    const VecF bias = VecF::Zero(6);
    expect_error([&] { kexue::rope_with_bias(table, q, bias); }, {"rope_with_bias", "bias", "6", "4", "8"}, {sq});
  }
  SECTION("n = 0 (no batch) is defined") {
    auto empty = kexue::TensorView<float>::contiguous(qb.data(), 0, 2, 8, 4);
    CHECK_NOTHROW(kexue::rope(table, empty));
    CHECK(sq.intact());
  }
}

TEST_CASE("bad input: batched rope_with_bias (q and k, explicit positions)", "[bad_input][rope]") {
  const kexue::RopeTable<float> table(8, 4);
  std::vector<float> qb(2 * 2 * 8 * 4, -12345.5f), kb(2 * 1 * 8 * 4, -12345.5f);
  auto q = kexue::TensorView<float>::contiguous(qb.data(), 2, 2, 8, 4);
  auto k = kexue::TensorView<float>::contiguous(kb.data(), 2, 1, 8, 4);
  const VecF b4 = VecF::Zero(4), b8 = VecF::Zero(8);
  const Snap sq(qb), sk(kb);
  std::vector<Index> pos8(8);
  for (Index s = 0; s < 8; ++s) pos8[std::size_t(s)] = s;
  SECTION("dim mismatch of q or k") {
    auto q8 = kexue::TensorView<float>::contiguous(qb.data(), 2, 2, 4, 8);
    expect_error([&] { kexue::rope_with_bias(table, q8, k, b4, b4); }, {"rope_with_bias", "q", "dim 8", "4"}, {sq, sk});
    auto k2 = kexue::TensorView<float>::contiguous(kb.data(), 2, 1, 16, 2);
    expect_error([&] { kexue::rope_with_bias(table, q, k2, b4, b4, pos8); }, {"rope_with_bias", "k", "dim 2", "4"}, {sq, sk});
  }
  SECTION("q and k batch or seq mismatch") {
    auto k1 = kexue::TensorView<float>::contiguous(kb.data(), 1, 1, 8, 4);
    expect_error([&] { kexue::rope_with_bias(table, q, k1, b4, b4); }, {"rope_with_bias", "q is [2, 2, 8, 4]", "k is [1, 1, 8, 4]"},
                 {sq, sk});
    auto k7 = kexue::TensorView<float>::contiguous(kb.data(), 2, 1, 7, 4);
    expect_error([&] { kexue::rope_with_bias(table, q, k7, b4, b4, pos8); }, {"rope_with_bias", "k is [2, 1, 7, 4]", "seq"},
                 {sq, sk});
  }
  SECTION("negative extent") {
    kexue::TensorView<float> bad(kb.data(), {2, 1, -8, 4}, {32, 32, 4});
    expect_error([&] { kexue::rope_with_bias(table, q, bad, b4, b4); }, {"rope_with_bias", "k", "negative"}, {sq, sk});
  }
  SECTION("aliasing: q and k the same buffer") {
    expect_error([&] { kexue::rope_with_bias(table, q, q, b4, b4); }, {"rope_with_bias", "same buffer"}, {sq});
    expect_error([&] { kexue::rope_with_bias(table, q, q, b4, b4, pos8); }, {"rope_with_bias", "same buffer"}, {sq});
  }
  SECTION("aliasing: a bias inside q or k") {
    const Eigen::Map<const VecF> in_q(qb.data() + 12, 4), in_k(kb.data() + 60, 4);
    expect_error([&] { kexue::rope_with_bias(table, q, k, in_q, b4); }, {"rope_with_bias", "q_bias", "shares memory with q", "alias"},
                 {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, k, b4, in_k, pos8); }, {"rope_with_bias", "k_bias", "shares memory with k"},
                 {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, k, in_k, b4); }, {"rope_with_bias", "q_bias", "shares memory with k"},
                 {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, in_q, pos8); }, {"rope_with_bias", "bias", "shares memory with x"}, {sq});
  }
  SECTION("q_bias / k_bias neither [dim] nor [heads, dim]; empty; not contiguous") {
    const VecF b6 = VecF::Zero(6), b0(0);
    expect_error([&] { kexue::rope_with_bias(table, q, k, b6, b4); }, {"rope_with_bias", "q_bias", "6", "4", "8"}, {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, k, b4, b8); }, {"rope_with_bias", "k_bias", "8", "1 x 4"}, {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, k, b4, b0, pos8); }, {"rope_with_bias", "k_bias", "0", "4"}, {sq, sk});
    const MatF cols = MatF::Zero(4, 3);
    expect_error([&] { kexue::rope_with_bias(table, q, k, cols.col(1), b4); }, {"rope_with_bias", "q_bias", "contiguous"}, {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, b6, pos8); }, {"rope_with_bias", "bias", "6", "4", "8"}, {sq});
  }
  SECTION("first_position negative or past the table") {
    expect_error([&] { kexue::rope_with_bias(table, q, k, b4, b4, -1); }, {"rope_with_bias", "first_position", "-1"}, {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, k, b4, b4, 1); }, {"rope_with_bias", "[1, 9)", "8"}, {sq, sk});
  }
  SECTION("positions: wrong count, negative, past the table") {
    const std::vector<Index> three{0, 1, 2};
    expect_error([&] { kexue::rope_with_bias(table, q, k, b4, b4, three); }, {"rope_with_bias", "positions", "3", "8", "16"},
                 {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, b4, three); }, {"rope_with_bias", "positions", "3", "8", "16"}, {sq});
    std::vector<int> neg(16, 0);
    neg[11] = -5;
    expect_error([&] { kexue::rope_with_bias(table, q, k, b4, b4, neg); }, {"rope_with_bias", "positions[11]", "-5"}, {sq, sk});
    std::vector<Index> far = pos8;
    far[6] = 8;
    expect_error([&] { kexue::rope_with_bias(table, q, k, b4, b4, far); }, {"rope_with_bias", "positions[6]", "8", "[0, 8)"},
                 {sq, sk});
    expect_error([&] { kexue::rope_with_bias(table, q, b4, far); }, {"rope_with_bias", "positions[6]", "8"}, {sq});
  }
  SECTION("n = 0 (no batch, no seq) is defined") {
    auto q0 = kexue::TensorView<float>::contiguous(qb.data(), 0, 2, 8, 4);
    auto k0 = kexue::TensorView<float>::contiguous(kb.data(), 0, 1, 8, 4);
    CHECK_NOTHROW(kexue::rope_with_bias(table, q0, k0, b4, b4));
    CHECK_NOTHROW(kexue::rope_with_bias(table, q0, k0, b4, b4, std::vector<Index>{}));
    auto qs = kexue::TensorView<float>::contiguous(qb.data(), 2, 2, 0, 4);
    auto ks = kexue::TensorView<float>::contiguous(kb.data(), 2, 1, 0, 4);
    CHECK_NOTHROW(kexue::rope_with_bias(table, qs, ks, b8, b4, std::vector<Index>{}));
    CHECK(sq.intact());
    CHECK(sk.intact());
  }
}

TEST_CASE("bad input: batched rope_2d with explicit coordinates", "[bad_input][rope]") {
  const kexue::RopeTable<float> table(4, 4);
  std::vector<float> xb(2 * 3 * 5 * 8, -12345.5f);
  auto x = kexue::TensorView<float>::contiguous(xb.data(), 2, 3, 5, 8);
  const Snap sx(xb);
  const std::vector<Index> rows{0, 1, 2, 3, 0}, cols{3, 2, 1, 0, 3};
  SECTION("wrong dim") {
    auto bad = kexue::TensorView<float>::contiguous(xb.data(), 2, 3, 10, 4);
    expect_error([&] { kexue::rope_2d(table, bad, std::vector<Index>(10, 0), std::vector<Index>(10, 0)); },
                 {"rope_2d", "x", "dim 4", "2 x table dim = 8"}, {sx});
  }
  SECTION("negative extent") {
    kexue::TensorView<float> bad(xb.data(), {-2, 3, 5, 8}, {120, 40, 8});
    expect_error([&] { kexue::rope_2d(table, bad, rows, cols); }, {"rope_2d", "x", "negative"}, {sx});
  }
  SECTION("rows or cols of the wrong count") {
    expect_error([&] { kexue::rope_2d(table, x, std::vector<Index>{0, 1}, cols); }, {"rope_2d", "rows", "2", "5", "10"}, {sx});
    expect_error([&] { kexue::rope_2d(table, x, rows, std::vector<Index>(11, 0)); }, {"rope_2d", "cols", "11", "5", "10"}, {sx});
  }
  SECTION("coordinates negative or past the table") {
    const std::vector<int> neg{0, 1, -1, 3, 0};
    expect_error([&] { kexue::rope_2d(table, x, neg, cols); }, {"rope_2d", "rows[2]", "-1"}, {sx});
    std::vector<Index> far(10, 1);
    far[9] = 4;
    expect_error([&] { kexue::rope_2d(table, x, rows, far); }, {"rope_2d", "cols[9]", "4", "[0, 4)"}, {sx});
  }
  SECTION("n = 0 is defined") {
    auto empty = kexue::TensorView<float>::contiguous(xb.data(), 2, 0, 5, 8);
    CHECK_NOTHROW(kexue::rope_2d(table, empty, rows, cols));
    auto no_seq = kexue::TensorView<float>::contiguous(xb.data(), 2, 3, 0, 8);
    CHECK_NOTHROW(kexue::rope_2d(table, no_seq, std::vector<Index>{}, std::vector<Index>{}));
    CHECK(sx.intact());
  }
}

// ---- attention ---------------------------------------------------------------------------------------------

TEST_CASE("bad input: attention", "[bad_input][attention]") {
  const MatF q = filled(5, 8), k = filled(7, 8), v = filled(7, 3);
  MatF out = sentinel(5, 3);
  SECTION("k columns mismatch") {
    const MatF k2 = filled(7, 6);
    expect_error([&] { kexue::attention(q, k2, v, out); }, {"attention", "k", "6", "8", "[7 x 6]", "[5 x 8]"}, {Snap(out)});
  }
  SECTION("v rows mismatch") {
    const MatF v2 = filled(6, 3);
    expect_error([&] { kexue::attention(q, k, v2, out); }, {"attention", "v", "6", "7", "[6 x 3]"}, {Snap(out)});
  }
  SECTION("out of the wrong shape") {
    MatF o2 = sentinel(5, 4);
    expect_error([&] { kexue::attention(q, k, v, o2); }, {"attention", "out", "[5 x 4]", "[5 x 3]"}, {Snap(o2)});
  }
  SECTION("key_length larger than m") {
    kexue::AttentionOptions o;
    o.key_length = 8;
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "key_length", "8", "7"}, {Snap(out)});
  }
  SECTION("negative key_length") {
    kexue::AttentionOptions o;
    o.key_length = -1;
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "key_length", "-1"}, {Snap(out)});
  }
  SECTION("train_length < 2, min_length < 1, relu2_length < 1, non-finite scale") {
    kexue::AttentionOptions o;
    o.train_length = 1;
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "train_length", "1"}, {Snap(out)});
    o = {};
    o.min_length = 0;
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "min_length", "0"}, {Snap(out)});
    o = {};
    o.relu2_length = 0;
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "relu2_length", "0"}, {Snap(out)});
    o = {};
    o.scale = std::numeric_limits<double>::infinity();
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "scale"}, {Snap(out)});
  }
  SECTION("key mask of the wrong length") {
    const std::vector<std::uint8_t> mask(6, 1);
    expect_error([&] { kexue::attention(q, k, v, mask, out); }, {"attention", "key_mask", "6", "7"}, {Snap(out)});
  }
  SECTION("aliasing: out overlaps q") {
    MatF buf = sentinel(5, 8);
    auto o = buf.leftCols(3);
    expect_error([&] { kexue::attention(buf, k, v, o); }, {"attention", "out", "alias"}, {Snap(buf)});
  }
  SECTION("n = 0 queries and m = 0 keys are defined") {
    MatF o0(0, 3);
    CHECK_NOTHROW(kexue::attention(MatF(0, 8), k, v, o0));
    MatF o1 = sentinel(5, 3);
    CHECK_NOTHROW(kexue::attention(q, MatF(0, 8), MatF(0, 3), o1));
    CHECK(o1.cwiseAbs().maxCoeff() == 0.0f);  // no visible key: zeros
  }
}

TEST_CASE("bad input: batched attention", "[bad_input][attention]") {
  std::vector<float> qb(2 * 3 * 4 * 8, 0.5f), kb(2 * 2 * 5 * 8, 0.5f), vb(2 * 2 * 5 * 4, 0.5f), ob(2 * 3 * 4 * 4, -1.5f);
  using CV = kexue::TensorView<const float>;
  const auto q = CV::contiguous(qb.data(), 2, 3, 4, 8), k = CV::contiguous(kb.data(), 2, 2, 5, 8),
             v = CV::contiguous(vb.data(), 2, 2, 5, 4);
  const auto out = kexue::TensorView<float>::contiguous(ob.data(), 2, 3, 4, 4);
  const Snap so(ob);
  SECTION("heads not a multiple of kv_heads") {
    expect_error([&] { kexue::attention(q, k, v, out); }, {"attention", "3 heads", "2 heads"}, {so});
  }
  SECTION("batch mismatch") {
    const auto k1 = CV::contiguous(kb.data(), 1, 1, 5, 8), v1 = CV::contiguous(vb.data(), 1, 1, 5, 4);
    expect_error([&] { kexue::attention(q, k1, v1, out); }, {"attention", "batch", "[2, 3, 4, 8]", "[1, 1, 5, 8]"}, {so});
  }
  SECTION("negative extent") {
    const CV bad(qb.data(), {2, 3, -4, 8}, {96, 32, 8});
    expect_error([&] { kexue::attention(bad, k, v, out); }, {"attention", "negative"}, {so});
  }
  SECTION("key mask neither m nor batch x m") {
    const auto k1 = CV::contiguous(kb.data(), 2, 1, 5, 8), v1 = CV::contiguous(vb.data(), 2, 1, 5, 4);
    const std::vector<std::uint8_t> mask(7, 1);
    expect_error([&] { kexue::attention(q, k1, v1, mask, out); }, {"attention", "key_mask", "7", "5", "10"}, {so});
  }
}

TEST_CASE("bad input: the masks of post 9529 (segments, reverse causal, head directions)", "[bad_input][attention]") {
  const MatF q = filled(6, 4), k = filled(6, 4), v = filled(6, 3);
  MatF out = sentinel(6, 3);
  SECTION("negative segment id: function, argument and index") {
    const std::vector<std::int32_t> ids = {0, 0, 1, 0, -3, 1};
    kexue::AttentionOptions o;
    o.segments = kexue::SegmentIds(ids);
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "options.segments[4]", "-3", "negative"},
                 {Snap(out)});
    MatF w = sentinel(6, 6);
    expect_error([&] { kexue::attention_weights(q, k, w, o); }, {"attention_weights", "options.segments[4]"}, {Snap(w)});
  }
  SECTION("segments of the wrong length, or with n != m") {
    const std::vector<std::int64_t> ids(5, 0);
    kexue::AttentionOptions o;
    o.segments = kexue::SegmentIds(ids);
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "options.segments", "5", "6"}, {Snap(out)});
    const std::vector<std::int64_t> ids6(6, 0);
    o.segments = kexue::SegmentIds(ids6);
    MatF o1 = sentinel(1, 3);
    expect_error([&] { kexue::attention(filled(1, 4), k, v, o1, o); }, {"attention", "segments", "n == m", "1", "6"},
                 {Snap(o1)});
  }
  SECTION("causal and reverse causal together; reverse causal with n != m") {
    kexue::AttentionOptions o;
    o.causal = o.reverse_causal = true;
    expect_error([&] { kexue::attention(q, k, v, out, o); }, {"attention", "causal", "reverse_causal"}, {Snap(out)});
    o.causal = false;
    MatF o2 = sentinel(2, 3);
    expect_error([&] { kexue::attention(filled(2, 4), k, v, o2, o); }, {"attention", "reverse_causal", "n == m"},
                 {Snap(o2)});
  }
  SECTION("head directions: wrong count, with causal, invalid value") {
    std::vector<float> qb(2 * 4 * 6 * 4, 0.5f), ob(2 * 4 * 6 * 3, -1.5f);
    using CV = kexue::TensorView<const float>;
    const auto tq = CV::contiguous(qb.data(), 2, 4, 6, 4), tk = CV::contiguous(qb.data(), 2, 2, 6, 4),
               tv = CV::contiguous(qb.data(), 2, 2, 6, 3);
    const auto to = kexue::TensorView<float>::contiguous(ob.data(), 2, 4, 6, 3);
    const Snap so(ob);
    const std::vector<kexue::HeadDirection> three(3, kexue::HeadDirection::Causal);
    kexue::AttentionOptions o;
    o.head_directions = kexue::HeadDirections(three);
    expect_error([&] { kexue::attention(tq, tk, tv, to, o); }, {"attention", "head_directions", "3", "4 heads"}, {so});
    const std::vector<kexue::HeadDirection> four(4, kexue::HeadDirection::ReverseCausal);
    o.head_directions = kexue::HeadDirections(four);
    o.causal = true;
    expect_error([&] { kexue::attention(tq, tk, tv, to, o); }, {"attention", "head_directions", "causal"}, {so});
    std::vector<kexue::HeadDirection> bad(4, kexue::HeadDirection::Causal);
    bad[2] = static_cast<kexue::HeadDirection>(7);
    o = kexue::AttentionOptions();
    o.head_directions = kexue::HeadDirections(bad);
    expect_error([&] { kexue::attention(tq, tk, tv, to, o); }, {"attention", "head_directions[2]", "7"}, {so});
    // Per-batch segments: neither m nor batch x m.
    const std::vector<std::int32_t> ids(7, 0);
    o = kexue::AttentionOptions();
    o.segments = kexue::SegmentIds(ids);
    expect_error([&] { kexue::attention(tq, tk, tv, to, o); }, {"attention", "segments", "7", "6", "12"}, {so});
  }
  SECTION("attention_rank: non-finite tolerance") {
    const MatF a = filled(3, 3);
    expect_error([&] { kexue::attention_rank(a, std::numeric_limits<double>::quiet_NaN()); }, {"attention_rank", "tol"});
  }
}

TEST_CASE("bad input: attention diagnostics", "[bad_input][attention]") {
  const MatF q = filled(3, 4), k = filled(5, 4);
  SECTION("attention_weights: wrong shape") {
    MatF w = sentinel(3, 4);
    expect_error([&] { kexue::attention_weights(q, k, w); }, {"attention_weights", "weights", "[3 x 4]", "[3 x 5]"}, {Snap(w)});
  }
  SECTION("attention_weights: aliasing") {
    MatF buf = sentinel(3, 5);
    expect_error([&] { kexue::attention_weights(buf.leftCols(4), k, buf); }, {"attention_weights", "alias"}, {Snap(buf)});
  }
  SECTION("attention_entropy: size mismatch and negative weights") {
    const MatF a = filled(3, 5);
    VecF e = VecF::Constant(2, -1.5f);
    expect_error([&] { kexue::attention_entropy(a, e); }, {"attention_entropy", "entropy", "2", "3"}, {Snap(e)});
    MatF neg = filled(3, 5);
    neg(1, 2) = -0.5f;
    VecF e3 = VecF::Constant(3, -1.5f);
    expect_error([&] { kexue::attention_entropy(neg, e3); }, {"attention_entropy", "a(1, 2)"}, {Snap(e3)});
  }
  SECTION("attention_sparsity: size mismatch, key_length past m") {
    const MatF a = filled(3, 5);
    VecF s = VecF::Constant(4, -1.5f);
    expect_error([&] { kexue::attention_sparsity(a, s); }, {"attention_sparsity", "sparsity", "4", "3"}, {Snap(s)});
    VecF s3 = VecF::Constant(3, -1.5f);
    kexue::AttentionOptions o;
    o.key_length = 6;
    expect_error([&] { kexue::attention_sparsity(a, s3, o); }, {"attention_sparsity", "key_length", "6", "5"}, {Snap(s3)});
  }
  SECTION("n = 0 rows") {
    // An empty [0 x 1] matrix and an empty kexue::Vector (whose view is [0 x 0]) are both valid outputs.
    MatF e(0, 1);
    CHECK_NOTHROW(kexue::attention_entropy(MatF(0, 5), e));
    kexue::Vector<float> ev(0);
    CHECK_NOTHROW(kexue::attention_entropy(MatF(0, 5), ev));
  }
}

// ---- GAU ---------------------------------------------------------------------------------------------------

namespace {
kexue::GauWeights<float> gau_weights(Index D, Index e, Index s) {
  kexue::GauWeights<float> w;
  w.w_in = filled(D, 2 * e + s, 0.1f);
  w.b_in = VecF::Zero(2 * e + s);
  w.gamma_q = VecF::Ones(s);
  w.gamma_k = VecF::Ones(s);
  w.beta_q = VecF::Zero(s);
  w.beta_k = VecF::Zero(s);
  w.w_out = filled(e, D, 0.1f);
  w.b_out = VecF::Zero(D);
  return w;
}
}  // namespace

TEST_CASE("bad input: gau", "[bad_input][gau]") {
  const auto w = gau_weights(6, 5, 4);
  const MatF x = filled(7, 6);
  MatF out = sentinel(7, 6);
  SECTION("x of the wrong width") {
    const MatF x2 = filled(7, 5);
    expect_error([&] { kexue::gau(w, x2, out); }, {"gau", "x", "[7 x 5]", "w_in", "6"}, {Snap(out)});
  }
  SECTION("out of the wrong shape") {
    MatF o2 = sentinel(6, 6);
    expect_error([&] { kexue::gau(w, x, o2); }, {"gau", "out", "[6 x 6]", "[7 x 6]"}, {Snap(o2)});
  }
  SECTION("key_length past n, negative key_length") {
    kexue::GauOptions o;
    o.attention.key_length = 8;
    expect_error([&] { kexue::gau(w, x, out, o); }, {"gau", "key_length", "8", "7"}, {Snap(out)});
    o.attention.key_length = -2;
    expect_error([&] { kexue::gau(w, x, out, o); }, {"gau", "key_length", "-2"}, {Snap(out)});
  }
  SECTION("key mask of the wrong length") {
    const std::vector<std::uint8_t> mask(6, 1);
    kexue::GauOptions o;
    o.key_mask = kexue::KeyMask(mask);
    expect_error([&] { kexue::gau(w, x, out, o); }, {"gau", "key_mask", "6", "7"}, {Snap(out)});
  }
  SECTION("RoPE table too short or of the wrong dim") {
    const kexue::RopeTable<float> short_table(6, 4), wide(8, 6);
    expect_error([&] { kexue::gau(w, x, out, {}, &short_table); }, {"gau", "rope_table", "6", "7"}, {Snap(out)});
    expect_error([&] { kexue::gau(w, x, out, {}, &wide); }, {"gau", "rope_table", "6", "4"}, {Snap(out)});
  }
  SECTION("empty weights") {
    auto w0 = w;
    w0.gamma_q.resize(0);
    expect_error([&] { kexue::gau(w0, x, out); }, {"gau", "gamma_q"}, {Snap(out)});
    auto w1 = w;
    w1.w_out.resize(0, 6);
    expect_error([&] { kexue::gau(w1, x, out); }, {"gau", "w_out"}, {Snap(out)});
  }
  SECTION("mismatched weight sizes") {
    auto w2 = w;
    w2.b_in = VecF::Zero(3);
    expect_error([&] { kexue::gau(w2, x, out); }, {"gau", "b_in", "3"}, {Snap(out)});
    auto w3 = w;
    w3.gamma_k = VecF::Ones(5);
    expect_error([&] { kexue::gau(w3, x, out); }, {"gau", "gamma_k", "5", "4"}, {Snap(out)});
    auto w4 = w;
    w4.w_in = filled(6, 13);
    expect_error([&] { kexue::gau(w4, x, out); }, {"gau", "w_in", "[6 x 13]"}, {Snap(out)});
  }
  SECTION("aliasing: out overlaps the weights") {
    auto w5 = w;
    expect_error([&] { kexue::gau(w5, x, Eigen::Map<MatF>(w5.w_in.data(), 7, 6)); }, {"gau", "out", "weights"});
  }
  SECTION("invalid attention options") {
    kexue::GauOptions o;
    o.attention.train_length = 1;
    expect_error([&] { kexue::gau(w, x, out, o); }, {"gau", "train_length", "1"}, {Snap(out)});
  }
  SECTION("n = 0 tokens is defined") {
    MatF o0(0, 6);
    CHECK_NOTHROW(kexue::gau(w, MatF(0, 6), o0));
  }
}

TEST_CASE("bad input: batched gau", "[bad_input][gau]") {
  const auto w = gau_weights(6, 5, 4);
  std::vector<float> xb(2 * 7 * 6, 0.25f), ob(2 * 7 * 6, -12345.5f);
  const auto x = kexue::TensorView<const float>::contiguous(xb.data(), 2, 1, 7, 6);
  const auto out = kexue::TensorView<float>::contiguous(ob.data(), 2, 1, 7, 6);
  const Snap so(ob);
  SECTION("more than one head") {
    const auto x2 = kexue::TensorView<const float>::contiguous(xb.data(), 1, 2, 7, 6);
    expect_error([&] { kexue::gau(w, x2, out); }, {"gau", "x", "2 heads"}, {so});
  }
  SECTION("lengths of the wrong count, and a length past n") {
    expect_error([&] { kexue::gau(w, x, out, std::vector<Index>{7}); }, {"gau", "lengths", "1", "2"}, {so});
    expect_error([&] { kexue::gau(w, x, out, std::vector<Index>{7, 8}); }, {"gau", "lengths[b]", "8", "7"}, {so});
  }
  SECTION("lengths and key_length both given") {
    kexue::GauOptions o;
    o.attention.key_length = 3;
    expect_error([&] { kexue::gau(w, x, out, std::vector<Index>{7, 7}, o); }, {"gau", "key_length", "lengths"}, {so});
  }
  SECTION("aliasing: out a shifted view of x") {
    auto shifted = kexue::TensorView<float>::contiguous(xb.data() + 6, 1, 1, 7, 6);
    const auto x1 = kexue::TensorView<const float>::contiguous(xb.data(), 1, 1, 7, 6);
    const Snap sx(xb);
    expect_error([&] { kexue::gau(w, x1, shifted); }, {"gau", "out overlaps x"}, {sx});
  }
}

// ---- linear attention and FLASH ----------------------------------------------------------------------------

TEST_CASE("bad input: linear_attention", "[bad_input][linear_attention]") {
  const MatF q = filled(5, 4), k = filled(6, 4), v = filled(6, 3);
  MatF out = sentinel(5, 3);
  SECTION("k columns mismatch") {
    const MatF k2 = filled(6, 5);
    expect_error([&] { kexue::linear_attention(q, k2, v, out); }, {"linear_attention", "k", "[6 x 5]", "4"}, {Snap(out)});
  }
  SECTION("v rows mismatch") {
    const MatF v2 = filled(4, 3);
    expect_error([&] { kexue::linear_attention(q, k, v2, out); }, {"linear_attention", "v", "[4 x 3]", "6"}, {Snap(out)});
  }
  SECTION("out of the wrong shape") {
    MatF o2 = sentinel(5, 2);
    expect_error([&] { kexue::linear_attention(q, k, v, o2); }, {"linear_attention", "out", "[5 x 2]", "[5 x 3]"}, {Snap(o2)});
  }
  SECTION("negative or NaN eps") {
    kexue::LinearAttentionOptions o;
    o.eps = -1e-6;
    expect_error([&] { kexue::linear_attention(q, k, v, out, o); }, {"linear_attention", "eps"}, {Snap(out)});
    o.eps = std::numeric_limits<double>::quiet_NaN();
    expect_error([&] { kexue::linear_attention(q, k, v, out, o); }, {"linear_attention", "eps"}, {Snap(out)});
  }
  SECTION("key_length past m") {
    kexue::LinearAttentionOptions o;
    o.key_length = 7;
    expect_error([&] { kexue::linear_attention(q, k, v, out, o); }, {"linear_attention", "key_length", "7", "6"}, {Snap(out)});
  }
  SECTION("aliasing: out overlaps v") {
    MatF vb = filled(6, 3);
    auto o = vb.topRows(5);
    expect_error([&] { kexue::linear_attention(q, k, vb, o); }, {"linear_attention", "alias"}, {Snap(vb)});
  }
  SECTION("state of the wrong shape, k rows != q rows when streaming") {
    kexue::LinearAttentionState<float> st(4, 2);
    const MatF k5 = filled(5, 4), v5 = filled(5, 3);
    expect_error([&] { kexue::linear_attention(q, k5, v5, out, st); }, {"linear_attention", "state", "[4 x 2]", "[4 x 3]"},
                 {Snap(out)});
    kexue::LinearAttentionState<float> good(4, 3);
    expect_error([&] { kexue::linear_attention(q, k, v, out, good); }, {"linear_attention", "k", "6", "5"}, {Snap(out)});
    CHECK(good.tokens() == 0);
    CHECK(good.s().cwiseAbs().maxCoeff() == 0.0);
  }
  SECTION("a state with an empty dimension") {
    expect_error([] { kexue::LinearAttentionState<float>(0, 3); }, {"LinearAttentionState", "0"});
  }
  SECTION("n = 0 queries / m = 0 keys are defined") {
    MatF o0(0, 3);
    CHECK_NOTHROW(kexue::linear_attention(MatF(0, 4), k, v, o0));
    MatF o1 = sentinel(5, 3);
    CHECK_NOTHROW(kexue::linear_attention(q, MatF(0, 4), MatF(0, 3), o1));
    CHECK(o1.allFinite());
  }
}

TEST_CASE("bad input: batched linear_attention", "[bad_input][linear_attention]") {
  std::vector<float> qb(2 * 4 * 5 * 4, 0.5f), kb(2 * 3 * 5 * 4, 0.5f), vb(2 * 3 * 5 * 3, 0.5f), ob(2 * 4 * 5 * 3, -1.5f);
  using CV = kexue::TensorView<const float>;
  const auto q = CV::contiguous(qb.data(), 2, 4, 5, 4), k = CV::contiguous(kb.data(), 2, 3, 5, 4),
             v = CV::contiguous(vb.data(), 2, 3, 5, 3);
  const auto out = kexue::TensorView<float>::contiguous(ob.data(), 2, 4, 5, 3);
  const Snap so(ob);
  SECTION("heads not a multiple of kv heads") {
    expect_error([&] { kexue::linear_attention(q, k, v, out); }, {"linear_attention", "4", "3"}, {so});
  }
  SECTION("key_lengths of the wrong count, one past m") {
    const auto k1 = CV::contiguous(kb.data(), 2, 1, 5, 4), v1 = CV::contiguous(vb.data(), 2, 1, 5, 3);
    expect_error([&] { kexue::linear_attention(q, k1, v1, out, {}, {5}); }, {"linear_attention", "key_lengths", "1", "2"}, {so});
    expect_error([&] { kexue::linear_attention(q, k1, v1, out, {}, {5, 6}); }, {"linear_attention", "key_length", "6", "5"}, {so});
  }
  SECTION("streaming: wrong number of states") {
    const auto k1 = CV::contiguous(kb.data(), 2, 1, 5, 4), v1 = CV::contiguous(vb.data(), 2, 1, 5, 3);
    std::vector<kexue::LinearAttentionState<float>> states(3, kexue::LinearAttentionState<float>(4, 3));
    expect_error([&] { kexue::linear_attention(q, k1, v1, out, states); }, {"linear_attention", "states", "3", "8"}, {so});
  }
}

TEST_CASE("bad input: mixed_chunk_attention", "[bad_input][flash]") {
  const MatF qq = filled(9, 4), kq = filled(9, 4), ql = filled(9, 3), kl = filled(9, 3), v = filled(9, 5);
  MatF out = sentinel(9, 5);
  SECTION("k_quad of the wrong shape") {
    const MatF kq2 = filled(9, 5);
    expect_error([&] { kexue::mixed_chunk_attention(qq, kq2, ql, kl, v, out); }, {"mixed_chunk_attention", "k_quad", "[9 x 5]", "[9 x 4]"},
                 {Snap(out)});
  }
  SECTION("q_lin rows and v rows mismatched") {
    const MatF ql2 = filled(8, 3), v2 = filled(8, 5);
    expect_error([&] { kexue::mixed_chunk_attention(qq, kq, ql2, kl, v, out); }, {"mixed_chunk_attention", "q_lin", "[8 x 3]"},
                 {Snap(out)});
    expect_error([&] { kexue::mixed_chunk_attention(qq, kq, ql, kl, v2, out); }, {"mixed_chunk_attention", "v", "[8 x 5]"},
                 {Snap(out)});
  }
  SECTION("out of the wrong shape") {
    MatF o2 = sentinel(9, 4);
    expect_error([&] { kexue::mixed_chunk_attention(qq, kq, ql, kl, v, o2); }, {"mixed_chunk_attention", "out", "[9 x 4]", "[9 x 5]"},
                 {Snap(o2)});
  }
  SECTION("chunk_size 0, quad_norm 0, key_length past n") {
    kexue::FlashOptions o;
    o.chunk_size = 0;
    expect_error([&] { kexue::mixed_chunk_attention(qq, kq, ql, kl, v, out, o); }, {"mixed_chunk_attention", "chunk_size", "0"},
                 {Snap(out)});
    o = {};
    o.quad_norm = 0.0;
    expect_error([&] { kexue::mixed_chunk_attention(qq, kq, ql, kl, v, out, o); }, {"mixed_chunk_attention", "quad_norm"},
                 {Snap(out)});
    o = {};
    o.key_length = 10;
    expect_error([&] { kexue::mixed_chunk_attention(qq, kq, ql, kl, v, out, o); }, {"mixed_chunk_attention", "key_length", "10", "9"},
                 {Snap(out)});
  }
  SECTION("aliasing: out is v") {
    MatF vb = filled(9, 5);
    expect_error([&] { kexue::mixed_chunk_attention(qq, kq, ql, kl, vb, vb); }, {"mixed_chunk_attention", "alias"}, {Snap(vb)});
  }
  SECTION("n = 0 is defined") {
    MatF o0(0, 5);
    CHECK_NOTHROW(kexue::mixed_chunk_attention(MatF(0, 4), MatF(0, 4), MatF(0, 3), MatF(0, 3), MatF(0, 5), o0));
  }
}

// ---- GlobalPointer -----------------------------------------------------------------------------------------

TEST_CASE("bad input: global_pointer (one head)", "[bad_input][global_pointer]") {
  const kexue::RopeTable<float> table(8, 4);
  const MatF q = filled(6, 4), k = filled(6, 4);
  MatF s = sentinel(6, 6);
  SECTION("k of the wrong shape") {
    const MatF k2 = filled(5, 4);
    expect_error([&] { kexue::global_pointer(table, q, k2, s, 6); }, {"global_pointer", "k", "[5 x 4]", "[6 x 4]"}, {Snap(s)});
  }
  SECTION("scores of the wrong shape") {
    MatF s2 = sentinel(6, 5);
    expect_error([&] { kexue::global_pointer(table, q, k, s2, 6); }, {"global_pointer", "scores", "[6 x 5]", "[6 x 6]"}, {Snap(s2)});
  }
  SECTION("length past n, negative length") {
    expect_error([&] { kexue::global_pointer(table, q, k, s, 7); }, {"global_pointer", "length", "7", "6"}, {Snap(s)});
    expect_error([&] { kexue::global_pointer(table, q, k, s, -1); }, {"global_pointer", "length", "-1"}, {Snap(s)});
  }
  SECTION("RoPE table of the wrong dim or too short") {
    const kexue::RopeTable<float> wide(8, 6), short_table(5, 4);
    expect_error([&] { kexue::global_pointer(wide, q, k, s, 6); }, {"global_pointer", "RoPE table", "6", "4"}, {Snap(s)});
    expect_error([&] { kexue::global_pointer(short_table, q, k, s, 6); }, {"global_pointer", "RoPE table", "5", "6"}, {Snap(s)});
  }
  SECTION("NaN fill") {
    kexue::GlobalPointerOptions o;
    o.fill = std::numeric_limits<double>::quiet_NaN();
    expect_error([&] { kexue::global_pointer(table, q, k, s, 6, o); }, {"global_pointer", "fill", "NaN"}, {Snap(s)});
  }
  SECTION("aliasing: scores overlap q") {
    MatF buf = sentinel(6, 6);
    expect_error([&] { kexue::global_pointer(table, buf.leftCols(4), k, buf, 6); }, {"global_pointer", "alias"}, {Snap(buf)});
  }
  SECTION("n = 0 is defined") {
    MatF s0(0, 0);
    CHECK_NOTHROW(kexue::global_pointer(table, MatF(0, 4), MatF(0, 4), s0, 0));
  }
}

TEST_CASE("bad input: GlobalPointer layers", "[bad_input][global_pointer]") {
  const kexue::RopeTable<float> table(8, 4);
  kexue::GlobalPointerWeights<float> w{filled(5, 2 * 2 * 4), VecF::Zero(16), 2, 4};
  kexue::EfficientGlobalPointerWeights<float> ew{filled(5, 8), VecF::Zero(8), filled(8, 4), VecF::Zero(4), 2, 4};
  const MatF h = filled(6, 5);
  MatF s = sentinel(12, 6);
  SECTION("h of the wrong width") {
    const MatF h2 = filled(6, 4);
    expect_error([&] { kexue::global_pointer(w, table, h2, s, 6); }, {"global_pointer", "h", "[6 x 4]", "5"}, {Snap(s)});
    expect_error([&] { kexue::efficient_global_pointer(ew, table, h2, s, 6); }, {"efficient_global_pointer", "h", "[6 x 4]", "5"},
                 {Snap(s)});
  }
  SECTION("scores of the wrong shape") {
    MatF s2 = sentinel(6, 6);
    expect_error([&] { kexue::global_pointer(w, table, h, s2, 6); }, {"global_pointer", "scores", "[6 x 6]", "[12 x 6]"}, {Snap(s2)});
  }
  SECTION("weights: heads x head_size mismatch, odd head size, empty weights") {
    auto w2 = w;
    w2.heads = 3;
    expect_error([&] { kexue::global_pointer(w2, table, h, s, 6); }, {"global_pointer", "weights.w", "[5 x 16]", "24"}, {Snap(s)});
    auto w3 = w;
    w3.head_size = 3;
    expect_error([&] { kexue::global_pointer(w3, table, h, s, 6); }, {"global_pointer", "head_size", "3"}, {Snap(s)});
    kexue::GlobalPointerWeights<float> empty{};
    expect_error([&] { kexue::global_pointer(empty, table, h, s, 6); }, {"global_pointer", "heads", "0"}, {Snap(s)});
    auto w4 = w;
    w4.b = VecF::Zero(3);
    expect_error([&] { kexue::global_pointer(w4, table, h, s, 6); }, {"global_pointer", "weights.b", "3", "16"}, {Snap(s)});
    auto e2 = ew;
    e2.w_c = filled(8, 5);
    expect_error([&] { kexue::efficient_global_pointer(e2, table, h, s, 6); }, {"efficient_global_pointer", "w_c", "[8 x 5]", "[8 x 4]"},
                 {Snap(s)});
  }
  SECTION("length past n; batched: rows not a multiple of the batch") {
    expect_error([&] { kexue::global_pointer(w, table, h, s, 7); }, {"global_pointer", "length", "7", "6"}, {Snap(s)});
    MatF s4 = sentinel(16, 4);
    expect_error([&] { kexue::global_pointer(w, table, h, s4, std::vector<Index>{4, 4, 4, 4}); }, {"global_pointer", "h", "6", "4"},
                 {Snap(s4)});
  }
  SECTION("memory-lean decoding: length past n") {
    expect_error([&] { kexue::global_pointer_spans(w, table, h, 7); }, {"global_pointer_spans", "length", "7", "6"});
  }
}

TEST_CASE("bad input: efficient_global_pointer_spans", "[bad_input][global_pointer]") {
  // The memory-lean Efficient GlobalPointer returns its spans: there is no output buffer to leave untouched, so
  // each cell checks the error and its message only.
  const kexue::RopeTable<float> table(8, 4);
  const kexue::EfficientGlobalPointerWeights<float> ew{filled(5, 8), VecF::Zero(8), filled(8, 4), VecF::Zero(4), 2, 4};
  const MatF h = filled(6, 5);
  const char* fn = "efficient_global_pointer_spans";
  SECTION("h of the wrong width") {
    const MatF h2 = filled(6, 4);
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, table, h2, 6); }, {fn, "h", "[6 x 4]", "w_p", "5"});
  }
  SECTION("weights: w_p, b_p, w_c, b_c of the wrong shape") {
    auto e = ew;
    e.w_p = filled(5, 6);
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(e, table, h, 6); }, {fn, "w_p", "[5 x 6]", "8"});
    e = ew;
    e.b_p = VecF::Zero(7);
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(e, table, h, 6); }, {fn, "b_p", "7", "8"});
    e = ew;
    e.w_c = filled(8, 5);
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(e, table, h, 6); }, {fn, "w_c", "[8 x 5]", "[8 x 4]"});
    e = ew;
    e.b_c = VecF::Zero(3);
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(e, table, h, 6); }, {fn, "b_c", "3", "4"});
  }
  SECTION("weights: no heads, odd head size, empty weights") {
    auto e = ew;
    e.heads = 0;
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(e, table, h, 6); }, {fn, "heads", "0"});
    e = ew;
    e.head_size = 3;
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(e, table, h, 6); }, {fn, "head_size", "3"});
    const kexue::EfficientGlobalPointerWeights<float> empty{};
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(empty, table, h, 6); }, {fn, "heads", "0"});
  }
  SECTION("length past n, negative length") {
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, table, h, 7); }, {fn, "length", "7", "6"});
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, table, h, -1); }, {fn, "length", "-1"});
  }
  SECTION("decode options: length past n or negative, NaN threshold") {
    kexue::DecodeOptions d;
    d.length = 9;
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, table, h, 6, d); }, {fn, "length", "9", "6"});
    d.length = -2;
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, table, h, 6, d); }, {fn, "length", "-2"});
    d = {};
    d.threshold = std::numeric_limits<double>::quiet_NaN();
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, table, h, 6, d); }, {fn, "threshold", "NaN"});
  }
  SECTION("NaN fill") {
    kexue::GlobalPointerOptions o;
    o.fill = std::numeric_limits<double>::quiet_NaN();
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, table, h, 6, {}, o); }, {fn, "fill", "NaN"});
  }
  SECTION("RoPE table of the wrong dim or too short") {
    const kexue::RopeTable<float> wide(8, 6), short_table(5, 4);
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, wide, h, 6); }, {fn, "RoPE table", "6", "4"});
    expect_error([&] { (void)kexue::efficient_global_pointer_spans(ew, short_table, h, 6); }, {fn, "RoPE table", "5", "6"});
  }
  SECTION("n = 0 is defined") {
    std::vector<kexue::Span> spans{kexue::Span{}};
    CHECK_NOTHROW(spans = kexue::efficient_global_pointer_spans(ew, table, MatF(0, 5), 0));
    CHECK(spans.empty());
  }
}

TEST_CASE("bad input: decode_spans and losses", "[bad_input][global_pointer]") {
  const MatF s = filled(12, 6);
  SECTION("decode_spans: rows != heads x n, heads 0, NaN threshold, length past n") {
    expect_error([&] { kexue::decode_spans(s, 3); }, {"decode_spans", "scores", "[12 x 6]", "[18 x 6]"});
    expect_error([&] { kexue::decode_spans(s, 0); }, {"decode_spans", "heads", "0"});
    expect_error([&] { kexue::decode_spans(s, 2, std::numeric_limits<double>::quiet_NaN()); }, {"decode_spans", "threshold", "NaN"});
    kexue::DecodeOptions o;
    o.length = 7;
    expect_error([&] { kexue::decode_spans(s, 2, o); }, {"decode_spans", "length", "7", "6"});
  }
  SECTION("multilabel_crossentropy: labels and grad of the wrong shape, grad aliasing scores") {
    const MatF labels = MatF::Zero(12, 5);
    expect_error([&] { kexue::multilabel_crossentropy(s, labels); }, {"multilabel_crossentropy", "labels", "[12 x 5]", "[12 x 6]"});
    MatF grad = sentinel(12, 5);
    const MatF good = MatF::Zero(12, 6);
    expect_error([&] { kexue::multilabel_crossentropy(s, good, grad); }, {"multilabel_crossentropy", "grad", "[12 x 5]", "[12 x 6]"},
                 {Snap(grad)});
    MatF sc = filled(12, 6);
    expect_error([&] { kexue::multilabel_crossentropy(sc, good, sc); }, {"multilabel_crossentropy", "grad", "alias"}, {Snap(sc)});
  }
  SECTION("sparse_multilabel_crossentropy: index out of range, row mismatch") {
    Matrix<Index> pos(12, 2);
    pos.setZero();
    pos(3, 1) = 6;
    expect_error([&] { kexue::sparse_multilabel_crossentropy(s, pos); }, {"sparse_multilabel_crossentropy", "positives(3, 1)", "6"});
    Matrix<Index> pos2 = Matrix<Index>::Zero(11, 2);
    expect_error([&] { kexue::sparse_multilabel_crossentropy(s, pos2); }, {"sparse_multilabel_crossentropy", "positives", "[11 x 2]", "12"});
  }
  SECTION("n = 0 rows") {
    const MatF e(0, 6);
    CHECK_NOTHROW(kexue::decode_spans(MatF(0, 0), 2));
    CHECK_NOTHROW(kexue::multilabel_crossentropy(e, e));
  }
}

// ---- DDPM and random numbers -------------------------------------------------------------------------------

TEST_CASE("bad input: DdpmSchedule", "[bad_input][ddpm]") {
  SECTION("no timesteps") {
    expect_error([] { kexue::DdpmSchedule(0); }, {"DdpmSchedule", "num_train_timesteps", "0"});
  }
  SECTION("beta range invalid") {
    expect_error([] { kexue::DdpmSchedule(10, kexue::BetaSchedule::Linear, 0.02, 0.01); }, {"DdpmSchedule", "beta", "0.02", "0.01"});
    expect_error([] { kexue::DdpmSchedule(10, kexue::BetaSchedule::Linear, 1e-4, 1.5); }, {"DdpmSchedule", "beta_end", "1.5"});
    expect_error([] { kexue::DdpmSchedule(std::vector<double>{}); }, {"DdpmSchedule", "betas", "empty"});
    expect_error([] { kexue::DdpmSchedule(std::vector<double>{0.1, 1.0}); }, {"DdpmSchedule", "betas[1]", "1"});
  }
  const kexue::DdpmSchedule s(10);
  SECTION("t outside the schedule") {
    expect_error([&] { (void)s.beta(10); }, {"DdpmSchedule::beta", "10", "[0, 10)"});
    expect_error([&] { (void)s.alpha_bar(-2); }, {"DdpmSchedule::alpha_bar", "-2"});
    expect_error([&] { (void)s.variance(3, 3); }, {"DdpmSchedule::variance", "prev_t = 3", "t = 3"});
  }
  SECTION("timesteps: k = 0, k > T, non-descending custom list") {
    expect_error([&] { (void)s.timesteps(0); }, {"DdpmSchedule::timesteps", "num_inference_steps", "0"});
    expect_error([&] { (void)s.timesteps(11); }, {"DdpmSchedule::timesteps", "11", "10"});
    expect_error([&] { s.check_timesteps({5, 6}); }, {"check_timesteps", "descending", "6", "5"});
    expect_error([&] { s.check_timesteps({}); }, {"check_timesteps", "empty"});
    expect_error([&] { s.check_timesteps({12, 3}); }, {"check_timesteps", "12", "[0, 10)"});
  }
}

TEST_CASE("bad input: ddpm kernels", "[bad_input][ddpm]") {
  const kexue::DdpmSchedule sched(10);
  const VecF m = VecF::Constant(9, 0.1f), x = VecF::Constant(9, 0.2f), z = VecF::Constant(9, 0.3f);
  VecF out = VecF::Constant(9, -12345.5f);
  SECTION("ddpm_step: t outside the schedule, prev_t >= t, prev_t < -1") {
    expect_error([&] { kexue::ddpm_step(sched, m, 10, x, z, out); }, {"ddpm_step", "t = 10", "[0, 10)"}, {Snap(out)});
    kexue::DdpmStepOptions o;
    o.prev_t = 4;
    expect_error([&] { kexue::ddpm_step(sched, m, 4, x, z, out, o); }, {"ddpm_step", "prev_t = 4", "t = 4"}, {Snap(out)});
    o.prev_t = -2;
    expect_error([&] { kexue::ddpm_step(sched, m, 4, x, z, out, o); }, {"ddpm_step", "prev_t = -2"}, {Snap(out)});
  }
  SECTION("ddpm_step: size mismatches") {
    const VecF m8 = VecF::Zero(8);
    expect_error([&] { kexue::ddpm_step(sched, m8, 4, x, z, out); }, {"ddpm_step", "model_output", "8", "9"}, {Snap(out)});
    const VecF z8 = VecF::Zero(8);
    expect_error([&] { kexue::ddpm_step(sched, m, 4, x, z8, out); }, {"ddpm_step", "noise", "8", "9"}, {Snap(out)});
    VecF o8 = VecF::Constant(8, -1.5f);
    expect_error([&] { kexue::ddpm_step(sched, m, 4, x, z, o8); }, {"ddpm_step", "out", "8", "9"}, {Snap(o8)});
  }
  SECTION("ddpm_step: clip range") {
    kexue::DdpmStepOptions o;
    o.clip_range = 0;
    expect_error([&] { kexue::ddpm_step(sched, m, 4, x, z, out, o); }, {"ddpm_step", "clip_range", "0"}, {Snap(out)});
  }
  SECTION("ddpm_step: aliasing (out is the noise, out partially overlaps the sample)") {
    VecF zz = z;
    expect_error([&] { kexue::ddpm_step(sched, m, 4, x, zz, zz); }, {"ddpm_step", "noise"}, {Snap(zz)});
    VecF buf = VecF::Constant(12, 0.5f);
    expect_error([&] { kexue::ddpm_step(sched, m, 4, buf.head(9), z, buf.segment(2, 9)); }, {"ddpm_step", "overlap"}, {Snap(buf)});
  }
  SECTION("ddpm_add_noise / ddpm_velocity: sizes, t, overlap") {
    const VecF z8 = VecF::Zero(8);
    expect_error([&] { kexue::ddpm_add_noise(sched, x, z8, 3, out); }, {"ddpm_add_noise", "noise", "8", "9"}, {Snap(out)});
    expect_error([&] { kexue::ddpm_add_noise(sched, x, z, -1, out); }, {"ddpm_add_noise", "t = -1"}, {Snap(out)});
    expect_error([&] { kexue::ddpm_velocity(sched, x, z, 10, out); }, {"ddpm_velocity", "t = 10"}, {Snap(out)});
    VecF buf = VecF::Constant(12, 0.5f);
    expect_error([&] { kexue::ddpm_add_noise(sched, buf.head(9), z, 3, buf.segment(1, 9)); }, {"ddpm_add_noise", "overlap"},
                 {Snap(buf)});
  }
  SECTION("batched step: t count, options.prev_t set, shapes") {
    const MatF mb = filled(3, 4), xb = filled(3, 4), zb = filled(3, 4);
    MatF ob = sentinel(3, 4);
    expect_error([&] { kexue::ddpm_step(sched, mb, std::vector<Index>{1, 2}, xb, zb, ob); }, {"ddpm_step", "t has 2", "3"}, {Snap(ob)});
    kexue::DdpmStepOptions o;
    o.prev_t = 0;
    expect_error([&] { kexue::ddpm_step(sched, mb, std::vector<Index>{1, 2, 3}, xb, zb, ob, o); }, {"ddpm_step", "prev_t"}, {Snap(ob)});
    const MatF z2 = filled(3, 5);
    expect_error([&] { kexue::ddpm_step(sched, mb, std::vector<Index>{1, 2, 3}, xb, z2, ob); }, {"ddpm_step", "noise", "[3 x 5]", "[3 x 4]"},
                 {Snap(ob)});
    expect_error([&] { kexue::ddpm_step(sched, mb, std::vector<Index>{1, 12, 3}, xb, zb, ob); }, {"ddpm_step", "t = 12"}, {Snap(ob)});
  }
  SECTION("n = 0 is defined; the last step needs no noise") {
    VecF e(0);
    CHECK_NOTHROW(kexue::ddpm_step(sched, e, 4, e, e, e));
    CHECK_NOTHROW(kexue::ddpm_step(sched, m, 0, x, VecF(0), out));  // prev_t = -1: noise unused, may be empty
  }
}

TEST_CASE("bad input: random generators", "[bad_input][random]") {
  SECTION("negative count") {
    kexue::PhiloxGenerator g(1);
    std::vector<float> buf(4, -1.5f);
    expect_error([&] { g.normal(buf.data(), -1); }, {"PhiloxGenerator::normal", "-1"}, {Snap(buf)});
    CHECK(g.offset() == 0u);
  }
  SECTION("non-contiguous output") {
    MatF m = sentinel(4, 4);
    kexue::PhiloxGenerator g(1);
    expect_error([&] { g.normal(m.block(0, 0, 2, 2)); }, {"PhiloxGenerator::normal", "contiguous"}, {Snap(m)});
    kexue::TorchGenerator t(1);
    expect_error([&] { t.normal(m.block(0, 0, 2, 2)); }, {"TorchGenerator::normal", "contiguous"}, {Snap(m)});
  }
  SECTION("n = 0 is defined and draws nothing") {
    kexue::PhiloxGenerator g(1);
    VecF e(0);
    CHECK_NOTHROW(g.normal(e));
    CHECK(g.offset() == 0u);
  }
}
