// A UDP proxy with fault injection (netem's impairments, per direction):
// every client address gets its own upstream socket, so that the upstream
// sees one peer per client and its replies find their way back.
#pragma once

#include "conduit/event_loop.hpp"
#include "conduit/faults.hpp"
#include "conduit/proxy.hpp"

#include <boost/asio/ip/udp.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace conduit {

/// What a datagram proxy is told to do.
struct DatagramProxyOptions {
  std::string listen_host;  ///< "" for every interface
  std::uint16_t listen_port = 0;
  std::string upstream_host;
  std::uint16_t upstream_port = 0;
  /// Faults in force from the start (stream-only kinds are refused).
  std::vector<Fault> faults;
  /// A client with no datagram either way for this long is forgotten (its
  /// upstream socket closed); its next datagram starts afresh.
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(60)};
  /// Clients at once; datagrams from more are dropped.
  std::size_t max_clients = 1024;
  /// Bytes each client's direction may hold back (delayed datagrams):
  /// past it datagrams are dropped, as a full router queue drops them.
  std::size_t buffer = 1 << 20;
  std::uint64_t seed = std::random_device{}();
  /// A client's first datagram, and its end (idle, proxy down or closed).
  /// ProxyConnectionInfo's bytes count datagram payloads forwarded.
  std::function<void(const ProxyConnectionInfo&)> on_accepted;
  std::function<void(const ProxyConnectionInfo&, std::exception_ptr)> on_closed;
  /// Asked before a new client gets its upstream socket (null: every one
  /// does); false drops the datagram, as max_clients does. For limits of
  /// the caller's own (a service's descriptor budget).
  std::function<bool(const SocketAddress& client)> admit;
  AddressCheck check_listen_address;
  AddressCheck check_upstream_address;
};

namespace detail {
class DatagramFlow;
class DatagramListener;
}  // namespace detail

/// A running datagram proxy; the same life as a StreamProxy's (up, down,
/// closed), and faults that change at once for every client.
class DatagramProxy final : public Proxy, public std::enable_shared_from_this<DatagramProxy> {
 public:
  /// Bind as `options` say, then `done(error, proxy)`, posted.
  static void create(EventLoop& loop, DatagramProxyOptions options,
                     std::function<void(std::exception_ptr, std::shared_ptr<DatagramProxy>)> done);

  DatagramProxy(const DatagramProxy&) = delete;
  DatagramProxy& operator=(const DatagramProxy&) = delete;
  ~DatagramProxy() override;

  /// Where it listens (empty while down or closed).
  std::vector<SocketAddress> sockets() const override;
  /// Add or replace a fault; throws std::invalid_argument for an invalid
  /// one or a stream-only kind.
  void set_fault(Fault fault) override;
  bool remove_fault(const std::string& name) override;
  const FaultList& faults() const override { return faults_; }

  /// Stop listening and forget every client.
  void down() override;
  /// Listen again where it did.
  void up(std::function<void(std::exception_ptr)> done) override;
  bool is_up() const override { return state_ == State::up; }
  void close() override;
  bool is_closed() const override { return state_ == State::closed; }

  /// The clients known now.
  std::vector<ProxyConnectionInfo> connections() const override;

 protected:
  void wait_closed_impl(asio::any_completion_handler<void()> handler) override;

 private:
  void wake_closed_waiters();
  friend class detail::DatagramFlow;
  friend class detail::DatagramListener;
  enum class State { starting, up, down, closed };

  DatagramProxy(EventLoop& loop, DatagramProxyOptions options);
  void listen(std::function<void(std::exception_ptr)> done);
  void from_client(std::span<const std::byte> data, const SocketAddress& client);
  void to_client(std::span<const std::byte> data, const SocketAddress& client);
  void ended(const SocketAddress& client);
  void forget_all();

  EventLoop& loop_;
  DatagramProxyOptions options_;
  FaultList faults_;
  State state_ = State::starting;
  std::shared_ptr<DatagramTransport> listener_;
  std::shared_ptr<detail::DatagramListener> listener_protocol_;
  std::uint16_t bound_port_ = 0;
  std::uint64_t next_id_ = 1;
  std::map<boost::asio::ip::udp::endpoint, std::shared_ptr<detail::DatagramFlow>> flows_;
  detail::Waiters closed_waiters_;
};

}  // namespace conduit
