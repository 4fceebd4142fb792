// What the core's transports need of the loop and of a server, kept out of
// the public headers: the loop's registry of open transports, its shared
// read buffer, and a server's count of its connections.
#pragma once

#include "conduit/detail/loop_resource.hpp"
#include "conduit/event_loop.hpp"
#include "conduit/server.hpp"
#include "next_turn.hpp"

#include <cstddef>
#include <span>

namespace conduit::detail {

/// The loop's internals, for transports.
class LoopInternals {
 public:
  /// Register an open transport, so that ~EventLoop can release it.
  static void track(EventLoop& loop, LoopResource* resource) { loop.resources_.insert(resource); }
  static void untrack(EventLoop& loop, LoopResource* resource) { loop.resources_.erase(resource); }

  /// The loop-owned buffer every Protocol read goes through (EventLoop::
  /// read_size bytes): a connection holds no receive buffer while it waits.
  static std::span<std::byte> read_buffer(EventLoop& loop) { return {loop.read_buffer_.get(), EventLoop::read_size}; }

  /// What runs on the loop's next turn, in one batch.
  static NextTurn& next_turn(EventLoop& loop) { return *loop.next_turn_; }
};

/// A server's connections, for its transports.
class ServerConnections {
 public:
  /// A connection of `server` started / ended.
  static void attach(Server& server, Transport* transport) { server.connections_.insert(transport); }
  static void detach(Server& server, Transport* transport) { server.detach(transport); }
};

}  // namespace conduit::detail
