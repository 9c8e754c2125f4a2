// SPDX-License-Identifier: MIT
#pragma once
// Loader for the committed PyTorch reference values (tests/reference/data/<family>.txt, written by
// tests/reference/generate.py). Format: '#' comment lines; '@ name d0 d1 ...' starts a tensor of that shape
// (no dims: a scalar), followed by its values in row-major order as decimal text (inf, -inf, nan allowed).

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kexue/core.hpp"

namespace kexue_test {

using kexue::Index;

struct RefTensor {
  std::vector<Index> shape;
  std::vector<double> values;
};

class RefData {
 public:
  /// Loads tests/reference/data/<family>.txt.
  explicit RefData(const std::string& family) : path_(std::string(KEXUE_REFERENCE_DIR) + "/" + family + ".txt") {
    std::ifstream in(path_);
    if (!in) throw std::runtime_error("cannot open reference data " + path_);
    std::string line;
    RefTensor* current = nullptr;
    std::size_t expected = 0;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      if (line[0] == '@') {
        std::istringstream hs(line.substr(1));
        std::string name;
        hs >> name;
        RefTensor t;
        Index d;
        expected = 1;
        while (hs >> d) {
          t.shape.push_back(d);
          expected *= static_cast<std::size_t>(d);
        }
        t.values.reserve(expected);
        current = &(tensors_[name] = std::move(t));
        continue;
      }
      if (!current) throw std::runtime_error(path_ + ": values before the first '@' header");
      const char* p = line.c_str();
      char* end = nullptr;
      for (;;) {
        const double v = std::strtod(p, &end);
        if (end == p) break;
        current->values.push_back(v);
        p = end;
      }
      if (current->values.size() > expected) throw std::runtime_error(path_ + ": too many values");
    }
    for (const auto& kv : tensors_) {
      std::size_t n = 1;
      for (Index d : kv.second.shape) n *= static_cast<std::size_t>(d);
      if (kv.second.values.size() != n) throw std::runtime_error(path_ + ": tensor " + kv.first + " is truncated");
    }
  }

  bool has(const std::string& name) const { return tensors_.count(name) != 0; }

  const RefTensor& get(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw std::runtime_error(path_ + ": no tensor named " + name);
    return it->second;
  }

  const std::vector<Index>& shape(const std::string& name) const { return get(name).shape; }

  double scalar(const std::string& name) const {
    const auto& t = get(name);
    if (t.values.size() != 1) throw std::runtime_error(name + " is not a scalar");
    return t.values[0];
  }

  /// The tensor as a row-major matrix [prod(shape[:-1]), shape[-1]]; a 1-D tensor is one row.
  template <class T>
  kexue::Matrix<T> matrix(const std::string& name) const {
    const auto& t = get(name);
    Index cols = t.shape.empty() ? 1 : t.shape.back();
    Index rows = cols == 0 ? 0 : static_cast<Index>(t.values.size()) / cols;
    if (cols == 0) {
      rows = 1;
      for (std::size_t i = 0; i + 1 < t.shape.size(); ++i) rows *= t.shape[i];
    }
    kexue::Matrix<T> m(rows, cols);
    for (Index i = 0; i < static_cast<Index>(t.values.size()); ++i) m.data()[i] = static_cast<T>(t.values[i]);
    return m;
  }

  /// The tensor flattened into a vector.
  template <class T>
  kexue::Vector<T> vector(const std::string& name) const {
    const auto& t = get(name);
    kexue::Vector<T> v(static_cast<Index>(t.values.size()));
    for (Index i = 0; i < v.size(); ++i) v[i] = static_cast<T>(t.values[i]);
    return v;
  }

  /// The tensor's values as doubles, flat.
  const std::vector<double>& values(const std::string& name) const { return get(name).values; }

 private:
  std::string path_;
  std::map<std::string, RefTensor> tensors_;
};

}  // namespace kexue_test
