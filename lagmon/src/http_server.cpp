// HttpServer over Boost.Beast (synchronous accept/read/write on one thread).
#include "pgferry/lagmon/http_server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <thread>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::lagmon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

tcp::endpoint parse_listen(const std::string& listen) {
  auto colon = listen.rfind(':');
  if (colon == std::string::npos) {
    throw replication::ConfigError(fmt::format(
        "--metrics-listen: \"{}\" is not HOST:PORT (e.g. 127.0.0.1:9187 or :9187)", listen));
  }
  std::string host = listen.substr(0, colon);
  std::string port_text = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty() || host == "localhost") host = "127.0.0.1";
  unsigned long port = 0;
  try {
    std::size_t used = 0;
    port = std::stoul(port_text, &used);
    if (used != port_text.size() || port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    throw replication::ConfigError(
        fmt::format("--metrics-listen: \"{}\" is not a port number", port_text));
  }
  boost::system::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) {
    throw replication::ConfigError(
        fmt::format("--metrics-listen: \"{}\" is not an IP address", host));
  }
  return {address, static_cast<unsigned short>(port)};
}

}  // namespace

struct HttpServer::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  HttpHandler handler;
  std::atomic<bool> stopping{false};
  std::thread thread;

  void serve(tcp::socket socket) {
    timeval timeout{5, 0};
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    beast::flat_buffer buffer;
    http::request<http::string_body> request;
    beast::error_code ec;
    http::read(socket, buffer, request, ec);
    if (ec) return;
    http::response<http::string_body> response;
    response.version(request.version());
    response.keep_alive(false);
    response.set(http::field::server, "pgferry");
    std::string path(request.target());
    if (auto q = path.find('?'); q != std::string::npos) path.resize(q);
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      response.result(http::status::method_not_allowed);
      response.set(http::field::content_type, "text/plain");
      response.body() = "only GET\n";
    } else {
      std::optional<HttpResponse> result;
      try {
        result = handler(path);
      } catch (const std::exception& e) {
        result = HttpResponse{500, "text/plain; charset=utf-8", std::string(e.what()) + "\n"};
      }
      if (!result) result = HttpResponse{404, "text/plain; charset=utf-8", "not found\n"};
      response.result(static_cast<unsigned>(result->status));
      response.set(http::field::content_type, result->content_type);
      if (request.method() == http::verb::get) response.body() = std::move(result->body);
    }
    response.prepare_payload();
    http::write(socket, response, ec);
    socket.shutdown(tcp::socket::shutdown_both, ec);
  }

  void run() {
    while (!stopping.load()) {
      beast::error_code ec;
      tcp::socket socket(io);
      acceptor.accept(socket, ec);
      if (ec) {
        if (stopping.load()) return;
        continue;
      }
      serve(std::move(socket));
    }
  }
};

HttpServer::HttpServer(const std::string& listen, HttpHandler handler)
    : impl_(std::make_unique<Impl>()) {
  impl_->handler = std::move(handler);
  auto endpoint = parse_listen(listen);
  beast::error_code ec;
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw replication::Error(
        fmt::format("cannot listen on {} for /metrics: {}", listen, ec.message()));
  }
  impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
}

HttpServer::~HttpServer() {
  impl_->stopping.store(true);
  // shutdown() on a listening socket wakes a blocked accept() on Linux.
  ::shutdown(impl_->acceptor.native_handle(), SHUT_RDWR);
  if (impl_->thread.joinable()) impl_->thread.join();
  beast::error_code ec;
  impl_->acceptor.close(ec);
}

unsigned short HttpServer::port() const {
  return impl_->acceptor.local_endpoint().port();
}

std::string HttpServer::address() const {
  auto endpoint = impl_->acceptor.local_endpoint();
  auto host = endpoint.address().to_string();
  if (endpoint.address().is_v6()) host = "[" + host + "]";
  return fmt::format("{}:{}", host, endpoint.port());
}

}  // namespace pgferry::lagmon
