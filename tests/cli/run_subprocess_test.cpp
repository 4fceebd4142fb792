// conduit run-subprocess as a process: output streaming, exit statuses,
// stdin, signals forwarded, timeouts and bad input.
#include "support/child_process.hpp"

#include <gtest/gtest.h>

#include <signal.h>
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
  EXPECT_NE(p.out().find("\"returncode\":0,\"exit_code\":0,\"timed_out\":false,\"stdout_bytes\":3,\"stderr_bytes\":2"),
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

  auto denied = run({"--via", address, "--", "/bin/date"});
  EXPECT_EQ(denied.wait(bound), 127);
  EXPECT_NE(denied.err().find("not in the service's --allow-exec list"), std::string::npos) << denied.err();
  service.signal(SIGTERM);
  service.wait(bound);
}
