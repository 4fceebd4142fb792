// Proxy sessions (open_proxy): a stream or datagram proxy of the core,
// listening on the service's host, its connections and faults reported and
// driven over the session.
#pragma once

#include "session_link.hpp"

#include <grpcpp/support/status.h>

#include <memory>

namespace conduit::service {

/// INVALID_ARGUMENT naming the field, or OK (addresses and Unix paths are
/// the policy's, checked when opening).
grpc::Status validate_open_proxy(const v1::OpenProxy& open);

/// Open a proxy session: listen and relay as `open` says, the policy
/// checking every address to bind (--allow-listen) and to reach upstream
/// (--allow-connect), and Unix paths (--allow-unix).
void open_proxy(const std::shared_ptr<Link>& link, const v1::OpenProxy& open);

}  // namespace conduit::service
