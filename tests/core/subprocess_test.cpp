// SPEC X1-X8 and R5: real child processes through subprocess_exec and
// subprocess_shell.
#include "support/recording_protocol.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>

namespace conduit::testing {
namespace {

/// Records every callback of a SubprocessProtocol and checks its grammar.
class RecordingSubprocessProtocol : public SubprocessProtocol {
 public:
  std::shared_ptr<SubprocessTransport> transport;
  std::vector<std::string> events;  // made, out, err, pipe_lost0/1/2, exited, lost
  std::string out, err;
  std::map<int, std::exception_ptr> pipe_errors;
  int made = 0, exited = 0, lost = 0, pauses = 0, resumes = 0;

  void connection_made(std::shared_ptr<SubprocessTransport> t) override {
    EXPECT_TRUE(events.empty()) << "connection_made must come first";
    ++made;
    events.push_back("made");
    transport = std::move(t);
  }
  void pipe_data_received(int fd, std::span<const std::byte> data) override {
    EXPECT_EQ(made, 1);
    EXPECT_EQ(lost, 0);
    EXPECT_TRUE(fd == 1 || fd == 2) << fd;
    EXPECT_EQ(pipe_errors.count(fd), 0u) << "data after pipe_connection_lost(" << fd << ")";
    (fd == 1 ? out : err).append(as_string_view(data));
    const std::string name = fd == 1 ? "out" : "err";
    if (events.back() != name) events.push_back(name);
  }
  void pipe_connection_lost(int fd, std::exception_ptr exc) override {
    EXPECT_EQ(lost, 0);
    EXPECT_EQ(pipe_errors.count(fd), 0u) << "pipe_connection_lost(" << fd << ") twice";
    pipe_errors[fd] = exc;
    events.push_back("pipe_lost" + std::to_string(fd));
  }
  void process_exited() override {
    EXPECT_EQ(exited++, 0) << "process_exited twice";
    EXPECT_EQ(lost, 0);
    EXPECT_TRUE(transport->get_returncode().has_value()) << "the return code is known at process_exited";
    events.push_back("exited");
  }
  void pause_writing() override { ++pauses; }
  void resume_writing() override { ++resumes; }
  void connection_lost(std::exception_ptr exc) override {
    EXPECT_EQ(lost++, 0) << "connection_lost twice";
    EXPECT_EQ(exited, 1) << "connection_lost before process_exited (SPEC X4)";
    EXPECT_FALSE(exc);
    events.push_back("lost");
  }
  bool done() const { return lost == 1; }
};

using Proto = RecordingSubprocessProtocol;

std::shared_ptr<Proto> start(EventLoop& loop, std::vector<std::string> argv, SubprocessOptions options = {}) {
  std::shared_ptr<Proto> protocol;
  std::exception_ptr error;
  bool done = false;
  std::string program = argv.front();
  argv.erase(argv.begin());
  loop.subprocess_exec([] { return std::make_shared<Proto>(); }, program, argv, std::move(options),
                       [&](std::exception_ptr e, std::shared_ptr<SubprocessTransport>, std::shared_ptr<Proto> p) {
                         error = e;
                         protocol = std::move(p);
                         done = true;
                       });
  run_until(loop, [&] { return done; });
  if (error) std::rethrow_exception(error);
  run_until(loop, [&] { return protocol->made == 1; });
  return protocol;
}

std::shared_ptr<Proto> shell(EventLoop& loop, std::string command, SubprocessOptions options = {}) {
  std::shared_ptr<Proto> protocol;
  std::exception_ptr error;
  bool done = false;
  loop.subprocess_shell([] { return std::make_shared<Proto>(); }, std::move(command), std::move(options),
                        [&](std::exception_ptr e, auto, std::shared_ptr<Proto> p) {
                          error = e;
                          protocol = std::move(p);
                          done = true;
                        });
  run_until(loop, [&] { return done; });
  if (error) std::rethrow_exception(error);
  run_until(loop, [&] { return protocol->made == 1; });
  return protocol;
}

/// True once `pid` is gone or a zombie (it no longer runs).
bool not_running(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  return line.substr(line.rfind(')') + 2, 1) == "Z";
}

bool reaped(int pid) { return ::waitpid(pid, nullptr, WNOHANG) < 0 && errno == ECHILD; }

// ---- X1 / X2 ------------------------------------------------------------------

TEST(Subprocess, X1_ExecWithPipesRoundTripsThroughCat) {
  EventLoop loop;
  auto p = start(loop, {"cat"});
  auto stdin_pipe = p->transport->get_pipe_transport(0);
  stdin_pipe->write("hello through cat\n");
  stdin_pipe->close();
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(p->out, "hello through cat\n");
  EXPECT_EQ(p->transport->get_returncode(), 0);
}

TEST(Subprocess, X1_ShellSeparatesStdoutStderrAndReturnsTheStatus) {
  EventLoop loop;
  auto p = shell(loop, "echo out; echo err >&2; exit 3");
  auto transport = p->transport;
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(p->out, "out\n");
  EXPECT_EQ(p->err, "err\n");
  EXPECT_EQ(transport->get_returncode(), 3);
  EXPECT_EQ(p->events.front(), "made");
  EXPECT_EQ(p->events.back(), "lost");
}

TEST(Subprocess, X1_DevnullFdAndStderrToStdout) {
  EventLoop loop;
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  SubprocessOptions options;
  options.stdin_stream = Stdio::devnull();
  options.stdout_stream = Stdio::fd(fds[1]);
  options.stderr_stream = Stdio::to_stdout();
  auto p = shell(loop, "cat; echo to-fd; echo also-to-fd >&2", options);
  ::close(fds[1]);
  EXPECT_EQ(p->transport->get_pipe_transport(0), nullptr);
  EXPECT_EQ(p->transport->get_pipe_transport(1), nullptr);
  EXPECT_EQ(p->transport->get_pipe_transport(2), nullptr);
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  std::string got(256, '\0');
  const ssize_t n = ::read(fds[0], got.data(), got.size());
  ::close(fds[0]);
  got.resize(static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
  EXPECT_EQ(got, "to-fd\nalso-to-fd\n") << "cat read /dev/null: EOF at once";
  EXPECT_EQ(p->events, (std::vector<std::string>{"made", "exited", "lost"}));
}

TEST(Subprocess, X1_StderrToStdoutThroughAPipe) {
  EventLoop loop;
  SubprocessOptions options;
  options.stderr_stream = Stdio::to_stdout();
  auto p = shell(loop, "echo a; echo b >&2", options);
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(p->out, "a\nb\n");
  EXPECT_EQ(p->err, "");
}

TEST(Subprocess, X1_CwdAndEnvironment) {
  EventLoop loop;
  SubprocessOptions options;
  options.cwd = "/tmp";
  options.env = std::vector<std::string>{"GREETING=bonjour", "PATH=/usr/bin:/bin"};
  auto p = shell(loop, "pwd; echo $GREETING; echo ${HOME:-no-home}", options);
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(p->out, "/tmp\nbonjour\nno-home\n");
}

TEST(Subprocess, X1_AProgramThatCannotRunIsAClearError) {
  EventLoop loop;
  try {
    start(loop, {"conduit-no-such-program"});
    ADD_FAILURE() << "spawning a missing program must fail";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::no_such_file_or_directory);
    EXPECT_NE(std::string(e.what()).find("conduit-no-such-program"), std::string::npos) << e.what();
  }
  SubprocessOptions options;
  options.cwd = "/nonexistent-conduit-dir";
  EXPECT_THROW(start(loop, {"true"}, options), std::system_error);
  SubprocessOptions bad;
  bad.stdout_stream = Stdio::to_stdout();
  EXPECT_THROW(start(loop, {"true"}, bad), std::invalid_argument);
}

TEST(Subprocess, X1_NullBytesAndMalformedEnvironmentAreRefused) {
  EventLoop loop;
  auto refused = [&](std::vector<std::string> argv, SubprocessOptions options) {
    try {
      start(loop, std::move(argv), std::move(options));
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("started");
  };
  EXPECT_NE(refused({"/bin/echo", std::string("a\0b", 3)}, {}).find("argv[1] holds an embedded null byte"),
            std::string::npos);
  SubprocessOptions bad_env;
  bad_env.env = std::vector<std::string>{"NO_EQUALS"};
  EXPECT_NE(refused({"/bin/true"}, bad_env).find("is not NAME=value"), std::string::npos);
  bad_env.env = std::vector<std::string>{"=value"};
  EXPECT_NE(refused({"/bin/true"}, bad_env).find("is not NAME=value"), std::string::npos);
}

TEST(Subprocess, X2_ConnectionMadeComesAfterThePipesAreConnected) {
  EventLoop loop;
  auto p = shell(loop, "echo early");
  // The first callback was connection_made, with every pipe transport there.
  ASSERT_EQ(p->events.front(), "made");
  for (int fd : {0, 1, 2}) EXPECT_NE(p->transport->get_pipe_transport(fd), nullptr) << fd;
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(p->out, "early\n");
  EXPECT_EQ(p->pipe_errors.size(), 3u) << "pipe_connection_lost for 0, 1 and 2";
  for (auto& [fd, exc] : p->pipe_errors) EXPECT_FALSE(exc) << fd;
}

// ---- X3 / X4 ------------------------------------------------------------------

TEST(Subprocess, X3_ReturncodeIsUnsetWhileRunningAndMinusTheSignalAfterKill) {
  EventLoop loop;
  auto p = start(loop, {"sleep", "30"});
  auto transport = p->transport;
  EXPECT_EQ(transport->get_returncode(), std::nullopt);
  transport->kill();
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(transport->get_returncode(), -SIGKILL);
}

TEST(Subprocess, X4_ConnectionLostWaitsForPipesStillOpenAfterTheExit) {
  EventLoop loop;
  // The shell exits at once; a background subshell keeps stdout open and
  // writes to it later.
  // (A background job's stdin is /dev/null in sh: hand it ours as fd 3.)
  auto p = shell(loop, "exec 3<&0; (read line <&3; echo late) & exit 0", {});
  ASSERT_TRUE(run_until(loop, [&] { return p->exited == 1; }));
  run_ready(loop);
  ASSERT_EQ(p->lost, 0) << "stdout is still open";
  p->transport->get_pipe_transport(0)->write("go\n");  // the subshell still reads stdin
  p->transport->get_pipe_transport(0)->close();
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(p->out, "late\n");
  const auto exited_at = std::find(p->events.begin(), p->events.end(), "exited");
  const auto data_at = std::find(p->events.begin(), p->events.end(), "out");
  EXPECT_LT(exited_at, data_at) << "the exit came before the late output";
}

TEST(Subprocess, X4_ConnectionLostWaitsForTheExitWhenPipesCloseFirst) {
  EventLoop loop;
  auto p = shell(loop, "exec 0<&- 1>&- 2>&-; sleep 30");
  ASSERT_TRUE(run_until(loop, [&] { return p->pipe_errors.size() == 3; }));
  run_ready(loop);
  EXPECT_EQ(p->lost, 0) << "the child still runs";
  p->transport->terminate();
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(p->events.back(), "lost");
}

// ---- X5 / X6 / X7 / X8 --------------------------------------------------------

TEST(Subprocess, X5_GetPipeTransport) {
  EventLoop loop;
  auto p = start(loop, {"cat"});
  auto& t = *p->transport;
  ASSERT_NE(t.get_pipe_transport(0), nullptr);
  EXPECT_TRUE(t.get_pipe_transport(0)->can_write_eof()) << "fd 0 is the write pipe";
  EXPECT_THROW(t.get_pipe_transport(1)->write("x"), std::logic_error) << "fd 1 is a read pipe";
  EXPECT_NE(t.get_pipe_transport(2), nullptr);
  EXPECT_EQ(t.get_pipe_transport(3), nullptr);
  EXPECT_EQ(t.get_pipe_transport(-1), nullptr);
  t.close();
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
}

TEST(Subprocess, X6_TerminateThenSignalsAfterCloseAreProcessLookupError) {
  EventLoop loop;
  auto p = start(loop, {"sleep", "30"});
  auto transport = p->transport;
  transport->terminate();
  ASSERT_TRUE(run_until(loop, [&] { return p->exited == 1; }));
  EXPECT_EQ(transport->get_returncode(), -SIGTERM);
  EXPECT_NO_THROW(transport->send_signal(SIGTERM)) << "exited but not closed: nothing happens";
  transport->close();
  try {
    transport->kill();
    ADD_FAILURE() << "kill() after close() must fail";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::no_such_process);
  }
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
}

TEST(Subprocess, X7_CloseKillsARunningChildWithoutBlocking) {
  EventLoop loop;
  auto p = start(loop, {"sleep", "30"});
  auto transport = p->transport;
  EXPECT_EQ(transport->get_extra_info_as<int>("subprocess"), transport->get_pid());
  transport->close();
  EXPECT_TRUE(transport->is_closing());
  EXPECT_EQ(transport->get_returncode(), std::nullopt) << "close() does not wait";
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
  EXPECT_EQ(transport->get_returncode(), -SIGKILL);
}

TEST(Subprocess, X7_StdinFlowControlReachesTheSubprocessProtocol) {
  EventLoop loop;
  auto p = start(loop, {"sleep", "30"});  // never reads its stdin
  p->transport->get_pipe_transport(0)->write(std::string(1 << 20, 'x'));
  EXPECT_EQ(p->pauses, 1);
  p->transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return p->done(); }));
}

TEST(Subprocess, X8_ChildrenAreReapedEvenWhenTheLoopGoesFirst) {
  int finished_pid, running_pid;
  {
    EventLoop loop;
    auto finished = start(loop, {"true"});
    finished_pid = finished->transport->get_pid();
    ASSERT_TRUE(run_until(loop, [&] { return finished->done(); }));
    EXPECT_TRUE(reaped(finished_pid)) << "no zombie after process_exited";
    auto running = start(loop, {"sleep", "30"});
    running_pid = running->transport->get_pid();
  }  // the loop dies with the child still running
  EXPECT_TRUE(reaped(running_pid));
}

TEST(Subprocess, R5_CloseEndsTheChildsWholeProcessGroup) {
  EventLoop loop;
  auto p = shell(loop, "sleep 30 & echo $!; wait");
  ASSERT_TRUE(run_until(loop, [&] { return p->out.find('\n') != std::string::npos; }));
  const int grandchild = std::stoi(p->out);
  EXPECT_FALSE(not_running(grandchild));
  p->transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return p->done() && not_running(grandchild); }));
}

TEST(Subprocess, R5_CloseEndsTheGroupAfterTheChildHasExited) {
  EventLoop loop;
  // The shell exits at once; what it started holds stdout open, so the
  // transport has not finished: close() must end it all the same.
  auto p = shell(loop, "sleep 30 & echo $!; exit 0");
  ASSERT_TRUE(run_until(loop, [&] { return p->exited == 1 && p->out.find('\n') != std::string::npos; }));
  const int grandchild = std::stoi(p->out);
  EXPECT_FALSE(not_running(grandchild));
  ASSERT_EQ(p->lost, 0) << "the grandchild holds stdout";
  p->transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return p->done() && not_running(grandchild); }));
}

TEST(Subprocess, R5_TheLoopGoingAwayEndsTheGroupToo) {
  int watch = -1;
  {
    EventLoop loop;
    auto p = shell(loop, "sleep 30 & echo $!; exit 0");
    ASSERT_TRUE(run_until(loop, [&] { return p->exited == 1 && p->out.find('\n') != std::string::npos; }));
    // Not our child: a pidfd turns readable when it exits.
    watch = static_cast<int>(::syscall(SYS_pidfd_open, std::stoi(p->out), 0));
    ASSERT_GE(watch, 0);
  }
  pollfd exited{watch, POLLIN, 0};
  EXPECT_EQ(::poll(&exited, 1, 10000), 1) << "the grandchild outlived the loop";
  ::close(watch);
}

}  // namespace
}  // namespace conduit::testing
