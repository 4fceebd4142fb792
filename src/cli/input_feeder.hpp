// Input (standard input, or a file) fed to a transport no faster than it
// takes it: the tools' --stdin. The transport's pause_writing stops the
// reading and resume_writing restarts it, so memory stays bounded by its
// watermarks whatever the input's size (a 1 GiB file, /dev/zero).
#pragma once

#include <conduit/event_loop.hpp>

#include <functional>
#include <memory>
#include <span>

namespace conduit::cli {

/// Reads a descriptor on the loop and hands each chunk to `sink`; at end
/// of input calls `on_eof` once. A pipe, terminal or socket is read
/// through the loop (epoll); anything epoll cannot watch (a regular file,
/// /dev/zero) in 64 KiB reads posted to the loop one at a time, so other
/// work interleaves.
class InputFeeder {
 public:
  using Sink = std::function<void(std::span<const std::byte>)>;

  InputFeeder(EventLoop& loop, Sink sink, std::function<void()> on_eof);
  InputFeeder(const InputFeeder&) = delete;
  InputFeeder& operator=(const InputFeeder&) = delete;
  ~InputFeeder();

  /// Start reading `fd`, which is ours from now on. Returns false (with
  /// the reason in `error`) if it cannot be read at all.
  bool start(int fd, std::string& error);
  /// The transport is full (true) or has room again (false).
  void set_paused(bool paused);
  /// Read no more (the receiver went away). Returns whether input was left.
  bool stop();
  /// Whether the end of the input was reached.
  bool finished() const { return finished_; }

 private:
  class PipeReader;
  void read_chunk();
  void end_of_input();

  EventLoop& loop_;
  Sink sink_;
  std::function<void()> on_eof_;
  std::shared_ptr<Transport> pipe_;  // reading through the loop
  int fd_ = -1;                      // reading by posted reads
  bool paused_ = false;
  bool read_posted_ = false;
  bool finished_ = false;
  bool stopped_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for posted reads
};

}  // namespace conduit::cli
