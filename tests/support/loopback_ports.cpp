#include "support/loopback_ports.hpp"

#include <boost/asio.hpp>

namespace conduit::testing {

std::string free_port() {
  boost::asio::io_context ctx;
  boost::asio::ip::tcp::acceptor a(ctx, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return std::to_string(a.local_endpoint().port());
}

bool wait_until_listening(const std::string& port, std::chrono::milliseconds bound) {
  boost::asio::io_context ctx;
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < deadline) {
    boost::asio::ip::tcp::socket s(ctx);
    boost::system::error_code ec;
    s.connect({boost::asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(std::stoi(port))}, ec);
    if (!ec) return true;
    boost::asio::steady_timer t(ctx, std::chrono::milliseconds(10));  // still starting: retry shortly
    t.wait();
  }
  return false;
}

}  // namespace conduit::testing
