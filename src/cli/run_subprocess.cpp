// conduit run-subprocess: run a program through subprocess_exec, stream its
// output, forward SIGINT/SIGTERM to it, and exit with its status.
#include "commands.hpp"
#include "common.hpp"
#include "input_feeder.hpp"

#include <conduit/event_loop.hpp>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <iterator>
#include <optional>

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
  double kill_after = 5;
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
  bool killed = false;  // the grace period after a signal or the timeout ran out
  std::string stopped;  // why we asked the child to end ("timed out", "got Terminated"), if we did
  bool lost = false;    // connection_lost came
  std::exception_ptr lost_error;
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
    if (fd == 0 && on_stdin_lost) on_stdin_lost(error);
  }
  void process_exited() override {
    result_.returncode = transport_->get_returncode();
    log_.event("child", "process_exited returncode=" + std::to_string(result_.returncode.value_or(0)));
  }
  void connection_lost(std::exception_ptr error) override {
    log_.event("child", error ? "connection_lost: " + describe(error) : "connection_lost");
    result_.lost = true;
    result_.lost_error = error;
  }
  // The child's stdin is full: stop reading our input until it drains.
  void pause_writing() override {
    if (on_stdin_pressure) on_stdin_pressure(true);
  }
  void resume_writing() override {
    if (on_stdin_pressure) on_stdin_pressure(false);
  }

  std::function<void(bool)> on_stdin_pressure;
  std::function<void(std::exception_ptr)> on_stdin_lost;
  std::shared_ptr<SubprocessTransport> transport_;

 private:
  OutputForwarder& output_;
  const EventLog& log_;
  RunResult& result_;
};

int exit_code_of(int returncode) { return returncode < 0 ? 128 - returncode : returncode; }

bool is_regular_file(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

/// Signals run-subprocess forwards to the child; the first four also end
/// it (after --kill-after, with its whole group) if the child does not.
constexpr int ending_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
constexpr int forwarded_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

int run(const RunOptions& options) {
  EventLoop loop;
  EventLog log(options.output);
  OutputForwarder output(options.prefix);
  RunResult result;
  const bool remote = !options.via.address.empty();
  if (auto problem = via_flags_problem(options.via); !problem.empty()) {
    std::cerr << "conduit run-subprocess: " << problem << '\n';
    return exit_usage;
  }

  // The input: none (/dev/null, or EOF at once through the service), a
  // descriptor the local child reads itself, or one we forward.
  int input_fd = -1;
  SubprocessOptions spawn;
  spawn.stdin_stream = Stdio::devnull();
  if (options.stdin_source == "-") {
    // A file can go to a local child as is; a pipe or terminal is forwarded
    // through the loop, so the child (in its own process group) never
    // reads our terminal directly.
    if (!remote && is_regular_file(STDIN_FILENO))
      spawn.stdin_stream = Stdio::fd(STDIN_FILENO);
    else
      input_fd = STDIN_FILENO;
  } else if (options.stdin_source) {
    const int file = ::open(options.stdin_source->c_str(), O_RDONLY | O_CLOEXEC);
    if (file < 0) {
      std::cerr << "conduit run-subprocess: cannot open --stdin " << *options.stdin_source << ": "
                << std::strerror(errno) << '\n';
      return exit_usage;
    }
    if (remote)
      input_fd = file;
    else
      spawn.stdin_stream = Stdio::fd(file);
  }
  if (input_fd >= 0 && !remote) spawn.stdin_stream = Stdio::pipe();

  const auto start = Clock::now();
  std::shared_ptr<RunProtocol> protocol;
  std::exception_ptr spawn_error;
  bool spawned = false;
  // The child runs here or, with --via, on the service's host, whose
  // children read pipes only: their stdin is fed (or closed) from here.
  std::unique_ptr<Opener> opener;
  try {
    opener = make_opener(loop, options.via);
  } catch (const std::invalid_argument& e) {
    std::cerr << "conduit run-subprocess: " << e.what() << '\n';
    return exit_usage;
  }
  if (remote) spawn.stdin_stream = Stdio::pipe();
  std::vector<std::string> args(options.command.begin() + 1, options.command.end());
  opener->subprocess_exec(
      [&] { return std::make_shared<RunProtocol>(output, log, result); }, options.command.front(), args, spawn,
      [&](std::exception_ptr error, std::shared_ptr<SubprocessTransport>, std::shared_ptr<RunProtocol> p) {
        spawn_error = error;
        protocol = std::move(p);
        spawned = true;
      });
  loop.run_until([&] { return spawned; }, std::chrono::seconds(30));
  if (spawn.stdin_stream.kind() == Stdio::Kind::fd && spawn.stdin_stream.descriptor() != STDIN_FILENO) {
    ::close(spawn.stdin_stream.descriptor());  // the child has its copy
  }
  if (spawn_error || !protocol) {
    if (input_fd > STDIN_FILENO) ::close(input_fd);
    std::cerr << "conduit run-subprocess: " << (spawn_error ? describe(spawn_error) : "spawn did not complete") << '\n';
    return exit_code_for(spawn_error, exit_cannot_run);
  }
  loop.run_until([&] { return protocol->transport_ != nullptr || result.lost; }, std::chrono::seconds(30));
  auto transport = protocol->transport_;

  // Reading our stdin through the loop makes it non-blocking, a flag shared
  // with whoever else holds that terminal or pipe: put it back at the end.
  const int stdin_flags = ::fcntl(STDIN_FILENO, F_GETFL);
  std::optional<InputFeeder> feeder;
  if (transport) {
    if (auto child_stdin = transport->get_pipe_transport(0)) {
      if (input_fd >= 0) {
        feeder.emplace(
            loop, [child_stdin](std::span<const std::byte> data) { child_stdin->write(data); },
            [child_stdin] { child_stdin->close(); });
        protocol->on_stdin_pressure = [&](bool full) { feeder->set_paused(full); };
        protocol->on_stdin_lost = [&](std::exception_ptr error) {
          if (!feeder->stop()) return;
          if (!result.stopped.empty()) {
            std::cerr << "conduit run-subprocess: " << result.stopped
                      << ": the child was stopped, and the rest of the input is not sent\n";
          } else {
            std::cerr << "conduit run-subprocess: the child closed its stdin"
                      << (error ? " (" + describe(error) + ")" : "") << ": the rest of the input is not sent\n";
          }
        };
        std::string why;
        if (!feeder->start(input_fd, why)) {
          std::cerr << "conduit run-subprocess: cannot read the input: " << why << '\n';
          child_stdin->close();
        }
      } else if (remote) {
        child_stdin->close();  // no --stdin: EOF at once, as /dev/null
      }
    }
  }

  // The child is in its own process group, so a Ctrl-C at our terminal
  // reaches only us: we forward what we get. An ending signal (and the
  // timeout's SIGTERM) goes to the child's whole group, as coreutils'
  // timeout sends it, so that what the child started ends with it; what is
  // still running --kill-after seconds later is killed, group and all, so
  // nothing is left behind.
  asio::steady_timer grace(loop.context());
  bool grace_running = false;
  const auto grace_period =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.kill_after));
  auto end_after_grace = [&](const std::string& why) {
    if (grace_running || !transport) return;
    grace_running = true;
    grace.expires_after(grace_period);
    grace.async_wait([&, why](const boost::system::error_code& ec) {
      if (ec || result.lost) return;
      std::cerr << "conduit run-subprocess: " << why << ", and " << (result.returncode ? "what it left" : "the child")
                << " still ran " << options.kill_after << " s later: killing its process group\n";
      result.killed = true;
      transport->close();
    });
  };
  asio::signal_set signals(loop.context());
  for (int signal : forwarded_signals) signals.add(signal);
  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](const boost::system::error_code& ec, int signal) {
      if (ec) return;
      const bool ending =
          std::find(std::begin(ending_signals), std::end(ending_signals), signal) != std::end(ending_signals);
      log.event("run-subprocess",
                "forwarding signal " + std::to_string(signal) + (ending ? " to the child's group" : ""));
      if (transport && !result.lost && (ending || !result.returncode)) {
        try {
          if (ending)
            transport->send_signal_to_group(signal);
          else
            transport->send_signal(signal);
        } catch (const std::exception& e) {
          log.event("run-subprocess", std::string("cannot forward the signal: ") + e.what());
        }
      }
      if (ending) {
        if (result.stopped.empty()) result.stopped = std::string("got ") + ::strsignal(signal);
        end_after_grace(std::string("got ") + ::strsignal(signal));
      }
      wait_signal();
    });
  };
  wait_signal();

  asio::steady_timer deadline(loop.context());
  if (options.timeout && transport) {
    deadline.expires_after(
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*options.timeout)));
    deadline.async_wait([&](const boost::system::error_code& ec) {
      if (ec || result.lost) return;
      result.timed_out = true;
      result.stopped = "timed out after " + format_seconds(*options.timeout) + " s";
      log.event("run-subprocess", "timeout: SIGTERM to the child's group");
      try {
        transport->send_signal_to_group(SIGTERM);
      } catch (const std::exception& e) {
        log.event("run-subprocess", std::string("cannot signal the child: ") + e.what());
      }
      end_after_grace("timed out");
    });
  }

  loop.run_until([&] { return result.lost; }, std::chrono::hours(24 * 365));
  signals.cancel();
  deadline.cancel();
  grace.cancel();
  if (input_fd == STDIN_FILENO && stdin_flags >= 0) ::fcntl(STDIN_FILENO, F_SETFL, stdin_flags);

  int exit_code;
  if (!result.returncode) {
    // The session broke (the service went away) before the child's exit
    // was reported: its status is unknown.
    std::cerr << "conduit run-subprocess: the child's exit status is unknown: "
              << (result.lost_error ? describe(result.lost_error) : std::string("the session ended")) << '\n';
    exit_code = exit_failure;
  } else {
    exit_code = exit_code_of(*result.returncode);
    if (remote && result.lost_error) {
      std::cerr << "conduit run-subprocess: the session ended with an error: " << describe(result.lost_error) << '\n';
    }
  }
  if (result.timed_out) {
    std::cerr << "conduit run-subprocess: timed out after " << *options.timeout << " s\n";
    exit_code = exit_timed_out;
  }
  if (options.output.json) {
    const double elapsed_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    std::cout << "{\"program\":" << json_string(options.command.front())
              << ",\"pid\":" << (transport ? transport->get_pid() : 0)
              << ",\"returncode\":" << (result.returncode ? std::to_string(*result.returncode) : "null")
              << ",\"exit_code\":" << exit_code << ",\"timed_out\":" << (result.timed_out ? "true" : "false")
              << ",\"killed\":" << (result.killed ? "true" : "false") << ",\"stdout_bytes\":" << result.stdout_bytes
              << ",\"stderr_bytes\":" << result.stderr_bytes << ",\"elapsed_ms\":" << elapsed_ms << "}" << std::endl;
  }
  return exit_code;
}

}  // namespace

void set_run_subprocess_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run-subprocess", "Run a program through subprocess_exec and stream its output");
  cmd->add_option("--stdin", options->stdin_source,
                  "Feed the child this file, or - for our standard input "
                  "(default: /dev/null)");
  cmd->add_option("-t,--timeout", options->timeout,
                  "Stop the child after S seconds (SIGTERM to its process group, SIGKILL --kill-after S later)")
      ->check(seconds_validator());
  cmd->add_option("--kill-after", options->kill_after,
                  "Seconds a child has to end after a forwarded SIGINT/SIGTERM/SIGHUP/SIGQUIT or the timeout, "
                  "before its whole process group is killed")
      ->capture_default_str()
      ->check(seconds_validator());
  cmd->add_flag("--prefix", options->prefix, "Prefix output lines with [out] / [err]");
  add_via_flags(*cmd, options->via);
  add_output_flags(*cmd, options->output);
  cmd->add_option("command", options->command, "PROGRAM [ARGS...] (after --)")->required();
  cmd->positionals_at_end();
  cmd->footer(R"(The child runs in its own process group. SIGINT (Ctrl-C), SIGTERM, SIGHUP and SIGQUIT
sent to run-subprocess go to that whole group, as does --timeout's SIGTERM (as coreutils'
timeout sends it), so what the child started ends with it; SIGUSR1 and SIGUSR2 go to the
child alone. Whatever still runs in the group --kill-after seconds after an ending signal
is killed, so nothing is left behind. Input (--stdin) is read only as fast
as the child takes it. --json adds a JSON summary as the last line of stdout.

Exit status: the child's own exit code, or 128+N if signal N ended it (137 when the grace
period ran out and it was killed); 124 if --timeout stopped it; 127 if it could not be
started; 2 for bad arguments; 1 if the session with the service broke before the child's
exit was known (the reason is printed).

Examples:
  conduit run-subprocess -- ls -l /tmp
  conduit run-subprocess --prefix --timeout 5 -- sh -c 'echo out; echo err >&2; exit 3'
  printf 'b\na\n' | conduit run-subprocess --stdin - --json -- sort
  conduit run-subprocess --via 127.0.0.1:50051 -- /bin/date   (on the service's host; needs --allow-exec there)
)");
  cmd->callback([options, &exit_code] { exit_code = run(*options); });
}

}  // namespace conduit::cli
