// The one write path of the byte-stream transports over a descriptor: TCP
// and Unix sockets, and write pipes (libuv's uv__write serves TCP, pipes and
// TTYs alike).
#pragma once

#include "conduit/detail/protocol_guard.hpp"
#include "conduit/detail/write_flow_control.hpp"
#include "conduit/event_loop.hpp"
#include "write_buffer.hpp"

#include <boost/asio/error.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace conduit::detail {

/// Writes that come after a transport stopped taking data are dropped
/// silently, then with a warning from the fifth on (asyncio's
/// LOG_THRESHOLD_FOR_CONNLOST_WRITES, SPEC S9). Every writable transport
/// counts them with one of these.
class LateWrites {
 public:
  /// Count one dropped write; logs `warning` from the threshold on.
  void drop(EventLoop& loop, const char* warning) {
    if (++count_ >= threshold) loop.log(LogLevel::warning, warning);
  }

 private:
  static constexpr std::size_t threshold = 5;
  std::size_t count_ = 0;
};

/// Moves a transport's bytes to the kernel: each write is handed over at
/// once, straight from the caller's memory, in one gather write; only what
/// the kernel does not take is copied into the buffer, which then leaves in
/// gather writes as the descriptor turns writable (SPEC S7). The buffer's
/// size drives pause_writing() / resume_writing() through the watermarks
/// (SPEC F1-F7).
///
/// `Owner` provides:
///   std::shared_ptr<Owner> self();    // kept alive by a pending wait
///   void on_write_error(const boost::system::error_code& ec);
///                                     // ends the transport (stop() first)
///   void on_write_drained();          // the buffer emptied after waiting:
///                                     // finish a pending close or write_eof
///
///   open --stop()--> stopped   (the transport is lost: the buffer is
///                               dropped, nothing more is written)
///
/// The owner decides which writes it takes (after write_eof(), after
/// close()); the writer never refuses one while open.
template <class Owner, class IoObject>
class StreamWriter {
 public:
  StreamWriter(Owner& owner, IoObject& io, ProtocolGuard& protocol, std::size_t default_high)
      : owner_(owner), io_(io), protocol_(protocol), flow_(default_high) {}
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  /// Bytes buffered, not yet taken by the kernel.
  std::size_t size() const { return buffer_.size(); }
  bool empty() const { return buffer_.empty(); }
  /// A wait for writability is pending.
  bool armed() const { return armed_; }

  std::pair<std::size_t, std::size_t> limits() const { return flow_.limits(); }
  /// New watermarks; may call pause_writing() at once, never resume (SPEC F6).
  void set_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) {
    flow_.set_limits(high, low);
    maybe_pause();
  }

  /// Send `buffers` in order (none empty in total).
  void write(std::span<const std::span<const std::byte>> buffers) {
    std::size_t sent = 0;
    if (buffer_.empty()) {
      boost::system::error_code ec;
      if (buffers.size() == 1) {
        // The common case, without building a gather list.
        sent = io_.write_some(boost::asio::const_buffer(buffers[0].data(), buffers[0].size()), ec);
      } else {
        std::array<boost::asio::const_buffer, WriteBuffer::max_gather> iov;
        std::size_t count = 0;
        for (auto b : buffers) {
          if (count == iov.size()) break;
          if (!b.empty()) iov[count++] = boost::asio::const_buffer(b.data(), b.size());
        }
        sent = io_.write_some(std::span(iov.data(), count), ec);
      }
      if (ec) {  // tested first: comparing error codes costs more than one branch
        if (ec != boost::asio::error::would_block && ec != boost::asio::error::interrupted) {
          return owner_.on_write_error(ec);
        }
        sent = 0;
      }
    }
    for (auto b : buffers) {
      const std::size_t skip = std::min(sent, b.size());
      sent -= skip;
      if (skip < b.size()) buffer_.append(b.subspan(skip));
    }
    if (buffer_.empty()) return;
    arm();
    maybe_pause();
  }

  /// The transport is lost: drop what is buffered and write nothing more
  /// (a pending wait then finds nothing to do).
  void stop() {
    stopped_ = true;
    buffer_.clear();
  }

 private:
  void arm() {
    if (armed_) return;
    armed_ = true;
    io_.async_wait(IoObject::wait_write,
                   [this, keep = owner_.self()](const boost::system::error_code& ec) { on_writable(ec); });
  }

  void on_writable(const boost::system::error_code& ec) {
    armed_ = false;
    if (stopped_ || buffer_.empty() || ec == boost::asio::error::operation_aborted) return;
    if (ec) return owner_.on_write_error(ec);
    boost::system::error_code write_ec;
    const std::size_t n = io_.write_some(buffer_.gather(), write_ec);
    if (write_ec == boost::asio::error::would_block || write_ec == boost::asio::error::interrupted) return arm();
    if (write_ec) return owner_.on_write_error(write_ec);
    buffer_.consume(n);
    if (flow_.should_resume(buffer_.size())) {
      protocol_.resume_writing();  // which may write, close or abort
      if (stopped_) return;
    }
    if (!buffer_.empty()) return arm();
    owner_.on_write_drained();
  }

  void maybe_pause() {
    if (flow_.should_pause(buffer_.size())) protocol_.pause_writing();
  }

  Owner& owner_;
  IoObject& io_;
  ProtocolGuard& protocol_;
  WriteBuffer buffer_;
  WriteFlowControl flow_;
  bool armed_ = false;
  bool stopped_ = false;
};

}  // namespace conduit::detail
