// PgBouncer configuration rewrite for the traffic switch (see pgbouncer_config.hpp).
#include "pgferry/cutover/pgbouncer_config.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "pgferry/replication/core/conninfo.hpp"
#include "pgferry/replication/core/error.hpp"

namespace pgferry::cutover {

namespace repl = pgferry::replication;

namespace {

std::string_view trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  return text;
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// "host=a port=5432 dbname='x y'" as ordered (key, raw value) pairs; quotes kept.
std::vector<std::pair<std::string, std::string>> parse_entry(std::string_view value) {
  std::vector<std::pair<std::string, std::string>> pairs;
  std::size_t i = 0;
  auto skip_space = [&] {
    while (i < value.size() && std::isspace(static_cast<unsigned char>(value[i]))) ++i;
  };
  while (true) {
    skip_space();
    if (i >= value.size()) break;
    std::size_t key_start = i;
    while (i < value.size() && value[i] != '=' &&
           !std::isspace(static_cast<unsigned char>(value[i])))
      ++i;
    std::string key(value.substr(key_start, i - key_start));
    skip_space();
    if (i >= value.size() || value[i] != '=') {
      throw repl::ConfigError(fmt::format("PgBouncer entry: keyword '{}' has no '=' value", key));
    }
    ++i;
    skip_space();
    std::size_t value_start = i;
    if (i < value.size() && value[i] == '\'') {
      ++i;
      while (i < value.size()) {
        if (value[i] == '\'' && i + 1 < value.size() && value[i + 1] == '\'') {
          i += 2;
        } else if (value[i] == '\'') {
          ++i;
          break;
        } else {
          ++i;
        }
      }
    } else {
      while (i < value.size() && !std::isspace(static_cast<unsigned char>(value[i]))) ++i;
    }
    pairs.emplace_back(std::move(key), std::string(value.substr(value_start, i - value_start)));
  }
  return pairs;
}

std::string entry_value(std::string_view value) {
  bool plain = !value.empty() && std::none_of(value.begin(), value.end(), [](char c) {
    return std::isspace(static_cast<unsigned char>(c)) || c == '\'';
  });
  if (plain) return std::string(value);
  std::string out = "'";
  for (char c : value) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

}  // namespace

std::string rewrite_database_entry(std::string_view config_text, std::string_view database,
                                   std::string_view conninfo) {
  // host and port always (a port left as it was would keep pointing at the old server);
  // hostaddr, which wins over host, is dropped.
  std::string host = repl::conninfo_value(conninfo, "host");
  if (host.empty()) {
    throw repl::ConfigError(
        "--pgbouncer-config: the new primary's connection string names no host: give host= "
        "(and port=) in it, as PgBouncer should reach it");
  }
  std::string port = repl::conninfo_value(conninfo, "port");
  std::vector<std::pair<std::string, std::string>> wanted{{"host", host},
                                                          {"port", port.empty() ? "5432" : port}};
  if (auto dbname = repl::conninfo_value(conninfo, "dbname"); !dbname.empty()) {
    wanted.emplace_back("dbname", dbname);
  }
  std::string out;
  std::string section;
  bool found = false;
  std::size_t pos = 0;
  while (pos <= config_text.size()) {
    std::size_t end = config_text.find('\n', pos);
    bool last = end == std::string_view::npos;
    std::string_view line = config_text.substr(pos, last ? std::string_view::npos : end - pos);
    std::string_view stripped = trim(line);
    std::string replaced;
    if (!stripped.empty() && stripped.front() == '[' && stripped.back() == ']') {
      section = lower(trim(stripped.substr(1, stripped.size() - 2)));
    } else if (section == "databases" && !stripped.empty() && stripped.front() != ';' &&
               stripped.front() != '#') {
      auto eq = stripped.find('=');
      if (eq != std::string_view::npos && trim(stripped.substr(0, eq)) == database) {
        auto pairs = parse_entry(stripped.substr(eq + 1));
        std::erase_if(pairs, [](const auto& pair) { return pair.first == "hostaddr"; });
        for (const auto& [key, value] : wanted) {
          // (a named copy: clang 14 cannot capture a structured binding)
          auto it = std::find_if(pairs.begin(), pairs.end(),
                                 [&name = key](const auto& pair) { return pair.first == name; });
          if (it != pairs.end()) {
            it->second = entry_value(value);
          } else {
            pairs.emplace_back(key, entry_value(value));
          }
        }
        replaced = fmt::format("{} =", database);
        for (const auto& [key, value] : pairs) replaced += fmt::format(" {}={}", key, value);
        found = true;
      }
    }
    out += replaced.empty() ? std::string(line) : replaced;
    if (last) break;
    out += '\n';
    pos = end + 1;
  }
  if (!found) {
    throw repl::ConfigError(fmt::format(
        "--pgbouncer-config: no entry '{}' in its [databases] section; name the entry with "
        "--pgbouncer-database",
        database));
  }
  return out;
}

std::string read_pgbouncer_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    throw repl::ConfigError(
        fmt::format("--pgbouncer-config {}: cannot read it: {}", path, std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_pgbouncer_config(const std::string& path, const std::string& text) {
  struct stat st {};
  bool have_stat = ::stat(path.c_str(), &st) == 0;
  std::string temp = path + ".pgferry-new";
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw repl::ConfigError(
        fmt::format("--pgbouncer-config: cannot write {}: {}", temp, std::strerror(errno)));
  }
  std::size_t written = 0;
  while (written < text.size()) {
    ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int error = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      throw repl::ConfigError(
          fmt::format("--pgbouncer-config: writing {}: {}", temp, std::strerror(error)));
    }
    written += static_cast<std::size_t>(n);
  }
  if (have_stat) {
    (void)::fchmod(fd, st.st_mode & 07777);
    (void)::fchown(fd, st.st_uid, st.st_gid);
  }
  ::fsync(fd);
  ::close(fd);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    int error = errno;
    ::unlink(temp.c_str());
    throw repl::ConfigError(
        fmt::format("--pgbouncer-config: replacing {}: {}", path, std::strerror(error)));
  }
}

}  // namespace pgferry::cutover
