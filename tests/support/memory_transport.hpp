// A stream transport held in memory, for unit tests of protocols (as
// Twisted's StringTransport): no loop, no socket. The test plays the peer
// and the loop: it hands the protocol bytes, an EOF or an error, reads what
// the protocol wrote, and decides how fast the peer takes it (flow control).
// It keeps docs/SPEC.md's stream rules (S2-S17) that a protocol can see.
//
//   open --close()--> closing --buffer drained--> lost (connection_lost once)
//     |                                             ^
//     +--abort() / lose(error) / a callback throws--+
//
// What asyncio does "soon" (connection_lost after close or abort, reads
// resumed) waits for settle(), which every peer-side call makes at its end,
// so a protocol's close() inside data_received sees connection_lost only
// after data_received returns, as with a real loop.
#pragma once

#include <conduit/protocols.hpp>
#include <conduit/transports.hpp>

#include <any>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace conduit::testing {

class MemoryTransport final : public Transport {
 public:
  /// A transport for `protocol` (a Protocol or a BufferedProtocol), its
  /// connection_made already called.
  static std::shared_ptr<MemoryTransport> connect(std::shared_ptr<BaseProtocol> protocol);

  // ---- the peer's side (the test) ----
  /// Bytes from the peer: data_received, or get_buffer/buffer_updated until
  /// all are taken; held while reading is paused.
  void receive(std::string_view data);
  /// The peer's EOF: eof_received; a false return closes the transport.
  void receive_eof();
  /// The connection breaks with `error` (ECONNRESET, say): connection_lost(error).
  void lose(std::exception_ptr error);
  /// What the peer has taken of the protocol's writes so far, and takes it.
  std::string take_written();
  /// Whether the protocol wrote its EOF (write_eof) and the peer saw it.
  bool eof_written() const { return eof_written_ && buffered_.empty(); }
  /// Flow control: with `hold`, writes stay buffered (get_write_buffer_size
  /// counts them, pause_writing past the high watermark) until drain().
  void hold_writes(bool hold);
  /// The peer takes `bytes` of what is buffered (all by default).
  void drain(std::size_t bytes = static_cast<std::size_t>(-1));
  /// Run what asyncio would run soon: deferred connection_lost, held reads.
  void settle();
  /// extra_info values (peername, sockname, ...), as the test sets them.
  void set_extra_info(std::string name, std::any value) { extra_[std::move(name)] = std::move(value); }
  /// Whether connection_lost has been called, and the exceptions callbacks threw.
  bool lost() const { return state_ == State::lost; }
  const std::vector<std::exception_ptr>& callback_errors() const { return callback_errors_; }

  // ---- Transport ----
  bool is_closing() const override { return state_ != State::open; }
  void close() override;
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override { protocol_ = std::move(protocol); }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_; }
  bool is_reading() const override { return reading_ && state_ == State::open; }
  void pause_reading() override;
  void resume_reading() override;
  void set_write_buffer_limits(std::optional<std::int64_t> high = std::nullopt,
                               std::optional<std::int64_t> low = std::nullopt) override;
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return {low_, high_}; }
  std::size_t get_write_buffer_size() const override { return buffered_.size(); }
  using WriteTransport::write;
  using WriteTransport::writelines;
  void write(std::span<const std::byte> data) override;
  void writelines(std::span<const std::span<const std::byte>> buffers) override;
  void write_eof() override;
  bool can_write_eof() const override { return true; }
  void abort() override;

 private:
  enum class State { open, closing, lost };
  MemoryTransport() = default;

  std::any extra_info(std::string_view name) const override;
  void deliver(std::string_view data);
  /// A protocol callback: what it throws is fatal (S15), as on a real transport.
  bool guarded(const std::function<void()>& call);
  void drain_now(std::size_t bytes = static_cast<std::size_t>(-1));
  void fail(std::exception_ptr error);
  void check_flow();

  std::shared_ptr<BaseProtocol> protocol_;
  State state_ = State::open;
  bool reading_ = true;
  bool eof_received_ = false;
  bool eof_requested_ = false, eof_written_ = false;
  bool hold_ = false;
  bool paused_writing_ = false;
  bool lost_pending_ = false;  // connection_lost waits for settle()
  std::exception_ptr lost_error_;
  std::size_t high_ = default_high_water, low_ = default_high_water / 4;
  std::string buffered_;  // written, not yet taken by the peer
  std::string taken_;     // taken by the peer, not yet read by the test
  std::string held_;      // received while reading was paused
  bool held_eof_ = false;
  std::map<std::string, std::any, std::less<>> extra_;
  std::vector<std::exception_ptr> callback_errors_;
};

}  // namespace conduit::testing
