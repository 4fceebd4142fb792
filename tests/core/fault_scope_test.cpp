// A fault's scope on its own: client networks, and which of a
// connection's faults act as its age and byte counts grow.
#include <conduit/faults.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>

using namespace conduit;
using namespace std::chrono_literals;
using boost::asio::ip::make_address;

namespace {

Fault named(std::string name, FaultDirection direction) {
  Fault f;
  f.name = std::move(name);
  f.direction = direction;
  f.kind = fault::Latency{10ms, {}};
  return f;
}

std::vector<std::string> names(const FaultList& list) {
  std::vector<std::string> out;
  for (const auto& f : list.all()) out.push_back(f.name);
  return out;
}

}  // namespace

TEST(FaultScope, NetworksMatchByPrefix) {
  const auto net = fault::Network::parse("10.1.0.0/16");
  EXPECT_TRUE(net.contains(make_address("10.1.200.3")));
  EXPECT_FALSE(net.contains(make_address("10.2.0.1")));
  EXPECT_FALSE(net.contains(make_address("::1"))) << "another family";
  EXPECT_EQ(net.to_string(), "10.1.0.0/16");
  const auto one = fault::Network::parse("192.0.2.7");
  EXPECT_TRUE(one.contains(make_address("192.0.2.7")));
  EXPECT_FALSE(one.contains(make_address("192.0.2.8")));
  EXPECT_TRUE(one.contains(make_address("::ffff:192.0.2.7"))) << "an IPv4 client on a dual-stack listener";
  EXPECT_EQ(one.to_string(), "192.0.2.7");
  const auto v6 = fault::Network::parse("fd00::/8");
  EXPECT_TRUE(v6.contains(make_address("fd12::1")));
  EXPECT_FALSE(v6.contains(make_address("fe80::1")));
  EXPECT_TRUE(fault::Network::parse("0.0.0.0/0").contains(make_address("203.0.113.9")));
  const auto list = fault::Network::parse_list(" 10.0.0.0/8 ,192.0.2.7,, fd00::/8");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].to_string(), "10.0.0.0/8");
  EXPECT_EQ(list[2].to_string(), "fd00::/8");
  EXPECT_TRUE(fault::Network::parse_list("").empty());
}

TEST(FaultScope, BadNetworksAreRefusedNamingTheText) {
  for (const char* bad : {"10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", "example.com", "10.0.0.0/8/8", ""}) {
    try {
      fault::Network::parse(bad);
      ADD_FAILURE() << bad << " was taken";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(FaultScope, AScopeThatStopsBeforeItStartsIsRefused) {
  Fault f = named("w", FaultDirection::both);
  f.scope.start_after = 100ms;
  f.scope.stop_after = 50ms;
  EXPECT_THROW(f.validate(), std::invalid_argument);
  f.scope = {};
  f.scope.start_after_bytes = 10;
  f.scope.stop_after_bytes = 10;
  EXPECT_THROW(f.validate(), std::invalid_argument);
}

TEST(FaultScope, ByteWindowsCountTheFaultsOwnDirection) {
  const auto start = ConnectionFaults::Clock::now();
  ConnectionFaults faults(1, start);
  FaultList proxy;
  Fault up = named("up", FaultDirection::upstream);
  up.scope.start_after_bytes = 100;
  Fault both = named("both", FaultDirection::both);
  both.scope.stop_after_bytes = 150;
  proxy.set(up);
  proxy.set(both);
  faults.update(proxy, start);
  EXPECT_EQ(names(faults.get()), std::vector<std::string>{"both"});
  EXPECT_EQ(faults.bytes_to_change(FaultDirection::upstream), 100u);
  EXPECT_EQ(faults.bytes_to_change(FaultDirection::downstream), 150u) << "both's stop";
  faults.carried(FaultDirection::downstream, 90);
  EXPECT_FALSE(faults.refresh(start));
  EXPECT_EQ(faults.bytes_to_change(FaultDirection::upstream), 60u) << "both's stop, counting both ways";
  faults.carried(FaultDirection::upstream, 60);
  EXPECT_TRUE(faults.refresh(start));
  EXPECT_TRUE(faults.get().all().empty()) << "both stopped at 150; up has seen 60 of its 100";
  faults.carried(FaultDirection::upstream, 40);
  EXPECT_TRUE(faults.refresh(start));
  EXPECT_EQ(names(faults.get()), std::vector<std::string>{"up"});
  EXPECT_FALSE(faults.bytes_to_change(FaultDirection::upstream));
}

TEST(FaultScope, TimeWindowsFollowTheConnectionsAge) {
  const auto start = ConnectionFaults::Clock::now();
  ConnectionFaults faults(1, start);
  FaultList proxy;
  Fault f = named("window", FaultDirection::both);
  f.scope.start_after = 10s;
  f.scope.stop_after = 20s;
  proxy.set(f);
  faults.update(proxy, start);
  EXPECT_TRUE(faults.get().all().empty());
  EXPECT_EQ(faults.next_change(), start + 10s);
  EXPECT_TRUE(faults.refresh(start + 10s));
  EXPECT_EQ(names(faults.get()), std::vector<std::string>{"window"});
  EXPECT_TRUE(faults.refresh(start + 20s));
  EXPECT_TRUE(faults.get().all().empty());
}

TEST(FaultScope, AClientFaultWaitsForTheClientsAddress) {
  const auto start = ConnectionFaults::Clock::now();
  ConnectionFaults faults(1, start);
  FaultList proxy;
  Fault f = named("some", FaultDirection::both);
  f.scope.clients = {fault::Network::parse("127.0.0.2")};
  proxy.set(f);
  proxy.set(named("all", FaultDirection::both));
  faults.update(proxy, start);
  EXPECT_EQ(names(faults.get()), std::vector<std::string>{"all"}) << "no address yet";
  faults.set_client(make_address("127.0.0.2"));
  EXPECT_EQ(names(faults.get()), (std::vector<std::string>{"some", "all"}));
  ConnectionFaults other(1, start);
  other.set_client(make_address("127.0.0.1"));
  other.update(proxy, start);
  EXPECT_EQ(names(other.get()), std::vector<std::string>{"all"});
}

TEST(FaultScope, AChangedToxicityDrawsAgainAndOtherChangesKeepTheDraw) {
  const auto start = ConnectionFaults::Clock::now();
  // Over 64 connections, toxicity 0.5 must leave some with the fault and
  // some without (each 2^-64 otherwise); a change of its delay keeps each
  // one's draw; a toxicity of 1 gives it to all.
  std::vector<ConnectionFaults> connections;
  FaultList proxy;
  Fault f = named("half", FaultDirection::both);
  f.toxicity = 0.5;
  proxy.set(f);
  std::vector<bool> drawn;
  for (std::uint64_t seed = 1; seed <= 64; ++seed) {
    connections.emplace_back(seed, start);
    connections.back().update(proxy, start);
    drawn.push_back(!connections.back().get().all().empty());
  }
  EXPECT_NE(std::count(drawn.begin(), drawn.end(), true), 0);
  EXPECT_NE(std::count(drawn.begin(), drawn.end(), false), 0);
  f.kind = fault::Latency{20ms, {}};
  proxy.set(f);
  for (std::size_t i = 0; i < connections.size(); ++i) {
    connections[i].update(proxy, start);
    EXPECT_EQ(!connections[i].get().all().empty(), drawn[i]) << "connection " << i;
  }
  f.toxicity = 1;
  proxy.set(f);
  for (auto& c : connections) {
    c.update(proxy, start);
    EXPECT_EQ(c.get().all().size(), 1u);
  }
}
