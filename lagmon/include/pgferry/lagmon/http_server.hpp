// A small HTTP/1.1 server (Boost.Beast) for the agent's /metrics and /status endpoints.
// One background thread; requests are tiny and served one at a time with a read timeout,
// so a stuck client delays a scrape by at most that timeout.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace pgferry::lagmon {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Returns the response for a GET of `path`, or nullopt for 404.
using HttpHandler = std::function<std::optional<HttpResponse>(const std::string& path)>;

class HttpServer {
 public:
  // `listen` is "HOST:PORT", ":PORT" (localhost) or "[V6]:PORT"; port 0 picks a free one.
  // Throws ConfigError for a malformed address and Error when it cannot bind.
  HttpServer(const std::string& listen, HttpHandler handler);
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer();

  unsigned short port() const;
  std::string address() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pgferry::lagmon
