#include "session_link.hpp"

#include "session_open.hpp"
#include "session_reactor.hpp"

#include <boost/asio/post.hpp>

#include <chrono>
#include <utility>

namespace conduit::service {

namespace {

std::size_t size_of(const v1::Event& event) { return event.ByteSizeLong(); }

}  // namespace

// ==== Link ======================================================================

void Link::open(v1::ClientMessage open) { push_inbound({Inbound::Kind::open, std::move(open), {}, {}}); }

void Link::command(v1::Command command) { push_inbound({Inbound::Kind::command, {}, std::move(command), {}}); }

void Link::client_done_writing() { push_inbound({Inbound::Kind::done_writing, {}, {}, {}}); }

void Link::abort(std::string reason) { push_inbound({Inbound::Kind::abort, {}, {}, std::move(reason)}); }

void Link::control(v1::Command command, std::string by, SessionRecord::ControlAnswer answer) {
  // Answered exactly once: by the side, or here if the post is dropped
  // unrun (the loop stopped), so that the caller's call always ends.
  struct Once {
    SessionRecord::ControlAnswer answer;
    ~Once() {
      if (answer) answer(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the service is stopping"), {});
    }
  };
  auto once = std::make_shared<Once>();
  once->answer = std::move(answer);
  asio::post(service_.loop().get_executor(),
             [self = shared_from_this(), command = std::move(command), by = std::move(by), once] {
               auto reply = std::exchange(once->answer, nullptr);
               auto side = self->loop_side();
               if (!side) return reply(grpc::Status(grpc::StatusCode::NOT_FOUND, "the session has ended"), {});
               side->control(command, by, std::move(reply));
             });
}

void Link::push_inbound(Inbound inbound) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  inbound_.push_back(std::move(inbound));
  if (std::exchange(drain_posted_, true)) return;  // a drain is on its way: it takes this one too
  asio::post(service_.loop().get_executor(), [self = shared_from_this()] { self->drain_inbound(); });
}

void Link::drain_inbound() {
  std::deque<Inbound> batch;
  {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    batch.swap(inbound_);
    drain_posted_ = false;
  }
  for (auto& in : batch) {
    if (in.kind == Inbound::Kind::open) {
      open_session(shared_from_this(), in.open);
      continue;
    }
    if (in.kind == Inbound::Kind::abort && !in.reason.empty()) set_abort_reason(std::move(in.reason));
    auto side = loop_side();
    if (!side) continue;  // not open yet, or over: nothing to act on
    switch (in.kind) {
      case Inbound::Kind::command: side->deliver(in.command); break;
      case Inbound::Kind::done_writing: side->deliver_done_writing(); break;
      case Inbound::Kind::abort: side->abort(); break;
      case Inbound::Kind::open: break;
    }
  }
}

void Link::attach(SessionReactor* reactor) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  reactor_ = reactor;
}

void Link::detach() {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  reactor_ = nullptr;
}

void Link::set_loop_side(std::shared_ptr<LoopSide> side) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  loop_side_ = std::move(side);
}

std::shared_ptr<LoopSide> Link::loop_side() {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  return loop_side_;
}

void Link::emit(v1::Event event, bool urgent) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (finished_) return;
  record_->touch();
  event.set_unix_nanos(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  queued_bytes_ += size_of(event);
  (urgent ? urgent_ : queue_).push_back(std::move(event));
  start_write_locked();
  flow_control_locked();
}

bool Link::finishing() {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  return finish_.has_value();
}

bool Link::finished_with_error() {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  return finish_ && !finish_->ok();
}

void Link::finish(grpc::Status status) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (finish_) return;
  finish_ = std::move(status);
  start_write_locked();
}

void Link::start_write_locked() {
  // A write that completes at once re-enters through on_write_done: loop
  // here instead of recursing.
  if (pumping_) {
    repump_ = true;
    return;
  }
  pumping_ = true;
  do {
    repump_ = false;
    if (writing_ || !reactor_ || finished_) break;
    if (!urgent_.empty() || !queue_.empty()) {
      // Urgent events (flow control) go ahead of queued data: the client
      // must hear pause_writing within a message, not behind a backlog.
      auto& from = urgent_.empty() ? queue_ : urgent_;
      in_flight_ = std::move(from.front());
      from.pop_front();
      in_flight_bytes_ = size_of(in_flight_);
      in_flight_.set_seq(++seq_);  // numbered in the order they go out
      writing_ = true;
      // More behind it: gRPC may hold this one to send it with the next
      // (fewer frames and syscalls); the last of a run goes out at once.
      grpc::WriteOptions options;
      if (!urgent_.empty() || !queue_.empty()) options.set_buffer_hint();
      reactor_->StartWrite(&in_flight_, options);
    } else if (finish_) {
      finished_ = true;
      reactor_->Finish(*finish_);
    }
  } while (repump_);
  pumping_ = false;
}

void Link::on_write_done(bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  writing_ = false;
  queued_bytes_ -= std::exchange(in_flight_bytes_, 0);
  if (!ok) {
    // The stream broke: nothing more can be written.
    queue_.clear();
    urgent_.clear();
    queued_bytes_ = 0;
    if (!finished_ && reactor_) {
      finished_ = true;
      reactor_->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client stream is gone"));
    }
    return;
  }
  start_write_locked();
  flow_control_locked();
}

void Link::flow_control_locked() {
  const std::size_t high = service_.options().max_buffered_events_bytes;
  bool change = false;
  if (!transport_paused_ && queued_bytes_ > high) {
    transport_paused_ = change = true;
  } else if (transport_paused_ && queued_bytes_ <= high / 4) {
    transport_paused_ = false;
    change = true;
  }
  if (!change || !loop_side_) return;
  // Posts from the loop thread and from gRPC's threads do not keep their
  // order in Asio's queue: each handler applies the state as it is when it
  // runs, so the last one to run leaves the right one.
  asio::post(service_.loop().get_executor(),
             [this, side = loop_side_] { side->set_reading(wants_transport_reading()); });
}

bool Link::wants_transport_reading() {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  return !transport_paused_;
}

// ==== LoopSide ==================================================================

void LoopSide::deliver(const v1::Command& c) {
  switch (opening_) {
    case Opening::open: return command(c);
    case Opening::opening: queued_.emplace_back(c); return;
    case Opening::failed: return command_failed(c, "not carried out: the session did not open");
  }
}

void LoopSide::deliver_done_writing() {
  if (opening_ == Opening::open)
    client_done_writing();
  else if (opening_ == Opening::opening)
    queued_.emplace_back(std::nullopt);
}

void LoopSide::opened() {
  if (opening_ != Opening::opening) return;
  opening_ = Opening::open;
  while (!queued_.empty()) {
    std::optional<v1::Command> next = std::move(queued_.front());
    queued_.pop_front();
    if (next)
      command(*next);
    else
      client_done_writing();
  }
}

void LoopSide::failed_to_open(const std::string& why) {
  if (opening_ != Opening::opening) return;
  opening_ = Opening::failed;
  for (const auto& next : queued_) {
    if (next) command_failed(*next, "not carried out: the session did not open (" + why + ")");
  }
  queued_.clear();
}

void LoopSide::control(const v1::Command&, const std::string&, SessionRecord::ControlAnswer answer) {
  answer(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "the session is not a proxy"), {});
}

}  // namespace conduit::service
