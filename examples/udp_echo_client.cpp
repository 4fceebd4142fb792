// The asyncio docs' "UDP Echo Client", in Conduit: send one datagram, print
// the echo, close.
//
//   udp_echo_client [PORT]     (default 9999)
#include <conduit/event_loop.hpp>

#include <iostream>
#include <string>

using namespace conduit;

class EchoClientProtocol : public DatagramProtocol {
 public:
  EchoClientProtocol(std::string message, bool& done) : message_(std::move(message)), done_(done) {}

  void connection_made(std::shared_ptr<DatagramTransport> transport) override {
    transport_ = std::move(transport);
    std::cout << "Send: " << message_ << std::endl;
    transport_->sendto(message_);
  }

  void datagram_received(std::span<const std::byte> data, const SocketAddress&) override {
    std::cout << "Received: " << as_string_view(data) << std::endl;
    std::cout << "Close the socket" << std::endl;
    transport_->close();
  }

  void error_received(std::exception_ptr exc) override {
    try {
      std::rethrow_exception(exc);
    } catch (const std::exception& e) {
      std::cout << "Error received: " << e.what() << std::endl;
    }
  }

  void connection_lost(std::exception_ptr) override {
    std::cout << "Connection closed" << std::endl;
    transport_.reset();
    done_ = true;
  }

 private:
  std::string message_;
  bool& done_;
  std::shared_ptr<DatagramTransport> transport_;
};

int main(int argc, char** argv) {
  EventLoop loop;
  const auto port = static_cast<std::uint16_t>(argc > 1 ? std::stoi(argv[1]) : 9999);
  bool done = false;
  DatagramOptions options;
  options.remote_addr = std::pair{std::string("127.0.0.1"), port};
  loop.create_datagram_endpoint([&] { return std::make_shared<EchoClientProtocol>("Hello World!", done); }, options,
                                [](std::exception_ptr error, auto, auto) {
                                  if (error) std::rethrow_exception(error);
                                });
  if (!loop.run_until([&] { return done; }, std::chrono::seconds(10))) {
    std::cerr << "no echo within 10 s\n";
    return 1;
  }
}
