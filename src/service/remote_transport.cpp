#include "remote_transport.hpp"

#include "grpc_runtime.hpp"

#include <conduit/write_flow_control.hpp>

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>

#include <signal.h>

#include <stdexcept>
#include <system_error>

namespace conduit::service {

namespace {

/// The call failed before the session opened: the service is not there,
/// or it refused the session.
std::exception_ptr status_error(const grpc::Status& status) {
  const std::string code(status_code_name(status.error_code()));
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE || status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return std::make_exception_ptr(std::runtime_error("cannot reach the service (" + code + "): " + status.error_message()));
  }
  return std::make_exception_ptr(std::runtime_error("the service refused the session (" + code + "): " + status.error_message()));
}

/// The call ended while the session was open, without its last event.
std::exception_ptr broken_error(const grpc::Status& status) {
  return std::make_exception_ptr(std::runtime_error("the session with the service broke off (" +
                                                    std::string(status_code_name(status.error_code())) +
                                                    "): " + status.error_message()));
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

/// What the core's transports report when `event`'s protocol callback throws:
/// "Exception in callback protocol.pipe_data_received()".
std::string callback_failure(const v1::Event& event) {
  const auto* field = v1::Event::descriptor()->FindFieldByNumber(event.kind_case());
  return std::string("Exception in callback protocol.") + (field ? field->name() : "unknown") + "()";
}

/// How a remote session ended, for the callbacks run at the stream's end:
/// `done` before the session opened, else connection_lost.
struct Ending {
  bool lost = false;               // the connection_lost event came
  std::exception_ptr lost_error;   // its error, or open_failed's
  std::exception_ptr for_status(const grpc::Status& status) const {
    if (lost_error || lost) return lost_error;
    return status.ok() ? std::make_exception_ptr(std::runtime_error("the session ended before it opened"))
                       : status_error(status);
  }
};

/// A command, as `fill` sets it.
template <class Fill>
v1::Command make_command(Fill fill) {
  v1::Command c;
  fill(c);
  return c;
}

/// A remote transport's writing is paused while either our queue to the
/// service (local) or the transport's own buffer on the service's host
/// (remote) is over its high watermark; the protocol hears of each change
/// of the two together once.
class WritingPauses {
 public:
  /// Set the local side's state; calls `protocol` on a change.
  void set_local(bool paused, BaseProtocol* protocol) { set(paused, remote_, protocol); }
  void set_remote(bool paused, BaseProtocol* protocol) { set(local_, paused, protocol); }

 private:
  void set(bool local, bool remote, BaseProtocol* protocol) {
    const bool was = local_ || remote_;
    local_ = local;
    remote_ = remote;
    const bool now = local_ || remote_;
    if (was == now || !protocol) return;
    if (now) protocol->pause_writing();
    else protocol->resume_writing();
  }

  bool local_ = false, remote_ = false;
};

// ==== connections ===============================================================

/// "127.0.0.1:53" or "[::1]:53" back to a SocketAddress (as the service
/// printed it); nullopt if it is neither.
std::optional<SocketAddress> parse_address(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  if (ec) return std::nullopt;
  return SocketAddress(ip, static_cast<std::uint16_t>(std::stoi(text.substr(colon + 1))));
}

/// An address as the service printed it: IP and port, else a Unix path
/// (nullopt when empty: an unnamed socket).
std::optional<SocketAddress> parse_stream_address(const std::string& text) {
  if (text.empty()) return std::nullopt;
  if (auto ip = parse_address(text)) return ip;
  return SocketAddress::unix_path(text);
}

/// peername and sockname as connection_made (or connection_accepted)
/// reported them, for get_extra_info.
struct ReportedAddresses {
  std::optional<SocketAddress> peername, sockname;

  void set(const v1::ConnectionMade& made) {
    peername = parse_stream_address(made.peername());
    sockname = parse_stream_address(made.sockname());
  }
  std::any lookup(std::string_view name) const {
    if (name == "peername" && peername) return *peername;
    if (name == "sockname" && sockname) return *sockname;
    return {};
  }
};

/// The stream callbacks of a Protocol or a BufferedProtocol, whichever it is:
/// a BufferedProtocol gets the event's bytes copied into its buffers.
class StreamProtocolCalls {
 public:
  void set(std::shared_ptr<BaseProtocol> protocol) {
    auto* stream = dynamic_cast<Protocol*>(protocol.get());
    auto* buffered = dynamic_cast<BufferedProtocol*>(protocol.get());
    if (!stream && !buffered) throw std::invalid_argument("set_protocol: a remote connection needs a Protocol or a BufferedProtocol");
    protocol_ = std::move(protocol);
    stream_ = stream;
    buffered_ = stream ? nullptr : buffered;
  }
  const std::shared_ptr<BaseProtocol>& get() const { return protocol_; }
  BaseProtocol* operator->() const { return protocol_.get(); }
  explicit operator bool() const { return protocol_ != nullptr; }
  void reset() {
    protocol_.reset();
    stream_ = nullptr;
    buffered_ = nullptr;
  }

  void connection_made(std::shared_ptr<Transport> transport) {
    if (stream_) stream_->connection_made(std::move(transport));
    else buffered_->connection_made(std::move(transport));
  }
  void data_received(std::span<const std::byte> data) {
    if (stream_) return stream_->data_received(data);
    while (!data.empty()) {
      std::span<std::byte> buffer = buffered_->get_buffer(data.size());
      if (buffer.empty()) throw std::runtime_error("get_buffer() returned an empty buffer");
      const std::size_t n = std::min(buffer.size(), data.size());
      std::memcpy(buffer.data(), data.data(), n);
      buffered_->buffer_updated(n);
      data = data.subspan(n);
    }
  }
  bool eof_received() { return stream_ ? stream_->eof_received() : buffered_->eof_received(); }

 private:
  std::shared_ptr<BaseProtocol> protocol_;
  Protocol* stream_ = nullptr;
  BufferedProtocol* buffered_ = nullptr;
};

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
/// opens with keep_open_after_eof and start_paused, so that eof_received's
/// answer and a pause_reading in connection_made are the protocol's own
/// (RS1, RS2); data that arrives while the protocol has reading paused
/// waits here until it resumes.
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
  /// (with the server's start_paused and keep_open_after_eof).
  RemoteTransport(EventLoop& loop, std::shared_ptr<BaseProtocol> protocol, std::shared_ptr<SessionStream> stream,
                  std::uint64_t id, bool tls)
      : loop_(loop), stream_(std::move(stream)), connection_id_(id), tls_(tls) {
    protocol_.set(std::move(protocol));
  }

  void start(const RemoteOptions& remote, v1::OpenConnection open) {
    tls_ = open.tls().enabled();
    open.set_keep_open_after_eof(true);
    open.set_start_paused(true);
    v1::ClientMessage first;
    *first.mutable_open_connection() = std::move(open);
    auto self = shared();
    stream_ = SessionStream::start(loop_, remote, std::move(first),
                                   {[self](const v1::Event& e) { self->on_event(e); },
                                    [self](std::uint64_t) { self->on_sent(); },
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
    if (flow_.should_pause(get_write_buffer_size())) pauses_.set_local(true, writing_protocol());
    else if (flow_.should_resume(get_write_buffer_size())) pauses_.set_local(false, writing_protocol());
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
    call("Exception in callback protocol.connection_made()", [&] { protocol_.connection_made(shared()); });
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
        if (event.connection_lost().has_error()) ending_.lost_error = remote_error(event.connection_lost().error());
        if (connection_id_) lost(ending_.lost_error);  // a server's connection: its stream goes on
        break;
      case v1::Event::kOpenFailed: ending_.lost_error = remote_error(event.open_failed().error()); break;
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

  /// A protocol callback, with the core's contract (SPEC RS6): an exception
  /// goes to the loop's exception handler, and the transport is aborted,
  /// its connection_lost carrying the exception.
  template <class Fn>
  bool call(const char* failure, Fn&& fn) {
    try {
      fn();
      return true;
    } catch (...) {
      const auto exc = std::current_exception();
      loop_.call_exception_handler({failure, exc, shared(), protocol_.get()});
      if (!forced_error_) forced_error_ = exc;
      abort();
      return false;
    }
  }

  void deliver(const v1::Event& event) {
    if (event.has_data_received()) {
      call("Fatal error: protocol.data_received() call failed.",
           [&] { protocol_.data_received(as_bytes(event.data_received().data())); });
      return;
    }
    bool keep_open = false;
    if (!call("Fatal error: protocol.eof_received() call failed.", [&] { keep_open = protocol_.eof_received(); })) return;
    // The service keeps the connection open: closing is the protocol's
    // answer to give (SPEC RS1). TLS closed itself already.
    if (!keep_open) close();
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
    if (want_paused) send([](v1::Command& c) { c.mutable_pause_reading(); });
    else send([](v1::Command& c) { c.mutable_resume_reading(); });
  }

  /// The protocol to tell of pause/resume_writing (none once closed).
  BaseProtocol* writing_protocol() const { return state_ == State::closed ? nullptr : protocol_.get().get(); }

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
    if (protocol_) {
      try {
        protocol_->connection_lost(error);
      } catch (...) {
        loop_.call_exception_handler({"Exception in callback protocol.connection_lost()", std::current_exception(),
                                      shared(), protocol_.get()});
      }
    }
    protocol_.reset();  // break the transport <-> protocol cycle
  }

 protected:
  std::any extra_info(std::string_view name) const override { return addresses_.lookup(name); }

 private:
  EventLoop& loop_;
  StreamProtocolCalls protocol_;
  std::function<void(std::exception_ptr)> done_;
  std::shared_ptr<SessionStream> stream_;
  std::uint64_t connection_id_ = 0;
  bool tls_ = false;
  State state_ = State::opening;
  bool paused_reading_ = false;     // as the protocol sees it
  bool remote_paused_ = true;       // as the service does: opened paused
  bool in_connection_made_ = false;
  bool aborted_ = false;
  std::deque<v1::Event> held_;      // data and EOF that came while paused
  std::exception_ptr forced_error_;  // a protocol callback threw
  WritingPauses pauses_;
  bool eof_written_ = false;
  WriteFlowControl flow_{WriteTransport::default_high_water};
  ReportedAddresses addresses_;
  Ending ending_;
};

/// A server session: each connection_accepted becomes a RemoteTransport with
/// a protocol from the factory, fed the events tagged with its id.
///
///   opening --server_started--> serving --close()/abort()--> closing --stream ends--> closed
///      +--open_failed / refused--> done(error)
class RemoteServerSession final : public RemoteServer, public std::enable_shared_from_this<RemoteServerSession> {
 public:
  RemoteServerSession(EventLoop& loop, ProtocolFactory factory,
                      std::function<void(std::exception_ptr, std::shared_ptr<RemoteServer>)> done)
      : loop_(loop), factory_(std::move(factory)), done_(std::move(done)) {}

  void start(const RemoteOptions& remote, v1::OpenServer open) {
    tls_ = open.tls().enabled();
    // Each connection's protocol decides eof_received and may pause in
    // connection_made (see RemoteTransport).
    open.set_keep_open_after_eof(true);
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

  const std::vector<std::string>& sockets() const override { return sockets_; }
  std::size_t active_connections() const override { return connections_.size(); }
  bool is_closed() const override { return closed_; }
  void on_closed(std::function<void(std::exception_ptr)> handler) override { closed_handler_ = std::move(handler); }
  void close() override {
    if (closing_ || closed_) return;
    closing_ = true;
    // To the server (id 0): stop listening, close every connection.
    stream_->command(make_command([](v1::Command& c) { c.mutable_close(); }));
  }
  void abort() override {
    if (closed_) return;
    closing_ = true;
    stream_->abort(make_command([](v1::Command& c) { c.mutable_abort(); }));
  }

 private:
  void on_event(const v1::Event& event) {
    const std::uint64_t id = event.connection_id();
    if (event.has_server_started()) {
      sockets_.assign(event.server_started().sockets().begin(), event.server_started().sockets().end());
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
      ending_.lost_error = remote_error(event.open_failed().error());
    } else if (id == 0 && event.has_connection_lost()) {
      ending_.lost = true;
    } else if (auto it = connections_.find(id); it != connections_.end()) {
      auto connection = it->second;
      if (event.has_connection_lost()) connections_.erase(it);
      connection->on_event(event);
    }
  }

  void on_finished(const grpc::Status& status) {
    closed_ = true;
    if (done_) std::exchange(done_, nullptr)(ending_.for_status(status), nullptr);
    // Connections the stream's end cut off.
    auto open = std::move(connections_);
    for (auto& [id, connection] : open) connection->on_finished(status);
    factory_ = nullptr;
    if (auto handler = std::exchange(closed_handler_, nullptr)) {
      if (closing_ && status.ok()) handler(nullptr);
      else if (status.ok()) handler(std::make_exception_ptr(std::runtime_error("the service closed the server session")));
      else handler(broken_error(status));
    }
  }

  EventLoop& loop_;
  ProtocolFactory factory_;
  std::function<void(std::exception_ptr, std::shared_ptr<RemoteServer>)> done_;
  std::function<void(std::exception_ptr)> closed_handler_;
  std::shared_ptr<SessionStream> stream_;
  std::map<std::uint64_t, std::shared_ptr<RemoteTransport>> connections_;
  std::vector<std::string> sockets_;
  bool tls_ = false;
  bool closing_ = false;
  bool closed_ = false;
  Ending ending_;
};

// ==== subprocesses ==============================================================

class RemoteSubprocess;

/// The child's stdin, as get_pipe_transport(0) returns it: writes and close
/// (EOF) go to the session. Its write buffer is what waits to go to the
/// service; `pressure(true/false)` tells the child's transport when that
/// passes the high watermark and when it drains below the low one.
class RemoteStdin final : public Transport {
 public:
  RemoteStdin(std::shared_ptr<SessionStream> stream, std::function<void(bool)> pressure)
      : stream_(std::move(stream)), pressure_(std::move(pressure)) {}
  bool is_closing() const override { return closed_; }
  void close() override { write_eof(); }
  void set_protocol(std::shared_ptr<BaseProtocol>) override {
    throw std::logic_error("set_protocol: a remote child's stdin has no protocol of its own");
  }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return nullptr; }
  bool is_reading() const override { return false; }
  void pause_reading() override {}
  void resume_reading() override {}
  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override {
    flow_.set_limits(high, low);
    check_pressure();
  }
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return flow_.limits(); }
  std::size_t get_write_buffer_size() const override { return stream_->queued_bytes(); }
  using WriteTransport::write;
  void write(std::span<const std::byte> data) override {
    if (data.empty() || closed_) return;
    for (std::size_t at = 0; at < data.size(); at += max_command_data) {
      auto chunk = data.subspan(at, std::min(max_command_data, data.size() - at));
      stream_->command(make_command([&](v1::Command& c) { c.set_write(std::string(as_string_view(chunk))); }));
    }
    check_pressure();
  }
  using WriteTransport::writelines;
  /// One write of everything (SPEC RS5).
  void writelines(std::span<const std::span<const std::byte>> buffers) override {
    std::string joined;
    for (auto b : buffers) joined.append(as_string_view(b));
    write(as_bytes(joined));
  }
  void write_eof() override {
    if (closed_) return;
    closed_ = true;
    stream_->command(make_command([](v1::Command& c) { c.mutable_write_eof(); }));
  }
  bool can_write_eof() const override { return true; }
  void abort() override { write_eof(); }

  /// A queued command went out.
  void check_pressure() {
    const std::size_t size = get_write_buffer_size();
    if (!paused_ && flow_.should_pause(size)) {
      paused_ = true;
      pressure_(true);
    } else if (paused_ && flow_.should_resume(size)) {
      paused_ = false;
      pressure_(false);
    }
  }

 protected:
  std::any extra_info(std::string_view) const override { return {}; }

 private:
  std::shared_ptr<SessionStream> stream_;
  std::function<void(bool)> pressure_;
  bool closed_ = false;
  bool paused_ = false;
  WriteFlowControl flow_{WriteTransport::default_high_water};
};

/// A SubprocessTransport for a child running on the service's host.
class RemoteSubprocess final : public SubprocessTransport {
 public:
  RemoteSubprocess(EventLoop& loop, std::shared_ptr<SubprocessProtocol> protocol,
                   std::function<void(std::exception_ptr)> done)
      : loop_(loop), protocol_(std::move(protocol)), done_(std::move(done)) {}

  void start(const RemoteOptions& remote, v1::OpenSubprocess open) {
    v1::ClientMessage first;
    *first.mutable_open_subprocess() = std::move(open);
    auto self = std::shared_ptr<RemoteSubprocess>(shared_from_this(), this);
    stream_ = SessionStream::start(loop_, remote, std::move(first),
                                   {[self](const v1::Event& e) { self->on_event(e); },
                                    [self](std::uint64_t) {
                                      if (self->stdin_) self->stdin_->check_pressure();
                                    },
                                    [self](const grpc::Status& s) { self->on_finished(s); }});
    std::weak_ptr<RemoteSubprocess> weak = self;
    stdin_ = std::make_shared<RemoteStdin>(stream_, [weak](bool paused) {
      if (auto owner = weak.lock()) owner->pauses_.set_local(paused, owner->protocol_.get());
    });
  }

  bool is_closing() const override { return closed_; }
  void close() override {
    if (closed_) return;
    closed_ = true;
    stream_->command(make_command([](v1::Command& c) { c.mutable_close(); }));
  }
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override {
    auto typed = std::dynamic_pointer_cast<SubprocessProtocol>(protocol);
    if (!typed) throw std::invalid_argument("set_protocol: a remote subprocess needs a SubprocessProtocol");
    protocol_ = std::move(typed);
  }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_; }
  int get_pid() const override { return pid_; }
  std::shared_ptr<Transport> get_pipe_transport(int fd) const override { return fd == 0 ? stdin_ : nullptr; }
  std::optional<int> get_returncode() const override { return returncode_; }
  void send_signal(int signal) override {
    if (closed_) throw std::system_error(ESRCH, std::generic_category(), "ProcessLookupError: the transport is closed");
    if (returncode_) return;
    stream_->command(make_command([&](v1::Command& c) { c.mutable_send_signal()->set_signal(signal); }));
  }

 protected:
  std::any extra_info(std::string_view name) const override {
    if (name == "subprocess" && pid_) return pid_;
    return {};
  }

 private:
  /// A protocol callback that throws is reported as the core's transports
  /// do, and ends the child (close: its group is killed), its
  /// connection_lost carrying the exception (SPEC RS6).
  void on_event(const v1::Event& event) {
    if (!protocol_) return;
    try {
      dispatch(event);
    } catch (...) {
      const auto exc = std::current_exception();
      loop_.call_exception_handler({callback_failure(event), exc, shared_from_this(), protocol_});
      if (!forced_error_) forced_error_ = exc;
      close();
    }
  }

  void dispatch(const v1::Event& event) {
    switch (event.kind_case()) {
      case v1::Event::kConnectionMade:
        pid_ = event.connection_made().pid();
        protocol_->connection_made(std::shared_ptr<RemoteSubprocess>(shared_from_this(), this));
        if (done_) std::exchange(done_, nullptr)(nullptr);
        break;
      case v1::Event::kPipeDataReceived:
        protocol_->pipe_data_received(event.pipe_data_received().fd(), as_bytes(event.pipe_data_received().data()));
        break;
      case v1::Event::kPipeConnectionLost:
        protocol_->pipe_connection_lost(event.pipe_connection_lost().fd(),
                                        event.pipe_connection_lost().has_error()
                                            ? remote_error(event.pipe_connection_lost().error())
                                            : nullptr);
        break;
      case v1::Event::kProcessExited:
        returncode_ = event.process_exited().returncode();
        protocol_->process_exited();
        break;
      case v1::Event::kPauseWriting: pauses_.set_remote(true, protocol_.get()); break;
      case v1::Event::kResumeWriting: pauses_.set_remote(false, protocol_.get()); break;
      case v1::Event::kConnectionLost:
        ending_.lost = true;
        if (event.connection_lost().has_error()) ending_.lost_error = remote_error(event.connection_lost().error());
        break;
      case v1::Event::kOpenFailed: ending_.lost_error = remote_error(event.open_failed().error()); break;
      default: break;
    }
  }

  void on_finished(const grpc::Status& status) {
    if (done_) std::exchange(done_, nullptr)(ending_.for_status(status));
    else if (protocol_) protocol_->connection_lost(forced_error_ ? forced_error_ : ending_.lost ? ending_.lost_error : broken_error(status));
    protocol_.reset();
    stdin_.reset();
  }

  WritingPauses pauses_;
  std::exception_ptr forced_error_;  // a protocol callback threw

  EventLoop& loop_;
  std::shared_ptr<SubprocessProtocol> protocol_;
  std::function<void(std::exception_ptr)> done_;
  std::shared_ptr<SessionStream> stream_;
  std::shared_ptr<RemoteStdin> stdin_;
  int pid_ = 0;
  std::optional<int> returncode_;
  bool closed_ = false;
  Ending ending_;
};

// ==== datagram endpoints ========================================================

/// A DatagramTransport whose socket is on the service's host.
class RemoteDatagram final : public DatagramTransport {
 public:
  RemoteDatagram(EventLoop& loop, std::shared_ptr<DatagramProtocol> protocol, std::function<void(std::exception_ptr)> done)
      : loop_(loop), protocol_(std::move(protocol)), done_(std::move(done)) {}

  void start(const RemoteOptions& remote, v1::OpenDatagramEndpoint open) {
    v1::ClientMessage first;
    *first.mutable_open_datagram_endpoint() = std::move(open);
    auto self = std::shared_ptr<RemoteDatagram>(shared_from_this(), this);
    stream_ = SessionStream::start(loop_, remote, std::move(first),
                                   {[self](const v1::Event& e) { self->on_event(e); },
                                    [self](std::uint64_t) {
                                      if (self->protocol_ && self->flow_.should_resume(self->get_write_buffer_size())) {
                                        self->protocol_->resume_writing();
                                      }
                                    },
                                    [self](const grpc::Status& s) { self->on_finished(s); }});
  }

  bool is_closing() const override { return closing_; }
  void close() override {
    if (closing_) return;
    closing_ = true;
    stream_->command(make_command([](v1::Command& c) { c.mutable_close(); }));
  }
  void abort() override {
    closing_ = true;
    stream_->command(make_command([](v1::Command& c) { c.mutable_abort(); }));
  }
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override {
    auto typed = std::dynamic_pointer_cast<DatagramProtocol>(protocol);
    if (!typed) throw std::invalid_argument("set_protocol: a remote datagram endpoint needs a DatagramProtocol");
    protocol_ = std::move(typed);
  }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_; }
  using DatagramTransport::sendto;
  void sendto(std::span<const std::byte> data, const std::optional<SocketAddress>& addr) override {
    if (closing_) return;
    stream_->command(make_command([&](v1::Command& c) {
      c.mutable_sendto()->set_data(std::string(as_string_view(data)));
      if (addr) {
        c.mutable_sendto()->mutable_addr()->set_host(addr->ip().to_string());
        c.mutable_sendto()->mutable_addr()->set_port(addr->port());
      }
    }));
    if (flow_.should_pause(get_write_buffer_size())) protocol_->pause_writing();
  }
  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override {
    flow_.set_limits(high, low);
  }
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return flow_.limits(); }
  std::size_t get_write_buffer_size() const override { return stream_ ? stream_->queued_bytes() : 0; }

 protected:
  std::any extra_info(std::string_view name) const override { return addresses_.lookup(name); }

 private:
  /// A protocol callback that throws: reported, and the endpoint aborted
  /// (SPEC RS6).
  void on_event(const v1::Event& event) {
    if (!protocol_) return;
    try {
      dispatch(event);
    } catch (...) {
      const auto exc = std::current_exception();
      loop_.call_exception_handler({callback_failure(event), exc, shared_from_this(), protocol_});
      if (!forced_error_) forced_error_ = exc;
      abort();
    }
  }

  void dispatch(const v1::Event& event) {
    switch (event.kind_case()) {
      case v1::Event::kConnectionMade:
        addresses_.set(event.connection_made());
        protocol_->connection_made(std::shared_ptr<RemoteDatagram>(shared_from_this(), this));
        if (done_) std::exchange(done_, nullptr)(nullptr);
        break;
      case v1::Event::kDatagramReceived:
        protocol_->datagram_received(as_bytes(event.datagram_received().data()),
                                     parse_address(event.datagram_received().addr()).value_or(SocketAddress()));
        break;
      case v1::Event::kErrorReceived: protocol_->error_received(remote_error(event.error_received().error())); break;
      case v1::Event::kConnectionLost:
        ending_.lost = true;
        if (event.connection_lost().has_error()) ending_.lost_error = remote_error(event.connection_lost().error());
        break;
      case v1::Event::kOpenFailed: ending_.lost_error = remote_error(event.open_failed().error()); break;
      default: break;
    }
  }

  void on_finished(const grpc::Status& status) {
    closing_ = true;
    if (done_) std::exchange(done_, nullptr)(ending_.for_status(status));
    else if (protocol_) protocol_->connection_lost(forced_error_ ? forced_error_ : ending_.lost ? ending_.lost_error : broken_error(status));
    protocol_.reset();
  }

  EventLoop& loop_;
  std::shared_ptr<DatagramProtocol> protocol_;
  std::function<void(std::exception_ptr)> done_;
  std::shared_ptr<SessionStream> stream_;
  bool closing_ = false;
  WriteFlowControl flow_{DatagramTransport::default_high_water};
  ReportedAddresses addresses_;
  Ending ending_;
  std::exception_ptr forced_error_;  // a protocol callback threw
};

}  // namespace

void create_remote_datagram_endpoint(EventLoop& loop, const RemoteOptions& remote, v1::OpenDatagramEndpoint open,
                                     std::shared_ptr<DatagramProtocol> protocol,
                                     std::function<void(std::exception_ptr)> done) {
  std::make_shared<RemoteDatagram>(loop, std::move(protocol), std::move(done))->start(remote, std::move(open));
}

void create_remote_connection(EventLoop& loop, const RemoteOptions& remote, v1::OpenConnection open,
                              std::shared_ptr<BaseProtocol> protocol, std::function<void(std::exception_ptr)> done) {
  std::make_shared<RemoteTransport>(loop, std::move(protocol), std::move(done))->start(remote, std::move(open));
}

void create_remote_server(EventLoop& loop, const RemoteOptions& remote, v1::OpenServer open, ProtocolFactory factory,
                          std::function<void(std::exception_ptr, std::shared_ptr<RemoteServer>)> done) {
  std::make_shared<RemoteServerSession>(loop, std::move(factory), std::move(done))->start(remote, std::move(open));
}

void create_remote_subprocess(EventLoop& loop, const RemoteOptions& remote, v1::OpenSubprocess open,
                              std::shared_ptr<SubprocessProtocol> protocol,
                              std::function<void(std::exception_ptr)> done) {
  std::make_shared<RemoteSubprocess>(loop, std::move(protocol), std::move(done))->start(remote, std::move(open));
}

}  // namespace conduit::service
