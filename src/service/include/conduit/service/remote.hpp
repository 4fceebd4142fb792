// The caller's end of sessions: an Opener (conduit/opener.hpp) whose
// transports, servers, children and proxies live on a service's host while
// their protocols run on a local EventLoop. The calls, options, completion
// signatures and results are a LocalOpener's, so any protocol and any code
// written against an Opener runs unchanged over it (the CLI's --via):
//
//   service::RemoteOpener remote(loop, {.address = "db-host:50051"});
//   remote.create_connection(factory, "127.0.0.1", 5432, {}, on_connected);
//
// What a service cannot be handed is refused with std::invalid_argument
// through the completion: a TLS context made other than from PEM text
// (tls::client_options / server_options), a child's stdio other than pipes,
// reuse_address on a datagram endpoint, a server not listening at once.
#pragma once

#include <conduit/event_loop.hpp>
#include <conduit/opener.hpp>

#include <grpcpp/channel.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace conduit::v1 {
class FaultSpec;
}

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

/// A fault as the wire carries it (ControlProxy's commands), and back
/// (throws std::invalid_argument for a spec that is no fault).
v1::FaultSpec spec_of(const Fault& fault);
Fault fault_of(const v1::FaultSpec& spec);

/// An Opener on the service at `remote`: each call opens a session there.
/// Must be used on the loop's thread; sessions outlive the opener.
class RemoteOpener final : public Opener {
 public:
  RemoteOpener(EventLoop& loop, RemoteOptions remote) : loop_(loop), remote_(std::move(remote)) {}
  EventLoop& loop() override { return loop_; }
  const RemoteOptions& options() const { return remote_; }

 protected:
  void open_connection(ProtocolFactory factory, std::string host, std::uint16_t port, ConnectOptions options,
                       detail::ConnectionHandler handler) override;
  void open_unix_connection(ProtocolFactory factory, std::string path, detail::ConnectionHandler handler) override;
  void open_server(ProtocolFactory factory, std::vector<std::string> hosts, std::uint16_t port, ServerOptions options,
                   detail::AbstractServerHandler handler) override;
  void open_unix_server(ProtocolFactory factory, std::string path, ServerOptions options,
                        detail::AbstractServerHandler handler) override;
  void open_datagram_endpoint(ProtocolFactory factory, DatagramOptions options,
                              detail::DatagramHandler handler) override;
  void open_subprocess(ProtocolFactory factory, std::vector<std::string> argv, SubprocessOptions options,
                       detail::SubprocessHandler handler) override;
  void open_proxy(ProxyOptions options, detail::ProxyHandler handler) override;

 private:
  EventLoop& loop_;
  RemoteOptions remote_;
};

}  // namespace conduit::service
