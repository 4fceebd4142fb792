#include "session_stream.hpp"

#include <conduit/service/grpc_runtime.hpp>

#include <boost/asio/post.hpp>

#include <algorithm>
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

std::shared_ptr<SessionStream> SessionStream::start(EventLoop& loop, const RemoteOptions& remote,
                                                    v1::ClientMessage open, SessionCallbacks callbacks) {
  auto stream = std::make_shared<SessionStream>(loop, std::move(callbacks));
  stream->channel_ = remote.channel ? remote.channel : make_channel(remote);
  stream->stub_ = v1::Conduit::NewStub(stream->channel_);
  if (!remote.token.empty()) stream->context_.AddMetadata("authorization", "Bearer " + remote.token);
  stream->stream_ = stream->stub_->Session(&stream->context_);
  stream->enqueue(std::move(open));
  detail::track(loop, stream.get());
  stream->tracked_ = true;
  stream->writer_ = std::thread([stream] { stream->write_loop(); });
  stream->reader_ = std::thread([stream] { stream->read_loop(); });
  return stream;
}

SessionStream::~SessionStream() {
  // Its threads hold it until on_finished or on_loop_destroyed has joined
  // them, and either untracks it: nothing is left to stop here, unless the
  // last reference went on one of its own threads (stop_threads detaches
  // that one).
  stop_threads();
}

void SessionStream::stop_threads() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    wake_.notify_one();
    wake_reader_.notify_one();
  }
  context_.TryCancel();
  for (std::thread* t : {&reader_, &writer_}) {
    if (!t->joinable()) continue;
    if (t->get_id() == std::this_thread::get_id()) t->detach();
    else t->join();
  }
}

void SessionStream::on_loop_destroyed() {
  // The loop untracked us already. Its io_context still exists: what the
  // threads post meanwhile is dropped with it, never run.
  tracked_ = false;
  auto self = shared_from_this();  // the callbacks may hold our last owner
  stop_threads();
  // The callbacks own the transport that owns us, as in on_finished: let
  // them go, or the pair would outlive the loop.
  SessionCallbacks callbacks = std::move(callbacks_);
  callbacks_ = {};
}

void SessionStream::command(v1::Command command) {
  v1::ClientMessage message;
  *message.mutable_command() = std::move(command);
  enqueue(std::move(message));
}

void SessionStream::writes_done() {
  std::lock_guard lock(mutex_);
  writes_done_ = true;
  wake_.notify_one();
}

std::size_t SessionStream::queued_bytes(std::uint64_t connection_id) const {
  std::lock_guard lock(mutex_);
  auto it = queued_bytes_.find(connection_id);
  return it == queued_bytes_.end() ? 0 : it->second;
}

namespace {
std::uint64_t connection_of(const v1::ClientMessage& message) {
  return message.has_command() ? message.command().connection_id() : 0;
}
}  // namespace

void SessionStream::enqueue(v1::ClientMessage message) {
  std::lock_guard lock(mutex_);
  if (writes_done_) return;
  queued_bytes_[connection_of(message)] += message.ByteSizeLong();
  outgoing_.push_back(std::move(message));
  wake_.notify_one();
}

void SessionStream::abort(v1::Command abort) {
  std::lock_guard lock(mutex_);
  if (writes_done_) return;
  const std::uint64_t id = abort.connection_id();
  // The connection's queued commands go (a server's abort, id 0, drops them
  // all); anything not a command (the open) stays first.
  auto keep = std::stable_partition(outgoing_.begin(), outgoing_.end(), [&](const v1::ClientMessage& m) {
    return !m.has_command() || (id != 0 && m.command().connection_id() != id);
  });
  for (auto it = keep; it != outgoing_.end(); ++it) queued_bytes_[connection_of(*it)] -= it->ByteSizeLong();
  outgoing_.erase(keep, outgoing_.end());
  auto first_command = std::find_if(outgoing_.begin(), outgoing_.end(), [](const v1::ClientMessage& m) { return m.has_command(); });
  v1::ClientMessage message;
  *message.mutable_command() = std::move(abort);
  queued_bytes_[id] += message.ByteSizeLong();
  outgoing_.insert(first_command, std::move(message));
  wake_.notify_one();
}

void SessionStream::write_loop() {
  for (;;) {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [&] { return !outgoing_.empty() || writes_done_ || stopping_; });
    if (stopping_) return;
    if (outgoing_.empty()) {  // writes_done_ with nothing left
      lock.unlock();
      stream_->WritesDone();
      return;
    }
    v1::ClientMessage message = std::move(outgoing_.front());
    outgoing_.pop_front();
    lock.unlock();
    const bool ok = stream_->Write(message);  // blocks while HTTP/2 flow control holds back
    const std::uint64_t id = connection_of(message);
    lock.lock();
    queued_bytes_[id] -= message.ByteSizeLong();
    lock.unlock();
    if (!ok) return;
    asio::post(loop_.get_executor(), [self = shared_from_this(), id] {
      if (self->callbacks_.sent) self->callbacks_.sent(id);
    });
  }
}

void SessionStream::read_loop() {
  v1::Event event;
  while (stream_->Read(&event)) {
    const std::size_t size = event.ByteSizeLong();
    {
      // Read no further ahead of the loop than this: past it, HTTP/2 flow
      // control holds the service back, which pauses the remote transport.
      std::unique_lock lock(mutex_);
      wake_reader_.wait(lock, [&] { return undelivered_bytes_ < max_undelivered_bytes || stopping_; });
      if (stopping_) break;
      undelivered_bytes_ += size;
    }
    asio::post(loop_.get_executor(), [self = shared_from_this(), event = std::move(event), size] {
      {
        std::lock_guard lock(self->mutex_);
        self->undelivered_bytes_ -= size;
        self->wake_reader_.notify_one();
      }
      if (self->callbacks_.event) self->callbacks_.event(event);
    });
    event = v1::Event();
  }
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    wake_.notify_one();
  }
  grpc::Status status = stream_->Finish();
  asio::post(loop_.get_executor(), [self = shared_from_this(), status] { self->on_finished(status); });
}

void SessionStream::on_finished(const grpc::Status& status) {
  if (reader_.joinable()) reader_.join();
  if (writer_.joinable()) writer_.join();
  if (std::exchange(tracked_, false)) detail::untrack(loop_, this);
  // The callbacks own the transport that owns us: drop them to end the cycle.
  SessionCallbacks callbacks = std::move(callbacks_);
  callbacks_ = {};
  if (callbacks.finished) callbacks.finished(status);
}

}  // namespace conduit::service
