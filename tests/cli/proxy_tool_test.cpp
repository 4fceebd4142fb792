// conduit proxy as a process: in front of conduit's echo servers (TCP and
// UDP), here and through `conduit serve` (--via), with its faults measured
// from the clients' side and its errors checked.
#include "support/child_process.hpp"

#include <gtest/gtest.h>

#include <boost/asio.hpp>

#include <signal.h>

#include <chrono>
#include <string>

using conduit::testing::ChildProcess;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto bound = 20s;

/// A long-running tool that prints "listening URL" once it is ready.
struct Listening {
  ChildProcess process;
  std::string url;
  explicit Listening(std::vector<std::string> argv) : process(std::move(argv)) {
    auto line = process.wait_for_line("listening ", bound);
    EXPECT_TRUE(line) << process.err();
    url = line.value_or("");
  }
  ~Listening() {
    process.signal(SIGTERM);
    process.wait(bound);
  }
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

TEST(ProxyTool, RelaysWithLatencyAndReportsEachConnection) {
  Listening echo({CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"});
  Listening proxy({CONDUIT_BIN, "proxy", "--listen", "tcp://127.0.0.1:0", "--upstream", echo.url, "--latency", "50ms",
                   "--direction", "up", "-v", "--json", "--exit-after", "1"});
  const auto start = Clock::now();
  ChildProcess client(
      {CONDUIT_BIN, "echo-client", "--connect", proxy.url, "--count", "4", "--size", "1000", "--quiet"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_GE(seconds_since(start), 0.2) << "4 round trips, each 50 ms late on the way up";
  ASSERT_EQ(proxy.process.wait(bound), 0) << proxy.process.err();
  EXPECT_NE(proxy.process.out().find("\"connections\":1,\"bytes_upstream\":4000,\"bytes_downstream\":4000"),
            std::string::npos)
      << proxy.process.out();
  EXPECT_NE(proxy.process.err().find("[conn 1] accepted from 127.0.0.1:"), std::string::npos) << proxy.process.err();
  EXPECT_NE(proxy.process.err().find("[conn 1] closed: 4000 bytes up, 4000 bytes down"), std::string::npos)
      << proxy.process.err();
}

TEST(ProxyTool, BandwidthLimitsABulkTransfer) {
  Listening echo({CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"});
  Listening proxy({CONDUIT_BIN, "proxy", "--listen", "tcp://127.0.0.1:0", "--upstream", echo.url, "--bandwidth",
                   "1MiB/s", "--direction", "down"});
  const auto start = Clock::now();
  ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", proxy.url, "--size", "1000000", "--quiet"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  const double seconds = seconds_since(start);
  EXPECT_GE(seconds, 0.85) << "1 MB at 1 MiB/s";
  EXPECT_LT(seconds, 5);
}

TEST(ProxyTool, UdpLossDropsDatagrams) {
  Listening echo({CONDUIT_BIN, "udp-echo", "server", "--listen", "udp://127.0.0.1:0"});
  Listening proxy({CONDUIT_BIN, "proxy", "--listen", "udp://127.0.0.1:0", "--upstream", echo.url, "--loss", "100%",
                   "--direction", "up"});
  EXPECT_EQ(proxy.url.rfind("udp://127.0.0.1:", 0), 0u) << proxy.url;
  ChildProcess client(
      {CONDUIT_BIN, "udp-echo", "client", "--connect", proxy.url, "--count", "5", "--wait", "0.05", "--json"});
  EXPECT_EQ(client.wait(bound), 6) << client.err();
  EXPECT_NE(client.out().find("\"sent\":5,\"received\":0,\"lost\":5"), std::string::npos) << client.out();
  Listening clean({CONDUIT_BIN, "proxy", "--listen", "udp://127.0.0.1:0", "--upstream", echo.url});
  ChildProcess through({CONDUIT_BIN, "udp-echo", "client", "--connect", clean.url, "--count", "20"});
  EXPECT_EQ(through.wait(bound), 0) << through.err();
}

TEST(ProxyTool, ResetAfterIsSeenByTheClient) {
  Listening echo({CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"});
  Listening proxy({CONDUIT_BIN, "proxy", "--listen", "tcp://127.0.0.1:0", "--upstream", echo.url, "--reset-after",
                   "1000", "--direction", "up"});
  ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", proxy.url, "--size", "100000"});
  EXPECT_EQ(client.wait(bound), 5) << "a reset ends a connection early, as a close does: " << client.err();
  EXPECT_NE(client.err().find("Connection reset by peer"), std::string::npos) << client.err();
}

/// Connects to `url` (tcp://127.0.0.1:PORT), sends nothing, and reads until
/// the connection ends: how (the error; eof for a close) and after how long.
static std::pair<boost::system::error_code, Clock::duration> silent_connection(const std::string& url) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  const auto port = static_cast<unsigned short>(std::stoi(url.substr(url.rfind(':') + 1)));
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), port});
  const auto start = Clock::now();
  boost::system::error_code how;
  char byte;
  socket.async_read_some(boost::asio::buffer(&byte, 1), [&](boost::system::error_code ec, std::size_t) { how = ec; });
  io.run_for(bound);
  return {how, Clock::now() - start};
}

// Reset and blackhole after a time, as the README's table offers them.
TEST(ProxyTool, ResetAndBlackholeAfterATime) {
  Listening echo({CONDUIT_BIN, "echo-server", "--listen", "127.0.0.1:0", "--quiet"});
  {
    Listening proxy(
        {CONDUIT_BIN, "proxy", "--listen", "127.0.0.1:0", "--upstream", echo.url, "--reset-after", "300ms"});
    const auto [how, after] = silent_connection(proxy.url);
    EXPECT_EQ(how, boost::asio::error::connection_reset) << how.message();
    EXPECT_GE(after, 250ms);
    EXPECT_LT(after, 10s);
  }
  {
    Listening proxy({CONDUIT_BIN, "proxy", "--listen", "127.0.0.1:0", "--upstream", echo.url, "--blackhole",
                     "--blackhole-close-after", "300ms"});
    const auto [how, after] = silent_connection(proxy.url);
    EXPECT_EQ(how, boost::asio::error::eof) << how.message();
    EXPECT_GE(after, 250ms);
    EXPECT_LT(after, 10s);
  }
  ChildProcess alone(
      {CONDUIT_BIN, "proxy", "--listen", "127.0.0.1:0", "--upstream", echo.url, "--blackhole-close-after", "1s"});
  EXPECT_EQ(alone.wait(bound), 2);
  EXPECT_NE(alone.err().find("--blackhole-close-after needs --blackhole"), std::string::npos) << alone.err();
}

TEST(ProxyTool, ThroughTheServiceWithItsPolicy) {
  Listening serve({CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0"});
  const std::string via = serve.url.substr(serve.url.find("127.0.0.1"));
  Listening echo({CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"});
  Listening proxy({CONDUIT_BIN, "proxy", "--via", via, "--listen", "tcp://127.0.0.1:0", "--upstream", echo.url,
                   "--latency", "20ms", "--json", "--exit-after", "1"});
  ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", proxy.url, "--message", "via the service"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  ASSERT_EQ(proxy.process.wait(bound), 0) << proxy.process.err();
  EXPECT_NE(proxy.process.out().find("\"bytes_upstream\":15,\"bytes_downstream\":15"), std::string::npos)
      << proxy.process.out();
  // The service's --allow-listen (loopback by default) decides where.
  ChildProcess refused({CONDUIT_BIN, "proxy", "--via", via, "--listen", "tcp://0.0.0.0:0", "--upstream", echo.url});
  EXPECT_EQ(refused.wait(bound), 3);
  EXPECT_NE(refused.err().find("--allow-listen"), std::string::npos) << refused.err();
}

// A running --via proxy's faults from another command line: conduit
// sessions finds it by its --name, conduit faults changes it, each change
// acts on the next connection and the proxy's own process hears of it.
TEST(ProxyTool, FaultsChangeARunningProxyFromAnotherCommand) {
  Listening serve({CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0"});
  const std::string via = serve.url.substr(serve.url.find("127.0.0.1"));
  Listening echo({CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"});
  Listening proxy(
      {CONDUIT_BIN, "proxy", "--via", via, "--name", "web", "--listen", "tcp://127.0.0.1:0", "--upstream", echo.url});
  struct Ran {
    int code;
    std::string out, err;
  };
  auto run = [](std::vector<std::string> args) {
    args.insert(args.begin(), CONDUIT_BIN);
    ChildProcess p(args);
    const int code = p.wait(bound).value_or(-1);
    return Ran{code, p.out(), p.err()};
  };
  auto sessions = run({"sessions", "--via", via});
  ASSERT_EQ(sessions.code, 0) << sessions.err;
  EXPECT_NE(sessions.out.find(" web  proxy  tcp://127.0.0.1:"), std::string::npos) << sessions.out;

  auto added = run({"faults", "--via", via, "web", "--latency", "200ms", "--direction", "up"});
  ASSERT_EQ(added.code, 0) << added.err;
  EXPECT_NE(added.out.find("  latency     --latency 200ms --direction up\n"), std::string::npos) << added.out;
  EXPECT_TRUE(proxy.process.wait_for_err_line("conduit proxy: set_fault by ipv4:127.0.0.1:", bound))
      << proxy.process.err();
  // Round trips as the client timed them (its start-up not counted).
  auto rtt_ms = [](const std::string& json, const std::string& which) {
    const auto at = json.find("\"" + which + "\":", json.find("\"rtt_ms\""));
    return at == std::string::npos ? -1.0 : std::stod(json.substr(at + which.size() + 3));
  };
  auto slow = run({"echo-client", "--connect", proxy.url, "--count", "2", "--json"});
  EXPECT_EQ(slow.code, 0) << slow.err;
  EXPECT_GE(rtt_ms(slow.out, "min"), 200) << "each round trip 200 ms late on the way up: " << slow.out;

  // Down: refused; up again, with the latency removed: fast.
  auto down = run({"faults", "--via", via, "web", "--down"});
  ASSERT_EQ(down.code, 0) << down.err;
  EXPECT_EQ(down.out.find("web: down\n"), 0u) << down.out;
  auto refused = run({"echo-client", "--connect", proxy.url, "--quiet"});
  EXPECT_EQ(refused.code, 3) << refused.err;
  auto up = run({"faults", "--via", via, "web", "--up", "--remove", "latency"});
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_NE(up.out.find("  no faults\n"), std::string::npos) << up.out;
  auto fast = run({"echo-client", "--connect", proxy.url, "--count", "2", "--json"});
  EXPECT_EQ(fast.code, 0) << fast.err;
  EXPECT_LT(rtt_ms(fast.out, "max"), 200) << fast.out;

  // What it refuses, and how.
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"faults", "--via", via, "nope"}, 1, "no session has the id or name 'nope' (NOT_FOUND)"},
      {{"faults", "--via", via, "web", "--remove", "nope"}, 1, "no fault is named 'nope'"},
      {{"faults", "--via", via, "web", "--loss", "1%"}, 1, "loss is for datagram proxies"},
      {{"faults", "--via", via, "web", "--latency", "1"}, 2, "'1' needs a unit"},
      {{"faults", "--via", via, "web", "--down", "--up"}, 2, "--down and --up together"},
      {{"faults", "web"}, 2, "--via is required"},
      {{"faults", "--via", "127.0.0.1:1", "web", "--timeout", "1"}, 7, "cannot reach the service at 127.0.0.1:1"},
      {{"proxy", "--via", via, "--name", "web", "--listen", "127.0.0.1:0", "--upstream", echo.url},
       3,
       "is named 'web' already"},
      {{"proxy", "--name", "web", "--listen", "127.0.0.1:0", "--upstream", echo.url}, 2, "--name names a --via proxy"},
      {{"proxy", "--via", via, "--name", "a b", "--listen", "127.0.0.1:0", "--upstream", echo.url},
       3,
       "open_proxy.name"},
  };
  for (const auto& c : cases) {
    auto p = run(c.args);
    EXPECT_EQ(p.code, c.code) << c.says << ": " << p.err;
    EXPECT_NE(p.err.find(c.says), std::string::npos) << p.err;
  }
}

TEST(ProxyTool, FaultsForSomeClientsAndFromSomeBytesOn) {
  Listening echo({CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"});
  // A latency for other networks leaves this client alone: two round
  // trips cost what they cost straight to the echo server (the client's own
  // start-up included, which a sanitizer makes slow), not 2 s more.
  auto two_round_trips = [](const std::string& url) {
    const auto start = Clock::now();
    ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", url, "--count", "2", "--quiet"});
    EXPECT_EQ(client.wait(bound), 0) << client.err();
    return seconds_since(start);
  };
  {
    const double direct = two_round_trips(echo.url);
    Listening proxy({CONDUIT_BIN, "proxy", "--listen", "tcp://127.0.0.1:0", "--upstream", echo.url, "--latency", "1s",
                     "--clients", "192.0.2.0/24,10.0.0.0/8"});
    EXPECT_LT(two_round_trips(proxy.url), direct + 1) << "not one of the clients named";
  }
  // A blackhole from the 1001st byte up: 1000 bytes echo, 2000 do not.
  Listening proxy({CONDUIT_BIN, "proxy", "--listen", "tcp://127.0.0.1:0", "--upstream", echo.url, "--blackhole",
                   "--direction", "up", "--start-after", "1000"});
  ChildProcess fits({CONDUIT_BIN, "echo-client", "--connect", proxy.url, "--size", "1000", "--quiet"});
  EXPECT_EQ(fits.wait(bound), 0) << fits.err();
  ChildProcess over(
      {CONDUIT_BIN, "echo-client", "--connect", proxy.url, "--size", "2000", "--timeout", "0.5", "--quiet"});
  EXPECT_NE(over.wait(bound), 0) << "the bytes past 1000 were dropped";
}

TEST(ProxyTool, BadArgumentsAreExitCode2AndSayWhy) {
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9", "--loss", "1%"}, "--loss is for udp"},
      {{"--listen", "udp://127.0.0.1:0", "--upstream", "udp://127.0.0.1:9", "--reset-after", "10"},
       "--reset-after is for stream"},
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9", "--latency", "fast"}, "not a duration"},
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9", "--latency", "1"},
       "'1' needs a unit: 1ms or 1s?"},
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9", "--bandwidth", "1MiB/h"}, "not a rate"},
      {{"--listen", "udp://127.0.0.1:0", "--upstream", "udp://127.0.0.1:9", "--loss", "150%"}, "over 100%"},
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9", "--jitter", "5ms"},
       "--jitter needs --latency"},
      {{"--listen", "udp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9"}, "udp:// proxy listens and connects"},
      {{"--listen", "tls://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9"}, "needs --cert and --key"},
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:0"}, "--upstream needs a port"},
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9", "--latency", "5ms", "--clients",
        "10.0.0.0/99"},
       "--clients: '10.0.0.0/99': the prefix must be 0 to 32"},
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9", "--start-after", "1KiB"},
       "need a fault to act on"},
      {{"--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9", "--latency", "5ms", "--start-after", "2s",
        "--stop-after", "1s"},
       "stop_after must be later than start_after"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv{CONDUIT_BIN, "proxy"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    ChildProcess p(argv);
    EXPECT_EQ(p.wait(bound), 2) << c.says;
    EXPECT_NE(p.err().find(c.says), std::string::npos) << p.err();
  }
}
