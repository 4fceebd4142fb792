#include "support/child_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>
#include <system_error>

extern char** environ;

namespace conduit::testing {

namespace {

void make_pipe(int fds[2]) {
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
}

}  // namespace

ChildProcess::ChildProcess(std::vector<std::string> argv, std::string stdin_data) : stdin_data_(std::move(stdin_data)) {
  ::signal(SIGPIPE, SIG_IGN);
  int in[2], out[2], err[2];
  make_pipe(in);
  make_pipe(out);
  make_pipe(err);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const int rc = ::posix_spawnp(&pid_, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  in_fd_ = in[1];
  out_fd_ = out[0];
  err_fd_ = err[0];
  if (rc != 0) throw std::system_error(rc, std::generic_category(), "posix_spawnp " + argv[0]);
  ::fcntl(in_fd_, F_SETFL, O_NONBLOCK);
  if (stdin_data_.empty()) {
    ::close(in_fd_);
    in_fd_ = -1;
  }
}

ChildProcess::~ChildProcess() {
  if (!status_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  for (int fd : {in_fd_, out_fd_, err_fd_}) {
    if (fd >= 0) ::close(fd);
  }
}

void ChildProcess::pump(std::chrono::milliseconds timeout) {
  pollfd fds[3];
  nfds_t n = 0;
  if (out_fd_ >= 0) fds[n++] = {out_fd_, POLLIN, 0};
  if (err_fd_ >= 0) fds[n++] = {err_fd_, POLLIN, 0};
  if (in_fd_ >= 0) fds[n++] = {in_fd_, POLLOUT, 0};
  if (n == 0) return;
  if (::poll(fds, n, static_cast<int>(timeout.count())) <= 0) return;
  for (nfds_t i = 0; i < n; ++i) {
    if (!fds[i].revents) continue;
    if (fds[i].fd == in_fd_) {
      const ssize_t w = ::write(in_fd_, stdin_data_.data() + stdin_written_, stdin_data_.size() - stdin_written_);
      if (w > 0) stdin_written_ += static_cast<std::size_t>(w);
      if (w < 0 && errno != EAGAIN) stdin_written_ = stdin_data_.size();  // reader gone
      if (stdin_written_ == stdin_data_.size()) {
        ::close(in_fd_);
        in_fd_ = -1;
      }
      continue;
    }
    char buf[65536];
    const ssize_t r = ::read(fds[i].fd, buf, sizeof buf);
    std::string& sink = fds[i].fd == out_fd_ ? out_ : err_;
    if (r > 0) {
      sink.append(buf, static_cast<std::size_t>(r));
    } else {
      int& fd = fds[i].fd == out_fd_ ? out_fd_ : err_fd_;
      ::close(fd);
      fd = -1;
    }
  }
}

std::optional<std::string> ChildProcess::wait_for_line(const std::string& prefix, std::chrono::milliseconds timeout) {
  return wait_for(out_, scanned_, 1, prefix, timeout);
}

std::optional<std::string> ChildProcess::wait_for_err_line(const std::string& prefix,
                                                           std::chrono::milliseconds timeout) {
  return wait_for(err_, err_scanned_, 2, prefix, timeout);
}

std::optional<std::string> ChildProcess::wait_for(const std::string& text, std::size_t& scanned, int which,
                                                  const std::string& prefix, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::size_t line_start = scanned;
    for (std::size_t nl; (nl = text.find('\n', line_start)) != std::string::npos; line_start = nl + 1) {
      if (text.compare(line_start, prefix.size(), prefix) == 0) {
        scanned = nl + 1;
        return text.substr(line_start + prefix.size(), nl - line_start - prefix.size());
      }
    }
    scanned = line_start;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || (which == 1 ? out_fd_ : err_fd_) < 0) return std::nullopt;
    pump(left);
  }
}

std::optional<int> ChildProcess::wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!status_) {
    int status = 0;
    rusage usage{};
    if (::wait4(pid_, &status, WNOHANG, &usage) == pid_) {
      status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      peak_rss_kib_ = static_cast<std::size_t>(usage.ru_maxrss);
      break;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    if (out_fd_ < 0 && err_fd_ < 0 && in_fd_ < 0) {
      ::usleep(2000);  // pipes closed, child still exiting: poll waitpid briefly
    } else {
      pump(std::min(left, std::chrono::milliseconds(50)));
    }
  }
  // Collect the rest of the output; bounded, as a grandchild may hold the pipes.
  const auto drain_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while ((out_fd_ >= 0 || err_fd_ >= 0) && std::chrono::steady_clock::now() < drain_deadline) {
    pump(std::chrono::milliseconds(100));
  }
  return status_;
}

void ChildProcess::signal(int sig) {
  if (!status_ && pid_ > 0) ::kill(pid_, sig);
}

}  // namespace conduit::testing
