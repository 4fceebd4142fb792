// The client end of one Session() stream, for the transports that run a
// protocol through the service (remote.hpp), on gRPC's callback
// API: no thread of its own. gRPC's reactions (on its threads) start the
// next write and post each event to the loop; the loop starts the next read
// once it has caught up. Sessions to one service address share one channel.
#pragma once

#include "conduit/v1/conduit.grpc.pb.h"

#include <conduit/detail/loop_resource.hpp>
#include <conduit/event_loop.hpp>
#include <conduit/service/remote.hpp>

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace conduit::service {

/// What a stream reports, always on the loop's thread.
struct SessionCallbacks {
  std::function<void(const v1::Event&)> event;            ///< each event, in order
  std::function<void(std::uint64_t connection_id)> sent;  ///< a queued command for it went out
  std::function<void(const grpc::Status&)> finished;      ///< last: the call ended
};

/// A channel to the service as `remote` says, shared by every session to
/// the same address with the same credentials while any of them lives.
std::shared_ptr<grpc::Channel> shared_channel(const RemoteOptions& remote);

/// One Session() call.
///
///   open --read not ok / cancel--> reads over --no write in flight--> holds released --> OnDone --> finished (posted)
///
/// Reads: one at a time; the next starts at once while the events posted to
/// the loop and not yet delivered stay under a bound, else from the loop
/// once it catches up (past the bound, HTTP/2 flow control holds the
/// service back, which pauses the remote transport). Writes: one at a time
/// from the queue, the next started by the previous one's completion (where
/// the service's backpressure lands). A loop destroyed while the call runs
/// (a tool returning with a session still open) cancels it and waits,
/// bounded, for its end: nothing is posted into a loop that is gone.
class SessionStream final : public std::enable_shared_from_this<SessionStream>,
                            public detail::LoopResource,
                            private grpc::ClientBidiReactor<v1::ClientMessage, v1::Event> {
 public:
  /// Start a Session() call whose first message is `open`.
  static std::shared_ptr<SessionStream> start(EventLoop& loop, const RemoteOptions& remote, v1::ClientMessage open,
                                              SessionCallbacks callbacks);
  SessionStream(EventLoop& loop, SessionCallbacks callbacks) : loop_(loop), callbacks_(std::move(callbacks)) {}

  /// Queue a command (any thread); dropped after writes_done().
  void command(v1::Command command);
  /// Queue `abort` ahead of everything queued, dropping the queued commands
  /// for its connection: an abort acts at once (SPEC RS3).
  void abort(v1::Command abort);
  /// Half-close the stream once the queue is sent.
  void writes_done();
  /// Bytes of commands for `connection_id` queued, not yet handed to gRPC.
  std::size_t queued_bytes(std::uint64_t connection_id = 0) const;

 private:
  // ---- gRPC's reactions (its threads) ----
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  /// What to start after the mutex is released (gRPC may run a reaction
  /// inline, from inside a Start call).
  enum class Next { nothing, write, writes_done };
  void enqueue(v1::ClientMessage message);
  /// Mutex held: the write side's next step, and the write hold's release
  /// once no write can follow.
  Next next_write_locked();
  void start(Next next);
  /// Mutex held: whether to release each hold now (each once).
  bool release_read_hold_locked();
  bool release_write_hold_locked();
  void release(bool read_hold, bool write_hold);
  /// Post `f` to the loop unless the loop is gone (any thread).
  template <class F>
  void to_loop(F&& f);
  void deliver(v1::Event event, std::size_t size);  // loop thread
  void on_finished(const grpc::Status& status);     // loop thread
  void on_loop_destroyed() override;

  EventLoop& loop_;
  SessionCallbacks callbacks_;  // loop thread
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Conduit::Stub> stub_;
  grpc::ClientContext context_;
  v1::Event incoming_;           // the read in flight's message
  v1::ClientMessage in_flight_;  // the write in flight's message
  /// Events read and posted to the loop, not yet delivered there.
  static constexpr std::size_t max_undelivered_bytes = 1 << 20;

  mutable std::mutex mutex_;
  std::condition_variable done_changed_;
  std::shared_ptr<SessionStream> self_;  // ours until OnDone
  std::deque<v1::ClientMessage> outgoing_;
  std::map<std::uint64_t, std::size_t> queued_bytes_;  // by connection id
  std::size_t undelivered_bytes_ = 0;
  bool read_waiting_ = false;                  // the next read waits for the loop to catch up
  bool writing_ = false;                       // a write or the half-close is in flight
  bool writes_done_ = false;                   // asked: half-close once the queue is sent
  bool writes_over_ = false;                   // no write will start any more
  bool read_hold_ = true, write_hold_ = true;  // not yet released
  bool loop_gone_ = false;
  bool done_ = false;
  bool tracked_ = false;  // by the loop (loop thread)
};

}  // namespace conduit::service
