// Faults a proxy injects into the traffic it relays (toxiproxy's "toxics",
// netem's impairments): what each does, in which direction, and the
// schedule that turns a direction's faults into when each byte leaves.
#pragma once

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace conduit {

/// Which way a fault acts: on what the client sends (upstream), on what
/// the upstream sends back (downstream), or both.
enum class FaultDirection { upstream, downstream, both };

namespace fault {

using Duration = std::chrono::microseconds;

/// Every chunk waits `delay` plus a uniform draw from [-jitter, +jitter]
/// (never below zero). On a stream, bytes keep their order: a chunk never
/// leaves before the one ahead of it.
struct Latency {
  Duration delay{0};
  Duration jitter{0};
};

/// At most `bytes_per_second` leave per second (a token bucket with one
/// 10 ms burst).
struct Bandwidth {
  std::uint64_t bytes_per_second = 0;
};

/// Streams: what arrives leaves in pieces of `average_size` plus or minus
/// `size_variation` bytes, `delay` apart.
struct Slicer {
  std::size_t average_size = 0;
  std::size_t size_variation = 0;
  Duration delay{0};
};

/// Nothing is forwarded; with `close_after`, the connection is closed that
/// long after the fault took hold (toxiproxy's "timeout").
struct Blackhole {
  std::optional<Duration> close_after;
};

/// Streams: the connection is reset (RST both ways) once `after_bytes`
/// have gone through in this direction, or `after` has passed since it
/// took hold; with neither, at once.
struct Reset {
  std::optional<std::uint64_t> after_bytes;
  std::optional<Duration> after;
};

/// Streams: `bytes` go through in this direction, then the connection is
/// closed.
struct LimitData {
  std::uint64_t bytes = 0;
};

/// Streams: an end of stream (EOF or close) is passed on `delay` late.
struct SlowClose {
  Duration delay{0};
};

/// Datagrams: each is dropped with this probability (0 to 1).
struct Loss {
  double probability = 0;
};

/// Datagrams: each is sent twice with this probability.
struct Duplicate {
  double probability = 0;
};

/// Datagrams: with this probability a datagram is held back `hold`, so
/// that the ones behind it overtake it.
struct Reorder {
  double probability = 0;
  Duration hold{std::chrono::milliseconds(10)};
};

using Kind = std::variant<Latency, Bandwidth, Slicer, Blackhole, Reset, LimitData, SlowClose, Loss, Duplicate, Reorder>;

/// A range of client addresses: an address and how many of its leading
/// bits a client's must share ("10.0.0.0/8", "::1/128"; an address alone is
/// all of its bits). An IPv4 client seen as an IPv4-mapped IPv6 address (a
/// proxy listening on "::") is matched as the IPv4 address it is.
struct Network {
  boost::asio::ip::address address;
  unsigned prefix = 0;

  /// Throws std::invalid_argument naming what is wrong with `text`.
  static Network parse(std::string_view text);
  /// "10.0.0.0/8, 192.0.2.7": comma-separated, spaces around each ignored.
  static std::vector<Network> parse_list(std::string_view list);
  bool contains(const boost::asio::ip::address& client) const;
  std::string to_string() const;
};

/// Which connections a fault acts on, and when in each one's life (for a
/// UDP proxy: each client's, from its first datagram). Unset, every
/// connection, all the time.
struct Scope {
  /// Only clients whose address is in one of these (empty: every client).
  std::vector<Network> clients;
  /// It starts to act once the connection is this old and has carried this
  /// many bytes in the fault's direction (both ways, for a fault on both),
  /// and stops at whichever stop comes first.
  std::optional<Duration> start_after, stop_after;
  std::optional<std::uint64_t> start_after_bytes, stop_after_bytes;

  bool timed() const { return start_after || stop_after || start_after_bytes || stop_after_bytes; }
};

/// The fault's kind as the API spells it: "latency", "bandwidth", ...
const char* kind_name(const Kind& kind);

/// Whether the kind applies to streams (TCP, Unix, TLS proxies) and to
/// datagrams (UDP proxies).
bool for_streams(const Kind& kind);
bool for_datagrams(const Kind& kind);

}  // namespace fault

/// One fault, named so that it can be changed and removed while it acts.
struct Fault {
  std::string name;
  FaultDirection direction = FaultDirection::both;
  fault::Kind kind;
  /// The chance it acts on a connection (toxiproxy's toxicity): drawn once
  /// per connection (a UDP proxy: per client), as the connection starts or
  /// the fault is first set; 1, every connection; 0, none.
  double toxicity = 1;
  /// The clients it is for, and when in a connection's life it acts.
  fault::Scope scope{};

  /// Throws std::invalid_argument naming what is wrong: an empty name, a
  /// negative or zero quantity where one is needed, a probability outside
  /// [0, 1], a jitter larger than the delay, a scope that stops before it
  /// starts.
  void validate() const;
  /// Throws std::invalid_argument unless a stream proxy (`datagram` false)
  /// or a datagram proxy carries out its kind, saying which one does.
  void check_kind_for(bool datagram) const;
  /// Whether it acts on `direction` (upstream or downstream).
  bool acts_on(FaultDirection way) const { return direction == FaultDirection::both || direction == way; }
};

/// A set of faults, each name at most once, in the order they were added.
class FaultList {
 public:
  /// Add `fault`, or replace the one of that name (keeping its place).
  /// Throws std::invalid_argument if it is not valid.
  void set(Fault fault);
  /// Remove the fault of that name; false if there was none.
  bool remove(const std::string& name);
  const std::vector<Fault>& all() const { return faults_; }
  /// The first fault of kind K acting on `direction`, or null.
  template <class K>
  const K* find(FaultDirection direction) const {
    for (const auto& f : faults_) {
      if (const K* k = std::get_if<K>(&f.kind); k && f.acts_on(direction)) return k;
    }
    return nullptr;
  }

 private:
  std::vector<Fault> faults_;
};

/// The faults acting on one connection now: those of its proxy whose
/// toxicity draw came out for it (each fault's drawn once, by name, for the
/// connection's life, and again if its toxicity changes), that are for its client, and whose scope's window
/// is open at its age and byte counts.
///
///   set_client, update: which faults are the connection's at all;
///   carried, refresh:   which of those act now (get()).
class ConnectionFaults {
 public:
  using Clock = std::chrono::steady_clock;

  ConnectionFaults(std::uint64_t seed, Clock::time_point started) : random_(seed), started_(started) {}
  /// The client's address, for faults that are for some clients only
  /// (until it is known, such faults do not act).
  void set_client(const boost::asio::ip::address& client);
  /// Take the proxy's list again (after a fault was set or removed), and
  /// refresh at `now`.
  void update(const FaultList& proxy_faults, Clock::time_point now = Clock::now());
  /// `bytes` more came in `way` (upstream or downstream).
  void carried(FaultDirection way, std::uint64_t bytes) { bytes_[way == FaultDirection::upstream ? 0 : 1] += bytes; }
  /// Recompute which faults act at `now`; true if that changed.
  bool refresh(Clock::time_point now = Clock::now());
  const FaultList& get() const { return active_; }

  /// When a fault's time window next opens or closes (none pending: nullopt).
  std::optional<Clock::time_point> next_change() const;
  /// How many more bytes in `way` until a fault's byte window opens or
  /// closes (at least 1; none pending: nullopt).
  std::optional<std::uint64_t> bytes_to_change(FaultDirection way) const;

 private:
  std::uint64_t bytes_for(FaultDirection direction) const;
  bool acts(const Fault& fault, Clock::time_point now) const;

  std::mt19937_64 random_;
  Clock::time_point started_;
  std::optional<boost::asio::ip::address> client_;
  std::array<std::uint64_t, 2> bytes_{};  // upstream, downstream
  struct Draw {
    double toxicity;  // drawn for this toxicity
    bool acts;
  };
  std::map<std::string, Draw> drawn_;  // by fault name
  FaultList proxy_;                    // the proxy's faults, as last given
  FaultList mine_;                     // those whose toxicity and clients are this connection's
  bool timed_ = false;                 // one of mine_ has a window
  std::vector<bool> acting_;           // with timed_: which of mine_ act now
  FaultList active_;                   // those of mine_ whose window is open
};

/// When the pieces of a stream's chunk leave, given one direction's faults:
/// slicing, then latency (order kept), then bandwidth. Blackhole, reset,
/// limit and slow close are for the proxy to act on; this only times bytes.
class StreamSchedule {
 public:
  using Clock = std::chrono::steady_clock;
  struct Piece {
    Clock::time_point at;
    std::size_t size;
  };

  explicit StreamSchedule(std::uint64_t seed) : random_(seed) {}

  /// Split `size` bytes arriving at `now` into pieces with their times.
  std::vector<Piece> plan(const FaultList& faults, FaultDirection direction, std::size_t size, Clock::time_point now);

  /// When an end of stream that arrives at `now` is passed on: after the
  /// last piece planned, plus a slow close's delay.
  Clock::time_point plan_end(const FaultList& faults, FaultDirection direction, Clock::time_point now);

  /// When something that must follow every planned piece, with no delay of
  /// its own (a reset), happens.
  Clock::time_point after_last(Clock::time_point now) const { return std::max(now, last_); }

 private:
  Clock::duration draw_jitter(fault::Duration jitter);

  std::mt19937_64 random_;
  Clock::time_point last_{};       // when the last planned piece leaves
  Clock::time_point bandwidth_{};  // when the bucket next has room
};

/// When each datagram leaves, given one direction's faults: dropped
/// (blackhole, loss), sent twice (duplicate), held back (reorder), delayed
/// (latency with jitter: datagrams may overtake each other, as on a real
/// network), and paced (bandwidth).
class DatagramSchedule {
 public:
  using Clock = std::chrono::steady_clock;

  explicit DatagramSchedule(std::uint64_t seed) : random_(seed) {}

  /// When the copies of a `size`-byte datagram arriving at `now` leave:
  /// none if it is dropped, two if it is duplicated.
  std::vector<Clock::time_point> plan(const FaultList& faults, FaultDirection direction, std::size_t size,
                                      Clock::time_point now);

 private:
  bool chance(double probability);

  std::mt19937_64 random_;
  Clock::time_point bandwidth_{};
};

}  // namespace conduit
