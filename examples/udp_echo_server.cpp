// The asyncio docs' "UDP Echo Server", in Conduit: print each datagram and
// send it back to where it came from, until SIGINT or SIGTERM.
//
//   udp_echo_server [PORT]     (default 9999; 0 picks a free port)
#include <conduit/event_loop.hpp>

#include <boost/asio/signal_set.hpp>

#include <iostream>
#include <string>

using namespace conduit;

class EchoServerProtocol : public DatagramProtocol {
 public:
  void connection_made(std::shared_ptr<DatagramTransport> transport) override { transport_ = std::move(transport); }

  void datagram_received(std::span<const std::byte> data, const SocketAddress& addr) override {
    std::cout << "Received '" << as_string_view(data) << "' from " << addr.to_string() << '\n';
    std::cout << "Send '" << as_string_view(data) << "' to " << addr.to_string() << std::endl;
    transport_->sendto(data, addr);
  }

  void connection_lost(std::exception_ptr) override { transport_.reset(); }

 private:
  std::shared_ptr<DatagramTransport> transport_;
};

int main(int argc, char** argv) {
  EventLoop loop;
  const auto port = static_cast<std::uint16_t>(argc > 1 ? std::stoi(argv[1]) : 9999);
  std::cout << "Starting UDP server" << std::endl;

  DatagramOptions options;
  options.local_addr = std::pair{std::string("127.0.0.1"), port};
  std::shared_ptr<DatagramTransport> endpoint;
  loop.create_datagram_endpoint(
      [] { return std::make_shared<EchoServerProtocol>(); }, options,
      [&](std::exception_ptr error, std::shared_ptr<DatagramTransport> transport, auto) {
        if (error) std::rethrow_exception(error);
        std::cout << "Serving on " << transport->get_extra_info_as<SocketAddress>("sockname")->to_string() << std::endl;
        endpoint = std::move(transport);
      });

  asio::signal_set signals(loop.context(), SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int) {
    if (endpoint) endpoint->close();
    loop.stop();
  });
  loop.run_forever();
}
