// SPEC S1-S20: stream transports over real loopback TCP sockets.
#include "support/recording_protocol.hpp"

#include <boost/asio/use_awaitable.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

using namespace conduit;
using namespace conduit::testing;

namespace {

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 26);
  return s;
}

}  // namespace

TEST(StreamTransport, S1_ConnectionMadeFromLoopBeforeCompletionAndReadingAfter) {
  EventLoop loop;
  asio::ip::tcp::acceptor acceptor(loop.context(), {asio::ip::make_address("127.0.0.1"), 0});
  auto protocol = std::make_shared<RecordingProtocol>();
  bool inside_call = true;
  bool completed = false;
  protocol->on_made = [&](Transport& t) {
    EXPECT_FALSE(inside_call) << "connection_made ran inside create_connection";
    EXPECT_FALSE(completed) << "create_connection completed before connection_made";
    t.pause_reading();  // gh-103607: no data until resume_reading()
  };
  loop.create_connection([&] { return protocol; }, "127.0.0.1", acceptor.local_endpoint().port(), {},
                         [&](std::exception_ptr err, std::shared_ptr<Transport>, std::shared_ptr<RecordingProtocol>) {
                           EXPECT_FALSE(err);
                           EXPECT_EQ(protocol->rec.made, 1);
                           completed = true;
                         });
  inside_call = false;
  ASSERT_TRUE(run_until(loop, [&] { return completed; }));
  asio::ip::tcp::socket server_side(loop.context());
  acceptor.accept(server_side);
  Peer peer(std::move(server_side));
  peer.send("early");
  // Paused in connection_made: the data waits in the kernel.
  loop.run_until([] { return false; }, 100ms);
  EXPECT_EQ(protocol->rec.data, "");
  protocol->rec.transport->resume_reading();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.data == "early"; }));
}

TEST(StreamTransport, S1_CoroutineCreateConnection) {
  EventLoop loop;
  asio::ip::tcp::acceptor acceptor(loop.context(), {asio::ip::make_address("127.0.0.1"), 0});
  const auto port = acceptor.local_endpoint().port();
  auto [transport, protocol] = loop.run_until_complete(
      [&]() -> asio::awaitable<std::pair<std::shared_ptr<Transport>, std::shared_ptr<RecordingProtocol>>> {
        auto [t, p] = co_await loop.create_connection([] { return std::make_shared<RecordingProtocol>(); }, "127.0.0.1",
                                                      port, {}, asio::use_awaitable);
        EXPECT_EQ(p->rec.made, 1);
        co_return std::make_pair(t, p);
      }());
  ASSERT_TRUE(transport);
  EXPECT_EQ(protocol->rec.transport, transport);
  transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
}

TEST(StreamTransport, S2_FullGrammarAndExactlyOneConnectionLost) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.peer->send("hello");
  c.peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  EXPECT_EQ(c.protocol->rec.events, (std::vector<std::string>{"made", "data", "eof", "lost"}));
  EXPECT_FALSE(c.protocol->rec.lost_error);
  c.transport->close();
  c.transport->abort();
  run_ready(loop);
  EXPECT_EQ(c.protocol->rec.lost, 1);
}

TEST(StreamTransport, S3_DataArrivesInOrderNeverEmpty) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  const std::string payload = pattern(3 * 1024 * 1024 + 17);
  // Varied chunk sizes down to one byte.
  std::size_t off = 0;
  for (std::size_t chunk : {1, 2, 3, 1000, 65536, 1}) {
    c.peer->send(std::string_view(payload).substr(off, chunk));
    off += chunk;
  }
  while (off < payload.size()) {
    const std::size_t n = std::min<std::size_t>(300000, payload.size() - off);
    c.peer->send(std::string_view(payload).substr(off, n));
    off += n;
    loop.run_until([] { return false; }, 1ms);
  }
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.data.size() == payload.size(); }));
  EXPECT_TRUE(c.protocol->rec.data == payload);
}

TEST(StreamTransport, S4_ReadsAtMost256KiBPerCall) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  std::size_t biggest = 0;
  c.protocol->on_data = [&](Transport&, std::string_view d) { biggest = std::max(biggest, d.size()); };
  c.transport->pause_reading();
  const std::string payload = pattern(1024 * 1024);
  std::size_t sent = 0;
  while (sent < payload.size()) {
    boost::system::error_code ec;
    sent += c.peer->socket().send(asio::buffer(payload.data() + sent, payload.size() - sent), 0, ec);
    if (ec == asio::error::would_block) break;
  }
  c.transport->resume_reading();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.data.size() == sent; }));
  EXPECT_LE(biggest, EventLoop::read_size);
  EXPECT_GT(biggest, 64u * 1024) << "reads should use the large loop buffer";
}

TEST(StreamTransport, S5_EofReturningFalseCloses) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  EXPECT_EQ(c.protocol->rec.events, (std::vector<std::string>{"made", "eof", "lost"}));
  EXPECT_FALSE(c.protocol->rec.lost_error);
  EXPECT_TRUE(c.peer->receive_eof(loop));
}

TEST(StreamTransport, S5_EofReturningTrueKeepsWriteSideOpen) {
  EventLoop loop;
  auto protocol = std::make_shared<RecordingProtocol>();
  protocol->keep_open_on_eof = true;
  auto c = connect_pair(loop, protocol);
  c.peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.eofs == 1; }));
  run_ready(loop);
  EXPECT_FALSE(protocol->rec.is_lost());
  EXPECT_FALSE(c.transport->is_closing());
  EXPECT_FALSE(c.transport->is_reading());
  c.transport->write("still writing");
  ASSERT_TRUE(c.peer->receive(loop, 13));
  EXPECT_EQ(c.peer->received(), "still writing");
  c.transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
}

TEST(StreamTransport, S6_NothingAfterEofEvenAfterPauseResume) {
  EventLoop loop;
  auto protocol = std::make_shared<RecordingProtocol>();
  protocol->keep_open_on_eof = true;
  auto c = connect_pair(loop, protocol);
  c.peer->send("x");
  c.peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.eofs == 1; }));
  // CPython 3.13 calls eof_received a second time here (quirk); we must not.
  c.transport->pause_reading();
  c.transport->resume_reading();
  loop.run_until([] { return false; }, 100ms);
  EXPECT_EQ(protocol->rec.eofs, 1);
  EXPECT_EQ(protocol->rec.events, (std::vector<std::string>{"made", "data", "eof"}));
  c.transport->abort();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
}

TEST(StreamTransport, S7_EmptyWriteDoesNothingAndWriteSendsAtOnce) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->write(std::span<const std::byte>{});
  EXPECT_EQ(c.transport->get_write_buffer_size(), 0u);
  c.transport->write("direct");
  // Went straight to the kernel: nothing buffered, readable without running the loop.
  EXPECT_EQ(c.transport->get_write_buffer_size(), 0u);
  c.peer->socket().non_blocking(false);
  char buf[6];
  asio::read(c.peer->socket(), asio::buffer(buf));
  EXPECT_EQ(std::string(buf, 6), "direct");
}

TEST(StreamTransport, S8_WriteAfterWriteEofThrows) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->write_eof();
  EXPECT_THROW(c.transport->write("late"), std::logic_error);
  EXPECT_THROW(c.transport->writelines({as_bytes("late")}), std::logic_error);
}

TEST(StreamTransport, S9_WritesAfterLostAreDroppedWithWarningFromTheFifth) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->close();
  for (int i = 0; i < 4; ++i) c.transport->write("dropped");
  EXPECT_EQ(recorder.warnings_containing("socket.send() raised exception."), 0);
  c.transport->write("dropped");
  EXPECT_EQ(recorder.warnings_containing("socket.send() raised exception."), 1);
  c.transport->write("dropped");
  EXPECT_EQ(recorder.warnings_containing("socket.send() raised exception."), 2);
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  ASSERT_TRUE(c.peer->receive_eof(loop));
  EXPECT_EQ(c.peer->received(), "");
}

TEST(StreamTransport, S9_WriteAfterCloseWithBufferedDataIsStillSent) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->set_write_buffer_limits(1024 * 1024 * 64);
  const std::string big = pattern(8 * 1024 * 1024);
  c.transport->write(big);
  ASSERT_GT(c.transport->get_write_buffer_size(), 0u) << "the kernel took 8 MiB at once";
  c.transport->close();
  c.transport->write("tail");
  ASSERT_TRUE(c.peer->receive(loop, big.size() + 4));
  EXPECT_TRUE(c.peer->received() == big + "tail");
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  EXPECT_FALSE(c.protocol->rec.lost_error);
}

TEST(StreamTransport, S9_WriteCopiesWhatItBuffers) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->set_write_buffer_limits(1024 * 1024 * 64);
  std::string big = pattern(8 * 1024 * 1024);
  const std::string expected = big;
  c.transport->write(big);
  ASSERT_GT(c.transport->get_write_buffer_size(), 0u);
  std::fill(big.begin(), big.end(), 'Z');
  ASSERT_TRUE(c.peer->receive(loop, expected.size()));
  EXPECT_TRUE(c.peer->received() == expected);
}

TEST(StreamTransport, S10_WritelinesEqualsWritesInOrder) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  std::vector<std::string> parts = {"one,", "", "two,", pattern(200000), "three"};
  std::vector<std::span<const std::byte>> spans;
  std::string expected;
  for (auto& p : parts) {
    spans.push_back(as_bytes(p));
    expected += p;
  }
  c.transport->writelines(spans);
  ASSERT_TRUE(c.peer->receive(loop, expected.size()));
  EXPECT_TRUE(c.peer->received() == expected);
}

TEST(StreamTransport, S10_WritelinesAppliesFlowControlAndDropsAfterLost) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->pause_reading();
  c.transport->set_write_buffer_limits(1000);
  const std::string big = pattern(16 * 1024 * 1024);
  c.transport->writelines({as_bytes(big)});
  EXPECT_EQ(c.protocol->rec.pauses, 1) << "gh-127655: writelines must pause too";
  c.transport->abort();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  EXPECT_NO_THROW(c.transport->writelines({as_bytes("x")}));  // gh-136234: no raise
}

TEST(StreamTransport, S11_WriteEofAfterFlushAndIdempotent) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  EXPECT_TRUE(c.transport->can_write_eof());
  c.transport->set_write_buffer_limits(64 * 1024 * 1024);
  const std::string big = pattern(8 * 1024 * 1024);
  c.transport->write(big);
  c.transport->write_eof();
  c.transport->write_eof();
  ASSERT_TRUE(c.peer->receive_eof(loop));
  EXPECT_TRUE(c.peer->received() == big);
  // The read side is still open: the peer can still talk to us.
  c.peer->send("reply");
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.data == "reply"; }));
  c.transport->close();
  c.transport->write_eof();  // after close: nothing
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
}

TEST(StreamTransport, S12_CloseStopsReadingFlushesThenLostOnce) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->write("bye");
  c.transport->close();
  EXPECT_TRUE(c.transport->is_closing());
  EXPECT_FALSE(c.transport->is_reading());
  c.transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  ASSERT_TRUE(c.peer->receive_eof(loop));
  EXPECT_EQ(c.peer->received(), "bye");
  EXPECT_EQ(c.protocol->rec.lost, 1);
  EXPECT_FALSE(c.protocol->rec.lost_error);
}

TEST(StreamTransport, S12_CloseStopsReadingAtOnce) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.protocol->on_data = [](Transport& t, std::string_view) { t.close(); };
  c.peer->send("first");
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.data_calls == 1; }));
  c.peer->send("second");
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  EXPECT_EQ(c.protocol->rec.data, "first");
}

TEST(StreamTransport, S12_ConnectionLostIsPostedNotInline) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->close();
  EXPECT_FALSE(c.protocol->rec.is_lost());
  run_ready(loop);
  EXPECT_TRUE(c.protocol->rec.is_lost());
}

TEST(StreamTransport, S13_AbortDropsBufferedData) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->set_write_buffer_limits(64 * 1024 * 1024);
  const std::string big = pattern(16 * 1024 * 1024);
  c.transport->write(big);
  ASSERT_GT(c.transport->get_write_buffer_size(), 0u);
  c.transport->abort();
  EXPECT_TRUE(c.transport->is_closing());
  EXPECT_EQ(c.transport->get_write_buffer_size(), 0u);
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  EXPECT_FALSE(c.protocol->rec.lost_error);
  run_until(loop, [&] {
    c.peer->read_available();
    return c.peer->eof() || bool(c.peer->error());
  });
  EXPECT_LT(c.peer->received().size(), big.size());
}

TEST(StreamTransport, S14_PeerResetIsFatalAndReportedInConnectionLost) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.transport->write("x");
  c.peer->reset();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  EXPECT_EQ(error_code_of(c.protocol->rec.lost_error), std::errc::connection_reset);
  EXPECT_TRUE(recorder.exceptions.empty()) << "OS errors are not reported to the exception handler";
}

TEST(StreamTransport, S14_WriteToResetPeerGivesEpipeOrReset) {
  EventLoop loop;
  auto protocol = std::make_shared<RecordingProtocol>();
  auto c = connect_pair(loop, protocol);
  c.transport->pause_reading();
  c.peer->reset();
  loop.run_until([] { return false; }, 50ms);
  for (int i = 0; i < 100 && !protocol->rec.is_lost(); ++i) {
    c.transport->write("data");
    run_ready(loop);
  }
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  auto code = error_code_of(protocol->rec.lost_error);
  EXPECT_TRUE(code == std::errc::broken_pipe || code == std::errc::connection_reset) << code.message();
}

TEST(StreamTransport, S15_DataReceivedExceptionIsReportedAndFatal) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.protocol->on_data = [](Transport&, std::string_view) { throw std::runtime_error("boom"); };
  c.peer->send("x");
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  ASSERT_EQ(recorder.exceptions.size(), 1u);
  EXPECT_NE(recorder.exceptions[0].message.find("data_received"), std::string::npos);
  EXPECT_EQ(recorder.exceptions[0].protocol, c.protocol);
  EXPECT_EQ(recorder.exceptions[0].exception, c.protocol->rec.lost_error);
  ASSERT_TRUE(c.peer->receive_eof(loop));
}

TEST(StreamTransport, S15_EofReceivedExceptionIsFatal) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  c.protocol->on_eof = [] { throw std::runtime_error("eof boom"); };
  c.peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
  ASSERT_EQ(recorder.exceptions.size(), 1u);
  EXPECT_NE(recorder.exceptions[0].message.find("eof_received"), std::string::npos);
  EXPECT_TRUE(c.protocol->rec.lost_error);
}

TEST(StreamTransport, S15_ConnectionMadeExceptionIsReportedAndTransportCarriesOn) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto protocol = std::make_shared<RecordingProtocol>();
  protocol->on_made = [](Transport&) { throw std::runtime_error("made boom"); };
  auto c = connect_pair(loop, protocol);
  ASSERT_EQ(recorder.exceptions.size(), 1u);
  EXPECT_NE(recorder.exceptions[0].message.find("connection_made"), std::string::npos);
  EXPECT_FALSE(c.transport->is_closing());
  c.peer->send("still alive");
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.data == "still alive"; }));
}

TEST(StreamTransport, S16_PauseResumeReadingIdempotent) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  EXPECT_TRUE(c.transport->is_reading());
  c.transport->pause_reading();
  c.transport->pause_reading();
  EXPECT_FALSE(c.transport->is_reading());
  c.peer->send("held");
  loop.run_until([] { return false; }, 100ms);
  EXPECT_EQ(c.protocol->rec.data, "");
  c.transport->resume_reading();
  c.transport->resume_reading();
  EXPECT_TRUE(c.transport->is_reading());
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.data == "held"; }));
  EXPECT_EQ(c.protocol->rec.data_calls, 1);
  c.transport->close();
  EXPECT_FALSE(c.transport->is_reading());
  c.transport->resume_reading();  // nothing on a closing transport
  EXPECT_FALSE(c.transport->is_reading());
  c.transport->pause_reading();
  ASSERT_TRUE(run_until(loop, [&] { return c.protocol->rec.is_lost(); }));
}

TEST(StreamTransport, S17_ExtraInfo) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  auto peername = c.transport->get_extra_info_as<SocketAddress>("peername");
  auto sockname = c.transport->get_extra_info_as<SocketAddress>("sockname");
  ASSERT_TRUE(peername && sockname);
  EXPECT_EQ(peername->port(), c.peer->socket().local_endpoint().port());
  EXPECT_EQ(sockname->port(), c.peer->socket().remote_endpoint().port());
  EXPECT_EQ(peername->ip().to_string(), "127.0.0.1");
  auto fd = c.transport->get_extra_info_as<int>("socket");
  ASSERT_TRUE(fd);
  EXPECT_GE(*fd, 0);
  EXPECT_FALSE(c.transport->get_extra_info("no-such-key").has_value());
  EXPECT_EQ(std::any_cast<int>(c.transport->get_extra_info("no-such-key", 42)), 42);
}

TEST(StreamTransport, S18_SetProtocolSwitchesIncludingToBuffered) {
  EventLoop loop;
  auto first = std::make_shared<RecordingProtocol>();
  auto c = connect_pair(loop, first);
  auto second = std::make_shared<RecordingBufferedProtocol>();
  second->rec.adopted = true;
  c.transport->set_protocol(second);
  EXPECT_EQ(c.transport->get_protocol(), second);
  c.peer->send("to second");
  ASSERT_TRUE(run_until(loop, [&] { return second->rec.data == "to second"; }));
  EXPECT_EQ(second->rec.made, 0);  // no connection_made for the new protocol
  EXPECT_EQ(first->rec.data, "");
  auto third = std::make_shared<RecordingProtocol>();
  third->rec.adopted = true;
  c.transport->set_protocol(third);
  c.peer->send("to third");
  ASSERT_TRUE(run_until(loop, [&] { return third->rec.data_calls > 0; }));
  EXPECT_EQ(third->rec.data, "to third");
  EXPECT_THROW(c.transport->set_protocol(std::make_shared<BaseProtocol>()), std::invalid_argument);
}

TEST(StreamTransport, S19_TcpNoDelayIsSet) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  int fd = *c.transport->get_extra_info_as<int>("socket");
  int flag = 0;
  socklen_t len = sizeof flag;
  ASSERT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &flag, &len), 0);
  EXPECT_NE(flag, 0);
}

TEST(StreamTransport, S20_UnclosedTransportWarnsWhenDestroyed) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  std::unique_ptr<Peer> peer;
  {
    auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
    c.transport->pause_reading();
    run_ready(loop);  // let the pending read wait complete unused
    c.protocol->rec.transport.reset();
    peer = std::move(c.peer);
    std::weak_ptr<Transport> weak = c.transport;
    c.transport.reset();
    loop.run_until([&] { return weak.expired(); }, 2s);
    EXPECT_TRUE(weak.expired());
  }
  EXPECT_EQ(recorder.warnings_containing("unclosed transport"), 1);
  ASSERT_TRUE(peer->receive_eof(loop));  // its socket was closed
}

// The usual ownership: the protocol holds its transport, the transport its
// protocol, nobody else either. Destroying the loop breaks that cycle; the
// transport dies while it lets go of its protocol (ASan checks the order).
// No weak_ptr to the transport here: it would keep the transport's memory
// (allocated with its count) from being freed, and hide a use after free.
TEST(StreamTransport, S21_LoopDestroyedWhileOnlyItsProtocolHoldsTheTransport) {
  std::weak_ptr<RecordingProtocol> protocol;
  auto loop = std::make_unique<EventLoop>();
  {
    auto c = connect_pair(*loop, std::make_shared<RecordingProtocol>());
    c.transport->pause_reading();
    run_ready(*loop);  // nothing pending holds the transport now
    protocol = c.protocol;
  }  // the peer's socket closes here; the loop does not run again
  ASSERT_FALSE(protocol.expired());
  loop.reset();
  EXPECT_TRUE(protocol.expired());
}

TEST(StreamTransport, UnixSocketsShareTheImplementation) {
  EventLoop loop;
  const std::string path = ::testing::TempDir() + "conduit-s-unix-" + std::to_string(::getpid()) + ".sock";
  std::shared_ptr<Server> server;
  auto server_protocol = std::make_shared<RecordingProtocol>();
  server_protocol->keep_open_on_eof = true;
  server_protocol->on_data = [](Transport& t, std::string_view d) { t.write(d); };
  server_protocol->on_eof = [&] { server_protocol->rec.transport->close(); };
  loop.create_unix_server([&] { return server_protocol; }, path, {},
                          [&](std::exception_ptr err, std::shared_ptr<Server> s) {
                            EXPECT_FALSE(err);
                            server = s;
                          });
  ASSERT_TRUE(run_until(loop, [&] { return server != nullptr; }));
  auto client = std::make_shared<RecordingProtocol>();
  std::shared_ptr<Transport> transport;
  loop.create_unix_connection([&] { return client; }, path,
                              [&](std::exception_ptr err, std::shared_ptr<Transport> t, auto) {
                                EXPECT_FALSE(err);
                                transport = t;
                              });
  ASSERT_TRUE(run_until(loop, [&] { return transport != nullptr; }));
  EXPECT_EQ(transport->get_extra_info_as<SocketAddress>("peername")->path(), path);
  transport->write("over unix");
  transport->write_eof();
  ASSERT_TRUE(run_until(loop, [&] { return client->rec.is_lost(); }));
  EXPECT_EQ(client->rec.data, "over unix");
  EXPECT_EQ(client->rec.events, (std::vector<std::string>{"made", "data", "eof", "lost"}));
  server->close();
}
