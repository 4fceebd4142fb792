// The read loop every readiness-based transport shares (sockets, datagram
// sockets, pipes): wait for readability, read once, and after a read that
// got data try the next read on the loop's next turn before waiting again.
#pragma once

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/error.hpp>

#include "next_turn.hpp"

namespace conduit::detail {

/// What one read attempt found.
enum class ReadOutcome {
  data,         // got something: read again on the next turn
  would_block,  // nothing there: wait for readability
  stopped,      // EOF, an error or a close: the owner ended reading
};

/// Drives the reads of `Owner`, which provides:
///   bool is_reading() const;            // may a read happen now?
///   ReadOutcome read_once();            // one non-blocking read, delivered
///   void on_read_wait_error(ec);        // the readability wait failed
///   std::shared_ptr<Owner> self();      // kept alive by each pending step
///
/// Why the next turn instead of waiting at once: under load the next data
/// is usually there by then, and a read that finds it costs no wait at all.
/// The loop's NextTurn runs every such read in one batch, and keeps one
/// busy transport from starving the others.
///
/// A transport whose peer answers only after it is answered (one proxied
/// request/response connection) finds nothing on its next turn: each such
/// miss costs a read that fails, then the wait anyway. After a miss the
/// pump waits at once for its next few reads (misses_skip), then tries the
/// next turn again. Measured (bench/proxy, bench/echo): ping-pong through
/// the proxy 1.28x -> 1.13x haproxy's CPU per byte; the echo server, whose
/// ten connections keep the next turn busy, unchanged.
///
///   idle --start()--> waiting --readable--> read --data--> posted --turn--> read
///     ^                  |                    |                  |
///     +---stop()---------+<---would_block-----+  (not reading: back to idle)
template <class Owner, class IoObject>
class ReadPump final : private TurnTarget {
 public:
  ReadPump(Owner& owner, IoObject& io, NextTurn& next_turn) : owner_(owner), io_(io), next_turn_(next_turn) {}

  /// Make sure a read will come: wait unless a wait or a turn is pending.
  void start() {
    if (state_ != State::idle) return;
    state_ = State::waiting;
    io_.async_wait(IoObject::wait_read,
                   boost::asio::bind_cancellation_slot(
                       cancel_.slot(), [this, keep = owner_.self()](const boost::system::error_code& ec) {
                         state_ = State::idle;
                         if (ec == boost::asio::error::operation_aborted) {
                           // Cancelled by stop(); start() may have come since.
                           if (owner_.is_reading()) start();
                           return;
                         }
                         if (!owner_.is_reading()) return;  // stopped just after it fired
                         if (ec) return owner_.on_read_wait_error(ec);
                         read(false);
                       }));
  }

  /// No more reads until start(): cancels a pending wait; a posted turn
  /// finds the owner not reading.
  void stop() {
    if (state_ == State::waiting) cancel_.emit(boost::asio::cancellation_type::all);
  }

 private:
  enum class State { idle, waiting, posted };

  /// Reads after a miss that wait at once instead of trying the next turn.
  static constexpr int misses_skip = 8;

  void read(bool on_a_turn) {
    const ReadOutcome outcome = owner_.read_once();
    if (!owner_.is_reading()) return;
    if (outcome == ReadOutcome::data) {
      if (skip_turns_ == 0) return post_turn();
      --skip_turns_;
      start();
    } else if (outcome == ReadOutcome::would_block) {
      if (on_a_turn) skip_turns_ = misses_skip;
      start();
    }
  }

  void post_turn() {
    state_ = State::posted;
    next_turn_.defer(*this, owner_.self());
  }

  void on_turn() override {
    state_ = State::idle;
    if (owner_.is_reading()) read(true);
  }

  Owner& owner_;
  IoObject& io_;
  NextTurn& next_turn_;
  State state_ = State::idle;
  int skip_turns_ = 0;  // reads left that wait at once (after a miss)
  boost::asio::cancellation_signal cancel_;
};

}  // namespace conduit::detail
