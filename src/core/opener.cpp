#include "conduit/opener.hpp"

namespace conduit {

void LocalOpener::open_connection(ProtocolFactory factory, std::string host, std::uint16_t port, ConnectOptions options,
                                  detail::ConnectionHandler handler) {
  loop_.create_connection(std::move(factory), std::move(host), port, std::move(options), std::move(handler));
}

void LocalOpener::open_unix_connection(ProtocolFactory factory, std::string path, detail::ConnectionHandler handler) {
  loop_.create_unix_connection(std::move(factory), std::move(path), std::move(handler));
}

void LocalOpener::open_server(ProtocolFactory factory, std::vector<std::string> hosts, std::uint16_t port,
                              ServerOptions options, detail::AbstractServerHandler handler) {
  loop_.create_server(std::move(factory), std::move(hosts), port, std::move(options),
                      [handler = std::move(handler)](std::exception_ptr error, std::shared_ptr<Server> server) mutable {
                        std::move(handler)(error, std::move(server));
                      });
}

void LocalOpener::open_unix_server(ProtocolFactory factory, std::string path, ServerOptions options,
                                   detail::AbstractServerHandler handler) {
  loop_.create_unix_server(
      std::move(factory), std::move(path), std::move(options),
      [handler = std::move(handler)](std::exception_ptr error, std::shared_ptr<Server> server) mutable {
        std::move(handler)(error, std::move(server));
      });
}

void LocalOpener::open_datagram_endpoint(ProtocolFactory factory, DatagramOptions options,
                                         detail::DatagramHandler handler) {
  loop_.create_datagram_endpoint(std::move(factory), std::move(options), std::move(handler));
}

void LocalOpener::open_subprocess(ProtocolFactory factory, std::vector<std::string> argv, SubprocessOptions options,
                                  detail::SubprocessHandler handler) {
  std::string program = std::move(argv.front());
  argv.erase(argv.begin());
  loop_.subprocess_exec(std::move(factory), std::move(program), std::move(argv), std::move(options),
                        std::move(handler));
}

void LocalOpener::open_proxy(ProxyOptions options, detail::ProxyHandler handler) {
  // create_proxy's callback is a std::function (copyable); the handler is not.
  auto shared = std::make_shared<detail::ProxyHandler>(std::move(handler));
  conduit::create_proxy(loop_, std::move(options), [shared](std::exception_ptr error, std::shared_ptr<Proxy> proxy) {
    std::move (*shared)(error, std::move(proxy));
  });
}

}  // namespace conduit
