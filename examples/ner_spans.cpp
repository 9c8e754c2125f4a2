// SPDX-License-Identifier: MIT
// Nested named-entity recognition with a GlobalPointer head (SPEC 2): hidden states of a tokenised
// sentence and the layer's dense weights are read from examples/data/ner_spans.txt, every span with a
// positive score is an entity, and the entities are printed as JSON lines, one per span.
//
// The data is a small hand-built layer (not a trained model; see tests/reference/cases_global_pointer.py),
// so the output is easy to check: 张三 and 李四 are PER, 北京 is a LOC nested inside the ORG 北京大学.
// With a real encoder you would feed its last hidden layer [n, D] and the trained GlobalPointer Dense
// kernel [D, 2 * types * 64] and bias instead.
#include <kexue/global_pointer.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Data {
  std::vector<std::string> tokens, types;
  std::map<std::string, std::pair<std::vector<kexue::Index>, std::vector<float>>> tensors;
};

// The file format: '#' comments, '$ name word...' lists of words, '@ name d0 d1 ...' tensor headers
// followed by the values in row-major order.
Data load(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "ner_spans: cannot open %s\n", path.c_str());
    std::exit(1);
  }
  Data data;
  std::string line, current;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line.substr(1));
    if (line[0] == '$') {
      std::string name, word;
      ls >> name;
      auto& list = name == "tokens" ? data.tokens : data.types;
      while (ls >> word) list.push_back(word);
    } else if (line[0] == '@') {
      ls >> current;
      kexue::Index dim;
      auto& t = data.tensors[current];
      while (ls >> dim) t.first.push_back(dim);
    } else {
      std::istringstream vs(line);
      float v;
      while (vs >> v) data.tensors[current].second.push_back(v);
    }
  }
  return data;
}

kexue::Matrix<float> matrix(const Data& d, const std::string& name) {
  const auto& t = d.tensors.at(name);
  const kexue::Index rows = t.first.size() > 1 ? t.first[0] : 1, cols = t.first.back();
  return Eigen::Map<const kexue::Matrix<float>>(t.second.data(), rows, cols);
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

int main() {
  const Data data = load(std::string(KEXUE_EXAMPLES_DATA_DIR) + "/ner_spans.txt");
  const kexue::Index heads = static_cast<kexue::Index>(data.types.size()), head_size = 64;
  kexue::GlobalPointerWeights<float> weights;
  weights.w = matrix(data, "w");
  weights.b = matrix(data, "b").transpose();
  weights.heads = heads;
  weights.head_size = head_size;
  const kexue::Matrix<float> h = matrix(data, "h");
  const kexue::Index n = h.rows();

  // RoPE as bert4keras: interleaved pairs, base 10000, positions 0..n-1.
  const kexue::RopeTable<float> table(n, head_size);
  kexue::Matrix<float> scores(heads * n, n);
  kexue::global_pointer(weights, table, h, scores, n);

  // The reference scripts never emit spans touching [CLS] or [SEP].
  kexue::DecodeOptions decode;
  decode.exclude_boundary_tokens = true;
  const std::vector<kexue::Span> spans = kexue::decode_spans(scores, heads, decode);
  // The memory-lean path finds the same spans without the [heads * n, n] score matrix.
  if (kexue::global_pointer_spans(weights, table, h, n, decode) != spans) {
    std::fprintf(stderr, "ner_spans: the lean decoding disagrees with the dense one\n");
    return 1;
  }

  std::string sentence;
  for (kexue::Index i = 1; i + 1 < n; ++i) sentence += data.tokens[std::size_t(i)];
  std::printf("# GlobalPointer NER over \"%s\" (%td tokens, %td entity types)\n", sentence.c_str(), n, heads);
  for (const auto& s : spans) {
    std::string text;
    for (kexue::Index i = s.start; i <= s.end; ++i) text += data.tokens[std::size_t(i)];
    std::printf("{\"type\": \"%s\", \"start\": %td, \"end\": %td, \"text\": \"%s\", \"score\": %.4f}\n",
                json_escape(data.types[std::size_t(s.head)]).c_str(), s.start, s.end, json_escape(text).c_str(),
                s.score);
  }
  return 0;
}
