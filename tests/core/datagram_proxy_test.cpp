// The datagram proxy and its faults over real UDP sockets on loopback: raw
// client sockets, the proxy, and an upstream endpoint that records (and by
// default echoes) what it gets.
#include "support/recording_protocol.hpp"

#include <conduit/datagram_proxy.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <set>
#include <string>

using namespace conduit;
using namespace conduit::testing;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using udp = asio::ip::udp;

namespace {

struct UpstreamEndpoint : DatagramProtocol {
  std::shared_ptr<DatagramTransport> transport;
  std::vector<std::pair<std::string, SocketAddress>> received;
  bool echo = true;
  void connection_made(std::shared_ptr<DatagramTransport> t) override { transport = std::move(t); }
  void datagram_received(std::span<const std::byte> data, const SocketAddress& from) override {
    received.emplace_back(std::string(as_string_view(data)), from);
    if (echo) transport->sendto(data, from);
  }
};

/// A plain client socket on 127.0.0.1.
struct Client {
  udp::socket socket;
  std::vector<std::string> received;
  explicit Client(EventLoop& loop) : socket(loop.context(), udp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    socket.non_blocking(true);
  }
  void send(std::string_view text, std::uint16_t port) {
    socket.send_to(asio::buffer(text), udp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }
  void read_available() {
    char buf[65536];
    for (;;) {
      boost::system::error_code ec;
      udp::endpoint from;
      const std::size_t n = socket.receive_from(asio::buffer(buf), from, 0, ec);
      if (ec) return;
      received.emplace_back(buf, n);
    }
  }
};

Fault make(std::string name, FaultDirection direction, fault::Kind kind) {
  return Fault{std::move(name), direction, std::move(kind)};
}

class DatagramProxyTest : public ::testing::Test {
 protected:
  EventLoop loop;
  LoopRecorder recorder{loop};
  std::shared_ptr<UpstreamEndpoint> upstream = std::make_shared<UpstreamEndpoint>();
  std::shared_ptr<DatagramProxy> proxy;
  std::vector<ProxyConnectionInfo> accepted;
  std::vector<ProxyConnectionInfo> closed;

  void start(std::vector<Fault> faults = {}, std::function<void(DatagramProxyOptions&)> adjust = {}) {
    DatagramOptions bind;
    bind.local_addr = {"127.0.0.1", 0};
    loop.create_datagram_endpoint([this] { return upstream; }, bind,
                                  [](std::exception_ptr e, auto, auto) { ASSERT_FALSE(e) << describe_error(e); });
    ASSERT_TRUE(run_until(loop, [&] { return upstream->transport != nullptr; }));
    DatagramProxyOptions options;
    options.listen_host = "127.0.0.1";
    options.upstream_host = "127.0.0.1";
    options.upstream_port = upstream->transport->get_extra_info_as<SocketAddress>("sockname")->port();
    options.faults = std::move(faults);
    options.seed = 7;
    options.on_accepted = [this](const ProxyConnectionInfo& i) { accepted.push_back(i); };
    options.on_closed = [this](const ProxyConnectionInfo& i, std::exception_ptr) { closed.push_back(i); };
    if (adjust) adjust(options);
    DatagramProxy::create(loop, std::move(options), [&](std::exception_ptr e, std::shared_ptr<DatagramProxy> p) {
      ASSERT_FALSE(e) << describe_error(e);
      proxy = p;
    });
    ASSERT_TRUE(run_until(loop, [&] { return proxy != nullptr; }));
  }
  std::uint16_t port() { return proxy->sockets().front().port(); }

  /// Milliseconds for one datagram to go through the proxy and back.
  double round_trip_ms(Client& client, const std::string& text) {
    client.received.clear();
    const auto begin = Clock::now();
    client.send(text, port());
    EXPECT_TRUE(run_until(loop, [&] {
      client.read_available();
      return !client.received.empty();
    }));
    return std::chrono::duration<double, std::milli>(Clock::now() - begin).count();
  }
};

TEST_F(DatagramProxyTest, RelaysBothWaysWithASocketPerClient) {
  start();
  Client a(loop), b(loop);
  round_trip_ms(a, "from a");
  round_trip_ms(b, "from b");
  EXPECT_EQ(a.received, std::vector<std::string>{"from a"});
  EXPECT_EQ(b.received, std::vector<std::string>{"from b"});
  ASSERT_EQ(upstream->received.size(), 2u);
  EXPECT_NE(upstream->received[0].second, upstream->received[1].second) << "one upstream socket per client";
  ASSERT_EQ(accepted.size(), 2u);
  EXPECT_EQ(accepted[0].client->port(), a.socket.local_endpoint().port());
  auto now = proxy->connections();
  ASSERT_EQ(now.size(), 2u);
  EXPECT_EQ(now[0].bytes_upstream + now[1].bytes_upstream, 12u);
  EXPECT_EQ(now[0].bytes_downstream + now[1].bytes_downstream, 12u);
}

TEST_F(DatagramProxyTest, LossDropsThatShareOfDatagrams) {
  start({make("lossy", FaultDirection::upstream, fault::Loss{0.5})});
  upstream->echo = false;
  Client client(loop);
  for (int i = 0; i < 400; ++i) client.send("d" + std::to_string(i), port());
  loop.run_until([] { return false; }, 300ms);
  EXPECT_GT(upstream->received.size(), 120u);
  EXPECT_LT(upstream->received.size(), 280u) << "about half of 400";
  proxy->set_fault(make("lossy", FaultDirection::upstream, fault::Loss{1.0}));
  const std::size_t before = upstream->received.size();
  client.send("never", port());
  loop.run_until([] { return false; }, 100ms);
  EXPECT_EQ(upstream->received.size(), before);
}

TEST_F(DatagramProxyTest, DuplicateSendsEachTwice) {
  start({make("twice", FaultDirection::upstream, fault::Duplicate{1.0})});
  upstream->echo = false;
  Client client(loop);
  client.send("one", port());
  ASSERT_TRUE(run_until(loop, [&] { return upstream->received.size() == 2; }));
  EXPECT_EQ(upstream->received[0].first, "one");
  EXPECT_EQ(upstream->received[1].first, "one");
}

TEST_F(DatagramProxyTest, LatencyDelaysEachWay) {
  start({make("slow", FaultDirection::both, fault::Latency{30ms, {}})});
  Client client(loop);
  EXPECT_GE(round_trip_ms(client, "ping"), 60);
  proxy->remove_fault("slow");
  EXPECT_LT(round_trip_ms(client, "ping"), 30);
}

TEST_F(DatagramProxyTest, ReorderLetsLaterDatagramsOvertake) {
  start({make("shuffle", FaultDirection::upstream, fault::Reorder{0.5, 20ms})});
  upstream->echo = false;
  Client client(loop);
  for (int i = 0; i < 40; ++i) client.send(std::to_string(i), port());
  ASSERT_TRUE(run_until(loop, [&] { return upstream->received.size() == 40; }));
  std::vector<int> order;
  for (const auto& [text, from] : upstream->received) order.push_back(std::stoi(text));
  EXPECT_FALSE(std::is_sorted(order.begin(), order.end()));
  std::sort(order.begin(), order.end());
  for (int i = 0; i < 40; ++i) EXPECT_EQ(order[static_cast<std::size_t>(i)], i) << "none lost";
}

TEST_F(DatagramProxyTest, AnIdleClientIsForgotten) {
  start({}, [](DatagramProxyOptions& o) { o.idle_timeout = 100ms; });
  Client client(loop);
  round_trip_ms(client, "hello");
  ASSERT_TRUE(run_until(loop, [&] { return closed.size() == 1; }));
  EXPECT_TRUE(proxy->connections().empty());
  round_trip_ms(client, "again");
  EXPECT_EQ(accepted.size(), 2u) << "a new flow";
}

TEST_F(DatagramProxyTest, DownDropsThenUpRelaysAgain) {
  start();
  Client client(loop);
  round_trip_ms(client, "before");
  const std::uint16_t where = port();
  proxy->down();
  EXPECT_TRUE(proxy->sockets().empty());
  ASSERT_TRUE(run_until(loop, [&] { return closed.size() == 1; }));
  bool up = false;
  proxy->up([&](std::exception_ptr e) {
    EXPECT_FALSE(e) << describe_error(e);
    up = true;
  });
  ASSERT_TRUE(run_until(loop, [&] { return up; }));
  EXPECT_EQ(port(), where);
  round_trip_ms(client, "after");
  EXPECT_EQ(client.received, std::vector<std::string>{"after"});
}

TEST_F(DatagramProxyTest, AScopedFaultActsFromItsByteCountAndForItsClientsOnly) {
  // Loss of every datagram once a client has sent 10 bytes upstream, for
  // clients in 127.0.0.0/8 only; a fault for another network never acts.
  Fault loss = make("loss", FaultDirection::upstream, fault::Loss{1.0});
  loss.scope.start_after_bytes = 10;
  loss.scope.clients = {fault::Network::parse("127.0.0.0/8")};
  Fault elsewhere = make("elsewhere", FaultDirection::both, fault::Blackhole{});
  elsewhere.scope.clients = {fault::Network::parse("192.0.2.0/24")};
  start({loss, elsewhere});
  Client client(loop);
  EXPECT_LT(round_trip_ms(client, "0123456789"), 1000) << "the first 10 bytes go through";
  client.received.clear();
  client.send("dropped", port());
  EXPECT_FALSE(loop.run_until(
      [&] {
        client.read_available();
        return !client.received.empty();
      },
      150ms));
  ASSERT_EQ(upstream->received.size(), 1u);
}

TEST_F(DatagramProxyTest, RefusesAStreamOnlyFault) {
  start();
  EXPECT_THROW(proxy->set_fault(make("x", FaultDirection::both, fault::Reset{})), std::invalid_argument);
  EXPECT_THROW(proxy->set_fault(make("x", FaultDirection::both, fault::Loss{1.5})), std::invalid_argument);
}

}  // namespace
