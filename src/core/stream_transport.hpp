// The one stream transport behind TCP and Unix sockets (asyncio's
// _SelectorSocketTransport), templated on the Asio socket type and
// instantiated in stream_transport.cpp.
#pragma once

#include "conduit/detail/protocol_guard.hpp"
#include "conduit/event_loop.hpp"
#include "conduit/transports.hpp"
#include "loop_internals.hpp"
#include "read_pump.hpp"
#include "stream_writer.hpp"

#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <functional>
#include <memory>
#include <optional>

namespace conduit {

class Server;

/// A Transport over a connected stream socket.
///
/// Reading waits for readability and then reads into the loop's buffer (or
/// the BufferedProtocol's), so an idle connection holds no receive buffer.
/// After a read that got data, the next read is tried on the loop's next
/// turn before waiting again: under load the data is usually there by then,
/// which saves the epoll_ctl that every Asio async_wait costs.
/// write() sends at once and buffers only what the kernel did not take;
/// buffered data leaves in gather writes when the socket turns writable.
///
///   State       entered by                       left when
///   open        construction                     close(), abort(), error
///   closing     close() with data buffered       buffer flushed -> lost
///   lost        abort(), fatal error, or close() connection_lost runs -> closed
///               with nothing buffered; connection_lost is posted
///   closed      connection_lost delivered; socket closed, protocol released
template <class Socket>
class StreamTransport final : public Transport, private detail::LoopResource {
 public:
  StreamTransport(EventLoop& loop, Socket socket, std::shared_ptr<Server> server);
  ~StreamTransport() override;

  /// Post connection_made(protocol) and then the first read (SPEC S1).
  void start(std::shared_ptr<BaseProtocol> protocol);

  /// For start_tls: give up the socket (and the server it belongs to) to a
  /// transport that takes over. This one is then closed without callbacks.
  /// Throws std::logic_error unless open with nothing left to write.
  std::pair<Socket, std::shared_ptr<Server>> hand_over();

  /// For loop.sendfile: once the write buffer is empty, send `count` bytes
  /// (nullopt: up to EOF) of `file` from `offset` with sendfile(2), reading
  /// paused and write() refused meanwhile; then `done(error, bytes_sent)`.
  /// An fd sendfile(2) cannot read fails with errc::operation_not_supported
  /// before anything is sent (the caller may fall back to read/write).
  void send_file(int file, std::uint64_t offset, std::optional<std::uint64_t> count,
                 std::function<void(std::exception_ptr, std::uint64_t)> done);

  bool is_closing() const override { return state_ != State::open; }
  void close() override;
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override;
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_.get(); }

  bool is_reading() const override { return state_ == State::open && read_state_ == ReadState::reading; }
  void pause_reading() override;
  void resume_reading() override;

  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override;
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return writer_.limits(); }
  std::size_t get_write_buffer_size() const override { return writer_.size(); }
  using WriteTransport::write;
  void write(std::span<const std::byte> data) override;
  using WriteTransport::writelines;
  void writelines(std::span<const std::span<const std::byte>> buffers) override;
  void write_eof() override;
  bool can_write_eof() const override { return true; }
  void abort() override;

 protected:
  std::any extra_info(std::string_view name) const override;

 private:
  enum class State {
    open,     // reading and writing as asked
    closing,  // close() was called: no more reads; flushing, then lost
    lost,     // connection_lost(...) is posted; writes are dropped
    closed,   // connection_lost was delivered; the socket is closed
  };
  enum class ReadState {
    reading,  // waiting for data, or reading it
    paused,   // pause_reading()
    at_eof,   // the peer's EOF was delivered: nothing is read again (SPEC S6)
  };

  struct SendfileJob {
    int file;
    std::uint64_t offset;
    std::optional<std::uint64_t> remaining;  // nullopt: to EOF
    std::uint64_t sent = 0;
    bool resume_reading;
    std::function<void(std::exception_ptr, std::uint64_t)> done;
  };
  void sendfile_step();
  void finish_sendfile(std::exception_ptr error);

  void on_loop_destroyed() override;
  /// Close the socket, drop the protocol and leave the server.
  void release();
  std::shared_ptr<StreamTransport> self();
  using ReadOutcome = detail::ReadOutcome;
  friend class detail::ReadPump<StreamTransport, Socket>;
  ReadOutcome read_once();
  void on_read_wait_error(const boost::system::error_code& ec);
  ReadOutcome read_into_loop_buffer();
  ReadOutcome read_into_protocol_buffer();
  /// What a read that got `n` bytes or `ec` means.
  std::optional<ReadOutcome> read_failed(const boost::system::error_code& ec);
  ReadOutcome on_eof();
  friend class detail::StreamWriter<StreamTransport, Socket>;
  void on_write_error(const boost::system::error_code& ec);
  void on_write_drained();
  void check_writable(const char* call) const;
  void shutdown_write();
  void fatal_error(const boost::system::error_code& ec, const char* message);
  void force_close(std::exception_ptr exc);
  void post_connection_lost(std::exception_ptr exc);
  void call_connection_lost(std::exception_ptr exc);

  EventLoop& loop_;
  Socket socket_;
  std::shared_ptr<Server> server_;
  detail::ProtocolGuard protocol_{loop_, *this, detail::ProtocolGuard::stream | detail::ProtocolGuard::buffered,
                                  "a stream transport", [this](std::exception_ptr exc) { force_close(exc); }};
  State state_ = State::open;
  ReadState read_state_ = ReadState::reading;
  // Cancels just its own wait (socket.cancel() would take the write wait
  // too), so a paused or closing transport holds no pending read.
  detail::ReadPump<StreamTransport, Socket> reads_{*this, socket_, detail::LoopInternals::next_turn(loop_)};
  detail::StreamWriter<StreamTransport, Socket> writer_{*this, socket_, protocol_, WriteTransport::default_high_water};
  detail::LateWrites late_writes_;
  bool eof_requested_ = false;  // write_eof() was called
  std::optional<SendfileJob> sendfile_;
  std::optional<SocketAddress> peername_;
  std::optional<SocketAddress> sockname_;
};

using TcpTransport = StreamTransport<boost::asio::ip::tcp::socket>;
using UnixTransport = StreamTransport<boost::asio::local::stream_protocol::socket>;

extern template class StreamTransport<boost::asio::ip::tcp::socket>;
extern template class StreamTransport<boost::asio::local::stream_protocol::socket>;

}  // namespace conduit
