// The one address syntax of every conduit tool: endpoint URLs, serve
// --listen's address, and the CLI11 validator that checks them.
#pragma once

#include <conduit/socket_address.hpp>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace conduit::cli {

/// A parsed endpoint: SCHEME://HOST:PORT (tcp, tls, udp; HOST may be [v6]),
/// HOST:PORT alone for the tool's first scheme, or unix:/PATH (unix:///PATH
/// too). Every tool's addresses, and serve --listen, take this one syntax.
struct Endpoint {
  enum class Kind { tcp, tls, udp, unix_path };
  Kind kind = Kind::tcp;
  std::string host;
  std::uint16_t port = 0;
  std::string path;

  /// Back to URL form.
  std::string to_string() const;
  /// "tcp", "tls", "udp" or "unix".
  std::string_view scheme() const;
  /// URL form of a bound or connected address; IP addresses get `scheme`.
  static std::string url_of(const SocketAddress& address, std::string_view scheme = "tcp");
};

/// URL schemes a tool accepts.
using Schemes = std::span<const std::string_view>;
inline constexpr std::string_view stream_scheme_list[] = {"tcp", "tls", "unix"};
inline constexpr Schemes stream_schemes = stream_scheme_list;
inline constexpr std::string_view datagram_scheme_list[] = {"udp"};
inline constexpr Schemes datagram_schemes = datagram_scheme_list;

/// Parse an endpoint URL; throws std::invalid_argument naming the problem
/// (also when its scheme is not among `schemes`).
Endpoint parse_endpoint(std::string_view url, Schemes schemes = stream_schemes);

/// `conduit serve --listen`: [tcp://]HOST:PORT ([IPV6]:PORT) or unix:/PATH.
struct ListenAddress {
  std::string host;  ///< empty for a Unix socket
  std::uint16_t port = 0;
  std::string unix_path;

  /// As gRPC takes it: "127.0.0.1:50051", "[::1]:50051", "unix:/run/c.sock".
  std::string grpc_uri() const;
  /// Whether only this host can reach it (for a Unix socket, its folder's
  /// permissions decide who may call).
  bool is_local() const;
};

/// Parse a --listen value; throws std::invalid_argument naming the problem.
ListenAddress parse_listen_address(const std::string& text);

/// A CLI11 validator for endpoint URLs of the given schemes.
CLI::Validator endpoint_validator(Schemes schemes = stream_schemes);

}  // namespace conduit::cli
