// The client end of one Session() stream, for the transports that run a
// protocol through the service (remote_transport.hpp): a writer thread drains
// an outgoing queue (its blocking Write is where the service's backpressure
// lands), a reader thread posts each event to the loop.
#pragma once

#include "conduit/v1/conduit.grpc.pb.h"

#include <conduit/detail/loop_resource.hpp>
#include <conduit/event_loop.hpp>
#include <conduit/service/remote_transport.hpp>

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace conduit::service {

/// What a stream reports, always on the loop's thread.
struct SessionCallbacks {
  std::function<void(const v1::Event&)> event;        ///< each event, in order
  std::function<void(std::uint64_t connection_id)> sent;  ///< a queued command for it went out
  std::function<void(const grpc::Status&)> finished;  ///< last: the stream ended (threads gone)
};

/// Its threads end before its loop does: a loop destroyed while they run
/// (a tool returning with a session still open) joins them first, so that
/// nothing posts into a loop that is gone.
class SessionStream final : public std::enable_shared_from_this<SessionStream>, public detail::LoopResource {
 public:
  /// Start a Session() call whose first message is `open`.
  static std::shared_ptr<SessionStream> start(EventLoop& loop, const RemoteOptions& remote, v1::ClientMessage open,
                                              SessionCallbacks callbacks);
  SessionStream(EventLoop& loop, SessionCallbacks callbacks) : loop_(loop), callbacks_(std::move(callbacks)) {}
  ~SessionStream();

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
  void enqueue(v1::ClientMessage message);
  void write_loop();
  void read_loop();
  void on_finished(const grpc::Status& status);
  void on_loop_destroyed() override;
  /// Stop both threads and join them (not from one of them).
  void stop_threads();

  EventLoop& loop_;
  SessionCallbacks callbacks_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Conduit::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ClientMessage, v1::Event>> stream_;
  std::thread reader_, writer_;
  /// Events read and posted to the loop, not yet delivered there.
  static constexpr std::size_t max_undelivered_bytes = 1 << 20;
  mutable std::mutex mutex_;
  std::condition_variable wake_;         // the writer
  std::condition_variable wake_reader_;  // the reader, when the loop caught up
  std::size_t undelivered_bytes_ = 0;
  std::deque<v1::ClientMessage> outgoing_;
  std::map<std::uint64_t, std::size_t> queued_bytes_;  // by connection id
  bool writes_done_ = false;
  bool stopping_ = false;
  bool tracked_ = false;  // by the loop (loop thread)
};

}  // namespace conduit::service
