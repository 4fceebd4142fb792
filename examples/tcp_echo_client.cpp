// The asyncio docs' "TCP Echo Client" (protocol version), in Conduit: send
// one message, print the reply, finish when the server closes.
//
//   tcp_echo_client [PORT] [MESSAGE]     (default 8888, "Hello World!")
#include <conduit/event_loop.hpp>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <iostream>
#include <string>

using namespace conduit;

class EchoClientProtocol : public Protocol {
 public:
  EchoClientProtocol(std::string message, bool& connection_lost)
      : message_(std::move(message)), lost_(connection_lost) {}

  void connection_made(std::shared_ptr<Transport> transport) override {
    transport->write(message_);
    std::cout << "Data sent: '" << message_ << "'" << std::endl;
  }

  void data_received(std::span<const std::byte> data) override {
    std::cout << "Data received: '" << as_string_view(data) << "'" << std::endl;
  }

  void connection_lost(std::exception_ptr) override {
    std::cout << "The server closed the connection" << std::endl;
    lost_ = true;
  }

 private:
  std::string message_;
  bool& lost_;
};

int main(int argc, char** argv) {
  EventLoop loop;
  const auto port = static_cast<std::uint16_t>(argc > 1 ? std::stoi(argv[1]) : 8888);
  const std::string message = argc > 2 ? argv[2] : "Hello World!";
  bool connection_lost = false;

  auto [transport, protocol] = loop.run_until_complete(
      loop.create_connection([&] { return std::make_shared<EchoClientProtocol>(message, connection_lost); },
                             "127.0.0.1", port, {}, asio::use_awaitable));
  // Wait until the protocol signals that the connection is lost.
  loop.run_until([&] { return connection_lost; }, std::chrono::seconds(30));
  transport->close();
  return connection_lost ? 0 : 1;
}
