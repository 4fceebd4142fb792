// The descriptors sessions may spend. Every connection, listener, pipe and
// datagram socket a session holds is a descriptor of the service's process,
// and so is every caller's gRPC connection: when sessions take them all,
// gRPC's listener fails accept4 with EMFILE and may never recover
// (grpc#16058), so new callers hang while old ones carry on. The budget keeps
// a reserve below RLIMIT_NOFILE that sessions never touch.
//
// What is counted is what the process really holds (/proc/self/fd), not an
// estimate per session kind: callers' connections, a child's pipes and the
// loop's own descriptors all count, whoever opened them.
#pragma once

#include <cstddef>
#include <string>

namespace conduit::service {

class DescriptorBudget {
 public:
  /// Raise the soft RLIMIT_NOFILE to the hard one, then keep `reserve`
  /// descriptors of it (0: 64, or a sixteenth of the limit if more) out
  /// of sessions' reach.
  explicit DescriptorBudget(std::size_t reserve = 0);

  /// Whether sessions may open `more` descriptors now.
  bool allows(std::size_t more) const;
  /// Why not, for a refusal: "N descriptors open, M for sessions (limit L)".
  std::string describe() const;

  /// Descriptors open in this process now.
  static std::size_t open_now();
  /// What sessions may hold in all (the limit less the reserve).
  std::size_t limit() const { return budget_; }

 private:
  std::size_t rlimit_ = 0;
  std::size_t budget_ = 0;
};

}  // namespace conduit::service
