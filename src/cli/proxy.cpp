// conduit proxy: a TCP, TLS, Unix or UDP proxy with faults (the core's
// StreamProxy and DatagramProxy), here or, with --via, on the service's host.
#include "commands.hpp"
#include "common.hpp"
#include "fault_flags.hpp"

#include <conduit/datagram_proxy.hpp>
#include <conduit/event_loop.hpp>
#include <conduit/proxy.hpp>
#include <conduit/tls.hpp>

#include <conduit/service/remote.hpp>

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
  std::string cert, key;                // tls:// listen
  std::string upstream_cafile;          // tls:// upstream
  bool upstream_insecure = false;
  double idle_timeout = 60;             // udp
  std::uint64_t exit_after = 0;
  std::string name;                     // --via: the session's name
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
    if (verbose()) std::cerr << "[conn " << info.id << "] " << c.up << " bytes up, " << c.down << " bytes down" << std::endl;
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

v1::ProxyEndpoint remote_endpoint(const Endpoint& ep, const ProxyCommandOptions& o, bool listening) {
  v1::ProxyEndpoint out;
  switch (ep.kind) {
    case Endpoint::Kind::unix_path: out.set_unix_path(ep.path); break;
    case Endpoint::Kind::udp:
      out.mutable_udp()->set_host(ep.host);
      out.mutable_udp()->set_port(ep.port);
      break;
    default:
      out.mutable_tcp()->set_host(ep.host);
      out.mutable_tcp()->set_port(ep.port);
  }
  if (ep.kind == Endpoint::Kind::tls && listening) {
    out.mutable_tls_server()->set_enabled(true);
    out.mutable_tls_server()->set_cert_pem(read_file(o.cert, "--cert"));
    out.mutable_tls_server()->set_key_pem(read_file(o.key, "--key"));
  } else if (ep.kind == Endpoint::Kind::tls) {
    out.mutable_tls_client()->set_enabled(true);
    out.mutable_tls_client()->set_insecure(o.upstream_insecure);
    if (!o.upstream_cafile.empty()) out.mutable_tls_client()->set_ca_pem(read_file(o.upstream_cafile, "--upstream-cafile"));
  }
  return out;
}

ProxyEndpoint local_endpoint(const Endpoint& ep, const ProxyCommandOptions& o, bool listening) {
  ProxyEndpoint out;
  if (ep.kind == Endpoint::Kind::unix_path) {
    out.unix_path = ep.path;
    return out;
  }
  out.host = ep.host == "*" ? std::string() : ep.host;
  out.port = ep.port;
  if (ep.kind != Endpoint::Kind::tls) return out;
  if (listening) {
    out.tls = TlsOptions(tls::server_context(o.cert, o.key, std::nullopt));
  } else {
    out.tls = TlsOptions(o.upstream_insecure ? tls::insecure_client_context()
                         : tls::client_context(o.upstream_cafile.empty() ? std::nullopt
                                                                         : std::optional(o.upstream_cafile)));
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
      throw std::invalid_argument("a udp:// proxy listens and connects with udp:// (got " + std::string(listen.scheme()) +
                                  " and " + std::string(upstream.scheme()) + ")");
    }
    if (upstream.kind != Endpoint::Kind::unix_path && upstream.port == 0) {
      throw std::invalid_argument("--upstream needs a port");
    }
    const bool tls_listen = listen.kind == Endpoint::Kind::tls;
    if (tls_listen && (o.cert.empty() || o.key.empty())) throw std::invalid_argument(o.listen + " needs --cert and --key");
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
  std::shared_ptr<StreamProxy> stream;
  std::shared_ptr<DatagramProxy> datagram;
  std::shared_ptr<service::RemoteProxy> remote;
  auto on_closed = [&](const ProxyConnectionInfo& info, std::exception_ptr error) {
    report.closed(info, error);
    if (o.exit_after && report.closed_count() >= o.exit_after) loop.stop();
  };
  auto listening = [&](std::exception_ptr error, const std::vector<std::string>& urls) {
    if (error) {
      std::cerr << "conduit proxy: cannot listen on " << o.listen << (via ? " via " + o.via.address : std::string())
                << ": " << describe(error) << '\n';
      exit_code = exit_code_for(error, exit_connect_failed);
      return loop.stop();
    }
    // The "listening" lines are what scripts wait on: always printed.
    for (const auto& url : urls) std::cout << "listening " << url << std::endl;
  };

  if (via) {
    service::RemoteOptions remote_options;
    v1::OpenProxy open;
    try {
      remote_options = read_remote(o.via);
      *open.mutable_listen() = remote_endpoint(listen, o, true);
      *open.mutable_upstream() = remote_endpoint(upstream, o, false);
    } catch (const std::invalid_argument& e) {
      std::cerr << "conduit proxy: " << e.what() << '\n';
      return exit_usage;
    }
    for (const auto& f : faults) *open.add_faults() = service::spec_of(f);
    open.set_idle_timeout_ms(static_cast<std::uint32_t>(o.idle_timeout * 1000));
    open.set_name(o.name);
    service::RemoteProxyCallbacks callbacks;
    callbacks.changed = [&](const std::string& by, const std::string& command, const v1::ProxyState& state) {
      if (o.output.quiet) return;
      std::string names;
      for (const auto& spec : state.faults()) names += (names.empty() ? "" : ", ") + spec.name();
      std::cerr << "conduit proxy: " << command << " by " << by << ": now " << (state.up() ? "up" : "down")
                << (names.empty() ? ", no faults" : ", faults: " + names) << std::endl;
    };
    callbacks.accepted = [&](const ProxyConnectionInfo& info) { report.accepted(info); };
    callbacks.stats = [&](const ProxyConnectionInfo& info) { report.stats(info); };
    callbacks.closed = on_closed;
    service::create_remote_proxy(loop, remote_options, std::move(open), std::move(callbacks),
                                 [&](std::exception_ptr error, std::shared_ptr<service::RemoteProxy> proxy) {
                                   std::vector<std::string> urls;
                                   if (proxy) {
                                     for (const auto& s : proxy->sockets()) urls.push_back(std::string(listen.scheme()) + "://" + s);
                                     proxy->on_closed([&](std::exception_ptr why) {
                                       if (!why) return;
                                       std::cerr << "conduit proxy: lost the proxy session: " << describe(why) << '\n';
                                       exit_code = exit_failure;
                                       loop.stop();
                                     });
                                   }
                                   remote = std::move(proxy);
                                   listening(error, urls);
                                 });
  } else if (listen.kind == Endpoint::Kind::udp) {
    DatagramProxyOptions options;
    options.listen_host = listen.host == "*" ? std::string() : listen.host;
    options.listen_port = listen.port;
    options.upstream_host = upstream.host;
    options.upstream_port = upstream.port;
    options.faults = std::move(faults);
    options.idle_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(o.idle_timeout * 1000));
    options.on_accepted = [&](const ProxyConnectionInfo& info) { report.accepted(info); };
    options.on_closed = on_closed;
    DatagramProxy::create(loop, std::move(options), [&](std::exception_ptr error, std::shared_ptr<DatagramProxy> proxy) {
      std::vector<std::string> urls;
      if (proxy) {
        for (const auto& s : proxy->sockets()) urls.push_back(Endpoint::url_of(s, "udp"));
      }
      datagram = std::move(proxy);
      listening(error, urls);
    });
  } else {
    StreamProxyOptions options;
    try {
      options.listen = local_endpoint(listen, o, true);
      options.upstream = local_endpoint(upstream, o, false);
    } catch (const std::exception& e) {
      std::cerr << "conduit proxy: cannot load the TLS certificate, key or CA: " << e.what() << '\n';
      return exit_usage;
    }
    options.faults = std::move(faults);
    options.on_accepted = [&](const ProxyConnectionInfo& info) { report.accepted(info); };
    options.on_closed = on_closed;
    StreamProxy::create(loop, std::move(options), [&](std::exception_ptr error, std::shared_ptr<StreamProxy> proxy) {
      std::vector<std::string> urls;
      if (proxy) {
        for (const auto& s : proxy->sockets()) urls.push_back(Endpoint::url_of(s, listen.scheme()));
      }
      stream = std::move(proxy);
      listening(error, urls);
    });
  }

  // -v: each open connection's counts, once a second while they move (a
  // remote proxy sends its own).
  asio::steady_timer ticker(loop.context());
  std::function<void()> tick = [&] {
    ticker.expires_after(std::chrono::seconds(1));
    ticker.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      for (const auto& info : stream ? stream->connections() : datagram ? datagram->connections()
                                                                         : std::vector<ProxyConnectionInfo>{}) {
        report.stats(info);
      }
      tick();
    });
  };
  if (o.output.verbose > 0 && !via) tick();

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
  if (stream) stream->close();
  if (datagram) datagram->close();
  if (remote) {
    remote->on_closed(nullptr);
    remote->close();
  }
  loop.run_until(
      [&] {
        return (!stream || stream->connections().empty()) && (!datagram || datagram->connections().empty()) &&
               (!remote || remote->is_closed());
      },
      std::chrono::seconds(2));
  remote.reset();
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
                  "Where to relay to: [tcp://]HOST:PORT, tls:// (speaks TLS to it), unix:/PATH or udp:// (with a udp:// --listen)")
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
