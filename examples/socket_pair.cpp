// The asyncio docs' "Connecting Existing Sockets" (protocol version), in
// Conduit: wrap one end of a socket pair, send through the other.
#include <conduit/event_loop.hpp>

#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <iostream>

using namespace conduit;

class MyProtocol : public Protocol {
 public:
  explicit MyProtocol(bool& connection_lost) : lost_(connection_lost) {}

  void connection_made(std::shared_ptr<Transport> transport) override { transport_ = std::move(transport); }

  void data_received(std::span<const std::byte> data) override {
    std::cout << "Received: " << as_string_view(data) << std::endl;
    // We are done: close the transport; connection_lost() will be called automatically.
    transport_->close();
  }

  void connection_lost(std::exception_ptr) override {
    transport_.reset();
    lost_ = true;
  }

 private:
  std::shared_ptr<Transport> transport_;
  bool& lost_;
};

int main() {
  EventLoop loop;
  asio::local::stream_protocol::socket rsock(loop.context()), wsock(loop.context());
  asio::local::connect_pair(rsock, wsock);

  bool connection_lost = false;
  // Register the socket to wait for data.
  auto [transport, protocol] = loop.run_until_complete(loop.create_unix_connection(
      [&] { return std::make_shared<MyProtocol>(connection_lost); }, std::move(rsock), asio::use_awaitable));

  // Simulate the reception of data from the network.
  loop.call_soon([&] { asio::write(wsock, asio::buffer(std::string_view("abc"))); });

  // Wait for data.
  loop.run_until([&] { return connection_lost; }, std::chrono::seconds(30));
  transport->close();
  wsock.close();
  return connection_lost ? 0 : 1;
}
