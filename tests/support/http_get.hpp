// A blocking HTTP/1.1 GET against 127.0.0.1 for tests of the agent's endpoints.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <string>
#include <utility>

namespace pgferry::testing {

// Returns the status code and the body.
inline std::pair<int, std::string> http_get(unsigned short port, const std::string& path) {
  namespace beast = boost::beast;
  namespace http = beast::http;
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), port});
  http::request<http::string_body> request{http::verb::get, path, 11};
  request.set(http::field::host, "localhost");
  http::write(socket, request);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(socket, buffer, response);
  return {static_cast<int>(response.result_int()), response.body()};
}

}  // namespace pgferry::testing
