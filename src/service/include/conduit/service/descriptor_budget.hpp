// The descriptors sessions may spend. Every connection, listener, pipe and
// datagram socket a session holds is a descriptor of the service's process,
// and so is every caller's gRPC connection: when sessions take them all,
// gRPC's listener fails accept4 with EMFILE and may never recover
// (grpc#16058), so new callers hang while old ones carry on. The budget keeps
// a reserve below RLIMIT_NOFILE that sessions never touch.
//
// What is counted is what the process really holds (/proc/self/fd), not an
// estimate per session kind: callers' connections, a child's pipes and the
// loop's own descriptors all count, whoever opened them. A count costs
// about 0.4 us a descriptor (the kernel makes an entry for each: 0.4 ms with
// 1024 open), so it is taken at most every 100 ms while far from the limit;
// in between, what was allowed since is added to it. Near the limit every
// check counts afresh.
#pragma once

#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>

namespace conduit::service {

class DescriptorBudget {
 public:
  /// Raise the soft RLIMIT_NOFILE to the hard one, then keep `reserve`
  /// descriptors of it (0: 64, or a sixteenth of the limit if more) out
  /// of sessions' reach.
  explicit DescriptorBudget(std::size_t reserve = 0);

  /// Whether sessions may open `more` descriptors beyond those open now;
  /// if so, they are counted as taken until the next count (any thread).
  bool allows(std::size_t more);
  /// Why not, for a refusal: "N descriptors open, M for sessions (limit L)",
  /// N as the last count found it (a refusal follows a fresh count).
  std::string describe();

  /// Descriptors open in this process now.
  static std::size_t open_now();

 private:
  std::size_t rlimit_ = 0;
  std::size_t budget_ = 0;
  std::mutex mutex_;
  std::size_t counted_ = 0;  // at the last count
  std::size_t allowed_since_ = 0;
  std::chrono::steady_clock::time_point counted_at_{};
};

}  // namespace conduit::service
