// A TCP, Unix or TLS proxy with fault injection: a server whose every
// accepted connection opens one connection upstream, the bytes relayed both
// ways through the faults of conduit/faults.hpp. Not in asyncio: it is two
// protocols joined with asyncio's flow control, as the textbook relay is.
// It is a Proxy (proxy.hpp), as the datagram and remote proxies are.
#pragma once

#include "conduit/event_loop.hpp"
#include "conduit/faults.hpp"
#include "conduit/proxy.hpp"
#include "conduit/socket_address.hpp"
#include "conduit/tls.hpp"

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace conduit {

class Server;

/// What a stream proxy is told to do.
struct StreamProxyOptions {
  ProxyEndpoint listen;
  ProxyEndpoint upstream;
  /// Faults in force from the start (datagram-only kinds are refused).
  std::vector<Fault> faults;
  /// Bytes one direction may hold back (faults delaying them, or a slow
  /// receiver) before the proxy stops reading from its sender: the proxy's
  /// memory per connection is bounded by twice this, whatever the faults.
  std::size_t buffer = 1 << 20;
  /// Seed of the random draws (jitter, slice sizes): the same seed gives
  /// the same draws.
  std::uint64_t seed = std::random_device{}();
  /// Called as each connection is accepted, and once as each ends (null:
  /// closed cleanly; else why, e.g. the upstream refused, or a reset).
  std::function<void(const ProxyConnectionInfo&)> on_accepted;
  std::function<void(const ProxyConnectionInfo&, std::exception_ptr)> on_closed;
  /// Asked as each client connection is accepted, before anything is spent
  /// on it (null: every one is taken); false closes it at once, with no
  /// callback. For limits of the caller's own (a service's descriptor
  /// budget).
  std::function<bool()> admit;
  /// Vet the listening and the upstream addresses (see AddressCheck).
  AddressCheck check_listen_address;
  AddressCheck check_upstream_address;
};

namespace detail {
class ProxyConnection;
}

/// A running stream proxy.
///
///   up --down()--> down --up()--> up        (close() from either: closed)
///
/// Down, it listens nowhere (a client's connect is refused) and every
/// connection it relayed was reset; up again, it listens where it did.
/// Faults change at once for every connection, including those running.
class StreamProxy final : public Proxy, public std::enable_shared_from_this<StreamProxy> {
 public:
  /// Listen as `options` say, then `done(error, proxy)`, posted. Must be
  /// called on the loop's thread.
  static void create(EventLoop& loop, StreamProxyOptions options,
                     std::function<void(std::exception_ptr, std::shared_ptr<StreamProxy>)> done);

  StreamProxy(const StreamProxy&) = delete;
  StreamProxy& operator=(const StreamProxy&) = delete;
  ~StreamProxy() override;

  /// Where it listens (empty while down or closed).
  std::vector<SocketAddress> sockets() const override;
  /// Add a fault or replace the one of its name; throws
  /// std::invalid_argument for an invalid one or a datagram-only kind.
  void set_fault(Fault fault) override;
  /// Remove a fault; false if none had that name.
  bool remove_fault(const std::string& name) override;
  const FaultList& faults() const override { return faults_; }

  /// Stop listening and reset every connection.
  void down() override;
  /// Listen again where it did; `done(error)` once it does (posted).
  void up(std::function<void(std::exception_ptr)> done) override;
  bool is_up() const override { return state_ == State::up; }

  /// Stop listening and close every connection (flushing what each holds).
  void close() override;
  bool is_closed() const override { return state_ == State::closed; }

  /// The connections open now.
  std::vector<ProxyConnectionInfo> connections() const override;

 protected:
  void wait_closed_impl(asio::any_completion_handler<void()> handler) override;

 private:
  void wake_closed_waiters();
  friend class detail::ProxyConnection;
  enum class State { starting, up, down, closed };

  StreamProxy(EventLoop& loop, StreamProxyOptions options);
  void listen(std::function<void(std::exception_ptr)> done);
  void ended(std::uint64_t id);

  EventLoop& loop_;
  StreamProxyOptions options_;
  FaultList faults_;
  State state_ = State::starting;
  std::shared_ptr<Server> server_;
  std::uint16_t bound_port_ = 0;  // TCP: where up() listens again
  std::uint64_t next_id_ = 1;
  std::map<std::uint64_t, std::shared_ptr<detail::ProxyConnection>> connections_;
  detail::Waiters closed_waiters_;
};

}  // namespace conduit
