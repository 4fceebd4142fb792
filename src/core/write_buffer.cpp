#include "write_buffer.hpp"

#include <algorithm>

namespace conduit::detail {

void WriteBuffer::append(std::span<const std::byte> data) {
  if (data.empty()) return;
  if (!chunks_.empty() && chunks_.back().size() + data.size() <= coalesce_limit) {
    auto& tail = chunks_.back();
    tail.insert(tail.end(), data.begin(), data.end());
  } else {
    std::vector<std::byte> chunk;
    chunk.reserve(std::max(data.size(), data.size() < coalesce_limit ? coalesce_limit : 0));
    chunk.assign(data.begin(), data.end());
    chunks_.push_back(std::move(chunk));
  }
  size_ += data.size();
}

const std::vector<boost::asio::const_buffer>& WriteBuffer::gather() {
  gather_.clear();
  std::size_t offset = front_offset_;
  for (const auto& chunk : chunks_) {
    if (gather_.size() == max_gather) break;
    gather_.emplace_back(chunk.data() + offset, chunk.size() - offset);
    offset = 0;
  }
  return gather_;
}

void WriteBuffer::consume(std::size_t n) {
  size_ -= n;
  while (n > 0) {
    const std::size_t left_in_front = chunks_.front().size() - front_offset_;
    if (n < left_in_front) {
      front_offset_ += n;
      return;
    }
    n -= left_in_front;
    chunks_.pop_front();
    front_offset_ = 0;
  }
}

void WriteBuffer::clear() {
  chunks_.clear();
  front_offset_ = 0;
  size_ = 0;
}

}  // namespace conduit::detail
