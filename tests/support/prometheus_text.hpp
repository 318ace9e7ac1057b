// A strict reader of the Prometheus text exposition format (0.0.4) for tests: every line
// must be a HELP, a TYPE or a sample of a declared family; returns the samples so that a
// test can check values. Throws std::runtime_error naming the bad line.
#pragma once

#include <cmath>
#include <cstring>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace pgferry::testing {

struct PrometheusSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

inline std::vector<PrometheusSample> parse_prometheus_text(const std::string& text) {
  static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*))");
  static const std::regex type(
      R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex sample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? ([-+]?(?:[0-9.]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))( -?[0-9]+)?)");
  static const std::regex label(R"(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)\")");
  std::map<std::string, std::string> types;
  std::vector<PrometheusSample> samples;
  std::istringstream in(text);
  std::string line;
  if (!text.empty() && text.back() != '\n') throw std::runtime_error("no final newline");
  while (std::getline(in, line)) {
    std::smatch m;
    if (line.empty()) continue;
    if (std::regex_match(line, m, help)) continue;
    if (std::regex_match(line, m, type)) {
      if (types.count(m[1])) throw std::runtime_error("TYPE twice: " + line);
      types[m[1]] = m[2];
      continue;
    }
    if (line[0] == '#') continue;
    if (!std::regex_match(line, m, sample)) throw std::runtime_error("bad line: " + line);
    PrometheusSample s;
    s.name = m[1];
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (!types.count(family) && family.size() > std::strlen(suffix) && family.ends_with(suffix)) {
        family = family.substr(0, family.size() - std::strlen(suffix));
      }
    }
    if (!types.count(family)) throw std::runtime_error("sample without TYPE: " + line);
    std::string labels = m[3];
    for (std::sregex_iterator it(labels.begin(), labels.end(), label), end; it != end; ++it) {
      s.labels[(*it)[1]] = (*it)[2];
    }
    std::string value = m[4];
    s.value = value == "+Inf" || value == "Inf" ? INFINITY
              : value == "-Inf"                 ? -INFINITY
              : value == "NaN"                  ? NAN
                                                : std::stod(value);
    samples.push_back(std::move(s));
  }
  return samples;
}

// The value of the one sample with this name and labels; throws if absent.
inline double prometheus_value(const std::vector<PrometheusSample>& samples,
                               const std::string& name,
                               const std::map<std::string, std::string>& labels = {}) {
  for (const auto& s : samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  throw std::runtime_error("no sample " + name);
}

}  // namespace pgferry::testing
