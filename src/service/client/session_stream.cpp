#include "session_stream.hpp"

#include <conduit/service/grpc_runtime.hpp>

#include <boost/asio/post.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

namespace conduit::service {

std::shared_ptr<grpc::Channel> make_channel(const RemoteOptions& remote) {
  quiet_grpc_mutex_checks();
  if (remote.ca_pem.empty()) return grpc::CreateChannel(remote.address, grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = remote.ca_pem;
  tls.pem_cert_chain = remote.cert_pem;
  tls.pem_private_key = remote.key_pem;
  return grpc::CreateChannel(remote.address, grpc::SslCredentials(tls));
}

std::shared_ptr<grpc::Channel> shared_channel(const RemoteOptions& remote) {
  static std::mutex mutex;
  static std::map<std::string, std::weak_ptr<grpc::Channel>> channels;
  const std::string key = remote.address + '\n' + remote.ca_pem + '\n' + remote.cert_pem + '\n' + remote.key_pem;
  std::lock_guard lock(mutex);
  std::erase_if(channels, [](const auto& entry) { return entry.second.expired(); });
  if (auto channel = channels[key].lock()) return channel;
  auto channel = make_channel(remote);
  channels[key] = channel;
  return channel;
}

namespace {
std::uint64_t connection_of(const v1::ClientMessage& message) {
  return message.has_command() ? message.command().connection_id() : 0;
}
}  // namespace

std::shared_ptr<SessionStream> SessionStream::start(EventLoop& loop, const RemoteOptions& remote,
                                                    v1::ClientMessage open, SessionCallbacks callbacks) {
  auto stream = std::make_shared<SessionStream>(loop, std::move(callbacks));
  stream->channel_ = remote.channel ? remote.channel : shared_channel(remote);
  stream->stub_ = v1::Conduit::NewStub(stream->channel_);
  if (!remote.token.empty()) stream->context_.AddMetadata("authorization", "Bearer " + remote.token);
  stream->self_ = stream;
  detail::track(loop, stream.get());
  stream->tracked_ = true;
  stream->stub_->async()->Session(&stream->context_, stream.get());
  // Reads and writes start from outside the reactions too (the loop starts
  // a read once it caught up; any thread queues a write): a hold for each.
  stream->AddMultipleHolds(2);
  stream->StartRead(&stream->incoming_);
  stream->enqueue(std::move(open));
  stream->StartCall();
  return stream;
}

template <class F>
void SessionStream::to_loop(F&& f) {
  std::lock_guard lock(mutex_);
  if (!loop_gone_) asio::post(loop_.get_executor(), std::forward<F>(f));
}

// ---- writes -----------------------------------------------------------------------

void SessionStream::command(v1::Command command) {
  v1::ClientMessage message;
  *message.mutable_command() = std::move(command);
  enqueue(std::move(message));
}

void SessionStream::enqueue(v1::ClientMessage message) {
  Next next = Next::nothing;
  {
    std::lock_guard lock(mutex_);
    if (writes_done_ || writes_over_) return;
    queued_bytes_[connection_of(message)] += message.ByteSizeLong();
    outgoing_.push_back(std::move(message));
    next = next_write_locked();
  }
  start(next);
}

void SessionStream::abort(v1::Command abort) {
  Next next = Next::nothing;
  {
    std::lock_guard lock(mutex_);
    if (writes_done_ || writes_over_) return;
    const std::uint64_t id = abort.connection_id();
    // The connection's queued commands go (a server's abort, id 0, drops
    // them all); anything not a command (the open) stays first.
    auto keep = std::stable_partition(outgoing_.begin(), outgoing_.end(), [&](const v1::ClientMessage& m) {
      return !m.has_command() || (id != 0 && m.command().connection_id() != id);
    });
    for (auto it = keep; it != outgoing_.end(); ++it) queued_bytes_[connection_of(*it)] -= it->ByteSizeLong();
    outgoing_.erase(keep, outgoing_.end());
    auto first_command =
        std::find_if(outgoing_.begin(), outgoing_.end(), [](const v1::ClientMessage& m) { return m.has_command(); });
    v1::ClientMessage message;
    *message.mutable_command() = std::move(abort);
    queued_bytes_[id] += message.ByteSizeLong();
    outgoing_.insert(first_command, std::move(message));
    next = next_write_locked();
  }
  start(next);
}

void SessionStream::writes_done() {
  Next next = Next::nothing;
  {
    std::lock_guard lock(mutex_);
    if (std::exchange(writes_done_, true)) return;
    next = next_write_locked();
  }
  start(next);
}

std::size_t SessionStream::queued_bytes(std::uint64_t connection_id) const {
  std::lock_guard lock(mutex_);
  auto it = queued_bytes_.find(connection_id);
  return it == queued_bytes_.end() ? 0 : it->second;
}

SessionStream::Next SessionStream::next_write_locked() {
  if (writing_ || writes_over_) return Next::nothing;
  if (!outgoing_.empty()) {
    in_flight_ = std::move(outgoing_.front());
    outgoing_.pop_front();
    writing_ = true;
    return Next::write;
  }
  if (writes_done_) {
    writing_ = writes_over_ = true;
    return Next::writes_done;
  }
  return Next::nothing;
}

void SessionStream::start(Next next) {
  switch (next) {
    case Next::nothing: return;
    case Next::write: return StartWrite(&in_flight_);
    case Next::writes_done: {
      StartWritesDone();
      bool write_hold = false;
      {
        std::lock_guard lock(mutex_);
        write_hold = release_write_hold_locked();
      }
      return release(false, write_hold);
    }
  }
}

void SessionStream::OnWriteDone(bool ok) {
  // in_flight_ and incoming_ are read under the mutex they were last
  // written under: gRPC's own hand-offs between its threads are invisible
  // to ThreadSanitizer (its library is not instrumented).
  std::uint64_t id = 0;
  Next next = Next::nothing;
  bool write_hold = false;
  {
    std::lock_guard lock(mutex_);
    id = connection_of(in_flight_);
    queued_bytes_[id] -= in_flight_.ByteSizeLong();
    writing_ = false;
    if (!ok) {  // the call is ending: nothing more goes out
      writes_over_ = true;
      outgoing_.clear();
      queued_bytes_.clear();
    }
    next = next_write_locked();
    if (writes_over_ && !writing_) write_hold = release_write_hold_locked();
  }
  if (ok) {
    to_loop([self = shared_from_this(), id] {
      if (self->callbacks_.sent) self->callbacks_.sent(id);
    });
  }
  start(next);
  release(false, write_hold);
}

// ---- reads ------------------------------------------------------------------------

void SessionStream::OnReadDone(bool ok) {
  bool read_now = false, read_hold = false, write_hold = false;
  if (!ok) {
    // The call ended (the service finished it, or it was cancelled): no
    // more reads, and no write can succeed any more.
    std::lock_guard lock(mutex_);
    read_hold = release_read_hold_locked();
    writes_over_ = true;
    outgoing_.clear();
    queued_bytes_.clear();
    if (!writing_) write_hold = release_write_hold_locked();
  } else {
    {
      std::lock_guard lock(mutex_);
      const std::size_t size = incoming_.ByteSizeLong();
      v1::Event event = std::move(incoming_);
      incoming_.Clear();
      if (loop_gone_) {
        read_hold = release_read_hold_locked();
      } else {
        undelivered_bytes_ += size;
        read_now = undelivered_bytes_ < max_undelivered_bytes;
        read_waiting_ = !read_now;
        asio::post(loop_.get_executor(), [self = shared_from_this(), event = std::move(event), size]() mutable {
          self->deliver(std::move(event), size);
        });
      }
    }
  }
  if (read_now) StartRead(&incoming_);
  release(read_hold, write_hold);
}

void SessionStream::deliver(v1::Event event, std::size_t size) {
  bool read_now = false;
  {
    std::lock_guard lock(mutex_);
    undelivered_bytes_ -= size;
    if (read_waiting_ && undelivered_bytes_ < max_undelivered_bytes) {
      read_waiting_ = false;
      read_now = true;
    }
  }
  if (read_now) StartRead(&incoming_);
  if (callbacks_.event) callbacks_.event(event);
}

// ---- the end ----------------------------------------------------------------------

bool SessionStream::release_read_hold_locked() { return std::exchange(read_hold_, false); }
bool SessionStream::release_write_hold_locked() { return std::exchange(write_hold_, false); }

void SessionStream::release(bool read_hold, bool write_hold) {
  // Either may run OnDone inline: the mutex is not held here.
  if (read_hold) RemoveHold();
  if (write_hold) RemoveHold();
}

void SessionStream::OnDone(const grpc::Status& status) {
  // Our last reference must not go on gRPC's thread: it may take the
  // channel with it, and a channel destroyed on its own callback thread
  // frees that thread's completion queue twice (seen under ASan). It goes
  // on the loop, after on_finished; or, with the loop gone, on the thread
  // destroying the loop, which holds one while it waits for this.
  std::lock_guard lock(mutex_);
  done_ = true;
  if (!loop_gone_) {
    asio::post(loop_.get_executor(), [self = std::move(self_), status] { self->on_finished(status); });
  }
  done_changed_.notify_all();
}

void SessionStream::on_finished(const grpc::Status& status) {
  if (std::exchange(tracked_, false)) detail::untrack(loop_, this);
  // The callbacks own the transport that owns us: drop them to end the cycle.
  SessionCallbacks callbacks = std::move(callbacks_);
  callbacks_ = {};
  if (callbacks.finished) callbacks.finished(status);
}

void SessionStream::on_loop_destroyed() {
  // The loop untracked us already; its io_context still exists, and what
  // was posted to it is dropped with it, never run.
  tracked_ = false;
  auto self = shared_from_this();  // the callbacks may hold our last owner
  bool read_hold = false, write_hold = false;
  {
    std::lock_guard lock(mutex_);
    loop_gone_ = true;
    writes_over_ = true;
    outgoing_.clear();
    queued_bytes_.clear();
    if (std::exchange(read_waiting_, false)) read_hold = release_read_hold_locked();  // no read is out to fail
    if (!writing_) write_hold = release_write_hold_locked();
  }
  context_.TryCancel();
  release(read_hold, write_hold);
  {
    // Bounded: gRPC ends a cancelled call at once; the call must not run
    // on past the loop (nor past main, for the leak checker).
    std::unique_lock lock(mutex_);
    done_changed_.wait_for(lock, std::chrono::seconds(5), [&] { return done_; });
    if (done_) self_.reset();  // not the last reference: `self` is
  }
  // The callbacks own the transport that owns us, as in on_finished: let
  // them go, or the pair would outlive the loop.
  SessionCallbacks callbacks = std::move(callbacks_);
  callbacks_ = {};
}

}  // namespace conduit::service
