// What the client ends of sessions share (remote_connection.cpp,
// remote_subprocess.cpp, remote_datagram.cpp): how a call's end reads as an
// error, write-pause bookkeeping, reported addresses, and the calls into a
// Protocol or a BufferedProtocol.
#pragma once

#include "codec.hpp"
#include "session_stream.hpp"

#include <conduit/event_loop.hpp>
#include <conduit/protocols.hpp>
#include <conduit/transports.hpp>

#include <any>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string_view>

namespace conduit::service {

/// A protocol callback under the core's contract (SPEC RS6): an exception
/// goes to the loop's exception handler as `failure` and is returned, for
/// the caller to end the transport with (its connection_lost carries it).
template <class Fn>
std::exception_ptr call_protocol(EventLoop& loop, const std::string& failure, std::shared_ptr<BaseTransport> transport,
                                 std::shared_ptr<BaseProtocol> protocol, Fn&& fn) {
  try {
    fn();
    return nullptr;
  } catch (...) {
    std::exception_ptr exc = std::current_exception();
    loop.call_exception_handler({failure, exc, std::move(transport), std::move(protocol)});
    return exc;
  }
}

/// The call failed before the session opened: the service is not there,
/// or it refused the session.
std::exception_ptr status_error(const grpc::Status& status);

/// The call ended while the session was open, without its last event.
std::exception_ptr broken_error(const grpc::Status& status);

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

}  // namespace conduit::service
