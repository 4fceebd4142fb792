// conduit run-subprocess: run a program through subprocess_exec, stream its
// output, forward SIGINT/SIGTERM to it, and exit with its status.
#include "commands.hpp"
#include "common.hpp"

#include <conduit/event_loop.hpp>

#include <remote_transport.hpp>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>

namespace conduit::cli {

namespace {

using Clock = std::chrono::steady_clock;

// Exit codes of their own, as shells and timeout(1) use them: a child's own
// status passes through unchanged, so the tool's must not collide with it.
constexpr int exit_cannot_run = 127;  // the program could not be started
constexpr int exit_timed_out = 124;   // --timeout passed and the child was stopped

struct RunOptions {
  std::vector<std::string> command;
  std::optional<std::string> stdin_source;  // a file, or "-" for our stdin
  std::optional<double> timeout;
  bool prefix = false;
  ViaFlags via;
  OutputOptions output;
};

/// Writes all of `data` to `fd`, waiting if it is non-blocking and full.
void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
    } else if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, -1);
    } else if (n < 0 && errno != EINTR) {
      return;  // our reader is gone: drop the rest, as `cmd | head` expects
    }
  }
}

/// Copies the child's output to ours, raw or with "[out] "/"[err] " line
/// prefixes. Writes block: a slow reader of ours holds the child back
/// through the pipe, which is the backpressure a tool like this wants.
class OutputForwarder {
 public:
  explicit OutputForwarder(bool prefix) : prefix_(prefix) {}

  void forward(int fd, std::string_view data) {
    const int to = fd == 1 ? STDOUT_FILENO : STDERR_FILENO;
    if (!prefix_) return write_all(to, data);
    std::string& pending = pending_[fd == 1 ? 0 : 1];
    pending.append(data);
    std::size_t start = 0, end;
    std::string out;
    while ((end = pending.find('\n', start)) != std::string::npos) {
      out += fd == 1 ? "[out] " : "[err] ";
      out.append(pending, start, end + 1 - start);
      start = end + 1;
    }
    pending.erase(0, start);
    write_all(to, out);
  }

  /// A last line without a newline.
  void flush(int fd) {
    std::string& pending = pending_[fd == 1 ? 0 : 1];
    if (!prefix_ || pending.empty()) return;
    write_all(fd == 1 ? STDOUT_FILENO : STDERR_FILENO, (fd == 1 ? "[out] " : "[err] ") + pending + "\n");
    pending.clear();
  }

 private:
  bool prefix_;
  std::string pending_[2];
};

struct RunResult {
  std::optional<int> returncode;
  std::uint64_t stdout_bytes = 0, stderr_bytes = 0;
  bool timed_out = false;
  bool lost = false;  // connection_lost came
};

class RunProtocol final : public SubprocessProtocol {
 public:
  RunProtocol(OutputForwarder& output, const EventLog& log, RunResult& result)
      : output_(output), log_(log), result_(result) {}

  void connection_made(std::shared_ptr<SubprocessTransport> transport) override {
    log_.event("child", "connection_made pid=" + std::to_string(transport->get_pid()));
    transport_ = std::move(transport);
  }
  void pipe_data_received(int fd, std::span<const std::byte> data) override {
    log_.data("child", fd == 1 ? "stdout" : "stderr", data);
    (fd == 1 ? result_.stdout_bytes : result_.stderr_bytes) += data.size();
    output_.forward(fd, as_string_view(data));
  }
  void pipe_connection_lost(int fd, std::exception_ptr error) override {
    log_.event("child", "pipe_connection_lost fd=" + std::to_string(fd) + (error ? ": " + describe(error) : ""));
    if (fd > 0) output_.flush(fd);
  }
  void process_exited() override {
    result_.returncode = transport_->get_returncode();
    log_.event("child", "process_exited returncode=" + std::to_string(result_.returncode.value_or(0)));
  }
  void connection_lost(std::exception_ptr) override {
    log_.event("child", "connection_lost");
    result_.lost = true;
  }
  // The child's stdin pipe is full: stop reading our stdin until it drains.
  void pause_writing() override {
    if (on_stdin_pressure) on_stdin_pressure(true);
  }
  void resume_writing() override {
    if (on_stdin_pressure) on_stdin_pressure(false);
  }

  std::function<void(bool)> on_stdin_pressure;
  std::shared_ptr<SubprocessTransport> transport_;

 private:
  OutputForwarder& output_;
  const EventLog& log_;
  RunResult& result_;
};

/// Our stdin, forwarded into the child's stdin pipe; EOF closes it.
class StdinForwarder final : public Protocol {
 public:
  explicit StdinForwarder(std::shared_ptr<Transport> child_stdin) : child_stdin_(std::move(child_stdin)) {}
  void connection_made(std::shared_ptr<Transport> transport) override { transport_ = std::move(transport); }
  void data_received(std::span<const std::byte> data) override { child_stdin_->write(data); }
  bool eof_received() override {
    child_stdin_->close();
    return false;
  }
  void connection_lost(std::exception_ptr) override { transport_.reset(); }
  std::shared_ptr<Transport> transport_;

 private:
  std::shared_ptr<Transport> child_stdin_;
};

int exit_code_of(int returncode) { return returncode < 0 ? 128 - returncode : returncode; }

bool is_regular_file(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

int run(const RunOptions& options) {
  EventLoop loop;
  EventLog log(options.output);
  OutputForwarder output(options.prefix);
  RunResult result;
  SubprocessOptions spawn;
  spawn.stdin_stream = Stdio::devnull();
  int stdin_file = -1;
  bool forward_our_stdin = false;
  if (options.stdin_source == "-") {
    // A file can go to the child as is; a pipe or terminal is forwarded
    // through the loop, so the child (in its own process group) never
    // reads our terminal directly.
    if (is_regular_file(STDIN_FILENO)) spawn.stdin_stream = Stdio::fd(STDIN_FILENO);
    else {
      spawn.stdin_stream = Stdio::pipe();
      forward_our_stdin = true;
    }
  } else if (options.stdin_source) {
    stdin_file = ::open(options.stdin_source->c_str(), O_RDONLY | O_CLOEXEC);
    if (stdin_file < 0) {
      std::cerr << "conduit run-subprocess: cannot open --stdin " << *options.stdin_source << ": "
                << std::strerror(errno) << '\n';
      return exit_usage;
    }
    spawn.stdin_stream = Stdio::fd(stdin_file);
  }

  const auto start = Clock::now();
  std::shared_ptr<RunProtocol> protocol;
  std::exception_ptr spawn_error;
  bool spawned = false;
  std::string remote_stdin;  // --via with a file to feed: sent once the child runs
  if (!options.via.address.empty()) {
    // The child runs on the service's host; its stdin is fed from here.
    service::RemoteOptions remote;
    try {
      remote = read_remote(options.via);
    } catch (const std::invalid_argument& e) {
      std::cerr << "conduit run-subprocess: " << e.what() << '\n';
      return exit_usage;
    }
    if (stdin_file >= 0 || (options.stdin_source == "-" && !forward_our_stdin)) {
      const int fd = stdin_file >= 0 ? stdin_file : STDIN_FILENO;
      char chunk[65536];
      for (ssize_t n; (n = ::read(fd, chunk, sizeof chunk)) > 0;) remote_stdin.append(chunk, static_cast<std::size_t>(n));
    }
    conduit::v1::OpenSubprocess open;
    for (const auto& arg : options.command) open.add_argv(arg);
    protocol = std::make_shared<RunProtocol>(output, log, result);
    service::create_remote_subprocess(loop, remote, std::move(open), protocol, [&](std::exception_ptr error) {
      spawn_error = error;
      spawned = true;
    });
  } else {
    std::vector<std::string> args(options.command.begin() + 1, options.command.end());
    loop.subprocess_exec([&] { return std::make_shared<RunProtocol>(output, log, result); }, options.command.front(),
                         args, spawn,
                         [&](std::exception_ptr error, std::shared_ptr<SubprocessTransport>, std::shared_ptr<RunProtocol> p) {
                           spawn_error = error;
                           protocol = std::move(p);
                           spawned = true;
                         });
  }
  loop.run_until([&] { return spawned; }, std::chrono::seconds(30));
  if (stdin_file >= 0) ::close(stdin_file);
  if (spawn_error || !protocol) {
    std::cerr << "conduit run-subprocess: " << (spawn_error ? describe(spawn_error) : "spawn did not complete") << '\n';
    return exit_cannot_run;
  }
  loop.run_until([&] { return protocol->transport_ != nullptr || result.lost; }, std::chrono::seconds(30));
  auto transport = protocol->transport_;
  if (!options.via.address.empty() && transport && !forward_our_stdin) {
    // Remote stdin: what --stdin gave, then EOF (none: EOF at once, as /dev/null).
    if (auto child_stdin = transport->get_pipe_transport(0)) {
      if (!remote_stdin.empty()) child_stdin->write(remote_stdin);
      child_stdin->close();
    }
  }

  // Reading our stdin through the loop makes it non-blocking, a flag shared
  // with whoever else holds that terminal or pipe: put it back at the end.
  const int stdin_flags = ::fcntl(STDIN_FILENO, F_GETFL);
  if (forward_our_stdin && transport) {
    auto child_stdin = transport->get_pipe_transport(0);
    loop.connect_read_pipe([child_stdin] { return std::make_shared<StdinForwarder>(child_stdin); }, STDIN_FILENO,
                           [&, child_stdin](std::exception_ptr error, std::shared_ptr<Transport> ours, auto) {
                             if (error) {
                               std::cerr << "conduit run-subprocess: cannot read stdin: " << describe(error) << '\n';
                               child_stdin->close();
                               return;
                             }
                             protocol->on_stdin_pressure = [ours](bool full) {
                               if (full) ours->pause_reading();
                               else ours->resume_reading();
                             };
                           });
  }

  // Ctrl-C and SIGTERM go to the child (in its own process group, it does
  // not get the terminal's); it decides how to end, and we report that.
  asio::signal_set signals(loop.context(), SIGINT, SIGTERM, SIGHUP);
  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](const boost::system::error_code& ec, int signal) {
      if (ec) return;
      log.event("run-subprocess", "forwarding signal " + std::to_string(signal));
      if (transport && !result.returncode) transport->send_signal(signal);
      wait_signal();
    });
  };
  wait_signal();

  asio::steady_timer deadline(loop.context());
  if (options.timeout && transport) {
    deadline.expires_after(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*options.timeout)));
    deadline.async_wait([&](const boost::system::error_code& ec) {
      if (ec || result.returncode) return;
      result.timed_out = true;
      log.event("run-subprocess", "timeout: terminating the child");
      transport->terminate();
      // A child that ignores SIGTERM gets SIGKILL (with its group) 2 s later.
      deadline.expires_after(std::chrono::seconds(2));
      deadline.async_wait([&](const boost::system::error_code& ec2) {
        if (!ec2 && !result.returncode) transport->close();
      });
    });
  }

  loop.run_until([&] { return result.lost; }, std::chrono::hours(24 * 365));
  signals.cancel();
  deadline.cancel();
  if (forward_our_stdin && stdin_flags >= 0) ::fcntl(STDIN_FILENO, F_SETFL, stdin_flags);

  const int returncode = result.returncode.value_or(-SIGKILL);
  int exit_code = exit_code_of(returncode);
  if (result.timed_out) {
    std::cerr << "conduit run-subprocess: timed out after " << *options.timeout << " s\n";
    exit_code = exit_timed_out;
  }
  if (options.output.json) {
    const double elapsed_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    std::cout << "{\"program\":" << json_string(options.command.front())
              << ",\"pid\":" << (transport ? transport->get_pid() : 0)
              << ",\"returncode\":" << returncode << ",\"exit_code\":" << exit_code
              << ",\"timed_out\":" << (result.timed_out ? "true" : "false") << ",\"stdout_bytes\":" << result.stdout_bytes
              << ",\"stderr_bytes\":" << result.stderr_bytes << ",\"elapsed_ms\":" << elapsed_ms << "}" << std::endl;
  }
  return exit_code;
}

}  // namespace

void set_run_subprocess_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run-subprocess", "Run a program through subprocess_exec and stream its output");
  cmd->add_option("--stdin", options->stdin_source, "Feed the child this file, or - for our standard input "
                                                    "(default: /dev/null)");
  cmd->add_option("-t,--timeout", options->timeout, "Stop the child after S seconds (SIGTERM, then SIGKILL 2 s later)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--prefix", options->prefix, "Prefix output lines with [out] / [err]");
  add_via_flags(*cmd, options->via);
  add_output_flags(*cmd, options->output);
  cmd->add_option("command", options->command, "PROGRAM [ARGS...] (after --)")->required();
  cmd->positionals_at_end();
  cmd->footer(R"(The child runs in its own process group; SIGINT (Ctrl-C), SIGTERM and SIGHUP sent
to run-subprocess are forwarded to it. --json adds a JSON summary as the last line of
stdout.

Exit status: the child's own exit code, or 128+N if signal N ended it; 124 if --timeout
stopped it; 127 if it could not be started; 2 for bad arguments.

Examples:
  conduit run-subprocess -- ls -l /tmp
  conduit run-subprocess --prefix --timeout 5 -- sh -c 'echo out; echo err >&2; exit 3'
  printf 'b\na\n' | conduit run-subprocess --stdin - --json -- sort
  conduit run-subprocess --via 127.0.0.1:50051 -- /bin/date   (on the service's host; needs --allow-exec there)
)");
  cmd->callback([options, &exit_code] { exit_code = run(*options); });
}

}  // namespace conduit::cli
