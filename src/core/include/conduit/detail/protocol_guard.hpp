// The one place a transport calls its protocol (internal: not installed).
// Every transport, local or remote, holds its protocol in a ProtocolGuard and
// makes each callback through it, so that dispatch to the protocol's kind,
// the catch, the report to the loop's exception handler, and ending the
// transport after a fatal callback are written once.
#pragma once

#include "conduit/event_loop.hpp"
#include "conduit/protocols.hpp"
#include "conduit/transports.hpp"

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>

namespace conduit::detail {

/// A transport's protocol, and every call into it.
///
/// Contract (SPEC S15, F7, D8): a callback that throws never unwinds into
/// the transport. The exception goes to the loop's exception handler, with
/// the transport and the protocol, under asyncio's message for that
/// callback. When the callback is one of the stream's *fatal* ones
/// (data_received, get_buffer, buffer_updated, eof_received) the guard then
/// calls `on_fatal(exception)`, which must end the transport with that
/// exception as connection_lost's argument; every other callback's failure
/// leaves the transport as it was.
class ProtocolGuard {
 public:
  /// The protocol kinds a transport takes (bits, combined with |).
  enum Kind : unsigned { stream = 1, buffered = 2, datagram = 4, subprocess = 8 };

  /// `transport` is the owner, named in exception contexts; `accepted` the
  /// kinds it takes; `name` how set() names it ("a TLS transport").
  ProtocolGuard(EventLoop& loop, BaseTransport& transport, unsigned accepted, const char* name,
                std::function<void(std::exception_ptr)> on_fatal = nullptr);
  ProtocolGuard(const ProtocolGuard&) = delete;
  ProtocolGuard& operator=(const ProtocolGuard&) = delete;

  /// Take `protocol`; throws std::invalid_argument (and keeps the old one)
  /// unless it is of an accepted kind.
  void set(std::shared_ptr<BaseProtocol> protocol);
  /// The protocol, or null once reset.
  const std::shared_ptr<BaseProtocol>& get() const { return protocol_; }
  /// Drop the protocol (breaks the transport <-> protocol cycle).
  void reset();
  explicit operator bool() const { return protocol_ != nullptr; }
  /// True when the protocol is a BufferedProtocol (reads go into its buffers).
  bool is_buffered() const { return buffered_ != nullptr; }

  // ---- every kind ----
  /// connection_made(transport), typed for the protocol's kind.
  void connection_made();
  void pause_writing();
  void resume_writing();
  void connection_lost(std::exception_ptr exc);

  // ---- streams: false (or nullopt, or an empty span) when the callback
  // threw; the transport has then been ended through on_fatal ----
  /// data_received, or for a BufferedProtocol the bytes copied into as many
  /// get_buffer() buffers as they need (transports that cannot read into
  /// the protocol's buffer directly).
  bool data_received(std::span<const std::byte> data) {
    if (!stream_) return copy_into_buffers(data);
    return call_fatal("Fatal error: protocol.data_received() call failed.", [&] { stream_->data_received(data); });
  }
  /// get_buffer(sizehint); an empty buffer counts as a failure.
  std::span<std::byte> get_buffer(std::size_t sizehint);
  bool buffer_updated(std::size_t nbytes);
  /// eof_received()'s answer.
  std::optional<bool> eof_received();

  // ---- datagrams ----
  void datagram_received(std::span<const std::byte> data, const SocketAddress& addr);
  void error_received(std::exception_ptr exc);

  // ---- subprocesses ----
  void pipe_data_received(int fd, std::span<const std::byte> data);
  void pipe_connection_lost(int fd, std::exception_ptr exc);
  void process_exited();

 private:
  bool copy_into_buffers(std::span<const std::byte> data);
  /// Run `fn`; on an exception report it under `failure` and return it.
  template <class Fn>
  std::exception_ptr call(const char* failure, Fn&& fn) {
    try {
      fn();
      return nullptr;
    } catch (...) {
      return report(failure, std::current_exception());
    }
  }
  /// As call(), and a failure ends the transport through on_fatal.
  template <class Fn>
  bool call_fatal(const char* failure, Fn&& fn) {
    std::exception_ptr exc = call(failure, std::forward<Fn>(fn));
    if (!exc) return true;
    if (on_fatal_) on_fatal_(exc);
    return false;
  }
  std::exception_ptr report(const char* failure, std::exception_ptr exc);

  EventLoop& loop_;
  BaseTransport& transport_;
  unsigned accepted_;
  const char* name_;
  std::function<void(std::exception_ptr)> on_fatal_;
  std::shared_ptr<BaseProtocol> protocol_;
  // protocol_ as its kind: exactly one is set while there is a protocol.
  Protocol* stream_ = nullptr;
  BufferedProtocol* buffered_ = nullptr;
  DatagramProtocol* datagram_ = nullptr;
  SubprocessProtocol* subprocess_ = nullptr;
};

}  // namespace conduit::detail
