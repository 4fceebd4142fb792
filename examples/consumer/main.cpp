// The smallest program against an installed Conduit: a socket pair echoes
// one message through a Protocol, then it prints what came back.
// Every installed header, each of which must stand on its own.
#include <conduit/datagram_proxy.hpp>
#include <conduit/errors.hpp>
#include <conduit/event_loop.hpp>
#include <conduit/faults.hpp>
#include <conduit/protocols.hpp>
#include <conduit/server.hpp>
#include <conduit/socket_address.hpp>
#include <conduit/stream_proxy.hpp>
#include <conduit/tls.hpp>
#include <conduit/transports.hpp>

#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/write.hpp>

#include <iostream>
#include <string>

using namespace conduit;

class Collect : public Protocol {
 public:
  void data_received(std::span<const std::byte> data) override { got.append(as_string_view(data)); }
  std::string got;
};

int main() {
  EventLoop loop;
  asio::local::stream_protocol::socket a(loop.context()), b(loop.context());
  asio::local::connect_pair(a, b);
  std::shared_ptr<Transport> transport;
  std::shared_ptr<Collect> collect;
  loop.create_unix_connection([] { return std::make_shared<Collect>(); }, std::move(a),
                              [&](std::exception_ptr, std::shared_ptr<Transport> t, std::shared_ptr<Collect> p) {
                                transport = std::move(t);
                                collect = std::move(p);
                              });
  asio::write(b, asio::buffer(std::string("installed conduit works")));
  loop.run_until([&] { return collect && collect->got.size() == 23; }, std::chrono::seconds(10));
  std::cout << (collect ? collect->got : "") << std::endl;
  transport->close();
  return collect && collect->got == "installed conduit works" ? 0 : 1;
}
