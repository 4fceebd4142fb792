// conduit echo-client: sends a payload COUNT times, each time waiting for the
// whole echo and checking it, then reports.
#include "commands.hpp"
#include "common.hpp"

#include <conduit/event_loop.hpp>
#include <conduit/tls.hpp>

#include <remote_transport.hpp>

#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>

namespace conduit::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct EchoClientOptions {
  std::string connect;
  std::optional<std::string> message;
  bool use_stdin = false;
  std::optional<std::size_t> size;
  std::size_t count = 1;
  double timeout = 10.0;
  TlsFlags tls;
  ViaFlags via;
  OutputOptions output;
};

struct ClientResult {
  int exit_code = exit_ok;
  std::string error;
  std::size_t rounds = 0;
  std::uint64_t sent = 0, received = 0;
  std::vector<double> rtts_ms;
};

/// The client side: round after round of write, wait for the full echo,
/// compare. With half_close, it sends once, writes EOF and reads until EOF.
///
/// Call grammar (as any Protocol): connection_made -> data_received* ->
/// eof_received? -> connection_lost; `done` fires once, at connection_lost.
class EchoClient final : public Protocol {
 public:
  EchoClient(std::string payload, std::size_t rounds, bool half_close, bool print_echo, const EventLog& log,
             ClientResult& result, std::function<void()> done)
      : payload_(std::move(payload)),
        rounds_(rounds),
        half_close_(half_close),
        print_echo_(print_echo),
        log_(log),
        result_(result),
        done_(std::move(done)) {}

  void connection_made(std::shared_ptr<Transport> transport) override {
    transport_ = std::move(transport);
    log_.event("client", "connection_made");
    send_round();
  }

  void data_received(std::span<const std::byte> data) override {
    log_.data("client", "data_received", data);
    result_.received += data.size();
    echo_.append(as_string_view(data));
    if (print_echo_) std::cout.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    if (half_close_) return;  // compared at EOF
    if (echo_.size() > payload_.size() || payload_.compare(0, echo_.size(), echo_) != 0) {
      return fail(exit_mismatch, "the echo differs from what was sent (round " + std::to_string(result_.rounds + 1) + ")");
    }
    if (echo_.size() < payload_.size()) return;
    result_.rtts_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - round_start_).count());
    ++result_.rounds;
    echo_.clear();
    if (result_.rounds == rounds_) {
      log_.event("client", "all rounds echoed: closing");
      transport_->close();
    } else {
      send_round();
    }
  }

  bool eof_received() override {
    log_.event("client", "eof_received");
    if (half_close_) {
      if (echo_ == payload_) {
        result_.rounds = 1;
        result_.rtts_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - round_start_).count());
      } else {
        fail(exit_mismatch, "the echo (" + std::to_string(echo_.size()) + " bytes) differs from what was sent (" +
                                std::to_string(payload_.size()) + " bytes)");
      }
    } else if (result_.rounds < rounds_) {
      fail(exit_mismatch, "the server closed the connection after " + std::to_string(result_.rounds) + " of " +
                              std::to_string(rounds_) + " rounds");
    }
    return false;
  }

  void connection_lost(std::exception_ptr error) override {
    log_.event("client", error ? "connection_lost: " + describe(error) : "connection_lost");
    if (error && result_.exit_code == exit_ok) {
      result_.exit_code = exit_failure;
      result_.error = "connection lost: " + describe(error);
    }
    if (print_echo_) std::cout.flush();
    transport_.reset();
    done_();
  }

 private:
  void send_round() {
    round_start_ = Clock::now();
    log_.data("client", "write", as_bytes(payload_));
    transport_->write(payload_);
    result_.sent += payload_.size();
    if (half_close_) transport_->write_eof();
  }

  void fail(int code, std::string why) {
    if (result_.exit_code == exit_ok) {
      result_.exit_code = code;
      result_.error = std::move(why);
    }
    transport_->abort();
  }

  std::string payload_;
  std::size_t rounds_;
  bool half_close_;
  bool print_echo_;
  const EventLog& log_;
  ClientResult& result_;
  std::function<void()> done_;
  std::shared_ptr<Transport> transport_;
  std::string echo_;
  Clock::time_point round_start_;
};

std::string make_payload(const EchoClientOptions& options) {
  if (options.use_stdin) {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  if (options.size) {
    std::string payload(*options.size, '\0');
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>('!' + i % 94);
    return payload;
  }
  return options.message.value_or("hello from conduit\n");
}

/// The session request for --via: `ep` as seen from the service's host.
conduit::v1::OpenConnection open_connection_for(const Endpoint& ep, const TlsFlags& tls) {
  conduit::v1::OpenConnection open;
  if (ep.kind == Endpoint::Kind::unix_path) {
    open.set_unix_path(ep.path);
    return open;
  }
  open.mutable_tcp()->set_host(ep.host);
  open.mutable_tcp()->set_port(ep.port);
  if (ep.kind == Endpoint::Kind::tls) {
    auto* t = open.mutable_tls();
    t->set_enabled(true);
    t->set_insecure(tls.insecure);
    if (!tls.cafile.empty()) {
      std::ifstream file(tls.cafile);
      t->set_ca_pem(std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()));
    }
  }
  return open;
}

void print_json(const EchoClientOptions& options, const ClientResult& r, double elapsed_ms) {
  std::cout << "{\"endpoint\":" << json_string(options.connect) << ",\"ok\":" << (r.exit_code == 0 ? "true" : "false")
            << ",\"exit_code\":" << r.exit_code << ",\"rounds\":" << r.rounds << ",\"bytes_sent\":" << r.sent
            << ",\"bytes_received\":" << r.received << ",\"elapsed_ms\":" << elapsed_ms
            << ",\"rtt_ms\":" << RttSummary(r.rtts_ms).json();
  if (!r.error.empty()) std::cout << ",\"error\":" << json_string(r.error);
  std::cout << "}" << std::endl;
}

int run_echo_client(const EchoClientOptions& options) {
  const Endpoint ep = parse_endpoint(options.connect);
  const std::string payload = make_payload(options);
  if (payload.empty()) {
    std::cerr << "conduit echo-client: nothing to send (the message or stdin is empty)\n";
    return exit_usage;
  }
  EventLoop loop;
  EventLog log(options.output);
  ClientResult result;
  bool finished = false;
  const bool print_echo = !options.output.quiet && !options.output.json && !options.size;
  auto factory = [&] {
    // TLS has no half-close: stdin's payload is then checked like a message.
    const bool half_close = options.use_stdin && ep.kind != Endpoint::Kind::tls;
    return std::make_shared<EchoClient>(payload, options.count, half_close, print_echo, log, result,
                                        [&] { finished = true; });
  };
  auto on_connected = [&](std::exception_ptr error, std::shared_ptr<Transport>, std::shared_ptr<EchoClient>) {
    if (!error) return;
    result.exit_code = exit_connect_failed;
    result.error = "cannot connect to " + options.connect + ": " + describe(error);
    finished = true;
  };

  ConnectOptions connect_options;
  if (ep.kind == Endpoint::Kind::tls) {
    try {
      auto context = options.tls.insecure ? tls::insecure_client_context()
                                          : tls::client_context(options.tls.cafile.empty()
                                                                    ? std::nullopt
                                                                    : std::optional(options.tls.cafile));
      if (!options.tls.cert.empty()) {
        context->use_certificate_chain_file(options.tls.cert);
        context->use_private_key_file(options.tls.key.empty() ? options.tls.cert : options.tls.key,
                                      asio::ssl::context::pem);
      }
      connect_options.tls = TlsOptions(std::move(context));
    } catch (const std::exception& e) {
      std::cerr << "conduit echo-client: cannot set up TLS: " << e.what() << '\n';
      return exit_usage;
    }
  }
  const auto start = Clock::now();
  if (!options.via.address.empty()) {
    // The same protocol, over a connection made on the service's host.
    service::RemoteOptions remote;
    try {
      remote = read_remote(options.via);
    } catch (const std::invalid_argument& e) {
      std::cerr << "conduit echo-client: " << e.what() << '\n';
      return exit_usage;
    }
    service::create_remote_connection(loop, remote, open_connection_for(ep, options.tls), factory(),
                                      [&](std::exception_ptr error) { on_connected(error, nullptr, nullptr); });
  } else if (ep.kind == Endpoint::Kind::unix_path) {
    loop.create_unix_connection(factory, ep.path, on_connected);
  } else {
    loop.create_connection(factory, ep.host, ep.port, connect_options, on_connected);
  }
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::duration<double>(options.timeout));
  if (!loop.run_until([&] { return finished; }, timeout)) {
    result.exit_code = exit_timeout;
    result.error = "timed out after " + std::to_string(options.timeout) + " s (" + std::to_string(result.rounds) + " of " +
                   std::to_string(options.count) + " rounds done)";
  }
  const double elapsed_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  if (!result.error.empty()) std::cerr << "conduit echo-client: " << result.error << '\n';
  if (options.output.json) print_json(options, result, elapsed_ms);
  return result.exit_code;
}

}  // namespace

void set_echo_client_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<EchoClientOptions>();
  CLI::App* cmd = app.add_subcommand("echo-client", "Send a payload to an echo server and check the echo");
  cmd->add_option("-c,--connect", options->connect, "Server to connect to: tcp://HOST:PORT, tls://HOST:PORT or unix:///PATH")
      ->required()
      ->check(endpoint_validator());
  auto* message = cmd->add_option("-m,--message", options->message, "Text to send (default: \"hello from conduit\\n\")");
  auto* use_stdin = cmd->add_flag("--stdin", options->use_stdin,
                                  "Send standard input, then EOF, and read the echo until the server's EOF");
  auto* size = cmd->add_option("-s,--size", options->size, "Send N generated bytes instead of a message")
                   ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 30));
  message->excludes(use_stdin)->excludes(size);
  use_stdin->excludes(size);
  auto* count = cmd->add_option("-n,--count", options->count, "Rounds: send, then wait for the whole echo")
                    ->capture_default_str()
                    ->check(CLI::Range(std::size_t{1}, std::size_t{100000000}));
  count->excludes(use_stdin);
  cmd->add_option("-t,--timeout", options->timeout, "Give up after S seconds (connect included)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  add_tls_flags(*cmd, options->tls, false);
  add_via_flags(*cmd, options->via);
  add_output_flags(*cmd, options->output);
  cmd->footer(std::string(R"(Prints the echoed message on stdout (not with --size, --quiet or --json).

Examples:
  conduit echo-client --connect tcp://127.0.0.1:8888 --message 'hi there'
  conduit echo-client --connect unix:///tmp/echo.sock --size 102400 --count 1000 --json
  printf 'line 1\nline 2\n' | conduit echo-client --connect tcp://[::1]:9000 --stdin -v -x
  conduit echo-client --connect tls://localhost:8443 --cafile ca.pem --message 'over TLS'
  conduit echo-client --via 127.0.0.1:50051 --connect tcp://echo-tcp:7 --count 10   (through conduit serve)

)") + exit_codes_help);
  cmd->callback([options, &exit_code] { exit_code = run_echo_client(*options); });
}

}  // namespace conduit::cli
