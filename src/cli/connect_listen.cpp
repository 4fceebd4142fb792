// conduit connect / conduit listen: standard input to a connection and the
// connection to standard output, as socat and ncat users reach for them,
// directly or (--via) on the service's host.
//
// Half-close is carried both ways, as socat carries it: the end of standard
// input is a write_eof (TLS has none: the connection then stays open until
// the peer closes it), and after the peer's EOF standard input still goes
// out until it ends, or until none came for half a second (socat's -t: a
// terminal never ends), then the connection closes. Nothing is dropped on
// the way: input is read only as fast as the connection takes it
// (pause_writing stops the reading).
//
// UDP (udp://) has no connection and no EOF: each read of standard input
// is a datagram (up to 65507 bytes) and each datagram received is written
// out; after standard input ends, the run ends once no datagram came for
// half a second. `listen udp://` answers the first sender, and only it.
//
//   connect:  connecting --connection_made--> open --peer EOF / lost--> done
//   listen:   listening --first connection--> open (later ones refused,
//             unless --keep: then standard input goes to every connection
//             open as it comes, and each writes to standard output, until
//             SIGINT/SIGTERM)
#include "commands.hpp"
#include "common.hpp"
#include "input_feeder.hpp"

#include <conduit/event_loop.hpp>
#include <conduit/server.hpp>
#include <conduit/tls.hpp>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <unistd.h>

#include <fcntl.h>
#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <iostream>
#include <optional>
#include <set>

namespace conduit::cli {

namespace {

struct StdioOptions {
  std::string url;
  bool keep = false;
  std::optional<double> timeout;
  int backlog = 100;
  TlsFlags tls;
  ViaFlags via;
  OutputOptions output;
};

class StdioProtocol;

/// All of `data` to standard output (blocking, as a pipe's reader sets the
/// pace); what went wrong, or "".
std::string write_stdout(std::span<const std::byte> data) {
  const char* at = reinterpret_cast<const char*>(data.data());
  std::size_t left = data.size();
  while (left > 0) {
    const ssize_t n = ::write(STDOUT_FILENO, at, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      // Non-blocking: a terminal shares its open file with standard input,
      // which the loop reads without blocking. Wait until it takes more.
      pollfd writable{STDOUT_FILENO, POLLOUT, 0};
      ::poll(&writable, 1, -1);
      continue;
    }
    if (n < 0) return std::string("cannot write standard output: ") + std::strerror(errno);
    at += n;
    left -= static_cast<std::size_t>(n);
  }
  return {};
}

// What connect and listen take: the stream schemes, and udp.
constexpr std::string_view stdio_scheme_list[] = {"tcp", "tls", "unix", "udp"};
constexpr Schemes stdio_schemes = stdio_scheme_list;

/// What the connections share: standard input (fed to every open
/// connection) and standard output, and how the run ends.
class Bridge {
 public:
  Bridge(EventLoop& loop, const EventLog& log, bool keep)
      : loop_(loop), log_(log), keep_(keep), linger_(loop.context()) {}

  int exit_code = exit_ok;
  std::string error;
  bool done = false;

  /// A connection was made: false if it is not wanted (listen without
  /// --keep already has one).
  bool add(StdioProtocol* connection);
  void remove(StdioProtocol* connection, std::exception_ptr error);
  void set_paused(StdioProtocol* connection, bool paused);
  /// The peer's EOF: whether to keep the connection open (input still to send).
  bool peer_eof(StdioProtocol* connection);
  /// Bytes from a connection: to standard output.
  void output(std::span<const std::byte> data);
  void fail(int code, std::string why);
  /// At the end: close what is still open (abort, if `abort`).
  void end_all(bool abort);
  bool idle() const { return open_.empty(); }

 private:
  void start_input();
  void half_close(StdioProtocol& connection);
  void linger();
  void close_ended();

  /// How long input may pause, after a peer's EOF, before its connection
  /// closes (socat's -t default).
  static constexpr auto linger_time = std::chrono::milliseconds(500);

  EventLoop& loop_;
  const EventLog& log_;
  bool keep_;
  bool served_ = false;  // a connection was made
  std::set<StdioProtocol*> open_;
  std::set<StdioProtocol*> paused_;
  std::set<StdioProtocol*> ended_;  // the peer sent EOF; input still goes
  asio::steady_timer linger_;
  std::optional<InputFeeder> input_;
  bool input_done_ = false;
};

class StdioProtocol final : public Protocol {
 public:
  explicit StdioProtocol(Bridge& bridge, const EventLog& log) : bridge_(bridge), log_(log) {}

  std::shared_ptr<Transport> transport;

  void connection_made(std::shared_ptr<Transport> t) override {
    transport = std::move(t);
    log_.event("connection", "connection_made");
    if (!bridge_.add(this)) {
      log_.event("connection", "refused: already connected (--keep takes more)");
      transport->abort();
    }
  }
  void data_received(std::span<const std::byte> data) override {
    log_.data("connection", "data_received", data);
    bridge_.output(data);
  }
  bool eof_received() override {
    log_.event("connection", "eof_received");
    return bridge_.peer_eof(this);
  }
  void pause_writing() override { bridge_.set_paused(this, true); }
  void resume_writing() override { bridge_.set_paused(this, false); }
  void connection_lost(std::exception_ptr error) override {
    log_.event("connection", error ? "connection_lost: " + describe(error) : std::string("connection_lost"));
    bridge_.remove(this, error);
    transport.reset();
  }

 private:
  Bridge& bridge_;
  const EventLog& log_;
};

bool Bridge::add(StdioProtocol* connection) {
  if (served_ && !keep_) return false;
  served_ = true;
  open_.insert(connection);
  if (!input_ && !input_done_) start_input();
  if (input_done_) half_close(*connection);
  return true;
}

void Bridge::remove(StdioProtocol* connection, std::exception_ptr why) {
  if (!open_.erase(connection)) return;
  paused_.erase(connection);
  ended_.erase(connection);
  if (input_) input_->set_paused(!paused_.empty());
  if (why && exit_code == exit_ok) {
    exit_code = exit_failure;
    error = "the connection broke: " + describe(why);
  }
  if (keep_) return;
  if (input_) input_->stop();
  done = true;
}

bool Bridge::peer_eof(StdioProtocol* connection) {
  if (input_done_) return false;  // nothing more to send: close
  ended_.insert(connection);
  linger();
  return true;
}

void Bridge::linger() {
  if (ended_.empty()) return;
  linger_.expires_after(linger_time);
  linger_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;
    if (!paused_.empty()) return linger();  // the connection is slow, not the input
    log_.event("input", "no input for 0.5 s after the peer's EOF: closing");
    close_ended();
  });
}

void Bridge::close_ended() {
  linger_.cancel();
  for (auto* connection : std::set(ended_)) {
    if (connection->transport) connection->transport->close();
  }
  ended_.clear();
}

void Bridge::set_paused(StdioProtocol* connection, bool paused) {
  if (paused)
    paused_.insert(connection);
  else
    paused_.erase(connection);
  if (input_) input_->set_paused(!paused_.empty());
}

void Bridge::output(std::span<const std::byte> data) {
  if (auto problem = write_stdout(data); !problem.empty()) fail(exit_failure, problem);
}

void Bridge::fail(int code, std::string why) {
  if (exit_code == exit_ok) {
    exit_code = code;
    error = std::move(why);
  }
  if (input_) input_->stop();
  for (auto* connection : std::set(open_)) {
    if (connection->transport) connection->transport->abort();
  }
  done = true;
}

void Bridge::end_all(bool abort) {
  for (auto* connection : std::set(open_)) {
    if (!connection->transport) continue;
    if (abort)
      connection->transport->abort();
    else
      connection->transport->close();
  }
}

void Bridge::start_input() {
  input_.emplace(
      loop_,
      [this](std::span<const std::byte> data) {
        for (auto* connection : open_) {
          if (connection->transport) connection->transport->write(data);
        }
        linger();  // input flows: the ended connections wait on
      },
      [this] {
        input_done_ = true;
        log_.event("input", "end of standard input");
        for (auto* connection : open_) half_close(*connection);
      });
  std::string why;
  // A standard input that cannot be read (closed) is an empty one.
  if (!input_->start(::dup(STDIN_FILENO), why)) {
    log_.event("input", "cannot read standard input (" + why + "): sending nothing");
    input_done_ = true;
    for (auto* connection : open_) half_close(*connection);
  }
}

void Bridge::half_close(StdioProtocol& connection) {
  if (!connection.transport) return;
  if (ended_.erase(&connection)) return connection.transport->close();  // both ways done
  // TLS cannot half-close: the peer ends it (or --timeout).
  if (connection.transport->can_write_eof()) connection.transport->write_eof();
}

/// Reading standard input through the loop makes it non-blocking, a flag
/// shared with whoever else holds that terminal or pipe: put back at the end.
class RestoreStdinFlags {
 public:
  RestoreStdinFlags() : flags_(::fcntl(STDIN_FILENO, F_GETFL)) {}
  RestoreStdinFlags(const RestoreStdinFlags&) = delete;
  RestoreStdinFlags& operator=(const RestoreStdinFlags&) = delete;
  ~RestoreStdinFlags() {
    if (flags_ >= 0) ::fcntl(STDIN_FILENO, F_SETFL, flags_);
  }

 private:
  int flags_;
};

/// The exit code and message for a connection, listener or endpoint that
/// could not be opened: the service unreachable (--via), or the target.
std::pair<int, std::string> open_failure(std::exception_ptr error, const StdioOptions& options,
                                         const std::string& what) {
  const int code = exit_code_for(error, exit_connect_failed);
  if (code == exit_service_unreachable)
    return {code, "cannot reach the service at " + options.via.address + ": " + describe(error)};
  return {code, what + " " + options.url + ": " + describe(error)};
}

/// Runs `loop` until `done()`; SIGINT or SIGTERM calls `on_signal` (a clean
/// end), --timeout passing `on_timeout` with the message.
void run_to_the_end(EventLoop& loop, const StdioOptions& options, const std::function<bool()>& done,
                    const std::function<void()>& on_signal, const std::function<void(std::string)>& on_timeout) {
  asio::signal_set signals(loop.context(), SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (!ec) on_signal();
  });
  const auto limit =
      options.timeout
          ? std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::duration<double>(*options.timeout))
          : std::chrono::hours(24 * 365 * 100);
  if (!loop.run_until(done, limit)) on_timeout("timed out after " + format_seconds(*options.timeout) + " s");
  signals.cancel();
}

/// connect / listen for udp://: standard input as datagrams to the peer,
/// the peer's datagrams to standard output.
class StdioDatagrams final : public DatagramProtocol {
 public:
  StdioDatagrams(EventLoop& loop, const EventLog& log, bool listening)
      : loop_(loop), log_(log), listening_(listening), quiet_(loop.context()) {}

  int exit_code = exit_ok;
  std::string error;
  bool done = false;

  const std::shared_ptr<DatagramTransport>& transport() const { return transport_; }
  /// Standard input's reader goes (at the end: it holds a pipe transport).
  void release_input() { input_.reset(); }

  void connection_made(std::shared_ptr<DatagramTransport> transport) override {
    transport_ = std::move(transport);
    log_.event("udp", "connection_made");
    if (!listening_) start_input();  // connected: the peer is known
  }
  void datagram_received(std::span<const std::byte> data, const SocketAddress& addr) override {
    if (listening_ && !peer_) {
      peer_ = addr;
      log_.event("udp", "answering " + addr.to_string());
      start_input();
    }
    if (listening_ && !(addr == *peer_)) return;  // not the peer: ignored
    log_.data("udp", "datagram_received", data);
    write_out(data);
    if (input_done_) wait_quiet();
  }
  void error_received(std::exception_ptr exc) override {
    log_.event("udp", "error_received: " + describe(exc));
    finish(exit_connect_failed, "the peer refused the datagrams: " + describe(exc));
  }
  void pause_writing() override {
    if (input_) input_->set_paused(true);
  }
  void resume_writing() override {
    if (input_) input_->set_paused(false);
  }
  void connection_lost(std::exception_ptr exc) override {
    if (exc) finish(exit_failure, "the endpoint was lost: " + describe(exc));
    done = true;
    if (input_) input_->stop();
    transport_.reset();
  }

  void finish(int code, std::string why) {
    if (exit_code == exit_ok && code != exit_ok) {
      exit_code = code;
      error = std::move(why);
    }
    if (input_) input_->stop();
    done = true;
  }

 private:
  static constexpr std::size_t max_datagram = 65507;  // IPv4's most

  void start_input() {
    input_.emplace(
        loop_,
        [this](std::span<const std::byte> data) {
          for (std::size_t at = 0; at < data.size() && transport_; at += max_datagram) {
            transport_->sendto(data.subspan(at, std::min(max_datagram, data.size() - at)), peer_);
          }
        },
        [this] {
          input_done_ = true;
          log_.event("input", "end of standard input");
          wait_quiet();
        });
    std::string why;
    if (!input_->start(::dup(STDIN_FILENO), why)) {
      input_done_ = true;
      wait_quiet();
    }
  }
  /// The run ends once no datagram came for half a second (socat's -t).
  void wait_quiet() {
    quiet_.expires_after(std::chrono::milliseconds(500));
    quiet_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) finish(exit_ok, {});
    });
  }
  void write_out(std::span<const std::byte> data) {
    if (auto problem = write_stdout(data); !problem.empty()) finish(exit_failure, problem);
  }

  EventLoop& loop_;
  const EventLog& log_;
  bool listening_;
  asio::steady_timer quiet_;
  std::shared_ptr<DatagramTransport> transport_;
  std::optional<SocketAddress> peer_;  // listen: the first sender
  std::optional<InputFeeder> input_;
  bool input_done_ = false;
};

int run_udp(const StdioOptions& options, const Endpoint& ep, bool listening, const char* name) {
  if (options.keep) {
    std::cerr << name << ": --keep is for stream listeners (tcp, tls, unix)\n";
    return exit_usage;
  }
  if (auto problem = via_flags_problem(options.via); !problem.empty()) {
    std::cerr << name << ": " << problem << '\n';
    return exit_usage;
  }
  RestoreStdinFlags restore_stdin;
  EventLoop loop;
  std::unique_ptr<Opener> opener;  // here, or on the service's host
  try {
    opener = make_opener(loop, options.via);
  } catch (const std::invalid_argument& e) {
    std::cerr << name << ": " << e.what() << '\n';
    return exit_usage;
  }
  EventLog log(options.output);
  auto protocol = std::make_shared<StdioDatagrams>(loop, log, listening);
  const std::string host = ep.host == "*" ? std::string("::") : ep.host;
  auto opened = [&](std::exception_ptr error, std::shared_ptr<DatagramTransport> transport) {
    if (error) {
      auto [code, why] = open_failure(error, options, listening ? "cannot listen on" : "cannot reach");
      return protocol->finish(code, std::move(why));
    }
    if (!listening || !transport) return;
    if (auto address = transport->get_extra_info_as<SocketAddress>("sockname")) {
      std::cerr << "listening " << Endpoint::url_of(*address, "udp") << std::endl;
    }
  };
  DatagramOptions endpoint_options;
  if (listening)
    endpoint_options.local_addr = std::pair{host, ep.port};
  else
    endpoint_options.remote_addr = std::pair{host, ep.port};
  opener->create_datagram_endpoint([protocol] { return protocol; }, endpoint_options,
                                   [&](std::exception_ptr error, std::shared_ptr<DatagramTransport> transport, auto) {
                                     opened(error, std::move(transport));
                                   });
  run_to_the_end(
      loop, options, [&] { return protocol->done; }, [&] { protocol->finish(exit_ok, {}); },
      [&](std::string why) { protocol->finish(exit_timeout, std::move(why)); });
  // Close the endpoint and let its connection_lost come (bounded): the
  // transport and the protocol hold each other until then.
  if (auto transport = protocol->transport()) {
    transport->close();
    loop.run_until([&] { return !protocol->transport(); }, std::chrono::seconds(2));
  }
  protocol->release_input();
  if (!protocol->error.empty()) std::cerr << name << ": " << protocol->error << '\n';
  return protocol->exit_code;
}

int run_stdio(const StdioOptions& options, bool listening) {
  const char* name = listening ? "conduit listen" : "conduit connect";
  const Endpoint ep = parse_endpoint(options.url, stdio_schemes);
  if (ep.kind == Endpoint::Kind::udp) return run_udp(options, ep, listening, name);
  const bool tls = ep.kind == Endpoint::Kind::tls;
  std::string problem = tls_flags_problem(options.tls, tls, listening);
  if (problem.empty()) problem = via_flags_problem(options.via);
  if (problem.empty() && listening && tls && (options.tls.cert.empty() || options.tls.key.empty())) {
    problem = options.url + " needs --cert and --key";
  }
  if (!problem.empty()) {
    std::cerr << name << ": " << problem << '\n';
    return exit_usage;
  }
  ConnectOptions connect_options;
  ServerOptions server_options;
  server_options.backlog = options.backlog;
  RestoreStdinFlags restore_stdin;
  EventLoop loop;
  std::unique_ptr<Opener> opener;  // here, or on the service's host
  try {
    opener = make_opener(loop, options.via);
    if (tls && listening)
      server_options.tls = server_tls_options(options.tls);
    else if (tls)
      connect_options.tls = client_tls_options(options.tls);
  } catch (const std::exception& e) {
    std::cerr << name << ": " << e.what() << '\n';
    return exit_usage;
  }

  EventLog log(options.output);
  print_loop_errors(loop, listening ? "listen" : "connect");
  Bridge bridge(loop, log, listening && options.keep);
  auto factory = [&]() -> std::shared_ptr<BaseProtocol> { return std::make_shared<StdioProtocol>(bridge, log); };
  auto cannot = [&](std::exception_ptr error, const std::string& what) {
    auto [code, why] = open_failure(error, options, what);
    bridge.fail(code, std::move(why));
  };

  std::shared_ptr<AbstractServer> server;
  bool closing = false;
  if (!listening) {
    auto on_connected = [&](std::exception_ptr error, auto&&...) {
      if (error) cannot(error, "cannot connect to");
    };
    if (ep.kind == Endpoint::Kind::unix_path) {
      opener->create_unix_connection(factory, ep.path, on_connected);
    } else {
      opener->create_connection(factory, ep.host, ep.port, connect_options, on_connected);
    }
  } else {
    auto on_server = [&](std::exception_ptr error, std::shared_ptr<AbstractServer> s) {
      if (error) return cannot(error, "cannot listen on");
      // Where it listens, on stderr: standard output is the connection's.
      for (const auto& address : s->sockets())
        std::cerr << "listening " << Endpoint::url_of(address, ep.scheme()) << std::endl;
      // Closed before we close it: its session ended (the loop's error
      // handler said why).
      s->wait_closed([&] {
        if (!closing) bridge.fail(exit_failure, "the server session ended");
      });
      server = std::move(s);
    };
    if (ep.kind == Endpoint::Kind::unix_path) {
      opener->create_unix_server(factory, ep.path, server_options, on_server);
    } else {
      std::vector<std::string> hosts;
      if (ep.host != "*") hosts.push_back(ep.host);
      opener->create_server(factory, hosts, ep.port, server_options, on_server);
    }
  }

  // SIGINT/SIGTERM end the run: a clean end for a --keep listener.
  run_to_the_end(
      loop, options, [&] { return bridge.done; }, [&] { bridge.done = true; },
      [&](std::string why) { bridge.fail(exit_timeout, std::move(why)); });
  closing = true;
  if (server) server->close();
  // What is still open (--keep's connections at a signal) closes, flushing
  // for a bounded moment; then whatever is left is aborted. Each protocol
  // and its transport hold each other until its connection_lost.
  bridge.end_all(false);
  if (!loop.run_until([&] { return bridge.idle(); }, std::chrono::seconds(2))) {
    bridge.end_all(true);
    loop.run_until([&] { return bridge.idle(); }, std::chrono::seconds(2));
  }
  if (!bridge.error.empty()) std::cerr << name << ": " << bridge.error << '\n';
  return bridge.exit_code;
}

void add_stdio_flags(CLI::App& cmd, StdioOptions& options, bool listening) {
  cmd.add_option("-t,--timeout", options.timeout, "Give up after S seconds (default: no limit)")
      ->check(seconds_validator());
  add_tls_flags(cmd, options.tls, listening);
  add_via_flags(cmd, options.via);
  add_output_flags(cmd, options.output);
}

}  // namespace

void set_connect_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<StdioOptions>();
  CLI::App* cmd = app.add_subcommand(
      "connect", "Connect, then copy standard input to the connection and the connection to standard output");
  cmd->add_option("address", options->url, "[tcp://]HOST:PORT, tls://HOST:PORT, unix:/PATH or udp://HOST:PORT")
      ->required()
      ->check(endpoint_validator(stdio_schemes));
  add_stdio_flags(*cmd, *options, false);
  cmd->footer(std::string(R"(The end of standard input is a half-close (write_eof; TLS has none, so the connection stays
open until the server closes it). After the server's EOF, standard input still goes out until
it ends, or until none came for 0.5 s; then the connection closes and the run ends. Input is
read only as fast as the connection takes it. No time limit unless --timeout. udp://: each
read of standard input is a datagram; the run ends 0.5 s after input and datagrams stop.
With --via, the connection is made on the service's host.

)") + exit_codes_help +
              R"(
Examples:
  printf 'GET / HTTP/1.0\r\n\r\n' | conduit connect 127.0.0.1:8000
  conduit connect tls://example.org:443 --cafile ca.pem < request.txt
  tar c dir | conduit connect --via 10.0.0.5 10.0.0.9:9000   (from the service's host)
)");
  cmd->callback([options, &exit_code] { exit_code = run_stdio(*options, false); });
}

void set_listen_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<StdioOptions>();
  CLI::App* cmd =
      app.add_subcommand("listen", "Listen, then copy a connection to standard output and standard input to it");
  cmd->add_option("address", options->url,
                  "[tcp://]HOST:PORT, tls://HOST:PORT or udp://HOST:PORT (HOST * for all interfaces, PORT 0 for "
                  "any free port) or unix:/PATH")
      ->required()
      ->check(endpoint_validator(stdio_schemes));
  cmd->add_flag("-k,--keep", options->keep,
                "Take every connection, not just the first, until SIGINT or SIGTERM: standard input goes to every "
                "connection open as it comes, and each writes to standard output");
  cmd->add_option("--backlog", options->backlog, "listen() backlog")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  add_stdio_flags(*cmd, *options, true);
  cmd->footer(std::string(R"(Prints "listening URL" on stderr for each bound socket (stdout is the connection's). Takes
one connection (later ones are refused) and ends when it does, or with --keep every
connection until SIGINT/SIGTERM. Half-close is carried as connect carries it. With --via,
the service listens on its host (within its --allow-listen).

)") + exit_codes_help +
              R"(
Examples:
  conduit listen 127.0.0.1:9000 > received.bin
  conduit listen --keep '*:9000' < banner.txt
  conduit listen tls://127.0.0.1:9443 --cert server.pem --key server.key
)");
  cmd->callback([options, &exit_code] { exit_code = run_stdio(*options, true); });
}

}  // namespace conduit::cli
