#include "pipe_transport.hpp"

#include "completion.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>

#include <sys/stat.h>

#include <stdexcept>
#include <system_error>

namespace conduit {

namespace {

std::exception_ptr make_system_error(const boost::system::error_code& ec, const char* what) {
  return std::make_exception_ptr(std::system_error(ec, what));
}

}  // namespace

namespace detail {

PipeKind check_pipe(int fd, const char* which) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw std::system_error(errno, std::generic_category(), std::string(which) + ": fstat");
  if (S_ISFIFO(st.st_mode)) return PipeKind::fifo;
  if (S_ISSOCK(st.st_mode)) return PipeKind::socket;
  if (S_ISCHR(st.st_mode)) return PipeKind::character_device;
  throw std::invalid_argument(std::string(which) +
                              ": pipe transports are for pipes, FIFOs, sockets and character devices only");
}

}  // namespace detail

// ==== PipeTransport ===========================================================

PipeTransport::PipeTransport(EventLoop& loop, asio::posix::stream_descriptor pipe, Direction direction,
                             detail::PipeKind kind)
    : loop_(loop),
      pipe_(std::move(pipe)),
      direction_(direction),
      kind_(kind),
      protocol_(loop, *this,
                direction == Direction::read ? detail::ProtocolGuard::stream
                                             : detail::ProtocolGuard::stream | detail::ProtocolGuard::buffered,
                direction == Direction::read ? "a read pipe transport" : "a write pipe transport",
                [this](std::exception_ptr exc) { close_with(exc); }) {
  pipe_.non_blocking(true);
  detail::LoopInternals::track(loop_, this);
}

PipeTransport::~PipeTransport() {
  if (state_ != State::closed) {
    loop_.log(LogLevel::warning, direction_ == Direction::read ? "unclosed read pipe transport: closing it"
                                                               : "unclosed write pipe transport: closing it");
    detail::LoopInternals::untrack(loop_, this);
  }
}

void PipeTransport::on_loop_destroyed() {
  const auto keep = self();  // the protocol let go below may hold the last reference
  state_ = State::closed;
  boost::system::error_code ignored;
  pipe_.close(ignored);
  protocol_.reset();
}

std::shared_ptr<PipeTransport> PipeTransport::self() {
  return std::shared_ptr<PipeTransport>(shared_from_this(), this);
}

void PipeTransport::start(std::shared_ptr<BaseProtocol> protocol) {
  set_protocol(std::move(protocol));
  asio::post(pipe_.get_executor(), [this, keep = self()] {
    if (state_ == State::closed) return;
    protocol_.connection_made();
    if (direction_ == Direction::write)
      watch_reader();
    else if (is_reading())
      reads_.start();
  });
}

// ---- the read end -------------------------------------------------------------

detail::ReadOutcome PipeTransport::read_once() {
  const std::span<std::byte> buffer = detail::LoopInternals::read_buffer(loop_);
  boost::system::error_code ec;
  const std::size_t n = pipe_.read_some(asio::buffer(buffer.data(), buffer.size()), ec);
  if (ec == asio::error::would_block || ec == asio::error::interrupted) return detail::ReadOutcome::would_block;
  if (ec == asio::error::eof) {
    // The writer is gone: eof_received, then connection_lost, whatever
    // eof_received returns (SPEC P2).
    state_ = State::lost;
    reads_.stop();
    asio::post(pipe_.get_executor(), [this, keep = self()] {
      protocol_.eof_received();  // a failure is reported; the pipe is done either way
      call_connection_lost(nullptr);
    });
    return detail::ReadOutcome::stopped;
  }
  if (ec) {
    fatal_error(ec);
    return detail::ReadOutcome::stopped;
  }
  return protocol_.data_received(buffer.first(n)) ? detail::ReadOutcome::data : detail::ReadOutcome::stopped;
}

void PipeTransport::pause_reading() {
  if (!is_reading()) return;
  paused_ = true;
  reads_.stop();
}

void PipeTransport::resume_reading() {
  if (direction_ != Direction::read || state_ != State::open || !paused_) return;
  paused_ = false;
  reads_.start();
}

// ---- the write end ------------------------------------------------------------

void PipeTransport::watch_reader() {
  // A FIFO's or socket's write end turns "readable" (EPOLLERR/EPOLLHUP) when
  // the reader goes away; a character device has no such signal.
  if (kind_ == detail::PipeKind::character_device || state_ >= State::lost) return;
  pipe_.async_wait(
      asio::posix::stream_descriptor::wait_read,
      asio::bind_cancellation_slot(watch_cancel_.slot(), [this, keep = self()](const boost::system::error_code& ec) {
        if (ec == asio::error::operation_aborted || state_ >= State::lost) return;
        if (writer_.empty()) return close_with(nullptr);
        close_with(make_system_error(boost::system::errc::make_error_code(boost::system::errc::broken_pipe),
                                     "the pipe's reader went away with data still buffered"));
      }));
}

void PipeTransport::write_buffers(const char* call, std::span<const std::span<const std::byte>> buffers) {
  if (direction_ == Direction::read) throw std::logic_error(std::string(call) + ": this is the read end of a pipe");
  std::size_t total = 0;
  for (auto b : buffers) total += b.size();
  if (total == 0) return;
  // After close() or write_eof() a pipe takes nothing more (asyncio).
  if (state_ != State::open) {
    return late_writes_.drop(loop_, "pipe closed by peer or os.write(pipe, data) raised exception.");
  }
  writer_.write(buffers);
}

void PipeTransport::on_write_drained() {
  if (state_ == State::closing) close_with(nullptr);
}

void PipeTransport::set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) {
  if (direction_ == Direction::write) writer_.set_limits(high, low);
}

void PipeTransport::write_eof() {
  if (direction_ == Direction::read) throw std::logic_error("write_eof: this is the read end of a pipe");
  if (state_ != State::open) return;
  state_ = State::closing;
  if (writer_.empty()) close_with(nullptr);
}

// ---- ending ---------------------------------------------------------------------

void PipeTransport::close() {
  if (direction_ == Direction::write)
    write_eof();  // flush first
  else
    close_with(nullptr);
}

void PipeTransport::fatal_error(const boost::system::error_code& ec) {
  if (direction_ == Direction::write) {
    // OS errors (EPIPE above all) are the reader's doing: connection_lost
    // only, as asyncio does.
    loop_.log(LogLevel::debug, "Fatal write error on pipe transport: " + ec.message());
    return close_with(make_system_error(ec, "Fatal write error on pipe transport"));
  }
  auto exc = make_system_error(ec, "Fatal read error on pipe transport");
  // EIO is what a pty's reader gets when the other side closes: routine.
  if (ec == boost::system::errc::io_error) {
    loop_.log(LogLevel::debug, "Fatal read error on pipe transport: " + ec.message());
  } else {
    loop_.call_exception_handler({"Fatal read error on pipe transport", exc, shared_from_this(), protocol_.get()});
  }
  close_with(exc);
}

void PipeTransport::close_with(std::exception_ptr exc) {
  if (state_ >= State::lost) return;
  state_ = State::lost;
  reads_.stop();
  writer_.stop();
  watch_cancel_.emit(asio::cancellation_type::all);
  asio::post(pipe_.get_executor(), [this, keep = self(), exc] { call_connection_lost(exc); });
}

void PipeTransport::call_connection_lost(std::exception_ptr exc) {
  state_ = State::closed;
  detail::LoopInternals::untrack(loop_, this);
  protocol_.connection_lost(exc);
  boost::system::error_code ignored;
  pipe_.close(ignored);
  protocol_.reset();
}

std::any PipeTransport::extra_info(std::string_view name) const {
  if (name == "pipe" && state_ != State::closed) {
    return static_cast<int>(const_cast<asio::posix::stream_descriptor&>(pipe_).native_handle());
  }
  return {};
}

// ==== the loop's methods ======================================================

namespace {

/// connect_read_pipe / connect_write_pipe: check `fd` and the protocol,
/// then start a pipe transport that owns `fd`.
std::shared_ptr<Transport> connect_pipe(EventLoop& loop, const ProtocolFactory& factory, int fd,
                                        PipeTransport::Direction direction, std::shared_ptr<BaseProtocol>& protocol) {
  const bool read = direction == PipeTransport::Direction::read;
  const char* call = read ? "connect_read_pipe" : "connect_write_pipe";
  const auto kind = detail::check_pipe(fd, call);
  protocol = factory();
  const bool stream = dynamic_cast<Protocol*>(protocol.get()) != nullptr;
  if (!stream && (read || !dynamic_cast<BufferedProtocol*>(protocol.get()))) {
    throw std::invalid_argument(std::string(call) + ": the protocol factory must make a Protocol" +
                                (read ? "" : " or a BufferedProtocol"));
  }
  auto pipe =
      std::make_shared<PipeTransport>(loop, asio::posix::stream_descriptor(loop.context(), fd), direction, kind);
  pipe->start(protocol);
  return pipe;
}

void complete_pipe(EventLoop& loop, const ProtocolFactory& factory, int fd, PipeTransport::Direction direction,
                   detail::ConnectionHandler handler) {
  std::shared_ptr<Transport> transport;
  std::shared_ptr<BaseProtocol> protocol;
  std::exception_ptr error;
  try {
    transport = connect_pipe(loop, factory, fd, direction, protocol);
  } catch (...) {
    error = std::current_exception();
    protocol.reset();
  }
  detail::post_completion(loop, std::move(handler), error, std::move(transport), std::move(protocol));
}

}  // namespace

void EventLoop::connect_read_pipe_impl(ProtocolFactory factory, int fd, detail::ConnectionHandler handler) {
  complete_pipe(*this, factory, fd, PipeTransport::Direction::read, std::move(handler));
}

void EventLoop::connect_write_pipe_impl(ProtocolFactory factory, int fd, detail::ConnectionHandler handler) {
  complete_pipe(*this, factory, fd, PipeTransport::Direction::write, std::move(handler));
}

}  // namespace conduit
