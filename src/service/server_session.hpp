// Server sessions (open_server): a listening server whose every accepted
// connection is a ConnectionSide tagged with a fresh id.
#pragma once

#include "session_link.hpp"

#include <memory>

namespace conduit::service {

/// Open a server session: listen as `open` says (the policy checks every
/// address to bind; never the service's own).
void open_server(const std::shared_ptr<Link>& link, const v1::OpenServer& open);

}  // namespace conduit::service
