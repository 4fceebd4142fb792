// Opening a session, whatever its kind: validation of the open message,
// the policy's checks (addresses through the core's AddressCheck hooks, once
// the rules' host names are resolved), and how an open ends: refused
// (PERMISSION_DENIED), failed (open_failed), or opened (logged).
#pragma once

#include "session_link.hpp"

#include <conduit/event_loop.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace conduit::service {

/// INVALID_ARGUMENT naming the field, PERMISSION_DENIED by the policy
/// (programs and environment; addresses are checked when opening), or OK:
/// the session kind's own check (session_kind.hpp).
grpc::Status validate_open(const v1::ClientMessage& open, const ServiceOptions& options);

/// Open the session described by `open` on the loop (validated already).
/// A policy refusal that needs the loop (an address a name resolved to)
/// ends the call with PERMISSION_DENIED.
void open_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& open);

// ---- for the session kinds ----

/// The open failed (a refused connect, a program that is not there): the
/// open_failed event, an answer to each queued command, then the call ends.
void fail_open(const std::shared_ptr<Link>& link, std::exception_ptr error);

/// What an address check throws when the policy refuses an address.
class PolicyRefusal : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The policy said no: the call ends with PERMISSION_DENIED saying why
/// (nothing was opened; queued commands are dropped with the call).
void refuse_open(const std::shared_ptr<Link>& link, const std::string& why);
/// The same with another status (RESOURCE_EXHAUSTED: a limit of the service).
void refuse_open(const std::shared_ptr<Link>& link, const grpc::Status& status);

/// Something a running session asked for that the service refused (an
/// accepted connection over max_connections or the descriptor budget, a
/// proxy's upstream the policy forbids): logged as a refusal of the
/// session's caller, naming the session; the call goes on.
void log_session_refusal(Link& link, grpc::StatusCode code, const std::string& why);

/// The completion of an open that passed the policy (or was refused by an
/// address check inside it).
void finish_open(const std::shared_ptr<Link>& link, std::exception_ptr error);

/// The one check of every session kind that listens on a Unix path: the
/// policy's --allow-unix, then the path as the kernel resolves it (`/D//s`
/// and `/D/./s` are `/D/s`) is never the service's own socket, never a
/// live socket (EADDRINUSE, whoever listens there) and never a file that is
/// not a socket; only a stale socket file is replaced. Returns the
/// canonical path to bind; otherwise the open has been ended (refused or
/// failed, and logged) and the result is empty. `what` names the request.
std::optional<std::string> claim_unix_listen_path(const std::shared_ptr<Link>& link, const std::string& what,
                                                  const std::string& path);

/// Resolve the host names the policy's rules use, then `then(names)`, on
/// the loop. A name that does not resolve matches nothing.
void with_rule_names(EventLoop& loop, std::vector<std::string> names,
                     std::function<void(std::shared_ptr<const ResolvedNames>)> then);

enum class AddressUse { listen, connect };

/// An AddressCheck that throws PolicyRefusal where the policy refuses the
/// address for `use`; `what` names the request in the refusal.
AddressCheck policy_check(const Policy& policy, AddressUse use, std::string what,
                          std::shared_ptr<const ResolvedNames> names);

/// INVALID_ARGUMENT if a write-buffer pair of `message` (e.g.
/// "open_connection") is inconsistent, else OK.
grpc::Status validate_buffer_limits(const std::string& message, std::uint32_t high, std::uint32_t low);

/// "host:port", "[v6]:port".
std::string host_port(const std::string& host, std::uint32_t port);

}  // namespace conduit::service
