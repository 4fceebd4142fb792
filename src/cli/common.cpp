#include "common.hpp"

#include <conduit/tls.hpp>

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <iostream>
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
    if (scheme == "unix") forms += "unix:/PATH";
    else forms += std::string(scheme) + "://HOST:PORT";
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
    if (host.find(':') == std::string_view::npos) throw std::invalid_argument(quoted + ": only IPv6 addresses go in brackets");
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
    if (path.find('\0') != std::string_view::npos) throw std::invalid_argument("the unix socket path holds a null byte");
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
  auto address = asio::ip::make_address(host, ec);
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
    if (path.front() != '/') throw std::invalid_argument("--listen " + text + ": a Unix socket path must be absolute, unix:/PATH");
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

CLI::Validator seconds_validator(double max) {
  return CLI::Validator(
      [max](std::string& value) -> std::string {
        double seconds = 0;
        const char* end = value.data() + value.size();
        auto [ptr, ec] = std::from_chars(value.data(), end, seconds);
        char limit[32];
        std::snprintf(limit, sizeof limit, "%.10g", max);
        const std::string range = "a number of seconds from 0.001 to " + std::string(limit);
        if (ec != std::errc() || ptr != end || !std::isfinite(seconds)) return "'" + value + "' is not " + range;
        if (seconds < 0.001 || seconds > max) return "'" + value + "' is out of range: give " + range;
        return {};
      },
      "SECONDS");
}

std::string format_seconds(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.10g", seconds);
  return text;
}

void add_tls_flags(CLI::App& app, TlsFlags& flags, bool server) {
  if (server) {
    app.add_option("--cert", flags.cert, "TLS: certificate chain (PEM) for tls:// listeners")->check(CLI::ExistingFile);
    app.add_option("--key", flags.key, "TLS: private key (PEM) of --cert")->check(CLI::ExistingFile);
    app.add_option("--cafile", flags.cafile, "TLS: require client certificates signed by this CA (mTLS)")
        ->check(CLI::ExistingFile);
  } else {
    app.add_option("--cafile", flags.cafile, "TLS: trust this CA (PEM) instead of the system's")->check(CLI::ExistingFile);
    app.add_flag("--insecure", flags.insecure, "TLS: do not verify the server's certificate or name");
    app.add_option("--cert", flags.cert, "TLS: client certificate (PEM), for servers that ask")->check(CLI::ExistingFile);
    app.add_option("--key", flags.key, "TLS: private key (PEM) of --cert")->check(CLI::ExistingFile);
  }
}

std::string tls_flags_problem(const TlsFlags& flags, bool uses_tls, bool server) {
  const bool any = !flags.cert.empty() || !flags.key.empty() || !flags.cafile.empty() || flags.insecure;
  if (any && !uses_tls) {
    const char* flag = !flags.cert.empty() ? "--cert" : !flags.key.empty() ? "--key" : !flags.cafile.empty() ? "--cafile" : "--insecure";
    return std::string(flag) + " applies to tls:// endpoints only, and none is given";
  }
  if (!flags.key.empty() && flags.cert.empty()) return "--key needs --cert";
  if (!flags.cert.empty() && flags.key.empty()) {
    // A client's --cert may hold its key too (one PEM file); else say so
    // rather than let OpenSSL report a decoder failure.
    std::ifstream file(flags.cert);
    const std::string pem((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (server || pem.find("PRIVATE KEY-----") == std::string::npos) {
      return "--cert " + flags.cert + " needs --key (the file holds no private key)";
    }
  }
  return {};
}

int exit_code_for(std::exception_ptr error, int otherwise) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const service::ServiceUnreachable&) {
    return exit_service_unreachable;
  } catch (...) {
  }
  return otherwise;
}

TlsOptions client_tls_options(const TlsFlags& flags) {
  auto context = flags.insecure ? tls::insecure_client_context()
                                : tls::client_context(flags.cafile.empty() ? std::nullopt : std::optional(flags.cafile));
  if (!flags.cert.empty()) {
    context->use_certificate_chain_file(flags.cert);
    context->use_private_key_file(flags.key.empty() ? flags.cert : flags.key, asio::ssl::context::pem);
  }
  return TlsOptions(std::move(context));
}

v1::OpenConnection remote_connect_request(const Endpoint& ep, const TlsFlags& flags) {
  v1::OpenConnection open;
  if (ep.kind == Endpoint::Kind::unix_path) {
    open.set_unix_path(ep.path);
    return open;
  }
  open.mutable_tcp()->set_host(ep.host);
  open.mutable_tcp()->set_port(ep.port);
  if (ep.kind == Endpoint::Kind::tls) {
    auto* t = open.mutable_tls();
    t->set_enabled(true);
    t->set_insecure(flags.insecure);
    if (!flags.cafile.empty()) t->set_ca_pem(read_file(flags.cafile, "--cafile"));
  }
  return open;
}

v1::OpenServer remote_listen_request(const Endpoint& ep, const TlsFlags& flags, int backlog) {
  v1::OpenServer open;
  if (ep.kind == Endpoint::Kind::unix_path) {
    open.set_unix_path(ep.path);
  } else {
    open.mutable_tcp()->set_host(ep.host);
    open.mutable_tcp()->set_port(ep.port);
  }
  if (ep.kind == Endpoint::Kind::tls) {
    auto* t = open.mutable_tls();
    t->set_enabled(true);
    t->set_cert_pem(read_file(flags.cert, "--cert"));
    t->set_key_pem(read_file(flags.key, "--key"));
    if (!flags.cafile.empty()) t->set_client_ca_pem(read_file(flags.cafile, "--cafile"));
  }
  open.set_backlog(static_cast<std::uint32_t>(backlog));
  return open;
}

std::string via_address(const std::string& text) {
  constexpr const char* usage = " (--via takes [tcp://]HOST[:PORT], port 50051 if left out, or unix:/PATH)";
  if (text.empty()) throw std::invalid_argument(std::string("--via is empty") + usage);
  if (text.rfind("unix:", 0) == 0) return text;
  std::string address = text;
  if (address.rfind("tcp://", 0) == 0) address = address.substr(6);
  if (const auto scheme_end = address.find("://"); scheme_end != std::string::npos) {
    throw std::invalid_argument("--via " + text + ": the service speaks gRPC over tcp:// or unix:, not '" +
                                address.substr(0, scheme_end) + "'" + usage);
  }
  if (address.empty()) throw std::invalid_argument("--via " + text + ": no host" + usage);
  std::string host = address, port;
  if (address.front() == '[') {
    const auto close = address.find(']');
    if (close == std::string::npos) throw std::invalid_argument("--via " + text + ": no ']' after the IPv6 address");
    host = address.substr(0, close + 1);
    if (close + 1 < address.size()) {
      if (address[close + 1] != ':') throw std::invalid_argument("--via " + text + ": expected ':PORT' after ']'");
      port = address.substr(close + 2);
    }
  } else if (const auto colon = address.find(':'); colon != std::string::npos) {
    if (address.find(':', colon + 1) != std::string::npos) {
      throw std::invalid_argument("--via " + text + ": write IPv6 addresses in brackets, e.g. [::1]:50051");
    }
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  if (host.empty() || host == "[]") throw std::invalid_argument("--via " + text + ": no host" + usage);
  if (host == "unix") {  // gRPC would read "unix:PORT" as a Unix socket
    throw std::invalid_argument("--via " + text + ": a host named 'unix' reads as a Unix socket; give its address");
  }
  if (port.empty()) return host + ":50051";
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535) {
    throw std::invalid_argument("--via " + text + ": '" + port + "' is not a port (1 to 65535)");
  }
  return host + ":" + port;
}

std::string via_flags_problem(const ViaFlags& flags) {
  if (!flags.address.empty()) {
    try {
      via_address(flags.address);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
  }
  if (flags.address.empty()) {
    for (const auto& [value, name] : {std::pair{&flags.token_file, "--token-file"}, {&flags.cafile, "--via-cafile"},
                                      {&flags.cert, "--via-cert"}, {&flags.key, "--via-key"}}) {
      if (!value->empty()) return std::string(name) + " applies with --via only";
    }
    return {};
  }
  if (flags.cert.empty() != flags.key.empty()) return "--via-cert and --via-key go together";
  if (!flags.cert.empty() && flags.cafile.empty()) return "--via-cert needs --via-cafile (mTLS is TLS)";
  return {};
}

void add_via_flags(CLI::App& app, ViaFlags& flags) {
  app.add_option("--via", flags.address,
                 "Run through the conduit service at HOST[:PORT] (port 50051 if left out) or unix:/PATH (a session "
                 "on its host)");
  app.add_option("--token-file", flags.token_file, "With --via: file whose first line is the service's bearer token")
      ->check(CLI::ExistingFile);
  app.add_option("--via-cafile", flags.cafile, "With --via: speak TLS to the service, trusting this CA (PEM)")
      ->check(CLI::ExistingFile);
  app.add_option("--via-cert", flags.cert, "With --via-cafile: client certificate (PEM) for a service that asks (mTLS)")
      ->check(CLI::ExistingFile);
  app.add_option("--via-key", flags.key, "With --via-cert: its private key (PEM)")->check(CLI::ExistingFile);
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream file(path);
  if (!file) throw std::invalid_argument(std::string("cannot read ") + what + " " + path);
  return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

service::RemoteOptions read_remote(const ViaFlags& flags) {
  service::RemoteOptions r;
  r.address = via_address(flags.address);
  r.token = read_token(flags);
  if (!flags.cafile.empty()) r.ca_pem = read_file(flags.cafile, "--via-cafile");
  if (!flags.cert.empty()) r.cert_pem = read_file(flags.cert, "--via-cert");
  if (!flags.key.empty()) r.key_pem = read_file(flags.key, "--via-key");
  return r;
}

std::string read_token(const ViaFlags& flags) {
  if (flags.token_file.empty()) return {};
  std::ifstream file(flags.token_file);
  std::string token;
  if (!std::getline(file, token) || token.empty()) {
    throw std::invalid_argument("cannot read a token from --token-file " + flags.token_file);
  }
  return token;
}

void add_output_flags(CLI::App& app, OutputOptions& options) {
  app.add_flag("-v,--verbose", options.verbose, "Log each protocol event to stderr");
  app.add_flag("-x,--hex", options.hex, "Hex-dump the data of each event to stderr");
  app.add_flag("--json", options.json, "Print final statistics as JSON on stdout");
  app.add_flag("-q,--quiet", options.quiet, "Print nothing but errors (and --json)");
}

void EventLog::event(std::string_view who, std::string_view what) const {
  if (!enabled()) return;
  std::cerr << '[' << who << "] " << what << '\n';
}

void EventLog::write_data(std::string_view who, std::string_view what, std::span<const std::byte> data) const {
  std::cerr << '[' << who << "] " << what << ' ' << data.size() << " bytes\n";
  if (options_.hex) std::cerr << hex_dump(data);
}

RttSummary::RttSummary(const std::vector<double>& rtts_ms) {
  if (rtts_ms.empty()) return;
  min = *std::min_element(rtts_ms.begin(), rtts_ms.end());
  max = *std::max_element(rtts_ms.begin(), rtts_ms.end());
  double sum = 0;
  for (double v : rtts_ms) sum += v;
  avg = sum / static_cast<double>(rtts_ms.size());
}

std::string RttSummary::json() const {
  return "{\"min\":" + std::to_string(min) + ",\"avg\":" + std::to_string(avg) + ",\"max\":" + std::to_string(max) + "}";
}

std::string hex_dump(std::span<const std::byte> data) {
  std::string out;
  char line[128];
  for (std::size_t off = 0; off < data.size(); off += 16) {
    int n = std::snprintf(line, sizeof line, "  %08zx ", off);
    out.append(line, static_cast<std::size_t>(n));
    std::string ascii;
    for (std::size_t i = 0; i < 16; ++i) {
      if (off + i < data.size()) {
        const auto b = static_cast<unsigned char>(data[off + i]);
        n = std::snprintf(line, sizeof line, " %02x", b);
        out.append(line, static_cast<std::size_t>(n));
        ascii += (b >= 0x20 && b < 0x7f) ? static_cast<char>(b) : '.';
      } else {
        out += "   ";
      }
    }
    out += "  |" + ascii + "|\n";
  }
  return out;
}

std::string describe(std::exception_ptr error) {
  if (!error) return {};
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

}  // namespace conduit::cli
