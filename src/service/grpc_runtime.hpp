// Process-wide settings of the gRPC runtime that Conduit's service and its
// clients share.
#pragma once

namespace conduit::service {

/// Turn off Abseil's mutex deadlock detection, which Debian's Abseil (built
/// without NDEBUG) leaves on and which costs gRPC on every lock it takes.
/// Idempotent; the service and make_channel call it.
void quiet_grpc_mutex_checks();

}  // namespace conduit::service
