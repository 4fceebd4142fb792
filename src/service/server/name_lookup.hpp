// GetAddrInfo and GetNameInfo: the libc resolver on the service's host, for
// callers whose names must mean what they mean where their sessions connect.
// getaddrinfo(3) blocks (DNS), so lookups run on threads of their own, never
// on gRPC's callback threads nor the loop's; a bounded number wait.
#pragma once

#include "conduit/v1/conduit.pb.h"

#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <cstddef>
#include <functional>

namespace conduit::service {

class NameLookups {
 public:
  /// `threads` lookups at once; past `max_pending` waiting or running,
  /// submit() refuses.
  explicit NameLookups(std::size_t threads = 4, std::size_t max_pending = 64);
  /// Waits for the lookups under way.
  ~NameLookups();
  NameLookups(const NameLookups&) = delete;
  NameLookups& operator=(const NameLookups&) = delete;

  /// Runs `lookup` on a lookup thread; false (and it never runs) when
  /// max_pending are already waiting.
  bool submit(std::function<void()> lookup);

  /// The calls themselves, blocking; the answer's gai_error is getaddrinfo's.
  static void getaddrinfo(const v1::GetAddrInfoRequest& request, v1::GetAddrInfoResponse& response);
  static void getnameinfo(const v1::GetNameInfoRequest& request, v1::GetNameInfoResponse& response);

 private:
  boost::asio::thread_pool pool_;
  std::atomic<std::size_t> pending_{0};
  const std::size_t max_pending_;
};

}  // namespace conduit::service
