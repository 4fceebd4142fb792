#include "child_process_transport.hpp"

#include "completion.hpp"

#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdexcept>
#include <system_error>

extern char** environ;

namespace conduit {

void SubprocessTransport::terminate() { send_signal(SIGTERM); }
void SubprocessTransport::kill() { send_signal(SIGKILL); }

namespace {

// ---- pipe protocols: forward each pipe's callbacks to the child's transport -

class ChildOutputProtocol final : public Protocol {
 public:
  ChildOutputProtocol(std::shared_ptr<ChildProcessTransport> owner, int fd) : owner_(std::move(owner)), fd_(fd) {}
  void data_received(std::span<const std::byte> data) override { owner_->on_pipe_data(fd_, data); }
  void connection_lost(std::exception_ptr exc) override {
    auto owner = std::move(owner_);  // break the owner -> pipe -> protocol cycle
    owner->on_pipe_lost(fd_, exc);
  }

 private:
  std::shared_ptr<ChildProcessTransport> owner_;
  int fd_;
};

class ChildStdinProtocol final : public Protocol {
 public:
  explicit ChildStdinProtocol(std::shared_ptr<ChildProcessTransport> owner) : owner_(std::move(owner)) {}
  void pause_writing() override { owner_->on_stdin_pause(); }
  void resume_writing() override { owner_->on_stdin_resume(); }
  void connection_lost(std::exception_ptr exc) override {
    auto owner = std::move(owner_);
    owner->on_pipe_lost(0, exc);
  }

 private:
  std::shared_ptr<ChildProcessTransport> owner_;
};

// What asyncio reports when the child's status is lost (it was reaped
// elsewhere, e.g. with SIGCHLD set to SIG_IGN).
constexpr int unknown_returncode = 255;

int return_code_of(int status) {
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

}  // namespace

ChildProcessTransport::ChildProcessTransport(EventLoop& loop, int pid, int pidfd, bool own_process_group,
                                             std::shared_ptr<PipeTransport> stdin_pipe,
                                             std::shared_ptr<PipeTransport> stdout_pipe,
                                             std::shared_ptr<PipeTransport> stderr_pipe)
    : loop_(loop),
      pid_(pid),
      pidfd_(loop.context(), pidfd),
      own_process_group_(own_process_group),
      stdin_pipe_(std::move(stdin_pipe)),
      output_pipes_{std::move(stdout_pipe), std::move(stderr_pipe)} {
  pipe_open_ = {stdin_pipe_ != nullptr, output_pipes_[0] != nullptr, output_pipes_[1] != nullptr};
  if (!stdin_pipe_ && !output_pipes_[0] && !output_pipes_[1]) state_ = State::pipes_done;
  detail::LoopInternals::track(loop_, this);
}

ChildProcessTransport::~ChildProcessTransport() {
  if (state_ != State::finished) detail::LoopInternals::untrack(loop_, this);
}

void ChildProcessTransport::on_loop_destroyed() {
  const auto keep = self();  // the protocol let go below may hold the last reference
  // No callbacks any more, but no zombie either: a child still running is
  // killed and reaped here (it dies at once; this wait is short), and what
  // it left in its group goes too.
  kill_process_group();
  state_ = State::finished;
  if (!returncode_) {
    kill_running_child();
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    returncode_ = return_code_of(status);
  }
  boost::system::error_code ignored;
  pidfd_.close(ignored);
  stdin_pipe_.reset();
  output_pipes_ = {};
  protocol_.reset();
}

std::shared_ptr<ChildProcessTransport> ChildProcessTransport::self() {
  return std::shared_ptr<ChildProcessTransport>(shared_from_this(), this);
}

void ChildProcessTransport::start(std::shared_ptr<SubprocessProtocol> protocol) {
  set_protocol(std::move(protocol));
  // The pipes post their connection_made first, so the child's comes after
  // every pipe is connected (SPEC X2).
  if (stdin_pipe_) stdin_pipe_->start(std::make_shared<ChildStdinProtocol>(self()));
  for (int fd : {1, 2}) {
    if (auto& pipe = output_pipes_[static_cast<std::size_t>(fd - 1)]) {
      pipe->start(std::make_shared<ChildOutputProtocol>(self(), fd));
    }
  }
  asio::post(loop_.get_executor(), [this, keep = self()] {
    if (state_ == State::finished) return;
    protocol_.connection_made();
    watch_exit();
  });
}

void ChildProcessTransport::watch_exit() {
  // A pidfd turns readable when the child exits.
  pidfd_.async_wait(asio::posix::stream_descriptor::wait_read,
                    [this, keep = self()](const boost::system::error_code& ec) {
                      if (ec == asio::error::operation_aborted || returncode_) return;
                      on_exit_signalled();
                    });
}

void ChildProcessTransport::on_exit_signalled() {
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return watch_exit();  // not yet: a spurious wake-up
  // r < 0 (ECHILD) only if someone else reaped it, e.g. SIGCHLD set to
  // SIG_IGN; its status is lost then.
  returncode_ = r > 0 ? return_code_of(status) : unknown_returncode;
  boost::system::error_code ignored;
  pidfd_.close(ignored);
  protocol_.process_exited();
  advance();
}

void ChildProcessTransport::on_pipe_data(int fd, std::span<const std::byte> data) {
  if (protocol_) protocol_.pipe_data_received(fd, data);
}

void ChildProcessTransport::on_pipe_lost(int fd, std::exception_ptr exc) {
  pipe_open_[static_cast<std::size_t>(fd)] = false;
  if (!protocol_) return;
  protocol_.pipe_connection_lost(fd, exc);
  advance();
}

void ChildProcessTransport::on_stdin_pause() { protocol_.pause_writing(); }

void ChildProcessTransport::on_stdin_resume() { protocol_.resume_writing(); }

void ChildProcessTransport::advance() {
  const bool pipes_open = pipe_open_[0] || pipe_open_[1] || pipe_open_[2];
  switch (state_) {
    case State::running:
      if (returncode_)
        state_ = pipes_open ? State::exited : State::finished;
      else if (!pipes_open)
        state_ = State::pipes_done;
      break;
    case State::exited:
      if (!pipes_open) state_ = State::finished;
      break;
    case State::pipes_done:
      if (returncode_) state_ = State::finished;
      break;
    case State::finished: return;
  }
  if (state_ == State::finished) {
    asio::post(loop_.get_executor(), [this, keep = self()] { call_connection_lost(); });
  }
}

void ChildProcessTransport::call_connection_lost() {
  detail::LoopInternals::untrack(loop_, this);
  protocol_.connection_lost(nullptr);
  stdin_pipe_.reset();
  output_pipes_ = {};
  protocol_.reset();
}

void ChildProcessTransport::close() {
  if (close_called_) return;
  close_called_ = true;
  if (stdin_pipe_) stdin_pipe_->close();
  for (auto& pipe : output_pipes_) {
    if (pipe) pipe->close();
  }
  // The group first: once the child has exited, what it started there
  // (`sh -c 'sleep 300 & exit 0'`) is all that is left of it.
  kill_process_group();
  if (!returncode_) kill_running_child();
}

void ChildProcessTransport::kill_running_child() {
  // Unreaped, the pid cannot be reused: safe.
  ::kill(pid_, SIGKILL);
}

void ChildProcessTransport::kill_process_group() {
  // Linux reuses a pid only once no process, group or session has it as
  // its id: while anything is left in the child's group, -pid_ is that
  // group, reaped leader or not. Once the group is empty the pid could come
  // back (as another group's leader) after a wrap of the pid space, so the
  // group is killed only until the transport finishes: while a pipe is
  // still open, which is what a descendant left in the group holds.
  if (own_process_group_ && state_ != State::finished) ::kill(-pid_, SIGKILL);
}

void ChildProcessTransport::send_signal_to_group(int signal) {
  if (close_called_)
    throw std::system_error(ESRCH, std::generic_category(), "ProcessLookupError: the transport is closed");
  // -pid_ is the group while anything is left in it (kill_process_group
  // says why that holds until the transport finishes).
  if (!own_process_group_ || state_ == State::finished) return send_signal(signal);
  if (::kill(-pid_, signal) != 0 && errno != ESRCH) {
    throw std::system_error(errno, std::generic_category(),
                            "kill(-" + std::to_string(pid_) + ", " + std::to_string(signal) + ")");
  }
}

void ChildProcessTransport::send_signal(int signal) {
  if (close_called_)
    throw std::system_error(ESRCH, std::generic_category(), "ProcessLookupError: the transport is closed");
  if (returncode_) return;  // exited and reaped: the pid may be another process's now
  if (::kill(pid_, signal) != 0) {
    throw std::system_error(errno, std::generic_category(),
                            "kill(" + std::to_string(pid_) + ", " + std::to_string(signal) + ")");
  }
}

std::shared_ptr<Transport> ChildProcessTransport::get_pipe_transport(int fd) const {
  if (fd == 0) return stdin_pipe_;
  if (fd == 1 || fd == 2) return output_pipes_[static_cast<std::size_t>(fd - 1)];
  return nullptr;
}

std::any ChildProcessTransport::extra_info(std::string_view name) const {
  if (name == "subprocess") return pid_;
  return {};
}

// ==== spawning ================================================================

namespace {

/// An owned descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

[[noreturn]] void throw_errno(int error, const std::string& what) {
  throw std::system_error(error, std::generic_category(), what);
}

/// posix_spawn's attribute and file-action objects, destroyed on scope exit.
struct SpawnSetup {
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  SpawnSetup() {
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_init(&actions);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;
};

void check(int rc, const char* what) {
  if (rc != 0) throw_errno(rc, what);
}

struct Spawned {
  int pid = -1;
  UniqueFd pidfd;
  std::array<UniqueFd, 3> parent_ends;  // our end of each piped stream
};

void validate(const std::vector<std::string>& argv, const SubprocessOptions& options) {
  if (argv.empty() || argv.front().empty()) throw std::invalid_argument("subprocess_exec: the program is empty");
  // As asyncio (ValueError: embedded null byte): C strings would cut them short.
  for (std::size_t i = 0; i < argv.size(); ++i) {
    if (argv[i].find('\0') != std::string::npos) {
      throw std::invalid_argument("subprocess_exec: argv[" + std::to_string(i) + "] holds an embedded null byte");
    }
  }
  if (options.env) {
    for (const auto& entry : *options.env) {
      const auto equals = entry.find('=');
      if (entry.find('\0') != std::string::npos || equals == 0 || equals == std::string::npos) {
        throw std::invalid_argument("subprocess_exec: the environment entry '" + entry.substr(0, entry.find('\0')) +
                                    "' is not NAME=value (or holds a null byte)");
      }
    }
  }
  if (options.cwd && options.cwd->find('\0') != std::string::npos) {
    throw std::invalid_argument("subprocess_exec: cwd holds an embedded null byte");
  }
  const Stdio* streams[] = {&options.stdin_stream, &options.stdout_stream, &options.stderr_stream};
  const char* names[] = {"stdin", "stdout", "stderr"};
  for (int i = 0; i < 3; ++i) {
    const Stdio& s = *streams[i];
    if (s.kind() == Stdio::Kind::stdout_ && i != 2) {
      throw std::invalid_argument(std::string("subprocess: Stdio::to_stdout() is for stderr only, not ") + names[i]);
    }
    if (s.kind() == Stdio::Kind::fd && ::fcntl(s.descriptor(), F_GETFD) < 0) {
      throw std::invalid_argument(std::string("subprocess: ") + names[i] + " descriptor " +
                                  std::to_string(s.descriptor()) + " is not open");
    }
  }
  if (options.cwd) {
    struct stat st {};
    if (::stat(options.cwd->c_str(), &st) != 0) throw_errno(errno, "subprocess: cwd " + *options.cwd);
    if (!S_ISDIR(st.st_mode)) throw_errno(ENOTDIR, "subprocess: cwd " + *options.cwd);
  }
}

Spawned spawn(const std::vector<std::string>& argv, const SubprocessOptions& options) {
  validate(argv, options);
  SpawnSetup setup;
  Spawned spawned;
  std::array<UniqueFd, 3> child_ends;
  const Stdio* streams[] = {&options.stdin_stream, &options.stdout_stream, &options.stderr_stream};
  for (int i = 0; i < 3; ++i) {
    const Stdio& s = *streams[i];
    switch (s.kind()) {
      case Stdio::Kind::pipe: {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno(errno, "pipe2");
        // stdin: the child reads fds[0]; stdout/stderr: the child writes fds[1].
        const bool child_reads = i == 0;
        child_ends[static_cast<std::size_t>(i)] = UniqueFd(child_reads ? fds[0] : fds[1]);
        spawned.parent_ends[static_cast<std::size_t>(i)] = UniqueFd(child_reads ? fds[1] : fds[0]);
        check(posix_spawn_file_actions_adddup2(&setup.actions, child_ends[static_cast<std::size_t>(i)].get(), i),
              "posix_spawn_file_actions_adddup2");
        break;
      }
      case Stdio::Kind::devnull:
        check(posix_spawn_file_actions_addopen(&setup.actions, i, "/dev/null", i == 0 ? O_RDONLY : O_WRONLY, 0),
              "posix_spawn_file_actions_addopen");
        break;
      case Stdio::Kind::fd:
        // dup2 onto itself clears close-on-exec (glibc >= 2.29).
        check(posix_spawn_file_actions_adddup2(&setup.actions, s.descriptor(), i), "posix_spawn_file_actions_adddup2");
        break;
      case Stdio::Kind::stdout_:
        check(posix_spawn_file_actions_adddup2(&setup.actions, 1, 2), "posix_spawn_file_actions_adddup2");
        break;
    }
  }
  // Nothing else of ours leaks into the child (Asio's own descriptors, other
  // connections), as with Python's close_fds=True.
  check(posix_spawn_file_actions_addclosefrom_np(&setup.actions, 3), "posix_spawn_file_actions_addclosefrom_np");
  if (options.cwd) check(posix_spawn_file_actions_addchdir_np(&setup.actions, options.cwd->c_str()), "addchdir");

  // The loop ignores SIGPIPE; the child gets the default back, as Python's
  // restore_signals does, and an empty signal mask.
  sigset_t defaults, empty;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  sigaddset(&defaults, SIGXFSZ);
  sigemptyset(&empty);
  check(posix_spawnattr_setsigdefault(&setup.attr, &defaults), "posix_spawnattr_setsigdefault");
  check(posix_spawnattr_setsigmask(&setup.attr, &empty), "posix_spawnattr_setsigmask");
  short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
  if (options.new_process_group) {
    flags |= POSIX_SPAWN_SETPGROUP;
    check(posix_spawnattr_setpgroup(&setup.attr, 0), "posix_spawnattr_setpgroup");
  }
  check(posix_spawnattr_setflags(&setup.attr, flags), "posix_spawnattr_setflags");

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> env;
  if (options.env) {
    for (const auto& e : *options.env) env.push_back(const_cast<char*>(e.c_str()));
    env.push_back(nullptr);
  }
  char** envp = options.env ? env.data() : environ;
  pid_t pid = -1;
  // glibc's posix_spawn is clone(CLONE_VFORK) + exec and reports a failed
  // exec (ENOENT, EACCES) as its result.
  const bool search_path = argv.front().find('/') == std::string::npos;
  const int rc = search_path ? posix_spawnp(&pid, args[0], &setup.actions, &setup.attr, args.data(), envp)
                             : posix_spawn(&pid, args[0], &setup.actions, &setup.attr, args.data(), envp);
  if (rc != 0) throw_errno(rc, "cannot run " + argv.front());
  spawned.pid = pid;
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    const int error = errno;
    ::kill(pid, SIGKILL);
    int status;
    ::waitpid(pid, &status, 0);
    throw_errno(error, "pidfd_open (Linux 5.3 or later is needed)");
  }
  spawned.pidfd = UniqueFd(pidfd);  // pidfd_open sets close-on-exec itself
  return spawned;
}

}  // namespace

void EventLoop::subprocess_exec_impl(ProtocolFactory factory, std::vector<std::string> argv, SubprocessOptions options,
                                     detail::SubprocessHandler handler) {
  std::shared_ptr<SubprocessTransport> transport;
  std::shared_ptr<BaseProtocol> protocol;
  std::exception_ptr error;
  try {
    protocol = factory();
    auto typed = std::dynamic_pointer_cast<SubprocessProtocol>(protocol);
    if (!typed) throw std::invalid_argument("subprocess_exec: the protocol factory must make a SubprocessProtocol");
    Spawned child = spawn(argv, options);
    std::shared_ptr<PipeTransport> in;
    std::array<std::shared_ptr<PipeTransport>, 2> out;
    if (child.parent_ends[0]) {
      in = std::make_shared<PipeTransport>(*this,
                                           asio::posix::stream_descriptor(context_, child.parent_ends[0].release()),
                                           PipeTransport::Direction::write, detail::PipeKind::fifo);
    }
    for (std::size_t i : {1u, 2u}) {
      if (child.parent_ends[i]) {
        out[i - 1] = std::make_shared<PipeTransport>(
            *this, asio::posix::stream_descriptor(context_, child.parent_ends[i].release()),
            PipeTransport::Direction::read, detail::PipeKind::fifo);
      }
    }
    auto process =
        std::make_shared<ChildProcessTransport>(*this, child.pid, child.pidfd.release(), options.new_process_group,
                                                std::move(in), std::move(out[0]), std::move(out[1]));
    process->start(std::move(typed));
    transport = std::move(process);
  } catch (...) {
    error = std::current_exception();
    protocol.reset();
  }
  detail::post_completion(*this, std::move(handler), error, std::move(transport), std::move(protocol));
}

}  // namespace conduit
