// SPDX-License-Identifier: MIT
// Differential fuzzing of RoPE (rope.hpp) against the scalar double reference (tests/reference/rope_reference.hpp):
// both layouts, partial rotation, every frequency scaling, first_position / explicit positions / bias, the
// batched q+k forms (plain, with biases, with explicit positions) over strided tensors and 2-D RoPE (grid and
// explicit coordinates, the latter through the batched form); rows across SIMD lane boundaries with NaN-filled padding.
// Asserts: kexue::Error exactly for invalid positions/shapes (outputs untouched), padding never written, output
// finite wherever the reference is, and |got - ref| <= 16 eps(T) (1 + |x|_max of the row) where the row is finite.
// Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_rope -max_total_time=600 -max_len=4096
#include <optional>

#include "fuzz_input.hpp"
#include "kexue/rope.hpp"
#include "reference/rope_reference.hpp"

using namespace kexue_fuzz;

namespace {

kexue::RopeOptions random_options(FuzzInput& in, Index dim) {
  kexue::RopeOptions o;
  o.layout = in.flag() ? kexue::RopeLayout::Half : kexue::RopeLayout::Interleaved;
  if (in.flag()) o.rotary_dim = 2 * in.range(1, std::max<Index>(1, dim / 2));
  o.base = in.flag() ? 10000.0 : double(in.range(2, 20000));
  const Index r = o.rotary_dim ? o.rotary_dim : dim;
  switch (in.byte() % 6) {
    case 1:
      o.scaling = kexue::RopeScaling::Linear;
      o.factor = 0.5 + double(in.range(0, 30)) / 4.0;
      break;
    case 2:
      if (r > 2) {
        o.scaling = kexue::RopeScaling::DynamicNtk;
        o.factor = 1.0 + double(in.range(0, 12)) / 4.0;
        o.original_max_positions = in.range(1, 64);
      }
      break;
    case 3:
      o.scaling = kexue::RopeScaling::Yarn;
      o.factor = 1.0 + double(in.range(0, 60)) / 4.0;
      o.original_max_positions = in.range(8, 4096);
      o.fold_attention_factor = in.flag();
      break;
    case 4:
      o.scaling = kexue::RopeScaling::Llama3;
      o.factor = 1.0 + double(in.range(0, 30));
      o.original_max_positions = in.range(8, 8192);
      break;
    default:
      break;
  }
  return o;
}

template <class T>
double row_bound(const Strided<T>& x, Index r, const std::vector<double>& bias) {
  double m = 1;
  for (Index c = 0; c < x.cols; ++c)
    m = std::max(m, std::abs(double(x(r, c))) + (bias.empty() ? 0.0 : std::abs(bias[std::size_t(c)])));
  return 16 * eps_of<T>() * m;
}

/// Compares row r of got with the reference rotation of row r of x at `position`.
template <class T>
void check_row(const kexue::RopeTable<T>& table, const T* x, const T* got, Index dim, double position,
               const std::vector<double>& bias, double bound) {
  std::vector<double> row(x, x + dim);
  const double amp = table.options().scaling == kexue::RopeScaling::Yarn && table.options().fold_attention_factor
                         ? table.attention_factor()
                         : 1.0;
  const auto want = kexue_ref::rope_row(row, bias, table.layout(), table.rotary_dim(), table.inv_freq(), position, amp);
  // A non-finite input pair makes its pair non-finite in the reference; the check skips those entries.
  for (Index c = 0; c < dim; ++c) expect_near(double(got[c]), want[std::size_t(c)], bound * std::max(1.0, amp), "rope vs reference");
}

template <class T>
void fuzz_2d(FuzzInput& in) {
  const Index half = in.range(1, 36);
  const bool odd = in.chance(8);  // an odd dim: the table itself must reject it
  const Index dim = 2 * half + (odd ? 1 : 0);
  kexue::RopeOptions o = random_options(in, dim - (odd ? 1 : 0));
  if (odd) o.rotary_dim = 0;
  const Index max_pos = in.range(0, 80);
  bool table_ok = true;
  std::optional<kexue::RopeTable<T>> table;
  try {
    table.emplace(max_pos, dim, o);
  } catch (const kexue::Error&) {
    table_ok = false;
  }
  if (odd) expect(!table_ok, "RopeTable accepted an odd rotary dim");
  if (!table_ok) return;

  const Index n = in.size(40);
  const Index xdim = in.chance(10) ? dim + 2 : dim;  // sometimes the wrong row length
  Strided<T> x = matrix<T>(in, n, xdim, true);
  const Strided<T> x0 = x;
  const int mode = in.byte() % 3;
  std::vector<double> bias;
  Strided<T> b;
  if (mode == 2) {
    b = matrix<T>(in, 1, dim, in.flag(), 0);
    for (Index c = 0; c < dim; ++c) bias.push_back(double(b(0, c)));
  }
  if (mode == 1) {
    std::vector<Index> pos(static_cast<std::size_t>(n));
    bool bad = xdim != dim && n > 0;
    for (auto& p : pos) {
      p = in.range(-2, max_pos + 1);
      bad = bad || p < 0 || p >= max_pos;
    }
    if (!run_checked(bad, x.buf, [&] { kexue::rope(*table, x.map(), pos); }, "rope(positions) error contract")) return;
    for (Index r = 0; r < n; ++r)
      check_row(*table, x0.row(r) + 0, x.row(r) + 0, dim, double(pos[std::size_t(r)]), bias, row_bound(x0, r, bias));
  } else {
    const Index first = in.range(-2, max_pos + 1);
    const bool bad = first < 0 || (n > 0 && (first + n > max_pos || xdim != dim));
    auto call = [&] {
      if (mode == 2)
        kexue::rope_with_bias(*table, x.map(), b.map().row(0).transpose(), first);
      else
        kexue::rope(*table, x.map(), first);
    };
    if (!run_checked(bad, x.buf, call, "rope(first_position) error contract")) return;
    for (Index r = 0; r < n; ++r)
      check_row(*table, x0.row(r) + 0, x.row(r) + 0, dim, double(first + r), bias, row_bound(x0, r, bias));
  }
  expect(x.padding_intact(), "rope wrote into the row padding");
}

/// Batched q + k: rope(q, k, first_position), rope_with_bias(q, k, q_bias, k_bias, first_position) or
/// rope_with_bias(q, k, q_bias, k_bias, positions), over a seq-major q and a padded head-major k.
template <class T>
void fuzz_batched(FuzzInput& in) {
  const Index dim = 2 * in.range(1, 20);
  kexue::RopeOptions o = random_options(in, dim);
  const Index seq = in.size(24), max_pos = in.range(0, 48);
  const kexue::RopeTable<T> table(max_pos, dim, o);
  const Index B = in.range(0, 3), hq = in.range(0, 3), hk = in.range(0, 3);
  // seq-major q (a fused projection's layout) and head-major k, each with extra padding per row.
  const Index pad = in.range(0, 5);
  Strided<T> q = matrix<T>(in, B * seq * hq, dim, true, 0), k = matrix<T>(in, B * hk * seq, dim + pad, true, 0);
  const Strided<T> q0 = q, k0 = k;
  kexue::TensorView<T> qv = kexue::TensorView<T>::seq_major(q.data(), B, seq, hq, dim);
  kexue::TensorView<T> kv(k.data(), {B, hk, seq, dim}, {hk * seq * (dim + pad), seq * (dim + pad), dim + pad});
  const bool empty = B * std::max(hq, hk) * seq == 0;
  const int mode = in.byte() % 3;  // 0: no bias, first_position; 1: biases, first_position; 2: biases, positions
  // Biases [dim] or [heads, dim]; sometimes one row short of the per-head size (invalid unless it is [dim]).
  auto bias_rows = [&](Index heads) {
    const int kind = in.byte() % 8;
    return kind < 4 ? Index(1) : kind < 7 ? heads : std::max<Index>(heads - 1, 0);
  };
  const Index qrows = bias_rows(hq), krows = bias_rows(hk);
  const Strided<T> qb = matrix<T>(in, std::max<Index>(qrows, 1), dim, in.flag(), 0);
  const Strided<T> kb = matrix<T>(in, std::max<Index>(krows, 1), dim, in.flag(), 0);
  const Eigen::Map<const kexue::Vector<T>> qbv(qb.data(), qrows * dim), kbv(kb.data(), krows * dim);
  const bool bias_bad = mode != 0 && (!(qrows * dim == dim || qrows == hq) || !(krows * dim == dim || krows == hk));
  // Positions: first + s, or explicit [seq] / [batch, seq] lists (sometimes of the wrong length).
  const Index first = in.range(-1, max_pos);
  bool bad = bias_bad;
  std::vector<Index> pos;
  if (mode == 2) {
    const int kind = in.byte() % 8;
    const Index count = kind < 3 ? seq : kind < 7 ? B * seq : seq + 1;
    bad = bad || !(count == seq || count == B * seq);
    for (Index i = 0; i < count; ++i) {
      pos.push_back(in.range(-1, max_pos));
      bad = bad || pos.back() < 0 || pos.back() >= max_pos;
    }
  } else {
    bad = bad || first < 0 || (!empty && seq > 0 && first + seq > max_pos);
  }
  try {
    if (mode == 0) {
      kexue::rope(table, qv, kv, first);
    } else if (mode == 1) {
      kexue::rope_with_bias(table, qv, kv, qbv, kbv, first);
    } else {
      kexue::rope_with_bias(table, qv, kv, qbv, kbv, pos);
    }
  } catch (const kexue::Error& e) {
    // An empty batch may be rejected for a first_position past the table (the pair form checks seq even when
    // batch or heads is 0, the single-tensor form does not): both are acceptable, nothing is written.
    if (!bad && !empty) std::fprintf(stderr, "%s\n", e.what());
    expect(bad || (empty && mode != 2), "rope(q, k) threw on valid input");
    expect(std::memcmp(q.buf.data(), q0.buf.data(), q.buf.size() * sizeof(T)) == 0, "rope(q, k) wrote q before throwing");
    expect(std::memcmp(k.buf.data(), k0.buf.data(), k.buf.size() * sizeof(T)) == 0, "rope(q, k) wrote k before throwing");
    return;
  }
  // A batch with seq = 0 or no heads is valid whatever first_position is (nothing to rotate) when first >= 0.
  expect(!bad || (empty && mode != 2 && !bias_bad), "rope(q, k) accepted invalid input");
  auto position = [&](Index b, Index s) {
    if (mode != 2) return double(first + s);
    return double(pos[std::size_t(Index(pos.size()) == seq ? s : b * seq + s)]);
  };
  auto bias_of = [&](const Strided<T>& bm, Index rows, Index h) {
    std::vector<double> v;
    if (mode == 0) return v;
    const T* r = bm.row(rows == 1 ? 0 : h);
    for (Index c = 0; c < dim; ++c) v.push_back(double(r[c]));
    return v;
  };
  auto bound = [&](const T* src, const std::vector<double>& bias) {
    double m = 1;
    for (Index c = 0; c < dim; ++c)
      m = std::max(m, std::abs(double(src[c])) + (bias.empty() ? 0.0 : std::abs(bias[std::size_t(c)])));
    return 16 * eps_of<T>() * m;
  };
  for (Index b = 0; b < B; ++b)
    for (Index s = 0; s < seq; ++s) {
      for (Index h = 0; h < hq; ++h) {
        const T* src = &q0.buf[std::size_t(((b * seq + s) * hq + h) * dim)];
        const auto bias = bias_of(qb, qrows, h);
        check_row(table, src, qv.row(b, h, s), dim, position(b, s), bias, bound(src, bias));
      }
      for (Index h = 0; h < hk; ++h) {
        const T* src = &k0.buf[std::size_t(((b * hk + h) * seq + s) * (dim + pad))];
        const auto bias = bias_of(kb, krows, h);
        check_row(table, src, kv.row(b, h, s), dim, position(b, s), bias, bound(src, bias));
        for (Index c = dim; c < dim + pad; ++c)
          expect(std::memcmp(&src[c], kv.row(b, h, s) + c, sizeof(T)) == 0, "rope(q, k) wrote k's row padding");
      }
    }
}

template <class T>
void fuzz_rope_2d(FuzzInput& in) {
  const Index dim = 2 * in.range(1, 12);
  const Index max_pos = in.range(1, 12), width = in.range(0, 6), n = in.size(40), first = in.range(-1, 30);
  const kexue::RopeTable<T> table(max_pos, dim, random_options(in, dim));
  Strided<T> x = matrix<T>(in, n, 2 * dim, true);
  const Strided<T> x0 = x;
  if (in.flag()) {
    // Explicit coordinates through the batched form: x viewed as [1, 1, n, 2 dim] with its row stride.
    std::vector<Index> rows(static_cast<std::size_t>(n)), cols(static_cast<std::size_t>(n));
    bool bad = false;
    for (Index r = 0; r < n; ++r) {
      rows[std::size_t(r)] = in.range(-1, max_pos);
      cols[std::size_t(r)] = in.range(-1, max_pos);
      bad = bad || rows[std::size_t(r)] < 0 || rows[std::size_t(r)] >= max_pos || cols[std::size_t(r)] < 0 ||
            cols[std::size_t(r)] >= max_pos;
    }
    const kexue::TensorView<T> xv(x.data(), {1, 1, n, 2 * dim}, {n * x.stride, n * x.stride, x.stride});
    if (!run_checked(
            bad, x.buf, [&] { kexue::rope_2d(table, xv, rows, cols); }, "batched rope_2d error contract"))
      return;
    for (Index r = 0; r < n; ++r) {
      double m = 1;
      for (Index c = 0; c < 2 * dim; ++c) m = std::max(m, std::abs(double(x0(r, c))));
      check_row(table, x0.row(r) + 0, x.row(r) + 0, dim, double(rows[std::size_t(r)]), {}, 16 * eps_of<T>() * m);
      check_row(table, x0.row(r) + dim, x.row(r) + dim, dim, double(cols[std::size_t(r)]), {}, 16 * eps_of<T>() * m);
    }
    expect(x.padding_intact(), "batched rope_2d wrote into the row padding");
    return;
  }
  bool bad = width <= 0 || first < 0;
  if (!bad && n > 0) {
    for (Index r = 0; r < n; ++r) {
      const Index p = first + r;
      bad = bad || p / width >= max_pos || p % width >= max_pos;
    }
  }
  if (!run_checked(bad, x.buf, [&] { kexue::rope_2d(table, x.map(), width, first); }, "rope_2d error contract")) return;
  for (Index r = 0; r < n; ++r) {
    double m = 1;
    for (Index c = 0; c < 2 * dim; ++c) m = std::max(m, std::abs(double(x0(r, c))));
    const Index p = first + r;
    check_row(table, x0.row(r) + 0, x.row(r) + 0, dim, double(p / width), {}, 16 * eps_of<T>() * m);
    check_row(table, x0.row(r) + dim, x.row(r) + dim, dim, double(p % width), {}, 16 * eps_of<T>() * m);
  }
  expect(x.padding_intact(), "rope_2d wrote into the row padding");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const bool single = in.flag();
  switch (in.byte() % 4) {
    case 0:
    case 1:
      single ? fuzz_2d<float>(in) : fuzz_2d<double>(in);
      break;
    case 2:
      single ? fuzz_batched<float>(in) : fuzz_batched<double>(in);
      break;
    default:
      single ? fuzz_rope_2d<float>(in) : fuzz_rope_2d<double>(in);
      break;
  }
  return 0;
}
