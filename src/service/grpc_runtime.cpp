#include "grpc_runtime.hpp"

#include "audit_log.hpp"

#include <absl/synchronization/mutex.h>
#include <grpc/support/log.h>

#include <atomic>

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

namespace {

std::atomic<AuditLog*> grpc_log_sink{nullptr};

void forward_grpc_log(gpr_log_func_args* args) {
  AuditLog* sink = grpc_log_sink.load();
  if (!sink || args->severity != GPR_LOG_SEVERITY_ERROR) return;
  sink->write(LogLevel::warning, "grpc", std::string("gRPC: ") + args->message);
}

}  // namespace

void set_grpc_log_sink(AuditLog* sink) {
  static const bool once = [] {
    gpr_set_log_function(forward_grpc_log);
    return true;
  }();
  (void)once;
  grpc_log_sink.store(sink);
}

}  // namespace conduit::service
