// spdlog configuration with a JSON-lines formatter.
//
// NOTES
// - --log-format json writes one object a line with stable fields: "time" (UTC, ISO 8601 with
//   milliseconds), "level", "msg" (the text line, unchanged) and "fields": the key=value
//   pairs of the message's event part (before the first ": ", after which an error's text
//   follows), values as strings, quoted values unquoted, the first of a repeated key kept.
#include "pgferry/replication/core/log.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

void append_json_escaped(std::string& out, std::string_view text) {
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out += c;
        }
    }
  }
}

namespace {

bool is_key_char(char c, bool first) {
  return (c >= 'a' && c <= 'z') || c == '_' || (!first && c >= '0' && c <= '9');
}

}  // namespace

std::vector<std::pair<std::string, std::string>> log_fields(std::string_view message) {
  std::vector<std::pair<std::string, std::string>> fields;
  std::size_t i = 0;
  const std::size_t n = message.size();
  while (i < n) {
    // The event part ends at the first ": " (what follows is an error's text).
    if (message[i] == ':' && (i + 1 == n || message[i + 1] == ' ')) break;
    bool word_start = i == 0 || message[i - 1] == ' ';
    if (!word_start || !is_key_char(message[i], true)) {
      ++i;
      continue;
    }
    std::size_t key_end = i;
    while (key_end < n && is_key_char(message[key_end], false)) ++key_end;
    if (key_end >= n || message[key_end] != '=') {
      i = key_end;
      continue;
    }
    std::string key(message.substr(i, key_end - i));
    std::size_t v = key_end + 1;
    std::string value;
    if (v < n && message[v] == '"') {
      std::size_t close = message.find('"', v + 1);
      if (close == std::string_view::npos) close = n;
      value = std::string(message.substr(v + 1, close - v - 1));
      i = close + 1;
    } else {
      std::size_t end = v;
      while (end < n && message[end] != ' ' &&
             !(message[end] == ':' && (end + 1 == n || message[end + 1] == ' '))) {
        ++end;
      }
      value = std::string(message.substr(v, end - v));
      i = end;
    }
    bool seen = false;
    for (const auto& field : fields) seen = seen || field.first == key;
    if (!seen) fields.emplace_back(std::move(key), std::move(value));
  }
  return fields;
}

namespace {

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::time_t seconds = std::chrono::system_clock::to_time_t(msg.time);
    auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count() %
        1000;
    std::string line = fmt::format("{{\"time\":\"{:%Y-%m-%dT%H:%M:%S}.{:03}Z\",\"level\":\"",
                                   fmt::gmtime(seconds), millis);
    auto level = spdlog::level::to_string_view(msg.level);
    line.append(level.data(), level.size());
    line += "\",\"msg\":\"";
    std::string_view payload(msg.payload.data(), msg.payload.size());
    append_json_escaped(line, payload);
    line += "\",\"fields\":{";
    bool first = true;
    for (const auto& [key, value] : log_fields(payload)) {
      line += first ? "\"" : ",\"";
      first = false;
      line += key;  // [a-z_][a-z0-9_]*: nothing to escape
      line += "\":\"";
      append_json_escaped(line, value);
      line += '"';
    }
    line += "}}\n";
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

namespace {

spdlog::level::level_enum parse_level(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    throw ConfigError(fmt::format(
        "--log-level: unknown level \"{}\"; use trace, debug, info, warn, error or off", level));
  }
  return parsed;
}

}  // namespace

void set_log_level(std::string_view level) {
  spdlog::set_level(parse_level(level));
}

std::string read_log_level_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string level;
  if (!in || !(in >> level)) {
    throw ConfigError(
        fmt::format("--log-level-file {}: {}; write a level (trace, debug, info, "
                    "warn, error or off) into it",
                    path.string(), in ? "empty" : std::strerror(errno)));
  }
  parse_level(level);
  return level;
}

void setup_logging(LogFormat format, std::string_view level) {
  auto parsed = parse_level(level);
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("pgferry", std::move(sink));
  if (format == LogFormat::json) {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ %v");
  }
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
}

}  // namespace pgferry::replication
