#include "service_call.hpp"

#include "common.hpp"

#include <conduit/service/grpc_runtime.hpp>

#include <iostream>

namespace conduit::cli {

ServiceCall::ServiceCall(const char* tool, const ViaFlags& via, double timeout_seconds)
    : tool_(tool), remote_(read_remote(via)) {
  deadline_ = std::chrono::system_clock::now() + std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                                     std::chrono::duration<double>(timeout_seconds));
  channel_ = service::make_channel(remote_);
}

bool ServiceCall::reach() {
  if (channel_->WaitForConnected(deadline_)) return true;
  std::cerr << tool_ << ": cannot reach the service at " << remote_.address << '\n';
  return false;
}

v1::Conduit::Stub& ServiceCall::stub() {
  if (!stub_) stub_ = v1::Conduit::NewStub(channel_);
  return *stub_;
}

std::unique_ptr<grpc::ClientContext> ServiceCall::context() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(deadline_);
  if (!remote_.token.empty()) context->AddMetadata("authorization", "Bearer " + remote_.token);
  return context;
}

int ServiceCall::failed(const grpc::Status& status) const {
  std::cerr << tool_ << ": " << status.error_message() << " (" << service::status_code_name(status.error_code())
            << ")\n";
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED: return exit_service_unreachable;
    case grpc::StatusCode::INVALID_ARGUMENT: return exit_usage;
    default: return exit_failure;
  }
}

}  // namespace conduit::cli
