#include <conduit/service/remote.hpp>

#include "remote_session.hpp"
#include "sessions.hpp"

#include <boost/asio/post.hpp>

#include <conduit/detail/write_flow_control.hpp>

#include <algorithm>
#include <deque>
#include <map>
#include <string>

namespace conduit::service {

namespace {

/// A Transport whose commands go to the service and whose protocol is fed by
/// the session's events: a connection session's own transport, or one
/// connection of a server session (then commands and events carry its id,
/// and the stream is the server's). A connection session's connection_lost
/// (and a failed open's done) are delivered when its stream has ended, so
/// the caller may tear down at once.
///
/// What asyncio answers at the call is answered here, from local state
/// (SPEC RS4): write() after write_eof() throws, writes after close() or
/// the loss are dropped, is_closing() is true from close() on. The session
/// opens with start_paused, and the service keeps a connection open at the
/// peer's EOF, so that eof_received's answer and a pause_reading in
/// connection_made are the protocol's own (RS1, RS2); data that arrives
/// while the protocol has reading paused waits here until it resumes.
///
///   opening --connection_made--> open --close()/abort()--> closing
///      |                           |                          |
///      |                           +--lost / stream ends--> closed <--+
///      +--open_failed / refused--> done(error)
class RemoteTransport final : public Transport {
 public:
  /// A connection session, opened by start().
  RemoteTransport(EventLoop& loop, std::shared_ptr<BaseProtocol> protocol, std::function<void(std::exception_ptr)> done)
      : loop_(loop), done_(std::move(done)) {
    protocol_.set(std::move(protocol));
  }
  /// Connection `id` of a server session's `stream`, accepted already
  /// (with the server's start_paused; the service keeps it open at the peer's EOF).
  RemoteTransport(EventLoop& loop, std::shared_ptr<BaseProtocol> protocol, std::shared_ptr<SessionStream> stream,
                  std::uint64_t id, bool tls)
      : loop_(loop), stream_(std::move(stream)), connection_id_(id), tls_(tls) {
    protocol_.set(std::move(protocol));
  }

  void start(const RemoteOptions& remote, v1::OpenConnection open) {
    tls_ = open.tls().enabled();
    open.set_start_paused(true);
    v1::ClientMessage first;
    *first.mutable_open_connection() = std::move(open);
    auto self = shared();
    stream_ = SessionStream::start(
        loop_, remote, std::move(first),
        {[self](const v1::Event& e) { self->on_event(e); }, [self](std::uint64_t) { self->on_sent(); },
         [self](const grpc::Status& s) { self->on_finished(s); }});
  }

  bool is_closing() const override { return state_ != State::open; }
  void close() override {
    if (state_ != State::open) return;
    state_ = State::closing;
    send([](v1::Command& c) { c.mutable_close(); });
  }
  void abort() override {
    if (state_ == State::closed || aborted_) return;
    state_ = State::closing;
    aborted_ = true;
    held_.clear();
    // At once, ahead of whatever writes still wait here (SPEC RS3).
    v1::Command c;
    c.set_connection_id(connection_id_);
    c.mutable_abort();
    stream_->abort(std::move(c));
  }
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override { protocol_.set(std::move(protocol)); }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_.get(); }
  bool is_reading() const override { return state_ == State::open && !paused_reading_; }
  void pause_reading() override {
    if (!is_reading()) return;
    paused_reading_ = true;
    sync_remote_reading();
  }
  void resume_reading() override {
    if (state_ != State::open || !paused_reading_) return;
    paused_reading_ = false;
    sync_remote_reading();
    deliver_held();
  }
  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override {
    flow_.set_limits(high, low);
    // New limits apply at once, as the core's (SPEC F6).
    if (flow_.should_pause(get_write_buffer_size()))
      pauses_.set_local(true, writing_protocol());
    else if (flow_.should_resume(get_write_buffer_size()))
      pauses_.set_local(false, writing_protocol());
  }
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return flow_.limits(); }
  /// What this connection has waiting to go to the service.
  std::size_t get_write_buffer_size() const override { return stream_ ? stream_->queued_bytes(connection_id_) : 0; }
  using WriteTransport::write;
  void write(std::span<const std::byte> data) override {
    if (eof_written_) throw std::logic_error("Cannot call write() after write_eof()");
    if (data.empty() || state_ != State::open) return;
    for (std::size_t at = 0; at < data.size(); at += max_command_data) {
      auto chunk = data.subspan(at, std::min(max_command_data, data.size() - at));
      send([&](v1::Command& c) { c.set_write(std::string(as_string_view(chunk))); });
    }
    if (flow_.should_pause(get_write_buffer_size())) pauses_.set_local(true, writing_protocol());
  }
  using WriteTransport::writelines;
  /// One write of everything (SPEC RS5), sent in commands of at most
  /// max_command_data.
  void writelines(std::span<const std::span<const std::byte>> buffers) override {
    if (eof_written_) throw std::logic_error("Cannot call writelines() after write_eof()");
    if (state_ != State::open) return;
    std::string joined;
    for (auto b : buffers) joined.append(as_string_view(b));
    write(as_bytes(joined));
  }
  void write_eof() override {
    if (tls_) throw std::logic_error("write_eof: TLS transports do not support half-closed connections");
    if (state_ != State::open || eof_written_) return;
    eof_written_ = true;
    send([](v1::Command& c) { c.mutable_write_eof(); });
  }
  bool can_write_eof() const override { return !tls_; }

  // ---- for RemoteServer ----
  void accepted(const v1::ConnectionMade& made) {
    state_ = State::open;
    addresses_.set(made);
    in_connection_made_ = true;
    protocol_.connection_made();
    in_connection_made_ = false;
    // The service opened it paused: resume unless the protocol paused.
    sync_remote_reading();
  }
  /// A queued command went out: resume_writing if the queue drained.
  void on_sent() {
    if (flow_.should_resume(get_write_buffer_size())) pauses_.set_local(false, writing_protocol());
  }
  void on_event(const v1::Event& event) {
    switch (event.kind_case()) {
      case v1::Event::kConnectionMade:
        accepted(event.connection_made());
        if (done_) std::exchange(done_, nullptr)(nullptr);
        break;
      case v1::Event::kDataReceived:
      case v1::Event::kEofReceived:
        // After close() nothing more is received, as asyncio's close()
        // stops reading; what the service read meanwhile is dropped.
        if (state_ != State::open) break;
        if (paused_reading_ || !held_.empty()) {
          held_.push_back(event);  // the protocol paused: it waits for resume_reading
        } else {
          deliver(event);
        }
        break;
      case v1::Event::kConnectionLost:
        ending_.lost = true;
        if (event.connection_lost().has_error()) ending_.lost_error = exception_of(event.connection_lost().error());
        if (connection_id_) lost(ending_.lost_error);  // a server's connection: its stream goes on
        break;
      case v1::Event::kOpenFailed: ending_.lost_error = exception_of(event.open_failed().error()); break;
      case v1::Event::kPauseWriting: pauses_.set_remote(true, writing_protocol()); break;
      case v1::Event::kResumeWriting: pauses_.set_remote(false, writing_protocol()); break;
      case v1::Event::kCommandFailed:
        loop_.log(LogLevel::warning, "remote transport: the service could not carry out " +
                                         event.command_failed().command() + ": " + event.command_failed().message());
        break;
      default: break;
    }
  }
  void on_finished(const grpc::Status& status) {
    if (done_) {
      state_ = State::closed;
      std::exchange(done_, nullptr)(ending_.for_status(status));
      protocol_.reset();
      return;
    }
    lost(ending_.lost ? ending_.lost_error : broken_error(status));
  }

 private:
  enum class State { opening, open, closing, closed };

  std::shared_ptr<RemoteTransport> shared() { return std::shared_ptr<RemoteTransport>(shared_from_this(), this); }

  void deliver(const v1::Event& event) {
    if (event.has_data_received()) {
      protocol_.data_received(as_bytes(event.data_received().data()));
      return;
    }
    const std::optional<bool> keep_open = protocol_.eof_received();
    // The service keeps the connection open: closing is the protocol's
    // answer to give (SPEC RS1). TLS closed itself already.
    if (keep_open == false) close();
  }

  /// What arrived while the protocol had reading paused, in order, for as
  /// long as it stays resumed.
  void deliver_held() {
    while (!held_.empty() && !paused_reading_ && state_ == State::open) {
      v1::Event next = std::move(held_.front());
      held_.pop_front();
      deliver(next);
    }
  }

  /// Tell the service whether to read, once the protocol has settled it
  /// (not inside connection_made: that is decided when it returns).
  void sync_remote_reading() {
    if (in_connection_made_ || state_ != State::open) return;
    const bool want_paused = paused_reading_;
    if (want_paused == remote_paused_) return;
    remote_paused_ = want_paused;
    if (want_paused)
      send([](v1::Command& c) { c.mutable_pause_reading(); });
    else
      send([](v1::Command& c) { c.mutable_resume_reading(); });
  }

  /// The protocol to tell of pause/resume_writing (none once closed).
  detail::ProtocolGuard* writing_protocol() { return state_ == State::closed ? nullptr : &protocol_; }

  template <class Fill>
  void send(Fill fill) {
    v1::Command c;
    c.set_connection_id(connection_id_);
    fill(c);
    stream_->command(std::move(c));
  }

  void lost(std::exception_ptr error) {
    if (std::exchange(state_, State::closed) == State::closed) return;
    held_.clear();
    if (forced_error_) error = forced_error_;
    if (protocol_) protocol_.connection_lost(error);
    protocol_.reset();  // break the transport <-> protocol cycle
  }

 protected:
  std::any extra_info(std::string_view name) const override { return addresses_.lookup(name); }

 private:
  EventLoop& loop_;
  // A fatal callback (SPEC RS6) aborts, connection_lost carrying its exception.
  detail::ProtocolGuard protocol_{loop_, *this, detail::ProtocolGuard::stream | detail::ProtocolGuard::buffered,
                                  "a remote connection", [this](std::exception_ptr exc) {
                                    if (!forced_error_) forced_error_ = exc;
                                    abort();
                                  }};
  std::function<void(std::exception_ptr)> done_;
  std::shared_ptr<SessionStream> stream_;
  std::uint64_t connection_id_ = 0;
  bool tls_ = false;
  State state_ = State::opening;
  bool paused_reading_ = false;  // as the protocol sees it
  bool remote_paused_ = true;    // as the service does: opened paused
  bool in_connection_made_ = false;
  bool aborted_ = false;
  std::deque<v1::Event> held_;       // data and EOF that came while paused
  std::exception_ptr forced_error_;  // a protocol callback threw
  WritingPauses pauses_;
  bool eof_written_ = false;
  detail::WriteFlowControl flow_{WriteTransport::default_high_water};
  ReportedAddresses addresses_;
  Ending ending_;
};

/// A server session: each connection_accepted becomes a RemoteTransport with
/// a protocol from the factory, fed the events tagged with its id. An
/// AbstractServer as a local Server is: close() stops listening (the
/// service's stop_listening), and the session ends once the last
/// connection is gone.
///
///   opening --server_started--> serving --close()--> draining --stream ends--> closed
///      +--open_failed / refused--> done(error)            (stream ends from any: closed)
class RemoteServerSession final : public AbstractServer, public std::enable_shared_from_this<RemoteServerSession> {
 public:
  RemoteServerSession(EventLoop& loop, ProtocolFactory factory,
                      std::function<void(std::exception_ptr, std::shared_ptr<AbstractServer>)> done)
      : loop_(loop), factory_(std::move(factory)), done_(std::move(done)) {}

  void start(const RemoteOptions& remote, v1::OpenServer open) {
    tls_ = open.tls().enabled();
    // Each connection's protocol decides eof_received and may pause in
    // connection_made (see RemoteTransport).
    open.set_start_paused(true);
    v1::ClientMessage first;
    *first.mutable_open_server() = std::move(open);
    auto self = shared_from_this();
    stream_ = SessionStream::start(loop_, remote, std::move(first),
                                   {[self](const v1::Event& e) { self->on_event(e); },
                                    [self](std::uint64_t id) {
                                      if (auto it = self->connections_.find(id); it != self->connections_.end()) {
                                        auto connection = it->second;  // on_sent may close it
                                        connection->on_sent();
                                      }
                                    },
                                    [self](const grpc::Status& s) { self->on_finished(s); }});
  }

  bool is_serving() const override { return state_ == State::serving; }
  std::vector<SocketAddress> sockets() const override {
    return state_ == State::closed ? std::vector<SocketAddress>{} : sockets_;
  }
  std::size_t active_connections() const override { return connections_.size(); }
  void close() override {
    if (state_ != State::serving && state_ != State::opening) return;
    state_ = State::draining;
    stream_->command(make_command([](v1::Command& c) { c.mutable_stop_listening(); }));
  }
  void close_clients() override {
    for (auto& [id, connection] : std::map(connections_)) connection->close();
  }
  void abort_clients() override {
    for (auto& [id, connection] : std::map(connections_)) connection->abort();
  }

 protected:
  void wait_closed_impl(asio::any_completion_handler<void()> handler) override {
    waiters_.add(std::move(handler));
    if (state_ == State::closed) waiters_.wake(loop_);
  }

 private:
  enum class State {
    opening,   // the open is on its way
    serving,   // server_started came: listening, connections come and go
    draining,  // close() sent stop_listening: the session ends with the last connection
    closed,    // the stream ended
  };

  void on_event(const v1::Event& event) {
    const std::uint64_t id = event.connection_id();
    if (event.has_server_started()) {
      for (const auto& text : event.server_started().sockets()) {
        if (auto address = parse_stream_address(text)) sockets_.push_back(*address);
      }
      if (state_ == State::opening) state_ = State::serving;
      if (done_) std::exchange(done_, nullptr)(nullptr, shared_from_this());
    } else if (event.has_connection_accepted()) {
      std::shared_ptr<BaseProtocol> protocol;
      try {
        protocol = factory_();
        auto connection = std::make_shared<RemoteTransport>(loop_, protocol, stream_, id, tls_);
        connections_.emplace(id, connection);
        connection->accepted(event.connection_accepted());
      } catch (const std::exception& e) {
        loop_.log(LogLevel::error, std::string("remote server: cannot accept a connection: ") + e.what());
        stream_->command(make_command([id](v1::Command& c) {
          c.set_connection_id(id);
          c.mutable_abort();
        }));
      }
    } else if (event.has_open_failed()) {
      ending_.lost_error = exception_of(event.open_failed().error());
    } else if (id == 0 && event.has_connection_lost()) {
      ending_.lost = true;
    } else if (auto it = connections_.find(id); it != connections_.end()) {
      auto connection = it->second;
      if (event.has_connection_lost()) connections_.erase(it);
      connection->on_event(event);
    }
  }

  void on_finished(const grpc::Status& status) {
    const bool asked_to_close = state_ == State::draining;
    state_ = State::closed;
    if (done_) {
      std::exchange(done_, nullptr)(ending_.for_status(status), nullptr);
    } else if (!asked_to_close || !status.ok()) {
      // Nobody asked: the service closed it, or the call broke. As a
      // local server's troubles, it goes to the loop's exception handler.
      loop_.call_exception_handler(
          {"a remote server's session ended",
           status.ok() ? std::make_exception_ptr(std::runtime_error("the service closed the server session"))
                       : broken_error(status),
           nullptr, nullptr});
    }
    // Connections the stream's end cut off.
    auto open = std::move(connections_);
    for (auto& [id, connection] : open) connection->on_finished(status);
    factory_ = nullptr;
    waiters_.wake(loop_);
  }

  EventLoop& loop_;
  ProtocolFactory factory_;
  std::function<void(std::exception_ptr, std::shared_ptr<AbstractServer>)> done_;
  detail::Waiters waiters_;
  std::shared_ptr<SessionStream> stream_;
  std::map<std::uint64_t, std::shared_ptr<RemoteTransport>> connections_;
  std::vector<SocketAddress> sockets_;
  bool tls_ = false;
  State state_ = State::opening;
  Ending ending_;
};

}  // namespace

std::shared_ptr<Transport> open_connection_session(EventLoop& loop, const RemoteOptions& remote,
                                                   v1::OpenConnection open, std::shared_ptr<BaseProtocol> protocol,
                                                   std::function<void(std::exception_ptr)> done) {
  auto transport = std::make_shared<RemoteTransport>(loop, std::move(protocol), std::move(done));
  transport->start(remote, std::move(open));
  return transport;
}

void open_server_session(EventLoop& loop, const RemoteOptions& remote, v1::OpenServer open, ProtocolFactory factory,
                         std::function<void(std::exception_ptr, std::shared_ptr<AbstractServer>)> done) {
  std::make_shared<RemoteServerSession>(loop, std::move(factory), std::move(done))->start(remote, std::move(open));
}

}  // namespace conduit::service
