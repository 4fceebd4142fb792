// One unary call to a conduit service from a tool (health, sessions,
// faults): --via's flags read, a channel, one deadline for reaching it and
// for the call, the token on the call, and the tools' exit codes for what
// went wrong.
#pragma once

#include "via_flags.hpp"

#include "conduit/v1/conduit.grpc.pb.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>

namespace conduit::cli {

class ServiceCall {
 public:
  /// Throws std::invalid_argument for flags that cannot be used (a file
  /// that cannot be read, a bad --via).
  ServiceCall(const char* tool, const ViaFlags& via, double timeout_seconds);

  /// False (having said so on stderr) if the service cannot be reached
  /// before the deadline.
  bool reach();
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  v1::Conduit::Stub& stub();
  /// A context for one call: the token, the deadline.
  std::unique_ptr<grpc::ClientContext> context() const;
  /// Says on stderr why `status` failed; the tool's exit code for it.
  int failed(const grpc::Status& status) const;

 private:
  const char* tool_;
  service::RemoteOptions remote_;
  std::chrono::system_clock::time_point deadline_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Conduit::Stub> stub_;
};

}  // namespace conduit::cli
