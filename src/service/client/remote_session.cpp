#include "remote_session.hpp"

#include <conduit/service/grpc_runtime.hpp>

namespace conduit::service {

std::exception_ptr status_error(const grpc::Status& status) {
  const std::string code(status_code_name(status.error_code()));
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return std::make_exception_ptr(
        ServiceUnreachable("cannot reach the service (" + code + "): " + status.error_message()));
  }
  return std::make_exception_ptr(
      std::runtime_error("the service refused the session (" + code + "): " + status.error_message()));
}

std::exception_ptr broken_error(const grpc::Status& status) {
  return std::make_exception_ptr(std::runtime_error("the session with the service broke off (" +
                                                    std::string(status_code_name(status.error_code())) +
                                                    "): " + status.error_message()));
}

}  // namespace conduit::service
