// A plain Boost.Asio echo server, written the way Asio's own
// async_tcp_echo_server example is: callbacks, shared_from_this, one
// fixed buffer per connection, async_read_some then async_write of what was
// read. The echo benchmark (see run.sh) compares Conduit against it.
//
// usage: asio_echo PORT   (0 = any free port)
// Listens on 127.0.0.1, prints "listening PORT" once it does, and echoes
// every connection until killed.
#include <array>
#include <charconv>
#include <iostream>
#include <memory>
#include <string_view>
#include <utility>

#include <boost/asio.hpp>

namespace asio = boost::asio;
using asio::ip::tcp;

class Session : public std::enable_shared_from_this<Session> {
 public:
  explicit Session(tcp::socket socket) : socket_(std::move(socket)) {}

  void start() { read(); }

 private:
  void read() {
    socket_.async_read_some(asio::buffer(data_),
                            [this, self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
                              if (!ec) write(n);
                            });
  }

  void write(std::size_t n) {
    asio::async_write(socket_, asio::buffer(data_, n),
                      [this, self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                        if (!ec) read();
                      });
  }

  tcp::socket socket_;
  std::array<char, 64 * 1024> data_;
};

class Server {
 public:
  Server(asio::io_context& io, unsigned short port)
      : acceptor_(io, tcp::endpoint(asio::ip::address_v4::loopback(), port)) {
    accept();
  }

  unsigned short port() const { return acceptor_.local_endpoint().port(); }

 private:
  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
      if (!ec) std::make_shared<Session>(std::move(socket))->start();
      accept();
    });
  }

  tcp::acceptor acceptor_;
};

int main(int argc, char** argv) {
  unsigned short port = 0;
  const std::string_view arg = argc == 2 ? argv[1] : "";
  const auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), port);
  if (arg.empty() || ec != std::errc{} || end != arg.data() + arg.size()) {
    std::cerr << "usage: asio_echo PORT   (0 = any free port)\n";
    return 2;
  }
  try {
    asio::io_context io;
    Server server(io, port);
    std::cout << "listening " << server.port() << std::endl;
    io.run();
  } catch (const std::exception& e) {
    std::cerr << "asio_echo: " << e.what() << '\n';
    return 1;
  }
}
