#include "support/memory_transport.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace conduit::testing {

std::shared_ptr<MemoryTransport> MemoryTransport::connect(std::shared_ptr<BaseProtocol> protocol) {
  auto* stream = dynamic_cast<Protocol*>(protocol.get());
  auto* buffered = dynamic_cast<BufferedProtocol*>(protocol.get());
  if (!stream && !buffered) throw std::invalid_argument("MemoryTransport carries a Protocol or a BufferedProtocol");
  std::shared_ptr<MemoryTransport> transport(new MemoryTransport());
  transport->protocol_ = protocol;
  try {
    if (stream)
      stream->connection_made(transport);
    else
      buffered->connection_made(transport);
  } catch (...) {
    // S15: what connection_made throws is reported, and the transport carries on.
    transport->callback_errors_.push_back(std::current_exception());
  }
  transport->settle();
  return transport;
}

// ---- the peer's side ----

void MemoryTransport::receive(std::string_view data) {
  if (state_ != State::open || eof_received_ || data.empty()) return;
  if (!reading_) {
    held_.append(data);
  } else {
    deliver(data);
  }
  settle();
}

void MemoryTransport::deliver(std::string_view data) {
  if (auto* p = dynamic_cast<Protocol*>(protocol_.get())) {
    guarded([&] { p->data_received(std::as_bytes(std::span(data.data(), data.size()))); });
    return;
  }
  auto* b = dynamic_cast<BufferedProtocol*>(protocol_.get());
  while (b && !data.empty() && state_ == State::open) {
    std::span<std::byte> buffer;
    if (!guarded([&] { buffer = b->get_buffer(data.size()); })) return;
    if (buffer.empty()) {
      fail(std::make_exception_ptr(std::runtime_error("get_buffer() returned an empty buffer")));
      return;
    }
    const std::size_t n = std::min(buffer.size(), data.size());
    std::memcpy(buffer.data(), data.data(), n);
    if (!guarded([&] { b->buffer_updated(n); })) return;
    data.remove_prefix(n);
  }
}

void MemoryTransport::receive_eof() {
  if (state_ != State::open || eof_received_) return;
  if (!reading_) {
    held_eof_ = true;
    return;
  }
  eof_received_ = true;
  bool keep_open = false;
  const bool ok = guarded([&] {
    if (auto* p = dynamic_cast<Protocol*>(protocol_.get()))
      keep_open = p->eof_received();
    else if (auto* b = dynamic_cast<BufferedProtocol*>(protocol_.get()))
      keep_open = b->eof_received();
  });
  if (ok && !keep_open) close();  // S5
  settle();
}

void MemoryTransport::lose(std::exception_ptr error) {
  fail(std::move(error));
  settle();
}

std::string MemoryTransport::take_written() { return std::exchange(taken_, {}); }

void MemoryTransport::hold_writes(bool hold) {
  hold_ = hold;
  if (!hold_) drain();
}

void MemoryTransport::drain(std::size_t bytes) {
  drain_now(bytes);
  settle();
}

void MemoryTransport::drain_now(std::size_t bytes) {
  const std::size_t n = std::min(bytes, buffered_.size());
  taken_.append(buffered_, 0, n);
  buffered_.erase(0, n);
  if (eof_requested_ && buffered_.empty()) eof_written_ = true;
  check_flow();
  if (state_ == State::closing && buffered_.empty()) lost_pending_ = true;  // S12: flushed, then lost
}

void MemoryTransport::settle() {
  if (reading_ && state_ == State::open && (!held_.empty() || held_eof_)) {
    const std::string data = std::exchange(held_, {});
    if (!data.empty()) deliver(data);
    if (std::exchange(held_eof_, false)) receive_eof();
  }
  if (lost_pending_ && state_ != State::lost) {
    lost_pending_ = false;
    state_ = State::lost;
    auto protocol = std::exchange(protocol_, nullptr);
    if (protocol) {
      try {
        protocol->connection_lost(lost_error_);
      } catch (...) {
        callback_errors_.push_back(std::current_exception());
      }
    }
  }
}

// ---- Transport ----

void MemoryTransport::close() {
  if (state_ != State::open) return;  // S12: a second close does nothing
  state_ = State::closing;
  reading_ = false;
  if (!hold_) drain_now();  // a peer that takes everything at once
  if (buffered_.empty()) lost_pending_ = true;
}

void MemoryTransport::abort() {
  if (state_ == State::lost) return;
  buffered_.clear();  // S13: buffered data is dropped
  state_ = State::closing;
  lost_pending_ = true;
}

void MemoryTransport::fail(std::exception_ptr error) {
  if (state_ == State::lost) return;
  buffered_.clear();
  state_ = State::closing;
  lost_error_ = std::move(error);
  lost_pending_ = true;
}

bool MemoryTransport::guarded(const std::function<void()>& call) {
  try {
    call();
    return true;
  } catch (...) {
    callback_errors_.push_back(std::current_exception());
    fail(std::current_exception());  // S15: fatal, connection_lost gets it
    return false;
  }
}

void MemoryTransport::pause_reading() {
  if (state_ == State::open) reading_ = false;  // S16
}

void MemoryTransport::resume_reading() {
  if (state_ == State::open) reading_ = true;  // what was held comes at settle()
}

void MemoryTransport::set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) {
  std::int64_t h = high ? *high : low ? 4 * *low : static_cast<std::int64_t>(default_high_water);
  std::int64_t l = low ? *low : h / 4;
  if (!(h >= l && l >= 0)) {
    throw std::invalid_argument("high (" + std::to_string(h) + ") must be >= low (" + std::to_string(l) +
                                ") must be >= 0");
  }
  high_ = static_cast<std::size_t>(h);
  low_ = static_cast<std::size_t>(l);
  check_flow();
}

void MemoryTransport::write(std::span<const std::byte> data) {
  if (eof_requested_) throw std::logic_error("Cannot call write() after write_eof()");   // S8
  if (data.empty()) return;                                                              // S7
  if (state_ == State::lost || (state_ == State::closing && buffered_.empty())) return;  // S9
  buffered_.append(reinterpret_cast<const char*>(data.data()), data.size());
  if (!hold_) return drain_now();
  check_flow();
}

void MemoryTransport::writelines(std::span<const std::span<const std::byte>> buffers) {
  for (const auto& buffer : buffers) write(buffer);  // S10
}

void MemoryTransport::write_eof() {
  if (state_ != State::open || eof_requested_) return;  // S11
  eof_requested_ = true;
  if (buffered_.empty()) eof_written_ = true;
}

std::any MemoryTransport::extra_info(std::string_view name) const {
  auto it = extra_.find(name);
  return it == extra_.end() ? std::any() : it->second;
}

void MemoryTransport::check_flow() {
  if (!protocol_ || state_ == State::lost) return;
  if (!paused_writing_ && buffered_.size() > high_) {
    paused_writing_ = true;
    protocol_->pause_writing();
  } else if (paused_writing_ && buffered_.size() <= low_) {
    paused_writing_ = false;
    protocol_->resume_writing();
  }
}

}  // namespace conduit::testing
