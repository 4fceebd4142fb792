// The echo tools end to end, as processes, against each other and against
// socat, a peer this project did not write.
#include "support/child_process.hpp"
#include "support/loopback_ports.hpp"
#include "support/test_certificates.hpp"

#include <gtest/gtest.h>

#include <boost/asio.hpp>

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

using conduit::testing::ChildProcess;
using conduit::testing::free_port;
using conduit::testing::wait_until_listening;
using namespace std::chrono_literals;

namespace {

constexpr auto bound = 20s;

std::string payload(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131) % 251);
  return s;
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "conduit-cli-" + std::to_string(::getpid()) + "-" + name;
}

// A conduit echo server on an ephemeral port; its URL from its "listening" line.
struct EchoServer {
  ChildProcess process;
  std::string url;

  explicit EchoServer(std::vector<std::string> extra = {})
      : process([&] {
          std::vector<std::string> argv = {CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:0"};
          argv.insert(argv.end(), extra.begin(), extra.end());
          return argv;
        }()) {
    auto line = process.wait_for_line("listening ", bound);
    EXPECT_TRUE(line) << process.err();
    url = line.value_or("");
  }
  std::string port() const { return url.substr(url.rfind(':') + 1); }
  ~EchoServer() {
    process.signal(SIGTERM);
    process.wait(bound);
  }
};

#if defined(__SANITIZE_ADDRESS__)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif

/// For a test that measures a child's memory: under AddressSanitizer, a
/// small quarantine, so the figure is the program's and not ASan's store
/// of freed blocks (256 MiB by default). Children started from then on
/// inherit it.
void measure_memory_not_asan_quarantine() {
  const char* options = std::getenv("ASAN_OPTIONS");
  const std::string value =
      std::string(options ? options : "") + ":quarantine_size_mb=8:thread_local_quarantine_size_kb=64";
  ::setenv("ASAN_OPTIONS", value.c_str(), 1);
}

}  // namespace

TEST(EchoTools, ClientAndServerExchangeAMessage) {
  EchoServer server;
  ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", server.url, "--message", "hello, conduit"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_EQ(client.out(), "hello, conduit");
}

TEST(EchoTools, ManyRoundsOfLargeMessagesWithJsonStats) {
  EchoServer server({"--buffered"});
  ChildProcess client(
      {CONDUIT_BIN, "echo-client", "--connect", server.url, "--size", "102400", "--count", "200", "--json"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_NE(client.out().find("\"ok\":true"), std::string::npos) << client.out();
  EXPECT_NE(client.out().find("\"rounds\":200"), std::string::npos) << client.out();
  EXPECT_NE(client.out().find("\"bytes_received\":20480000"), std::string::npos) << client.out();
}

TEST(EchoTools, UnixSocketAndVerboseHexEvents) {
  const std::string path = temp_path("echo.sock");
  ChildProcess server({CONDUIT_BIN, "echo-server", "--listen", "unix://" + path, "-v"});
  ASSERT_TRUE(server.wait_for_line("listening unix://", bound)) << server.err();
  ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", "unix://" + path, "--stdin", "-v", "-x"}, "AB\n");
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  EXPECT_EQ(client.out(), "AB\n");
  EXPECT_NE(client.err().find("[client] connection_made"), std::string::npos) << client.err();
  EXPECT_NE(client.err().find("41 42 0a"), std::string::npos) << client.err();
  EXPECT_NE(client.err().find("[client] eof_received"), std::string::npos) << client.err();
  server.signal(SIGTERM);
  ASSERT_EQ(server.wait(bound), 0);
  EXPECT_NE(server.err().find("eof_received"), std::string::npos) << server.err();
}

TEST(EchoTools, ExitCodes) {
  ChildProcess bad_url({CONDUIT_BIN, "echo-client", "--connect", "tcp://localhost"});
  EXPECT_EQ(bad_url.wait(bound), 2);
  EXPECT_NE(bad_url.err().find("missing :PORT"), std::string::npos) << bad_url.err();

  ChildProcess no_subcommand({CONDUIT_BIN});
  EXPECT_EQ(no_subcommand.wait(bound), 2);

  ChildProcess refused({CONDUIT_BIN, "echo-client", "--connect", "tcp://127.0.0.1:" + free_port()});
  EXPECT_EQ(refused.wait(bound), 3);
  EXPECT_NE(refused.err().find("Connection refused"), std::string::npos) << refused.err();

  // Accepted by the kernel's backlog, never answered: a timeout.
  boost::asio::io_context ctx;
  boost::asio::ip::tcp::acceptor silent(ctx, {boost::asio::ip::make_address("127.0.0.1"), 0});
  ChildProcess timed_out({CONDUIT_BIN, "echo-client", "--connect",
                          "tcp://127.0.0.1:" + std::to_string(silent.local_endpoint().port()), "--timeout", "0.3"});
  EXPECT_EQ(timed_out.wait(bound), 4);
  EXPECT_NE(timed_out.err().find("timed out"), std::string::npos) << timed_out.err();

  ChildProcess in_use(
      {CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:" + std::to_string(silent.local_endpoint().port())});
  EXPECT_EQ(in_use.wait(bound), 3);
  EXPECT_NE(in_use.err().find("cannot listen"), std::string::npos) << in_use.err();

  ChildProcess unknown({CONDUIT_BIN, "echo-servre", "--listen", "tcp://127.0.0.1:0"});
  EXPECT_EQ(unknown.wait(bound), 2);
  EXPECT_NE(unknown.err().find("unknown subcommand 'echo-servre'"), std::string::npos) << unknown.err();

  for (const char* seconds : {"nan", "inf", "1e308", "-1", "0"}) {
    ChildProcess bad({CONDUIT_BIN, "echo-client", "--connect", "tcp://127.0.0.1:1", "--timeout", seconds});
    EXPECT_EQ(bad.wait(bound), 2) << seconds;
    EXPECT_NE(bad.err().find("a number of seconds from 0.001 to 31536000"), std::string::npos) << bad.err();
    EXPECT_LT(bad.err().size(), 200u) << "no 300-digit numbers: " << bad.err();
  }

  // Flags that do not apply are refused, not ignored.
  const auto& certs = conduit::testing::test_certificates();
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"echo-client", "--connect", "tcp://127.0.0.1:1", "--cafile", certs.ca},
        {"echo-client", "--connect", "tcp://127.0.0.1:1", "--insecure"},
        {"echo-server", "--listen", "tcp://127.0.0.1:0", "--cert", certs.server_cert, "--key", certs.server_key},
        {"echo-client", "--connect", "tcp://127.0.0.1:1", "--token-file", certs.ca},
        {"run-subprocess", "--via-cafile", certs.ca, "--", "true"}}) {
    std::vector<std::string> argv = {CONDUIT_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    ChildProcess refused_flag(argv);
    EXPECT_EQ(refused_flag.wait(bound), 2) << args[0] << " " << args.back();
    EXPECT_NE(refused_flag.err().find("applies"), std::string::npos) << refused_flag.err();
  }
  ChildProcess cert_without_key(
      {CONDUIT_BIN, "echo-client", "--connect", "tls://127.0.0.1:1", "--cert", certs.client_cert});
  EXPECT_EQ(cert_without_key.wait(bound), 2);
  EXPECT_NE(cert_without_key.err().find("needs --key (the file holds no private key)"), std::string::npos)
      << cert_without_key.err();

  ChildProcess serve_json({CONDUIT_BIN, "serve", "--json"});
  EXPECT_EQ(serve_json.wait(bound), 2) << "refused, not silently ignored";

  ChildProcess help({CONDUIT_BIN, "echo-server", "--help"});
  EXPECT_EQ(help.wait(bound), 0);
  EXPECT_NE(help.out().find("Examples:"), std::string::npos);

  ChildProcess version({CONDUIT_BIN, "--version"});
  EXPECT_EQ(version.wait(bound), 0);
  EXPECT_FALSE(version.out().empty());
}

TEST(EchoTools, MismatchIsExitCodeFive) {
  // An "echo" that upper-cases: tr flushes at EOF, so use --stdin (half-close).
  const std::string port = free_port();
  ChildProcess upper({"socat", "TCP-LISTEN:" + port + ",bind=127.0.0.1,reuseaddr,fork", "EXEC:tr a-z A-Z"});
  ASSERT_TRUE(wait_until_listening(port, bound)) << upper.err();
  ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", "tcp://127.0.0.1:" + port, "--stdin"}, "abc\n");
  EXPECT_EQ(client.wait(bound), 5) << client.err();
  EXPECT_NE(client.err().find("differs"), std::string::npos) << client.err();
  upper.signal(SIGTERM);
  upper.wait(bound);
}

TEST(EchoTools, StdinIsStreamedUnderFlowControlAndHonoursTheTimeout) {
  measure_memory_not_asan_quarantine();
  EchoServer server;
  // Endless input: it connects first, sends as it reads, and stops at the
  // timeout, its memory bounded by the transport's watermarks.
  ChildProcess endless({"sh", "-c",
                        std::string("exec ") + CONDUIT_BIN + " echo-client --connect " + server.url +
                            " --stdin --quiet --timeout 1 < /dev/zero"});
  EXPECT_EQ(endless.wait(bound), 4) << endless.err();
  EXPECT_NE(endless.err().find("timed out after 1 s"), std::string::npos) << endless.err();
  EXPECT_LT(endless.peak_rss_kib(), 300u * 1024) << "read more than it sent";

  // 32 MiB through a pipe comes back whole and in order.
  std::string input(32 << 20, '\0');
  for (std::size_t i = 0; i < input.size(); ++i) input[i] = static_cast<char>((i * 2654435761u) >> 13);
  ChildProcess piped({CONDUIT_BIN, "echo-client", "--connect", server.url, "--stdin"}, input);
  ASSERT_EQ(piped.wait(bound), 0) << piped.err();
  EXPECT_TRUE(piped.out() == input) << "the echo differs (" << piped.out().size() << " bytes)";
}

TEST(EchoTools, LargeSizesAreCheckedAsTheyArriveInBoundedMemory) {
  measure_memory_not_asan_quarantine();
  EchoServer server;
  ChildProcess big({CONDUIT_BIN, "echo-client", "--connect", server.url, "--size", "400000000", "--json"});
  ASSERT_EQ(big.wait(bound), 0) << big.err();
  EXPECT_NE(big.out().find("\"bytes_received\":400000000"), std::string::npos) << big.out();
  // The payload is generated as it goes and the echo compared as it comes:
  // far below the 800 MB that holding payload and echo took. (ASan's shadow
  // and allocator add their own; measured there: 240 MiB under load.)
  EXPECT_LT(big.peak_rss_kib(), (sanitized ? 400u : 200u) * 1024);
}

TEST(Interop, R2_SocatClientGetsEverythingBackAfterHalfClose) {
  EchoServer server;
  const std::string data = payload(1024 * 1024);
  // socat sends stdin, shuts down its write side at stdin's EOF, and waits
  // (-t) for the rest of the echo: the server must flush all of it first.
  ChildProcess socat({"socat", "-t", "10", "-", "TCP:127.0.0.1:" + server.port()}, data);
  ASSERT_EQ(socat.wait(bound), 0) << socat.err();
  EXPECT_EQ(socat.out().size(), data.size());
  EXPECT_TRUE(socat.out() == data);
}

TEST(Interop, ConduitClientAgainstSocatEchoServer) {
  const std::string port = free_port();
  // 32 KiB rounds: see the Unix-socket test below for why socat PIPE needs them.
  ChildProcess socat({"socat", "TCP-LISTEN:" + port + ",bind=127.0.0.1,reuseaddr,fork", "PIPE"});
  ASSERT_TRUE(wait_until_listening(port, bound)) << socat.err();
  ChildProcess rounds({CONDUIT_BIN, "echo-client", "--connect", "tcp://127.0.0.1:" + port, "--size", "32768", "--count",
                       "100", "--json"});
  ASSERT_EQ(rounds.wait(bound), 0) << rounds.err();
  EXPECT_NE(rounds.out().find("\"rounds\":100"), std::string::npos) << rounds.out();
  ChildProcess half_close({CONDUIT_BIN, "echo-client", "--connect", "tcp://127.0.0.1:" + port, "--stdin"},
                          "half-close through socat\n");
  ASSERT_EQ(half_close.wait(bound), 0) << half_close.err();
  EXPECT_EQ(half_close.out(), "half-close through socat\n");
  socat.signal(SIGTERM);
  socat.wait(bound);
}

TEST(Interop, ConduitClientAgainstSocatUnixEchoServer) {
  const std::string path = temp_path("socat.sock");
  ::unlink(path.c_str());
  ChildProcess socat({"socat", "UNIX-LISTEN:" + path + ",fork", "PIPE"});
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (::access(path.c_str(), F_OK) != 0 && std::chrono::steady_clock::now() < deadline) {
    socat.wait(10ms);  // bounded wait for the socket file to appear
  }
  // socat's PIPE echo is one process writing into and reading from its own
  // pipe with blocking writes: a round larger than the pipe (64 KiB, less
  // when its pages are partly read) can leave it blocked on a full pipe that
  // only it would drain. 32 KiB rounds always fit.
  ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", "unix://" + path, "--size", "32768", "--count", "50"});
  ASSERT_EQ(client.wait(bound), 0) << client.err();
  socat.signal(SIGTERM);
  socat.wait(bound);
  ::unlink(path.c_str());
}

// ---- TLS ----------------------------------------------------------------------

TEST(EchoTools, TlsEchoVerifiesTheServer) {
  const auto& certs = conduit::testing::test_certificates();
  EchoServer server({"--listen", "tls://127.0.0.1:0", "--cert", certs.server_cert, "--key", certs.server_key});
  // The first listener is tcp://; the TLS one prints its own line.
  auto tls_line = server.process.wait_for_line("listening tls://", bound);
  ASSERT_TRUE(tls_line) << server.process.err();
  const std::string url = "tls://localhost:" + tls_line->substr(tls_line->rfind(':') + 1);

  ChildProcess trusted({CONDUIT_BIN, "echo-client", "--connect", url, "--cafile", certs.ca, "--message", "secret"});
  ASSERT_EQ(trusted.wait(bound), 0) << trusted.err();
  EXPECT_EQ(trusted.out(), "secret");

  ChildProcess untrusted({CONDUIT_BIN, "echo-client", "--connect", url, "--cafile", certs.other_ca});
  EXPECT_EQ(untrusted.wait(bound), 3);
  EXPECT_NE(untrusted.err().find("certificate verify failed"), std::string::npos) << untrusted.err();

  ChildProcess insecure(
      {CONDUIT_BIN, "echo-client", "--connect", url, "--insecure", "--size", "100000", "--count", "5"});
  EXPECT_EQ(insecure.wait(bound), 0) << insecure.err();
}

TEST(EchoTools, TlsEchoServerLogsNoWarningPerConnection) {
  const auto& certs = conduit::testing::test_certificates();
  ChildProcess server({CONDUIT_BIN, "echo-server", "--listen", "tls://127.0.0.1:0", "--cert", certs.server_cert,
                       "--key", certs.server_key});
  auto url = server.wait_for_line("listening ", bound);
  ASSERT_TRUE(url) << server.err();
  for (int i = 0; i < 3; ++i) {
    ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", *url, "--cafile", certs.ca, "--message", "tls"});
    ASSERT_EQ(client.wait(bound), 0) << client.err();
  }
  server.signal(SIGTERM);
  EXPECT_EQ(server.wait(bound), 0);
  EXPECT_EQ(server.err().find("has no effect"), std::string::npos) << server.err();
}

TEST(EchoTools, TlsListenerNeedsACertificate) {
  ChildProcess server({CONDUIT_BIN, "echo-server", "--listen", "tls://127.0.0.1:0"});
  EXPECT_EQ(server.wait(bound), 2);
  EXPECT_NE(server.err().find("needs --cert and --key"), std::string::npos) << server.err();
}

TEST(EchoTools, TlsInteropWithOpensslSClient) {
  const auto& certs = conduit::testing::test_certificates();
  ChildProcess server({CONDUIT_BIN, "echo-server", "--listen", "tls://127.0.0.1:0", "--cert", certs.server_cert,
                       "--key", certs.server_key});
  auto line = server.wait_for_line("listening tls://", bound);
  ASSERT_TRUE(line) << server.err();
  const std::string port = line->substr(line->rfind(':') + 1);
  ChildProcess s_client(
      {"openssl", "s_client", "-connect", "127.0.0.1:" + port, "-CAfile", certs.ca, "-verify_return_error", "-quiet"},
      "through openssl\n");
  ASSERT_TRUE(s_client.wait_for_line("through openssl", bound)) << s_client.err();
  s_client.signal(SIGTERM);
  s_client.wait(bound);
  server.signal(SIGTERM);
  EXPECT_EQ(server.wait(bound), 0);
}

// ---- through the service (--via) ----------------------------------------------

namespace {

struct Service {
  ChildProcess process;
  std::string address;
  explicit Service(std::vector<std::string> extra = {})
      : process([&] {
          std::vector<std::string> argv = {CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0"};
          argv.insert(argv.end(), extra.begin(), extra.end());
          return argv;
        }()) {
    auto line = process.wait_for_line("listening ", bound);
    EXPECT_TRUE(line) << process.err();
    address = line.value_or("");
  }
  ~Service() {
    process.signal(SIGTERM);
    process.wait(bound);
  }
};

}  // namespace

TEST(EchoTools, ViaTheServiceGivesTheSameOutputAndExitCodes) {
  EchoServer server;
  Service service;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--message", "same either way"}, {"--size", "300000", "--count", "20", "--quiet"}}) {
    std::vector<std::string> direct = {CONDUIT_BIN, "echo-client", "--connect", server.url};
    direct.insert(direct.end(), args.begin(), args.end());
    std::vector<std::string> via = direct;
    via.insert(via.begin() + 2, {"--via", service.address});
    ChildProcess a(direct), b(via);
    ASSERT_EQ(a.wait(bound), 0) << a.err();
    ASSERT_EQ(b.wait(bound), 0) << b.err();
    EXPECT_EQ(a.out(), b.out());
  }
  ChildProcess stdin_via({CONDUIT_BIN, "echo-client", "--via", service.address, "--connect", server.url, "--stdin"},
                         "half-closed through the service\n");
  ASSERT_EQ(stdin_via.wait(bound), 0) << stdin_via.err();
  EXPECT_EQ(stdin_via.out(), "half-closed through the service\n");

  ChildProcess refused(
      {CONDUIT_BIN, "echo-client", "--via", service.address, "--connect", "tcp://127.0.0.1:" + free_port()});
  EXPECT_EQ(refused.wait(bound), 3);
  EXPECT_NE(refused.err().find("Connection refused"), std::string::npos) << refused.err();
}

TEST(EchoTools, ServiceTokenIsEnforced) {
  const std::string token_file = temp_path("token");
  std::ofstream(token_file) << "s3cret-token-0123456789\n";
  const std::string wrong_file = temp_path("wrong-token");
  std::ofstream(wrong_file) << "not-it-0123456789abcdef\n";
  EchoServer server;
  Service service({"--token-file", token_file});
  ChildProcess without({CONDUIT_BIN, "echo-client", "--via", service.address, "--connect", server.url});
  EXPECT_EQ(without.wait(bound), 3);
  EXPECT_NE(without.err().find("missing 'authorization: Bearer TOKEN'"), std::string::npos) << without.err();
  ChildProcess wrong(
      {CONDUIT_BIN, "echo-client", "--via", service.address, "--token-file", wrong_file, "--connect", server.url});
  EXPECT_EQ(wrong.wait(bound), 3);
  EXPECT_NE(wrong.err().find("bad token"), std::string::npos) << wrong.err();
  ChildProcess right({CONDUIT_BIN, "echo-client", "--via", service.address, "--token-file", token_file, "--connect",
                      server.url, "--message", "ok"});
  EXPECT_EQ(right.wait(bound), 0) << right.err();

  ChildProcess exposed({CONDUIT_BIN, "serve", "--listen", "0.0.0.0:0"});
  EXPECT_EQ(exposed.wait(bound), 2);
  EXPECT_NE(exposed.err().find("needs authentication"), std::string::npos) << exposed.err();
  // A guessable token is refused at start.
  const std::string short_file = temp_path("short-token");
  std::ofstream(short_file) << "fifteen-bytes!!\n";
  ChildProcess short_token({CONDUIT_BIN, "serve", "--listen", "127.0.0.1:0", "--token-file", short_file});
  EXPECT_EQ(short_token.wait(bound), 2);
  EXPECT_NE(short_token.err().find("has 15 bytes; at least 16"), std::string::npos) << short_token.err();
  ::unlink(short_file.c_str());
  ::unlink(token_file.c_str());
  ::unlink(wrong_file.c_str());
}

TEST(EchoTools, ViaTakesHostPortWithADefaultPortAndRefusesURLs) {
  Service service;
  // HOST alone is port 50051: where nothing listens there, the probe
  // cannot reach the service (7), naming the address it tried.
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket probe(io);
  boost::system::error_code in_use;
  probe.connect({boost::asio::ip::make_address("127.0.0.1"), 50051}, in_use);
  if (in_use) {
    ChildProcess host_alone({CONDUIT_BIN, "health", "--via", "127.0.0.1", "--timeout", "0.5"});
    EXPECT_EQ(host_alone.wait(bound), 7);
    EXPECT_NE(host_alone.err().find("cannot reach the service at 127.0.0.1:50051"), std::string::npos)
        << host_alone.err();
  }
  // (A name would do as well; under LeakSanitizer gRPC's c-ares resolver
  // leaks 10 bytes a process, so the forms are checked with addresses.)
  ChildProcess with_port({CONDUIT_BIN, "health", "--via", service.address});
  EXPECT_EQ(with_port.wait(bound), 0) << with_port.err();
  ChildProcess empty({CONDUIT_BIN, "health", "--via", ""});
  EXPECT_EQ(empty.wait(bound), 2) << empty.err();
  for (const char* bad : {"http://127.0.0.1:50051", "::1:50051", "127.0.0.1:http", "127.0.0.1:0"}) {
    SCOPED_TRACE(bad);
    ChildProcess health({CONDUIT_BIN, "health", "--via", bad});
    EXPECT_EQ(health.wait(bound), 2) << "bad arguments, as in every tool";
    ChildProcess client({CONDUIT_BIN, "echo-client", "--via", bad, "--connect", "tcp://127.0.0.1:1"});
    EXPECT_EQ(client.wait(bound), 2) << client.err();
    EXPECT_NE(client.err().find("--via"), std::string::npos) << client.err();
  }
  ChildProcess url({CONDUIT_BIN, "echo-client", "--via", "http://127.0.0.1:50051", "--connect", "tcp://127.0.0.1:1"});
  EXPECT_EQ(url.wait(bound), 2);
  EXPECT_NE(url.err().find("the service speaks gRPC over tcp:// or unix:, not 'http'"), std::string::npos) << url.err();
}

TEST(EchoTools, AMisspeltOptionIsNamed) {
  ChildProcess client({CONDUIT_BIN, "echo-client", "--conect", "tcp://127.0.0.1:1"});
  EXPECT_EQ(client.wait(bound), 2);
  EXPECT_NE(client.err().find("unknown option '--conect'"), std::string::npos) << client.err();
  EXPECT_EQ(client.err().find("is required"), std::string::npos) << client.err();
  ChildProcess health({CONDUIT_BIN, "health", "--vai", "127.0.0.1:1"});
  EXPECT_EQ(health.wait(bound), 2);
  EXPECT_NE(health.err().find("unknown option '--vai'"), std::string::npos) << health.err();
}

TEST(EchoTools, HealthProbeExitCodes) {
  Service service;
  ChildProcess serving({CONDUIT_BIN, "health", "--via", service.address});
  EXPECT_EQ(serving.wait(bound), 0) << serving.err();
  EXPECT_EQ(serving.out(), "status: SERVING\n");
  ChildProcess named({CONDUIT_BIN, "health", "--via", service.address, "--service", "conduit.v1.Conduit"});
  EXPECT_EQ(named.wait(bound), 0) << named.err();
  EXPECT_EQ(named.out(), "status: SERVING\n");
  ChildProcess unknown({CONDUIT_BIN, "health", "--via", service.address, "--service", "no.such.Service"});
  EXPECT_EQ(unknown.wait(bound), 1) << "the Check failed: a failed health check";
  EXPECT_NE(unknown.err().find("no service named 'no.such.Service'"), std::string::npos) << unknown.err();
  ChildProcess nobody({CONDUIT_BIN, "health", "--via", "127.0.0.1:" + free_port(), "--timeout", "0.5"});
  EXPECT_EQ(nobody.wait(bound), 7);
  // Bad arguments are 2, as in every tool.
  ChildProcess bad_timeout({CONDUIT_BIN, "health", "--via", service.address, "--timeout", "nan"});
  EXPECT_EQ(bad_timeout.wait(bound), 2) << bad_timeout.err();
  ChildProcess no_address({CONDUIT_BIN, "health"});
  EXPECT_EQ(no_address.wait(bound), 2) << no_address.err();

  // A --via to a port where nothing listens says so.
  ChildProcess unreachable({CONDUIT_BIN, "echo-client", "--via", "127.0.0.1:" + free_port(), "--connect",
                            "tcp://127.0.0.1:1", "--timeout", "5"});
  EXPECT_EQ(unreachable.wait(bound), 7) << "a code of its own: not a refused target (3)";
  EXPECT_NE(unreachable.err().find("cannot reach the service at 127.0.0.1:"), std::string::npos) << unreachable.err();
  // The same in every tool.
  const std::string nowhere = "127.0.0.1:" + free_port();
  for (const std::vector<std::string>& argv :
       {std::vector<std::string>{CONDUIT_BIN, "echo-server", "--via", nowhere, "--listen", "tcp://127.0.0.1:0"},
        {CONDUIT_BIN, "udp-echo", "client", "--via", nowhere, "--connect", "udp://127.0.0.1:9", "--count", "1"},
        {CONDUIT_BIN, "proxy", "--via", nowhere, "--listen", "tcp://127.0.0.1:0", "--upstream", "tcp://127.0.0.1:9"},
        {CONDUIT_BIN, "run-subprocess", "--via", nowhere, "--", "/bin/true"}}) {
    ChildProcess tool(argv);
    EXPECT_EQ(tool.wait(bound), 7) << argv[1] << ": " << tool.err();
    EXPECT_NE(tool.err().find("cannot reach the service"), std::string::npos) << argv[1] << ": " << tool.err();
  }
}

TEST(EchoTools, ServiceLimitsIdleTimeoutAndMessageSize) {
  EchoServer server;
  Service service({"--idle-timeout", "1", "--max-message-size", "256", "--allow-exec-any"});
  // A listening server waits by design: the idle timeout leaves it alone.
  ChildProcess listener({CONDUIT_BIN, "echo-server", "--via", service.address, "--listen", "tcp://127.0.0.1:0"});
  auto listening = listener.wait_for_line("listening ", bound);
  ASSERT_TRUE(listening) << listener.err();
  // A session with nothing happening is closed: the child is killed (128+9).
  ChildProcess idle({CONDUIT_BIN, "run-subprocess", "--via", service.address, "--", "sh", "-c", "sleep 30"});
  EXPECT_EQ(idle.wait(bound), 128 + SIGKILL) << idle.err();
  ChildProcess late({CONDUIT_BIN, "echo-client", "--connect", *listening, "--message", "after the idle timeout"});
  EXPECT_EQ(late.wait(bound), 0) << late.err() << listener.err();
  listener.signal(SIGTERM);
  EXPECT_EQ(listener.wait(bound), 0) << listener.err();
  // A write larger than --max-message-size goes in commands under it: what
  // works directly works through the service.
  ChildProcess big(
      {CONDUIT_BIN, "echo-client", "--via", service.address, "--connect", server.url, "--size", "5000000"});
  EXPECT_EQ(big.wait(bound), 0) << big.err();
  std::string input(6 << 20, 'v');
  ChildProcess big_stdin(
      {CONDUIT_BIN, "echo-client", "--via", service.address, "--connect", server.url, "--stdin", "--quiet"}, input);
  EXPECT_EQ(big_stdin.wait(bound), 0) << big_stdin.err();
  ChildProcess fine({CONDUIT_BIN, "echo-client", "--via", service.address, "--connect", server.url, "--size", "20000",
                     "--count", "5"});
  EXPECT_EQ(fine.wait(bound), 0) << fine.err() << " (the service still serves)";
}

TEST(EchoTools, ServiceMutualTls) {
  const auto& certs = conduit::testing::test_certificates();
  EchoServer server;
  Service service({"--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--tls-client-ca", certs.ca});
  ChildProcess with_cert({CONDUIT_BIN, "echo-client", "--via", service.address, "--via-cafile", certs.ca, "--via-cert",
                          certs.client_cert, "--via-key", certs.client_key, "--connect", server.url, "--message",
                          "mtls"});
  EXPECT_EQ(with_cert.wait(bound), 0) << with_cert.err();
  EXPECT_EQ(with_cert.out(), "mtls");
  ChildProcess without_cert(
      {CONDUIT_BIN, "echo-client", "--via", service.address, "--via-cafile", certs.ca, "--connect", server.url});
  // The service's handshake refuses them: the service cannot be reached (7).
  EXPECT_EQ(without_cert.wait(bound), 7) << "no client certificate: refused";
  ChildProcess plaintext({CONDUIT_BIN, "echo-client", "--via", service.address, "--connect", server.url});
  EXPECT_EQ(plaintext.wait(bound), 7);
  ChildProcess health({CONDUIT_BIN, "health", "--via", service.address, "--via-cafile", certs.ca, "--via-cert",
                       certs.client_cert, "--via-key", certs.client_key});
  EXPECT_EQ(health.wait(bound), 0) << health.err();

  ChildProcess exposed({CONDUIT_BIN, "serve", "--listen", "0.0.0.0:0", "--tls-cert", certs.server_cert, "--tls-key",
                        certs.server_key, "--tls-client-ca", certs.ca});
  EXPECT_TRUE(exposed.wait_for_line("listening ", bound)) << "mTLS counts as authentication: " << exposed.err();
  exposed.signal(SIGTERM);
  exposed.wait(bound);
}

TEST(EchoTools, EchoServerViaTheServiceServesTcpUnixAndTls) {
  const auto& certs = conduit::testing::test_certificates();
  Service service({"--allow-unix", ::testing::TempDir()});
  const std::string path = temp_path("via-echo.sock");
  ChildProcess server({CONDUIT_BIN, "echo-server", "--via", service.address, "--listen", "tcp://127.0.0.1:0",
                       "--listen", "unix://" + path, "--listen", "tls://127.0.0.1:0", "--cert", certs.server_cert,
                       "--key", certs.server_key, "--json"});
  std::string tcp, unix_url, tls;
  for (int i = 0; i < 3; ++i) {
    auto line = server.wait_for_line("listening ", bound);
    ASSERT_TRUE(line) << server.err();
    (line->rfind("tcp://", 0) == 0 ? tcp : line->rfind("tls://", 0) == 0 ? tls : unix_url) = *line;
  }
  EXPECT_EQ(unix_url, "unix://" + path);

  // Every client gets what a direct echo server would give it.
  ChildProcess rounds({CONDUIT_BIN, "echo-client", "--connect", tcp, "--size", "300000", "--count", "20", "--quiet"});
  EXPECT_EQ(rounds.wait(bound), 0) << rounds.err();
  ChildProcess over_unix({CONDUIT_BIN, "echo-client", "--connect", unix_url, "--message", "over a Unix path"});
  EXPECT_EQ(over_unix.wait(bound), 0) << over_unix.err();
  EXPECT_EQ(over_unix.out(), "over a Unix path");
  ChildProcess over_tls({CONDUIT_BIN, "echo-client", "--connect", tls, "--cafile", certs.ca, "--message", "over TLS"});
  EXPECT_EQ(over_tls.wait(bound), 0) << over_tls.err();
  EXPECT_EQ(over_tls.out(), "over TLS");
  // socat half-closes after 1 MiB: the echo comes back whole before the FIN.
  const std::string data = payload(1024 * 1024);
  ChildProcess socat({"socat", "-t", "10", "-", "TCP:127.0.0.1:" + tcp.substr(tcp.rfind(':') + 1)}, data);
  ASSERT_EQ(socat.wait(bound), 0) << socat.err();
  EXPECT_TRUE(socat.out() == data) << socat.out().size() << " of " << data.size() << " bytes came back";

  server.signal(SIGTERM);
  EXPECT_EQ(server.wait(bound), 0) << server.err();
  EXPECT_NE(
      server.out().find("\"connections\":4,\"bytes_echoed\":" + std::to_string(20 * 300000 + 16 + 8 + data.size())),
      std::string::npos)
      << server.out();
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "the service removes its socket file when the server closes";

  // A port in use on the service's host: exit code 3, the service's reason.
  boost::asio::io_context ctx;
  boost::asio::ip::tcp::acceptor taken(ctx, {boost::asio::ip::make_address("127.0.0.1"), 0});
  ChildProcess in_use({CONDUIT_BIN, "echo-server", "--via", service.address, "--listen",
                       "tcp://127.0.0.1:" + std::to_string(taken.local_endpoint().port())});
  EXPECT_EQ(in_use.wait(bound), 3);
  EXPECT_NE(in_use.err().find("Address already in use"), std::string::npos) << in_use.err();
}

TEST(EchoTools, ExitAfterStopsOnceNConnectionsAreServed) {
  ChildProcess server({CONDUIT_BIN, "echo-server", "--listen", "tcp://127.0.0.1:0", "--exit-after", "2", "--json"});
  auto url = server.wait_for_line("listening ", bound);
  ASSERT_TRUE(url) << server.err();
  for (int i = 0; i < 2; ++i) {
    ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", *url, "--message", "one of two"});
    EXPECT_EQ(client.wait(bound), 0) << client.err();
  }
  EXPECT_EQ(server.wait(bound), 0) << "stops by itself: " << server.err();
  EXPECT_NE(server.out().find("{\"connections\":2,\"bytes_echoed\":20,"), std::string::npos) << server.out();
}

TEST(EchoTools, ServersViaTheServiceEndWhenItGoesAway) {
  Service service;
  ChildProcess echo({CONDUIT_BIN, "echo-server", "--via", service.address, "--listen", "tcp://127.0.0.1:0"});
  ChildProcess udp({CONDUIT_BIN, "udp-echo", "server", "--via", service.address, "--listen", "udp://127.0.0.1:0"});
  ASSERT_TRUE(echo.wait_for_line("listening ", bound)) << echo.err();
  ASSERT_TRUE(udp.wait_for_line("listening ", bound)) << udp.err();
  service.process.signal(SIGKILL);
  EXPECT_EQ(echo.wait(bound), 1) << "not left serving nothing";
  EXPECT_NE(echo.err().find("the session with the service broke off"), std::string::npos) << echo.err();
  EXPECT_EQ(udp.wait(bound), 1);
  EXPECT_NE(udp.err().find("the session with the service broke off"), std::string::npos) << udp.err();
}

// One address syntax in every tool (issue 20): SCHEME://HOST:PORT,
// HOST:PORT for the tool's own scheme, unix:/PATH and unix:///PATH; serve
// --listen and --via take the same, and every tool refuses the same things
// with the same words.
TEST(EchoTools, EveryToolTakesOneAddressSyntax) {
  const std::string path = temp_path("one-syntax.sock");
  ChildProcess unix_server({CONDUIT_BIN, "echo-server", "--listen", "unix:" + path});
  ASSERT_TRUE(unix_server.wait_for_line("listening unix://", bound)) << unix_server.err();
  ChildProcess tcp_server({CONDUIT_BIN, "echo-server", "--listen", "127.0.0.1:0"});
  auto line = tcp_server.wait_for_line("listening tcp://", bound);
  ASSERT_TRUE(line) << tcp_server.err();
  const std::string host_port = *line;  // what follows "listening tcp://"
  for (const std::string& target : {"unix:" + path, "unix://" + path, host_port, "tcp://" + host_port}) {
    SCOPED_TRACE(target);
    ChildProcess client({CONDUIT_BIN, "echo-client", "--connect", target, "--message", "one"});
    EXPECT_EQ(client.wait(bound), 0) << client.err();
  }
  ChildProcess udp({CONDUIT_BIN, "udp-echo", "server", "--listen", "127.0.0.1:0"});
  EXPECT_TRUE(udp.wait_for_line("listening udp://127.0.0.1:", bound)) << udp.err();
  ChildProcess proxy({CONDUIT_BIN, "proxy", "--listen", "127.0.0.1:0", "--upstream", host_port});
  auto proxied = proxy.wait_for_line("listening tcp://", bound);
  ASSERT_TRUE(proxied) << proxy.err();
  ChildProcess through({CONDUIT_BIN, "echo-client", "--connect", *proxied});
  EXPECT_EQ(through.wait(bound), 0) << through.err();

  Service service;  // serve --listen 127.0.0.1:0
  ChildProcess url_form({CONDUIT_BIN, "serve", "--listen", "tcp://127.0.0.1:0"});
  EXPECT_TRUE(url_form.wait_for_line("listening 127.0.0.1:", bound)) << url_form.err();
  ChildProcess via({CONDUIT_BIN, "echo-client", "--via", "tcp://" + service.address, "--connect", host_port});
  EXPECT_EQ(via.wait(bound), 0) << via.err();

  // The same refusals, in the same words, from every tool.
  const std::vector<std::vector<std::string>> tools = {{"echo-server", "--listen"},
                                                       {"echo-client", "--connect"},
                                                       {"proxy", "--upstream", "127.0.0.1:1", "--listen"},
                                                       {"serve", "--listen"}};
  for (const auto& [bad, words] :
       std::vector<std::pair<std::string, std::string>>{{"http://127.0.0.1:80", "unknown scheme 'http'"},
                                                        {"127.0.0.1", "missing :PORT"},
                                                        {"::1:80", "write IPv6 addresses in brackets"},
                                                        {path, "a Unix socket is unix:" + path},
                                                        {"unix:", "the unix socket path is empty"}}) {
    for (auto argv : tools) {
      SCOPED_TRACE(argv[0] + " " + bad);
      argv.insert(argv.begin(), CONDUIT_BIN);
      argv.push_back(bad);
      ChildProcess tool(argv);
      EXPECT_EQ(tool.wait(bound), 2) << tool.err();
      EXPECT_NE(tool.err().find(words), std::string::npos) << tool.err();
    }
  }
  for (auto* process : {&unix_server, &tcp_server, &udp, &proxy, &url_form}) process->signal(SIGTERM);
  for (auto* process : {&unix_server, &tcp_server, &udp, &proxy, &url_form}) process->wait(bound);
  ::unlink(path.c_str());
}
