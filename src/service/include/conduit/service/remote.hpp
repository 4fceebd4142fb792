// The client side of sessions: a conduit::Transport (or SubprocessTransport)
// on a local EventLoop whose bytes move on the service's host. Any protocol
// written for create_connection or subprocess_exec runs unchanged over it
// (the CLI's --via).
#pragma once

#include "conduit/v1/conduit.pb.h"

#include <conduit/event_loop.hpp>
#include <conduit/faults.hpp>
#include <conduit/proxy.hpp>

#include <grpcpp/channel.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace conduit::service {

/// The most data one command carries: a write of more is split, so that
/// every message stays well under the service's --max-message-size (256 KiB
/// at least) whatever the caller writes.
constexpr std::size_t max_command_data = 64 * 1024;

/// The error a remote opener reports when the service itself could not be
/// reached (nothing listening, a name that does not resolve, a deadline):
/// not a refusal by the target, which the tools tell apart.
struct ServiceUnreachable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Where the service is and how to talk to it.
struct RemoteOptions {
  std::string address;  ///< HOST:PORT of `conduit serve`
  std::string token;    ///< bearer token, if the service wants one
  /// TLS to the service (when ca_pem is set): trust this CA, and present
  /// this certificate and key if the service asks (mTLS). PEM text.
  std::string ca_pem, cert_pem, key_pem;
  /// A channel to use instead of one to `address` (tests: an in-process
  /// service's InProcessChannel).
  std::shared_ptr<grpc::Channel> channel;
};

/// A channel to the service as `remote` says (TLS when ca_pem is set).
std::shared_ptr<grpc::Channel> make_channel(const RemoteOptions& remote);


/// Open a connection session on the service and run `protocol` over it on
/// `loop`: connection_made, data_received, eof_received, pause/resume_writing
/// and connection_lost come from the remote transport's events, in order.
/// `done(error)` runs on the loop once the session is open (error null;
/// connection_made follows) or failed to open (the service's status, or
/// the remote connect error). Must be called on the loop's thread.
/// `protocol` is a Protocol or a BufferedProtocol.
void create_remote_connection(EventLoop& loop, const RemoteOptions& remote, v1::OpenConnection open,
                              std::shared_ptr<BaseProtocol> protocol, std::function<void(std::exception_ptr)> done);

/// A server listening on the service's host (a server session), as
/// create_remote_server gives it.
class RemoteServer {
 public:
  virtual ~RemoteServer() = default;
  /// Where the service listens, as it prints addresses: "127.0.0.1:8080",
  /// "[::1]:8080", or a Unix path.
  virtual const std::vector<std::string>& sockets() const = 0;
  /// Connections open now.
  virtual std::size_t active_connections() const = 0;
  /// Stop listening and close every connection, flushing each; the
  /// connections' connection_lost follow, then the session ends.
  virtual void close() = 0;
  /// Stop listening and drop every connection.
  virtual void abort() = 0;
  /// True once the session has ended (after close/abort, or if it broke).
  virtual bool is_closed() const = 0;
  /// Call `handler` once the session ends: with null after close()/abort(),
  /// else with why (the service went away, or closed the session).
  virtual void on_closed(std::function<void(std::exception_ptr)> handler) = 0;
};

/// Open a server session: the service listens as `open` says, and each
/// connection it accepts runs a protocol from `factory` (a Protocol or a
/// BufferedProtocol) on `loop`, its transport a proxy for the connection
/// on the service's host. `done(error, server)` runs on the loop once the
/// server listens, or with the error if it cannot. Must be called on the
/// loop's thread.
void create_remote_server(EventLoop& loop, const RemoteOptions& remote, v1::OpenServer open, ProtocolFactory factory,
                          std::function<void(std::exception_ptr, std::shared_ptr<RemoteServer>)> done);

/// The same for a child process on the service's host: pipe_data_received,
/// pipe_connection_lost, process_exited and connection_lost from its events;
/// get_pipe_transport(0) writes to its stdin; send_signal/terminate/kill and
/// close() act remotely. (Stdout and stderr have no local pipe transports.)
void create_remote_subprocess(EventLoop& loop, const RemoteOptions& remote, v1::OpenSubprocess open,
                              std::shared_ptr<SubprocessProtocol> protocol, std::function<void(std::exception_ptr)> done);

/// And for a UDP endpoint: datagram_received (with the sender's address),
/// error_received and connection_lost from its events; sendto and close
/// act remotely.
void create_remote_datagram_endpoint(EventLoop& loop, const RemoteOptions& remote, v1::OpenDatagramEndpoint open,
                                     std::shared_ptr<DatagramProtocol> protocol,
                                     std::function<void(std::exception_ptr)> done);

/// A proxy running on the service's host (a proxy session), as
/// create_remote_proxy gives it. Commands act in order; a refused one comes
/// back through RemoteProxyCallbacks::command_failed.
class RemoteProxy {
 public:
  virtual ~RemoteProxy() = default;
  /// Where the service listens for it ("127.0.0.1:8080", a path).
  virtual const std::vector<std::string>& sockets() const = 0;
  /// Add a fault, or change the one of its name, for every connection.
  virtual void set_fault(const Fault& fault) = 0;
  virtual void remove_fault(const std::string& name) = 0;
  /// Stop listening and reset every connection / listen again
  /// (RemoteProxyCallbacks::state answers each).
  virtual void down() = 0;
  virtual void up() = 0;
  /// Close it (connections closed, flushed); the session then ends.
  virtual void close() = 0;
  virtual bool is_closed() const = 0;
  /// As RemoteServer::on_closed.
  virtual void on_closed(std::function<void(std::exception_ptr)> handler) = 0;
};

/// What a remote proxy reports, on the loop. Addresses are the service
/// host's view; bytes are forwarded totals so far.
struct RemoteProxyCallbacks {
  std::function<void(const ProxyConnectionInfo&)> accepted;
  std::function<void(const ProxyConnectionInfo&)> stats;
  std::function<void(const ProxyConnectionInfo&, std::exception_ptr)> closed;
  std::function<void(bool up, std::exception_ptr error)> state;
  std::function<void(const std::string& command, const std::string& why)> command_failed;
  /// Another caller changed the proxy (ControlProxy): who, with which
  /// command, and the proxy's state now.
  std::function<void(const std::string& by, const std::string& command, const v1::ProxyState& state)> changed;
};

/// A fault as the wire carries it (for OpenProxy.faults), and back (throws
/// std::invalid_argument for a spec that is no fault).
v1::FaultSpec spec_of(const Fault& fault);
Fault fault_of(const v1::FaultSpec& spec);

/// Open a proxy session; `done(error, proxy)` once it listens, or with why
/// it cannot.
void create_remote_proxy(EventLoop& loop, const RemoteOptions& remote, v1::OpenProxy open,
                         RemoteProxyCallbacks callbacks,
                         std::function<void(std::exception_ptr, std::shared_ptr<RemoteProxy>)> done);

}  // namespace conduit::service
