// The client side of a connection session: a conduit::Transport on a local
// EventLoop whose bytes move on the service's host. Any Protocol written
// for create_connection runs unchanged over it (the CLI's --via).
#pragma once

#include "conduit/v1/conduit.grpc.pb.h"

#include <conduit/event_loop.hpp>

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

namespace conduit::service {

/// Where the service is and how to talk to it.
struct RemoteOptions {
  std::string address;  ///< HOST:PORT of `conduit serve`
  std::string token;    ///< bearer token, if the service wants one
};

/// Open a connection session on the service and run `protocol` over it on
/// `loop`: connection_made, data_received, eof_received, pause/resume_writing
/// and connection_lost come from the remote transport's events, in order.
/// `done(error)` runs on the loop once the session is open (error null;
/// connection_made follows) or failed to open (the service's status, or
/// the remote connect error). Must be called on the loop's thread.
void create_remote_connection(EventLoop& loop, const RemoteOptions& remote, v1::OpenConnection open,
                              std::shared_ptr<Protocol> protocol, std::function<void(std::exception_ptr)> done);

}  // namespace conduit::service
