// The TLS stream transport (asyncio's sslproto._SSLProtocolTransport) on an
// asio::ssl::stream over a TCP socket. tls_transport.cpp also holds the
// contexts of conduit/tls.hpp.
#pragma once

#include "conduit/detail/protocol_guard.hpp"
#include "conduit/detail/write_flow_control.hpp"
#include "conduit/event_loop.hpp"
#include "conduit/tls.hpp"
#include "conduit/transports.hpp"
#include "loop_internals.hpp"
#include "stream_writer.hpp"
#include "write_buffer.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>
#include <optional>
#include <vector>

namespace conduit {

class Server;

/// A Transport speaking TLS over TCP.
///
/// Reads are asynchronous TLS reads into the protocol's buffer (or one of
/// the transport's, made on first use); a read that completes while paused
/// is held and delivered on resume. Writes queue plaintext and leave in
/// gather writes, one batch in flight at a time; flow control counts the
/// plaintext queued, pausing at or above the high watermark (sslproto's
/// rule and 512 KiB default, SPEC T5). There is no half-close (SPEC T3).
///
///   State          entered by                      left when
///   handshaking    construction                    handshake done -> open, or failed
///   open           handshake done                  close(), abort(), EOF, error
///   closing        close(): flush queued data      flushed -> shutting_down
///   shutting_down  close_notify exchange           done or timed out -> lost
///   lost           connection_lost is posted       it runs -> closed
///   closed         connection_lost delivered; socket closed, protocol released
class TlsTransport final : public Transport, private detail::LoopResource {
 public:
  using Stream = boost::asio::ssl::stream<boost::asio::ip::tcp::socket>;

  TlsTransport(EventLoop& loop, boost::asio::ip::tcp::socket socket, TlsOptions options, bool server_side,
               std::shared_ptr<Server> server);
  ~TlsTransport() override;

  /// Run the handshake, bounded by the handshake timeout; throws
  /// std::system_error on failure (timed_out after the bound).
  boost::asio::awaitable<void> handshake();

  /// After a successful handshake: adopt `protocol` and start reading;
  /// connection_made is posted first unless the protocol is already
  /// connected (start_tls).
  void start(std::shared_ptr<BaseProtocol> protocol, bool call_connection_made = true);

  /// Drop a transport that never got a protocol: close, no callbacks.
  void discard();

  bool is_closing() const override { return state_ != State::open; }
  void close() override;
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override { protocol_.set(std::move(protocol)); }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_.get(); }

  bool is_reading() const override { return state_ == State::open && read_state_ == ReadState::reading; }
  void pause_reading() override;
  void resume_reading() override;

  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override;
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return flow_.limits(); }
  std::size_t get_write_buffer_size() const override { return queued_.size() + in_flight_.size(); }
  using WriteTransport::write;
  void write(std::span<const std::byte> data) override;
  using WriteTransport::writelines;
  void writelines(std::span<const std::span<const std::byte>> buffers) override;
  /// TLS has no half-close: throws std::logic_error (asyncio's NotImplementedError).
  void write_eof() override;
  bool can_write_eof() const override { return false; }
  void abort() override;

  /// sslproto's default high watermark.
  static constexpr std::size_t default_high_water = 512 * 1024;

 protected:
  std::any extra_info(std::string_view name) const override;

 private:
  enum class State { handshaking, open, closing, shutting_down, lost, closed };

  void on_loop_destroyed() override;
  void release();
  std::shared_ptr<TlsTransport> self();
  void read_next();
  void on_read(const boost::system::error_code& ec, std::size_t n);
  void deliver(std::size_t n);
  void on_eof();
  void write_next();
  void on_written(const boost::system::error_code& ec, std::size_t n);
  void maybe_pause_protocol();
  void maybe_resume_protocol();
  void shutdown_when_idle();
  void fatal_error(const boost::system::error_code& ec, const char* message);
  void force_close(std::exception_ptr exc);
  void post_connection_lost(std::exception_ptr exc);
  void call_connection_lost(std::exception_ptr exc);

  EventLoop& loop_;
  TlsOptions options_;
  Stream stream_;
  bool server_side_;
  std::shared_ptr<Server> server_;
  boost::asio::steady_timer timer_;  // handshake, then shutdown bound
  detail::ProtocolGuard protocol_{loop_, *this, detail::ProtocolGuard::stream | detail::ProtocolGuard::buffered,
                                  "a TLS transport", [this](std::exception_ptr exc) { force_close(exc); }};
  State state_ = State::handshaking;
  bool handshake_timed_out_ = false;
  // As the stream transport's: the protocol's side of reading.
  enum class ReadState {
    reading,  // waiting for data, or reading it
    paused,   // pause_reading(): a read already in flight is held
    at_eof,   // the peer's EOF was delivered: nothing is read again (SPEC S6)
  };
  ReadState read_state_ = ReadState::reading;
  bool read_in_flight_ = false;         // the socket's side: an async_read_some is out
  std::optional<std::size_t> held_;     // bytes read while paused, not delivered yet
  std::span<std::byte> read_target_;    // where the read in flight lands
  std::vector<std::byte> read_buffer_;  // for Protocol; made on the first read
  boost::asio::cancellation_signal read_cancel_;
  bool write_in_flight_ = false;
  detail::WriteBuffer queued_;     // written, not yet handed to TLS
  detail::WriteBuffer in_flight_;  // being written (stable while the write runs)
  detail::WriteFlowControl flow_{default_high_water, detail::WriteFlowControl::PauseRule::at_or_above_high};
  detail::LateWrites late_writes_;
  std::optional<SocketAddress> peername_;
  std::optional<SocketAddress> sockname_;
};

}  // namespace conduit
