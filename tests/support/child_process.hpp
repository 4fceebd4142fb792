// A child process for tests: started with posix_spawn, stdin fed from a
// string, stdout and stderr captured, every wait bounded, and killed by its
// PID (never by name) if the test leaves it running.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace conduit::testing {

class ChildProcess {
 public:
  /// Start argv[0] (searched in PATH) with `stdin_data` on its stdin (then EOF).
  explicit ChildProcess(std::vector<std::string> argv, std::string stdin_data = {});
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  /// Read stdout until a line starting with `prefix` appears; returns the
  /// rest of that line, or nullopt on timeout/EOF.
  std::optional<std::string> wait_for_line(const std::string& prefix, std::chrono::milliseconds timeout);
  /// The same on stderr (for tools whose stdout is data).
  std::optional<std::string> wait_for_err_line(const std::string& prefix, std::chrono::milliseconds timeout);

  /// Wait for exit, collecting output; the exit status (128+N for signal N),
  /// or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);

  /// Send a signal by PID.
  void signal(int sig);

  /// The most memory it ever had resident (KiB), once wait() saw it exit.
  std::size_t peak_rss_kib() const { return peak_rss_kib_; }

  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }
  int pid() const { return pid_; }

 private:
  // Read whatever is ready on stdout/stderr, waiting at most `timeout`.
  void pump(std::chrono::milliseconds timeout);

  int pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  int in_fd_ = -1;
  std::string stdin_data_;
  std::size_t stdin_written_ = 0;
  std::string out_;
  std::string err_;
  std::optional<std::string> wait_for(const std::string& text, std::size_t& scanned, int fd_open_check,
                                      const std::string& prefix, std::chrono::milliseconds timeout);
  std::size_t scanned_ = 0;      // stdout bytes already searched by wait_for_line
  std::size_t err_scanned_ = 0;  // stderr bytes already searched by wait_for_err_line
  std::optional<int> status_;
  std::size_t peak_rss_kib_ = 0;
};

}  // namespace conduit::testing
