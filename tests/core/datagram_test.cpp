// SPEC D1-D8: datagram endpoints over real UDP (IPv4, IPv6) and Unix
// datagram sockets.
#include "support/recording_protocol.hpp"

#include <boost/asio/ip/udp.hpp>
#include <boost/asio/local/datagram_protocol.hpp>

#include <unistd.h>

#include <filesystem>

namespace conduit::testing {
namespace {

using asio::ip::udp;
using unix_datagram = asio::local::datagram_protocol;

/// Records every callback and checks the datagram call grammar.
class RecordingDatagramProtocol : public DatagramProtocol {
 public:
  std::shared_ptr<DatagramTransport> transport;
  std::vector<std::pair<std::string, SocketAddress>> datagrams;
  std::vector<std::error_code> errors;
  int made = 0, lost = 0, pauses = 0, resumes = 0;
  std::exception_ptr lost_error;
  std::function<void(std::string_view)> on_datagram;  // runs inside datagram_received

  void connection_made(std::shared_ptr<DatagramTransport> t) override {
    EXPECT_EQ(made++, 0) << "connection_made twice";
    transport = std::move(t);
  }
  void datagram_received(std::span<const std::byte> data, const SocketAddress& addr) override {
    EXPECT_EQ(made, 1) << "datagram before connection_made";
    EXPECT_EQ(lost, 0) << "datagram after connection_lost";
    datagrams.emplace_back(std::string(as_string_view(data)), addr);
    if (on_datagram) on_datagram(as_string_view(data));
  }
  void error_received(std::exception_ptr exc) override {
    EXPECT_EQ(lost, 0) << "error_received after connection_lost";
    errors.push_back(error_code_of(exc));
  }
  void pause_writing() override {
    EXPECT_EQ(pauses, resumes) << "pause_writing twice in a row";
    ++pauses;
  }
  void resume_writing() override {
    EXPECT_EQ(pauses, resumes + 1) << "resume_writing without a pause";
    ++resumes;
  }
  void connection_lost(std::exception_ptr exc) override {
    EXPECT_EQ(lost++, 0) << "connection_lost twice";
    lost_error = exc;
    transport.reset();
  }
};

using Proto = RecordingDatagramProtocol;

std::shared_ptr<Proto> expect_made(EventLoop& loop, std::exception_ptr& error, std::shared_ptr<Proto>& protocol,
                                   bool& done) {
  run_until(loop, [&] { return done; });
  if (error) std::rethrow_exception(error);
  run_until(loop, [&] { return protocol->made == 1; });
  return protocol;
}

std::shared_ptr<Proto> open_udp(EventLoop& loop, DatagramOptions options) {
  std::shared_ptr<Proto> protocol;
  std::exception_ptr error;
  bool done = false;
  loop.create_datagram_endpoint(
      [] { return std::make_shared<Proto>(); }, std::move(options),
      [&](std::exception_ptr e, std::shared_ptr<DatagramTransport>, std::shared_ptr<Proto> p) {
        error = e;
        protocol = std::move(p);
        done = true;
      });
  return expect_made(loop, error, protocol, done);
}

std::shared_ptr<Proto> open_unix(EventLoop& loop, UnixDatagramOptions options) {
  std::shared_ptr<Proto> protocol;
  std::exception_ptr error;
  bool done = false;
  loop.create_unix_datagram_endpoint(
      [] { return std::make_shared<Proto>(); }, std::move(options),
      [&](std::exception_ptr e, std::shared_ptr<DatagramTransport>, std::shared_ptr<Proto> p) {
        error = e;
        protocol = std::move(p);
        done = true;
      });
  return expect_made(loop, error, protocol, done);
}

DatagramOptions bound_to(std::string host) {
  DatagramOptions o;
  o.local_addr = std::pair{std::move(host), std::uint16_t{0}};
  return o;
}

SocketAddress sockname(const std::shared_ptr<Proto>& p) {
  return *p->transport->get_extra_info_as<SocketAddress>("sockname");
}

/// A fresh path for a Unix socket, removed at the end of the test.
class TempPath {
 public:
  explicit TempPath(const std::string& name)
      : path_(std::filesystem::temp_directory_path() / ("conduit-dgram-" + std::to_string(::getpid()) + "-" + name)) {
    std::filesystem::remove(path_);
  }
  ~TempPath() { std::filesystem::remove(path_); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// ---- D1 ---------------------------------------------------------------------

TEST(Datagram, D1_DatagramsArriveWithTheSenderAddress) {
  EventLoop loop;
  auto a = open_udp(loop, bound_to("127.0.0.1"));
  auto b = open_udp(loop, bound_to("127.0.0.1"));
  const std::string big(60000, 'x');
  b->transport->sendto("hello", sockname(a));
  b->transport->sendto(big, sockname(a));
  ASSERT_TRUE(run_until(loop, [&] { return a->datagrams.size() == 2; }));
  EXPECT_EQ(a->datagrams[0].first, "hello");
  EXPECT_EQ(a->datagrams[0].second, sockname(b));
  EXPECT_EQ(a->datagrams[1].first, big) << "a large datagram arrives whole";
  a->transport->close();
  b->transport->close();
  run_until(loop, [&] { return a->lost == 1 && b->lost == 1; });
  EXPECT_FALSE(a->lost_error);
}

TEST(Datagram, D1_ZeroLengthDatagramsAreSentAndDelivered) {
  EventLoop loop;
  auto a = open_udp(loop, bound_to("127.0.0.1"));
  auto b = open_udp(loop, bound_to("127.0.0.1"));
  b->transport->sendto(std::span<const std::byte>{}, sockname(a));
  b->transport->sendto("after", sockname(a));
  ASSERT_TRUE(run_until(loop, [&] { return a->datagrams.size() == 2; }));
  EXPECT_EQ(a->datagrams[0].first, "");
  EXPECT_EQ(a->datagrams[1].first, "after");
}

TEST(Datagram, D1_WorksOverIpv6) {
  EventLoop loop;
  auto a = open_udp(loop, bound_to("::1"));
  auto b = open_udp(loop, bound_to("::1"));
  EXPECT_TRUE(sockname(a).ip().is_v6());
  b->transport->sendto("six", sockname(a));
  ASSERT_TRUE(run_until(loop, [&] { return a->datagrams.size() == 1; }));
  EXPECT_EQ(a->datagrams[0].second, sockname(b));
}

TEST(Datagram, D1_UnixDatagramsCarryThePathOfTheSender) {
  TempPath server_path("server"), client_path("client");
  EventLoop loop;
  UnixDatagramOptions server_options;
  server_options.local_path = server_path.str();
  auto server = open_unix(loop, server_options);
  UnixDatagramOptions client_options;
  client_options.local_path = client_path.str();
  client_options.remote_path = server_path.str();
  auto client = open_unix(loop, client_options);
  EXPECT_EQ(client->transport->get_extra_info_as<SocketAddress>("peername"),
            SocketAddress::unix_path(server_path.str()));
  client->transport->sendto("ping");
  ASSERT_TRUE(run_until(loop, [&] { return server->datagrams.size() == 1; }));
  EXPECT_EQ(server->datagrams[0].second, SocketAddress::unix_path(client_path.str()));
  server->transport->sendto("pong", server->datagrams[0].second);
  ASSERT_TRUE(run_until(loop, [&] { return client->datagrams.size() == 1; }));
  EXPECT_EQ(client->datagrams[0].first, "pong");
}

// ---- D2 ---------------------------------------------------------------------

TEST(Datagram, D2_UnconnectedSendtoWithoutAddressIsRefusedAndEndpointStaysOpen) {
  EventLoop loop;
  auto a = open_udp(loop, bound_to("127.0.0.1"));
  EXPECT_THROW(a->transport->sendto("x"), std::invalid_argument);
  EXPECT_FALSE(a->transport->is_closing());
  a->transport->sendto("to myself", sockname(a));
  ASSERT_TRUE(run_until(loop, [&] { return a->datagrams.size() == 1; }));
}

TEST(Datagram, D2_ConnectedSendtoTakesNoAddressOrThePeerOnly) {
  EventLoop loop;
  auto server = open_udp(loop, bound_to("127.0.0.1"));
  DatagramOptions options;
  options.remote_addr = std::pair{std::string("127.0.0.1"), sockname(server).port()};
  auto client = open_udp(loop, options);
  EXPECT_EQ(client->transport->get_extra_info_as<SocketAddress>("peername"), sockname(server));
  client->transport->sendto("one");
  client->transport->sendto("two", sockname(server));
  try {
    client->transport->sendto("three", SocketAddress(asio::ip::make_address("127.0.0.1"), 9));
    ADD_FAILURE() << "a different address must be refused";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(sockname(server).to_string()), std::string::npos) << e.what();
  }
  EXPECT_FALSE(client->transport->is_closing());
  ASSERT_TRUE(run_until(loop, [&] { return server->datagrams.size() == 2; }));
  EXPECT_EQ(server->datagrams[1].first, "two");
}

// ---- D3 / D7 ------------------------------------------------------------------

TEST(Datagram, D3_SendErrorGoesToErrorReceivedAndEndpointStaysOpen) {
  EventLoop loop;
  auto a = open_udp(loop, bound_to("127.0.0.1"));
  // Broadcasting without SO_BROADCAST: EACCES from sendto.
  a->transport->sendto("x", SocketAddress(asio::ip::address_v4::broadcast(), 9));
  ASSERT_EQ(a->errors.size(), 1u);
  EXPECT_EQ(a->errors[0], std::errc::permission_denied);
  EXPECT_FALSE(a->transport->is_closing());
  a->transport->sendto("still works", sockname(a));
  ASSERT_TRUE(run_until(loop, [&] { return a->datagrams.size() == 1; }));
}

TEST(Datagram, D7_AllowBroadcastSetsSoBroadcast) {
  EventLoop loop;
  DatagramOptions options = bound_to("127.0.0.1");
  options.allow_broadcast = true;
  auto a = open_udp(loop, options);
  const int fd = *a->transport->get_extra_info_as<int>("socket");
  int on = 0;
  socklen_t len = sizeof on;
  ASSERT_EQ(::getsockopt(fd, SOL_SOCKET, SO_BROADCAST, &on, &len), 0);
  EXPECT_EQ(on, 1);
}

// ---- D4 -----------------------------------------------------------------------

TEST(Datagram, D4_PortUnreachableOnAConnectedEndpointIsErrorReceived) {
  EventLoop loop;
  std::uint16_t closed_port;
  {
    udp::socket probe(loop.context(), udp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    closed_port = probe.local_endpoint().port();
  }
  DatagramOptions options;
  options.remote_addr = std::pair{std::string("127.0.0.1"), closed_port};
  auto client = open_udp(loop, options);
  client->transport->sendto("anyone?");
  ASSERT_TRUE(run_until(loop, [&] { return !client->errors.empty(); }));
  EXPECT_EQ(client->errors[0], std::errc::connection_refused);
  EXPECT_FALSE(client->transport->is_closing());
  EXPECT_EQ(client->lost, 0);
}

// ---- D5 / D6: queueing, with a Unix datagram receiver that does not read -------

struct FullReceiver {
  TempPath path{"full"};
  unix_datagram::socket socket;
  explicit FullReceiver(EventLoop& loop) : socket(loop.context(), unix_datagram::endpoint(path.str())) {}
  std::vector<std::string> drain() {
    std::vector<std::string> got;
    socket.non_blocking(true);
    std::array<char, 4096> buffer;
    for (;;) {
      boost::system::error_code ec;
      std::size_t n = socket.receive(asio::buffer(buffer), 0, ec);
      if (ec) break;
      got.emplace_back(buffer.data(), n);
    }
    return got;
  }
};

/// Sends numbered 1 KiB datagrams until at least `queued` are queued.
int fill_until_queued(const std::shared_ptr<Proto>& sender, std::size_t queued) {
  const std::size_t per = 1024 + DatagramTransport::datagram_overhead;
  int sent = 0;
  for (; sent < 100000 && sender->transport->get_write_buffer_size() < queued * per; ++sent) {
    std::string d = std::to_string(sent);
    d.resize(1024, '.');
    sender->transport->sendto(d);
  }
  return sent;
}

TEST(Datagram, D5_QueuedDatagramsCountWithOverheadAndDriveFlowControl) {
  EventLoop loop;
  FullReceiver receiver(loop);
  UnixDatagramOptions options;
  options.remote_path = receiver.path.str();
  auto sender = open_unix(loop, options);
  const int sent = fill_until_queued(sender, 80);  // > 64 KiB with overhead
  const std::size_t per = 1024 + DatagramTransport::datagram_overhead;
  EXPECT_EQ(sender->transport->get_write_buffer_size() % per, 0u) << "each datagram counts its overhead";
  EXPECT_EQ(sender->pauses, 1) << "strictly above the high watermark pauses";
  // Drain as the sender flushes, until every datagram arrived.
  std::vector<std::string> got;
  ASSERT_TRUE(run_until(loop, [&] {
    for (auto& d : receiver.drain()) got.push_back(std::move(d));
    return static_cast<int>(got.size()) == sent;
  }));
  EXPECT_EQ(sender->transport->get_write_buffer_size(), 0u) << "the overhead leaves with each datagram";
  EXPECT_EQ(sender->resumes, 1);
  for (int i = 0; i < sent; ++i) {
    ASSERT_EQ(got[static_cast<std::size_t>(i)].substr(0, std::to_string(i).size() + 1), std::to_string(i) + ".")
        << "datagram " << i << " out of order";
  }
}

TEST(Datagram, D6_CloseFlushesQueuedDatagramsThenConnectionLost) {
  EventLoop loop;
  FullReceiver receiver(loop);
  UnixDatagramOptions options;
  options.remote_path = receiver.path.str();
  auto sender = open_unix(loop, options);
  const int sent = fill_until_queued(sender, 4);
  sender->transport->close();
  EXPECT_TRUE(sender->transport->is_closing());
  run_ready(loop);
  EXPECT_EQ(sender->lost, 0) << "connection_lost waits for the queue to flush";
  std::size_t got = 0;
  ASSERT_TRUE(run_until(loop, [&] {
    got += receiver.drain().size();
    return sender->lost == 1;
  }));
  got += receiver.drain().size();
  EXPECT_EQ(got, static_cast<std::size_t>(sent));
  EXPECT_FALSE(sender->lost_error);
}

TEST(Datagram, D6_AbortDropsQueuedDatagrams) {
  EventLoop loop;
  FullReceiver receiver(loop);
  UnixDatagramOptions options;
  options.remote_path = receiver.path.str();
  auto sender = open_unix(loop, options);
  const int sent = fill_until_queued(sender, 4);
  sender->transport->abort();
  ASSERT_TRUE(run_until(loop, [&] { return sender->lost == 1; }));
  EXPECT_LT(receiver.drain().size(), static_cast<std::size_t>(sent));
  EXPECT_FALSE(sender->lost_error);
}

TEST(Datagram, D6_SendtoAfterCloseIsDroppedWithAWarningFromTheFifth) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto a = open_udp(loop, bound_to("127.0.0.1"));
  const SocketAddress self = sockname(a);
  auto transport = a->transport;
  transport->close();
  run_until(loop, [&] { return a->lost == 1; });
  for (int i = 0; i < 5; ++i) transport->sendto("late", self);
  EXPECT_EQ(recorder.warnings_containing("socket.send() raised exception."), 1);
}

// ---- D7 -----------------------------------------------------------------------

TEST(Datagram, D7_ReuseAddressIsRefused) {
  EventLoop loop;
  DatagramOptions options = bound_to("127.0.0.1");
  options.reuse_address = true;
  try {
    open_udp(loop, options);
    ADD_FAILURE() << "reuse_address must be refused";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("reuse_address"), std::string::npos) << e.what();
  }
}

TEST(Datagram, D7_ReusePortLetsTwoEndpointsBindOnePort) {
  EventLoop loop;
  DatagramOptions options = bound_to("127.0.0.1");
  options.reuse_port = true;
  auto a = open_udp(loop, options);
  options.local_addr->second = sockname(a).port();
  auto b = open_udp(loop, options);
  EXPECT_EQ(sockname(b), sockname(a));
  // Without it, the second bind fails with EADDRINUSE.
  DatagramOptions plain = bound_to("127.0.0.1");
  plain.local_addr->second = sockname(a).port();
  try {
    open_udp(loop, plain);
    ADD_FAILURE() << "binding a used port must fail";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::address_in_use) << e.what();
  }
}

TEST(Datagram, D7_NoAddressNeedsAFamily) {
  EventLoop loop;
  EXPECT_THROW(open_udp(loop, {}), std::invalid_argument);
  DatagramOptions options;
  options.family = AddressFamily::ipv4;
  auto a = open_udp(loop, options);
  EXPECT_TRUE(a->transport->get_extra_info_as<int>("socket").has_value());
}

TEST(Datagram, D7_FamilyMismatchBetweenLocalAndRemoteIsAnError) {
  EventLoop loop;
  DatagramOptions options = bound_to("127.0.0.1");
  options.remote_addr = std::pair{std::string("::1"), std::uint16_t{9}};
  try {
    open_udp(loop, options);
    ADD_FAILURE() << "no family has both addresses";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "can not get address information");
  }
}

// ---- D8 -----------------------------------------------------------------------

TEST(Datagram, D8_ThrowingDatagramReceivedIsReportedAndEndpointStaysOpen) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  auto a = open_udp(loop, bound_to("127.0.0.1"));
  a->on_datagram = [](std::string_view d) {
    if (d == "boom") throw std::runtime_error("boom");
  };
  a->transport->sendto("boom", sockname(a));
  a->transport->sendto("fine", sockname(a));
  ASSERT_TRUE(run_until(loop, [&] { return a->datagrams.size() == 2; }));
  ASSERT_EQ(recorder.exceptions.size(), 1u);
  EXPECT_EQ(recorder.exceptions[0].message, "Exception in callback protocol.datagram_received()");
  EXPECT_FALSE(a->transport->is_closing());
}

TEST(Datagram, FactoryMustMakeADatagramProtocol) {
  EventLoop loop;
  std::exception_ptr error;
  bool done = false;
  loop.create_datagram_endpoint([] { return std::make_shared<RecordingProtocol>(); }, bound_to("127.0.0.1"),
                                [&](std::exception_ptr e, auto, auto) {
                                  error = e;
                                  done = true;
                                });
  run_until(loop, [&] { return done; });
  EXPECT_TRUE(error);
}

}  // namespace
}  // namespace conduit::testing
