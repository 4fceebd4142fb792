// The user-space queue behind write(): what the kernel did not take yet.
#pragma once

#include <boost/asio/buffer.hpp>

#include <cstddef>
#include <deque>
#include <span>
#include <vector>

namespace conduit::detail {

/// A FIFO of bytes stored as chunks, drained by gather writes. Small writes
/// are coalesced into the last chunk so a burst of tiny writes costs neither
/// one allocation nor one iovec each.
class WriteBuffer {
 public:
  /// Most iovecs handed to one sendmsg/writev.
  static constexpr std::size_t max_gather = 64;

  /// Bytes queued.
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  /// Copy `data` to the back of the queue.
  void append(std::span<const std::byte> data);

  /// Up to max_gather buffers covering the front of the queue, valid until
  /// the next non-const call.
  const std::vector<boost::asio::const_buffer>& gather();

  /// Drop `n` bytes (<= size()) from the front.
  void consume(std::size_t n);

  /// Drop everything.
  void clear();

 private:
  // Chunks below this size take further small writes in place.
  static constexpr std::size_t coalesce_limit = 16 * 1024;

  std::deque<std::vector<std::byte>> chunks_;
  std::size_t front_offset_ = 0;  // bytes of chunks_.front() already sent
  std::size_t size_ = 0;
  std::vector<boost::asio::const_buffer> gather_;
};

}  // namespace conduit::detail
