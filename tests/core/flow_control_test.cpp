// SPEC F1-F8: write flow control, on the helper and on a real TCP transport.
#include "support/recording_protocol.hpp"

#include <conduit/detail/write_flow_control.hpp>

using namespace conduit;
using namespace conduit::testing;

namespace {

// A connection whose peer does not read until told to, so writes pile up
// once the kernel's buffers are full.
Connected<RecordingProtocol> stalled_pair(EventLoop& loop) {
  return connect_pair(loop, std::make_shared<RecordingProtocol>());
}

// Write until something stays buffered in user space.
void fill_until_buffered(Transport& t) {
  const std::string chunk(64 * 1024, 'x');
  for (int i = 0; i < 4096 && t.get_write_buffer_size() == 0; ++i) t.write(chunk);
  ASSERT_GT(t.get_write_buffer_size(), 0u);
}

// Write until the buffer passes the high watermark.
void fill_until_paused(Transport& t) {
  fill_until_buffered(t);
  t.write(std::string(t.get_write_buffer_limits().second + 1, 'y'));
}

// Let the peer read (and discard) until `done()`.
bool drain_until(EventLoop& loop, Peer& peer, const std::function<bool()>& done) {
  return run_until(loop, [&] {
    peer.read_available();
    peer.received().clear();
    return done();
  });
}

}  // namespace

TEST(FlowControl, F1_Defaults) {
  detail::WriteFlowControl flow(WriteTransport::default_high_water);
  EXPECT_EQ(flow.limits(), (std::pair<std::size_t, std::size_t>{16 * 1024, 64 * 1024}));
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  EXPECT_EQ(c.transport->get_write_buffer_limits(), (std::pair<std::size_t, std::size_t>{16384, 65536}));
}

TEST(FlowControl, F2_SetLimitsFillsInAndValidates) {
  detail::WriteFlowControl flow(65536);
  flow.set_limits(std::nullopt, 1000);
  EXPECT_EQ(flow.limits(), (std::pair<std::size_t, std::size_t>{1000, 4000}));
  flow.set_limits(1000, std::nullopt);
  EXPECT_EQ(flow.limits(), (std::pair<std::size_t, std::size_t>{250, 1000}));
  flow.set_limits(100, 100);
  EXPECT_EQ(flow.limits(), (std::pair<std::size_t, std::size_t>{100, 100}));
  flow.set_limits(std::nullopt, std::nullopt);
  EXPECT_EQ(flow.limits(), (std::pair<std::size_t, std::size_t>{16384, 65536}));
  EXPECT_THROW(flow.set_limits(10, 20), std::invalid_argument);
  EXPECT_THROW(flow.set_limits(10, -1), std::invalid_argument);
  EXPECT_THROW(flow.set_limits(-4, std::nullopt), std::invalid_argument);
  EXPECT_EQ(flow.limits(), (std::pair<std::size_t, std::size_t>{16384, 65536})) << "a rejected call changes nothing";
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  EXPECT_THROW(c.transport->set_write_buffer_limits(1, 2), std::invalid_argument);
}

TEST(FlowControl, F3_PauseOnlyWhenStrictlyAboveHighAndOncePerPause) {
  detail::WriteFlowControl flow(65536);
  flow.set_limits(100, 10);
  EXPECT_FALSE(flow.should_pause(100)) << "at high is not above high";
  EXPECT_TRUE(flow.should_pause(101));
  EXPECT_FALSE(flow.should_pause(500)) << "already paused";

  EventLoop loop;
  auto c = stalled_pair(loop);
  c.transport->set_write_buffer_limits(1024 * 1024);
  bool in_write = false;
  c.protocol->on_pause = [&] { EXPECT_TRUE(in_write) << "pause_writing must be called inside write()"; };
  const std::string chunk(256 * 1024, 'p');
  for (int i = 0; i < 400 && c.protocol->rec.pauses == 0; ++i) {
    in_write = true;
    c.transport->write(chunk);
    in_write = false;
  }
  ASSERT_EQ(c.protocol->rec.pauses, 1);
  EXPECT_GT(c.transport->get_write_buffer_size(), 1024u * 1024);
  c.transport->write(chunk);
  EXPECT_EQ(c.protocol->rec.pauses, 1);
}

TEST(FlowControl, F4_ResumeAtOrBelowLow) {
  detail::WriteFlowControl flow(65536);
  flow.set_limits(100, 10);
  ASSERT_TRUE(flow.should_pause(101));
  EXPECT_FALSE(flow.should_resume(11));
  EXPECT_TRUE(flow.should_resume(10));
  EXPECT_FALSE(flow.should_resume(0)) << "not paused any more";

  EventLoop loop;
  auto c = stalled_pair(loop);
  fill_until_paused(*c.transport);
  ASSERT_EQ(c.protocol->rec.pauses, 1);
  std::size_t buffered_at_resume = SIZE_MAX;
  c.protocol->on_resume = [&] { buffered_at_resume = c.transport->get_write_buffer_size(); };
  // The peer reads everything: the buffer drains and resume_writing fires.
  ASSERT_TRUE(drain_until(loop, *c.peer, [&] { return c.protocol->rec.resumes == 1; }));
  EXPECT_LE(buffered_at_resume, c.transport->get_write_buffer_limits().first);
  EXPECT_EQ(c.protocol->rec.events.back(), "resume");
}

TEST(FlowControl, F5_ZeroHighPausesOnAnyBufferingResumesWhenEmpty) {
  EventLoop loop;
  auto c = stalled_pair(loop);
  c.transport->set_write_buffer_limits(0);
  EXPECT_EQ(c.transport->get_write_buffer_limits(), (std::pair<std::size_t, std::size_t>{0, 0}));
  fill_until_buffered(*c.transport);
  EXPECT_EQ(c.protocol->rec.pauses, 1);
  c.protocol->on_resume = [&] { EXPECT_EQ(c.transport->get_write_buffer_size(), 0u); };
  ASSERT_TRUE(drain_until(loop, *c.peer, [&] { return c.protocol->rec.resumes == 1; }));
}

TEST(FlowControl, F6_SetLimitsMayPauseButNeverResumes) {
  EventLoop loop;
  auto c = stalled_pair(loop);
  c.transport->set_write_buffer_limits(64 * 1024 * 1024);
  fill_until_buffered(*c.transport);
  EXPECT_EQ(c.protocol->rec.pauses, 0);
  const std::size_t buffered = c.transport->get_write_buffer_size();
  c.transport->set_write_buffer_limits(buffered - 1);
  EXPECT_EQ(c.protocol->rec.pauses, 1) << "re-checked at once";
  c.transport->set_write_buffer_limits(64 * 1024 * 1024);
  EXPECT_EQ(c.protocol->rec.resumes, 0) << "raising the limits never resumes by itself";
}

TEST(FlowControl, F7_PauseResumeExceptionsAreReportedNotFatal) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto c = stalled_pair(loop);
  c.protocol->on_pause = [] { throw std::runtime_error("pause boom"); };
  c.protocol->on_resume = [] { throw std::runtime_error("resume boom"); };
  fill_until_paused(*c.transport);
  ASSERT_EQ(recorder.exceptions.size(), 1u);
  EXPECT_NE(recorder.exceptions[0].message.find("pause_writing"), std::string::npos);
  EXPECT_FALSE(c.transport->is_closing());
  ASSERT_TRUE(drain_until(loop, *c.peer, [&] { return c.protocol->rec.resumes == 1; }));
  ASSERT_EQ(recorder.exceptions.size(), 2u);
  EXPECT_NE(recorder.exceptions[1].message.find("resume_writing"), std::string::npos);
  EXPECT_FALSE(c.transport->is_closing());
  c.transport->write("still works");
}

TEST(FlowControl, F8_WriteBufferSizeCountsUserSpaceOnly) {
  EventLoop loop;
  auto c = stalled_pair(loop);
  c.transport->write("small");
  EXPECT_EQ(c.transport->get_write_buffer_size(), 0u) << "the kernel took it";
  c.transport->set_write_buffer_limits(64 * 1024 * 1024);
  fill_until_buffered(*c.transport);
  const std::size_t before = c.transport->get_write_buffer_size();
  c.transport->write("1234567");
  EXPECT_EQ(c.transport->get_write_buffer_size(), before + 7);
}
