// A socket address as get_extra_info("peername"/"sockname") reports it: an IP
// address and port, or a Unix socket path (empty when unnamed).
#pragma once

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <cstdint>
#include <string>
#include <variant>

namespace conduit {

namespace detail {
struct InetAddress {
  boost::asio::ip::address ip;
  std::uint16_t port = 0;
  bool operator==(const InetAddress&) const = default;
};
struct UnixAddress {
  std::string path;
  bool operator==(const UnixAddress&) const = default;
};
}  // namespace detail

/// A value-type socket address, printable, comparable.
class SocketAddress {
 public:
  using Inet = detail::InetAddress;
  using Unix = detail::UnixAddress;

  SocketAddress() = default;
  SocketAddress(boost::asio::ip::address ip, std::uint16_t port) : value_(Inet{ip, port}) {}
  explicit SocketAddress(const boost::asio::ip::tcp::endpoint& ep) : SocketAddress(ep.address(), ep.port()) {}
  explicit SocketAddress(const boost::asio::ip::udp::endpoint& ep) : SocketAddress(ep.address(), ep.port()) {}
  explicit SocketAddress(const boost::asio::local::stream_protocol::endpoint& ep) : value_(Unix{ep.path()}) {}
  explicit SocketAddress(const boost::asio::local::datagram_protocol::endpoint& ep) : value_(Unix{ep.path()}) {}

  /// A Unix-path address.
  static SocketAddress unix_path(std::string path) {
    SocketAddress a;
    a.value_ = Unix{std::move(path)};
    return a;
  }

  bool is_inet() const { return std::holds_alternative<Inet>(value_); }
  bool is_unix() const { return std::holds_alternative<Unix>(value_); }

  /// The IP address (unspecified for a Unix address).
  boost::asio::ip::address ip() const { return is_inet() ? std::get<Inet>(value_).ip : boost::asio::ip::address{}; }
  /// The port (0 for a Unix address).
  std::uint16_t port() const { return is_inet() ? std::get<Inet>(value_).port : 0; }
  /// The Unix path (empty for an IP address).
  std::string path() const { return is_unix() ? std::get<Unix>(value_).path : std::string{}; }

  boost::asio::ip::tcp::endpoint tcp_endpoint() const { return {ip(), port()}; }
  boost::asio::ip::udp::endpoint udp_endpoint() const { return {ip(), port()}; }

  /// "127.0.0.1:80", "[::1]:80" or the path.
  std::string to_string() const;

  bool operator==(const SocketAddress&) const = default;

 private:
  std::variant<Inet, Unix> value_;
};

}  // namespace conduit
