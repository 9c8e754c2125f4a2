// SPDX-License-Identifier: MIT
// Build-time tool: copies every ```cpp block of README.md into a C++ file, each block as the body of its own
// function, so the README's examples are compiled (and run) exactly as written.
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: extract_snippets README.md out.cpp\n";
    return 2;
  }
  std::ifstream in(argv[1]);
  std::vector<std::string> blocks;
  std::string line, block;
  bool inside = false;
  while (std::getline(in, line)) {
    if (!inside && line.rfind("```cpp", 0) == 0) {
      inside = true;
      block.clear();
    } else if (inside && line.rfind("```", 0) == 0) {
      inside = false;
      blocks.push_back(block);
    } else if (inside) {
      block += line + "\n";
    }
  }
  if (blocks.empty()) {
    std::cerr << "extract_snippets: no ```cpp blocks in " << argv[1] << "\n";
    return 1;
  }
  std::ostringstream out;
  out << "// Generated from README.md by tests/readme/extract_snippets.cpp; do not edit.\n"
      << "#include <kexue/kexue.hpp>\n#include <cstdio>\n#include <iostream>\n#include <vector>\n\n";
  for (std::size_t i = 0; i < blocks.size(); ++i)
    out << "static void readme_snippet_" << i << "() {\n" << blocks[i] << "}\n\n";
  out << "int main() {\n";
  for (std::size_t i = 0; i < blocks.size(); ++i)
    out << "  std::printf(\"--- README snippet " << i << "\\n\");\n  readme_snippet_" << i << "();\n";
  out << "  return 0;\n}\n";
  std::ofstream(argv[2]) << out.str();
  return 0;
}
