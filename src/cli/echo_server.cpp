// conduit echo-server: echoes every connection on one or more listeners.
#include "commands.hpp"
#include "common.hpp"

#include <conduit/event_loop.hpp>
#include <conduit/server.hpp>
#include <conduit/tls.hpp>

#include <boost/asio/signal_set.hpp>

#include <functional>
#include <iostream>
#include <vector>

namespace conduit::cli {

namespace {

struct ServerStats {
  std::uint64_t connections = 0;
  std::uint64_t closed = 0;
  std::uint64_t bytes = 0;  // echoed, each way
  std::uint64_t errors = 0;
  std::function<void()> on_closed;  // after each connection_lost
};

/// What both echo protocols share: the connection's name for logs, stats,
/// and the flow-control coupling that keeps memory bounded when the client
/// does not read (SPEC R6): stop reading while our writes are paused.
class EchoConnection {
 protected:
  EchoConnection(const EventLog& log, ServerStats& stats) : log_(log), stats_(stats) {
    name_ = "conn " + std::to_string(++stats_.connections);
  }

  void made(std::shared_ptr<Transport> transport) {
    transport_ = std::move(transport);
    auto peer = transport_->get_extra_info_as<SocketAddress>("peername");
    log_.event(name_, "connection_made peer=" + (peer ? Endpoint::url_of(*peer) : std::string("?")));
  }
  void echo(std::span<const std::byte> data) {
    log_.data(name_, "data_received", data);
    stats_.bytes += data.size();
    transport_->write(data);
  }
  bool eof() {
    log_.event(name_, "eof_received");
    // Half-close carried through: false closes the transport, which
    // flushes everything received back before our FIN (SPEC R2). (True
    // would mean nothing over TLS, which cannot half-close.)
    return false;
  }
  void lost(std::exception_ptr error) {
    if (error) ++stats_.errors;
    log_.event(name_, error ? "connection_lost: " + describe(error) : "connection_lost");
    transport_.reset();
    ++stats_.closed;
    if (stats_.on_closed) stats_.on_closed();
  }
  void paused() {
    log_.event(name_, "pause_writing: client reads slowly, pausing reading");
    transport_->pause_reading();
  }
  void resumed() {
    log_.event(name_, "resume_writing");
    transport_->resume_reading();
  }

  std::shared_ptr<Transport> transport_;

 private:
  const EventLog& log_;
  ServerStats& stats_;
  std::string name_;
};

/// Echo through Protocol: data arrives in the loop's shared buffer.
class EchoProtocol final : public Protocol, EchoConnection {
 public:
  EchoProtocol(const EventLog& log, ServerStats& stats) : EchoConnection(log, stats) {}
  void connection_made(std::shared_ptr<Transport> t) override { made(std::move(t)); }
  void data_received(std::span<const std::byte> data) override { echo(data); }
  bool eof_received() override { return eof(); }
  void connection_lost(std::exception_ptr e) override { lost(e); }
  void pause_writing() override { paused(); }
  void resume_writing() override { resumed(); }
};

/// Echo through BufferedProtocol: data lands in a buffer this connection
/// owns, allocated on its first read so idle connections cost nothing.
class BufferedEchoProtocol final : public BufferedProtocol, EchoConnection {
 public:
  BufferedEchoProtocol(const EventLog& log, ServerStats& stats) : EchoConnection(log, stats) {}
  void connection_made(std::shared_ptr<Transport> t) override { made(std::move(t)); }
  std::span<std::byte> get_buffer(std::size_t sizehint) override {
    if (buffer_.empty()) buffer_.resize(std::min<std::size_t>(sizehint, 64 * 1024));
    return buffer_;
  }
  void buffer_updated(std::size_t n) override { echo(std::span(buffer_).first(n)); }
  bool eof_received() override { return eof(); }
  void connection_lost(std::exception_ptr e) override { lost(e); }
  void pause_writing() override { paused(); }
  void resume_writing() override { resumed(); }

 private:
  std::vector<std::byte> buffer_;
};

struct EchoServerOptions {
  std::vector<std::string> listen;
  bool buffered = false;
  int backlog = 100;
  std::uint64_t exit_after = 0;
  TlsFlags tls;
  ViaFlags via;
  OutputOptions output;
};

int run_echo_server(const EchoServerOptions& options) {
  const bool via = !options.via.address.empty();
  bool uses_tls = false;
  for (const auto& url : options.listen) {
    if (parse_endpoint(url).kind != Endpoint::Kind::tls) continue;
    uses_tls = true;
    if (options.tls.cert.empty() || options.tls.key.empty()) {
      std::cerr << "conduit echo-server: " << url << " needs --cert and --key\n";
      return exit_usage;
    }
  }
  for (const std::string& problem : {tls_flags_problem(options.tls, uses_tls, true), via_flags_problem(options.via)}) {
    if (!problem.empty()) {
      std::cerr << "conduit echo-server: " << problem << '\n';
      return exit_usage;
    }
  }
  EventLoop loop;
  // Here or, with --via, on the service's host; TLS settings checked (and
  // their files read, to go to the service as PEM) before anything listens.
  std::unique_ptr<Opener> opener;
  std::optional<TlsOptions> tls;
  try {
    opener = make_opener(loop, options.via);
    if (uses_tls) tls = server_tls_options(options.tls);
  } catch (const std::invalid_argument& e) {
    std::cerr << "conduit echo-server: " << e.what() << '\n';
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "conduit echo-server: cannot load the TLS certificate or key: " << e.what() << '\n';
    return exit_usage;
  }

  EventLog log(options.output);
  print_loop_errors(loop, "echo-server");
  ServerStats stats;
  if (options.exit_after) {
    stats.on_closed = [&] {
      if (stats.closed == options.exit_after) loop.stop();
    };
  }
  std::vector<std::shared_ptr<AbstractServer>> servers;
  bool closing = false;
  std::size_t closed_servers = 0;
  int exit_code = exit_ok;

  auto factory = [&]() -> std::shared_ptr<BaseProtocol> {
    if (options.buffered) return std::make_shared<BufferedEchoProtocol>(log, stats);
    return std::make_shared<EchoProtocol>(log, stats);
  };
  ServerOptions server_options;
  server_options.backlog = options.backlog;
  const std::string where = via ? " via " + options.via.address : std::string();

  for (const std::string& url : options.listen) {
    const Endpoint ep = parse_endpoint(url);
    auto on_server = [&, url, scheme = ep.scheme()](std::exception_ptr error, std::shared_ptr<AbstractServer> server) {
      if (error) {
        std::cerr << "conduit echo-server: cannot listen on " << url << where << ": " << describe(error) << '\n';
        exit_code = exit_code_for(error, exit_connect_failed);
        loop.stop();
        return;
      }
      for (const auto& address : server->sockets()) {
        // The "listening" lines are the interface scripts wait on: always printed.
        std::cout << "listening " << Endpoint::url_of(address, scheme) << std::endl;
      }
      // A server closes before we close it only if its session ended (the
      // loop's error handler said why).
      server->wait_closed([&, url] {
        ++closed_servers;
        if (closing) return;
        std::cerr << "conduit echo-server: lost " << url << where << '\n';
        exit_code = exit_failure;
        loop.stop();
      });
      servers.push_back(std::move(server));
    };
    if (ep.kind == Endpoint::Kind::unix_path) {
      opener->create_unix_server(factory, ep.path, server_options, on_server);
    } else {
      std::vector<std::string> hosts;
      if (ep.host != "*") hosts.push_back(ep.host);
      ServerOptions tcp_options = server_options;
      if (ep.kind == Endpoint::Kind::tls) tcp_options.tls = tls;
      opener->create_server(factory, hosts, ep.port, tcp_options, on_server);
    }
  }

  asio::signal_set signals(loop.context(), SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (ec) return;
    if (!options.output.quiet) std::cerr << "conduit echo-server: shutting down\n";
    loop.stop();
  });
  loop.run_forever();
  signals.cancel();

  // Close listeners, then give open connections a bounded moment to flush.
  closing = true;
  for (auto& server : servers) {
    server->close();
    server->close_clients();
  }
  loop.run_until([&] { return closed_servers == servers.size(); }, std::chrono::seconds(2));
  if (options.output.json) {
    std::cout << "{\"connections\":" << stats.connections << ",\"bytes_echoed\":" << stats.bytes
              << ",\"connection_errors\":" << stats.errors << "}" << std::endl;
  }
  return exit_code;
}

}  // namespace

void set_echo_server_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<EchoServerOptions>();
  CLI::App* cmd = app.add_subcommand("echo-server", "Echo every connection back to its sender");
  cmd->add_option("-l,--listen", options->listen,
                  "Where to listen: [tcp://]HOST:PORT or tls://HOST:PORT (HOST * for all interfaces, PORT 0 "
                  "for any free port) or unix:/PATH; repeatable")
      ->required()
      ->check(endpoint_validator());
  cmd->add_flag("--buffered", options->buffered, "Use a BufferedProtocol (reads into a per-connection buffer)");
  add_tls_flags(*cmd, options->tls, true);
  cmd->add_option("--backlog", options->backlog, "listen() backlog")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  cmd->add_option("--exit-after", options->exit_after, "Stop once N connections have been served and closed")
      ->check(CLI::PositiveNumber);
  add_via_flags(*cmd, options->via);
  add_output_flags(*cmd, options->output);
  cmd->footer(std::string(R"(Prints "listening URL" for each bound socket once it listens, then serves until
SIGINT or SIGTERM (or --exit-after N connections). A client's EOF is carried through: everything it sent is echoed
before the server closes its side. With --via the service's host listens (a server
session) and each connection's bytes come here to be echoed; the URLs name addresses
on that host.

Examples:
  conduit echo-server --listen tcp://127.0.0.1:8888
  conduit echo-server --listen 'tcp://*:0' --listen unix:///tmp/echo.sock -v
  conduit echo-server --listen tcp://[::1]:9000 --buffered --json
  conduit echo-server --listen tls://127.0.0.1:8443 --cert server.pem --key server.key
  conduit echo-server --via 127.0.0.1:50051 --listen tcp://0.0.0.0:7000   (listens on the service's host)

)") + exit_codes_help);
  cmd->callback([options, &exit_code] { exit_code = run_echo_server(*options); });
}

}  // namespace conduit::cli
