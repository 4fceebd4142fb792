// SPEC B1-B4: BufferedProtocol over real TCP.
#include "support/recording_protocol.hpp"

using namespace conduit;
using namespace conduit::testing;

TEST(BufferedProtocol, B1_ReadsStraightIntoTheProtocolBuffer) {
  EventLoop loop;
  auto protocol = std::make_shared<RecordingBufferedProtocol>();
  protocol->buffer.resize(7);  // smaller than the data: several reads
  auto c = connect_pair(loop, protocol);
  const std::string payload = "abcdefghijklmnopqrstuvwxyz0123456789";
  c.peer->send(payload);
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.data == payload; }));
  EXPECT_GE(protocol->rec.data_calls, 6);
  EXPECT_GE(protocol->get_buffer_calls, protocol->rec.data_calls);
  for (auto hint : protocol->sizehints) EXPECT_EQ(hint, EventLoop::read_size);
}

TEST(BufferedProtocol, B1_LargeTransferInOrder) {
  EventLoop loop;
  auto protocol = std::make_shared<RecordingBufferedProtocol>();
  protocol->buffer.resize(300 * 1024);
  auto c = connect_pair(loop, protocol);
  std::string payload(2 * 1024 * 1024, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 7);
  for (std::size_t off = 0; off < payload.size(); off += 100000) {
    c.peer->send(std::string_view(payload).substr(off, 100000));
    loop.run_until([] { return false; }, 1ms);
  }
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.data.size() == payload.size(); }));
  EXPECT_TRUE(protocol->rec.data == payload);
}

TEST(BufferedProtocol, B2_EmptyBufferIsFatal) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto protocol = std::make_shared<RecordingBufferedProtocol>();
  protocol->buffer.clear();
  auto c = connect_pair(loop, protocol);
  c.peer->send("x");
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  ASSERT_EQ(recorder.exceptions.size(), 1u);
  EXPECT_NE(recorder.exceptions[0].message.find("get_buffer"), std::string::npos);
  EXPECT_TRUE(protocol->rec.lost_error);
  EXPECT_EQ(protocol->rec.data_calls, 0);
}

TEST(BufferedProtocol, B3_GetBufferWithoutBufferUpdatedAtEof) {
  EventLoop loop;
  auto protocol = std::make_shared<RecordingBufferedProtocol>();
  auto c = connect_pair(loop, protocol);
  c.peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  EXPECT_EQ(protocol->get_buffer_calls, 1);
  EXPECT_EQ(protocol->rec.data_calls, 0);
  EXPECT_EQ(protocol->rec.events, (std::vector<std::string>{"made", "eof", "lost"}));
}

TEST(BufferedProtocol, B4_EofSemanticsAsProtocol) {
  EventLoop loop;
  auto protocol = std::make_shared<RecordingBufferedProtocol>();
  protocol->keep_open_on_eof = true;
  auto c = connect_pair(loop, protocol);
  c.peer->send("last words");
  c.peer->shutdown_send();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.eofs == 1; }));
  const int calls = protocol->get_buffer_calls;
  c.transport->pause_reading();
  c.transport->resume_reading();
  loop.run_until([] { return false; }, 50ms);
  EXPECT_EQ(protocol->get_buffer_calls, calls) << "no get_buffer after eof_received";
  EXPECT_FALSE(protocol->rec.is_lost());
  c.transport->write("reply");
  ASSERT_TRUE(c.peer->receive(loop, 5));
  c.transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return protocol->rec.is_lost(); }));
  EXPECT_EQ(protocol->rec.data, "last words");
}
