// Work deferred to the loop's next turn, run in one batch (libuv's pending
// queue): every transport that read data this turn tries its next read on
// the next one, and all of them together cost the scheduler one posted
// handler, not one each. Per request on a busy connection, the post, the
// scheduler's lock and its bookkeeping were most of the loop's own work.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <memory>
#include <utility>
#include <vector>

namespace conduit::detail {

/// Something that runs on the next turn.
class TurnTarget {
 public:
  virtual void on_turn() = 0;

 protected:
  ~TurnTarget() = default;
};

/// The loop's queue of TurnTargets for the next turn.
///
/// What defer() adds during a batch runs in the next batch, after the
/// handlers queued meanwhile (I/O completions among them): one busy
/// connection cannot starve the others.
class NextTurn {
 public:
  explicit NextTurn(boost::asio::io_context::executor_type executor) : executor_(executor) {}
  NextTurn(const NextTurn&) = delete;
  NextTurn& operator=(const NextTurn&) = delete;

  /// Call target.on_turn() on the next turn; `keep` (its owner) stays
  /// alive until then.
  void defer(TurnTarget& target, std::shared_ptr<void> keep) {
    pending_.push_back({&target, std::move(keep)});
    if (posted_) return;
    posted_ = true;
    boost::asio::post(executor_, [this] { run_batch(); });
  }

  /// Drop what is pending without running it (the loop is going away).
  void clear() {
    pending_.clear();
    running_.clear();
  }

 private:
  struct Entry {
    TurnTarget* target;
    std::shared_ptr<void> keep;
  };

  void run_batch() {
    posted_ = false;
    running_.swap(pending_);  // what the batch defers goes to the next one
    for (Entry& entry : running_) entry.target->on_turn();
    running_.clear();  // keeps the capacity: no allocation per turn
  }

  boost::asio::io_context::executor_type executor_;
  std::vector<Entry> pending_;
  std::vector<Entry> running_;
  bool posted_ = false;
};

}  // namespace conduit::detail
