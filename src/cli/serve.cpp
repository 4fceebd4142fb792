// conduit serve: the gRPC service (src/service), with health checking and
// reflection so that stock tools (grpcurl, grpc_health_probe) work.
#include "commands.hpp"
#include "common.hpp"

#include <service.hpp>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <boost/asio/ip/address.hpp>

#include <signal.h>

#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>

namespace conduit::cli {

namespace {

struct ServeOptions {
  std::string listen = "127.0.0.1:50051";
  std::string token_file;
  std::string tls_cert, tls_key, tls_client_ca;
  std::vector<std::string> allow_exec;
  bool allow_exec_any = false;
  std::size_t max_sessions = 1000;
  std::size_t session_buffer_kib = 1024;
  std::size_t max_message_kib = 4096;
  unsigned idle_timeout = 0;
  unsigned dead_peer_timeout = 60;
  OutputOptions output;
};

bool is_loopback(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (host == "localhost") return true;
  boost::system::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  return !ec && address.is_loopback();
}

int run_serve(const ServeOptions& options) {
  service::ServiceOptions service_options;
  if (!options.token_file.empty()) {
    std::ifstream file(options.token_file);
    std::getline(file, service_options.token);
    if (!file && service_options.token.empty()) {
      std::cerr << "conduit serve: cannot read --token-file " << options.token_file << '\n';
      return exit_usage;
    }
    if (service_options.token.empty()) {
      std::cerr << "conduit serve: --token-file " << options.token_file << " is empty\n";
      return exit_usage;
    }
  }
  const bool mtls = !options.tls_client_ca.empty();
  if (!is_loopback(options.listen) && service_options.token.empty() && !mtls) {
    std::cerr << "conduit serve: listening on " << options.listen
              << " (not loopback) needs authentication: give --token-file or --tls-client-ca\n";
    return exit_usage;
  }
  if (options.tls_cert.empty() != options.tls_key.empty() || (mtls && options.tls_cert.empty())) {
    std::cerr << "conduit serve: TLS needs both --tls-cert and --tls-key (and they are required by --tls-client-ca)\n";
    return exit_usage;
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty()) {
    // TLS, and with a client CA, mTLS: only clients with a certificate it signed get in.
    grpc::SslServerCredentialsOptions tls(mtls ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                               : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    try {
      tls.pem_key_cert_pairs.push_back({read_file(options.tls_key, "--tls-key"), read_file(options.tls_cert, "--tls-cert")});
      if (mtls) tls.pem_root_certs = read_file(options.tls_client_ca, "--tls-client-ca");
    } catch (const std::invalid_argument& e) {
      std::cerr << "conduit serve: " << e.what() << '\n';
      return exit_usage;
    }
    credentials = grpc::SslServerCredentials(tls);
  }
  service_options.allow_exec.insert(options.allow_exec.begin(), options.allow_exec.end());
  service_options.allow_exec_any = options.allow_exec_any;
  service_options.max_sessions = options.max_sessions;
  service_options.max_buffered_events_bytes = options.session_buffer_kib * 1024;
  service_options.idle_timeout = std::chrono::seconds(options.idle_timeout);
  service_options.dead_peer_timeout = std::chrono::seconds(options.dead_peer_timeout);

  // Session opens and closes are logged (with caller, kind and target)
  // from gRPC's threads and the loop's: one line at a time.
  auto log_mutex = std::make_shared<std::mutex>();
  const bool quiet = options.output.quiet;
  service::ConduitService service(service_options);
  service.loop().set_log_handler([log_mutex, quiet](LogLevel level, std::string_view message) {
    if (quiet && level < LogLevel::warning) return;
    if (level == LogLevel::debug) return;
    std::lock_guard lock(*log_mutex);
    std::cerr << "conduit serve: " << message << '\n';
  });

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, credentials, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_kib * 1024));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "conduit serve: cannot listen on " << options.listen << '\n';
    return exit_connect_failed;
  }
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  std::cout << "listening " << host << ":" << port << std::endl;

  // SIGINT/SIGTERM: report NOT_SERVING, stop taking calls, end sessions.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  int signal = 0;
  sigwait(&signals, &signal);
  if (!quiet) std::cerr << "conduit serve: shutting down\n";
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return exit_ok;
}

}  // namespace

void set_serve_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "Run the gRPC service: remote transport sessions on this host");
  cmd->add_option("-l,--listen", options->listen, "HOST:PORT to serve on (port 0: any free port)")
      ->capture_default_str();
  cmd->add_option("--token-file", options->token_file,
                  "File whose first line is the bearer token every call must present; required off loopback")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-cert", options->tls_cert, "Serve over TLS with this certificate chain (PEM)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-key", options->tls_key, "The private key of --tls-cert (PEM)")->check(CLI::ExistingFile);
  cmd->add_option("--tls-client-ca", options->tls_client_ca,
                  "Require client certificates signed by this CA (mTLS); counts as authentication off loopback")
      ->check(CLI::ExistingFile);
  cmd->add_option("--allow-exec", options->allow_exec, "A program subprocess sessions may run (exact argv[0]); repeatable");
  cmd->add_flag("--allow-exec-any", options->allow_exec_any, "Let subprocess and shell sessions run anything");
  cmd->add_option("--max-sessions", options->max_sessions, "Sessions open at once before RESOURCE_EXHAUSTED")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--session-buffer", options->session_buffer_kib,
                  "KiB of events a session queues for a slow client before its transport stops reading")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{64}, std::size_t{1} << 20));
  cmd->add_option("--max-message-size", options->max_message_kib,
                  "KiB: the largest message a client may send (a bigger write is RESOURCE_EXHAUSTED)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{64}, std::size_t{1} << 20));
  cmd->add_option("--idle-timeout", options->idle_timeout,
                  "Close a session after S seconds without events or commands (0: never; not server sessions)")
      ->capture_default_str();
  cmd->add_option("--dead-peer-timeout", options->dead_peer_timeout,
                  "Sessions' TCP connections: a peer that acknowledges nothing for S seconds (keepalive "
                  "probes when idle, TCP_USER_TIMEOUT when data waits) is lost with ETIMEDOUT (0: the "
                  "kernel's defaults, which take minutes)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 86400u));
  add_output_flags(*cmd, options->output);
  cmd->footer(R"(Prints "listening HOST:PORT" once it serves; logs every session open and close on stderr;
stops on SIGINT or SIGTERM (health turns NOT_SERVING first). Serves conduit.v1.Conduit, the
standard grpc.health.v1 health service and reflection (grpc.reflection.v1alpha).

Examples:
  conduit serve
  conduit serve --listen 0.0.0.0:50051 --token-file /run/secrets/conduit-token --allow-exec /bin/date
)");
  cmd->callback([options, &exit_code] { exit_code = run_serve(*options); });
}

}  // namespace conduit::cli
