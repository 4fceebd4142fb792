// The kinds of session, one entry each, keyed by the open message's field:
// what the service does with an open (validate it, describe it for the
// audit log and ListSessions, open it) is looked up here, never switched
// on. A kind is its *_session.cpp (which defines its entry), its line in
// session_kind.cpp, its open message in the proto, and its client end in
// ../client/ of the same name.
#pragma once

#include "session_link.hpp"

#include <grpcpp/support/status.h>

#include <cstddef>
#include <memory>
#include <span>

namespace conduit::service {

struct SessionKind {
  /// The ClientMessage field that opens it.
  v1::ClientMessage::KindCase open_case;
  /// That field's name ("open_connection"), for messages to callers.
  const char* open_field;
  /// Its name in ListSessions and the audit log ("connection").
  const char* name;
  /// The descriptors it takes as it opens (its socket, two listeners for a
  /// dual-stack server, a child's three pipes and pidfd), checked against
  /// the service's budget before it does; what it takes later (accepted
  /// connections, a proxy's upstreams) is checked as it comes.
  std::size_t descriptors_to_open;
  /// INVALID_ARGUMENT naming the field, PERMISSION_DENIED by what the
  /// policy can tell from the message alone, or OK. Addresses are checked
  /// as the open resolves them.
  grpc::Status (*validate)(const v1::ClientMessage& open, const ServiceOptions& options);
  /// Fill the record's target (and name, argv) from a valid open message.
  void (*describe)(const v1::ClientMessage& open, SessionRecord& record);
  /// Open it on the loop (validated already); its side reports through
  /// the session_open.hpp functions how the open ended.
  void (*open)(const std::shared_ptr<Link>& link, const v1::ClientMessage& open);
  /// ControlProxy reaches it (through its LoopSide::control).
  bool controllable = false;
};

extern const SessionKind connection_session_kind;
extern const SessionKind server_session_kind;
extern const SessionKind datagram_session_kind;
extern const SessionKind subprocess_session_kind;
extern const SessionKind proxy_session_kind;

/// Every kind, in the proto's order.
std::span<const SessionKind* const> session_kinds();

/// The kind this message opens; null for a command or an empty message.
const SessionKind* session_kind_of(const v1::ClientMessage& message);

/// "open_connection, open_server, ... or open_proxy", for messages.
const std::string& open_field_list();

}  // namespace conduit::service
