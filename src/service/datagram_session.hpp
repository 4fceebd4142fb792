// Datagram sessions (open_datagram_endpoint): a UDP endpoint's callbacks as
// events; sendto and close onto it.
#pragma once

#include "session_link.hpp"

#include <memory>

namespace conduit::service {

/// Open the endpoint `open` describes (binding is listening, sending is
/// connecting, as far as the policy goes).
void open_datagram_endpoint(const std::shared_ptr<Link>& link, const v1::OpenDatagramEndpoint& open);

}  // namespace conduit::service
