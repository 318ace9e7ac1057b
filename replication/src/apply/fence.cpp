// Cutover fence messages: their content, written and read (see fence.hpp).
#include "pgferry/replication/apply/fence.hpp"

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

namespace pgferry::replication {

std::string fence_message_content(std::string_view id, std::string_view name) {
  return nlohmann::json{{"fence", id}, {"name", name}}.dump();
}

std::optional<std::string> fence_id_for(const pgoutput::LogicalMessage& message,
                                        std::string_view name) {
  if (!message.transactional || message.prefix != kFencePrefix) return std::nullopt;
  std::string_view text(reinterpret_cast<const char*>(message.content.data()),
                        message.content.size());
  nlohmann::json content = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!content.is_object() || !content.contains("fence") || !content["fence"].is_string() ||
      !content.contains("name") || !content["name"].is_string()) {
    spdlog::warn("ignoring a \"{}\" message at lsn={} that is not a fence: {:.200}", kFencePrefix,
                 message.lsn, text);
    return std::nullopt;
  }
  if (content["name"].get<std::string>() != name) {
    spdlog::debug("ignoring fence id={} for name={} at lsn={}", content["fence"].get<std::string>(),
                  content["name"].get<std::string>(), message.lsn);
    return std::nullopt;
  }
  return content["fence"].get<std::string>();
}

}  // namespace pgferry::replication
