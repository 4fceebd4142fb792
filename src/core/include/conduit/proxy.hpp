// What every proxy with fault injection is, whatever it relays and wherever
// it runs: a stream proxy (TCP, TLS, Unix: stream_proxy.hpp), a datagram
// proxy (UDP: datagram_proxy.hpp), or either on a service's host
// (conduit/service/remote.hpp). create_proxy() and Opener::create_proxy()
// make one from the same ProxyOptions; code written against Proxy runs
// unchanged on any of them.
#pragma once

#include "conduit/event_loop.hpp"
#include "conduit/faults.hpp"
#include "conduit/socket_address.hpp"
#include "conduit/tls.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace conduit {

/// Where a proxy listens, or where it connects upstream.
struct ProxyEndpoint {
  std::string host;                      ///< TCP or UDP: host name or address ("" to listen on every interface)
  std::uint16_t port = 0;                ///< its port (0 to listen on a free one)
  std::optional<std::string> unix_path;  ///< a Unix socket instead of TCP
  /// Listening: serve TLS to clients (terminate). Upstream: speak TLS to
  /// it (originate). TCP only.
  std::optional<TlsOptions> tls;
};

/// One relayed connection (for UDP: one client address), as the proxy's
/// callbacks and connections() see it.
struct ProxyConnectionInfo {
  std::uint64_t id = 0;                 ///< 1, 2, ... in accept order
  std::optional<SocketAddress> client;  ///< the client's address
  std::uint64_t bytes_upstream = 0;     ///< forwarded from the client to the upstream
  std::uint64_t bytes_downstream = 0;   ///< forwarded from the upstream to the client
  /// Read from the client and from the upstream, before faults dropped or
  /// held any (a stream proxy's; a datagram proxy counts what it forwards).
  std::uint64_t received_upstream = 0, received_downstream = 0;
  std::chrono::steady_clock::time_point accepted;
};

/// A running proxy.
///
///   up --down()--> down --up()--> up        (close() from either: closed)
///
/// Down, it listens nowhere (a client's connect is refused) and every
/// connection it relayed was reset (UDP: forgotten); up again, it listens
/// where it did. Faults change at once for every connection, including
/// those running. Every call is made on the loop's thread.
class Proxy {
 public:
  virtual ~Proxy() = default;
  /// Where it listens (empty while down or closed).
  virtual std::vector<SocketAddress> sockets() const = 0;
  /// Add a fault or replace the one of its name; throws
  /// std::invalid_argument for an invalid one or a kind the proxy does not
  /// carry out (loss, duplicate and reorder are for datagrams; reset,
  /// slicing, timeout and the like for streams).
  virtual void set_fault(Fault fault) = 0;
  /// Remove a fault; false if none had that name.
  virtual bool remove_fault(const std::string& name) = 0;
  virtual const FaultList& faults() const = 0;
  /// Stop listening and reset every connection.
  virtual void down() = 0;
  /// Listen again where it did; `done(error)` once it does (posted).
  virtual void up(std::function<void(std::exception_ptr)> done) = 0;
  virtual bool is_up() const = 0;
  /// Stop listening and close every connection (flushing what each holds).
  virtual void close() = 0;
  /// Closed: by close(), or (a remote proxy) because its session ended;
  /// its connections may still be flushing (see connections()).
  virtual bool is_closed() const = 0;
  /// The connections open now.
  virtual std::vector<ProxyConnectionInfo> connections() const = 0;
  /// Complete once closed and every connection is gone (a remote proxy:
  /// once its session ended, for whatever reason; an unasked end goes to
  /// the loop's exception handler). Signature: void().
  template <class Token>
  auto wait_closed(Token&& token) {
    return asio::async_initiate<Token, void()>(
        [this](auto handler) { wait_closed_impl(asio::any_completion_handler<void()>(std::move(handler))); }, token);
  }

 protected:
  virtual void wait_closed_impl(asio::any_completion_handler<void()> handler) = 0;
};

/// What create_proxy makes: the same for a proxy here and on a service's host.
struct ProxyOptions {
  /// UDP: listen and upstream are UDP host and port (a DatagramProxy);
  /// else a stream proxy (TCP, TLS or Unix, each end its own).
  bool datagram = false;
  ProxyEndpoint listen;
  ProxyEndpoint upstream;
  /// Faults in force from the start (kinds for the other transport are refused).
  std::vector<Fault> faults;
  /// Bytes one direction may hold back before the proxy stops reading its
  /// sender (streams), or queue per client (datagrams).
  std::size_t buffer = 1 << 20;
  /// Seed of the random draws (jitter, loss, slice sizes).
  std::uint64_t seed = std::random_device{}();
  /// UDP: a client is forgotten after this long without a datagram.
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(60)};
  /// A name others may find it by: a service's ControlProxy and `conduit
  /// faults NAME`. Only a proxy on a service's host can have one (a local
  /// proxy is refused with std::invalid_argument).
  std::string name;
  /// Called as each connection is accepted (UDP: each new client), and
  /// once as each ends (null: closed cleanly; else why).
  std::function<void(const ProxyConnectionInfo&)> on_accepted;
  std::function<void(const ProxyConnectionInfo&, std::exception_ptr)> on_closed;
  /// Another caller changed the proxy (a remote proxy's ControlProxy):
  /// who, and with which command ("set_fault", "remove_fault",
  /// "proxy_down", "proxy_up"); faults() and is_up() already say what it is
  /// now. Never called for a proxy of this process.
  std::function<void(const std::string& by, const std::string& command)> on_changed;
};

/// Make the proxy `options` describe on `loop` (a StreamProxy or a
/// DatagramProxy), then `done(error, proxy)`, posted. Must be called on the
/// loop's thread.
void create_proxy(EventLoop& loop, ProxyOptions options,
                  std::function<void(std::exception_ptr, std::shared_ptr<Proxy>)> done);

}  // namespace conduit
