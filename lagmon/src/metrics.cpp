// Prometheus text exposition (https://prometheus.io/docs/instrumenting/exposition_formats/):
//   # HELP name text            (backslash and newline escaped)
//   # TYPE name counter|gauge|histogram
//   name{label="value"} 42      (label values: backslash, double quote, newline escaped)
// Histograms expose name_bucket{le="..."} cumulative counts, name_sum and name_count.
#include "pgferry/lagmon/metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <regex>
#include <stdexcept>

namespace pgferry::lagmon {

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)) {
  std::sort(bounds_.begin(), bounds_.end());
  buckets_ = std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1);
}

void Histogram::observe(double value) {
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
  buckets_[static_cast<std::size_t>(it - bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
  double sum = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(sum, sum + value, std::memory_order_relaxed)) {
  }
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<std::uint64_t> Histogram::cumulative_counts() const {
  std::vector<std::uint64_t> out(bounds_.size() + 1);
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    out[i] = running;
  }
  return out;
}

namespace {

void check_name(const std::string& name) {
  static const std::regex valid("[a-zA-Z_:][a-zA-Z0-9_:]*");
  if (!std::regex_match(name, valid)) {
    throw std::invalid_argument(fmt::format("invalid metric name \"{}\"", name));
  }
}

std::string escape(std::string_view text, bool quote) {
  std::string out;
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

std::string label_text(const Labels& labels, const std::string& extra_key = {},
                       const std::string& extra_value = {}) {
  if (labels.empty() && extra_key.empty()) return {};
  std::string out = "{";
  bool first = true;
  auto add = [&](const std::string& key, const std::string& value) {
    if (!first) out += ',';
    first = false;
    out += key + "=\"" + escape(value, true) + "\"";
  };
  for (const auto& [key, value] : labels) add(key, value);
  if (!extra_key.empty()) add(extra_key, extra_value);
  return out + "}";
}

std::string number(double value) {
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (std::isnan(value)) return "NaN";
  if (value == std::floor(value) && std::abs(value) < 1e15) {
    return fmt::format("{}", static_cast<std::int64_t>(value));
  }
  return fmt::format("{}", value);
}

}  // namespace

MetricsRegistry::Series& MetricsRegistry::series(const std::string& name, const std::string& help,
                                                 Type type, const Labels& labels) {
  check_name(name);
  for (const auto& [key, value] : labels) check_name(key);
  std::lock_guard lock(mutex_);
  auto family_it = std::find_if(families_.begin(), families_.end(),
                                [&](const auto& family) { return family->name == name; });
  if (family_it == families_.end()) {
    families_.push_back(std::make_unique<Family>(Family{name, help, type, {}}));
    family_it = families_.end() - 1;
  } else if ((*family_it)->type != type) {
    throw std::invalid_argument(fmt::format("metric \"{}\" registered with two types", name));
  }
  auto& family = **family_it;
  for (auto& existing : family.series) {
    if (existing->labels == labels) return *existing;
  }
  family.series.push_back(std::make_unique<Series>(Series{labels, nullptr, nullptr, nullptr}));
  return *family.series.back();
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                  const Labels& labels) {
  auto& s = series(name, help, Type::counter, labels);
  if (!s.counter) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                              const Labels& labels) {
  auto& s = series(name, help, Type::gauge, labels);
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      std::vector<double> upper_bounds, const Labels& labels) {
  auto& s = series(name, help, Type::histogram, labels);
  if (!s.histogram) s.histogram = std::make_unique<Histogram>(std::move(upper_bounds));
  return *s.histogram;
}

std::string MetricsRegistry::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& family : families_) {
    static constexpr const char* kTypes[] = {"counter", "gauge", "histogram"};
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", family->name, escape(family->help, false),
                       family->name, kTypes[static_cast<int>(family->type)]);
    for (const auto& s : family->series) {
      switch (family->type) {
        case Type::counter:
          out += fmt::format("{}{} {}\n", family->name, label_text(s->labels), s->counter->value());
          break;
        case Type::gauge:
          out += fmt::format("{}{} {}\n", family->name, label_text(s->labels),
                             number(s->gauge->value()));
          break;
        case Type::histogram: {
          const auto& bounds = s->histogram->upper_bounds();
          auto counts = s->histogram->cumulative_counts();
          for (std::size_t i = 0; i <= bounds.size(); ++i) {
            std::string le = i < bounds.size() ? number(bounds[i]) : "+Inf";
            out += fmt::format("{}_bucket{} {}\n", family->name, label_text(s->labels, "le", le),
                               counts[i]);
          }
          out += fmt::format("{}_sum{} {}\n", family->name, label_text(s->labels),
                             number(s->histogram->sum()));
          out += fmt::format("{}_count{} {}\n", family->name, label_text(s->labels), counts.back());
          break;
        }
      }
    }
  }
  return out;
}

}  // namespace pgferry::lagmon
