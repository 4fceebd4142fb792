// A listening server (asyncio's base_events.Server): accepts stream
// connections on one or more sockets and gives each a transport and a fresh
// protocol from its factory.
#pragma once

#include "conduit/event_loop.hpp"
#include "conduit/socket_address.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>
#include <set>
#include <string>
#include <variant>
#include <vector>

namespace conduit {

namespace detail {
class ServerConnections;  // loop_internals.hpp (the core's own)
/// A listening socket of a server.
using ServerListener = std::variant<asio::ip::tcp::acceptor, asio::local::stream_protocol::acceptor>;
}  // namespace detail

/// What every server is, whoever listens (asyncio's AbstractServer): a
/// Server of this process, or a server session on a service's host
/// (conduit/service/remote.hpp). Opener::create_server gives one.
class AbstractServer {
 public:
  virtual ~AbstractServer() = default;
  /// True while listening.
  virtual bool is_serving() const = 0;
  /// The addresses the server listens on; empty once closed.
  virtual std::vector<SocketAddress> sockets() const = 0;
  /// Stop listening; a second call does nothing. Connections stay open.
  virtual void close() = 0;
  /// close() every connection of this server (flushing each).
  virtual void close_clients() = 0;
  /// abort() every connection of this server.
  virtual void abort_clients() = 0;
  /// Number of open connections.
  virtual std::size_t active_connections() const = 0;
  /// Complete once closed and every connection is gone (a remote server:
  /// also when its session ends otherwise, the why then going to the
  /// loop's exception handler). Signature: void().
  template <class Token>
  auto wait_closed(Token&& token) {
    return asio::async_initiate<Token, void()>(
        [this](auto handler) { wait_closed_impl(asio::any_completion_handler<void()>(std::move(handler))); }, token);
  }

 protected:
  virtual void wait_closed_impl(asio::any_completion_handler<void()> handler) = 0;
};

/// Made by EventLoop::create_server / create_unix_server.
///
///   bound --start_serving()--> serving --close()--> closed
///     \____________________close()_________________/^
///
/// Closing stops listening only; open connections carry on until they end,
/// or close_clients()/abort_clients() end them. wait_closed() completes once
/// the server is closed and its last connection is gone.
class Server final : public AbstractServer, public std::enable_shared_from_this<Server> {
 public:
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server() override;

  EventLoop& get_loop() { return loop_; }

  bool is_serving() const override { return serving_; }
  std::vector<SocketAddress> sockets() const override;
  /// Start listening; does nothing when serving or closed.
  void start_serving();
  void close() override;
  void close_clients() override;
  void abort_clients() override;
  std::size_t active_connections() const override { return connections_.size(); }
  /// Serve until cancelled (per-operation cancellation, e.g. with
  /// asio::bind_cancellation_slot or awaitable operators) or close()d; then
  /// close and wait for the connections, and complete with
  /// std::system_error(operation_aborted). Fails at once if the server is
  /// closed or another serve_forever is running. Signature:
  /// void(std::exception_ptr).
  template <class Token>
  auto serve_forever(Token&& token) {
    return asio::async_initiate<Token, void(std::exception_ptr)>(
        [this](auto handler) {
          serve_forever_impl(asio::any_completion_handler<void(std::exception_ptr)>(std::move(handler)));
        },
        token);
  }

 private:
  friend class EventLoop;                  // makes servers
  friend class detail::ServerConnections;  // for its transports

  using Listener = detail::ServerListener;

  /// With `tls`, every TCP connection is a TLS one, handed to a protocol
  /// once its handshake succeeded.
  Server(EventLoop& loop, ProtocolFactory factory, std::vector<Listener> listeners, int backlog,
         std::string unix_path_to_remove, std::optional<TlsOptions> tls = std::nullopt);

  /// A connection of this server ended.
  void detach(Transport* transport);
  void accept_next(std::size_t index);
  template <class Socket>
  void on_accepted(std::size_t index, const boost::system::error_code& ec, Socket socket);
  std::shared_ptr<BaseProtocol> make_protocol();
  template <class Transport>
  void start_connection(const std::shared_ptr<Transport>& transport, std::shared_ptr<BaseProtocol> protocol);
  void start_tls_connection(asio::ip::tcp::socket socket);
  void wait_closed_impl(asio::any_completion_handler<void()> handler) override;
  void serve_forever_impl(asio::any_completion_handler<void(std::exception_ptr)> handler);
  void wake_waiters_if_done();

  EventLoop& loop_;
  ProtocolFactory factory_;
  std::optional<TlsOptions> tls_;
  std::vector<Listener> listeners_;
  int backlog_;
  std::string unix_path_to_remove_;
  bool serving_ = false;
  bool closed_ = false;
  std::set<Transport*> connections_;
  detail::Waiters closed_waiters_;
  std::optional<asio::any_completion_handler<void(std::exception_ptr)>> serve_forever_;
  asio::steady_timer accept_backoff_;
};

}  // namespace conduit
