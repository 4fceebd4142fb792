// JSON text for the line-oriented outputs (the service's --log-format json,
// the tools' --json): string literals, escaped as RFC 8259 asks.
#pragma once

#include <string>
#include <string_view>

namespace conduit::service {

/// A JSON string literal for `text`, quotes included. Bytes that are not
/// valid UTF-8 are written as U+FFFD, so every line parses; control
/// characters (C0, DEL and C1) as \u escapes.
std::string json_string(std::string_view text);

/// `text` for a plain text line: C0 and C1 control characters, DEL, the
/// backslash and bytes that are not UTF-8 written as escapes (\n, \x1b,
/// \\, \u0085), so that a caller's value (a host name, a path) can neither
/// start a line of its own nor drive a terminal. Printable text is kept.
std::string printable_text(std::string_view text);

/// Whether printable_text() would change `text`.
bool needs_escaping(std::string_view text);

}  // namespace conduit::service
