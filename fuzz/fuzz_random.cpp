// SPDX-License-Identifier: MIT
// Fuzzing of the random number generators (random.hpp): the Philox stream is a pure function of (seed,
// position), so any split of a fill into calls, at any offset, must give the bits of one call, and every value
// must be finite with |z| < 7 (24-bit uniforms bound the Box-Muller radius by sqrt(2 ln 2^24) ~ 5.77);
// TorchGenerator must be deterministic for a seed across any sequence of call sizes (n < 16 and n >= 16 paths,
// the cached normal) and give finite values. Bit-compatibility with torch itself is tested against PyTorch's
// own numbers in tests/test_random.cpp. The bulk MT19937 under TorchGenerator must equal std::mt19937 draw for draw.
// Smoke run: ctest (8 s, seed 1). Longer run:
//   cmake --workflow --preset fuzz && build/fuzz/fuzz/fuzz_random -max_total_time=600 -max_len=4096
#include <random>

#include "fuzz_input.hpp"
#include "kexue/random.hpp"

using namespace kexue_fuzz;

namespace {

template <class T>
void fuzz_philox(FuzzInput& in) {
  const std::uint64_t seed = (std::uint64_t(in.range(0, 65535)) << 32) ^ std::uint64_t(in.range(0, 65535));
  const std::uint64_t offset = in.chance(32) ? (std::uint64_t(1) << 32) - std::uint64_t(in.range(0, 64))
                                             : std::uint64_t(in.range(0, 1000));
  const Index total = in.size(600);
  std::vector<T> whole(static_cast<std::size_t>(total)), parts(static_cast<std::size_t>(total));
  kexue::PhiloxGenerator::fill_at(seed, offset, whole.data(), total);
  kexue::PhiloxGenerator gen(seed, offset);
  Index done = 0;
  while (done < total) {
    const Index len = std::min(total - done, in.size(100) + (in.flag() ? 0 : 1));
    gen.normal(parts.data() + done, len);
    done += len;
    if (in.chance(8) && done < total) {  // sometimes the rest in one call
      gen.normal(parts.data() + done, total - done);
      done = total;
    }
  }
  expect(gen.offset() == offset + std::uint64_t(total), "Philox offset advances by the values drawn");
  expect(total == 0 || std::memcmp(whole.data(), parts.data(), whole.size() * sizeof(T)) == 0,
         "Philox: split fills differ from one fill");
  for (T v : whole) expect(std::isfinite(double(v)) && std::abs(double(v)) < 7.0, "Philox normal out of range", double(v));
  // Double outputs are the float values widened.
  std::vector<float> f(static_cast<std::size_t>(total));
  kexue::PhiloxGenerator::fill_at(seed, offset, f.data(), total);
  for (Index i = 0; i < total; ++i)
    expect(double(whole[std::size_t(i)]) == double(f[std::size_t(i)]), "Philox double values are not the float ones");
}

template <class T>
void fuzz_torch(FuzzInput& in) {
  const std::uint64_t seed = std::uint64_t(in.range(0, 65535));
  kexue::TorchGenerator a(seed), b(seed);
  const Index calls = in.range(1, 6);
  for (Index c = 0; c < calls; ++c) {
    const Index n = in.size(70);
    std::vector<T> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    a.normal(x.data(), n);
    b.normal(Eigen::Map<kexue::Vector<T>>(y.data(), n));
    expect(n == 0 || std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0,
           "TorchGenerator: same seed and call sizes, different values");
    for (T v : x) expect(std::isfinite(double(v)) && std::abs(double(v)) < 10.0, "TorchGenerator normal out of range", double(v));
  }
}

// The bulk MT19937 behind TorchGenerator against std::mt19937 over a fuzzed sequence of single draws and runs.
void fuzz_mt19937(FuzzInput& in) {
  const auto seed = static_cast<std::uint32_t>((in.range(0, 65535) << 16) ^ in.range(0, 65535));
  std::mt19937 want(seed);
  kexue::detail::Mt19937 got(seed);
  const Index calls = in.range(1, 12);
  std::vector<std::uint32_t> run;
  for (Index c = 0; c < calls; ++c) {
    if (in.flag()) {
      expect(got() == want(), "Mt19937: a single draw differs from std::mt19937");
      continue;
    }
    const Index len = in.chance(64) ? in.range(600, 1400) : in.size(40);  // a quarter cross a twist
    run.resize(static_cast<std::size_t>(len));
    got.generate(run.data(), len);
    for (std::uint32_t r : run) expect(r == want(), "Mt19937: a bulk draw differs from std::mt19937");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const bool single = in.flag();
  if (in.chance(64))  // one input in four
    fuzz_mt19937(in);
  else if (in.flag())
    single ? fuzz_philox<float>(in) : fuzz_philox<double>(in);
  else
    single ? fuzz_torch<float>(in) : fuzz_torch<double>(in);
  return 0;
}
