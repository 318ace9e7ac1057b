// spdlog configuration with a JSON-lines formatter.
#include "pgferry/replication/core/log.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

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

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    auto millis = std::chrono::time_point_cast<std::chrono::milliseconds>(msg.time);
    std::string line = fmt::format("{{\"time\":\"{:%Y-%m-%dT%H:%M:%S}Z\",\"level\":\"", millis);
    auto level = spdlog::level::to_string_view(msg.level);
    line.append(level.data(), level.size());
    line += "\",\"msg\":\"";
    append_json_escaped(line, std::string_view(msg.payload.data(), msg.payload.size()));
    line += "\"}\n";
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
