// Protocol interfaces: which bytes move. Mirrors asyncio's protocols.py.
//
// Every callback has an empty default, so a protocol overrides only what it
// needs. Callbacks run on the loop thread, one at a time. An exception thrown
// from a callback goes to the loop's exception handler (EventLoop::
// set_exception_handler); from data_received, eof_received, get_buffer or
// buffer_updated it is also fatal to the transport (SPEC S15).
#pragma once

#include <cstddef>
#include <exception>
#include <memory>
#include <span>

namespace conduit {

class Transport;
class DatagramTransport;
class SubprocessTransport;
class SocketAddress;

/// Callbacks every protocol kind shares.
class BaseProtocol {
 public:
  virtual ~BaseProtocol() = default;

  /// Called exactly once, as the last callback: a null `exc` is a clean close
  /// (asyncio's None), anything else the error (often a std::system_error).
  virtual void connection_lost(std::exception_ptr exc) { (void)exc; }

  /// The transport's write buffer went strictly above its high watermark.
  /// Never called twice without a resume_writing() in between.
  virtual void pause_writing() {}

  /// The write buffer drained to the low watermark or below after a pause.
  virtual void resume_writing() {}
};

/// A stream protocol fed by copies of nothing: `data` points into the loop's
/// read buffer and is valid only during the call.
///
/// Call grammar: start -> connection_made
///                     [-> data_received*] [-> eof_received?]
///               -> connection_lost -> end
class Protocol : public BaseProtocol {
 public:
  /// The connection is set up; reading starts after this returns, so
  /// calling transport->pause_reading() here means no data yet (gh-103607).
  virtual void connection_made(std::shared_ptr<Transport> transport) { (void)transport; }

  /// Some bytes arrived, in order; never empty; chunking is arbitrary.
  virtual void data_received(std::span<const std::byte> data) { (void)data; }

  /// The peer closed its write side. Return false to close the transport,
  /// true to keep it open for writing. Called at most once; no data after it.
  virtual bool eof_received() { return false; }
};

/// A stream protocol that owns its receive buffer: the transport reads
/// straight into the span get_buffer() returns, with no copy.
///
/// Call grammar: start -> connection_made
///                     [-> get_buffer [-> buffer_updated]]*
///                     [-> eof_received?]
///               -> connection_lost -> end
class BufferedProtocol : public BaseProtocol {
 public:
  /// As Protocol::connection_made.
  virtual void connection_made(std::shared_ptr<Transport> transport) { (void)transport; }

  /// Return a non-empty buffer for the next read. `sizehint` is the
  /// transport's read size; a smaller or larger buffer is fine. The span must
  /// stay valid until buffer_updated() or the next get_buffer(). Must not
  /// change the transport's state.
  virtual std::span<std::byte> get_buffer(std::size_t sizehint) = 0;

  /// `nbytes` (> 0) bytes were written at the start of the last buffer.
  virtual void buffer_updated(std::size_t nbytes) = 0;

  /// As Protocol::eof_received.
  virtual bool eof_received() { return false; }
};

/// A datagram (UDP, Unix datagram) protocol.
///
/// Call grammar: start -> connection_made
///                     [-> datagram_received | error_received]*
///               -> connection_lost -> end
class DatagramProtocol : public BaseProtocol {
 public:
  /// The endpoint is set up; datagrams are read after this returns.
  virtual void connection_made(std::shared_ptr<DatagramTransport> transport) { (void)transport; }
  /// One datagram (possibly empty) from `addr`; `data` points into the
  /// loop's read buffer and is valid only during the call. Datagrams longer
  /// than the read size (256 KiB) arrive truncated.
  virtual void datagram_received(std::span<const std::byte> data, const SocketAddress& addr) {
    (void)data;
    (void)addr;
  }
  /// A send or receive failed (e.g. ECONNREFUSED after an ICMP port
  /// unreachable on a connected endpoint); the endpoint stays open.
  virtual void error_received(std::exception_ptr exc) { (void)exc; }
};

/// The protocol of a child process (subprocess_exec / subprocess_shell).
///
/// Call grammar: start -> connection_made
///                     [-> pipe_data_received | pipe_connection_lost
///                         | pause_writing | resume_writing | process_exited]*
///               -> connection_lost -> end
/// process_exited comes once; pipe_connection_lost once per pipe; and
/// connection_lost(nullptr) only after both, whatever their order.
class SubprocessProtocol : public BaseProtocol {
 public:
  /// The child runs and its pipes are connected.
  virtual void connection_made(std::shared_ptr<SubprocessTransport> transport) { (void)transport; }
  /// The child wrote `data` to its stdout (fd 1) or stderr (fd 2); `data`
  /// is valid only during the call.
  virtual void pipe_data_received(int fd, std::span<const std::byte> data) {
    (void)fd;
    (void)data;
  }
  /// The pipe for `fd` (0, 1 or 2) closed; `exc` is null for a clean close.
  virtual void pipe_connection_lost(int fd, std::exception_ptr exc) {
    (void)fd;
    (void)exc;
  }
  /// The child exited; SubprocessTransport::get_returncode() has its status.
  virtual void process_exited() {}
};

}  // namespace conduit
