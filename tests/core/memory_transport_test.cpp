// tests/support/memory_transport: a protocol unit-tested with no loop and no
// socket, the test playing the peer. Each test checks one stream rule of
// docs/SPEC.md as a protocol sees it through this transport, so that tests
// written on it can trust it.
#include "support/memory_transport.hpp"
#include "support/recording_protocol.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <system_error>

using conduit::testing::MemoryTransport;
using conduit::testing::RecordingBufferedProtocol;
using conduit::testing::RecordingProtocol;

namespace {

/// An echo protocol, as a user would write one: what it is tested with.
auto echo_protocol() {
  auto p = std::make_shared<RecordingProtocol>();
  p->on_data = [](conduit::Transport& t, std::string_view data) { t.write(data); };
  return p;
}

}  // namespace

TEST(MemoryTransport, S5_AnEchoRunsAndAFalseEofClosesIt) {
  auto p = echo_protocol();
  auto t = MemoryTransport::connect(p);
  t->receive("hello");
  t->receive(", world");
  EXPECT_EQ(t->take_written(), "hello, world");
  t->receive_eof();
  EXPECT_EQ(p->rec.events, (std::vector<std::string>{"made", "data", "eof", "lost"}));
  EXPECT_EQ(p->rec.lost_error, nullptr);
  EXPECT_TRUE(t->lost());
}

TEST(MemoryTransport, S12_ACloseInsideDataReceivedLosesTheConnectionAfterItReturns) {
  auto p = std::make_shared<RecordingProtocol>();
  bool inside = false;
  p->on_data = [&](conduit::Transport& t, std::string_view) {
    inside = true;
    t.write("bye");
    t.close();
    EXPECT_EQ(p->rec.lost, 0) << "connection_lost ran inside data_received";
    inside = false;
  };
  auto t = MemoryTransport::connect(p);
  t->receive("x");
  EXPECT_FALSE(inside);
  EXPECT_EQ(p->rec.lost, 1);
  EXPECT_EQ(t->take_written(), "bye");
  t->receive("ignored");  // S12: reading stopped at close
  EXPECT_EQ(p->rec.data, "x");
}

TEST(MemoryTransport, F_PauseAndResumeWritingFollowThePeersPace) {
  auto p = std::make_shared<RecordingProtocol>();
  auto t = MemoryTransport::connect(p);
  t->hold_writes(true);
  t->set_write_buffer_limits(10, 2);
  t->write("0123456789");
  EXPECT_EQ(p->rec.pauses, 0) << "at the high watermark, not past it";
  t->write("a");
  EXPECT_EQ(p->rec.pauses, 1);
  EXPECT_EQ(t->get_write_buffer_size(), 11u);
  t->drain(8);
  EXPECT_EQ(p->rec.resumes, 0) << "3 bytes left, the low watermark is 2";
  t->drain(1);
  EXPECT_EQ(p->rec.resumes, 1);
  t->drain();
  EXPECT_EQ(t->take_written(), "0123456789a");
  t->close();  // the protocol holds its transport until connection_lost
  t->settle();
}

TEST(MemoryTransport, S12_CloseWaitsForTheBufferToDrain) {
  auto p = std::make_shared<RecordingProtocol>();
  auto t = MemoryTransport::connect(p);
  t->hold_writes(true);
  t->write("pending");
  t->close();
  t->settle();
  EXPECT_TRUE(t->is_closing());
  EXPECT_EQ(p->rec.lost, 0);
  t->write(" more");  // S9: still appended while the buffer holds data
  t->drain();
  EXPECT_EQ(p->rec.lost, 1);
  EXPECT_EQ(t->take_written(), "pending more");
}

TEST(MemoryTransport, S7_S8_S9_S13_WritesAtTheEdges) {
  auto p = std::make_shared<RecordingProtocol>();
  auto t = MemoryTransport::connect(p);
  t->write("");
  EXPECT_EQ(t->get_write_buffer_size(), 0u);
  t->write("last");
  t->write_eof();
  EXPECT_TRUE(t->eof_written());
  EXPECT_THROW(t->write("more"), std::logic_error);
  t->abort();
  t->settle();
  EXPECT_EQ(p->rec.lost, 1);
  EXPECT_EQ(t->take_written(), "last");

  auto q = std::make_shared<RecordingProtocol>();
  auto u = MemoryTransport::connect(q);
  u->hold_writes(true);
  u->write("dropped by abort");
  u->abort();
  u->settle();
  u->write("after the end");  // S9: silently dropped
  u->drain();
  EXPECT_EQ(u->take_written(), "");
}

TEST(MemoryTransport, S16_PausedReadingHoldsDataAndTheEofUntilResumed) {
  auto p = std::make_shared<RecordingProtocol>();
  p->keep_open_on_eof = true;
  auto t = MemoryTransport::connect(p);
  t->pause_reading();
  EXPECT_FALSE(t->is_reading());
  t->receive("held");
  t->receive_eof();
  EXPECT_EQ(p->rec.data_calls, 0);
  t->resume_reading();
  t->settle();
  EXPECT_EQ(p->rec.data, "held");
  EXPECT_EQ(p->rec.eofs, 1);
  EXPECT_FALSE(t->lost()) << "eof_received returned true: open for writing";
  t->close();
  t->settle();
  EXPECT_TRUE(t->lost());
}

TEST(MemoryTransport, S14_S15_ErrorsAndThrowingCallbacksAreFatal) {
  auto p = std::make_shared<RecordingProtocol>();
  p->on_data = [](conduit::Transport&, std::string_view) { throw std::runtime_error("bad frame"); };
  auto t = MemoryTransport::connect(p);
  t->receive("x");
  ASSERT_EQ(t->callback_errors().size(), 1u);
  EXPECT_EQ(conduit::testing::describe_error(p->rec.lost_error), "bad frame");

  auto q = std::make_shared<RecordingProtocol>();
  auto u = MemoryTransport::connect(q);
  u->lose(std::make_exception_ptr(std::system_error(std::make_error_code(std::errc::connection_reset))));
  EXPECT_EQ(conduit::testing::error_code_of(q->rec.lost_error), std::errc::connection_reset);
}

TEST(MemoryTransport, B_ABufferedProtocolGetsEveryByteThroughItsOwnBuffer) {
  auto p = std::make_shared<RecordingBufferedProtocol>();
  p->buffer.resize(3);
  auto t = MemoryTransport::connect(p);
  t->set_extra_info("peername", std::string("10.0.0.1:80"));
  t->receive("0123456789");
  EXPECT_EQ(p->rec.data, "0123456789");
  EXPECT_EQ(p->get_buffer_calls, 4);
  EXPECT_EQ(t->get_extra_info_as<std::string>("peername"), "10.0.0.1:80");
  EXPECT_FALSE(t->get_extra_info("sockname").has_value());
  t->abort();
  t->settle();
}
