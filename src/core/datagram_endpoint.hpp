// The datagram transport behind UDP and Unix datagram sockets (asyncio's
// _SelectorDatagramTransport), templated on the Asio socket type and
// instantiated in datagram_endpoint.cpp, which also holds the loop's
// create_datagram_endpoint methods.
#pragma once

#include "conduit/detail/protocol_guard.hpp"
#include "conduit/detail/write_flow_control.hpp"
#include "conduit/event_loop.hpp"
#include "conduit/transports.hpp"
#include "loop_internals.hpp"
#include "read_pump.hpp"
#include "stream_writer.hpp"

#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/local/datagram_protocol.hpp>

#include <deque>
#include <memory>
#include <optional>
#include <vector>

namespace conduit {

/// A DatagramTransport over a datagram socket, connected or not.
///
/// Reading works as on a stream transport: wait for readability, receive
/// one datagram into the loop's buffer, and try the next one on the loop's
/// next turn. sendto() sends at once; only datagrams refused with EAGAIN are
/// queued, and leave when the socket turns writable.
///
///   State       entered by                       left when
///   open        construction                     close(), abort()
///   closing     close() with datagrams queued    queue flushed -> lost
///   lost        abort(), or close() with an      connection_lost runs -> closed
///               empty queue; connection_lost is posted
///   closed      connection_lost delivered; socket closed, protocol released
template <class Socket>
class DatagramEndpoint final : public DatagramTransport, private detail::LoopResource {
 public:
  using Endpoint = typename Socket::endpoint_type;

  /// `peer`: the address the socket is connected to, if any.
  DatagramEndpoint(EventLoop& loop, Socket socket, std::optional<SocketAddress> peer);
  ~DatagramEndpoint() override;

  /// Post connection_made(protocol) and then the first read.
  void start(std::shared_ptr<DatagramProtocol> protocol);

  bool is_closing() const override { return state_ != State::open; }
  void close() override;
  void abort() override;
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override { protocol_.set(std::move(protocol)); }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_.get(); }

  using DatagramTransport::sendto;
  void sendto(std::span<const std::byte> data, const std::optional<SocketAddress>& addr) override;
  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override;
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return flow_.limits(); }
  std::size_t get_write_buffer_size() const override { return queued_bytes_; }

 protected:
  std::any extra_info(std::string_view name) const override;

 private:
  enum class State { open, closing, lost, closed };
  struct Datagram {
    std::vector<std::byte> data;
    std::optional<Endpoint> to;  // none on a connected socket
  };

  void on_loop_destroyed() override;
  void release();
  std::shared_ptr<DatagramEndpoint> self();
  Endpoint endpoint_of(const SocketAddress& addr) const;
  friend class detail::ReadPump<DatagramEndpoint, Socket>;
  bool is_reading() const { return state_ == State::open; }
  /// One datagram a turn, so a flood on one endpoint does not starve the loop.
  detail::ReadOutcome read_once();
  void on_read_wait_error(const boost::system::error_code& ec);
  /// One send of `datagram`: true if sent or failed for good (reported),
  /// false if the kernel said EAGAIN.
  bool send_one(std::span<const std::byte> data, const std::optional<Endpoint>& to);
  void arm_write();
  void on_writable(const boost::system::error_code& ec);
  void report_error(const boost::system::error_code& ec, const char* what);
  void force_close();
  void post_connection_lost();
  void call_connection_lost();

  EventLoop& loop_;
  Socket socket_;
  std::optional<SocketAddress> peer_;
  std::optional<SocketAddress> sockname_;
  // Unlike a stream, a datagram endpoint survives a throwing callback: each
  // datagram stands alone (SPEC D8). No callback is fatal.
  detail::ProtocolGuard protocol_{loop_, *this, detail::ProtocolGuard::datagram, "a datagram transport"};
  State state_ = State::open;
  detail::ReadPump<DatagramEndpoint, Socket> reads_{*this, socket_, detail::LoopInternals::next_turn(loop_)};
  bool write_armed_ = false;
  detail::LateWrites late_writes_;
  std::deque<Datagram> queue_;
  std::size_t queued_bytes_ = 0;  // with datagram_overhead each
  detail::WriteFlowControl flow_{DatagramTransport::default_high_water};
};

using UdpEndpoint = DatagramEndpoint<boost::asio::ip::udp::socket>;
using UnixDatagramEndpoint = DatagramEndpoint<boost::asio::local::datagram_protocol::socket>;

extern template class DatagramEndpoint<boost::asio::ip::udp::socket>;
extern template class DatagramEndpoint<boost::asio::local::datagram_protocol::socket>;

}  // namespace conduit
