// The TLS inputs a remote caller sends as text: a server session's
// certificate, key and client CA, and a connection's CA (PEM). OpenSSL
// decides what is valid; what must hold is that anything else is a thrown
// exception, never a crash or a leak. The input is cut into the three parts
// at the first two "\n--8<--\n" markers.
#include <conduit/tls.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  constexpr std::string_view marker = "\n--8<--\n";
  std::string parts[3];
  for (int i = 0; i < 3; ++i) {
    const auto at = i < 2 ? rest.find(marker) : std::string_view::npos;
    parts[i] = std::string(rest.substr(0, at));
    rest = at == std::string_view::npos ? std::string_view() : rest.substr(at + marker.size());
  }
  try {
    conduit::tls::server_context_from_pem(parts[0], parts[1], parts[2]);
  } catch (const std::exception&) {
  }
  try {
    conduit::tls::client_context_from_pem(parts[0]);
  } catch (const std::exception&) {
  }
  return 0;
}
