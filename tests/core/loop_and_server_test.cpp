// SPEC L1-L5, L7 and R3: the loop's connection makers and Server.
#include "support/recording_protocol.hpp"

#include <conduit/errors.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

using namespace conduit;
using namespace conduit::testing;

namespace {

// A name that resolves to ::1 then 127.0.0.1 only where CTest runs these
// tests in a mount namespace with its own /etc/hosts (tests/CMakeLists.txt).
constexpr const char* dual_stack_name = "conduit-dual.test";

std::shared_ptr<Server> make_server(EventLoop& loop, ProtocolFactory factory, std::vector<std::string> hosts,
                                    ServerOptions options = {}) {
  std::shared_ptr<Server> server;
  std::exception_ptr error;
  bool done = false;
  loop.create_server(std::move(factory), std::move(hosts), 0, options,
                     [&](std::exception_ptr e, std::shared_ptr<Server> s) {
                       error = e;
                       server = s;
                       done = true;
                     });
  run_until(loop, [&] { return done; });
  if (error) std::rethrow_exception(error);
  return server;
}

struct ConnectResult {
  std::exception_ptr error;
  std::shared_ptr<Transport> transport;
  std::shared_ptr<RecordingProtocol> protocol;
};

ConnectResult connect(EventLoop& loop, const std::string& host, std::uint16_t port, ConnectOptions options = {}) {
  ConnectResult r;
  bool done = false;
  loop.create_connection([] { return std::make_shared<RecordingProtocol>(); }, host, port, std::move(options),
                         [&](std::exception_ptr e, std::shared_ptr<Transport> t, std::shared_ptr<RecordingProtocol> p) {
                           r = {e, t, p};
                           done = true;
                         });
  run_until(loop, [&] { return done; });
  return r;
}

std::uint16_t free_port() {
  asio::io_context ctx;
  asio::ip::tcp::acceptor a(ctx, {asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();  // closed on return: nothing listens there
}

bool resolves_to_both_families(const char* name) {
  asio::io_context ctx;
  asio::ip::tcp::resolver resolver(ctx);
  boost::system::error_code ec;
  auto results = resolver.resolve(name, "1", ec);
  bool v4 = false, v6 = false;
  if (!ec) {
    for (const auto& e : results) (e.endpoint().address().is_v4() ? v4 : v6) = true;
  }
  return v4 && v6;
}

/// A server-side protocol that echoes and closes after the peer's EOF,
/// sending back everything first (SPEC R2).
class EchoProtocol : public Protocol {
 public:
  void connection_made(std::shared_ptr<Transport> t) override { transport_ = std::move(t); }
  void data_received(std::span<const std::byte> data) override { transport_->write(data); }
  bool eof_received() override {
    transport_->close();
    return true;
  }
  void connection_lost(std::exception_ptr) override { transport_.reset(); }

 private:
  std::shared_ptr<Transport> transport_;
};

}  // namespace

TEST(LoopMethods, L1_SingleAddressRefusedGivesThatError) {
  EventLoop loop;
  auto r = connect(loop, "127.0.0.1", free_port());
  ASSERT_TRUE(r.error);
  EXPECT_EQ(error_code_of(r.error), std::errc::connection_refused);
  try {
    std::rethrow_exception(r.error);
  } catch (const MultipleErrors&) {
    FAIL() << "one address, one error";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("Connect call failed 127.0.0.1:"), std::string::npos) << e.what();
  }
}

TEST(LoopMethods, L1_TriesEveryResolvedAddressInOrder) {
  if (!resolves_to_both_families(dual_stack_name)) GTEST_SKIP() << "runs under the dual-stack CTest entry";
  EventLoop loop;
  // Only IPv4 listens: the IPv6 address (first) is refused, IPv4 connects.
  auto server = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"});
  auto r = connect(loop, dual_stack_name, server->sockets().at(0).port());
  ASSERT_FALSE(r.error);
  EXPECT_TRUE(r.transport->get_extra_info_as<SocketAddress>("peername")->ip().is_v4());
  r.transport->close();
  server->close();
}

TEST(LoopMethods, L1_AllAddressesFailingListsEveryError) {
  if (!resolves_to_both_families(dual_stack_name)) GTEST_SKIP() << "runs under the dual-stack CTest entry";
  EventLoop loop;
  auto r = connect(loop, dual_stack_name, free_port());
  ASSERT_TRUE(r.error);
  try {
    std::rethrow_exception(r.error);
  } catch (const MultipleErrors& e) {
    ASSERT_EQ(e.errors().size(), 2u);
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("Multiple exceptions: ", 0), 0u) << what;
    EXPECT_NE(what.find("[::1]:"), std::string::npos) << what;
    EXPECT_NE(what.find("127.0.0.1:"), std::string::npos) << what;
    EXPECT_EQ(e.code(), std::errc::connection_refused);
  }
}

TEST(LoopMethods, L1_LocalAddrBindsFirst) {
  EventLoop loop;
  auto server = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"});
  const auto local_port = free_port();
  auto r = connect(loop, "127.0.0.1", server->sockets().at(0).port(),
                   ConnectOptions{std::make_pair(std::string("127.0.0.1"), local_port), std::nullopt, {}});
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.transport->get_extra_info_as<SocketAddress>("sockname")->port(), local_port);
  r.transport->close();
  server->close();
}

TEST(LoopMethods, L1_UnresolvableHostIsAClearError) {
  EventLoop loop;
  auto r = connect(loop, "no-such-host.invalid", 80);
  ASSERT_TRUE(r.error);
  try {
    std::rethrow_exception(r.error);
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-host.invalid"), std::string::npos) << e.what();
  }
}

// Not asyncio: the hook a policy uses to vet what a name really resolved to.
TEST(LoopMethods, CheckRemoteAddressSeesEveryAddressAndItsExceptionFailsTheConnect) {
  EventLoop loop;
  int accepted = 0;
  auto server = make_server(loop,
                            [&] {
                              ++accepted;
                              return std::make_shared<EchoProtocol>();
                            },
                            {"127.0.0.1"});
  const auto port = server->sockets().at(0).port();
  std::vector<SocketAddress> seen;
  ConnectOptions options;
  options.check_remote_address = [&](const SocketAddress& address) {
    seen.push_back(address);
    throw std::runtime_error("refused by policy");
  };
  auto r = connect(loop, "127.0.0.1", port, options);
  ASSERT_TRUE(r.error);
  EXPECT_EQ(describe_error(r.error), "refused by policy");
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], SocketAddress(asio::ip::make_address("127.0.0.1"), port));
  // A check that passes lets the connect go on.
  options.check_remote_address = [](const SocketAddress&) {};
  auto ok = connect(loop, "127.0.0.1", port, options);
  ASSERT_FALSE(ok.error);
  ASSERT_TRUE(run_until(loop, [&] { return accepted == 1; }));
  ok.transport->close();
  server->close();
}

TEST(Server, CheckLocalAddressSeesTheWildcardsOfEveryInterface) {
  EventLoop loop;
  std::vector<std::string> seen;
  ServerOptions options;
  options.check_local_address = [&](const SocketAddress& address) {
    seen.push_back(address.to_string());
    if (address.ip().is_v6()) throw std::runtime_error("no listening here");
  };
  EXPECT_THROW(make_server(
                   loop, [] { return std::make_shared<EchoProtocol>(); }, {}, options),
               std::runtime_error);
  EXPECT_EQ(seen, (std::vector<std::string>{"0.0.0.0:0", "[::]:0"}));
}

TEST(LoopMethods, L1_ExistingConnectedSocket) {
  EventLoop loop;
  auto server = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"});
  asio::ip::tcp::socket socket(loop.context());
  socket.connect({asio::ip::make_address("127.0.0.1"), server->sockets().at(0).port()});
  std::shared_ptr<RecordingProtocol> protocol;
  loop.create_connection([] { return std::make_shared<RecordingProtocol>(); }, std::move(socket),
                         [&](std::exception_ptr e, std::shared_ptr<Transport> t, std::shared_ptr<RecordingProtocol> p) {
                           EXPECT_FALSE(e);
                           protocol = p;
                           t->write("via existing socket");
                         });
  ASSERT_TRUE(run_until(loop, [&] { return protocol && protocol->rec.data == "via existing socket"; }));
  protocol->rec.transport->close();
  server->close();
}

TEST(Server, L2_AllInterfacesOnePortBothFamilies) {
  EventLoop loop;
  auto server = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {});
  auto sockets = server->sockets();
  ASSERT_EQ(sockets.size(), 2u);
  EXPECT_EQ(sockets[0].port(), sockets[1].port());
  EXPECT_NE(sockets[0].port(), 0);
  for (const char* host : {"127.0.0.1", "::1"}) {
    auto r = connect(loop, host, sockets[0].port());
    ASSERT_FALSE(r.error) << host;
    r.transport->write("ping");
    ASSERT_TRUE(run_until(loop, [&] { return r.protocol->rec.data == "ping"; }));
    r.transport->close();
  }
  // IPV6_V6ONLY on the IPv6 socket: each family has its own socket.
  server->close();
}

TEST(Server, L2_SeveralHostsAndSocketOptions) {
  EventLoop loop;
  ServerOptions options;
  options.reuse_port = true;
  auto server = make_server(
      loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1", "::1"}, options);
  auto sockets = server->sockets();
  ASSERT_EQ(sockets.size(), 2u);
  EXPECT_TRUE(sockets[0].ip().is_v4());
  EXPECT_TRUE(sockets[1].ip().is_v6());
  // A second server on the same port works only because of SO_REUSEPORT.
  asio::ip::tcp::acceptor other(loop.context());
  other.open(asio::ip::tcp::v4());
  int on = 1;
  ::setsockopt(other.native_handle(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
  boost::system::error_code ec;
  other.bind({asio::ip::make_address("127.0.0.1"), sockets[0].port()}, ec);
  EXPECT_FALSE(ec) << ec.message();
  server->close();
}

TEST(Server, L2_ReuseAddressDefaultAndBindErrorNamesTheAddress) {
  EventLoop loop;
  auto server = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"});
  const auto port = server->sockets().at(0).port();
  std::exception_ptr error;
  bool done = false;
  loop.create_server([] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"}, port, {},
                     [&](std::exception_ptr e, std::shared_ptr<Server>) {
                       error = e;
                       done = true;
                     });
  ASSERT_TRUE(run_until(loop, [&] { return done; }));
  ASSERT_TRUE(error);
  EXPECT_EQ(error_code_of(error), std::errc::address_in_use);
  try {
    std::rethrow_exception(error);
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)), std::string::npos) << e.what();
  }
  server->close();
}

TEST(Server, L2_StartServingFalseRefusesUntilStarted) {
  EventLoop loop;
  ServerOptions options;
  options.start_serving = false;
  auto server = make_server(
      loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"}, options);
  EXPECT_FALSE(server->is_serving());
  const auto port = server->sockets().at(0).port();
  auto refused = connect(loop, "127.0.0.1", port);
  EXPECT_EQ(error_code_of(refused.error), std::errc::connection_refused);
  server->start_serving();
  EXPECT_TRUE(server->is_serving());
  auto r = connect(loop, "127.0.0.1", port);
  ASSERT_FALSE(r.error);
  r.transport->close();
  server->close();
}

TEST(Server, L3_CloseKeepsConnectionsAndWaitClosedWaitsForThem) {
  EventLoop loop;
  auto server = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"});
  const auto port = server->sockets().at(0).port();
  auto r = connect(loop, "127.0.0.1", port);
  ASSERT_FALSE(r.error);
  ASSERT_TRUE(run_until(loop, [&] { return server->active_connections() == 1; }));
  bool closed = false;
  server->wait_closed([&] { closed = true; });
  server->close();
  server->close();
  EXPECT_FALSE(server->is_serving());
  EXPECT_TRUE(server->sockets().empty());
  EXPECT_EQ(error_code_of(connect(loop, "127.0.0.1", port).error), std::errc::connection_refused);
  r.transport->write("still echoed");
  ASSERT_TRUE(run_until(loop, [&] { return r.protocol->rec.data == "still echoed"; }));
  EXPECT_FALSE(closed) << "a connection is still open";
  r.transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return closed; }));
}

TEST(Server, L3_CloseClientsAndAbortClients) {
  EventLoop loop;
  auto server = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"});
  const auto port = server->sockets().at(0).port();
  auto a = connect(loop, "127.0.0.1", port);
  auto b = connect(loop, "127.0.0.1", port);
  ASSERT_TRUE(run_until(loop, [&] { return server->active_connections() == 2; }));
  server->close();
  server->close_clients();
  ASSERT_TRUE(run_until(loop, [&] { return a.protocol->rec.is_lost() && b.protocol->rec.is_lost(); }));
  EXPECT_EQ(server->active_connections(), 0u);

  auto server2 = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"});
  auto c = connect(loop, "127.0.0.1", server2->sockets().at(0).port());
  ASSERT_TRUE(run_until(loop, [&] { return server2->active_connections() == 1; }));
  server2->abort_clients();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  server2->close();
  bool closed = false;
  server2->wait_closed([&] { closed = true; });
  ASSERT_TRUE(run_until(loop, [&] { return closed; }));
}

TEST(Server, L3_ServeForeverRunsUntilCancelledThenClosesAndWaits) {
  EventLoop loop;
  ServerOptions options;
  options.start_serving = false;
  auto server = make_server(
      loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"}, options);
  asio::cancellation_signal cancel;
  std::exception_ptr result;
  bool done = false;
  server->serve_forever(asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e) {
    result = e;
    done = true;
  }));
  EXPECT_TRUE(server->is_serving());
  bool second_done = false;
  server->serve_forever([&](std::exception_ptr e) {
    EXPECT_TRUE(e) << "a second serve_forever must fail";
    second_done = true;
  });
  ASSERT_TRUE(run_until(loop, [&] { return second_done; }));
  auto r = connect(loop, "127.0.0.1", server->sockets().at(0).port());
  ASSERT_FALSE(r.error);
  cancel.emit(asio::cancellation_type::all);
  EXPECT_FALSE(server->is_serving());
  loop.run_until([] { return false; }, 50ms);
  EXPECT_FALSE(done) << "waits for the open connection";
  r.transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return done; }));
  EXPECT_EQ(error_code_of(result), std::errc::operation_canceled);
  bool after_close = false;
  server->serve_forever([&](std::exception_ptr e) {
    EXPECT_TRUE(e) << "serve_forever on a closed server must fail";
    after_close = true;
  });
  ASSERT_TRUE(run_until(loop, [&] { return after_close; }));
}

TEST(Server, L4_UnixServerReplacesStaleSocketRefusesOtherFilesAndCleansUp) {
  EventLoop loop;
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "conduit-l4-" + std::to_string(::getpid()) + ".sock";
  // A stale socket file: bound, then its socket closed.
  { asio::local::stream_protocol::acceptor stale(loop.context(), asio::local::stream_protocol::endpoint(path)); }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  std::shared_ptr<Server> server;
  loop.create_unix_server([] { return std::make_shared<EchoProtocol>(); }, path, {},
                          [&](std::exception_ptr e, std::shared_ptr<Server> s) {
                            EXPECT_FALSE(e);
                            server = s;
                          });
  ASSERT_TRUE(run_until(loop, [&] { return server != nullptr; }));
  EXPECT_EQ(server->sockets().at(0).path(), path);
  server->close();
  EXPECT_NE(::stat(path.c_str(), &st), 0) << "the socket file is removed on close";

  const std::string regular = dir + "conduit-l4-" + std::to_string(::getpid()) + ".txt";
  std::ofstream(regular) << "precious";
  std::exception_ptr error;
  bool done = false;
  loop.create_unix_server([] { return std::make_shared<EchoProtocol>(); }, regular, {},
                          [&](std::exception_ptr e, std::shared_ptr<Server>) {
                            error = e;
                            done = true;
                          });
  ASSERT_TRUE(run_until(loop, [&] { return done; }));
  ASSERT_TRUE(error);
  try {
    std::rethrow_exception(error);
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("not a socket"), std::string::npos) << e.what();
  }
  std::ifstream in(regular);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
  ::unlink(regular.c_str());
}

TEST(LoopMethods, L5_ConnectAcceptedSocket) {
  EventLoop loop;
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  std::shared_ptr<RecordingProtocol> protocol;
  loop.connect_accepted_socket(
      [] { return std::make_shared<RecordingProtocol>(); }, fds[0],
      [&](std::exception_ptr e, std::shared_ptr<Transport>, std::shared_ptr<RecordingProtocol> p) {
        EXPECT_FALSE(e);
        protocol = p;
      });
  ASSERT_TRUE(run_until(loop, [&] { return protocol != nullptr; }));
  ASSERT_EQ(::write(fds[1], "pair", 4), 4);
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.data == "pair"; }));
  ::close(fds[1]);
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));

  int dgram = ::socket(AF_INET, SOCK_DGRAM, 0);
  std::exception_ptr error;
  bool done = false;
  loop.connect_accepted_socket([] { return std::make_shared<RecordingProtocol>(); }, dgram,
                               [&](std::exception_ptr e, std::shared_ptr<Transport>, auto) {
                                 error = e;
                                 done = true;
                               });
  ASSERT_TRUE(run_until(loop, [&] { return done; }));
  EXPECT_THROW(std::rethrow_exception(error), std::invalid_argument);
  ::close(dgram);
}

TEST(ExceptionHandler, L7_CustomHandlerGetsContextDefaultLogsIt) {
  EventLoop loop;
  std::vector<std::pair<LogLevel, std::string>> logs;
  loop.set_log_handler([&](LogLevel l, std::string_view m) { logs.emplace_back(l, std::string(m)); });
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.protocol->on_data = [](Transport&, std::string_view) { throw std::runtime_error("kaboom"); };
  c.peer->send("x");
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  ASSERT_FALSE(logs.empty());
  EXPECT_EQ(logs.back().first, LogLevel::error);
  EXPECT_NE(logs.back().second.find("data_received"), std::string::npos) << logs.back().second;
  EXPECT_NE(logs.back().second.find("kaboom"), std::string::npos) << logs.back().second;
  EXPECT_NE(logs.back().second.find("RecordingProtocol"), std::string::npos) << logs.back().second;

  std::vector<ExceptionContext> seen;
  loop.set_exception_handler([&](EventLoop&, const ExceptionContext& ctx) { seen.push_back(ctx); });
  auto d = connect_pair(loop, std::make_shared<RecordingProtocol>());
  d.protocol->on_data = [](Transport&, std::string_view) { throw std::runtime_error("again"); };
  d.peer->send("y");
  ASSERT_TRUE(run_until(loop, [&] { return d.protocol->rec.is_lost(); }));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0].transport);
  EXPECT_EQ(seen[0].protocol, d.protocol);
  EXPECT_TRUE(seen[0].exception);
}

TEST(Robustness, R2_EchoServerSendsEverythingBackAfterHalfClose) {
  EventLoop loop;
  auto server = make_server(loop, [] { return std::make_shared<EchoProtocol>(); }, {"127.0.0.1"});
  Peer peer = Peer::connect(loop, server->sockets().at(0).port());
  std::string payload(4 * 1024 * 1024, 'r');
  for (std::size_t i = 0; i < payload.size(); i += 4096) payload[i] = static_cast<char>(i / 4096);
  // Send everything and half-close at once: the echo must still all come back.
  std::size_t sent = 0;
  while (sent < payload.size()) {
    peer.read_available();
    boost::system::error_code ec;
    sent += peer.socket().send(asio::buffer(payload.data() + sent, payload.size() - sent), 0, ec);
    loop.run_until([] { return false; }, 1ms);
  }
  peer.shutdown_send();
  ASSERT_TRUE(peer.receive_eof(loop));
  EXPECT_EQ(peer.received().size(), payload.size());
  EXPECT_TRUE(peer.received() == payload);
  server->close();
}

TEST(Robustness, R3_AcceptBacksOffOnEmfileAndRecovers) {
#ifdef __SANITIZE_ADDRESS__
  // UBSan's vptr check needs a free descriptor to inspect a type; with none
  // left it reports a false "invalid vptr" (reproduced outside Conduit with a
  // bare std::system_error). The normal build runs this test.
  GTEST_SKIP() << "needs descriptor exhaustion, which the sanitizer runtime cannot survive";
#endif
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto server_protocol = std::make_shared<RecordingProtocol>();
  auto server = make_server(loop, [&] { return server_protocol; }, {"127.0.0.1"});
  Peer peer = Peer::connect(loop, server->sockets().at(0).port());  // waits in the backlog

  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  std::vector<int> fillers;
  rlimit low = saved;
  low.rlim_cur = 256;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  for (int fd; (fd = ::open("/dev/null", O_RDONLY)) >= 0;) fillers.push_back(fd);
  ASSERT_EQ(errno, EMFILE);

  loop.run_until([] { return false; }, 300ms);
  const auto reports = recorder.exceptions.size();
  EXPECT_GE(reports, 1u);
  EXPECT_LE(reports, 2u) << "accept must back off, not spin";
  if (reports > 0) {
    EXPECT_NE(recorder.exceptions[0].message.find("out of system resource"), std::string::npos);
  }
  EXPECT_TRUE(server->is_serving());

  for (int fd : fillers) ::close(fd);
  ::setrlimit(RLIMIT_NOFILE, &saved);
  ASSERT_TRUE(run_until(
      loop, [&] { return server_protocol->rec.made == 1; }, 5s));
  server_protocol->rec.transport->close();
  server->close();
}
