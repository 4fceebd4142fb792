// Process-wide settings of the gRPC runtime that Conduit's service and its
// clients share.
#pragma once

namespace conduit::service {

/// Turn off Abseil's mutex deadlock detection, which Debian's Abseil (built
/// without NDEBUG) leaves on and which costs gRPC on every lock it takes.
/// Idempotent; the service and make_channel call it.
void quiet_grpc_mutex_checks();

}  // namespace conduit::service

#include <grpcpp/support/status.h>

#include <string_view>

namespace conduit::service {

class AuditLog;

/// A status code's name as gRPC documents it: "PERMISSION_DENIED".
std::string_view status_code_name(grpc::StatusCode code);

/// Where gRPC's own log lines go: its errors to `sink` as warnings, the rest
/// nowhere; null drops them all (start-up, where the caller reports a
/// failure in one line of its own). Process-wide.
void set_grpc_log_sink(AuditLog* sink);

}  // namespace conduit::service
