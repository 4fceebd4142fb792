// The service's own Unix socket (`conduit serve --listen unix:/PATH`),
// accepted here rather than by gRPC: gRPC names every caller on a Unix socket
// "unix:", so the log could not tell one local user from another. Each
// connection's SO_PEERCRED (pid, uid, gid) is read as it is accepted, then
// the connection is handed to gRPC, which names it "fd:N"; the service maps
// that name back to the credentials (ConduitService::peer_of).
//
// Plaintext only: gRPC takes a descriptor only for an insecure channel, so
// with --tls-cert `serve` leaves the Unix socket to gRPC (callers "unix:").
#pragma once

#include <conduit/service/service.hpp>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>
#include <string>

namespace conduit::service {

/// Whether a server listens on the Unix socket at `path` now (a connect
/// that succeeds, or finds the backlog full).
bool unix_socket_is_live(asio::io_context& context, const std::string& path);

class UnixListener : public std::enable_shared_from_this<UnixListener> {
 public:
  /// Bind `path` (a stale socket file there is replaced; a live one, or
  /// any other file, is refused with EADDRINUSE) and listen; throws
  /// std::system_error. Accepting starts with start().
  UnixListener(ConduitService& service, std::string path);
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;
  ~UnixListener();

  /// Accept on the service's loop and hand each connection to `server`.
  void start(grpc::Server& server);
  /// Stop accepting and remove the socket file; waits for the loop to do it,
  /// so not from the loop's own thread.
  void close();

 private:
  void accept_next();

  ConduitService& service_;
  std::string path_;
  asio::local::stream_protocol::acceptor acceptor_;
  asio::steady_timer backoff_;
  grpc::Server* server_ = nullptr;
};

}  // namespace conduit::service
