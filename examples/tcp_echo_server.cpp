// The asyncio docs' "TCP Echo Server" (protocol version), in Conduit: echo
// one message back, then close the client's connection.
//
//   tcp_echo_server [PORT]     (default 8888; 0 picks a free port)
#include <conduit/event_loop.hpp>
#include <conduit/server.hpp>

#include <boost/asio/use_awaitable.hpp>

#include <iostream>
#include <string>

using namespace conduit;

class EchoServerProtocol : public Protocol {
 public:
  void connection_made(std::shared_ptr<Transport> transport) override {
    auto peer = transport->get_extra_info_as<SocketAddress>("peername");
    std::cout << "Connection from " << (peer ? peer->to_string() : "?") << std::endl;
    transport_ = std::move(transport);
  }

  void data_received(std::span<const std::byte> data) override {
    std::cout << "Data received: '" << as_string_view(data) << "'\n";
    std::cout << "Send: '" << as_string_view(data) << "'\n";
    transport_->write(data);
    std::cout << "Close the client socket" << std::endl;
    transport_->close();
  }

  void connection_lost(std::exception_ptr) override { transport_.reset(); }

 private:
  std::shared_ptr<Transport> transport_;
};

asio::awaitable<void> serve(EventLoop& loop, std::uint16_t port) {
  std::vector<std::string> hosts = {"127.0.0.1"};
  auto server = co_await loop.create_server([] { return std::make_shared<EchoServerProtocol>(); }, hosts, port,
                                            ServerOptions{}, asio::use_awaitable);
  std::cout << "Serving on " << server->sockets().at(0).to_string() << std::endl;
  co_await server->serve_forever(asio::use_awaitable);
}

int main(int argc, char** argv) {
  EventLoop loop;
  const auto port = static_cast<std::uint16_t>(argc > 1 ? std::stoi(argv[1]) : 8888);
  loop.run_until_complete(serve(loop, port));
}
