// Renderers for lag samples: a one-screen human view and a JSON object per sample.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "pgferry/lagmon/sample.hpp"

namespace pgferry::lagmon {

// 0 B, 512 B, 1.5 KiB, 12.3 MiB, 4.0 GiB.
std::string human_bytes(std::uint64_t bytes);

// The one-screen view (several lines, each ending in '\n').
std::string render_text(const LagSample& sample, const std::optional<LagTrend>& trend);
// One line for a log or a non-terminal --watch.
std::string render_line(const LagSample& sample, const std::optional<LagTrend>& trend);
nlohmann::json render_json(const LagSample& sample, const std::optional<LagTrend>& trend);

}  // namespace pgferry::lagmon
