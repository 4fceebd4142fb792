#include "session.hpp"

#include <conduit/server.hpp>
#include <conduit/tls.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <boost/asio/local/stream_protocol.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <system_error>

namespace conduit::service {

namespace {

// Data events carry at most this much: a 256 KiB read becomes 4 events.
constexpr std::size_t max_event_data = 64 * 1024;

v1::Error error_of(std::exception_ptr exc) {
  v1::Error error;
  try {
    std::rethrow_exception(exc);
  } catch (const std::system_error& e) {
    if (e.code().category() == std::generic_category() || e.code().category() == std::system_category() ||
        std::string_view(e.code().category().name()) == "system") {
      error.set_errno_value(e.code().value());
    }
    error.set_message(e.what());
  } catch (const std::exception& e) {
    error.set_message(e.what());
  } catch (...) {
    error.set_message("unknown error");
  }
  return error;
}

std::size_t size_of(const v1::Event& event) {
  return event.ByteSizeLong();
}

/// Make a vanished TCP peer (host down, cable cut) show up as ETIMEDOUT
/// within about `timeout`, instead of after the kernel's many minutes of
/// retransmissions; with TCP_USER_TIMEOUT set, Linux also ends a connection
/// whose keepalive probes go unanswered for that long.
void bound_dead_peer_detection(Transport& transport, std::chrono::seconds timeout) {
  if (timeout.count() == 0) return;
  auto peer = transport.get_extra_info_as<SocketAddress>("peername");
  auto fd = transport.get_extra_info_as<int>("socket");
  if (!peer || peer->is_unix() || !fd) return;
  const int seconds = static_cast<int>(timeout.count());
  const int on = 1, idle = std::max(1, seconds / 2), interval = std::max(1, seconds / 6), count = 3;
  const unsigned user_timeout_ms = static_cast<unsigned>(seconds) * 1000;
  // Best effort: a failure leaves the kernel's defaults, which still work.
  (void)::setsockopt(*fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  (void)::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  (void)::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  (void)::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
  (void)::setsockopt(*fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

/// Whether a server listens on the Unix socket at `path` now. The core
/// replaces a socket file left at the path, as asyncio does; a remote caller
/// must not take a live one over from another program.
bool unix_socket_is_live(asio::io_context& context, const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  asio::local::stream_protocol::socket probe(context);
  boost::system::error_code ec;
  probe.open(asio::local::stream_protocol(), ec);
  if (ec) return false;
  probe.non_blocking(true, ec);
  probe.connect(asio::local::stream_protocol::endpoint(path), ec);
  // Connected, or a full backlog (EAGAIN): somebody listens.
  return !ec || ec == asio::error::would_block || ec == asio::error::try_again;
}

}  // namespace

// ==== Link ======================================================================

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
  event.set_unix_nanos(std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count());
  queued_bytes_ += size_of(event);
  (urgent ? urgent_ : queue_).push_back(std::move(event));
  start_write_locked();
  flow_control_locked();
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
      reactor_->StartWrite(&in_flight_);
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
  asio::post(service_.loop().get_executor(), [this, side = loop_side_] { side->set_reading(wants_transport_reading()); });
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
  if (opening_ == Opening::open) client_done_writing();
  else if (opening_ == Opening::opening) queued_.emplace_back(std::nullopt);
}

void LoopSide::opened() {
  if (opening_ != Opening::opening) return;
  opening_ = Opening::open;
  while (!queued_.empty()) {
    std::optional<v1::Command> next = std::move(queued_.front());
    queued_.pop_front();
    if (next) command(*next);
    else client_done_writing();
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

// ==== loop sides ================================================================

namespace {

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
    if (paused) event.mutable_pause_writing()->set_buffered(buffered);
    else event.mutable_resume_writing()->set_buffered(buffered);
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
    emit(lost_event(exc));
    link_->finish(grpc::Status::OK);
    link_->set_loop_side(nullptr);  // break the link <-> side cycle
  }

  /// connection_lost, with why the service ended it if it did (over the
  /// cap; shutdown, idle, CloseSession) and the transport had no error.
  v1::Event lost_event(std::exception_ptr exc) const {
    v1::Event event;
    const std::string& because = !ended_because_.empty() ? ended_because_ : link_->abort_reason();
    if (exc) *event.mutable_connection_lost()->mutable_error() = error_of(exc);
    else if (!because.empty()) event.mutable_connection_lost()->mutable_error()->set_message(because);
    else event.mutable_connection_lost();
    return event;
  }

  void failed(const v1::Command& c, const std::string& why) {
    v1::Event event;
    const auto* field = v1::Command::descriptor()->FindFieldByNumber(c.kind_case());
    event.mutable_command_failed()->set_command(field ? field->name() : "unknown");
    event.mutable_command_failed()->set_message(why);
    event.set_connection_id(c.connection_id());
    link_->emit(std::move(event));
  }

  std::shared_ptr<Link> link_;
  std::uint64_t connection_id_;
  std::string ended_because_;  // the service aborted this side, and why
};

class ServerSide;

/// Write buffer limits from an open message (0: keep the defaults).
/// What an open message says about each connection it makes.
struct ConnectionOptions {
  std::uint32_t high = 0, low = 0;   // write buffer limits; 0: the defaults
  bool keep_open_after_eof = false;  // eof_received's answer (SPEC RS1)
  bool start_paused = false;         // no data_received until resume_reading (RS2)

  template <class Open>
  static ConnectionOptions of(const Open& open) {
    return {open.write_buffer_high(), open.write_buffer_low(), open.keep_open_after_eof(), open.start_paused()};
  }
  void apply_limits(Transport& transport) const {
    if (high) transport.set_write_buffer_limits(high, low ? std::optional<std::int64_t>(low) : std::nullopt);
  }
};

/// Events from a stream transport's callbacks; commands onto it.
///
/// The connection session's own transport, or one connection of a server
/// session (`server` set): then its events carry its id, it starts with
/// connection_accepted, and its end goes to the server side, not the call.
class ConnectionSide final : public Protocol, public SideEvents {
 public:
  explicit ConnectionSide(std::shared_ptr<Link> link, ConnectionOptions options, std::uint64_t connection_id = 0,
                          std::weak_ptr<ServerSide> server = {}, bool reading = true)
      : SideEvents(std::move(link), connection_id),
        options_(options),
        server_(std::move(server)),
        reading_(reading),
        client_paused_(options.start_paused) {}

  void connection_made(std::shared_ptr<Transport> transport) override;
  void data_received(std::span<const std::byte> data) override {
    link_->record()->bytes_in += data.size();
    for (std::size_t at = 0; at < data.size(); at += max_event_data) {
      auto chunk = data.subspan(at, std::min(max_event_data, data.size() - at));
      v1::Event event;
      event.mutable_data_received()->set_data(std::string(as_string_view(chunk)));
      emit(std::move(event));
    }
  }
  bool eof_received() override {
    v1::Event event;
    event.mutable_eof_received();
    emit(std::move(event));
    // The client's choice, made at the open (SPEC RS1): asyncio's default
    // closes (flushing); keep_open leaves closing to the client alone. TLS
    // has no half-open state and closes whatever we return (asyncio warns
    // if we return true).
    return options_.keep_open_after_eof && transport_->can_write_eof();
  }
  void pause_writing() override;
  void resume_writing() override;
  void connection_lost(std::exception_ptr exc) override;

  void command(const v1::Command& c) override {
    if (!transport_) return failed(c, "the transport is closed");
    try {
      switch (c.kind_case()) {
        case v1::Command::kWrite:
          link_->record()->bytes_out += c.write().size();
          transport_->write(c.write());
          check_backlog(c);
          break;
        case v1::Command::kWritelines: {
          std::vector<std::span<const std::byte>> buffers;
          for (const auto& d : c.writelines().data()) {
            link_->record()->bytes_out += d.size();
            buffers.push_back(as_bytes(d));
          }
          transport_->writelines(buffers);
          check_backlog(c);
          break;
        }
        case v1::Command::kWriteEof:
          if (!transport_->can_write_eof()) return failed(c, "write_eof: a TLS connection cannot half-close");
          client_done_writing();
          break;
        case v1::Command::kClose: transport_->close(); break;
        case v1::Command::kAbort: transport_->abort(); break;
        case v1::Command::kPauseReading:
          client_paused_ = true;
          transport_->pause_reading();
          break;
        case v1::Command::kResumeReading:
          client_paused_ = false;
          if (reading_) transport_->resume_reading();
          break;
        case v1::Command::kSetWriteBufferLimits: {
          const auto& l = c.set_write_buffer_limits();
          if (l.high() == 0 && !transport_->can_write_eof()) {
            // asyncio's SSL rule pauses at size >= high: with 0, at once and for good.
            return failed(c, "set_write_buffer_limits.high must be at least 1 on a TLS connection");
          }
          transport_->set_write_buffer_limits(l.high(), l.low() ? std::optional<std::int64_t>(l.low()) : std::nullopt);
          break;
        }
        case v1::Command::kGetExtraInfo: extra_info(c.get_extra_info().name()); break;
        default: failed(c, "not a command for a connection session");
      }
    } catch (const std::exception& e) {
      failed(c, e.what());
    }
  }
  void client_done_writing() override {
    if (!transport_ || client_done_) return;
    client_done_ = true;
    if (!transport_->can_write_eof()) transport_->close();  // TLS has no half-close
    else transport_->write_eof();
  }
  void abort() override {
    if (transport_) transport_->abort();
    else ending_ = End::abort;  // not made yet
  }
  /// close(): flush, then connection_lost.
  void close() {
    if (transport_) transport_->close();
    else if (!ending_) ending_ = End::close;
  }
  void set_reading(bool reading) override {
    reading_ = reading;
    if (!transport_) return;
    if (!reading) transport_->pause_reading();
    else if (!client_paused_) transport_->resume_reading();
  }

 private:
  void extra_info(const std::string& name) {
    v1::Event event;
    auto* info = event.mutable_extra_info();
    info->set_name(name);
    std::any value = transport_->get_extra_info(name);
    if (auto* address = std::any_cast<SocketAddress>(&value)) info->set_value(address->to_string());
    else if (auto* fd = std::any_cast<int>(&value)) info->set_value(std::to_string(*fd));
    else if (auto* cipher = std::any_cast<CipherInfo>(&value)) info->set_value(cipher->name + " " + cipher->protocol);
    else if (auto* cert = std::any_cast<CertificateInfo>(&value)) info->set_value(cert->subject);
    info->set_found(value.has_value());
    emit(std::move(event));
  }

  void writing_paused_changed(bool paused);

  /// The client is told to stop writing by pause_writing, not held back
  /// by the stream; one that writes on regardless is aborted.
  void check_backlog(const v1::Command& c) {
    if (!transport_) return;
    const std::string what = connection_id_ ? "connection " + std::to_string(connection_id_) : "the connection";
    if (over_cap(c, transport_->get_write_buffer_size(), what)) transport_->abort();
  }

  enum class End { close, abort };

  std::shared_ptr<Transport> transport_;
  ConnectionOptions options_;
  std::weak_ptr<ServerSide> server_;  // set for a server session's connection
  std::optional<End> ending_;         // asked to end before connection_made
  bool reading_ = true;        // the service's backpressure allows reading
  bool client_paused_ = false;  // the client asked for pause_reading
  bool client_done_ = false;    // the client half-closed (write_eof)
};

/// Events from a child's callbacks; commands onto it and its stdin.
class SubprocessSide final : public SubprocessProtocol, public SideEvents {
 public:
  explicit SubprocessSide(std::shared_ptr<Link> link) : SideEvents(std::move(link)) {}

  void connection_made(std::shared_ptr<SubprocessTransport> transport) override {
    transport_ = std::move(transport);
    v1::Event event;
    event.mutable_connection_made()->set_session_id(link_->record()->id);
    event.mutable_connection_made()->set_pid(transport_->get_pid());
    link_->emit(std::move(event));
    if (aborted_) return transport_->close();  // the client left while it started
    opened();
  }
  void pipe_data_received(int fd, std::span<const std::byte> data) override {
    link_->record()->bytes_in += data.size();
    for (std::size_t at = 0; at < data.size(); at += max_event_data) {
      auto chunk = data.subspan(at, std::min(max_event_data, data.size() - at));
      v1::Event event;
      event.mutable_pipe_data_received()->set_fd(fd);
      event.mutable_pipe_data_received()->set_data(std::string(as_string_view(chunk)));
      link_->emit(std::move(event));
    }
  }
  void pipe_connection_lost(int fd, std::exception_ptr exc) override {
    v1::Event event;
    event.mutable_pipe_connection_lost()->set_fd(fd);
    if (exc) *event.mutable_pipe_connection_lost()->mutable_error() = error_of(exc);
    link_->emit(std::move(event));
  }
  void process_exited() override {
    v1::Event event;
    event.mutable_process_exited()->set_returncode(transport_->get_returncode().value_or(0));
    link_->emit(std::move(event));
  }
  void pause_writing() override { report_writing_paused(true, stdin_buffered()); }
  void resume_writing() override { report_writing_paused(false, stdin_buffered()); }
  void connection_lost(std::exception_ptr exc) override {
    lost(exc);
    transport_.reset();
  }

  void command(const v1::Command& c) override {
    if (!transport_) return failed(c, "the process session is over");
    try {
      auto stdin_pipe = transport_->get_pipe_transport(0);
      switch (c.kind_case()) {
        case v1::Command::kWrite:
          if (!stdin_pipe) return failed(c, "the child's stdin is closed");
          link_->record()->bytes_out += c.write().size();
          stdin_pipe->write(c.write());
          if (over_cap(c, stdin_pipe->get_write_buffer_size(), "the child's stdin")) transport_->close();
          break;
        case v1::Command::kWriteEof:
          if (stdin_pipe) stdin_pipe->close();
          break;
        case v1::Command::kClose: transport_->close(); break;
        case v1::Command::kAbort: transport_->close(); break;
        case v1::Command::kSendSignal: transport_->send_signal(c.send_signal().signal()); break;
        case v1::Command::kTerminate: transport_->terminate(); break;
        case v1::Command::kKill: transport_->kill(); break;
        case v1::Command::kPauseReading: set_output_reading(false); break;
        case v1::Command::kResumeReading: set_output_reading(true); break;
        default: failed(c, "not a command for a subprocess session");
      }
    } catch (const std::exception& e) {
      failed(c, e.what());
    }
  }
  void client_done_writing() override {
    if (!transport_) return;
    if (auto stdin_pipe = transport_->get_pipe_transport(0)) stdin_pipe->close();
  }
  void abort() override {
    if (transport_) transport_->close();  // kills the child (and its group)
    else aborted_ = true;
  }
  void set_reading(bool reading) override { set_output_reading(reading); }

 private:
  std::size_t stdin_buffered() const {
    auto stdin_pipe = transport_ ? transport_->get_pipe_transport(0) : nullptr;
    return stdin_pipe ? stdin_pipe->get_write_buffer_size() : 0;
  }

  void set_output_reading(bool reading) {
    if (!transport_) return;
    for (int fd : {1, 2}) {
      if (auto pipe = transport_->get_pipe_transport(fd)) {
        if (reading) pipe->resume_reading();
        else pipe->pause_reading();
      }
    }
  }

  std::shared_ptr<SubprocessTransport> transport_;
  bool aborted_ = false;  // before connection_made
};

/// Events from a datagram endpoint; sendto and close onto it. While the
/// client reads events too slowly, datagrams are dropped (counted), as the
/// kernel would drop them: UDP has no backpressure to carry.
class DatagramSide final : public DatagramProtocol, public SideEvents {
 public:
  explicit DatagramSide(std::shared_ptr<Link> link) : SideEvents(std::move(link)) {}

  /// The policy's host names as resolved at the open, for checking sendto.
  void set_rule_names(std::shared_ptr<const ResolvedNames> names) { rule_names_ = std::move(names); }

  void connection_made(std::shared_ptr<DatagramTransport> transport) override {
    transport_ = std::move(transport);
    if (aborted_) return transport_->abort();  // the client left while it opened
    v1::Event event;
    auto* made = event.mutable_connection_made();
    made->set_session_id(link_->record()->id);
    if (auto peer = transport_->get_extra_info_as<SocketAddress>("peername")) made->set_peername(peer->to_string());
    if (auto name = transport_->get_extra_info_as<SocketAddress>("sockname")) made->set_sockname(name->to_string());
    link_->emit(std::move(event));
    opened();
  }
  void datagram_received(std::span<const std::byte> data, const SocketAddress& addr) override {
    if (!reading_) {
      ++dropped_;
      return;
    }
    link_->record()->bytes_in += data.size();
    v1::Event event;
    event.mutable_datagram_received()->set_data(std::string(as_string_view(data)));
    event.mutable_datagram_received()->set_addr(addr.to_string());
    link_->emit(std::move(event));
  }
  void error_received(std::exception_ptr exc) override {
    v1::Event event;
    *event.mutable_error_received()->mutable_error() = error_of(exc);
    link_->emit(std::move(event));
  }
  void pause_writing() override { report_writing_paused(true, transport_->get_write_buffer_size()); }
  void resume_writing() override { report_writing_paused(false, transport_->get_write_buffer_size()); }
  void connection_lost(std::exception_ptr exc) override {
    lost(exc);
    transport_.reset();
  }

  void command(const v1::Command& c) override {
    if (!transport_) return failed(c, "the endpoint is closed");
    try {
      switch (c.kind_case()) {
        case v1::Command::kSendto: {
          std::optional<SocketAddress> to;
          if (c.sendto().has_addr()) {
            boost::system::error_code ec;
            auto ip = asio::ip::make_address(c.sendto().addr().host(), ec);
            if (ec) return failed(c, "sendto.addr.host must be an IP address, not '" + c.sendto().addr().host() + "'");
            if (c.sendto().addr().port() == 0 || c.sendto().addr().port() > 65535) {
              return failed(c, "sendto.addr.port must be 1 to 65535");
            }
            to = SocketAddress(ip, static_cast<std::uint16_t>(c.sendto().addr().port()));
            const auto& policy = link_->service().options().policy;
            if (auto why = policy.check_connect("sendto " + to->to_string(), {ip}, to->port(),
                                                rule_names_ ? *rule_names_ : ResolvedNames{})) {
              link_->service().refuse(link_->record()->peer, "/conduit.v1.Conduit/Session (sendto)",
                                      grpc::Status(grpc::StatusCode::PERMISSION_DENIED, *why));
              return failed(c, "PERMISSION_DENIED: " + *why);
            }
          }
          link_->record()->bytes_out += c.sendto().data().size();
          transport_->sendto(as_bytes(c.sendto().data()), to);
          if (over_cap(c, transport_->get_write_buffer_size(), "the endpoint")) transport_->abort();
          break;
        }
        case v1::Command::kClose: transport_->close(); break;
        case v1::Command::kAbort: transport_->abort(); break;
        case v1::Command::kSetWriteBufferLimits: {
          const auto& l = c.set_write_buffer_limits();
          transport_->set_write_buffer_limits(l.high(), l.low() ? std::optional<std::int64_t>(l.low()) : std::nullopt);
          break;
        }
        default: failed(c, "not a command for a datagram session");
      }
    } catch (const std::exception& e) {
      failed(c, e.what());
    }
  }
  void client_done_writing() override {
    if (transport_) transport_->close();
  }
  void abort() override {
    if (transport_) transport_->abort();
    else aborted_ = true;
  }
  void set_reading(bool reading) override { reading_ = reading; }

 private:
  std::shared_ptr<DatagramTransport> transport_;
  std::shared_ptr<const ResolvedNames> rule_names_;
  bool aborted_ = false;  // before connection_made
  bool reading_ = true;
  std::uint64_t dropped_ = 0;
};

/// A protocol for a connection over a server session's max_connections:
/// dropped as soon as it is made.
class RefusedConnection final : public Protocol {
 public:
  void connection_made(std::shared_ptr<Transport> transport) override { transport->abort(); }
};

/// A listening server's session. Each accepted connection is a
/// ConnectionSide tagged with a fresh id; the client's commands reach it by
/// that id.
///
///   listening --close / abort / client done--> draining --last connection gone--> ended
///                                               (stopped listening)               (connection_lost, id 0)
///
/// Backpressure: a slow client pauses reading on every connection. Writes
/// are not held session-wide (one peer that does not read would stall every
/// connection): each connection's pause_writing / resume_writing, tagged
/// with its id, tells the client to stop writing to it, and a connection
/// whose client writes on regardless is aborted past a hard cap.
class ServerSide final : public SideEvents, public std::enable_shared_from_this<ServerSide> {
 public:
  ServerSide(std::shared_ptr<Link> link, const v1::OpenServer& open)
      : SideEvents(std::move(link)),
        connection_options_(ConnectionOptions::of(open)),
        max_connections_(open.max_connections() ? open.max_connections() : default_max_connections) {
    opened();  // a server takes close and abort while it opens; its connections come later
  }

  static constexpr std::size_t default_max_connections = 256;

  /// The server's protocol factory.
  std::shared_ptr<BaseProtocol> accept() {
    if (draining_ || connections_.size() >= max_connections_) {
      link_->service().loop().log(
          LogLevel::warning, "session " + link_->record()->id + ": refused a connection (" +
                                 (draining_ ? std::string("the server is closing")
                                            : "max_connections " + std::to_string(max_connections_) + " open") +
                                 ")");
      return std::make_shared<RefusedConnection>();
    }
    const std::uint64_t id = ++last_id_;
    auto side = std::make_shared<ConnectionSide>(link_, connection_options_, id, weak_from_this(), reading_);
    connections_.emplace(id, side);
    return side;
  }

  void started(std::shared_ptr<Server> server) {
    server_ = std::move(server);
    v1::Event event;
    auto* started = event.mutable_server_started();
    started->set_session_id(link_->record()->id);
    for (const auto& address : server_->sockets()) started->add_sockets(address.to_string());
    emit(std::move(event));
    if (draining_) {  // the client left while the server was opening
      server_->close();
      end_if_drained();
    }
  }

  void command(const v1::Command& c) override {
    if (c.connection_id() != 0) {
      auto it = connections_.find(c.connection_id());
      if (it == connections_.end()) return failed(c, "connection " + std::to_string(c.connection_id()) + " is not open");
      return it->second->deliver(c);
    }
    switch (c.kind_case()) {
      case v1::Command::kClose: return stop(false);
      case v1::Command::kAbort: return stop(true);
      default: return failed(c, "a server session's command needs a connection_id (0, the server, takes close and abort)");
    }
  }
  void client_done_writing() override { stop(false); }
  void abort() override { stop(true); }
  void set_reading(bool reading) override {
    reading_ = reading;
    for (auto& [id, connection] : connections_) connection->set_reading(reading);
  }

  // ---- from its connections ----
  void connection_gone(std::uint64_t id) {
    connections_.erase(id);
    end_if_drained();
  }

 private:
  void stop(bool abort) {
    if (!draining_) {
      draining_ = true;
      if (server_) server_->close();
    }
    std::vector<std::shared_ptr<ConnectionSide>> open;
    for (auto& [id, connection] : connections_) open.push_back(connection);
    for (auto& connection : open) {
      if (abort) connection->abort();
      else connection->close();
    }
    end_if_drained();
  }

  void end_if_drained() {
    if (!draining_ || !server_ || !connections_.empty() || ended_) return;
    ended_ = true;
    server_.reset();
    lost(nullptr);
  }

  ConnectionOptions connection_options_;
  std::size_t max_connections_;
  std::shared_ptr<Server> server_;
  std::map<std::uint64_t, std::shared_ptr<ConnectionSide>> connections_;
  std::uint64_t last_id_ = 0;
  bool reading_ = true;   // the events queue lets connections read
  bool draining_ = false;
  bool ended_ = false;
};

void ConnectionSide::pause_writing() { writing_paused_changed(true); }
void ConnectionSide::resume_writing() { writing_paused_changed(false); }

void ConnectionSide::writing_paused_changed(bool paused) {
  report_writing_paused(paused, transport_ ? transport_->get_write_buffer_size() : 0);
}

void ConnectionSide::connection_made(std::shared_ptr<Transport> transport) {
  transport_ = std::move(transport);
  options_.apply_limits(*transport_);
  // Paused before the protocol's first event goes out: nothing is read
  // until the client says resume_reading (a pause_reading in its
  // connection_made, SPEC RS2).
  if (client_paused_) transport_->pause_reading();
  bound_dead_peer_detection(*transport_, link_->service().options().dead_peer_timeout);
  v1::Event event;
  auto* made = connection_id_ ? event.mutable_connection_accepted() : event.mutable_connection_made();
  made->set_session_id(link_->record()->id);
  if (auto peer = transport_->get_extra_info_as<SocketAddress>("peername")) made->set_peername(peer->to_string());
  if (auto name = transport_->get_extra_info_as<SocketAddress>("sockname")) made->set_sockname(name->to_string());
  if (auto cipher = transport_->get_extra_info_as<CipherInfo>("cipher")) {
    made->set_tls_version(cipher->protocol);
    made->set_tls_cipher(cipher->name);
  }
  emit(std::move(event));
  if (!reading_) transport_->pause_reading();
  // Accepted while the server was stopping (connection_made comes a turn
  // after the accept), or the client left while it connected: end it the
  // way the others ended.
  if (ending_) {
    if (*ending_ == End::abort) transport_->abort();
    else transport_->close();
    return;
  }
  opened();
}

void ConnectionSide::connection_lost(std::exception_ptr exc) {
  transport_.reset();
  if (connection_id_ == 0) return lost(exc);
  emit(lost_event(exc));
  if (auto server = server_.lock()) server->connection_gone(connection_id_);  // may destroy this side: last
}

/// The open failed (a refused connect, a program that is not there): the
/// open_failed event, an answer to each queued command, then the call ends.
void fail_open(const std::shared_ptr<Link>& link, std::exception_ptr error) {
  v1::Event event;
  *event.mutable_open_failed()->mutable_error() = error_of(error);
  const std::string why = event.open_failed().error().message();
  link->emit(std::move(event));
  if (auto side = link->loop_side()) side->failed_to_open(why);
  link->finish(grpc::Status::OK);
  link->set_loop_side(nullptr);
}

/// What an address check throws when the policy refuses an address.
class PolicyRefusal : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The policy said no: the call ends with PERMISSION_DENIED saying why
/// (nothing was opened; queued commands are dropped with the call).
void refuse_open(const std::shared_ptr<Link>& link, const std::string& why) {
  const grpc::Status status(grpc::StatusCode::PERMISSION_DENIED, why);
  link->service().refuse(link->record()->peer, "/conduit.v1.Conduit/Session", status);
  link->finish(status);
  link->set_loop_side(nullptr);
}

/// The completion of an open that passed the policy (or was refused by an
/// address check inside it).
void finish_open(const std::shared_ptr<Link>& link, std::exception_ptr error) {
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const PolicyRefusal& refusal) {
      return refuse_open(link, refusal.what());
    } catch (...) {
    }
  }
  link->service().log_session_opened(*link->record());
  if (error) fail_open(link, error);
}

/// Resolve the host names the policy's rules use, then `then(names)`, on
/// the loop. A name that does not resolve matches nothing.
asio::awaitable<ResolvedNames> resolve_rule_names(std::vector<std::string> names) {
  asio::ip::tcp::resolver resolver(co_await asio::this_coro::executor);
  ResolvedNames resolved;
  for (const auto& name : names) {
    boost::system::error_code ec;
    auto results = co_await resolver.async_resolve(name, "", asio::redirect_error(asio::use_awaitable, ec));
    auto& addresses = resolved[name];
    if (!ec) {
      for (const auto& entry : results) addresses.push_back(entry.endpoint().address());
    }
  }
  co_return resolved;
}

void with_rule_names(EventLoop& loop, std::vector<std::string> names,
                     std::function<void(std::shared_ptr<const ResolvedNames>)> then) {
  if (names.empty()) return then(std::make_shared<const ResolvedNames>());
  asio::co_spawn(loop.context(), resolve_rule_names(std::move(names)),
                 [then = std::move(then)](std::exception_ptr, ResolvedNames resolved) {
                   then(std::make_shared<const ResolvedNames>(std::move(resolved)));
                 });
}

enum class AddressUse { listen, connect };

/// An AddressCheck that throws PolicyRefusal where the policy refuses the
/// address for `use`; `what` names the request in the refusal.
AddressCheck policy_check(const Policy& policy, AddressUse use, std::string what,
                          std::shared_ptr<const ResolvedNames> names) {
  return [&policy, use, what = std::move(what), names = std::move(names)](const SocketAddress& address) {
    const std::vector<asio::ip::address> addresses{address.ip()};
    auto why = use == AddressUse::listen ? policy.check_listen(what, addresses, address.port(), *names)
                                         : policy.check_connect(what, addresses, address.port(), *names);
    if (why) throw PolicyRefusal(*why);
  };
}

std::string host_port(const std::string& host, std::uint32_t port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

void open_connection(const std::shared_ptr<Link>& link, const v1::OpenConnection& open) {
  EventLoop& loop = link->service().loop();
  const Policy& policy = link->service().options().policy;
  auto side = std::make_shared<ConnectionSide>(link, ConnectionOptions::of(open));
  link->set_loop_side(side);
  auto done = [link](std::exception_ptr error, auto, auto) { finish_open(link, error); };
  auto factory = [side] { return side; };
  if (!open.has_tcp()) {
    if (auto why = policy.check_unix("open_connection", open.unix_path(), false)) return refuse_open(link, *why);
    link->service().log_session_opened(*link->record());
    return loop.create_unix_connection(factory, open.unix_path(), [link](std::exception_ptr error, auto, auto) {
      if (error) fail_open(link, error);
    });
  }
  ConnectOptions options;
  if (open.tls().enabled()) {
    std::shared_ptr<asio::ssl::context> context;
    if (open.tls().insecure()) {
      context = tls::insecure_client_context();
    } else if (open.tls().ca_pem().empty()) {
      context = tls::client_context();
    } else {
      try {
        context = tls::client_context_from_pem(open.tls().ca_pem());
      } catch (const std::exception& e) {
        link->service().log_session_opened(*link->record());
        return fail_open(link, std::make_exception_ptr(std::invalid_argument(
                                   std::string("open_connection.tls.ca_pem: cannot use the CA: ") + e.what())));
      }
    }
    TlsOptions tls(context);
    if (!open.tls().server_hostname().empty()) tls.server_hostname = open.tls().server_hostname();
    options.tls = std::move(tls);
  }
  with_rule_names(loop, policy.connect_names(),
                  [link, &loop, &policy, factory, done, options = std::move(options), host = open.tcp().host(),
                   port = static_cast<std::uint16_t>(open.tcp().port())](auto names) mutable {
                    options.check_remote_address = policy_check(policy, AddressUse::connect,
                                                                "open_connection to " + host_port(host, port), names);
                    loop.create_connection(factory, host, port, std::move(options), done);
                  });
}

void open_server(const std::shared_ptr<Link>& link, const v1::OpenServer& open) {
  EventLoop& loop = link->service().loop();
  const Policy& policy = link->service().options().policy;
  if (auto why = link->service().check_not_own_address(open.has_tcp() ? open.tcp().port() : 0,
                                                       open.has_tcp() ? std::string() : open.unix_path())) {
    return refuse_open(link, *why);
  }
  auto side = std::make_shared<ServerSide>(link, open);
  link->set_loop_side(side);
  ServerOptions options;
  if (open.backlog()) options.backlog = static_cast<int>(open.backlog());
  options.reuse_port = open.reuse_port();
  if (open.tls().enabled()) {
    try {
      options.tls = TlsOptions(
          tls::server_context_from_pem(open.tls().cert_pem(), open.tls().key_pem(), open.tls().client_ca_pem()));
    } catch (const std::exception& e) {
      link->service().log_session_opened(*link->record());
      return fail_open(link, std::make_exception_ptr(std::invalid_argument(
                                 std::string("open_server.tls: cannot use the certificate or key: ") + e.what())));
    }
  }
  // Weak: the server keeps its factory, and the side keeps the server.
  auto factory = [weak = std::weak_ptr<ServerSide>(side)]() -> std::shared_ptr<BaseProtocol> {
    if (auto server = weak.lock()) return server->accept();
    return std::make_shared<RefusedConnection>();
  };
  auto done = [link, side](std::exception_ptr error, std::shared_ptr<Server> server) {
    finish_open(link, error);
    if (!error) side->started(std::move(server));
  };
  if (!open.has_tcp()) {
    if (auto why = policy.check_unix("open_server", open.unix_path(), true)) return refuse_open(link, *why);
    if (unix_socket_is_live(loop.context(), open.unix_path())) {
      link->service().log_session_opened(*link->record());
      return fail_open(link, std::make_exception_ptr(std::system_error(
                                 EADDRINUSE, std::generic_category(), "a server already listens on " + open.unix_path())));
    }
    return loop.create_unix_server(factory, open.unix_path(), options, done);
  }
  std::vector<std::string> hosts;
  if (!open.tcp().host().empty() && open.tcp().host() != "*") hosts.push_back(open.tcp().host());
  const std::string what = "open_server on " + host_port(hosts.empty() ? "*" : hosts.front(), open.tcp().port());
  with_rule_names(loop, policy.listen_names(),
                  [&loop, &policy, factory, done, what, options = std::move(options), hosts = std::move(hosts),
                   port = static_cast<std::uint16_t>(open.tcp().port())](auto names) mutable {
                    options.check_local_address = policy_check(policy, AddressUse::listen, what, names);
                    loop.create_server(factory, std::move(hosts), port, std::move(options), done);
                  });
}

void open_subprocess(const std::shared_ptr<Link>& link, const v1::OpenSubprocess& open) {
  EventLoop& loop = link->service().loop();
  auto side = std::make_shared<SubprocessSide>(link);
  link->set_loop_side(side);
  SubprocessOptions options;
  if (!open.cwd().empty()) options.cwd = open.cwd();
  if (!open.env().empty()) {
    std::vector<std::string> env;
    for (const auto& [k, v] : open.env()) env.push_back(k + "=" + v);
    options.env = std::move(env);
  }
  link->service().log_session_opened(*link->record());
  auto done = [link](std::exception_ptr error, auto, auto) {
    if (error) fail_open(link, error);
  };
  auto factory = [side] { return side; };
  if (!open.shell().empty()) {
    loop.subprocess_shell(factory, open.shell(), options, done);
  } else {
    std::vector<std::string> args(open.argv().begin() + 1, open.argv().end());
    loop.subprocess_exec(factory, open.argv(0), args, options, done);
  }
}

void open_datagram_endpoint(const std::shared_ptr<Link>& link, const v1::OpenDatagramEndpoint& open) {
  EventLoop& loop = link->service().loop();
  const Policy& policy = link->service().options().policy;
  DatagramOptions options;
  if (open.has_local_addr()) options.local_addr = std::pair{open.local_addr().host(), static_cast<std::uint16_t>(open.local_addr().port())};
  if (open.has_remote_addr()) options.remote_addr = std::pair{open.remote_addr().host(), static_cast<std::uint16_t>(open.remote_addr().port())};
  options.reuse_port = open.reuse_port();
  options.allow_broadcast = open.allow_broadcast();
  // Binding is listening and sending is connecting, as far as the policy
  // goes; each sendto is checked too, against the names resolved now.
  auto rule_names = policy.listen_names();
  for (auto& name : policy.connect_names()) rule_names.push_back(std::move(name));
  auto side = std::make_shared<DatagramSide>(link);
  link->set_loop_side(side);
  with_rule_names(loop, std::move(rule_names), [link, side, &loop, &policy, options = std::move(options)](auto names) mutable {
    side->set_rule_names(names);
    if (options.local_addr) {
      options.check_local_address = policy_check(
          policy, AddressUse::listen,
          "open_datagram_endpoint on " + host_port(options.local_addr->first, options.local_addr->second), names);
    }
    if (options.remote_addr) {
      options.check_remote_address = policy_check(
          policy, AddressUse::connect,
          "open_datagram_endpoint to " + host_port(options.remote_addr->first, options.remote_addr->second), names);
    }
    loop.create_datagram_endpoint([side] { return side; }, std::move(options),
                                  [link](std::exception_ptr error, auto, auto) { finish_open(link, error); });
  });
}

}  // namespace

namespace {

/// write_buffer_high / write_buffer_low of an open message (0: default).
grpc::Status validate_buffer_limits(const std::string& message, std::uint32_t high, std::uint32_t low) {
  if (low != 0 && high == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message + ".write_buffer_low needs write_buffer_high");
  }
  if (low > high) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message + ".write_buffer_low exceeds write_buffer_high");
  }
  return grpc::Status::OK;
}

}  // namespace

grpc::Status validate_open(const v1::ClientMessage& message, const ServiceOptions& options) {
  using grpc::Status;
  using grpc::StatusCode;
  switch (message.kind_case()) {
    case v1::ClientMessage::kOpenConnection: {
      const auto& open = message.open_connection();
      if (open.has_tcp()) {
        if (open.tcp().host().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tcp.host is empty");
        if (open.tcp().port() == 0 || open.tcp().port() > 65535) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tcp.port must be 1 to 65535");
        }
      } else if (open.target_case() == v1::OpenConnection::kUnixPath) {
        if (open.unix_path().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.unix_path is empty");
        if (open.unix_path().find('\0') != std::string::npos) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_connection.unix_path holds a NUL byte (abstract sockets are not supported)");
        }
        if (open.tls().enabled()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tls: TLS needs tcp");
      } else {
        return Status(StatusCode::INVALID_ARGUMENT, "open_connection: set tcp or unix_path");
      }
      return validate_buffer_limits("open_connection", open.write_buffer_high(), open.write_buffer_low());
    }
    case v1::ClientMessage::kOpenSubprocess: {
      const auto& open = message.open_subprocess();
      if (open.argv().empty() == open.shell().empty()) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess: set exactly one of argv and shell");
      }
      if (!open.argv().empty() && open.argv(0).empty()) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.argv[0] (the program) is empty");
      }
      for (int i = 0; i < open.argv_size(); ++i) {
        if (open.argv(i).find('\0') != std::string::npos) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.argv[" + std::to_string(i) + "] holds a NUL byte");
        }
      }
      if (open.shell().find('\0') != std::string::npos || open.cwd().find('\0') != std::string::npos) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess: shell and cwd may not hold NUL bytes");
      }
      for (const auto& [name, value] : open.env()) {
        if (name.empty() || name.find('=') != std::string::npos || name.find('\0') != std::string::npos ||
            value.find('\0') != std::string::npos) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.env: '" + name +
                                                          "' is not a variable name (empty, or holds '=' or NUL), "
                                                          "or its value holds NUL");
        }
      }
      const bool shell = !open.shell().empty();
      if (auto why = options.policy.check_exec(shell ? std::string() : open.argv(0), shell)) {
        return Status(StatusCode::PERMISSION_DENIED, *why);
      }
      // The caller's environment replaces the child's: LD_PRELOAD and the
      // like would make any allowed program run any code.
      for (const auto& [name, value] : open.env()) {
        if (auto why = options.policy.check_env(name)) return Status(StatusCode::PERMISSION_DENIED, *why);
      }
      return Status::OK;
    }
    case v1::ClientMessage::kOpenDatagramEndpoint: {
      const auto& open = message.open_datagram_endpoint();
      if (!open.has_local_addr() && !open.has_remote_addr()) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_datagram_endpoint: set local_addr, remote_addr or both");
      }
      if (open.has_local_addr() && (open.local_addr().host().empty() || open.local_addr().port() > 65535)) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_datagram_endpoint.local_addr needs a host and a port 0 to 65535");
      }
      if (open.has_remote_addr() &&
          (open.remote_addr().host().empty() || open.remote_addr().port() == 0 || open.remote_addr().port() > 65535)) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_datagram_endpoint.remote_addr needs a host and a port 1 to 65535");
      }
      return Status::OK;
    }
    case v1::ClientMessage::kOpenServer: {
      const auto& open = message.open_server();
      if (open.has_tcp()) {
        if (open.tcp().port() > 65535) return Status(StatusCode::INVALID_ARGUMENT, "open_server.tcp.port must be 0 to 65535");
      } else if (open.target_case() == v1::OpenServer::kUnixPath) {
        if (open.unix_path().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_server.unix_path is empty");
        if (open.unix_path().find('\0') != std::string::npos) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_server.unix_path holds a NUL byte (abstract sockets are not supported)");
        }
        if (open.tls().enabled()) return Status(StatusCode::INVALID_ARGUMENT, "open_server.tls: TLS needs tcp");
      } else {
        return Status(StatusCode::INVALID_ARGUMENT, "open_server: set tcp or unix_path");
      }
      if (open.tls().enabled() && (open.tls().cert_pem().empty() || open.tls().key_pem().empty())) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_server.tls needs cert_pem and key_pem");
      }
      return validate_buffer_limits("open_server", open.write_buffer_high(), open.write_buffer_low());
    }
    case v1::ClientMessage::kCommand:
      return Status(StatusCode::INVALID_ARGUMENT,
                    "the first message must open the session (open_connection, open_server, open_datagram_endpoint "
                    "or open_subprocess), not a command");
    default:
      return Status(StatusCode::INVALID_ARGUMENT,
                    "empty message: set open_connection, open_server, open_datagram_endpoint or open_subprocess");
  }
}

void open_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& open) {
  // Whatever a request makes fail here (a CA or key OpenSSL will not take,
  // say) is that session's failed open, never an exception out of the loop.
  try {
    if (open.has_open_connection()) open_connection(link, open.open_connection());
    else if (open.has_open_server()) open_server(link, open.open_server());
    else if (open.has_open_datagram_endpoint()) open_datagram_endpoint(link, open.open_datagram_endpoint());
    else open_subprocess(link, open.open_subprocess());
  } catch (const std::exception&) {
    fail_open(link, std::current_exception());
  }
}

// ==== SessionReactor ============================================================

namespace {
constexpr std::string_view session_method = "/conduit.v1.Conduit/Session";
}  // namespace

SessionReactor::SessionReactor(ConduitService& service, grpc::CallbackServerContext* context)
    : service_(service), context_(context) {
  if (auto status = service.authenticate(*context); !status.ok()) {
    Finish(service.refuse(*context, session_method, status));
    return;
  }
  auto record = std::make_shared<SessionRecord>();
  record->id = service.next_session_id();
  record->peer = context->peer();
  link_ = std::make_shared<Link>(service, record);
  link_->attach(this);
  StartRead(&incoming_);
}

void SessionReactor::post_to_loop(std::function<void(LoopSide&)> fn) {
  asio::post(service_.loop().get_executor(), [link = link_, fn = std::move(fn)] {
    if (auto side = link->loop_side()) fn(*side);
  });
}

void SessionReactor::fail(grpc::Status status) {
  post_to_loop([](LoopSide& side) { side.abort(); });
  link_->finish(service_.refuse(*context_, session_method, std::move(status)));
}

void SessionReactor::OnReadDone(bool ok) {
  if (!ok) {
    // The client half-closed (or went away: OnCancel follows then).
    if (!opened_) {
      return link_->finish(service_.refuse(
          *context_, session_method,
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the stream ended before a message opened the session")));
    }
    post_to_loop([](LoopSide& side) { side.deliver_done_writing(); });
    return;
  }
  if (!opened_) {
    if (auto status = validate_open(incoming_, service_.options()); !status.ok()) {
      return link_->finish(service_.refuse(*context_, session_method, status));
    }
    auto& record = *link_->record();
    if (incoming_.has_open_connection()) {
      const auto& c = incoming_.open_connection();
      record.kind = "connection";
      record.target = c.has_tcp() ? std::string(c.tls().enabled() ? "tls://" : "tcp://") + c.tcp().host() + ":" +
                                        std::to_string(c.tcp().port())
                                  : "unix://" + c.unix_path();
    } else if (incoming_.has_open_server()) {
      const auto& o = incoming_.open_server();
      record.kind = "server";
      record.target = o.has_tcp() ? std::string(o.tls().enabled() ? "tls://" : "tcp://") +
                                        (o.tcp().host().empty() ? "*" : o.tcp().host()) + ":" + std::to_string(o.tcp().port())
                                  : "unix://" + o.unix_path();
    } else if (incoming_.has_open_datagram_endpoint()) {
      const auto& d = incoming_.open_datagram_endpoint();
      record.kind = "datagram";
      const auto& a = d.has_remote_addr() ? d.remote_addr() : d.local_addr();
      record.target = "udp://" + a.host() + ":" + std::to_string(a.port());
    } else {
      const auto& s = incoming_.open_subprocess();
      record.kind = "subprocess";
      record.target = s.shell().empty() ? s.argv(0) : "sh -c " + s.shell();
      if (s.shell().empty()) record.argv.assign(s.argv().begin(), s.argv().end());
      else record.argv = {"/bin/sh", "-c", s.shell()};
    }
    record.abort = [&service = service_, weak = std::weak_ptr<Link>(link_)](std::string reason) {
      asio::post(service.loop().get_executor(), [weak, reason = std::move(reason)] {
        if (auto link = weak.lock()) {
          link->set_abort_reason(reason);
          if (auto side = link->loop_side()) side->abort();
        }
      });
    };
    if (auto status = service_.add_session(link_->record()); !status.ok()) {
      return link_->finish(service_.refuse(*context_, session_method, status));
    }
    opened_ = true;
    asio::post(service_.loop().get_executor(), [link = link_, open = incoming_] { open_session(link, open); });
  } else if (incoming_.has_command()) {
    link_->record()->touch();
    post_to_loop([command = incoming_.command()](LoopSide& side) { side.deliver(command); });
  } else {
    return fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a session opens once: only commands may follow"));
  }
  StartRead(&incoming_);
}

void SessionReactor::OnWriteDone(bool ok) { link_->on_write_done(ok); }

void SessionReactor::OnCancel() {
  if (link_) post_to_loop([](LoopSide& side) { side.abort(); });
}

void SessionReactor::OnDone() {
  if (link_) {
    link_->detach();
    if (opened_) {
      service_.remove_session(link_->record()->id);
      // If the transport still runs (the client vanished), end it.
      post_to_loop([](LoopSide& side) { side.abort(); });
    }
  }
  delete this;
}

}  // namespace conduit::service
