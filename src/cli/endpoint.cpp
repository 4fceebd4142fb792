#include "endpoint.hpp"

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <charconv>
#include <stdexcept>
#include <system_error>

namespace conduit::cli {

std::string Endpoint::to_string() const {
  if (kind == Kind::unix_path) return "unix://" + path;
  const bool v6 = host.find(':') != std::string::npos;
  return std::string(scheme()) + "://" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string_view Endpoint::scheme() const {
  switch (kind) {
    case Kind::tcp: return "tcp";
    case Kind::tls: return "tls";
    case Kind::udp: return "udp";
    case Kind::unix_path: return "unix";
  }
  return "tcp";
}

std::string Endpoint::url_of(const SocketAddress& address, std::string_view scheme) {
  return address.is_unix() ? "unix://" + address.path() : std::string(scheme) + "://" + address.to_string();
}

namespace {

std::string expected_forms(Schemes schemes) {
  std::string forms;
  for (auto scheme : schemes) {
    if (!forms.empty()) forms += ", ";
    if (scheme == "unix")
      forms += "unix:/PATH";
    else
      forms += std::string(scheme) + "://HOST:PORT";
    if (scheme == schemes.front() && scheme != "unix") forms += " (or HOST:PORT)";
  }
  return forms;
}

/// HOST:PORT or [IPV6]:PORT (the text after any scheme) into `ep`.
void parse_host_port(std::string_view whole, std::string_view rest, Endpoint& ep) {
  const std::string quoted = "'" + std::string(whole) + "'";
  std::string_view host, port;
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      throw std::invalid_argument(quoted + ": expected [IPV6]:PORT");
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
    if (host.find(':') == std::string_view::npos)
      throw std::invalid_argument(quoted + ": only IPv6 addresses go in brackets");
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) throw std::invalid_argument(quoted + ": missing :PORT");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      throw std::invalid_argument(quoted + ": write IPv6 addresses in brackets, [::1]:PORT");
    }
  }
  if (host.empty()) throw std::invalid_argument(quoted + ": the host is empty");
  if (host.find('\0') != std::string_view::npos) throw std::invalid_argument("the host holds a null byte");
  if (host.find('/') != std::string_view::npos) throw std::invalid_argument(quoted + ": a host has no '/'");
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || port.empty() || value > 65535) {
    throw std::invalid_argument(quoted + ": the port must be a number from 0 to 65535");
  }
  ep.host = std::string(host);
  ep.port = static_cast<std::uint16_t>(value);
}

}  // namespace

// One syntax in every tool and flag: SCHEME://HOST:PORT, HOST:PORT for the
// tool's first scheme, and unix:/PATH (or unix:///PATH, the URL form).
Endpoint parse_endpoint(std::string_view url, Schemes schemes) {
  Endpoint ep;
  const std::string quoted = "'" + std::string(url) + "'";
  const bool takes_unix = std::find(schemes.begin(), schemes.end(), "unix") != schemes.end();
  if (url.rfind("unix:", 0) == 0) {
    if (!takes_unix) {
      throw std::invalid_argument(quoted + ": not a Unix socket here (expected " + expected_forms(schemes) + ")");
    }
    std::string_view path = url.substr(5);
    if (path.rfind("//", 0) == 0) path.remove_prefix(2);  // unix:///PATH
    if (path.empty()) throw std::invalid_argument(quoted + ": the unix socket path is empty");
    if (path.find('\0') != std::string_view::npos)
      throw std::invalid_argument("the unix socket path holds a null byte");
    ep.kind = Endpoint::Kind::unix_path;
    ep.path = std::string(path);
    return ep;
  }
  std::string_view scheme = schemes.front(), rest = url;
  if (const auto scheme_end = url.find("://"); scheme_end != std::string_view::npos) {
    scheme = url.substr(0, scheme_end);
    rest = url.substr(scheme_end + 3);
    if (scheme == "unix" || std::find(schemes.begin(), schemes.end(), scheme) == schemes.end()) {
      throw std::invalid_argument(quoted + ": unknown scheme '" + std::string(scheme) + "' (expected " +
                                  expected_forms(schemes) + ")");
    }
  } else if (scheme == "unix") {
    throw std::invalid_argument(quoted + ": expected " + expected_forms(schemes));
  } else if (!url.empty() && url.front() == '/') {
    throw std::invalid_argument(quoted + ": a Unix socket is unix:" + std::string(url) + " (expected " +
                                expected_forms(schemes) + ")");
  }
  ep.kind = scheme == "udp" ? Endpoint::Kind::udp : scheme == "tls" ? Endpoint::Kind::tls : Endpoint::Kind::tcp;
  parse_host_port(url, rest, ep);
  return ep;
}

std::string ListenAddress::grpc_uri() const {
  if (!unix_path.empty()) return "unix:" + unix_path;
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool ListenAddress::is_local() const {
  if (!unix_path.empty() || host == "localhost") return true;
  boost::system::error_code ec;
  auto address = boost::asio::ip::make_address(host, ec);
  return !ec && address.is_loopback();
}

ListenAddress parse_listen_address(const std::string& text) {
  static constexpr std::string_view forms[] = {"tcp", "unix"};
  Endpoint ep;
  try {
    ep = parse_endpoint(text, forms);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("--listen ") + e.what());
  }
  ListenAddress a;
  if (ep.kind == Endpoint::Kind::unix_path) {
    // One slash where there are several ("unix:////run/x" is /run/x), so
    // that grpc_uri() gives back what parses to the same path.
    std::string path = ep.path;
    path.erase(std::unique(path.begin(), path.end(), [](char x, char y) { return x == '/' && y == '/'; }), path.end());
    if (path.front() != '/')
      throw std::invalid_argument("--listen " + text + ": a Unix socket path must be absolute, unix:/PATH");
    a.unix_path = path;
    return a;
  }
  // gRPC reads "unix:PORT" as a Unix socket: a host named unix cannot be
  // said to it (the address fuzzer found "tcp://unix:800").
  if (ep.host == "unix") {
    throw std::invalid_argument("--listen " + text + ": a host named 'unix' reads as a Unix socket; give its address");
  }
  a.host = ep.host;
  a.port = ep.port;
  return a;
}

CLI::Validator endpoint_validator(Schemes schemes) {
  return CLI::Validator(
      [schemes](std::string& value) -> std::string {
        try {
          parse_endpoint(value, schemes);
          return {};
        } catch (const std::invalid_argument& e) {
          return e.what();
        }
      },
      "URL");
}

}  // namespace conduit::cli
