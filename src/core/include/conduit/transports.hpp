// Transport interfaces: how bytes move. Mirrors asyncio's transports.py.
//
// A transport is created by the loop (create_connection, create_server, ...)
// and owned by shared_ptr; its own pending I/O keeps it alive while it is
// open, so a protocol need not hold it. All methods are for the loop thread.
#pragma once

#include "conduit/socket_address.hpp"

#include <any>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace conduit {

class BaseProtocol;

/// What every transport can do.
class BaseTransport : public std::enable_shared_from_this<BaseTransport> {
 public:
  BaseTransport(const BaseTransport&) = delete;
  BaseTransport& operator=(const BaseTransport&) = delete;
  virtual ~BaseTransport() = default;

  /// Optional information about the transport ("peername", "sockname",
  /// "socket", ...), or `default_value` for a name this transport lacks.
  std::any get_extra_info(std::string_view name, std::any default_value = {}) const {
    std::any value = extra_info(name);
    return value.has_value() ? value : default_value;
  }

  /// Typed get_extra_info: nullopt when absent or of another type.
  template <class T>
  std::optional<T> get_extra_info_as(std::string_view name) const {
    std::any value = extra_info(name);
    if (const T* typed = std::any_cast<T>(&value)) return *typed;
    return std::nullopt;
  }

  /// True from the first close() or abort() on, and once the connection is lost.
  virtual bool is_closing() const = 0;

  /// Stop reading, flush buffered data, then call connection_lost(nullptr)
  /// (posted, exactly once). A second call does nothing.
  virtual void close() = 0;

  /// Route later callbacks to `protocol`; it gets no connection_made.
  virtual void set_protocol(std::shared_ptr<BaseProtocol> protocol) = 0;

  /// The protocol receiving callbacks (null once the connection is lost).
  virtual std::shared_ptr<BaseProtocol> get_protocol() const = 0;

 protected:
  BaseTransport() = default;

  /// The value of one extra-info key, or an empty std::any.
  virtual std::any extra_info(std::string_view name) const = 0;
};

/// The read half.
class ReadTransport : public virtual BaseTransport {
 public:
  /// False when paused, closing, or past end of file.
  virtual bool is_reading() const = 0;

  /// Stop data_received/get_buffer calls until resume_reading().
  /// Idempotent; does nothing on a closing transport.
  virtual void pause_reading() = 0;

  /// Undo pause_reading(). Idempotent; does nothing on a closing transport.
  virtual void resume_reading() = 0;
};

/// The write half. write() never blocks: what the kernel does not take at
/// once is copied into a user-space buffer, whose size drives
/// pause_writing()/resume_writing() on the protocol.
class WriteTransport : public virtual BaseTransport {
 public:
  /// Default high watermark (asyncio's 64 KiB); the low one defaults to high / 4.
  static constexpr std::size_t default_high_water = 64 * 1024;

  /// Set the flow-control watermarks. Only `low`: high = 4 * low; only
  /// `high`: low = high / 4; neither: the defaults. Throws
  /// std::invalid_argument unless high >= low >= 0. May call
  /// pause_writing() at once, never resume_writing().
  virtual void set_write_buffer_limits(std::optional<std::int64_t> high = std::nullopt,
                                       std::optional<std::int64_t> low = std::nullopt) = 0;

  /// The (low, high) watermarks.
  virtual std::pair<std::size_t, std::size_t> get_write_buffer_limits() const = 0;

  /// Bytes buffered in user space, not yet handed to the kernel.
  virtual std::size_t get_write_buffer_size() const = 0;

  /// Send `data` (copied if it cannot go at once). Empty data does nothing.
  /// Throws std::logic_error after write_eof(). Silently dropped once the
  /// connection is lost (with a warning from the fifth such call on).
  virtual void write(std::span<const std::byte> data) = 0;

  /// write() for text.
  void write(std::string_view text) { write(std::as_bytes(std::span(text.data(), text.size()))); }

  /// Write each buffer in order, as one gather write where possible.
  virtual void writelines(std::span<const std::span<const std::byte>> buffers) = 0;

  /// writelines() for a braced list.
  void writelines(std::initializer_list<std::span<const std::byte>> buffers) {
    writelines(std::span(buffers.begin(), buffers.size()));
  }

  /// Close the write side once buffered data is flushed. Idempotent; does
  /// nothing after close(). Throws std::logic_error where unsupported.
  virtual void write_eof() = 0;

  /// Whether write_eof() is supported.
  virtual bool can_write_eof() const = 0;

  /// Close at once, dropping buffered data; connection_lost(nullptr) follows.
  virtual void abort() = 0;
};

/// A bidirectional stream transport (TCP, Unix socket, pipe pair).
class Transport : public ReadTransport, public WriteTransport {};

/// A datagram endpoint (UDP or Unix datagram socket).
///
/// sendto() sends at once and queues only what the kernel refuses with
/// EAGAIN; the queue drives pause_writing()/resume_writing() like a stream
/// transport's buffer, counting each datagram with its length plus a fixed
/// overhead (asyncio's header size).
class DatagramTransport : public virtual BaseTransport {
 public:
  /// Default high watermark (asyncio's 64 KiB); the low one defaults to high / 4.
  static constexpr std::size_t default_high_water = 64 * 1024;
  /// Bytes counted per queued datagram on top of its length.
  static constexpr std::size_t datagram_overhead = 8;

  /// Send one datagram (empty is allowed) to `addr`. On a connected
  /// endpoint `addr` may be omitted or equal to the peer; otherwise it is
  /// required. A wrong or missing address throws std::invalid_argument and
  /// leaves the endpoint open; an OS error goes to error_received().
  virtual void sendto(std::span<const std::byte> data, const std::optional<SocketAddress>& addr = std::nullopt) = 0;
  /// sendto() for text.
  void sendto(std::string_view text, const std::optional<SocketAddress>& addr = std::nullopt) {
    sendto(std::as_bytes(std::span(text.data(), text.size())), addr);
  }
  /// As WriteTransport.
  virtual void set_write_buffer_limits(std::optional<std::int64_t> high = std::nullopt,
                                       std::optional<std::int64_t> low = std::nullopt) = 0;
  virtual std::pair<std::size_t, std::size_t> get_write_buffer_limits() const = 0;
  /// Queued bytes, each datagram counted with datagram_overhead.
  virtual std::size_t get_write_buffer_size() const = 0;
  /// Close at once, dropping queued datagrams; connection_lost(nullptr) follows.
  virtual void abort() = 0;
};

/// A running (or finished) child process and its pipes.
class SubprocessTransport : public virtual BaseTransport {
 public:
  /// The child's process id.
  virtual int get_pid() const = 0;
  /// The transport of the child's stdin (0: a write pipe), stdout (1) or
  /// stderr (2) when that stream is a pipe; null otherwise.
  virtual std::shared_ptr<Transport> get_pipe_transport(int fd) const = 0;
  /// The exit status once the child has exited: its exit code, or minus
  /// the signal that killed it (-9 after kill()).
  virtual std::optional<int> get_returncode() const = 0;
  /// Send `signal` to the child; nothing once it has exited. Throws
  /// std::system_error(ESRCH) ("ProcessLookupError") after close().
  virtual void send_signal(int signal) = 0;
  /// Send `signal` to the child's process group when it was started in one
  /// of its own (as coreutils' timeout does), else to the child alone.
  /// Unlike send_signal, it still reaches what the child left in its group
  /// after the child exited, until the transport has finished. Throws as
  /// send_signal does.
  virtual void send_signal_to_group(int signal) = 0;
  /// send_signal(SIGTERM).
  void terminate();
  /// send_signal(SIGKILL).
  void kill();
  // close() closes the pipes and kills a still-running child (with its
  // process group, if it has its own); it never blocks.
};

/// Bytes of a string, for write() and comparisons in user code.
inline std::span<const std::byte> as_bytes(std::string_view text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

/// A string holding `data`'s bytes.
inline std::string_view as_string_view(std::span<const std::byte> data) {
  return {reinterpret_cast<const char*>(data.data()), data.size()};
}

}  // namespace conduit
