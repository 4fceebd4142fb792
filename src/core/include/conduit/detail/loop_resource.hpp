// What a loop must release before it goes, shared by the core's transports
// and the service's remote ones (not installed: not for users).
#pragma once

namespace conduit {
class EventLoop;
}

namespace conduit::detail {

/// Implemented by what a loop must let go of, or stop, while it is being
/// destroyed: transports (their transport <-> protocol reference cycles),
/// and anything that posts to the loop from threads of its own, which must
/// have stopped before the loop's io_context goes.
class LoopResource {
 public:
  /// The loop is being destroyed (its io_context still exists): drop
  /// references, close descriptors, join threads, and call nothing back.
  virtual void on_loop_destroyed() = 0;

 protected:
  ~LoopResource() = default;
};

/// Register `resource` with `loop`, on the loop's thread; untrack it, on the
/// loop's thread too, once it ended by itself. ~EventLoop calls
/// on_loop_destroyed() on what is still registered, after untracking it.
void track(EventLoop& loop, LoopResource* resource);
void untrack(EventLoop& loop, LoopResource* resource);

}  // namespace conduit::detail
