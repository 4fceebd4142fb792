#include "grpc_runtime.hpp"

#include <absl/synchronization/mutex.h>

namespace conduit::service {

void quiet_grpc_mutex_checks() {
  // With detection on, every absl::Mutex lock updates a global lock graph
  // (GraphCycles showed in perf profiles of the service). It reports lock
  // cycles in gRPC itself, which gRPC's own tests cover; users of a release
  // build would never see it.
  static const bool once = [] {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
    return true;
  }();
  (void)once;
}

}  // namespace conduit::service
