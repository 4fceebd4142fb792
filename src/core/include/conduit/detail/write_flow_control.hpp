// Write flow control shared by every writable transport, local or remote
// (asyncio's transports._FlowControlMixin): watermarks and the pause/resume
// pairing. Internal: not installed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>

namespace conduit::detail {

/// Decides when a transport owes its protocol pause_writing() or
/// resume_writing(); the transport makes the calls.
class WriteFlowControl {
 public:
  /// When pause_writing() is owed: asyncio's socket transports pause
  /// strictly above the high watermark, its TLS transport at or above it.
  enum class PauseRule { above_high, at_or_above_high };

  /// `default_high`: the high watermark when none is given (low = high / 4).
  explicit WriteFlowControl(std::size_t default_high, PauseRule rule = PauseRule::above_high)
      : default_high_(default_high), rule_(rule) {
    set_limits(std::nullopt, std::nullopt);
  }

  /// asyncio's _set_write_buffer_limits: fills in the missing watermark and
  /// throws std::invalid_argument unless high >= low >= 0.
  void set_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low);

  /// (low, high), as get_write_buffer_limits() returns them.
  std::pair<std::size_t, std::size_t> limits() const { return {low_, high_}; }

  /// True between a pause_writing() and its resume_writing().
  bool paused() const { return paused_; }

  /// True once when `buffered` goes over the high watermark (as the rule
  /// says): the caller then calls pause_writing().
  bool should_pause(std::size_t buffered) {
    const bool over = rule_ == PauseRule::above_high ? buffered > high_ : buffered >= high_;
    if (paused_ || !over) return false;
    paused_ = true;
    return true;
  }

  /// True once when, after a pause, `buffered` is at or below the low
  /// watermark: the caller then calls resume_writing().
  bool should_resume(std::size_t buffered) {
    if (!paused_ || buffered > low_) return false;
    paused_ = false;
    return true;
  }

 private:
  std::size_t default_high_;
  PauseRule rule_;
  std::size_t high_ = 0;
  std::size_t low_ = 0;
  bool paused_ = false;
};

}  // namespace conduit::detail
