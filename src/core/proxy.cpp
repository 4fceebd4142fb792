#include "conduit/proxy.hpp"

#include "conduit/datagram_proxy.hpp"
#include "conduit/stream_proxy.hpp"

#include <boost/asio/post.hpp>

#include <stdexcept>

namespace conduit {

void create_proxy(EventLoop& loop, ProxyOptions options,
                  std::function<void(std::exception_ptr, std::shared_ptr<Proxy>)> done) {
  auto fail = [&](const char* why) {
    asio::post(loop.context(), [done = std::move(done), error = std::make_exception_ptr(std::invalid_argument(why))] {
      done(error, nullptr);
    });
  };
  if (!options.name.empty()) {
    return fail("a proxy's name is for finding it on a service's host (ControlProxy); a local proxy takes none");
  }
  auto widen = [done](std::exception_ptr error, auto proxy) { done(error, std::move(proxy)); };
  if (!options.datagram) {
    StreamProxyOptions stream;
    stream.listen = std::move(options.listen);
    stream.upstream = std::move(options.upstream);
    stream.faults = std::move(options.faults);
    stream.buffer = options.buffer;
    stream.seed = options.seed;
    stream.on_accepted = std::move(options.on_accepted);
    stream.on_closed = std::move(options.on_closed);
    return StreamProxy::create(loop, std::move(stream), widen);
  }
  if (options.listen.unix_path || options.upstream.unix_path || options.listen.tls || options.upstream.tls) {
    return fail("a datagram proxy listens and relays on UDP host and port: no Unix path, no TLS");
  }
  DatagramProxyOptions datagram;
  datagram.listen_host = std::move(options.listen.host);
  datagram.listen_port = options.listen.port;
  datagram.upstream_host = std::move(options.upstream.host);
  datagram.upstream_port = options.upstream.port;
  datagram.faults = std::move(options.faults);
  datagram.idle_timeout = options.idle_timeout;
  datagram.buffer = options.buffer;
  datagram.seed = options.seed;
  datagram.on_accepted = std::move(options.on_accepted);
  datagram.on_closed = std::move(options.on_closed);
  DatagramProxy::create(loop, std::move(datagram), widen);
}

}  // namespace conduit
