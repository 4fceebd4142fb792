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

constexpr std::size_t log_threshold_for_connlost_writes = 5;

std::exception_ptr make_system_error(const boost::system::error_code& ec, const char* what) {
  return std::make_exception_ptr(std::system_error(ec, what));
}

void connection_made(BaseProtocol& protocol, const std::shared_ptr<Transport>& transport) {
  if (auto* p = dynamic_cast<Protocol*>(&protocol)) p->connection_made(transport);
  else if (auto* b = dynamic_cast<BufferedProtocol*>(&protocol)) b->connection_made(transport);
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

// ==== ReadPipeTransport ======================================================

ReadPipeTransport::ReadPipeTransport(EventLoop& loop, asio::posix::stream_descriptor pipe)
    : loop_(loop), pipe_(std::move(pipe)) {
  pipe_.non_blocking(true);
  loop_.track(this);
}

ReadPipeTransport::~ReadPipeTransport() {
  if (state_ != State::closed) {
    loop_.log(LogLevel::warning, "unclosed read pipe transport: closing it");
    loop_.untrack(this);
  }
}

void ReadPipeTransport::on_loop_destroyed() {
  state_ = State::closed;
  boost::system::error_code ignored;
  pipe_.close(ignored);
  protocol_.reset();
  stream_protocol_ = nullptr;
}

std::shared_ptr<ReadPipeTransport> ReadPipeTransport::self() {
  return std::shared_ptr<ReadPipeTransport>(shared_from_this(), this);
}

void ReadPipeTransport::start(std::shared_ptr<Protocol> protocol) {
  set_protocol(std::move(protocol));
  asio::post(pipe_.get_executor(), [this, keep = self()] {
    if (state_ == State::closed) return;
    try {
      stream_protocol_->connection_made(keep);
    } catch (...) {
      loop_.call_exception_handler({"Exception in callback protocol.connection_made()", std::current_exception(),
                                    shared_from_this(), protocol_});
    }
    if (is_reading()) reads_.start();
  });
}

void ReadPipeTransport::set_protocol(std::shared_ptr<BaseProtocol> protocol) {
  auto* typed = dynamic_cast<Protocol*>(protocol.get());
  if (!typed) throw std::invalid_argument("set_protocol: a read pipe transport needs a Protocol");
  protocol_ = std::move(protocol);
  stream_protocol_ = typed;
}

detail::ReadOutcome ReadPipeTransport::read_once() {
  std::span<std::byte> buffer = loop_.read_buffer();
  boost::system::error_code ec;
  const std::size_t n = pipe_.read_some(asio::buffer(buffer.data(), buffer.size()), ec);
  if (ec == asio::error::would_block || ec == asio::error::interrupted) return detail::ReadOutcome::would_block;
  if (ec == asio::error::eof) {
    // The writer is gone: eof_received, then connection_lost, whatever
    // eof_received returns (SPEC P2).
    state_ = State::lost;
    reads_.stop();
    asio::post(pipe_.get_executor(), [this, keep = self()] {
      try {
        stream_protocol_->eof_received();
      } catch (...) {
        loop_.call_exception_handler({"Exception in callback protocol.eof_received()", std::current_exception(),
                                      shared_from_this(), protocol_});
      }
      call_connection_lost(nullptr);
    });
    return detail::ReadOutcome::stopped;
  }
  if (ec) {
    fatal_error(ec);
    return detail::ReadOutcome::stopped;
  }
  try {
    stream_protocol_->data_received(buffer.first(n));
  } catch (...) {
    auto exc = std::current_exception();
    loop_.call_exception_handler({"Fatal error: protocol.data_received() call failed.", exc, shared_from_this(), protocol_});
    close_with(exc);
    return detail::ReadOutcome::stopped;
  }
  return detail::ReadOutcome::data;
}

void ReadPipeTransport::pause_reading() {
  if (!is_reading()) return;
  paused_ = true;
  reads_.stop();
}

void ReadPipeTransport::resume_reading() {
  if (state_ != State::open || !paused_) return;
  paused_ = false;
  reads_.start();
}

void ReadPipeTransport::write(std::span<const std::byte>) {
  throw std::logic_error("write: this is the read end of a pipe");
}

void ReadPipeTransport::writelines(std::span<const std::span<const std::byte>>) {
  throw std::logic_error("writelines: this is the read end of a pipe");
}

void ReadPipeTransport::write_eof() {
  throw std::logic_error("write_eof: this is the read end of a pipe");
}

void ReadPipeTransport::fatal_error(const boost::system::error_code& ec) {
  auto exc = make_system_error(ec, "Fatal read error on pipe transport");
  // EIO is what a pty's reader gets when the other side closes: routine.
  if (ec == boost::system::errc::io_error) {
    loop_.log(LogLevel::debug, "Fatal read error on pipe transport: " + ec.message());
  } else {
    loop_.call_exception_handler({"Fatal read error on pipe transport", exc, shared_from_this(), protocol_});
  }
  close_with(exc);
}

void ReadPipeTransport::close() { close_with(nullptr); }

void ReadPipeTransport::close_with(std::exception_ptr exc) {
  if (state_ != State::open) return;
  state_ = State::lost;
  reads_.stop();
  asio::post(pipe_.get_executor(), [this, keep = self(), exc] { call_connection_lost(exc); });
}

void ReadPipeTransport::call_connection_lost(std::exception_ptr exc) {
  state_ = State::closed;
  loop_.untrack(this);
  try {
    protocol_->connection_lost(exc);
  } catch (...) {
    loop_.call_exception_handler({"Exception in callback protocol.connection_lost()", std::current_exception(),
                                  shared_from_this(), protocol_});
  }
  boost::system::error_code ignored;
  pipe_.close(ignored);
  protocol_.reset();
  stream_protocol_ = nullptr;
}

std::any ReadPipeTransport::extra_info(std::string_view name) const {
  if (name == "pipe" && state_ != State::closed) {
    return static_cast<int>(const_cast<asio::posix::stream_descriptor&>(pipe_).native_handle());
  }
  return {};
}

// ==== WritePipeTransport =====================================================

WritePipeTransport::WritePipeTransport(EventLoop& loop, asio::posix::stream_descriptor pipe, detail::PipeKind kind)
    : loop_(loop), pipe_(std::move(pipe)), kind_(kind) {
  pipe_.non_blocking(true);
  loop_.track(this);
}

WritePipeTransport::~WritePipeTransport() {
  if (state_ != State::closed) {
    loop_.log(LogLevel::warning, "unclosed write pipe transport: closing it");
    loop_.untrack(this);
  }
}

void WritePipeTransport::on_loop_destroyed() {
  state_ = State::closed;
  boost::system::error_code ignored;
  pipe_.close(ignored);
  protocol_.reset();
}

std::shared_ptr<WritePipeTransport> WritePipeTransport::self() {
  return std::shared_ptr<WritePipeTransport>(shared_from_this(), this);
}

void WritePipeTransport::start(std::shared_ptr<BaseProtocol> protocol) {
  set_protocol(std::move(protocol));
  asio::post(pipe_.get_executor(), [this, keep = self()] {
    if (state_ == State::closed) return;
    try {
      connection_made(*protocol_, keep);
    } catch (...) {
      loop_.call_exception_handler({"Exception in callback protocol.connection_made()", std::current_exception(),
                                    shared_from_this(), protocol_});
    }
    watch_reader();
  });
}

void WritePipeTransport::set_protocol(std::shared_ptr<BaseProtocol> protocol) {
  if (!dynamic_cast<Protocol*>(protocol.get()) && !dynamic_cast<BufferedProtocol*>(protocol.get())) {
    throw std::invalid_argument("set_protocol: a write pipe transport needs a Protocol or a BufferedProtocol");
  }
  protocol_ = std::move(protocol);
}

void WritePipeTransport::watch_reader() {
  // A FIFO's or socket's write end turns "readable" (EPOLLERR/EPOLLHUP) when
  // the reader goes away; a character device has no such signal.
  if (kind_ == detail::PipeKind::character_device || state_ >= State::lost) return;
  pipe_.async_wait(asio::posix::stream_descriptor::wait_read,
                   asio::bind_cancellation_slot(watch_cancel_.slot(),
                                                [this, keep = self()](const boost::system::error_code& ec) {
                                                  if (ec == asio::error::operation_aborted || state_ >= State::lost) return;
                                                  if (buffer_.empty()) return close_with(nullptr);
                                                  close_with(make_system_error(
                                                      boost::system::errc::make_error_code(boost::system::errc::broken_pipe),
                                                      "the pipe's reader went away with data still buffered"));
                                                }));
}

void WritePipeTransport::write(std::span<const std::byte> data) {
  if (data.empty()) return;
  buffer_and_write({&data, 1});
}

void WritePipeTransport::writelines(std::span<const std::span<const std::byte>> buffers) {
  buffer_and_write(buffers);
}

void WritePipeTransport::buffer_and_write(std::span<const std::span<const std::byte>> buffers) {
  std::size_t total = 0;
  for (auto b : buffers) total += b.size();
  if (total == 0) return;
  if (state_ != State::open) {
    // After close() or write_eof() a pipe takes nothing more (asyncio).
    if (++writes_after_close_ >= log_threshold_for_connlost_writes) {
      loop_.log(LogLevel::warning, "pipe closed by peer or os.write(pipe, data) raised exception.");
    }
    return;
  }
  std::size_t written = 0;
  if (buffer_.empty()) {
    std::array<asio::const_buffer, WriteBuffer::max_gather> iov;
    std::size_t count = 0;
    for (auto b : buffers) {
      if (count == iov.size()) break;
      if (!b.empty()) iov[count++] = asio::const_buffer(b.data(), b.size());
    }
    boost::system::error_code ec;
    written = pipe_.write_some(std::span(iov.data(), count), ec);
    if (ec == asio::error::would_block || ec == asio::error::interrupted) {
      written = 0;
    } else if (ec) {
      return fatal_error(ec);
    }
  }
  for (auto b : buffers) {
    const std::size_t skip = std::min(written, b.size());
    written -= skip;
    buffer_.append(b.subspan(skip));
  }
  if (buffer_.empty()) return;
  arm_write();
  if (flow_.should_pause(buffer_.size())) {
    try {
      protocol_->pause_writing();
    } catch (...) {
      loop_.call_exception_handler({"protocol.pause_writing() failed", std::current_exception(), shared_from_this(), protocol_});
    }
  }
}

void WritePipeTransport::arm_write() {
  if (write_armed_) return;
  write_armed_ = true;
  pipe_.async_wait(asio::posix::stream_descriptor::wait_write,
                   [this, keep = self()](const boost::system::error_code& ec) { on_writable(ec); });
}

void WritePipeTransport::on_writable(const boost::system::error_code& ec) {
  write_armed_ = false;
  if (state_ >= State::lost || buffer_.empty() || ec == asio::error::operation_aborted) return;
  if (ec) return fatal_error(ec);
  boost::system::error_code write_ec;
  const std::size_t n = pipe_.write_some(buffer_.gather(), write_ec);
  if (write_ec == asio::error::would_block || write_ec == asio::error::interrupted) return arm_write();
  if (write_ec) return fatal_error(write_ec);
  buffer_.consume(n);
  if (flow_.should_resume(buffer_.size())) {
    try {
      protocol_->resume_writing();
    } catch (...) {
      loop_.call_exception_handler({"protocol.resume_writing() failed", std::current_exception(), shared_from_this(), protocol_});
    }
    if (state_ >= State::lost) return;
  }
  if (!buffer_.empty()) return arm_write();
  if (state_ == State::closing) close_with(nullptr);
}

void WritePipeTransport::set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) {
  flow_.set_limits(high, low);
  if (flow_.should_pause(buffer_.size())) {
    try {
      protocol_->pause_writing();
    } catch (...) {
      loop_.call_exception_handler({"protocol.pause_writing() failed", std::current_exception(), shared_from_this(), protocol_});
    }
  }
}

void WritePipeTransport::write_eof() {
  if (state_ != State::open) return;
  state_ = State::closing;
  if (buffer_.empty()) close_with(nullptr);
}

void WritePipeTransport::fatal_error(const boost::system::error_code& ec) {
  // OS errors (EPIPE above all) are the reader's doing: connection_lost
  // only, as asyncio does.
  loop_.log(LogLevel::debug, "Fatal write error on pipe transport: " + ec.message());
  close_with(make_system_error(ec, "Fatal write error on pipe transport"));
}

void WritePipeTransport::close_with(std::exception_ptr exc) {
  if (state_ >= State::lost) return;
  state_ = State::lost;
  buffer_.clear();
  watch_cancel_.emit(asio::cancellation_type::all);
  asio::post(pipe_.get_executor(), [this, keep = self(), exc] { call_connection_lost(exc); });
}

void WritePipeTransport::call_connection_lost(std::exception_ptr exc) {
  state_ = State::closed;
  loop_.untrack(this);
  try {
    protocol_->connection_lost(exc);
  } catch (...) {
    loop_.call_exception_handler({"Exception in callback protocol.connection_lost()", std::current_exception(),
                                  shared_from_this(), protocol_});
  }
  boost::system::error_code ignored;
  pipe_.close(ignored);
  protocol_.reset();
}

std::any WritePipeTransport::extra_info(std::string_view name) const {
  if (name == "pipe" && state_ != State::closed) {
    return static_cast<int>(const_cast<asio::posix::stream_descriptor&>(pipe_).native_handle());
  }
  return {};
}

// ==== the loop's methods ======================================================

void EventLoop::connect_read_pipe_impl(ProtocolFactory factory, int fd, detail::ConnectionHandler handler) {
  std::shared_ptr<Transport> transport;
  std::shared_ptr<BaseProtocol> protocol;
  std::exception_ptr error;
  try {
    detail::check_pipe(fd, "connect_read_pipe");
    protocol = factory();
    auto typed = std::dynamic_pointer_cast<Protocol>(protocol);
    if (!typed) throw std::invalid_argument("connect_read_pipe: the protocol factory must make a Protocol");
    auto pipe = std::make_shared<ReadPipeTransport>(*this, asio::posix::stream_descriptor(context_, fd));
    pipe->start(std::move(typed));
    transport = std::move(pipe);
  } catch (...) {
    error = std::current_exception();
    protocol.reset();
  }
  detail::post_completion(*this, std::move(handler), error, std::move(transport), std::move(protocol));
}

void EventLoop::connect_write_pipe_impl(ProtocolFactory factory, int fd, detail::ConnectionHandler handler) {
  std::shared_ptr<Transport> transport;
  std::shared_ptr<BaseProtocol> protocol;
  std::exception_ptr error;
  try {
    const auto kind = detail::check_pipe(fd, "connect_write_pipe");
    protocol = factory();
    if (!dynamic_cast<Protocol*>(protocol.get()) && !dynamic_cast<BufferedProtocol*>(protocol.get())) {
      throw std::invalid_argument("connect_write_pipe: the protocol factory must make a Protocol or a BufferedProtocol");
    }
    auto pipe = std::make_shared<WritePipeTransport>(*this, asio::posix::stream_descriptor(context_, fd), kind);
    pipe->start(protocol);
    transport = std::move(pipe);
  } catch (...) {
    error = std::current_exception();
    protocol.reset();
  }
  detail::post_completion(*this, std::move(handler), error, std::move(transport), std::move(protocol));
}

}  // namespace conduit
