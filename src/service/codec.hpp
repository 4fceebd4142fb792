// The wire format's two directions in one place: what the service writes
// into events and what the clients read back out of them (errors,
// addresses, callback and command names), so the two ends cannot drift.
#pragma once

#include "conduit/v1/conduit.pb.h"

#include <conduit/faults.hpp>
#include <conduit/socket_address.hpp>

#include <exception>
#include <optional>
#include <string>

namespace conduit::service {

/// An exception as an Error (its errno where it is an OS error).
v1::Error error_of(std::exception_ptr exc);

/// An Error back as the exception it was: a std::system_error with the
/// errno's code when it has one, else a std::runtime_error.
std::exception_ptr exception_of(const v1::Error& error);

/// "127.0.0.1:53" or "[::1]:53" (as SocketAddress::to_string writes them)
/// back to a SocketAddress; nullopt if it is neither.
std::optional<SocketAddress> parse_address(const std::string& text);

/// A stream address as the service wrote it: IP and port, else a Unix path
/// (nullopt when empty: an unnamed socket).
std::optional<SocketAddress> parse_stream_address(const std::string& text);

/// A command's name as the proto spells it: "write", "set_write_buffer_limits".
std::string command_name(const v1::Command& command);

/// A fault as the wire carries it, to the core's Fault; throws
/// std::invalid_argument naming what is wrong (no kind, a bad value).
Fault fault_of(const v1::FaultSpec& spec);
/// And the other way, for the clients.
v1::FaultSpec spec_of(const Fault& fault);

}  // namespace conduit::service
