// SPEC RS1-RS7: a protocol cannot tell a remote transport from a local one.
// Each scenario runs one protocol twice: on the core's own transport, and on
// a remote one through a real ConduitService (in this process, reached over
// gRPC's in-process channel), against the same kind of raw peer socket, and
// checks the same callbacks, in the same order, with the same answers.
#include "support/recording_protocol.hpp"

#include <conduit/service/remote.hpp>
#include <conduit/service/service.hpp>

#include <grpcpp/grpcpp.h>

#include <gtest/gtest.h>

#include <boost/asio/write.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

using namespace conduit;
using namespace conduit::testing;

namespace {

/// A ConduitService serving on no port: clients use its in-process channel.
struct InProcessService {
  std::unique_ptr<service::ConduitService> service;
  std::unique_ptr<grpc::Server> server;
  service::RemoteOptions remote;

  InProcessService() {
    service::ServiceOptions options;
    options.quiet = true;
    options.policy.set_exec({"/bin/sh"}, false);
    service = std::make_unique<service::ConduitService>(std::move(options));
    grpc::ServerBuilder builder;
    builder.RegisterService(service.get());
    server = builder.BuildAndStart();
    service->set_own_address(0, "");
    remote.channel = server->InProcessChannel(grpc::ChannelArguments());
  }
  ~InProcessService() { server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2)); }
};

enum class Mode { local, remote };

/// The callbacks but pause_writing / resume_writing, whose number depends
/// on how fast the bytes move (the kernel takes a local write at once; a
/// remote one waits in the client's queue first). Tests check that those
/// pair up.
std::vector<std::string> without_flow_control(const std::vector<std::string>& events) {
  std::vector<std::string> kept;
  for (const auto& e : events) {
    if (e != "pause" && e != "resume") kept.push_back(e);
  }
  return kept;
}

std::string mode_name(const ::testing::TestParamInfo<Mode>& info) {
  return info.param == Mode::local ? "Local" : "Remote";
}

/// One connection under test: `protocol` on a local or remote transport
/// to 127.0.0.1, and the raw peer socket that accepted it.
class RemoteTransportTest : public ::testing::TestWithParam<Mode> {
 protected:
  EventLoop loop;
  LoopRecorder recorder{loop};
  static InProcessService& service() {
    static InProcessService* s = new InProcessService();  // shared by the tests; lives to the end
    return *s;
  }

  /// Where the transports under test are made: the one place the two
  /// modes differ.
  std::unique_ptr<Opener> opener() {
    if (GetParam() == Mode::local) return std::make_unique<LocalOpener>(loop);
    return std::make_unique<service::RemoteOpener>(loop, service().remote);
  }

  template <class P>
  std::unique_ptr<Peer> open(const std::shared_ptr<P>& protocol) {
    asio::ip::tcp::acceptor acceptor(loop.context(), {asio::ip::make_address("127.0.0.1"), 0});
    const auto port = acceptor.local_endpoint().port();
    bool done = false;
    opener()->create_connection([protocol] { return protocol; }, "127.0.0.1", port, {},
                                [&](std::exception_ptr error, auto, auto) {
                                  EXPECT_FALSE(error) << describe_error(error);
                                  done = true;
                                });
    EXPECT_TRUE(run_until(loop, [&] { return done && protocol->rec.made == 1; }));
    asio::ip::tcp::socket accepted(loop.context());
    acceptor.accept(accepted);
    return std::make_unique<Peer>(std::move(accepted));
  }

  /// Send from the peer until its kernel buffers are full (the other side
  /// reads nothing); returns the bytes sent. Runs the loop meanwhile.
  std::size_t fill_from_peer(Peer& peer) {
    const std::string chunk(64 * 1024, 'p');
    std::size_t sent = 0;
    int would_block = 0;
    run_until(loop, [&] {
      boost::system::error_code ec;
      const std::size_t n = peer.socket().send(asio::buffer(chunk), 0, ec);
      if (ec == asio::error::would_block) return ++would_block > 20;  // stays full across loop turns
      would_block = 0;
      sent += n;
      return false;
    });
    return sent;
  }
};

INSTANTIATE_TEST_SUITE_P(BothWays, RemoteTransportTest, ::testing::Values(Mode::local, Mode::remote), mode_name);

// ---- RS1 --------------------------------------------------------------------------

TEST_P(RemoteTransportTest, RS1_EofReceivedFalseClosesFlushing) {
  auto protocol = std::make_shared<RecordingProtocol>();
  auto peer = open(protocol);
  peer->send("bye");
  peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  EXPECT_EQ(protocol->rec.events, (std::vector<std::string>{"made", "data", "eof", "lost"}));
  EXPECT_EQ(protocol->rec.data, "bye");
  EXPECT_FALSE(protocol->rec.lost_error) << describe_error(protocol->rec.lost_error);
  EXPECT_TRUE(peer->receive_eof(loop)) << "the transport closed";
}

TEST_P(RemoteTransportTest, RS1_EofReceivedTrueKeepsItOpenUntilTheProtocolCloses) {
  auto protocol = std::make_shared<RecordingProtocol>();
  protocol->keep_open_on_eof = true;
  auto peer = open(protocol);
  peer->send("half");
  peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.eofs == 1; }));
  // Still open: the protocol writes after the peer's EOF, and only its
  // close() ends the connection (flushing).
  EXPECT_FALSE(protocol->rec.transport->is_closing());
  protocol->rec.transport->write(std::string(300000, 'w'));
  protocol->rec.transport->close();
  ASSERT_TRUE(peer->receive_eof(loop));
  EXPECT_EQ(peer->received(), std::string(300000, 'w'));
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  EXPECT_EQ(without_flow_control(protocol->rec.events), (std::vector<std::string>{"made", "data", "eof", "lost"}));
  EXPECT_EQ(protocol->rec.pauses, protocol->rec.resumes);
}

// ---- RS2 --------------------------------------------------------------------------

TEST_P(RemoteTransportTest, RS2_PauseInConnectionMadeMeansNoDataUntilResumed) {
  auto protocol = std::make_shared<RecordingProtocol>();
  protocol->on_made = [](Transport& t) { t.pause_reading(); };
  bool resumed = false;
  protocol->on_data = [&](Transport&, std::string_view) { EXPECT_TRUE(resumed) << "data while paused"; };
  auto peer = open(protocol);
  EXPECT_FALSE(protocol->rec.transport->is_reading());
  // Nobody reads the connection (not even the service on our behalf): the
  // peer's kernel buffers fill.
  const std::size_t sent = fill_from_peer(*peer);
  EXPECT_GT(sent, 0u);
  EXPECT_EQ(protocol->rec.data_calls, 0);
  resumed = true;
  protocol->rec.transport->resume_reading();
  EXPECT_TRUE(protocol->rec.transport->is_reading());
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.data.size() == sent; }));
  protocol->rec.transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
}

// ---- RS3 --------------------------------------------------------------------------

TEST_P(RemoteTransportTest, RS3_AbortActsAtOnceAndDropsWhatIsBuffered) {
  auto protocol = std::make_shared<RecordingProtocol>();
  auto peer = open(protocol);
  // The peer reads nothing yet; 16 MiB queue up (pause_writing ignored).
  const std::string chunk(64 * 1024, 'a');
  constexpr std::size_t total = 16u << 20;
  for (std::size_t sent = 0; sent < total; sent += chunk.size()) protocol->rec.transport->write(chunk);
  protocol->rec.transport->abort();
  EXPECT_TRUE(protocol->rec.transport->is_closing());
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  // The peer gets what had reached its kernel, then the end: never the rest.
  run_until(loop, [&] {
    peer->read_available();
    return peer->eof() || peer->error();
  });
  EXPECT_LT(peer->received().size(), total / 2) << "the abort waited behind the writes";
  EXPECT_EQ(protocol->rec.events.front(), "made");
  EXPECT_EQ(protocol->rec.events.back(), "lost");
}

// ---- RS4 --------------------------------------------------------------------------

TEST_P(RemoteTransportTest, RS4_AnswersAtTheCall) {
  auto protocol = std::make_shared<RecordingProtocol>();
  auto peer = open(protocol);
  auto& transport = *protocol->rec.transport;
  EXPECT_THROW(transport.set_write_buffer_limits(10, 20), std::invalid_argument) << "low above high";
  EXPECT_TRUE(transport.can_write_eof());
  transport.write("before eof");
  transport.write_eof();
  EXPECT_THROW(transport.write("after eof"), std::logic_error);
  EXPECT_FALSE(transport.is_closing());
  ASSERT_TRUE(peer->receive_eof(loop));
  EXPECT_EQ(peer->received(), "before eof");
  transport.close();
  EXPECT_TRUE(transport.is_closing()) << "closing from the moment of close()";
  EXPECT_NO_THROW(transport.close());
  peer->close();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  EXPECT_EQ(protocol->rec.events, (std::vector<std::string>{"made", "lost"}));
}

TEST_P(RemoteTransportTest, RS4_WritesAfterCloseOrLossAreDropped) {
  auto protocol = std::make_shared<RecordingProtocol>();
  auto peer = open(protocol);
  auto transport = protocol->rec.transport;
  transport->write("kept");
  transport->close();
  EXPECT_NO_THROW(transport->write("dropped"));
  ASSERT_TRUE(peer->receive_eof(loop));
  EXPECT_EQ(peer->received(), "kept");
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  EXPECT_NO_THROW(transport->write("after the loss"));
  EXPECT_TRUE(transport->is_closing());
}

// ---- RS5 --------------------------------------------------------------------------

TEST_P(RemoteTransportTest, RS5_WriteFlowControlPausesAndResumesAroundTheBuffer) {
  auto protocol = std::make_shared<RecordingProtocol>();
  bool paused = false;
  protocol->on_pause = [&] { paused = true; };
  protocol->on_resume = [&] { paused = false; };
  auto peer = open(protocol);
  auto& transport = *protocol->rec.transport;
  transport.set_write_buffer_limits(256 * 1024, 64 * 1024);
  EXPECT_EQ(transport.get_write_buffer_limits(), (std::pair<std::size_t, std::size_t>{64 * 1024, 256 * 1024}));
  // Write while allowed; the peer reads nothing, so pause_writing comes.
  const std::string chunk(64 * 1024, 'f');
  constexpr std::size_t total = 32u << 20;
  std::size_t written = 0;
  auto write_while_allowed = [&] {
    while (!paused && written < total) {
      transport.write(chunk);
      written += chunk.size();
    }
  };
  write_while_allowed();
  ASSERT_TRUE(run_until(loop, [&] { return paused; }));
  EXPECT_LT(written, total) << "never paused";
  // The peer reads: resume_writing comes, and the rest goes out.
  protocol->on_resume = [&] {
    paused = false;
    write_while_allowed();
  };
  ASSERT_TRUE(peer->receive(loop, total));
  EXPECT_EQ(written, total);
  EXPECT_GE(protocol->rec.pauses, 1);
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.pauses == protocol->rec.resumes; }))
      << "pause_writing and resume_writing pair up once the buffer drains";
  // writelines is one write.
  const std::string a = "a", b = "bb", c = "ccc";
  const std::span<const std::byte> lines[] = {as_bytes(a), as_bytes(b), as_bytes(c)};
  transport.writelines(lines);
  ASSERT_TRUE(peer->receive(loop, total + 6));
  EXPECT_EQ(peer->received().substr(total), "abbccc");
  transport.close();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
}

// ---- RS6 --------------------------------------------------------------------------

TEST_P(RemoteTransportTest, RS6_AProtocolExceptionGoesToTheHandlerAndClosesTheTransport) {
  auto protocol = std::make_shared<RecordingProtocol>();
  protocol->on_data = [](Transport&, std::string_view) { throw std::runtime_error("protocol bug"); };
  auto peer = open(protocol);
  peer->send("trigger");
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  ASSERT_EQ(recorder.exceptions.size(), 1u);
  EXPECT_EQ(recorder.exceptions[0].message, "Fatal error: protocol.data_received() call failed.");
  EXPECT_EQ(describe_error(recorder.exceptions[0].exception), "protocol bug");
  EXPECT_EQ(describe_error(protocol->rec.lost_error), "protocol bug") << "connection_lost carries it";
  EXPECT_EQ(protocol->rec.events, (std::vector<std::string>{"made", "data", "lost"}));
  run_until(loop, [&] {
    peer->read_available();
    return peer->eof() || peer->error();
  });
}

// A datagram endpoint and a child carry on after a throwing callback, on
// either side (SPEC D8; a subprocess's callbacks are not fatal either).

/// Throws from datagram_received on the first datagram only.
struct ThrowOnceDatagrams : DatagramProtocol {
  std::shared_ptr<DatagramTransport> transport;
  std::vector<std::string> received;
  int lost = 0;
  void connection_made(std::shared_ptr<DatagramTransport> t) override { transport = std::move(t); }
  void datagram_received(std::span<const std::byte> data, const SocketAddress&) override {
    received.emplace_back(as_string_view(data));
    if (received.size() == 1) throw std::runtime_error("datagram bug");
  }
  void connection_lost(std::exception_ptr) override { ++lost; }
};

TEST_P(RemoteTransportTest, RS6_ADatagramEndpointSurvivesAThrowingCallback) {
  asio::ip::udp::socket peer(loop.context(), {asio::ip::make_address("127.0.0.1"), 0});
  const auto peer_port = peer.local_endpoint().port();
  auto protocol = std::make_shared<ThrowOnceDatagrams>();
  bool opened = false;
  DatagramOptions options;
  options.remote_addr = {"127.0.0.1", peer_port};
  opener()->create_datagram_endpoint([protocol] { return protocol; }, options,
                                     [&](std::exception_ptr error, auto, auto) {
                                       EXPECT_FALSE(error) << describe_error(error);
                                       opened = true;
                                     });
  ASSERT_TRUE(run_until(loop, [&] { return opened && protocol->transport; }));
  // Learn where the endpoint is from its first datagram to the peer.
  protocol->transport->sendto("hello");
  asio::ip::udp::endpoint endpoint;
  std::array<char, 64> buffer{};
  peer.non_blocking(true);
  ASSERT_TRUE(run_until(loop, [&] {
    boost::system::error_code ec;
    peer.receive_from(asio::buffer(buffer), endpoint, 0, ec);
    return !ec;
  }));
  peer.send_to(asio::buffer(std::string_view("one")), endpoint);
  ASSERT_TRUE(run_until(loop, [&] { return protocol->received.size() == 1; }));
  peer.send_to(asio::buffer(std::string_view("two")), endpoint);
  ASSERT_TRUE(run_until(loop, [&] { return protocol->received.size() == 2; }));
  EXPECT_EQ(protocol->received, (std::vector<std::string>{"one", "two"}));
  ASSERT_EQ(recorder.exceptions.size(), 1u);
  EXPECT_EQ(recorder.exceptions[0].message, "Exception in callback protocol.datagram_received()");
  EXPECT_FALSE(protocol->transport->is_closing());
  protocol->transport->close();
  EXPECT_TRUE(run_until(loop, [&] { return protocol->lost == 1; }));
}

/// Throws from every pipe_data_received.
struct ThrowingChild : SubprocessProtocol {
  std::shared_ptr<SubprocessTransport> transport;
  int data = 0, exited = 0, lost = 0;
  std::exception_ptr lost_error;
  void connection_made(std::shared_ptr<SubprocessTransport> t) override { transport = std::move(t); }
  void pipe_data_received(int, std::span<const std::byte>) override {
    ++data;
    throw std::runtime_error("child output bug");
  }
  void process_exited() override { ++exited; }
  void connection_lost(std::exception_ptr exc) override {
    ++lost;
    lost_error = exc;
  }
};

TEST_P(RemoteTransportTest, RS6_AChildRunsOnAfterAThrowingCallback) {
  auto protocol = std::make_shared<ThrowingChild>();
  const std::string script = "echo out; read line; exit 7";
  bool opened = false;
  opener()->subprocess_exec([protocol] { return protocol; }, "/bin/sh", {"-c", script}, {},
                            [&](std::exception_ptr error, auto, auto) {
                              EXPECT_FALSE(error) << describe_error(error);
                              opened = true;
                            });
  ASSERT_TRUE(run_until(loop, [&] { return opened && protocol->transport && protocol->data >= 1; }));
  EXPECT_FALSE(protocol->transport->is_closing()) << "the child carries on";
  // It still reads its stdin, and exits as it says.
  protocol->transport->get_pipe_transport(0)->write("go on\n");
  ASSERT_TRUE(run_until(loop, [&] { return protocol->lost == 1; }));
  EXPECT_EQ(protocol->exited, 1);
  EXPECT_EQ(protocol->transport->get_returncode(), 7);
  EXPECT_FALSE(protocol->lost_error);
  ASSERT_GE(recorder.exceptions.size(), 1u);
  EXPECT_EQ(recorder.exceptions[0].message, "Exception in callback protocol.pipe_data_received()");
}

// ---- a loop that goes while its sessions run -------------------------------------

/// Counts what it receives, and nothing else.
class Sink final : public Protocol {
 public:
  void data_received(std::span<const std::byte> data) override { received += data.size(); }
  std::size_t received = 0;
};

// A tool that returns with a session still open destroys its loop while the
// session's gRPC threads still read events and post them to it: those
// threads are joined first, so nothing reaches a loop that is gone (ASan saw
// a heap-use-after-free here, ThreadSanitizer more).
TEST(RemoteSessionThreads, ALoopDestroyedWhileEventsStreamJoinsThemFirst) {
  static InProcessService* service = new InProcessService();  // lives to the end, like the suite's
  for (int round = 0; round < 10; ++round) {
    SCOPED_TRACE(round);
    auto loop = std::make_unique<EventLoop>();
    asio::io_context peer_context;
    asio::ip::tcp::acceptor acceptor(peer_context, {asio::ip::make_address("127.0.0.1"), 0});
    auto protocol = std::make_shared<Sink>();
    bool opened = false;
    service::RemoteOpener(*loop, service->remote)
        .create_connection([protocol] { return protocol; }, "127.0.0.1", acceptor.local_endpoint().port(), {},
                           [&](std::exception_ptr error, auto, auto) {
                             EXPECT_FALSE(error) << describe_error(error);
                             opened = true;
                           });
    asio::ip::tcp::socket peer(peer_context);
    acceptor.accept(peer);
    // The peer sends until the service lets go of the connection (the
    // session ends once its client, this loop, is gone), bounded in time.
    std::thread sender([&peer] {
      const std::string chunk(64 * 1024, 's');
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      boost::system::error_code ec;
      while (!ec && std::chrono::steady_clock::now() < deadline) asio::write(peer, asio::buffer(chunk), ec);
    });
    const bool streaming = run_until(*loop, [&] { return opened && protocol->received > 256 * 1024; });
    loop.reset();  // with events still streaming in
    sender.join();
    ASSERT_TRUE(streaming);
  }
}

// ---- the one shape: servers and proxies through either opener ----------------------

/// Writes back what it receives.
class Echo final : public Protocol {
 public:
  void connection_made(std::shared_ptr<Transport> transport) override { transport_ = std::move(transport); }
  void data_received(std::span<const std::byte> data) override { transport_->write(data); }
  void connection_lost(std::exception_ptr) override { transport_.reset(); }

 private:
  std::shared_ptr<Transport> transport_;
};

/// Whether a connect to `port` is refused now; a probe that got through is
/// closed at once.
bool connect_refused(EventLoop& loop, std::uint16_t port) {
  asio::ip::tcp::socket probe(loop.context());
  boost::system::error_code ec;
  probe.connect({asio::ip::make_address("127.0.0.1"), port}, ec);
  return ec == asio::error::connection_refused;
}

TEST_P(RemoteTransportTest, AServerClosesAsAsyncioSays) {
  std::shared_ptr<AbstractServer> server;
  opener()->create_server([] { return std::make_shared<Echo>(); }, {"127.0.0.1"}, 0, {},
                          [&](std::exception_ptr error, std::shared_ptr<AbstractServer> s) {
                            EXPECT_FALSE(error) << describe_error(error);
                            server = std::move(s);
                          });
  ASSERT_TRUE(run_until(loop, [&] { return server != nullptr; }));
  ASSERT_EQ(server->sockets().size(), 1u);
  EXPECT_TRUE(server->is_serving());
  const std::uint16_t port = server->sockets()[0].port();
  Peer peer = Peer::connect(loop, port);
  peer.send("one");
  ASSERT_TRUE(peer.receive(loop, 3));
  ASSERT_TRUE(run_until(loop, [&] { return server->active_connections() == 1; }));

  // close(): no new connections; the open one carries on.
  bool closed = false;
  server->wait_closed([&] { closed = true; });
  server->close();
  EXPECT_FALSE(server->is_serving());
  EXPECT_TRUE(run_until(loop, [&] { return connect_refused(loop, port); }));
  peer.send("two");
  ASSERT_TRUE(peer.receive(loop, 6));
  EXPECT_EQ(peer.received(), "onetwo");
  EXPECT_FALSE(closed) << "wait_closed waits for the last connection";

  // close_clients(): the connection closes, and wait_closed completes.
  server->close_clients();
  EXPECT_TRUE(peer.receive_eof(loop));
  EXPECT_TRUE(run_until(loop, [&] { return closed; }));
  EXPECT_EQ(server->active_connections(), 0u);
  EXPECT_TRUE(server->sockets().empty() || GetParam() == Mode::local);
}

TEST_P(RemoteTransportTest, AProxyIsDrivenTheSameWay) {
  std::shared_ptr<Server> upstream;
  loop.create_server([] { return std::make_shared<Echo>(); }, {"127.0.0.1"}, 0, {},
                     [&](std::exception_ptr error, std::shared_ptr<Server> s) {
                       EXPECT_FALSE(error) << describe_error(error);
                       upstream = std::move(s);
                     });
  ASSERT_TRUE(run_until(loop, [&] { return upstream != nullptr; }));
  ProxyOptions options;
  options.listen.host = "127.0.0.1";
  options.upstream.host = "127.0.0.1";
  options.upstream.port = upstream->sockets()[0].port();
  options.faults.push_back(Fault{"slow", FaultDirection::both, fault::Latency{std::chrono::milliseconds(1), {}}});
  int accepted = 0, ended = 0;
  options.on_accepted = [&](const ProxyConnectionInfo&) { ++accepted; };
  options.on_closed = [&](const ProxyConnectionInfo&, std::exception_ptr) { ++ended; };
  std::shared_ptr<Proxy> proxy;
  opener()->create_proxy(options, [&](std::exception_ptr error, std::shared_ptr<Proxy> p) {
    EXPECT_FALSE(error) << describe_error(error);
    proxy = std::move(p);
  });
  ASSERT_TRUE(run_until(loop, [&] { return proxy != nullptr; }));
  ASSERT_EQ(proxy->sockets().size(), 1u);
  EXPECT_TRUE(proxy->is_up());
  ASSERT_EQ(proxy->faults().all().size(), 1u);
  EXPECT_EQ(proxy->faults().all()[0].name, "slow");

  // Faults: set, refused for the other transport, removed once.
  proxy->set_fault(Fault{"cut", FaultDirection::upstream, fault::Reset{std::uint64_t{1} << 20, std::nullopt}});
  EXPECT_EQ(proxy->faults().all().size(), 2u);
  EXPECT_THROW(proxy->set_fault(Fault{"drop", FaultDirection::both, fault::Loss{0.5}}), std::invalid_argument);
  EXPECT_TRUE(proxy->remove_fault("cut"));
  EXPECT_FALSE(proxy->remove_fault("cut"));

  const std::uint16_t port = proxy->sockets()[0].port();
  {
    Peer peer = Peer::connect(loop, port);
    peer.send("through");
    ASSERT_TRUE(peer.receive(loop, 7));
    EXPECT_EQ(peer.received(), "through");
    ASSERT_TRUE(run_until(loop, [&] { return accepted == 1 && proxy->connections().size() == 1; }));
  }
  ASSERT_TRUE(run_until(loop, [&] { return ended == 1 && proxy->connections().empty(); }));

  // Down: refused; up again where it was.
  proxy->down();
  EXPECT_FALSE(proxy->is_up());
  EXPECT_TRUE(proxy->sockets().empty());
  EXPECT_TRUE(run_until(loop, [&] { return connect_refused(loop, port); }));
  bool up = false;
  proxy->up([&](std::exception_ptr error) {
    EXPECT_FALSE(error) << describe_error(error);
    up = true;
  });
  ASSERT_TRUE(run_until(loop, [&] { return up; }));
  EXPECT_TRUE(proxy->is_up());
  ASSERT_EQ(proxy->sockets().size(), 1u);
  EXPECT_EQ(proxy->sockets()[0].port(), port);

  bool closed = false;
  proxy->wait_closed([&] { closed = true; });
  proxy->close();
  EXPECT_TRUE(proxy->is_closed());
  EXPECT_TRUE(run_until(loop, [&] { return closed; }));
  EXPECT_TRUE(recorder.exceptions.empty());
}

/// What a service cannot be handed is refused before anything is sent,
/// naming the option.
TEST(RemoteOpener, RefusesWhatAServiceCannotCarry) {
  static InProcessService* service = new InProcessService();
  EventLoop loop;
  service::RemoteOpener remote(loop, service->remote);
  std::vector<std::string> errors;
  auto record = [&](std::exception_ptr error, auto&&...) {
    ASSERT_TRUE(error);
    errors.push_back(describe_error(error));
  };
  ConnectOptions tls_context_only;
  tls_context_only.tls = TlsOptions(tls::insecure_client_context());
  remote.create_connection([] { return std::make_shared<Echo>(); }, "127.0.0.1", 9, tls_context_only, record);
  remote.create_server([] { return std::make_shared<Echo>(); }, {"127.0.0.1", "::1"}, 0, {}, record);
  SubprocessOptions devnull;
  devnull.stdin_stream = Stdio::devnull();
  remote.subprocess_exec([] { return std::make_shared<ThrowingChild>(); }, "/bin/true", {}, devnull, record);
  ProxyOptions udp_tls;
  udp_tls.datagram = true;
  udp_tls.upstream.tls = tls::client_options({});
  remote.create_proxy(udp_tls, record);
  ASSERT_TRUE(run_until(loop, [&] { return errors.size() == 4; }));
  EXPECT_NE(errors[0].find("PEM text (tls::client_options)"), std::string::npos) << errors[0];
  EXPECT_NE(errors[1].find("one host"), std::string::npos) << errors[1];
  EXPECT_NE(errors[2].find("pipes"), std::string::npos) << errors[2];
  EXPECT_NE(errors[3].find("no TLS"), std::string::npos) << errors[3];
}

}  // namespace
