// conduit connect and conduit listen against peers this project did not
// write (socat, Python's http.server, openssl s_server), and against each
// other, directly and through the service.
#include "support/child_process.hpp"
#include "support/loopback_ports.hpp"
#include "support/test_certificates.hpp"

#include <gtest/gtest.h>

#include <boost/asio.hpp>

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <string>

using namespace std::chrono_literals;
using conduit::testing::ChildProcess;
using conduit::testing::free_port;
using conduit::testing::wait_until_listening;

namespace {

constexpr auto bound = 20s;

/// Bytes that show a reordering or a loss: i-th byte from a rolling pattern.
std::string pattern(std::size_t size) {
  std::string data(size, '\0');
  for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<char>((i * 7919) >> 5);
  return data;
}

struct Service {
  ChildProcess process{{CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0"}};
  std::string address;
  Service() { address = process.wait_for_line("listening ", bound).value_or(""); }
  ~Service() {
    process.signal(SIGTERM);
    process.wait(bound);
  }
};

}  // namespace

// socat echoes what it reads until our half-close, then closes: 2 MiB go
// there and come back whole, and connect exits 0 (ncat 7.93 loses data here).
TEST(Connect, CarriesHalfCloseBothWaysWithSocat) {
  const std::string port = free_port();
  ChildProcess socat({"socat", "TCP-LISTEN:" + port + ",bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"});
  ASSERT_TRUE(wait_until_listening(port, bound));
  const std::string data = pattern(2 << 20);
  ChildProcess client({CONDUIT_BIN, "connect", "127.0.0.1:" + port}, data);
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_TRUE(client.out() == data) << "got " << client.out().size() << " of " << data.size() << " bytes back";
  socat.signal(SIGTERM);
  socat.wait(bound);
}

TEST(Connect, AnHttpRequestToPythonsHttpServer) {
  const std::string dir = ::testing::TempDir() + "conduit-connect-http-" + std::to_string(::getpid());
  ASSERT_EQ(::system(("mkdir -p " + dir).c_str()), 0);
  std::ofstream(dir + "/marker.txt") << "the marker\n";
  const std::string port = free_port();
  ChildProcess http({"python3", "-m", "http.server", port, "--bind", "127.0.0.1", "--directory", dir});
  ASSERT_TRUE(wait_until_listening(port, bound));
  ChildProcess client({CONDUIT_BIN, "connect", "tcp://127.0.0.1:" + port}, "GET /marker.txt HTTP/1.0\r\n\r\n");
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_EQ(client.out().rfind("HTTP/1.0 200 OK", 0), 0u) << client.out();
  EXPECT_NE(client.out().find("\r\n\r\nthe marker\n"), std::string::npos) << client.out();
  http.signal(SIGTERM);
  http.wait(bound);
}

TEST(Connect, TlsToOpensslSServer) {
  const auto& certs = conduit::testing::test_certificates();
  const std::string port = free_port();
  // -rev: s_server sends each line back reversed; it closes at our close_notify.
  ChildProcess server({"openssl", "s_server", "-accept", "127.0.0.1:" + port, "-cert", certs.server_cert, "-key",
                       certs.server_key, "-rev", "-quiet"});
  ASSERT_TRUE(wait_until_listening(port, bound));
  ChildProcess client({CONDUIT_BIN, "connect", "tls://localhost:" + port, "--cafile", certs.ca, "--timeout", "3"},
                      "conduit\n");
  const auto status = client.wait(bound);
  // TLS has no half-close: the connection stays open after our input ends,
  // until --timeout.
  EXPECT_EQ(status, 4) << client.err();
  EXPECT_NE(client.out().find("tiudnoc"), std::string::npos) << client.out();
  server.signal(SIGTERM);
  server.wait(bound);
}

TEST(Listen, OneConnectionEachWayWithSocat) {
  ChildProcess listener({CONDUIT_BIN, "listen", "127.0.0.1:0"}, "to the client\n");
  auto url = listener.wait_for_err_line("listening tcp://", bound);
  ASSERT_TRUE(url) << listener.err();
  ChildProcess socat({"socat", "-", "TCP:" + *url}, "to the listener\n");
  ASSERT_EQ(socat.wait(bound), 0) << socat.err();
  EXPECT_EQ(socat.out(), "to the client\n");
  ASSERT_EQ(listener.wait(bound), 0) << listener.err();
  EXPECT_EQ(listener.out(), "to the listener\n");
}

TEST(Listen, KeepTakesEveryConnectionUntilSigterm) {
  const std::string path = ::testing::TempDir() + "conduit-listen-" + std::to_string(::getpid()) + ".sock";
  ChildProcess listener({CONDUIT_BIN, "listen", "--keep", "unix:" + path}, "banner\n");
  ASSERT_TRUE(listener.wait_for_err_line("listening unix://", bound)) << listener.err();
  // Standard input goes to the connections open as it comes: all of it to
  // the first here; the second finds it ended (an EOF at once).
  for (const std::string text : {"first\n", "second\n"}) {
    ChildProcess client({CONDUIT_BIN, "connect", "unix://" + path}, text);
    ASSERT_EQ(client.wait(bound), 0) << client.err();
    EXPECT_EQ(client.out(), text == "first\n" ? "banner\n" : "") << text;
  }
  ASSERT_TRUE(listener.wait_for_line("second", bound)) << listener.out();
  EXPECT_EQ(listener.out(), "first\nsecond\n");
  listener.signal(SIGTERM);
  EXPECT_EQ(listener.wait(bound), 0) << listener.err();
}

TEST(ConnectListen, ThroughTheService) {
  Service service;
  ChildProcess listener({CONDUIT_BIN, "listen", "--via", service.address, "127.0.0.1:0"}, "from the far side\n");
  auto url = listener.wait_for_err_line("listening tcp://", bound);
  ASSERT_TRUE(url) << listener.err();
  const std::string data = pattern(1 << 20);
  ChildProcess client({CONDUIT_BIN, "connect", "--via", service.address, *url}, data);
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_EQ(client.out(), "from the far side\n");
  ASSERT_EQ(listener.wait(bound), 0) << listener.err();
  EXPECT_TRUE(listener.out() == data) << "got " << listener.out().size() << " of " << data.size() << " bytes";
}

TEST(ConnectListen, ErrorsAreClear) {
  ChildProcess refused({CONDUIT_BIN, "connect", "127.0.0.1:" + free_port()});
  EXPECT_EQ(refused.wait(bound), 3);
  EXPECT_NE(refused.err().find("cannot connect to 127.0.0.1:"), std::string::npos) << refused.err();
  ChildProcess no_service({CONDUIT_BIN, "connect", "--via", "127.0.0.1:" + free_port(), "127.0.0.1:1"});
  EXPECT_EQ(no_service.wait(bound), 7) << no_service.err();
  ChildProcess bad({CONDUIT_BIN, "connect", "http://127.0.0.1:80"});
  EXPECT_EQ(bad.wait(bound), 2);
  EXPECT_NE(bad.err().find("unknown scheme 'http'"), std::string::npos) << bad.err();
  ChildProcess no_cert({CONDUIT_BIN, "listen", "tls://127.0.0.1:0"});
  EXPECT_EQ(no_cert.wait(bound), 2);
  EXPECT_NE(no_cert.err().find("needs --cert and --key"), std::string::npos) << no_cert.err();
  ChildProcess in_use_first({CONDUIT_BIN, "listen", "127.0.0.1:0"});
  auto url = in_use_first.wait_for_err_line("listening tcp://", bound);
  ASSERT_TRUE(url);
  ChildProcess in_use({CONDUIT_BIN, "listen", *url});
  EXPECT_EQ(in_use.wait(bound), 3) << in_use.err();
  in_use_first.signal(SIGTERM);
  in_use_first.wait(bound);
}

TEST(ConnectListen, UdpEachWayAndThroughTheService) {
  ChildProcess echo({CONDUIT_BIN, "udp-echo", "server", "--listen", "127.0.0.1:0"});
  auto url = echo.wait_for_line("listening ", bound);
  ASSERT_TRUE(url) << echo.err();
  // Each read of standard input is a datagram; the echo comes back; the
  // run ends half a second after the last one.
  ChildProcess client({CONDUIT_BIN, "connect", *url}, "one datagram\n");
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_EQ(client.out(), "one datagram\n");
  Service service;
  ChildProcess remote({CONDUIT_BIN, "connect", "--via", service.address, *url}, "from the service's host\n");
  ASSERT_EQ(remote.wait(bound), 0) << remote.err();
  EXPECT_EQ(remote.out(), "from the service's host\n");

  // listen answers the first sender: socat here.
  ChildProcess listener({CONDUIT_BIN, "listen", "udp://127.0.0.1:0"}, "to the sender\n");
  auto bound_url = listener.wait_for_err_line("listening udp://", bound);
  ASSERT_TRUE(bound_url) << listener.err();
  // (socat is waited on first: its input goes to it as it is waited on.)
  ChildProcess socat({"socat", "-T", "2", "-", "UDP:" + *bound_url}, "to the listener\n");
  EXPECT_EQ(socat.wait(bound), 0) << socat.err();
  EXPECT_EQ(socat.out(), "to the sender\n") << socat.err();
  ASSERT_EQ(listener.wait(bound), 0) << listener.err();
  EXPECT_EQ(listener.out(), "to the listener\n");

  // Nothing listening: the ICMP port unreachable is a refusal (3).
  echo.signal(SIGTERM);
  echo.wait(bound);
  ChildProcess refused({CONDUIT_BIN, "connect", *url}, "anyone?\n");
  EXPECT_EQ(refused.wait(bound), 3) << refused.err();
  ChildProcess keep({CONDUIT_BIN, "listen", "--keep", "udp://127.0.0.1:0"});
  EXPECT_EQ(keep.wait(bound), 2);
}
