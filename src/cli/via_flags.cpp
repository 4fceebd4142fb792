#include "via_flags.hpp"

#include "common.hpp"

#include <charconv>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace conduit::cli {

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
    for (const auto& [value, name] : {std::pair{&flags.token_file, "--token-file"},
                                      {&flags.cafile, "--via-cafile"},
                                      {&flags.cert, "--via-cert"},
                                      {&flags.key, "--via-key"}}) {
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

service::RemoteOptions read_remote(const ViaFlags& flags) {
  service::RemoteOptions r;
  r.address = via_address(flags.address);
  r.token = read_token(flags);
  if (!flags.cafile.empty()) r.ca_pem = read_file(flags.cafile, "--via-cafile");
  if (!flags.cert.empty()) r.cert_pem = read_file(flags.cert, "--via-cert");
  if (!flags.key.empty()) r.key_pem = read_file(flags.key, "--via-key");
  return r;
}

std::unique_ptr<Opener> make_opener(EventLoop& loop, const ViaFlags& flags) {
  if (flags.address.empty()) return std::make_unique<LocalOpener>(loop);
  return std::make_unique<service::RemoteOpener>(loop, read_remote(flags));
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

}  // namespace conduit::cli
