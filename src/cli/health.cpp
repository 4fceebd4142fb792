// conduit health: grpc.health.v1 Check against a service, for container
// health checks, with the exit codes every conduit tool uses.
#include "commands.hpp"
#include "common.hpp"
#include "service_call.hpp"

#include "grpc/health/v1/health.grpc.pb.h"

#include <grpcpp/grpcpp.h>

#include <iostream>
#include <memory>

namespace conduit::cli {

namespace {

// The tools' table (common.hpp): a health check is ok or not; what went
// wrong is on stderr.
enum HealthExit : int {
  health_serving = exit_ok,
  health_not_serving = exit_failure,  ///< or the Check call failed
  health_bad_arguments = exit_usage,
  health_unreachable = exit_service_unreachable,
};

struct HealthOptions {
  std::string address;
  std::string service;  // "" = the server as a whole
  ViaFlags via;
  double timeout = 5.0;
};

int run_health(const HealthOptions& options) {
  std::unique_ptr<ServiceCall> call;
  try {
    ViaFlags via = options.via;
    via.address = options.address;
    call = std::make_unique<ServiceCall>("conduit health", via, options.timeout);
  } catch (const std::invalid_argument& e) {
    std::cerr << "conduit health: " << e.what() << '\n';
    return health_bad_arguments;
  }
  if (!call->reach()) return health_unreachable;
  auto stub = grpc::health::v1::Health::NewStub(call->channel());
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(options.service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(call->context().get(), request, &response);
  if (!status.ok()) {
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      std::cerr << "conduit health: the server has no service named '" << options.service
                << "' (it serves conduit.v1.Conduit; leave --service out for the whole server)\n";
    } else {
      std::cerr << "conduit health: the Check call failed (" << status.error_code() << "): " << status.error_message()
                << '\n';
    }
    return health_not_serving;
  }
  const bool serving = response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  std::cout << "status: " << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()) << std::endl;
  return serving ? health_serving : health_not_serving;
}

}  // namespace

void set_health_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<HealthOptions>();
  CLI::App* cmd = app.add_subcommand("health", "Ask a conduit service (or any gRPC server) whether it is serving");
  cmd->add_option("--via", options->address, "The service, HOST[:PORT] (port 50051 if left out) or unix:/PATH")
      ->required();
  cmd->add_option("--token-file", options->via.token_file, "File whose first line is the service's bearer token")
      ->check(CLI::ExistingFile);
  cmd->add_option("--via-cafile", options->via.cafile, "Speak TLS to the service, trusting this CA (PEM)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--via-cert", options->via.cert, "Client certificate (PEM) for mTLS")->check(CLI::ExistingFile);
  cmd->add_option("--via-key", options->via.key, "Its private key (PEM)")->check(CLI::ExistingFile);
  cmd->add_option("--service", options->service, "The service name to check (default: the whole server)");
  cmd->add_option("-t,--timeout", options->timeout, "Give up after S seconds")
      ->capture_default_str()
      ->check(seconds_validator());
  cmd->footer(R"(Prints "status: SERVING" (or the status it got). Exit codes: 0 serving, 1 not serving
(or the Check call failed: stderr says why), 2 bad arguments, 7 cannot reach the service.

Example (a Dockerfile HEALTHCHECK):
  conduit health --via 127.0.0.1:50051
)");
  cmd->callback([options, &exit_code] { exit_code = run_health(*options); });
}

}  // namespace conduit::cli
