// JSON text for the line-oriented outputs (the service's --log-format json,
// the tools' --json): string literals, escaped as RFC 8259 asks.
#pragma once

#include <string>
#include <string_view>

namespace conduit::service {

/// A JSON string literal for `text`, quotes included. Bytes that are not
/// valid UTF-8 are written as U+FFFD, so every line parses.
std::string json_string(std::string_view text);

}  // namespace conduit::service
