// One session's two halves and what joins them: a gRPC bidirectional
// stream (SessionReactor, on gRPC's threads) bound to one transport and its
// protocol (a LoopSide, on the EventLoop thread). They meet only in Link,
// which holds the session's one mutex and makes its posts to the loop: the
// reactor hands it commands, the loop side hands it events.
#pragma once

#include <conduit/service/service.hpp>

#include <deque>
#include <memory>
#include <mutex>
#include <optional>

namespace conduit::service {

class SessionReactor;
class LoopSide;

/// The two halves' meeting point, shared by both; `reactor` is null once
/// gRPC is done with the stream.
///
/// Outgoing events queue here, one StartWrite at a time. Backpressure:
///   events queued > high  -> the loop side pauses reading its transport
///   events queued <= low  -> it resumes
/// Commands are never held: the transport's pause_writing and
/// resume_writing go to the client as events.
class Link : public std::enable_shared_from_this<Link> {
 public:
  Link(ConduitService& service, std::shared_ptr<SessionRecord> record)
      : service_(service), record_(std::move(record)) {}

  // ---- from the loop side (loop thread) ----
  /// Queue an event for the client (seq and time are filled in here);
  /// `urgent` ones (flow control) go out before the queued others.
  void emit(v1::Event event, bool urgent = false);
  /// After the last event: finish the call once the queue drains.
  void finish(grpc::Status status);
  /// Held while the loop side emits its last events and calls finish(): a
  /// client may read those events and leave at once, and the reactor must
  /// then see the end as the service's (finishing()), not a cancel.
  [[nodiscard]] std::unique_lock<std::recursive_mutex> hold_for_end() {
    return std::unique_lock<std::recursive_mutex>(mutex_);
  }

  // ---- from the reactor (gRPC threads), in the order it read them ----
  /// The open message: the session opens on the loop.
  void open(v1::ClientMessage open);
  /// A command for the loop side (carried out in order, once it opened).
  void command(v1::Command command);
  /// The client half-closed the stream.
  void client_done_writing();
  /// End the transport at once (any thread): the client went away, an admin
  /// closed the session, or the service stops; `reason` becomes the error
  /// of its connection_lost.
  void abort(std::string reason = {});
  /// ControlProxy's command from caller `by` (any thread): its loop side
  /// answers it on the loop, or it is answered NOT_FOUND if the session has
  /// no side any more, UNAVAILABLE if the loop never runs it.
  void control(v1::Command command, std::string by, SessionRecord::ControlAnswer answer);

  void attach(SessionReactor* reactor);
  void detach();
  /// The write in flight completed: start the next or finish.
  void on_write_done(bool ok);

  /// Whether the service has decided to end the call (finish() was called).
  bool finishing();
  /// Whether the service ended the call with an error status of its own
  /// (a refusal, the open deadline): those are logged already.
  bool finished_with_error();

  /// For the loop side: whether the events queue lets the transport read.
  bool wants_transport_reading();

  /// Why the service aborted the session (shutdown, idle, CloseSession);
  /// loop thread only. Empty: it did not.
  void set_abort_reason(std::string reason) { abort_reason_ = std::move(reason); }
  const std::string& abort_reason() const { return abort_reason_; }

  ConduitService& service() { return service_; }
  const std::shared_ptr<SessionRecord>& record() const { return record_; }
  void set_loop_side(std::shared_ptr<LoopSide> side);
  std::shared_ptr<LoopSide> loop_side();

 private:
  void start_write_locked();
  void flow_control_locked();
  /// What came from the client, for the loop: queued here, carried out in
  /// batches, one post per batch (not one per message).
  struct Inbound {
    enum class Kind { open, command, done_writing, abort } kind;
    v1::ClientMessage open;
    v1::Command command;
    std::string reason;
  };
  void push_inbound(Inbound inbound);
  void drain_inbound();  // on the loop

  ConduitService& service_;
  std::shared_ptr<SessionRecord> record_;
  // Recursive: gRPC may run OnWriteDone/OnReadDone on the calling thread at
  // the end of StartWrite/StartRead, while we still hold it.
  std::recursive_mutex mutex_;
  bool pumping_ = false;  // inside start_write_locked: re-entrant calls just ask for another round
  bool repump_ = false;
  SessionReactor* reactor_ = nullptr;
  std::shared_ptr<LoopSide> loop_side_;
  std::deque<v1::Event> queue_;
  std::deque<v1::Event> urgent_;
  v1::Event in_flight_;  // the one StartWrite has
  std::size_t in_flight_bytes_ = 0;
  std::size_t queued_bytes_ = 0;  // queued and in flight
  bool writing_ = false;
  bool transport_paused_ = false;  // we paused its reading for a slow client
  std::optional<grpc::Status> finish_;
  bool finished_ = false;
  std::uint64_t seq_ = 0;        // of the last event sent
  std::string abort_reason_;     // loop thread
  std::deque<Inbound> inbound_;  // guarded by mutex_
  bool drain_posted_ = false;
};

/// The transport side of a session, on the loop thread.
///
/// A client may send commands right behind its open message (any gRPC
/// client may pipeline). Until the transport exists they wait here, in
/// order, and are carried out once it does; if the open fails, each is
/// answered with a command_failed.
///
///   opening --opened()--> open            (queued commands run, in order)
///      +----open_failed()--> failed       (each queued command fails)
class LoopSide {
 public:
  virtual ~LoopSide() = default;

  /// A command from the client, in the order sent.
  void deliver(const v1::Command& command);
  /// The client half-closed its stream, after its last command.
  void deliver_done_writing();

  /// Abort: the client went away or the session was closed by an admin
  /// (at once, queued commands or not).
  virtual void abort() = 0;
  /// Pause or resume reading from the transport (events backpressure).
  virtual void set_reading(bool reading) = 0;
  /// The open failed with `why`: answer what was queued.
  void failed_to_open(const std::string& why);
  /// A command from another caller (ControlProxy), answered through
  /// `answer`; only a proxy session takes one.
  virtual void control(const v1::Command& command, const std::string& by, SessionRecord::ControlAnswer answer);

 protected:
  /// The transport exists: run what was queued.
  void opened();

  /// Carry out one command from the client.
  virtual void command(const v1::Command& command) = 0;
  /// The client half-closed its stream.
  virtual void client_done_writing() = 0;
  /// Report a command that could not be carried out.
  virtual void command_failed(const v1::Command& command, const std::string& why) = 0;

 private:
  enum class Opening { opening, open, failed };
  Opening opening_ = Opening::opening;
  std::deque<std::optional<v1::Command>> queued_;  // nullopt: the client's half-close
};

}  // namespace conduit::service
