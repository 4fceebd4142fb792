// The address parsers users and remote callers feed: the tools' endpoint
// URLs, `serve --listen`, and the policy's HOST:PORTS rules. Whatever the
// input, each either throws std::invalid_argument or gives a value that
// prints back to something it parses to again, unchanged.
#include <common.hpp>
#include <conduit/service/policy.hpp>

#include <boost/asio/ip/address.hpp>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void endpoint(const std::string& text, conduit::cli::Schemes schemes) {
  conduit::cli::Endpoint first;
  try {
    first = conduit::cli::parse_endpoint(text, schemes);
  } catch (const std::invalid_argument&) {
    return;
  }
  const auto again = conduit::cli::parse_endpoint(first.to_string(), schemes);  // must not throw
  check(again.kind == first.kind && again.host == first.host && again.port == first.port && again.path == first.path);
}

void listen_address(const std::string& text) {
  conduit::cli::ListenAddress first;
  try {
    first = conduit::cli::parse_listen_address(text);
  } catch (const std::invalid_argument&) {
    return;
  }
  const auto again = conduit::cli::parse_listen_address(first.grpc_uri());
  check(again.host == first.host && again.port == first.port && again.unix_path == first.unix_path);
  (void)first.is_local();
}

void rule(const std::string& text) {
  try {
    const auto parsed = conduit::service::AddressRule::parse(text);
    check(parsed.text() == text);
    const conduit::service::ResolvedNames names{{parsed.name(), {boost::asio::ip::make_address("127.0.0.1")}}};
    for (const char* address : {"127.0.0.1", "::1", "::ffff:10.1.2.3", "0.0.0.0", "fd00::1"}) {
      for (std::uint16_t port : {0, 1, 80, 65535})
        (void)parsed.matches(boost::asio::ip::make_address(address), port, names);
    }
  } catch (const std::invalid_argument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  endpoint(text, conduit::cli::stream_schemes);
  endpoint(text, conduit::cli::datagram_schemes);
  listen_address(text);
  rule(text);
  return 0;
}
