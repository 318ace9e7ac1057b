// COPY text format encoding.
#include "pgferry/replication/copy_encoding.hpp"

namespace pgferry::replication {

void append_copy_text(std::string& out, std::string_view value) {
  // Copy clean stretches in one append; most values contain nothing to escape.
  std::size_t start = 0;
  for (std::size_t i = 0; i < value.size(); ++i) {
    char escaped;
    switch (value[i]) {
      case '\\':
        escaped = '\\';
        break;
      case '\t':
        escaped = 't';
        break;
      case '\n':
        escaped = 'n';
        break;
      case '\r':
        escaped = 'r';
        break;
      default:
        continue;
    }
    out.append(value.data() + start, i - start);
    out += '\\';
    out += escaped;
    start = i + 1;
  }
  out.append(value.data() + start, value.size() - start);
}

}  // namespace pgferry::replication
