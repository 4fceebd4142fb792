// conduit serve: the gRPC service (src/service), with health checking and
// reflection so that stock tools (grpcurl, grpc_health_probe) work.
#include "commands.hpp"
#include "common.hpp"

#include <conduit/tls.hpp>

#include <conduit/service/grpc_runtime.hpp>
#include <conduit/service/reflection.hpp>
#include <conduit/service/service.hpp>
#include <conduit/service/toxiproxy_api.hpp>
#include <conduit/service/unix_listener.hpp>

#include <grpcpp/health_check_service_interface.h>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <signal.h>

#include <cstring>

#include <charconv>
#include <fstream>
#include <iostream>
#include <optional>

namespace conduit::cli {

namespace {

struct ServeOptions {
  std::string listen = "127.0.0.1:50051";
  std::string token_file;
  std::string tls_cert, tls_key, tls_client_ca;
  std::vector<std::string> allow_exec;
  bool allow_exec_any = false;
  std::vector<std::string> allow_listen, allow_connect, allow_unix, allow_env;
  std::size_t max_sessions = 1000;
  std::size_t session_buffer_kib = 1024;
  std::size_t max_message_kib = 4096;
  unsigned idle_timeout = 0;
  unsigned open_timeout = 5;
  unsigned dead_peer_timeout = 60;
  std::string log_format = "text";
  bool quiet = false;
  std::string toxiproxy_api;     // HOST:PORT, or empty: not served
  std::string toxiproxy_config;  // its start-up proxies (populate's JSON)
  bool toxiproxy_api_no_auth = false;
};

/// A bearer token shorter than this is refused: guessable.
constexpr std::size_t min_token_bytes = 16;

/// Why binding `a` fails, found by trying it ourselves after gRPC could
/// not: gRPC's own report is a multi-line log dump.
std::string why_cannot_listen(const ListenAddress& a) {
  asio::io_context context;
  boost::system::error_code ec;
  if (!a.unix_path.empty()) {
    asio::local::stream_protocol::acceptor acceptor(context);
    acceptor.open(asio::local::stream_protocol(), ec);
    if (!ec) acceptor.bind(asio::local::stream_protocol::endpoint(a.unix_path), ec);
  } else {
    asio::ip::tcp::resolver resolver(context);
    auto results = resolver.resolve(a.host, std::to_string(a.port), asio::ip::tcp::resolver::passive, ec);
    if (ec) return "cannot resolve " + a.host + ": " + ec.message();
    for (const auto& entry : results) {
      asio::ip::tcp::acceptor acceptor(context);
      acceptor.open(entry.endpoint().protocol(), ec);
      if (!ec) acceptor.bind(entry.endpoint(), ec);
      if (ec) break;
    }
  }
  if (ec == asio::error::address_in_use) return "the address is in use";
  return ec ? ec.message() : "gRPC could not bind it";
}

int run_serve(const ServeOptions& options) {
  // SIGINT and SIGTERM are taken by sigwait at the end. Blocked first, before
  // anything starts a thread (gRPC does as soon as credentials are made; the
  // service's loop; gRPC's pollers), since threads inherit the mask: a signal
  // that came before the wait, or went to a thread not blocking it, would
  // kill the process by its default action. Children get an empty mask when
  // spawned.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  service::ServiceOptions service_options;
  ListenAddress listen;
  try {
    listen = parse_listen_address(options.listen);
    auto& policy = service_options.policy;
    if (!options.allow_listen.empty()) policy.set_listen_rules(options.allow_listen);
    if (!options.allow_connect.empty()) policy.set_connect_rules(options.allow_connect);
    policy.set_unix_dirs(options.allow_unix);
    policy.set_env_patterns(options.allow_env);
    policy.set_exec({options.allow_exec.begin(), options.allow_exec.end()}, options.allow_exec_any);
  } catch (const std::invalid_argument& e) {
    std::cerr << "conduit serve: " << e.what() << '\n';
    return exit_usage;
  }

  if (!options.token_file.empty()) {
    std::ifstream file(options.token_file);
    std::string token;
    if (!std::getline(file, token)) {
      std::cerr << "conduit serve: cannot read a token from --token-file " << options.token_file << '\n';
      return exit_usage;
    }
    while (!token.empty() && (token.back() == '\r' || token.back() == ' ' || token.back() == '\t')) token.pop_back();
    if (token.size() < min_token_bytes) {
      std::cerr << "conduit serve: the token in --token-file " << options.token_file << " has " << token.size()
                << " bytes; at least " << min_token_bytes << " are needed (e.g. openssl rand -hex 32)\n";
      return exit_usage;
    }
    service_options.token = std::move(token);
  }
  const bool mtls = !options.tls_client_ca.empty();
  service_options.mtls = mtls;
  if (!listen.is_local() && service_options.token.empty() && !mtls) {
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
      const std::string key = read_file(options.tls_key, "--tls-key");
      const std::string cert = read_file(options.tls_cert, "--tls-cert");
      const std::string ca = mtls ? read_file(options.tls_client_ca, "--tls-client-ca") : std::string();
      // OpenSSL's verdict now, in one line, rather than gRPC's at the first call.
      try {
        tls::server_context_from_pem(cert, key, ca);
      } catch (const std::exception& e) {
        throw std::invalid_argument("--tls-cert " + options.tls_cert + " / --tls-key " + options.tls_key +
                                    (mtls ? " / --tls-client-ca " + options.tls_client_ca : std::string()) +
                                    ": cannot use them: " + e.what());
      }
      tls.pem_key_cert_pairs.push_back({key, cert});
      if (mtls) tls.pem_root_certs = ca;
    } catch (const std::invalid_argument& e) {
      std::cerr << "conduit serve: " << e.what() << '\n';
      return exit_usage;
    }
    credentials = grpc::SslServerCredentials(tls);
  }
  // --toxiproxy-api: its own listener; the service's token guards it too,
  // and off loopback one is needed unless the network is said to be private.
  std::optional<service::ToxiproxyApiOptions> toxiproxy_options;
  if (!options.toxiproxy_api.empty()) {
    try {
      const Endpoint ep = parse_endpoint(options.toxiproxy_api);
      if (ep.kind != Endpoint::Kind::tcp) throw std::invalid_argument("takes HOST:PORT (TCP)");
      boost::system::error_code ec;
      const auto address = asio::ip::make_address(ep.host == "*" ? "0.0.0.0" : ep.host, ec);
      if (ec) throw std::invalid_argument("takes a numeric host (127.0.0.1, 0.0.0.0, ::1)");
      toxiproxy_options.emplace();
      toxiproxy_options->host = address.to_string();
      toxiproxy_options->port = ep.port;
      if (!options.toxiproxy_api_no_auth) toxiproxy_options->token = service_options.token;
      if (!options.toxiproxy_config.empty()) {
        toxiproxy_options->config = read_file(options.toxiproxy_config, "--toxiproxy-config");
      }
      if (!address.is_loopback() && toxiproxy_options->token.empty() && !options.toxiproxy_api_no_auth) {
        throw std::invalid_argument(
            "is not loopback: give --token-file (clients then send 'Authorization: Bearer "
            "TOKEN'), or --toxiproxy-api-no-auth on a private network");
      }
    } catch (const std::invalid_argument& e) {
      std::cerr << "conduit serve: --toxiproxy-api " << options.toxiproxy_api << ": " << e.what() << '\n';
      return exit_usage;
    }
  } else if (options.toxiproxy_api_no_auth || !options.toxiproxy_config.empty()) {
    std::cerr << "conduit serve: --toxiproxy-api-no-auth and --toxiproxy-config apply with --toxiproxy-api only\n";
    return exit_usage;
  }
  service_options.max_sessions = options.max_sessions;
  service_options.max_message_bytes = options.max_message_kib * 1024;
  service_options.max_buffered_events_bytes = options.session_buffer_kib * 1024;
  service_options.idle_timeout = std::chrono::seconds(options.idle_timeout);
  service_options.open_timeout = std::chrono::seconds(options.open_timeout);
  service_options.dead_peer_timeout = std::chrono::seconds(options.dead_peer_timeout);
  service_options.log_format = options.log_format == "json" ? service::LogFormat::json : service::LogFormat::text;
  service_options.quiet = options.quiet;

  service::set_grpc_log_sink(nullptr);  // start-up failures are reported below, in one line
  service::ConduitService service(service_options);
  service::ReflectionService reflection(service);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  // A plaintext Unix socket is the service's own, so that each caller's
  // pid and uid reach the log; anything else is gRPC's listener.
  std::shared_ptr<service::UnixListener> unix_listener;
  if (!listen.unix_path.empty() && options.tls_cert.empty()) {
    try {
      unix_listener = std::make_shared<service::UnixListener>(service, listen.unix_path);
    } catch (const std::system_error& e) {
      std::cerr << "conduit serve: cannot listen on " << options.listen << ": " << e.what() << '\n';
      return exit_connect_failed;
    }
  } else {
    builder.AddListeningPort(listen.grpc_uri(), credentials, &port);
  }
  builder.RegisterService(&service);
  reflection.register_with(builder);
  // gRPC sets SO_REUSEPORT on its listeners by default: a second server on
  // the same port would then start and take most new calls.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(service_options.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server && unix_listener) unix_listener->start(*server);
  if (!server || (listen.unix_path.empty() && port == 0)) {
    if (unix_listener) unix_listener->close();
    std::cerr << "conduit serve: cannot listen on " << options.listen << ": " << why_cannot_listen(listen) << '\n';
    return exit_connect_failed;
  }
  service::set_grpc_log_sink(&service.audit());
  service.set_own_address(static_cast<std::uint16_t>(listen.unix_path.empty() ? port : 0), listen.unix_path);
  listen.port = static_cast<std::uint16_t>(port);
  // The whole server ("") is SERVING by gRPC's default; the service by its
  // own name too, as health checks that name it ask.
  server->GetHealthCheckService()->SetServingStatus("conduit.v1.Conduit", true);
  std::cout << "listening " << (listen.unix_path.empty() ? listen.grpc_uri() : "unix:" + listen.unix_path) << std::endl;
  service.audit().write(
      LogLevel::info, "started", "serving on " + listen.grpc_uri(),
      {service::field("listen", listen.grpc_uri()), service::field("policy", service_options.policy.describe(), true)});

  // Toxiproxy's HTTP API, on the same loop and policy, when asked for.
  std::shared_ptr<service::ToxiproxyApi> toxiproxy;
  if (toxiproxy_options) {
    try {
      toxiproxy = service::ToxiproxyApi::start(service, *toxiproxy_options);
    } catch (const std::invalid_argument& e) {
      std::cerr << "conduit serve: --toxiproxy-config " << options.toxiproxy_config << ": " << e.what() << '\n';
      server->Shutdown(std::chrono::system_clock::now());
      return exit_usage;
    } catch (const std::exception& e) {
      std::cerr << "conduit serve: cannot listen on --toxiproxy-api " << options.toxiproxy_api << ": " << e.what()
                << '\n';
      server->Shutdown(std::chrono::system_clock::now());
      return exit_connect_failed;
    }
    std::cout << "toxiproxy-api " << toxiproxy->address() << std::endl;
  }

  // SIGINT/SIGTERM: report NOT_SERVING, stop taking calls, end sessions.
  int signal = 0;
  sigwait(&signals, &signal);
  service.audit().write(LogLevel::info, "stopping", "shutting down");
  server->GetHealthCheckService()->SetServingStatus(false);
  // Each session ends now, its client told why, rather than at Shutdown's
  // deadline as a cancelled call.
  if (unix_listener) unix_listener->close();
  if (toxiproxy) toxiproxy->stop();
  service.abort_all_sessions("the service is shutting down (" + std::string(::strsignal(signal)) + ")");
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  service::set_grpc_log_sink(nullptr);
  return exit_ok;
}

}  // namespace

void set_serve_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "Run the gRPC service: remote transport sessions on this host");
  cmd->add_option("-l,--listen", options->listen,
                  "[tcp://]HOST:PORT ([IPV6]:PORT) or unix:/PATH to serve on (port 0: any free port)")
      ->capture_default_str();
  cmd->add_option("--token-file", options->token_file,
                  "File whose first line is the bearer token (16 bytes or more) every call must present; "
                  "required off loopback unless --tls-client-ca")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-cert", options->tls_cert, "Serve over TLS with this certificate chain (PEM)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-key", options->tls_key, "The private key of --tls-cert (PEM)")->check(CLI::ExistingFile);
  cmd->add_option("--tls-client-ca", options->tls_client_ca,
                  "Require client certificates signed by this CA (mTLS); counts as authentication off loopback")
      ->check(CLI::ExistingFile);
  cmd->add_option("--allow-listen", options->allow_listen,
                  "HOST:PORTS server sessions may listen on (repeatable; HOST: *, an address, ADDRESS/LENGTH or a "
                  "name; PORTS: 7000, 7000-7100 or *). Default: 127.0.0.1:* and [::1]:*");
  cmd->add_option("--allow-connect", options->allow_connect,
                  "HOST:PORTS sessions may connect or send datagrams to (repeatable; checked against every address a "
                  "name resolves to; 'none' for no connects). Default: *:*");
  cmd->add_option("--allow-unix", options->allow_unix,
                  "A folder under which sessions may connect to or listen on Unix sockets (repeatable). Default: none");
  cmd->add_option("--allow-exec", options->allow_exec,
                  "A program subprocess sessions may run (exact argv[0]); repeatable");
  cmd->add_flag("--allow-exec-any", options->allow_exec_any, "Let subprocess and shell sessions run anything");
  cmd->add_option("--allow-env", options->allow_env,
                  "An environment variable subprocess sessions may set (repeatable; * and ? globs, e.g. 'LC_*'). "
                  "Default: none");
  cmd->add_option("--max-sessions", options->max_sessions, "Sessions open at once before RESOURCE_EXHAUSTED")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  cmd->add_option("--session-buffer", options->session_buffer_kib,
                  "KiB of events a session queues for a slow client before its transport stops reading")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{64}, std::size_t{1} << 20));
  cmd->add_option("--max-message-size", options->max_message_kib,
                  "KiB: the largest message a client may send (the clients split writes into 64 KiB commands)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{256}, std::size_t{1} << 20));
  cmd->add_option("--idle-timeout", options->idle_timeout,
                  "Close a session after S seconds without events or commands (0: never; not server sessions)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 86400u * 365));
  cmd->add_option("--open-timeout", options->open_timeout,
                  "End a Session() stream that has not sent its open message S seconds after it started "
                  "(until then it counts against --max-sessions)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 3600u));
  cmd->add_option("--dead-peer-timeout", options->dead_peer_timeout,
                  "Sessions' TCP connections: a peer that acknowledges nothing for S seconds (keepalive "
                  "probes when idle, TCP_USER_TIMEOUT when data waits) is lost with ETIMEDOUT (0: the "
                  "kernel's defaults, which take minutes)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 86400u));
  cmd->add_option("--log-format", options->log_format, "The log on stderr: text lines, or json (one object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  cmd->add_option("--toxiproxy-api", options->toxiproxy_api,
                  "Also serve toxiproxy 2.x's HTTP API on HOST:PORT (toxiproxy's port is 8474), its proxies under "
                  "this service's policy; prints 'toxiproxy-api HOST:PORT'");
  cmd->add_option("--toxiproxy-config", options->toxiproxy_config,
                  "With --toxiproxy-api: proxies to make at start, a JSON array as POST /populate takes "
                  "(toxiproxy's -config file), each with its \"toxics\" if any")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--toxiproxy-api-no-auth", options->toxiproxy_api_no_auth,
                "Serve --toxiproxy-api without the token, off loopback too (a private network only)");
  cmd->add_flag("-q,--quiet", options->quiet, "Log only warnings and errors (refused calls among them)");
  cmd->footer(R"(Prints "listening HOST:PORT" (or "listening unix:PATH") once it serves. Logs on stderr, with
an RFC 3339 time: every refused call (peer, method, status, reason) and every session's open
(with a subprocess's whole argv) and close. Stops on SIGINT or SIGTERM (health turns
NOT_SERVING first). Serves conduit.v1.Conduit, the standard grpc.health.v1 health service
(always open, for probes) and reflection (grpc.reflection.v1alpha and v1; with a token or
mTLS, only for callers that present it).

Policy: by default sessions may listen on loopback only, connect anywhere over TCP and
UDP, use no Unix paths, run no programs and set no environment variables; the --allow-*
flags widen each. A refusal is PERMISSION_DENIED naming the flag that would allow it.

Exit status: 0 after a signal, 2 for bad arguments (a bad --listen, a short token,
unusable TLS files), 3 if it cannot listen (the address is in use, say).

Examples:
  conduit serve
  conduit serve --listen 0.0.0.0:50051 --token-file /run/secrets/conduit-token --allow-exec /bin/date \
      --allow-listen '*:7000-7100' --allow-connect 'db:5432' --allow-unix /run/conduit
)");
  cmd->callback([options, &exit_code] { exit_code = run_serve(*options); });
}

}  // namespace conduit::cli
