#include <conduit/service/grpc_runtime.hpp>

#include <conduit/service/audit_log.hpp>

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

std::string_view status_code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

void set_grpc_log_sink(AuditLog* sink) {
  static const bool once = [] {
    gpr_set_log_function(forward_grpc_log);
    return true;
  }();
  (void)once;
  grpc_log_sink.store(sink);
}

}  // namespace conduit::service
