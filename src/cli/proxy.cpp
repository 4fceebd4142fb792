// conduit proxy: a TCP, TLS, Unix or UDP proxy with faults (the core's
// StreamProxy and DatagramProxy), here or, with --via, on the service's host.
#include "commands.hpp"
#include "common.hpp"
#include "fault_flags.hpp"

#include <conduit/event_loop.hpp>
#include <conduit/opener.hpp>
#include <conduit/proxy.hpp>
#include <conduit/tls.hpp>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/prctl.h>

#include <iostream>
#include <map>
#include <sstream>

namespace conduit::cli {

namespace {

// What --listen and --upstream take (static: a Schemes is a view).
constexpr std::string_view proxy_scheme_list[] = {"tcp", "tls", "unix", "udp"};
constexpr Schemes proxy_schemes = proxy_scheme_list;

struct ProxyCommandOptions {
  std::string listen, upstream;
  FaultFlags faults;
  std::string cert, key;        // tls:// listen
  std::string upstream_cafile;  // tls:// upstream
  bool upstream_insecure = false;
  double idle_timeout = 60;  // udp
  std::uint64_t exit_after = 0;
  std::string name;  // --via: the session's name
  ViaFlags via;
  OutputOptions output;
};

/// What the tool reports: each connection's start, bytes and end, as they
/// come; then the totals.
class ProxyReport {
 public:
  explicit ProxyReport(const OutputOptions& output) : output_(output) {}

  void accepted(const ProxyConnectionInfo& info) {
    auto& c = connections_[info.id];
    c.client = info.client ? info.client->to_string() : "?";
    ++accepted_;
    if (verbose()) std::cerr << "[conn " << info.id << "] accepted from " << c.client << std::endl;
  }
  void stats(const ProxyConnectionInfo& info) {
    auto& c = connections_[info.id];
    if (c.up == info.bytes_upstream && c.down == info.bytes_downstream) return;
    c.up = info.bytes_upstream;
    c.down = info.bytes_downstream;
    if (verbose())
      std::cerr << "[conn " << info.id << "] " << c.up << " bytes up, " << c.down << " bytes down" << std::endl;
  }
  void closed(const ProxyConnectionInfo& info, std::exception_ptr error) {
    auto& c = connections_[info.id];
    c.up = info.bytes_upstream;
    c.down = info.bytes_downstream;
    c.error = describe(error);
    c.closed = true;
    ++closed_;
    if (verbose()) {
      std::cerr << "[conn " << info.id << "] closed: " << c.up << " bytes up, " << c.down << " bytes down"
                << (error ? ": " + c.error : std::string()) << std::endl;
    }
  }
  std::uint64_t closed_count() const { return closed_; }

  /// --json: the totals and every connection, on stdout.
  void print_json() const {
    std::uint64_t up = 0, down = 0;
    std::ostringstream list;
    bool first = true;
    for (const auto& [id, c] : connections_) {
      up += c.up;
      down += c.down;
      list << (first ? "" : ",") << "{\"id\":" << id << ",\"client\":" << json_string(c.client)
           << ",\"bytes_upstream\":" << c.up << ",\"bytes_downstream\":" << c.down
           << ",\"open\":" << (c.closed ? "false" : "true")
           << ",\"error\":" << (c.error.empty() ? std::string("null") : json_string(c.error)) << "}";
      first = false;
    }
    std::cout << "{\"connections\":" << accepted_ << ",\"bytes_upstream\":" << up << ",\"bytes_downstream\":" << down
              << ",\"per_connection\":[" << list.str() << "]}" << std::endl;
  }

 private:
  bool verbose() const { return output_.verbose > 0; }
  struct Connection {
    std::string client, error;
    std::uint64_t up = 0, down = 0;
    bool closed = false;
  };
  const OutputOptions& output_;
  std::map<std::uint64_t, Connection> connections_;
  std::uint64_t accepted_ = 0, closed_ = 0;
};

/// Where the proxy listens or relays to, as --listen or --upstream and the
/// TLS flags say (the files read into PEM, so that a --via proxy carries them).
ProxyEndpoint proxy_endpoint(const Endpoint& ep, const ProxyCommandOptions& o, bool listening) {
  ProxyEndpoint out;
  if (ep.kind == Endpoint::Kind::unix_path) {
    out.unix_path = ep.path;
    return out;
  }
  out.host = ep.host == "*" ? std::string() : ep.host;
  out.port = ep.port;
  if (ep.kind != Endpoint::Kind::tls) return out;
  TlsPem pem;
  if (listening) {
    pem.cert = read_file(o.cert, "--cert");
    pem.key = read_file(o.key, "--key");
    out.tls = tls::server_options(std::move(pem));
  } else {
    pem.verify = !o.upstream_insecure;
    if (!o.upstream_cafile.empty()) pem.ca = read_file(o.upstream_cafile, "--upstream-cafile");
    out.tls = tls::client_options(std::move(pem));
    out.tls->server_hostname = ep.host;
  }
  return out;
}

int run_proxy(const ProxyCommandOptions& o) {
  const bool via = !o.via.address.empty();
  Endpoint listen, upstream;
  std::vector<Fault> faults;
  try {
    listen = parse_endpoint(o.listen, proxy_schemes);
    upstream = parse_endpoint(o.upstream, proxy_schemes);
    const bool datagram = listen.kind == Endpoint::Kind::udp;
    if (datagram != (upstream.kind == Endpoint::Kind::udp)) {
      throw std::invalid_argument("a udp:// proxy listens and connects with udp:// (got " +
                                  std::string(listen.scheme()) + " and " + std::string(upstream.scheme()) + ")");
    }
    if (upstream.kind != Endpoint::Kind::unix_path && upstream.port == 0) {
      throw std::invalid_argument("--upstream needs a port");
    }
    const bool tls_listen = listen.kind == Endpoint::Kind::tls;
    if (tls_listen && (o.cert.empty() || o.key.empty()))
      throw std::invalid_argument(o.listen + " needs --cert and --key");
    if (!tls_listen && (!o.cert.empty() || !o.key.empty())) {
      throw std::invalid_argument("--cert and --key apply to a tls:// --listen only");
    }
    if (upstream.kind != Endpoint::Kind::tls && (!o.upstream_cafile.empty() || o.upstream_insecure)) {
      throw std::invalid_argument("--upstream-cafile and --upstream-insecure apply to a tls:// --upstream only");
    }
    if (auto problem = via_flags_problem(o.via); !problem.empty()) throw std::invalid_argument(problem);
    if (!o.name.empty() && !via) {
      throw std::invalid_argument("--name names a --via proxy session (for 'conduit faults'): add --via");
    }
    faults = faults_of(o.faults, datagram);
  } catch (const std::invalid_argument& e) {
    std::cerr << "conduit proxy: " << e.what() << '\n';
    return exit_usage;
  }

  // Latency faults want their timers on time: the kernel may otherwise
  // defer a wake-up by up to 50 us (the default timer slack) to batch it.
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  EventLoop loop;
  ProxyReport report(o.output);
  int exit_code = exit_ok;
  bool closing = false;
  std::shared_ptr<Proxy> proxy;

  // Here or, with --via, on the service's host: one ProxyOptions either way.
  std::unique_ptr<Opener> opener;
  ProxyOptions options;
  try {
    opener = make_opener(loop, o.via);
    options.listen = proxy_endpoint(listen, o, true);
    options.upstream = proxy_endpoint(upstream, o, false);
  } catch (const std::invalid_argument& e) {
    std::cerr << "conduit proxy: " << e.what() << '\n';
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "conduit proxy: cannot load the TLS certificate, key or CA: " << e.what() << '\n';
    return exit_usage;
  }
  options.datagram = listen.kind == Endpoint::Kind::udp;
  options.faults = std::move(faults);
  options.idle_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(o.idle_timeout * 1000));
  options.name = o.name;
  options.on_accepted = [&](const ProxyConnectionInfo& info) { report.accepted(info); };
  options.on_closed = [&](const ProxyConnectionInfo& info, std::exception_ptr error) {
    report.closed(info, error);
    if (o.exit_after && report.closed_count() >= o.exit_after) loop.stop();
  };
  options.on_changed = [&](const std::string& by, const std::string& command) {
    if (o.output.quiet || !proxy) return;
    std::string names;
    for (const auto& fault : proxy->faults().all()) names += (names.empty() ? "" : ", ") + fault.name;
    std::cerr << "conduit proxy: " << command << " by " << by << ": now " << (proxy->is_up() ? "up" : "down")
              << (names.empty() ? ", no faults" : ", faults: " + names) << std::endl;
  };
  print_loop_errors(loop, "proxy");
  bool closed = false;
  opener->create_proxy(std::move(options), [&](std::exception_ptr error, std::shared_ptr<Proxy> made) {
    if (error) {
      std::cerr << "conduit proxy: cannot listen on " << o.listen << (via ? " via " + o.via.address : std::string())
                << ": " << describe(error) << '\n';
      exit_code = exit_code_for(error, exit_connect_failed);
      return loop.stop();
    }
    // The "listening" lines are what scripts wait on: always printed.
    for (const auto& address : made->sockets())
      std::cout << "listening " << Endpoint::url_of(address, listen.scheme()) << std::endl;
    proxy = std::move(made);
    // Closed before we close it: a --via proxy's session ended (the loop's
    // error handler said why).
    proxy->wait_closed([&] {
      closed = true;
      if (closing) return;
      exit_code = exit_failure;
      loop.stop();
    });
  });

  // -v: each open connection's counts, once a second while they move.
  asio::steady_timer ticker(loop.context());
  std::function<void()> tick = [&] {
    ticker.expires_after(std::chrono::seconds(1));
    ticker.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      if (proxy) {
        for (const auto& info : proxy->connections()) report.stats(info);
      }
      tick();
    });
  };
  if (o.output.verbose > 0) tick();

  asio::signal_set signals(loop.context(), SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (ec) return;
    if (!o.output.quiet) std::cerr << "conduit proxy: shutting down\n";
    loop.stop();
  });
  loop.run_forever();
  signals.cancel();
  ticker.cancel();

  // Close, and give open connections a bounded moment to flush.
  closing = true;
  if (proxy) {
    proxy->close();
    loop.run_until([&] { return closed; }, std::chrono::seconds(2));
  }
  if (o.output.json) report.print_json();
  return exit_code;
}

}  // namespace

void set_proxy_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<ProxyCommandOptions>();
  CLI::App* cmd = app.add_subcommand("proxy", "Relay connections (or datagrams) to an upstream, injecting faults");
  cmd->add_option("-l,--listen", o->listen,
                  "Where to listen: [tcp://]HOST:PORT, tls://HOST:PORT (serves TLS: --cert, --key), unix:/PATH "
                  "or udp://HOST:PORT (HOST * for all interfaces, PORT 0 for any free port)")
      ->required()
      ->check(endpoint_validator(proxy_schemes));
  cmd->add_option("-u,--upstream", o->upstream,
                  "Where to relay to: [tcp://]HOST:PORT, tls:// (speaks TLS to it), unix:/PATH or udp:// (with a "
                  "udp:// --listen)")
      ->required()
      ->check(endpoint_validator(proxy_schemes));
  add_fault_flags(*cmd, o->faults);
  cmd->add_option("--cert", o->cert, "TLS: certificate chain (PEM) for a tls:// --listen")->check(CLI::ExistingFile);
  cmd->add_option("--key", o->key, "TLS: private key (PEM) of --cert")->check(CLI::ExistingFile);
  cmd->add_option("--upstream-cafile", o->upstream_cafile, "TLS: trust this CA (PEM) for a tls:// --upstream")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--upstream-insecure", o->upstream_insecure, "TLS: do not verify a tls:// --upstream's certificate");
  cmd->add_option("--idle-timeout", o->idle_timeout, "UDP: forget a client after this many quiet seconds")
      ->capture_default_str()
      ->check(seconds_validator());
  cmd->add_option("--name", o->name,
                  "With --via: name the session, so that 'conduit faults NAME' can change its faults while it runs");
  cmd->add_option("--exit-after", o->exit_after, "Stop once N connections have been relayed and closed")
      ->check(CLI::PositiveNumber);
  add_via_flags(*cmd, o->via);
  add_output_flags(*cmd, o->output);
  cmd->footer(std::string(R"(Prints "listening URL" once it listens, then relays until SIGINT or SIGTERM (or
--exit-after N connections). Each accepted connection opens one upstream; bytes go both ways with
backpressure end to end, a half-close is passed on as a half-close and a reset as a reset. The
faults act on both directions unless --direction says up (client to upstream) or down. -v prints
each connection's start, byte counts while they move, and end; --json prints the totals and every
connection at the end. With --via the proxy runs on the service's host (--allow-listen and
--allow-connect decide where it may listen and relay to), and 'conduit faults' changes its faults
while it runs (give it a --name; each change is printed here).

Examples:
  conduit proxy --listen tcp://127.0.0.1:6000 --upstream tcp://127.0.0.1:5432 --latency 100ms --jitter 10ms
  conduit proxy --listen tcp://*:8080 --upstream tcp://backend:80 --bandwidth 1MiB/s --direction down -v
  conduit proxy --listen udp://127.0.0.1:5353 --upstream udp://10.0.0.2:53 --loss 1% --reorder 5%
  conduit proxy --listen tls://0.0.0.0:8443 --cert cert.pem --key key.pem --upstream tcp://127.0.0.1:8080
  conduit proxy --via 127.0.0.1:50051 --listen tcp://0.0.0.0:7000 --upstream tcp://db:5432 --reset-after 1MiB
  conduit proxy --via 127.0.0.1:50051 --name db --listen tcp://0.0.0.0:7000 --upstream tcp://db:5432
  conduit faults --via 127.0.0.1:50051 db --latency 100ms    (in another terminal, while it runs)

)") + exit_codes_help);
  cmd->callback([o, &exit_code] { exit_code = run_proxy(*o); });
}

}  // namespace conduit::cli
