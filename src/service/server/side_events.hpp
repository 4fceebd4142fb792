// What every loop side shares: the events it sends the same way (flow
// control, the transport's end, a command it cannot carry out), the cap on
// a client that writes past pause_writing, and the conversion of errors.
#pragma once

#include "codec.hpp"
#include "session_link.hpp"

#include <exception>
#include <memory>
#include <string>

namespace conduit::service {

/// Data events carry at most this much: a 256 KiB read becomes 4 events.
constexpr std::size_t max_event_data = 64 * 1024;

/// What every loop side reports the same way: flow control, the end of the
/// transport, and a command it could not carry out. A server session's
/// connection tags its events with its id.
class SideEvents : public LoopSide {
 protected:
  explicit SideEvents(std::shared_ptr<Link> link, std::uint64_t connection_id = 0)
      : link_(std::move(link)), connection_id_(connection_id) {}

  void command_failed(const v1::Command& c, const std::string& why) override { failed(c, why); }

  void emit(v1::Event event) {
    if (connection_id_) event.set_connection_id(connection_id_);
    link_->emit(std::move(event));
  }

  /// pause_writing (true) or resume_writing (false): tell the client,
  /// ahead of the data events queued for it.
  void report_writing_paused(bool paused, std::size_t buffered) {
    v1::Event event;
    if (paused)
      event.mutable_pause_writing()->set_buffered(buffered);
    else
      event.mutable_resume_writing()->set_buffered(buffered);
    if (connection_id_) event.set_connection_id(connection_id_);
    link_->emit(std::move(event), /*urgent=*/true);
  }

  /// Commands are never held (an abort must not wait behind writes): a
  /// client that writes on past this many bytes buffered, despite
  /// pause_writing, is aborted before memory grows without bound.
  std::size_t write_cap() const { return 8 * link_->service().options().max_buffered_events_bytes; }

  /// Whether `buffered` is past the cap; if so, says so for `c`, and the
  /// caller aborts the transport.
  bool over_cap(const v1::Command& c, std::size_t buffered, const std::string& what) {
    if (buffered <= write_cap()) return false;
    const std::string why = what + " buffers " + std::to_string(buffered) + " bytes, over the session's cap of " +
                            std::to_string(write_cap()) + ": aborted (wait for resume_writing before writing more)";
    failed(c, why);
    ended_because_ = why;  // its connection_lost says so too
    return true;
  }

  /// connection_lost: the last event; the call finishes once it is sent.
  void lost(std::exception_ptr exc) {
    {
      auto held = link_->hold_for_end();
      emit(lost_event(exc));
      link_->finish(grpc::Status::OK);
    }
    link_->set_loop_side(nullptr);  // break the link <-> side cycle
  }

  /// connection_lost, with why the service ended it if it did (over the
  /// cap; shutdown, idle, CloseSession) and the transport had no error.
  v1::Event lost_event(std::exception_ptr exc) const {
    v1::Event event;
    const std::string& because = !ended_because_.empty() ? ended_because_ : link_->abort_reason();
    if (exc)
      *event.mutable_connection_lost()->mutable_error() = error_of(exc);
    else if (!because.empty())
      event.mutable_connection_lost()->mutable_error()->set_message(because);
    else
      event.mutable_connection_lost();
    return event;
  }

  void failed(const v1::Command& c, const std::string& why) {
    v1::Event event;
    event.mutable_command_failed()->set_command(command_name(c));
    event.mutable_command_failed()->set_message(why);
    event.set_connection_id(c.connection_id());
    link_->emit(std::move(event));
  }

  std::shared_ptr<Link> link_;
  std::uint64_t connection_id_;
  std::string ended_because_;  // the service aborted this side, and why
};

}  // namespace conduit::service
