#include "stream_transport.hpp"

#include "conduit/server.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>

#include <sys/sendfile.h>
#include <unistd.h>

#include <stdexcept>
#include <system_error>

namespace conduit {

namespace {

std::exception_ptr make_system_error(const boost::system::error_code& ec, const char* what) {
  return std::make_exception_ptr(std::system_error(ec, what));
}

template <class Socket>
std::optional<SocketAddress> endpoint_of(const Socket& socket, bool remote) {
  boost::system::error_code ec;
  auto ep = remote ? socket.remote_endpoint(ec) : socket.local_endpoint(ec);
  if (ec) return std::nullopt;
  return SocketAddress(ep);
}

}  // namespace

template <class Socket>
StreamTransport<Socket>::StreamTransport(EventLoop& loop, Socket socket, std::shared_ptr<Server> server)
    : loop_(loop), socket_(std::move(socket)), server_(std::move(server)) {
  socket_.non_blocking(true);
  if constexpr (std::is_same_v<Socket, asio::ip::tcp::socket>) {
    // asyncio sets TCP_NODELAY on every TCP transport (SPEC S19).
    boost::system::error_code ignored;
    socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
  }
  peername_ = endpoint_of(socket_, true);
  sockname_ = endpoint_of(socket_, false);
  if (server_) detail::ServerConnections::attach(*server_, this);
  detail::LoopInternals::track(loop_, this);
}

template <class Socket>
StreamTransport<Socket>::~StreamTransport() {
  if (state_ != State::closed) {
    // Only reachable when nothing references an open transport: reading
    // paused, nothing to write, and every owner gone (SPEC S20).
    loop_.log(LogLevel::warning, "unclosed transport " +
                                     (peername_ ? peername_->to_string() : std::string("<unconnected>")) +
                                     ": closing its socket");
  }
  if (server_) detail::ServerConnections::detach(*server_, this);
  if (state_ != State::closed) detail::LoopInternals::untrack(loop_, this);
}

template <class Socket>
void StreamTransport<Socket>::on_loop_destroyed() {
  const auto keep = self();  // the protocol let go below may hold the last reference
  state_ = State::closed;
  sendfile_.reset();  // no callbacks any more
  release();
}

template <class Socket>
void StreamTransport<Socket>::release() {
  if (sendfile_ && state_ == State::closed && protocol_) {
    finish_sendfile(std::make_exception_ptr(
        std::system_error(std::make_error_code(std::errc::connection_aborted), "sendfile: the connection was lost")));
  }
  boost::system::error_code ignored;
  socket_.close(ignored);  // completes any pending wait with operation_aborted
  if (server_) {
    detail::ServerConnections::detach(*server_, this);
    server_.reset();
  }
  // Break the transport <-> protocol cycle, as asyncio does; last, since
  // the protocol may hold the last reference to this transport.
  protocol_.reset();
}

template <class Socket>
std::shared_ptr<StreamTransport<Socket>> StreamTransport<Socket>::self() {
  // Both pointers name this object; the aliasing constructor avoids a
  // dynamic_pointer_cast through the virtual base.
  return std::shared_ptr<StreamTransport>(shared_from_this(), this);
}

template <class Socket>
void StreamTransport<Socket>::start(std::shared_ptr<BaseProtocol> protocol) {
  set_protocol(std::move(protocol));
  asio::post(socket_.get_executor(), [this, keep = self()] {
    if (state_ == State::closed) return;
    protocol_.connection_made();
    if (is_reading()) reads_.start();
  });
}

template <class Socket>
std::pair<Socket, std::shared_ptr<Server>> StreamTransport<Socket>::hand_over() {
  if (state_ != State::open) throw std::logic_error("start_tls: the transport is closing");
  if (!writer_.empty()) {
    throw std::logic_error("start_tls: the transport still has " + std::to_string(writer_.size()) + " bytes to write");
  }
  reads_.stop();
  if (writer_.armed()) socket_.cancel();
  state_ = State::closed;
  detail::LoopInternals::untrack(loop_, this);
  protocol_.reset();
  if (server_) detail::ServerConnections::detach(*server_, this);
  return {std::move(socket_), std::move(server_)};
}

template <class Socket>
void StreamTransport<Socket>::set_protocol(std::shared_ptr<BaseProtocol> protocol) {
  protocol_.set(std::move(protocol));
}

// ---- reading --------------------------------------------------------------

template <class Socket>
auto StreamTransport<Socket>::read_once() -> ReadOutcome {
  return protocol_.is_buffered() ? read_into_protocol_buffer() : read_into_loop_buffer();
}

template <class Socket>
void StreamTransport<Socket>::on_read_wait_error(const boost::system::error_code& ec) {
  fatal_error(ec, "Fatal read error on socket transport");
}

template <class Socket>
auto StreamTransport<Socket>::read_failed(const boost::system::error_code& ec) -> std::optional<ReadOutcome> {
  if (!ec) return std::nullopt;
  if (ec == asio::error::would_block || ec == asio::error::interrupted) return ReadOutcome::would_block;
  if (ec == asio::error::eof) return on_eof();
  fatal_error(ec, "Fatal read error on socket transport");
  return ReadOutcome::stopped;
}

template <class Socket>
auto StreamTransport<Socket>::read_into_loop_buffer() -> ReadOutcome {
  const std::span<std::byte> buffer = detail::LoopInternals::read_buffer(loop_);
  boost::system::error_code ec;
  const std::size_t n = socket_.read_some(asio::buffer(buffer.data(), buffer.size()), ec);
  if (auto outcome = read_failed(ec)) return *outcome;
  return protocol_.data_received(buffer.first(n)) ? ReadOutcome::data : ReadOutcome::stopped;
}

template <class Socket>
auto StreamTransport<Socket>::read_into_protocol_buffer() -> ReadOutcome {
  const std::span<std::byte> buffer = protocol_.get_buffer(EventLoop::read_size);
  if (buffer.empty()) return ReadOutcome::stopped;
  boost::system::error_code ec;
  const std::size_t n = socket_.read_some(asio::buffer(buffer.data(), buffer.size()), ec);
  if (auto outcome = read_failed(ec)) return *outcome;
  return protocol_.buffer_updated(n) ? ReadOutcome::data : ReadOutcome::stopped;
}

template <class Socket>
auto StreamTransport<Socket>::on_eof() -> ReadOutcome {
  // Leave the reading state before calling out, so nothing can read again
  // even if the protocol pauses and resumes (SPEC S6).
  read_state_ = ReadState::at_eof;
  const std::optional<bool> keep_open = protocol_.eof_received();
  if (keep_open == false) close();
  return ReadOutcome::stopped;
}

template <class Socket>
void StreamTransport<Socket>::pause_reading() {
  if (!is_reading()) return;
  read_state_ = ReadState::paused;
  reads_.stop();
}

template <class Socket>
void StreamTransport<Socket>::resume_reading() {
  if (state_ != State::open || read_state_ != ReadState::paused) return;
  read_state_ = ReadState::reading;
  reads_.start();
}

// ---- writing --------------------------------------------------------------

template <class Socket>
void StreamTransport<Socket>::check_writable(const char* call) const {
  if (eof_requested_) throw std::logic_error(std::string("Cannot call ") + call + "() after write_eof()");
  if (sendfile_) throw std::logic_error("unable to write; sendfile is in progress");
}

template <class Socket>
void StreamTransport<Socket>::write(std::span<const std::byte> data) {
  check_writable("write");
  if (data.empty()) return;
  if (state_ >= State::lost) return late_writes_.drop(loop_, "socket.send() raised exception.");
  writer_.write({&data, 1});
}

template <class Socket>
void StreamTransport<Socket>::writelines(std::span<const std::span<const std::byte>> buffers) {
  check_writable("writelines");
  std::size_t total = 0;
  for (auto b : buffers) total += b.size();
  if (total == 0) return;
  if (state_ >= State::lost) return late_writes_.drop(loop_, "socket.send() raised exception.");
  writer_.write(buffers);
}

template <class Socket>
void StreamTransport<Socket>::on_write_error(const boost::system::error_code& ec) {
  fatal_error(ec, "Fatal write error on socket transport");
}

template <class Socket>
void StreamTransport<Socket>::on_write_drained() {
  if (sendfile_) return sendfile_step();  // it was waiting for the buffer to drain
  if (state_ == State::closing)
    post_connection_lost(nullptr);
  else if (eof_requested_)
    shutdown_write();
}

template <class Socket>
void StreamTransport<Socket>::write_eof() {
  if (state_ != State::open || eof_requested_) return;
  eof_requested_ = true;
  if (writer_.empty()) shutdown_write();
}

template <class Socket>
void StreamTransport<Socket>::shutdown_write() {
  boost::system::error_code ec;
  socket_.shutdown(Socket::shutdown_send, ec);
  // ENOTCONN: the peer already reset the connection; the read side reports it.
  if (ec && ec != asio::error::not_connected) fatal_error(ec, "Fatal error on shutdown(SHUT_WR)");
}

template <class Socket>
void StreamTransport<Socket>::set_write_buffer_limits(std::optional<std::int64_t> high,
                                                      std::optional<std::int64_t> low) {
  writer_.set_limits(high, low);
}

// ---- closing --------------------------------------------------------------

template <class Socket>
void StreamTransport<Socket>::close() {
  if (state_ != State::open) return;
  state_ = State::closing;
  reads_.stop();
  if (writer_.empty()) post_connection_lost(nullptr);
}

template <class Socket>
void StreamTransport<Socket>::abort() {
  force_close(nullptr);
}

template <class Socket>
void StreamTransport<Socket>::fatal_error(const boost::system::error_code& ec, const char* message) {
  // Like asyncio, OS errors are the peer's doing and go to connection_lost
  // only; the exception handler hears of them at debug level (SPEC S14).
  loop_.log(LogLevel::debug, std::string(message) + ": " + ec.message());
  force_close(make_system_error(ec, message));
}

template <class Socket>
void StreamTransport<Socket>::force_close(std::exception_ptr exc) {
  if (state_ >= State::lost) return;
  reads_.stop();
  post_connection_lost(std::move(exc));
}

template <class Socket>
void StreamTransport<Socket>::post_connection_lost(std::exception_ptr exc) {
  state_ = State::lost;
  writer_.stop();
  asio::post(socket_.get_executor(), [this, keep = self(), exc = std::move(exc)] { call_connection_lost(exc); });
}

template <class Socket>
void StreamTransport<Socket>::call_connection_lost(std::exception_ptr exc) {
  state_ = State::closed;
  detail::LoopInternals::untrack(loop_, this);
  protocol_.connection_lost(exc);
  release();
}

template <class Socket>
std::any StreamTransport<Socket>::extra_info(std::string_view name) const {
  if (name == "peername" && peername_) return *peername_;
  if (name == "sockname" && sockname_) return *sockname_;
  if (name == "socket" && state_ != State::closed)
    return static_cast<int>(const_cast<Socket&>(socket_).native_handle());
  return {};
}

// ---- sendfile ---------------------------------------------------------------

template <class Socket>
void StreamTransport<Socket>::send_file(int file, std::uint64_t offset, std::optional<std::uint64_t> count,
                                        std::function<void(std::exception_ptr, std::uint64_t)> done) {
  if (state_ != State::open || eof_requested_) {
    throw std::logic_error("sendfile: the transport is closing");
  }
  if (sendfile_) throw std::logic_error("sendfile: another sendfile is in progress");
  const bool was_reading = is_reading();
  pause_reading();  // as asyncio: nothing arrives while the file goes out
  sendfile_ = SendfileJob{file, offset, count, 0, was_reading, std::move(done)};
  if (writer_.empty()) {
    asio::post(socket_.get_executor(), [this, keep = self()] {
      if (sendfile_) sendfile_step();
    });
  }
}

template <class Socket>
void StreamTransport<Socket>::sendfile_step() {
  SendfileJob& job = *sendfile_;
  const int sock = socket_.native_handle();
  for (;;) {
    if (job.remaining && *job.remaining == 0) return finish_sendfile(nullptr);
    const std::size_t chunk =
        static_cast<std::size_t>(std::min<std::uint64_t>(job.remaining.value_or(1u << 30), 1u << 30));
    off_t position = static_cast<off_t>(job.offset + job.sent);
    const ssize_t n = ::sendfile(sock, job.file, &position, chunk);
    if (n > 0) {
      job.sent += static_cast<std::uint64_t>(n);
      if (job.remaining) *job.remaining -= static_cast<std::uint64_t>(n);
      continue;
    }
    if (n == 0) return finish_sendfile(nullptr);  // end of file
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      socket_.async_wait(Socket::wait_write, [this, keep = self()](const boost::system::error_code& ec) {
        if (!sendfile_) return;
        if (ec) {
          return finish_sendfile(std::make_exception_ptr(std::system_error(ec, "sendfile: waiting for the socket")));
        }
        sendfile_step();
      });
      return;
    }
    const int error = errno;
    if (job.sent == 0 && (error == EINVAL || error == ENOSYS || error == ESPIPE || error == EOVERFLOW)) {
      return finish_sendfile(std::make_exception_ptr(std::system_error(
          std::make_error_code(std::errc::operation_not_supported), "sendfile(2) cannot read this file")));
    }
    return finish_sendfile(std::make_exception_ptr(std::system_error(error, std::generic_category(), "sendfile")));
  }
}

template <class Socket>
void StreamTransport<Socket>::finish_sendfile(std::exception_ptr error) {
  SendfileJob job = std::move(*sendfile_);
  sendfile_.reset();
  // Like asyncio, leave the file's position after what was sent.
  ::lseek(job.file, static_cast<off_t>(job.offset + job.sent), SEEK_SET);
  if (job.resume_reading) resume_reading();
  asio::post(socket_.get_executor(), [done = std::move(job.done), error, sent = job.sent] { done(error, sent); });
}

template class StreamTransport<asio::ip::tcp::socket>;
template class StreamTransport<asio::local::stream_protocol::socket>;

}  // namespace conduit
