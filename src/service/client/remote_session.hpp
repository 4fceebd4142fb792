// What the client ends of sessions share (the *_session.cpp files beside
// it): how a call's end reads as an error, write-pause bookkeeping and reported addresses. Their calls into
// the protocol go through the core's ProtocolGuard, as a local transport's.
#pragma once

#include "codec.hpp"
#include "session_stream.hpp"

#include <conduit/detail/protocol_guard.hpp>
#include <conduit/event_loop.hpp>
#include <conduit/protocols.hpp>
#include <conduit/transports.hpp>

#include <any>
#include <exception>
#include <memory>
#include <optional>
#include <string_view>

namespace conduit::service {

/// The call failed before the session opened: the service is not there,
/// or it refused the session.
std::exception_ptr status_error(const grpc::Status& status);

/// The call ended while the session was open, without its last event.
std::exception_ptr broken_error(const grpc::Status& status);

/// How a remote session ended, for the callbacks run at the stream's end:
/// `done` before the session opened, else connection_lost.
struct Ending {
  bool lost = false;              // the connection_lost event came
  std::exception_ptr lost_error;  // its error, or open_failed's
  std::exception_ptr for_status(const grpc::Status& status) const {
    if (lost_error || lost) return lost_error;
    return status.ok() ? std::make_exception_ptr(std::runtime_error("the session ended before it opened"))
                       : status_error(status);
  }
};

/// A command, as `fill` sets it.
template <class Fill>
v1::Command make_command(Fill fill) {
  v1::Command c;
  fill(c);
  return c;
}

/// A remote transport's writing is paused while either our queue to the
/// service (local) or the transport's own buffer on the service's host
/// (remote) is over its high watermark; the protocol hears of each change
/// of the two together once (null: tell no one).
class WritingPauses {
 public:
  /// Set the local side's state; calls `protocol` on a change.
  void set_local(bool paused, detail::ProtocolGuard* protocol) { set(paused, remote_, protocol); }
  void set_remote(bool paused, detail::ProtocolGuard* protocol) { set(local_, paused, protocol); }

 private:
  void set(bool local, bool remote, detail::ProtocolGuard* protocol) {
    const bool was = local_ || remote_;
    local_ = local;
    remote_ = remote;
    const bool now = local_ || remote_;
    if (was == now || !protocol || !*protocol) return;
    if (now)
      protocol->pause_writing();
    else
      protocol->resume_writing();
  }

  bool local_ = false, remote_ = false;
};

/// peername and sockname as connection_made (or connection_accepted)
/// reported them, for get_extra_info.
struct ReportedAddresses {
  std::optional<SocketAddress> peername, sockname;

  void set(const v1::ConnectionMade& made) {
    peername = parse_stream_address(made.peername());
    sockname = parse_stream_address(made.sockname());
  }
  std::any lookup(std::string_view name) const {
    if (name == "peername" && peername) return *peername;
    if (name == "sockname" && sockname) return *sockname;
    return {};
  }
};

}  // namespace conduit::service
