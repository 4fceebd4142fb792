// conduit udp-echo server / client: a UDP echo server, and a client that
// sends numbered datagrams one at a time and accounts for each echo.
#include "commands.hpp"
#include "common.hpp"

#include <conduit/event_loop.hpp>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>

namespace conduit::cli {

namespace {

using Clock = std::chrono::steady_clock;

// ---- server -------------------------------------------------------------------

struct UdpServerOptions {
  std::vector<std::string> listen;
  ViaFlags via;
  OutputOptions output;
};

struct UdpServerStats {
  std::uint64_t datagrams = 0;
  std::uint64_t bytes = 0;
  std::uint64_t dropped = 0;  // not echoed while the send queue was over its high watermark
  std::uint64_t errors = 0;
  std::size_t open_endpoints = 0;
  std::function<void(std::exception_ptr)> on_lost;  // an endpoint ended
};

/// Echoes each datagram to its sender. While the send queue is above its
/// high watermark (pause_writing .. resume_writing) it drops instead of
/// queueing more, as a UDP server should: memory stays bounded (SPEC R6).
class UdpEchoProtocol final : public DatagramProtocol {
 public:
  UdpEchoProtocol(const EventLog& log, UdpServerStats& stats) : log_(log), stats_(stats) {}

  void connection_made(std::shared_ptr<DatagramTransport> transport) override {
    transport_ = std::move(transport);
    ++stats_.open_endpoints;
  }
  void datagram_received(std::span<const std::byte> data, const SocketAddress& from) override {
    log_.data(from.to_string(), "datagram_received", data);
    ++stats_.datagrams;
    if (paused_) {
      ++stats_.dropped;
      return;
    }
    stats_.bytes += data.size();
    transport_->sendto(data, from);
  }
  void error_received(std::exception_ptr error) override {
    ++stats_.errors;
    log_.event("server", "error_received: " + describe(error));
  }
  void pause_writing() override { paused_ = true; }
  void resume_writing() override { paused_ = false; }
  const std::shared_ptr<DatagramTransport>& transport() const { return transport_; }
  void connection_lost(std::exception_ptr error) override {
    transport_.reset();
    --stats_.open_endpoints;
    if (stats_.on_lost) stats_.on_lost(error);
  }

 private:
  const EventLog& log_;
  UdpServerStats& stats_;
  std::shared_ptr<DatagramTransport> transport_;
  bool paused_ = false;
};

int run_udp_server(const UdpServerOptions& options) {
  if (auto problem = via_flags_problem(options.via); !problem.empty()) {
    std::cerr << "conduit udp-echo server: " << problem << '\n';
    return exit_usage;
  }
  EventLoop loop;
  EventLog log(options.output);
  UdpServerStats stats;
  std::vector<std::shared_ptr<DatagramTransport>> endpoints;
  int exit_code = exit_ok;

  const bool via = !options.via.address.empty();
  std::unique_ptr<Opener> opener;  // here, or bound on the service's host
  try {
    opener = make_opener(loop, options.via);
  } catch (const std::invalid_argument& e) {
    std::cerr << "conduit udp-echo server: " << e.what() << '\n';
    return exit_usage;
  }
  // An endpoint that ends with an error while serving (the service went
  // away, say) ends the server.
  stats.on_lost = [&](std::exception_ptr error) {
    if (!error) return;
    std::cerr << "conduit udp-echo server: an endpoint was lost: " << describe(error) << '\n';
    exit_code = exit_failure;
    loop.stop();
  };
  for (const auto& url : options.listen) {
    const Endpoint ep = parse_endpoint(url, datagram_schemes);
    const std::string host = ep.host == "*" ? std::string("::") : ep.host;
    auto factory = [&] { return std::make_shared<UdpEchoProtocol>(log, stats); };
    auto on_endpoint = [&, url](std::exception_ptr error, std::shared_ptr<DatagramTransport> transport) {
      if (error) {
        std::cerr << "conduit udp-echo server: cannot listen on " << url
                  << (via ? " via " + options.via.address : std::string()) << ": " << describe(error) << '\n';
        exit_code = exit_code_for(error, exit_connect_failed);
        loop.stop();
        return;
      }
      if (auto address = transport->get_extra_info_as<SocketAddress>("sockname")) {
        std::cout << "listening " << Endpoint::url_of(*address, "udp") << std::endl;
      }
      endpoints.push_back(std::move(transport));
    };
    DatagramOptions endpoint_options;
    endpoint_options.local_addr = std::pair{host, ep.port};
    opener->create_datagram_endpoint(
        factory, endpoint_options,
        [on_endpoint](std::exception_ptr error, std::shared_ptr<DatagramTransport> transport, auto) {
          on_endpoint(error, std::move(transport));
        });
  }

  asio::signal_set signals(loop.context(), SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (ec) return;
    if (!options.output.quiet) std::cerr << "conduit udp-echo server: shutting down\n";
    loop.stop();
  });
  loop.run_forever();
  signals.cancel();
  stats.on_lost = nullptr;  // our own abort below
  for (auto& endpoint : endpoints) endpoint->abort();
  endpoints.clear();
  loop.run_until([&] { return stats.open_endpoints == 0; }, std::chrono::seconds(2));
  if (options.output.json) {
    std::cout << "{\"datagrams\":" << stats.datagrams << ",\"bytes_echoed\":" << stats.bytes
              << ",\"dropped\":" << stats.dropped << ",\"errors\":" << stats.errors << "}" << std::endl;
  }
  return exit_code;
}

// ---- client -------------------------------------------------------------------

struct UdpClientOptions {
  std::string connect;
  std::size_t count = 1;
  std::size_t size = 64;
  double wait = 1.0;
  double timeout = 10.0;
  ViaFlags via;
  OutputOptions output;
};

struct UdpClientResult {
  int exit_code = exit_ok;
  std::string error;
  std::uint64_t sent = 0, received = 0, lost = 0, late = 0;
  std::vector<double> rtts_ms;
};

/// Datagram i carries i as 8 big-endian bytes, then a pattern from i.
std::string make_datagram(std::uint64_t seq, std::size_t size) {
  std::string d(size, '\0');
  for (int b = 0; b < 8; ++b) d[static_cast<std::size_t>(b)] = static_cast<char>(seq >> (56 - 8 * b));
  for (std::size_t i = 8; i < size; ++i) d[i] = static_cast<char>('a' + (seq + i) % 26);
  return d;
}

std::uint64_t sequence_of(std::string_view d) {
  std::uint64_t seq = 0;
  for (int b = 0; b < 8; ++b) seq = seq << 8 | static_cast<unsigned char>(d[static_cast<std::size_t>(b)]);
  return seq;
}

/// Sends datagram 0, waits up to `wait` for its echo (else counts it lost),
/// sends the next, and so on; an echo arriving after its wait is "late".
class UdpEchoClient final : public DatagramProtocol {
 public:
  UdpEchoClient(const UdpClientOptions& options, const EventLog& log, UdpClientResult& result,
                asio::io_context& context, std::function<void()> done)
      : options_(options), log_(log), result_(result), timer_(context), done_(std::move(done)) {}

  void connection_made(std::shared_ptr<DatagramTransport> transport) override {
    transport_ = std::move(transport);
    send_next();
  }

  void datagram_received(std::span<const std::byte> data, const SocketAddress&) override {
    log_.data("client", "datagram_received", data);
    const std::string_view d = as_string_view(data);
    if (d.size() < 8)
      return fail(exit_mismatch, "received a " + std::to_string(d.size()) + "-byte datagram, not an echo");
    const std::uint64_t seq = sequence_of(d);
    if (seq != current_ || !waiting_) {
      if (seq < current_ || (seq == current_ && !waiting_)) ++result_.late;
      return;
    }
    if (d != make_datagram(seq, options_.size))
      return fail(exit_mismatch, "the echo of datagram " + std::to_string(seq) + " differs from it");
    result_.rtts_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - sent_at_).count());
    ++result_.received;
    waiting_ = false;
    timer_.cancel();
    ++current_;
    send_next();
  }

  void error_received(std::exception_ptr error) override {
    log_.event("client", "error_received: " + describe(error));
    // ECONNREFUSED: an ICMP port unreachable came back; nobody listens.
    fail(exit_connect_failed, "no echo server at " + options_.connect + ": " + describe(error));
  }

  void connection_lost(std::exception_ptr) override {
    timer_.cancel();
    transport_.reset();
    done_();
  }

 private:
  void send_next() {
    if (current_ == options_.count) return transport_->close();
    const std::string d = make_datagram(current_, options_.size);
    log_.data("client", "sendto", as_bytes(d));
    sent_at_ = Clock::now();
    waiting_ = true;
    transport_->sendto(d);
    ++result_.sent;
    timer_.expires_after(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.wait)));
    timer_.async_wait([this, seq = current_](const boost::system::error_code& ec) {
      if (ec || !waiting_ || seq != current_ || !transport_) return;
      log_.event("client", "no echo of datagram " + std::to_string(seq) + " within the wait: lost");
      ++result_.lost;
      waiting_ = false;
      ++current_;
      send_next();
    });
  }

  void fail(int code, std::string why) {
    if (result_.exit_code == exit_ok) {
      result_.exit_code = code;
      result_.error = std::move(why);
    }
    if (transport_) transport_->abort();
  }

  const UdpClientOptions& options_;
  const EventLog& log_;
  UdpClientResult& result_;
  asio::steady_timer timer_;
  std::function<void()> done_;
  std::shared_ptr<DatagramTransport> transport_;
  std::uint64_t current_ = 0;
  bool waiting_ = false;
  Clock::time_point sent_at_;
};

void print_client_json(const UdpClientOptions& options, const UdpClientResult& r) {
  std::cout << "{\"endpoint\":" << json_string(options.connect) << ",\"ok\":" << (r.exit_code == 0 ? "true" : "false")
            << ",\"exit_code\":" << r.exit_code << ",\"sent\":" << r.sent << ",\"received\":" << r.received
            << ",\"lost\":" << r.lost << ",\"late\":" << r.late << ",\"rtt_ms\":" << RttSummary(r.rtts_ms).json();
  if (!r.error.empty()) std::cout << ",\"error\":" << json_string(r.error);
  std::cout << "}" << std::endl;
}

int run_udp_client(const UdpClientOptions& options) {
  if (auto problem = via_flags_problem(options.via); !problem.empty()) {
    std::cerr << "conduit udp-echo client: " << problem << '\n';
    return exit_usage;
  }
  const Endpoint ep = parse_endpoint(options.connect, datagram_schemes);
  EventLoop loop;
  EventLog log(options.output);
  UdpClientResult result;
  bool finished = false;
  auto on_open = [&](std::exception_ptr error) {
    if (!error) return;
    result.exit_code = exit_code_for(error, exit_connect_failed);
    result.error = "cannot reach " +
                   std::string(result.exit_code == exit_service_unreachable ? "the service at " + options.via.address
                                                                            : options.connect) +
                   ": " + describe(error);
    finished = true;
  };
  auto make_client = [&] {
    return std::make_shared<UdpEchoClient>(options, log, result, loop.context(), [&] { finished = true; });
  };
  // The endpoint lives here or, with --via, on the service's host.
  std::unique_ptr<Opener> opener;
  try {
    opener = make_opener(loop, options.via);
  } catch (const std::invalid_argument& e) {
    std::cerr << "conduit udp-echo client: " << e.what() << '\n';
    return exit_usage;
  }
  DatagramOptions endpoint_options;
  endpoint_options.remote_addr = std::pair{ep.host, ep.port};
  opener->create_datagram_endpoint(make_client, endpoint_options,
                                   [&](std::exception_ptr error, auto, auto) { on_open(error); });
  const auto timeout =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::duration<double>(options.timeout));
  if (!loop.run_until([&] { return finished; }, timeout)) {
    result.exit_code = exit_timeout;
    result.error = "timed out after " + format_seconds(options.timeout) + " s (" + std::to_string(result.sent) +
                   " of " + std::to_string(options.count) + " datagrams sent)";
  }
  if (result.exit_code == exit_ok && result.lost > 0) {
    result.exit_code = exit_lost;
    result.error = std::to_string(result.lost) + " of " + std::to_string(result.sent) + " datagrams lost";
  }
  if (!result.error.empty()) std::cerr << "conduit udp-echo client: " << result.error << '\n';
  if (options.output.json) {
    print_client_json(options, result);
  } else if (!options.output.quiet) {
    std::cout << result.sent << " sent, " << result.received << " received, " << result.lost << " lost";
    if (!result.rtts_ms.empty()) std::cout << ", rtt avg " << RttSummary(result.rtts_ms).avg << " ms";
    std::cout << std::endl;
  }
  return result.exit_code;
}

}  // namespace

void set_udp_echo_command(CLI::App& app, int& exit_code) {
  CLI::App* udp = app.add_subcommand("udp-echo", "UDP echo server and client");
  udp->require_subcommand(1);

  auto server = std::make_shared<UdpServerOptions>();
  CLI::App* srv = udp->add_subcommand("server", "Echo every datagram back to its sender");
  srv->add_option(
         "-l,--listen", server->listen,
         "Where to listen: [udp://]HOST:PORT (HOST * for all interfaces, PORT 0 for any free port); repeatable")
      ->required()
      ->check(endpoint_validator(datagram_schemes));
  add_via_flags(*srv, server->via);
  add_output_flags(*srv, server->output);
  srv->footer(std::string(R"(Prints "listening URL" for each bound socket, then serves until SIGINT or SIGTERM.
While its send queue is over the high watermark it drops datagrams instead of queueing.

Examples:
  conduit udp-echo server --listen udp://127.0.0.1:9999
  conduit udp-echo server --listen 'udp://*:0' -v --json
  conduit udp-echo server --via 127.0.0.1:50051 --listen udp://0.0.0.0:9999   (bound on the service's host)

)") + exit_codes_help);
  srv->callback([server, &exit_code] { exit_code = run_udp_server(*server); });

  auto client = std::make_shared<UdpClientOptions>();
  CLI::App* cli = udp->add_subcommand("client", "Send numbered datagrams one at a time and check each echo");
  cli->add_option("-c,--connect", client->connect, "Server: [udp://]HOST:PORT")
      ->required()
      ->check(endpoint_validator(datagram_schemes));
  cli->add_option("-n,--count", client->count, "Datagrams to send")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000000}));
  cli->add_option("-s,--size", client->size, "Bytes per datagram (8 or more: a sequence number leads)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{8}, std::size_t{65507}));
  cli->add_option("-w,--wait", client->wait, "Seconds to wait for each echo before counting it lost")
      ->capture_default_str()
      ->check(seconds_validator());
  cli->add_option("-t,--timeout", client->timeout, "Give up after S seconds in all")
      ->capture_default_str()
      ->check(seconds_validator());
  add_via_flags(*cli, client->via);
  add_output_flags(*cli, client->output);
  cli->footer(std::string(R"(Prints "N sent, N received, N lost, rtt avg X ms" (or --json with min/avg/max).
A refused port (ICMP port unreachable) ends the run with exit code 3.

Examples:
  conduit udp-echo client --connect udp://127.0.0.1:9999 --count 100 --size 512
  conduit udp-echo client --connect udp://[::1]:9999 --count 1000 --wait 0.2 --json

)") + exit_codes_help);
  cli->callback([client, &exit_code] { exit_code = run_udp_client(*client); });
}

}  // namespace conduit::cli
