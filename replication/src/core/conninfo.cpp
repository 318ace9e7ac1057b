// Connection-string handling on top of PQconninfoParse(), so that URIs and keyword/value
// strings are treated exactly as libpq treats them.
#include "pgferry/replication/core/conninfo.hpp"

#include <fmt/format.h>
#include <libpq-fe.h>

#include <memory>
#include <regex>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

namespace {

struct OptionsDeleter {
  void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};
using Options = std::unique_ptr<PQconninfoOption, OptionsDeleter>;

bool is_secret(std::string_view keyword) {
  return keyword == "password" || keyword == "sslpassword";
}

// libpq's parse errors quote the offending fragment of the string, which may be part of
// a password: drop every quoted fragment before the message is shown.
std::string scrub_parse_error(std::string message) {
  static const std::regex quoted("\"[^\"]*\"");
  message = std::regex_replace(message, quoted, "\"…\"");
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  return message;
}

std::pair<Options, std::string> parse(std::string_view conninfo) {
  char* error = nullptr;
  std::string text(conninfo);
  Options options(PQconninfoParse(text.c_str(), &error));
  std::string message;
  if (error) {
    message = scrub_parse_error(error);
    PQfreemem(error);
  } else if (!options) {
    message = "out of memory";
  }
  return {std::move(options), std::move(message)};
}

}  // namespace

void validate_conninfo(std::string_view conninfo, std::string_view what) {
  auto [options, message] = parse(conninfo);
  if (!options) {
    throw ConfigError(fmt::format(
        "{}: cannot parse the connection string ({}); give a libpq keyword/value string such "
        "as \"host=db1 port=5432 dbname=app user=ferry\" or a postgresql:// URI",
        what, message));
  }
}

std::string quote_conninfo_value(std::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  out += '\'';
  return out;
}

namespace {

bool needs_quoting(std::string_view value) {
  if (value.empty()) return true;
  for (char c : value) {
    if (c == ' ' || c == '\'' || c == '\\' || c == '=' || c == '\t' || c == '\n') return true;
  }
  return false;
}

void append_pair(std::string& out, std::string_view keyword, std::string_view value) {
  if (!out.empty()) out += ' ';
  out += keyword;
  out += '=';
  out += needs_quoting(value) ? quote_conninfo_value(value) : std::string(value);
}

}  // namespace

std::string redact_conninfo(std::string_view conninfo) {
  auto [options, message] = parse(conninfo);
  if (!options) return "<malformed conninfo>";
  std::string out;
  for (auto* option = options.get(); option->keyword; ++option) {
    if (!option->val) continue;
    append_pair(out, option->keyword, is_secret(option->keyword) ? "********" : option->val);
  }
  return out;
}

std::string conninfo_with(std::string_view conninfo,
                          const std::vector<std::pair<std::string, std::string>>& overrides) {
  validate_conninfo(conninfo, "connection string");
  auto [options, message] = parse(conninfo);
  std::string out;
  for (auto* option = options.get(); option->keyword; ++option) {
    bool overridden = false;
    for (const auto& [key, value] : overrides) overridden = overridden || key == option->keyword;
    if (option->val && !overridden) append_pair(out, option->keyword, option->val);
  }
  for (const auto& [key, value] : overrides) append_pair(out, key, value);
  return out;
}

std::string conninfo_value(std::string_view conninfo, std::string_view keyword) {
  auto [options, message] = parse(conninfo);
  if (!options) return {};
  for (auto* option = options.get(); option->keyword; ++option) {
    if (keyword == option->keyword && option->val) return option->val;
  }
  return {};
}

}  // namespace pgferry::replication
