// conduit run-subprocess as a process: output streaming, exit statuses,
// stdin, signals forwarded, timeouts and bad input.
#include "support/child_process.hpp"

#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <string>

using conduit::testing::ChildProcess;
using namespace std::chrono_literals;

namespace {

constexpr auto bound = 20s;

ChildProcess run(std::vector<std::string> args, std::string stdin_data = {}) {
  args.insert(args.begin(), {CONDUIT_BIN, "run-subprocess"});
  return ChildProcess(std::move(args), std::move(stdin_data));
}

/// Whether `pid` (not our child) has exited within `timeout`: a pidfd
/// turns readable then. A pid that is gone already counts.
bool exits_within(int pid, std::chrono::milliseconds timeout) {
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  pollfd exited{fd, POLLIN, 0};
  const bool done = ::poll(&exited, 1, static_cast<int>(timeout.count())) == 1;
  ::close(fd);
  return done;
}

/// The pid a child printed as its first line ("echo $!").
int printed_pid(ChildProcess& p) {
  auto line = p.wait_for_line("", bound);
  return line ? std::stoi(*line) : -1;
}

/// A shell that starts `sleep 300` in the background, prints its pid and
/// exits at once: what it leaves in its group holds stdout open.
const std::vector<std::string> leaves_a_sleeper = {"sh", "-c", "sleep 300 & echo $!; exit 0"};

std::string temp_file(const std::string& name, std::size_t size) {
  const std::string path = ::testing::TempDir() + "conduit-run-" + std::to_string(::getpid()) + "-" + name;
  std::string data(size, '\0');
  for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<char>((i * 7919) >> 3);
  std::ofstream(path, std::ios::binary) << data;
  return path;
}

}  // namespace

TEST(RunSubprocess, StreamsOutputAndExitsWithTheChildsStatus) {
  auto p = run({"--", "sh", "-c", "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(p.wait(bound), 3);
  EXPECT_EQ(p.out(), "out\n");
  EXPECT_EQ(p.err(), "err\n");
}

TEST(RunSubprocess, PrefixedLinesAndJsonSummary) {
  auto p = run({"--prefix", "--json", "--", "sh", "-c", "printf 'a\\nb'; echo c >&2"});
  ASSERT_EQ(p.wait(bound), 0) << p.err();
  EXPECT_EQ(p.out().substr(0, p.out().find('{')), "[out] a\n[out] b\n");
  EXPECT_EQ(p.err(), "[err] c\n");
  EXPECT_NE(p.out().find("\"returncode\":0,\"exit_code\":0,\"timed_out\":false,\"killed\":false,\"stdout_bytes\":3,"
                         "\"stderr_bytes\":2"),
            std::string::npos)
      << p.out();
}

TEST(RunSubprocess, StdinFromOurStdinAndFromAFile) {
  auto piped = run({"--stdin", "-", "--", "sort"}, "b\na\nc\n");
  ASSERT_EQ(piped.wait(bound), 0) << piped.err();
  EXPECT_EQ(piped.out(), "a\nb\nc\n");

  const std::string path = ::testing::TempDir() + "conduit-run-stdin-" + std::to_string(::getpid());
  std::ofstream(path) << "from a file\n";
  auto from_file = run({"--stdin", path, "--", "cat"});
  ASSERT_EQ(from_file.wait(bound), 0) << from_file.err();
  EXPECT_EQ(from_file.out(), "from a file\n");
  ::unlink(path.c_str());

  auto no_stdin = run({"--", "cat"});
  ASSERT_EQ(no_stdin.wait(bound), 0) << "stdin defaults to /dev/null: cat ends at once";
}

TEST(RunSubprocess, LargeOutputArrivesWhole) {
  auto p = run({"--", "head", "-c", "3000000", "/dev/zero"});
  ASSERT_EQ(p.wait(bound), 0) << p.err();
  EXPECT_EQ(p.out().size(), 3000000u);
}

TEST(RunSubprocess, ForwardsSigintAndReports128PlusTheSignal) {
  auto p = run({"-v", "--", "sh", "-c", "echo ready; exec sleep 30"});
  ASSERT_TRUE(p.wait_for_line("ready", bound)) << p.err();
  p.signal(SIGINT);
  EXPECT_EQ(p.wait(bound), 128 + SIGINT) << p.err();
  EXPECT_NE(p.err().find("forwarding signal 2"), std::string::npos) << p.err();
}

TEST(RunSubprocess, TimeoutStopsTheChild) {
  auto p = run({"--timeout", "0.2", "--", "sleep", "30"});
  EXPECT_EQ(p.wait(bound), 124);
  EXPECT_NE(p.err().find("timed out after 0.2 s"), std::string::npos) << p.err();
}

// An ending signal goes to the child's whole group, as coreutils' timeout
// sends it: what ends on SIGTERM ends at once, not --kill-after later (60 s
// here, three times the bound these wait).
TEST(RunSubprocess, ASignalEndsWhatTheChildLeftInItsGroup) {
  std::vector<std::string> args = {"--kill-after", "60", "--"};
  args.insert(args.end(), leaves_a_sleeper.begin(), leaves_a_sleeper.end());
  auto p = run(args);
  const int sleeper = printed_pid(p);
  ASSERT_GT(sleeper, 0) << p.err();
  p.signal(SIGTERM);
  // 0 if the shell had exited before the signal came, else 128+SIGTERM.
  const auto status = p.wait(bound);
  EXPECT_TRUE(status == 0 || status == 128 + SIGTERM) << p.err();
  EXPECT_EQ(p.err().find("killing its process group"), std::string::npos) << p.err();
  EXPECT_TRUE(exits_within(sleeper, bound)) << "the background sleep survived";
}

TEST(RunSubprocess, TimeoutEndsWhatTheChildLeftInItsGroup) {
  std::vector<std::string> args = {"--timeout", "0.3", "--kill-after", "60", "--"};
  args.insert(args.end(), leaves_a_sleeper.begin(), leaves_a_sleeper.end());
  auto p = run(args);
  const int sleeper = printed_pid(p);
  ASSERT_GT(sleeper, 0) << p.err();
  EXPECT_EQ(p.wait(bound), 124) << p.err();
  EXPECT_TRUE(exits_within(sleeper, bound)) << "the background sleep survived";
  // The child still running at the timeout, its background job beside it.
  auto both = run({"--timeout", "0.3", "--kill-after", "60", "--", "sh", "-c", "sleep 300 & echo $!; exec sleep 60"});
  const int background = printed_pid(both);
  ASSERT_GT(background, 0) << both.err();
  EXPECT_EQ(both.wait(bound), 124) << both.err();
  EXPECT_TRUE(exits_within(background, bound)) << "the background sleep survived";
}

TEST(RunSubprocess, TimeoutWithInputSaysItTimedOut) {
  // The child reads nothing: the input waits until the timeout stops it.
  auto p = run({"--timeout", "0.3", "--stdin", "-", "--", "sleep", "30"}, std::string(4 << 20, 'y'));
  EXPECT_EQ(p.wait(bound), 124) << p.err();
  EXPECT_NE(p.err().find("timed out after 0.3 s: the child was stopped, and the rest of the input is not sent"),
            std::string::npos)
      << p.err();
  EXPECT_EQ(p.err().find("the child closed its stdin"), std::string::npos) << p.err();
}

TEST(RunSubprocess, AChildIgnoringSigtermIsKilledAfterTheGracePeriod) {
  auto p = run({"--kill-after", "0.3", "--", "sh", "-c", "trap '' TERM; echo ready; sleep 300"});
  ASSERT_TRUE(p.wait_for_line("ready", bound)) << p.err();
  p.signal(SIGTERM);
  EXPECT_EQ(p.wait(bound), 128 + SIGKILL) << p.err();
  EXPECT_NE(p.err().find("the child still ran 0.3 s later: killing its process group"), std::string::npos) << p.err();
}

TEST(RunSubprocess, ForwardsSigquitAndSigusr) {
  // The child reports each signal it gets; SIGQUIT then ends it.
  auto p = run({"--", "sh", "-c",
                "trap 'echo usr1' USR1; trap 'echo usr2' USR2; trap 'echo quit; exit 7' QUIT; echo ready;"
                "while :; do sleep 0.05; done"});
  ASSERT_TRUE(p.wait_for_line("ready", bound)) << p.err();
  p.signal(SIGUSR1);
  ASSERT_TRUE(p.wait_for_line("usr1", bound)) << p.err();
  p.signal(SIGUSR2);
  ASSERT_TRUE(p.wait_for_line("usr2", bound)) << p.err();
  p.signal(SIGQUIT);
  EXPECT_EQ(p.wait(bound), 7) << p.err();
}

TEST(RunSubprocess, AChildThatClosesItsStdinIsReportedOnce) {
  auto p = run({"--stdin", "-", "--", "sh", "-c", "exec 0<&-; echo closed; sleep 0.3"}, std::string(8 << 20, 'y'));
  EXPECT_EQ(p.wait(bound), 0) << p.err();
  EXPECT_EQ(p.out(), "closed\n");
  const std::string line = "the child closed its stdin";
  const auto first = p.err().find(line);
  EXPECT_NE(first, std::string::npos) << p.err();
  EXPECT_EQ(p.err().find(line, first + 1), std::string::npos) << "reported more than once: " << p.err().substr(0, 500);
  EXPECT_EQ(p.err().find("pipe closed by peer"), std::string::npos) << p.err().substr(0, 500);
}

TEST(RunSubprocess, BadInputGetsClearErrors) {
  auto missing = run({"--", "conduit-no-such-program"});
  EXPECT_EQ(missing.wait(bound), 127);
  EXPECT_NE(missing.err().find("cannot run conduit-no-such-program"), std::string::npos) << missing.err();

  auto no_command = run({});
  EXPECT_EQ(no_command.wait(bound), 2);

  auto bad_stdin = run({"--stdin", "/nonexistent/conduit", "--", "cat"});
  EXPECT_EQ(bad_stdin.wait(bound), 2);
  EXPECT_NE(bad_stdin.err().find("cannot open --stdin /nonexistent/conduit"), std::string::npos) << bad_stdin.err();
}

TEST(RunSubprocess, ViaTheServiceGivesTheSameOutputAndStatus) {
  ChildProcess service({CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0", "--allow-exec", "sh", "--allow-exec", "sort"});
  auto line = service.wait_for_line("listening ", bound);
  ASSERT_TRUE(line) << service.err();
  const std::string address = *line;  // what follows "listening "

  auto direct = run({"--prefix", "--", "sh", "-c", "echo out; exit 3"});
  auto via = run({"--via", address, "--prefix", "--", "sh", "-c", "echo out; exit 3"});
  EXPECT_EQ(direct.wait(bound), 3);
  EXPECT_EQ(via.wait(bound), 3) << via.err();
  EXPECT_EQ(via.out(), direct.out());

  auto sorted = run({"--via", address, "--stdin", "-", "--", "sort"}, "b\na\n");
  ASSERT_EQ(sorted.wait(bound), 0) << sorted.err();
  EXPECT_EQ(sorted.out(), "a\nb\n");

  auto signalled = run({"--via", address, "--", "sh", "-c", "echo ready; exec sleep 30"});
  ASSERT_TRUE(signalled.wait_for_line("ready", bound)) << signalled.err();
  signalled.signal(SIGTERM);
  EXPECT_EQ(signalled.wait(bound), 128 + SIGTERM) << signalled.err();

  // Input bigger than a gRPC message, from a file and from a pipe.
  const std::string big = temp_file("big", 6 << 20);
  auto file_in = run({"--via", address, "--stdin", big, "--", "sh", "-c", "exec wc -c"});
  ASSERT_EQ(file_in.wait(bound), 0) << file_in.err();
  EXPECT_EQ(file_in.out(), std::to_string(6 << 20) + "\n");
  auto pipe_in = run({"--via", address, "--stdin", "-", "--", "sh", "-c", "exec wc -c"}, std::string(5 << 20, 'x'));
  ASSERT_EQ(pipe_in.wait(bound), 0) << pipe_in.err();
  EXPECT_EQ(pipe_in.out(), std::to_string(5 << 20) + "\n");
  ::unlink(big.c_str());

  // Leftovers in the remote child's group end too, at the signal.
  std::vector<std::string> args = {"--via", address, "--kill-after", "60", "--"};
  args.insert(args.end(), leaves_a_sleeper.begin(), leaves_a_sleeper.end());
  auto leaves = run(args);
  const int sleeper = printed_pid(leaves);
  ASSERT_GT(sleeper, 0) << leaves.err();
  leaves.signal(SIGTERM);
  const auto status = leaves.wait(bound);
  EXPECT_TRUE(status == 0 || status == 128 + SIGTERM) << leaves.err();
  EXPECT_TRUE(exits_within(sleeper, bound)) << "the remote background sleep survived";

  auto denied = run({"--via", address, "--", "/bin/date"});
  EXPECT_EQ(denied.wait(bound), 127);
  EXPECT_NE(denied.err().find("not in the service's --allow-exec list"), std::string::npos) << denied.err();
  service.signal(SIGTERM);
  service.wait(bound);
}

TEST(RunSubprocess, ASessionThatBreaksSaysWhy) {
  ChildProcess service({CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0", "--allow-exec", "sh"});
  auto line = service.wait_for_line("listening ", bound);
  ASSERT_TRUE(line) << service.err();
  auto p = run({"--via", *line, "--", "sh", "-c", "echo ready; exec sleep 30"});
  ASSERT_TRUE(p.wait_for_line("ready", bound)) << p.err();
  service.signal(SIGTERM);  // its sessions end with it
  EXPECT_EQ(service.wait(bound), 0) << service.err();
  // The service killed the child as it went: 128+9, and why.
  EXPECT_EQ(p.wait(bound), 128 + SIGKILL) << p.err();
  EXPECT_NE(p.err().find("the service is shutting down (Terminated)"), std::string::npos) << p.err();
}
