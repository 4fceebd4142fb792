// conduit udp-echo server and client as processes, against each other and
// against socat's UDP echo.
#include "support/child_process.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>

#include <signal.h>

#include <string>

using conduit::testing::ChildProcess;
using namespace std::chrono_literals;

namespace {

constexpr auto bound = 20s;

struct UdpEchoServer {
  ChildProcess process;
  std::string url;

  explicit UdpEchoServer(const std::string& listen = "udp://127.0.0.1:0")
      : process({CONDUIT_BIN, "udp-echo", "server", "--listen", listen, "--json"}) {
    auto line = process.wait_for_line("listening ", bound);
    EXPECT_TRUE(line) << process.err();
    url = line.value_or("");
  }
  ~UdpEchoServer() {
    process.signal(SIGTERM);
    process.wait(bound);
  }
};

std::string free_udp_port() {
  boost::asio::io_context ctx;
  boost::asio::ip::udp::socket s(ctx, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return std::to_string(s.local_endpoint().port());
}

}  // namespace

TEST(UdpEcho, ClientCountsEveryEchoWithRtts) {
  UdpEchoServer server;
  ChildProcess client(
      {CONDUIT_BIN, "udp-echo", "client", "--connect", server.url, "--count", "500", "--size", "1200", "--json"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_NE(client.out().find("\"sent\":500,\"received\":500,\"lost\":0"), std::string::npos) << client.out();
  server.process.signal(SIGTERM);
  ASSERT_EQ(server.process.wait(bound), 0) << server.process.err();
  EXPECT_NE(server.process.out().find("\"datagrams\":500,\"bytes_echoed\":600000"), std::string::npos)
      << server.process.out();
}

TEST(UdpEcho, Ipv6) {
  UdpEchoServer server("udp://[::1]:0");
  EXPECT_EQ(server.url.rfind("udp://[::1]:", 0), 0u) << server.url;
  ChildProcess client({CONDUIT_BIN, "udp-echo", "client", "--connect", server.url, "--count", "3"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_EQ(client.out().rfind("3 sent, 3 received, 0 lost", 0), 0u) << client.out();
}

TEST(UdpEcho, NoServerIsExitCode3AndASilentPeerIsLoss) {
  ChildProcess refused({CONDUIT_BIN, "udp-echo", "client", "--connect", "udp://127.0.0.1:" + free_udp_port()});
  EXPECT_EQ(refused.wait(bound), 3);
  EXPECT_NE(refused.err().find("Connection refused"), std::string::npos) << refused.err();

  // A bound socket that never answers: each datagram is lost after --wait.
  boost::asio::io_context ctx;
  boost::asio::ip::udp::socket silent(ctx, {boost::asio::ip::make_address("127.0.0.1"), 0});
  const std::string url = "udp://127.0.0.1:" + std::to_string(silent.local_endpoint().port());
  ChildProcess lossy({CONDUIT_BIN, "udp-echo", "client", "--connect", url, "--count", "2", "--wait", "0.05", "--json"});
  EXPECT_EQ(lossy.wait(bound), 6);
  EXPECT_NE(lossy.out().find("\"sent\":2,\"received\":0,\"lost\":2"), std::string::npos) << lossy.out();

  ChildProcess wrong_scheme({CONDUIT_BIN, "udp-echo", "client", "--connect", "tcp://127.0.0.1:9"});
  EXPECT_EQ(wrong_scheme.wait(bound), 2);
  EXPECT_NE(wrong_scheme.err().find("unknown scheme 'tcp'"), std::string::npos) << wrong_scheme.err();
}

TEST(UdpEcho, InteropWithSocat) {
  // conduit's client against socat's UDP echo.
  const std::string port = free_udp_port();
  ChildProcess socat({"socat", "UDP4-RECVFROM:" + port + ",bind=127.0.0.1,fork", "PIPE"});
  // socat needs a moment to bind; the client's first datagram may be refused,
  // so retry a bounded number of times until it answers.
  int rc = -1;
  for (int attempt = 0; attempt < 50 && rc != 0; ++attempt) {
    ChildProcess client(
        {CONDUIT_BIN, "udp-echo", "client", "--connect", "udp://127.0.0.1:" + port, "--count", "20", "--wait", "2"});
    rc = client.wait(bound).value_or(-1);
    if (rc != 0 && rc != 3) FAIL() << "exit " << rc << ": " << client.err();
  }
  EXPECT_EQ(rc, 0);
  socat.signal(SIGTERM);
  socat.wait(bound);

  // socat as the client of conduit's server.
  UdpEchoServer server;
  const std::string server_port = server.url.substr(server.url.rfind(':') + 1);
  ChildProcess socat_client({"socat", "-T", "5", "-", "UDP4:127.0.0.1:" + server_port}, "one datagram\n");
  ASSERT_TRUE(socat_client.wait_for_line("one datagram", bound)) << socat_client.err();
  socat_client.signal(SIGTERM);
  socat_client.wait(bound);
}

TEST(UdpEcho, ViaTheServiceGivesTheSameResults) {
  UdpEchoServer server;
  ChildProcess service({CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0"});
  auto line = service.wait_for_line("listening ", bound);
  ASSERT_TRUE(line) << service.err();
  ChildProcess via(
      {CONDUIT_BIN, "udp-echo", "client", "--via", *line, "--connect", server.url, "--count", "50", "--size", "700"});
  ASSERT_EQ(via.wait(bound), 0) << via.err();
  EXPECT_EQ(via.out().rfind("50 sent, 50 received, 0 lost", 0), 0u) << via.out();
  ChildProcess refused(
      {CONDUIT_BIN, "udp-echo", "client", "--via", *line, "--connect", "udp://127.0.0.1:" + free_udp_port()});
  EXPECT_EQ(refused.wait(bound), 3);
  EXPECT_NE(refused.err().find("Connection refused"), std::string::npos) << refused.err();
  service.signal(SIGTERM);
  service.wait(bound);
}

TEST(UdpEcho, ServerViaTheServiceEchoesFromItsHost) {
  ChildProcess service({CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0"});
  auto address = service.wait_for_line("listening ", bound);
  ASSERT_TRUE(address) << service.err();
  ChildProcess server(
      {CONDUIT_BIN, "udp-echo", "server", "--via", *address, "--listen", "udp://127.0.0.1:0", "--json"});
  auto url = server.wait_for_line("listening ", bound);
  ASSERT_TRUE(url) << server.err();
  ChildProcess client({CONDUIT_BIN, "udp-echo", "client", "--connect", *url, "--count", "50", "--size", "700"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_EQ(client.out().rfind("50 sent, 50 received, 0 lost", 0), 0u) << client.out();
  server.signal(SIGTERM);
  EXPECT_EQ(server.wait(bound), 0) << server.err();
  EXPECT_NE(server.out().find("{\"datagrams\":50,\"bytes_echoed\":35000,"), std::string::npos) << server.out();
  service.signal(SIGTERM);
  service.wait(bound);
}
