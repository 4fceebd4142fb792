// Subprocess sessions (open_subprocess): a child's callbacks as events,
// commands onto it and its stdin.
#pragma once

#include "session_link.hpp"

#include <memory>

namespace conduit::service {

/// Start the child `open` describes (validated and allowed already).
void open_subprocess(const std::shared_ptr<Link>& link, const v1::OpenSubprocess& open);

}  // namespace conduit::service
