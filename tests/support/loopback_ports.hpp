// Loopback ports for tests that start peers on a port they are given
// (socat, python3 -m http.server, openssl s_server).
#pragma once

#include <chrono>
#include <string>

namespace conduit::testing {

/// A port that was free on 127.0.0.1 a moment ago (bound, then released).
std::string free_port();

/// Waits, at most `bound`, until something accepts on 127.0.0.1:`port`:
/// the connection it makes to find out is dropped at once (the peers here
/// take it as an empty request).
bool wait_until_listening(const std::string& port, std::chrono::milliseconds bound);

}  // namespace conduit::testing
