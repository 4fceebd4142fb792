// The pipe transport (asyncio's _UnixReadPipeTransport and
// _UnixWritePipeTransport in one, as libuv's one stream over a descriptor
// with a direction) over pipes, FIFOs, sockets and character devices.
// pipe_transport.cpp also holds the loop's connect_read_pipe and
// connect_write_pipe.
//
// asyncio hands pipe transports to an ordinary Protocol; so does Conduit,
// which is why a pipe is a Transport: the half it lacks is inert (a read
// pipe refuses writes with std::logic_error; a write pipe never reads).
#pragma once

#include "conduit/detail/protocol_guard.hpp"
#include "conduit/event_loop.hpp"
#include "conduit/transports.hpp"
#include "loop_internals.hpp"
#include "read_pump.hpp"
#include "stream_writer.hpp"

#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <memory>

namespace conduit {

namespace detail {

enum class PipeKind { fifo, socket, character_device };

/// What `fd` is, for a pipe transport; throws std::invalid_argument for
/// anything else (a regular file, a directory: SPEC P1), std::system_error
/// if fstat fails.
PipeKind check_pipe(int fd, const char* which);

}  // namespace detail

/// One end of a pipe, reading or writing.
///
/// The read end: data_received until EOF, then eof_received (its return
/// value is ignored: a pipe at EOF is done) and connection_lost(nullptr).
/// The write end: buffered writes with flow control, through the stream
/// writer; write_eof() and close() both close the pipe once the buffer is
/// flushed. The reader going away is noticed even while idle (FIFOs and
/// sockets) and ends the transport: connection_lost(BrokenPipe) if data was
/// still buffered, else connection_lost(nullptr) (SPEC P3).
///
///   State     entered by                           left when
///   open      construction                         EOF, close(), write_eof(), abort(), error
///   closing   (write end) close()/write_eof() with flushed -> lost
///             data buffered
///   lost      connection_lost is posted            it runs -> closed
///   closed    connection_lost delivered; descriptor closed
class PipeTransport final : public Transport, private detail::LoopResource {
 public:
  enum class Direction { read, write };

  PipeTransport(EventLoop& loop, boost::asio::posix::stream_descriptor pipe, Direction direction,
                detail::PipeKind kind);
  ~PipeTransport() override;

  /// Post connection_made(protocol), then start reading (read end) or
  /// watching for the reader leaving (write end).
  void start(std::shared_ptr<BaseProtocol> protocol);

  bool is_closing() const override { return state_ != State::open; }
  void close() override;
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override { protocol_.set(std::move(protocol)); }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_.get(); }

  bool is_reading() const override { return direction_ == Direction::read && state_ == State::open && !paused_; }
  void pause_reading() override;
  void resume_reading() override;

  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override;
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override {
    return direction_ == Direction::write ? writer_.limits() : std::pair<std::size_t, std::size_t>{0, 0};
  }
  std::size_t get_write_buffer_size() const override { return writer_.size(); }
  using WriteTransport::write;
  void write(std::span<const std::byte> data) override { write_buffers("write", {&data, 1}); }
  using WriteTransport::writelines;
  void writelines(std::span<const std::span<const std::byte>> buffers) override {
    write_buffers("writelines", buffers);
  }
  void write_eof() override;
  bool can_write_eof() const override { return direction_ == Direction::write; }
  void abort() override { close_with(nullptr); }

 protected:
  std::any extra_info(std::string_view name) const override;

 private:
  enum class State { open, closing, lost, closed };

  void on_loop_destroyed() override;
  std::shared_ptr<PipeTransport> self();
  // reading
  friend class detail::ReadPump<PipeTransport, boost::asio::posix::stream_descriptor>;
  detail::ReadOutcome read_once();
  void on_read_wait_error(const boost::system::error_code& ec) { fatal_error(ec); }
  // writing
  void write_buffers(const char* call, std::span<const std::span<const std::byte>> buffers);
  friend class detail::StreamWriter<PipeTransport, boost::asio::posix::stream_descriptor>;
  void on_write_error(const boost::system::error_code& ec) { fatal_error(ec); }
  void on_write_drained();
  void watch_reader();
  // ending
  void fatal_error(const boost::system::error_code& ec);
  void close_with(std::exception_ptr exc);
  void call_connection_lost(std::exception_ptr exc);

  EventLoop& loop_;
  boost::asio::posix::stream_descriptor pipe_;
  Direction direction_;
  detail::PipeKind kind_;
  // A read end takes a Protocol (data_received), a write end any stream protocol.
  detail::ProtocolGuard protocol_;
  State state_ = State::open;
  bool paused_ = false;  // read end: pause_reading()
  detail::ReadPump<PipeTransport, boost::asio::posix::stream_descriptor> reads_{
      *this, pipe_, detail::LoopInternals::next_turn(loop_)};
  // Cancels the reader watch alone when the transport closes.
  boost::asio::cancellation_signal watch_cancel_;
  detail::StreamWriter<PipeTransport, boost::asio::posix::stream_descriptor> writer_{
      *this, pipe_, protocol_, WriteTransport::default_high_water};
  detail::LateWrites late_writes_;
};

}  // namespace conduit
