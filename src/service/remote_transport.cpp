#include "remote_transport.hpp"

#include <conduit/write_flow_control.hpp>

#include <boost/asio/post.hpp>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>

namespace conduit::service {

namespace {

std::exception_ptr status_error(const grpc::Status& status) {
  return std::make_exception_ptr(std::runtime_error("the service refused the session (" +
                                                    std::to_string(status.error_code()) + "): " + status.error_message()));
}

std::exception_ptr remote_error(const v1::Error& error) {
  if (error.errno_value() != 0) {
    // The service's text already ends with the errno's; system_error adds it again.
    const std::error_code code(error.errno_value(), std::generic_category());
    std::string what = error.message();
    const std::string suffix = ": " + code.message();
    if (what.size() >= suffix.size() && what.compare(what.size() - suffix.size(), suffix.size(), suffix) == 0) {
      what.resize(what.size() - suffix.size());
    }
    return std::make_exception_ptr(std::system_error(code, what));
  }
  return std::make_exception_ptr(std::runtime_error(error.message()));
}

/// A Transport whose commands go to the service and whose protocol is fed
/// by the session's events. Two threads carry the stream: a reader that
/// posts each event to the loop, and a writer that drains the outgoing
/// queue (its blocking Write is where the service's backpressure lands;
/// the queue's size drives pause_writing/resume_writing here).
///
///   opening --connection_made--> open --close()/abort()--> closing
///      |                           |                          |
///      |                           +--connection_lost--> closed <--+
///      +--open_failed / refused--> done(error)
class RemoteTransport final : public Transport {
 public:
  RemoteTransport(EventLoop& loop, std::shared_ptr<Protocol> protocol, std::function<void(std::exception_ptr)> done)
      : loop_(loop), protocol_(std::move(protocol)), done_(std::move(done)) {}

  void start(const RemoteOptions& remote, v1::OpenConnection open) {
    channel_ = grpc::CreateChannel(remote.address, grpc::InsecureChannelCredentials());
    stub_ = v1::Conduit::NewStub(channel_);
    if (!remote.token.empty()) context_.AddMetadata("authorization", "Bearer " + remote.token);
    stream_ = stub_->Session(&context_);
    v1::ClientMessage first;
    *first.mutable_open_connection() = std::move(open);
    enqueue(std::move(first));
    auto self = shared();
    writer_ = std::thread([self] { self->write_loop(); });
    reader_ = std::thread([self] { self->read_loop(); });
  }

  // ---- Transport (loop thread) ----
  bool is_closing() const override { return state_ != State::open; }
  void close() override {
    if (state_ != State::open) return;
    state_ = State::closing;
    command([](v1::Command& c) { c.mutable_close(); });
  }
  void abort() override {
    if (state_ == State::closed) return;
    state_ = State::closing;
    command([](v1::Command& c) { c.mutable_abort(); });
  }
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override {
    auto typed = std::dynamic_pointer_cast<Protocol>(protocol);
    if (!typed) throw std::invalid_argument("set_protocol: a remote connection needs a Protocol");
    protocol_ = std::move(typed);
  }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_; }
  bool is_reading() const override { return state_ == State::open && !paused_reading_; }
  void pause_reading() override {
    if (!is_reading()) return;
    paused_reading_ = true;
    command([](v1::Command& c) { c.mutable_pause_reading(); });
  }
  void resume_reading() override {
    if (state_ != State::open || !paused_reading_) return;
    paused_reading_ = false;
    command([](v1::Command& c) { c.mutable_resume_reading(); });
  }
  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override {
    flow_.set_limits(high, low);
  }
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return flow_.limits(); }
  std::size_t get_write_buffer_size() const override {
    std::lock_guard lock(mutex_);
    return queued_bytes_;
  }
  using WriteTransport::write;
  void write(std::span<const std::byte> data) override {
    if (eof_written_) throw std::logic_error("Cannot call write() after write_eof()");
    if (data.empty() || state_ != State::open) return;
    const std::string bytes(as_string_view(data));
    command([&](v1::Command& c) { c.set_write(bytes); });
    if (flow_.should_pause(get_write_buffer_size())) protocol_->pause_writing();
  }
  using WriteTransport::writelines;
  void writelines(std::span<const std::span<const std::byte>> buffers) override {
    for (auto b : buffers) write(b);
  }
  void write_eof() override {
    if (state_ != State::open || eof_written_) return;
    eof_written_ = true;
    std::lock_guard lock(mutex_);
    writes_done_ = true;  // the stream's half-close is the session's write_eof
    wake_.notify_one();
  }
  bool can_write_eof() const override { return true; }

 protected:
  std::any extra_info(std::string_view name) const override {
    if (name == "peername" && !peername_.empty()) return peername_;
    if (name == "sockname" && !sockname_.empty()) return sockname_;
    return {};
  }

 private:
  enum class State { opening, open, closing, closed };

  template <class Fill>
  void command(Fill fill) {
    v1::ClientMessage message;
    fill(*message.mutable_command());
    enqueue(std::move(message));
  }

  void enqueue(v1::ClientMessage message) {
    std::lock_guard lock(mutex_);
    if (writes_done_) return;
    queued_bytes_ += message.ByteSizeLong();
    outgoing_.push_back(std::move(message));
    wake_.notify_one();
  }

  // ---- writer thread ----
  void write_loop() {
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
      const bool ok = stream_->Write(message);  // blocks while the service holds back
      lock.lock();
      queued_bytes_ -= message.ByteSizeLong();
      lock.unlock();
      if (!ok) return;
      asio::post(loop_.get_executor(), [self = shared()] {
        if (self->state_ != State::closed && self->flow_.should_resume(self->get_write_buffer_size())) {
          self->protocol_->resume_writing();
        }
      });
    }
  }

  // ---- reader thread ----
  void read_loop() {
    v1::Event event;
    while (stream_->Read(&event)) {
      asio::post(loop_.get_executor(), [self = shared(), event] { self->on_event(event); });
    }
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      wake_.notify_one();
    }
    grpc::Status status = stream_->Finish();
    asio::post(loop_.get_executor(), [self = shared(), status] { self->on_finished(status); });
  }

  // The aliasing constructor: a cast through the virtual base is not allowed.
  std::shared_ptr<RemoteTransport> shared() { return std::shared_ptr<RemoteTransport>(shared_from_this(), this); }

  // ---- loop thread ----
  void on_event(const v1::Event& event) {
    switch (event.kind_case()) {
      case v1::Event::kConnectionMade:
        state_ = State::open;
        peername_ = event.connection_made().peername();
        sockname_ = event.connection_made().sockname();
        protocol_->connection_made(shared());
        if (done_) std::exchange(done_, nullptr)(nullptr);
        break;
      case v1::Event::kDataReceived:
        protocol_->data_received(as_bytes(event.data_received().data()));
        break;
      case v1::Event::kEofReceived:
        if (!protocol_->eof_received()) close();
        break;
      // The last events: delivered once the stream has ended and both
      // threads are gone, so a caller may tear everything down from them.
      case v1::Event::kConnectionLost:
        lost_ = true;
        if (event.connection_lost().has_error()) lost_error_ = remote_error(event.connection_lost().error());
        break;
      case v1::Event::kOpenFailed:
        lost_error_ = remote_error(event.open_failed().error());
        break;
      default:
        break;  // pause/resume_writing of the remote transport: our own queue tells us
    }
  }

  void on_finished(const grpc::Status& status) {
    if (reader_.joinable()) reader_.join();
    if (writer_.joinable()) writer_.join();
    const bool opened = !done_;
    const State was = std::exchange(state_, State::closed);
    if (!opened) {
      std::exception_ptr error = lost_error_ ? lost_error_
                                 : status.ok() ? std::make_exception_ptr(std::runtime_error("the session ended before it opened"))
                                               : status_error(status);
      std::exchange(done_, nullptr)(error);
    } else if (was != State::closed) {
      // connection_lost, as the service sent it; or the stream broke.
      protocol_->connection_lost(lost_ || status.ok() ? lost_error_ : status_error(status));
    }
    protocol_.reset();  // break the transport <-> protocol cycle
  }

 public:
  ~RemoteTransport() override {
    // Only if the loop went away first: stop the threads here.
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      wake_.notify_one();
    }
    context_.TryCancel();
    for (std::thread* t : {&reader_, &writer_}) {
      if (!t->joinable()) continue;
      if (t->get_id() == std::this_thread::get_id()) t->detach();
      else t->join();
    }
  }

 private:

  EventLoop& loop_;
  std::shared_ptr<Protocol> protocol_;
  std::function<void(std::exception_ptr)> done_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Conduit::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ClientMessage, v1::Event>> stream_;
  std::thread reader_, writer_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<v1::ClientMessage> outgoing_;
  std::size_t queued_bytes_ = 0;
  bool writes_done_ = false;
  bool stopping_ = false;
  State state_ = State::opening;
  bool paused_reading_ = false;
  bool eof_written_ = false;
  WriteFlowControl flow_{WriteTransport::default_high_water};
  std::string peername_, sockname_;
  bool lost_ = false;              // the connection_lost event came
  std::exception_ptr lost_error_;  // its error, or open_failed's
};

}  // namespace

void create_remote_connection(EventLoop& loop, const RemoteOptions& remote, v1::OpenConnection open,
                              std::shared_ptr<Protocol> protocol, std::function<void(std::exception_ptr)> done) {
  auto transport = std::make_shared<RemoteTransport>(loop, std::move(protocol), std::move(done));
  transport->start(remote, std::move(open));
}

}  // namespace conduit::service
