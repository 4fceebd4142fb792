#include "conduit/socket_address.hpp"

namespace conduit {

std::string SocketAddress::to_string() const {
  if (is_unix()) return path();
  const Inet& inet = std::get<Inet>(value_);
  std::string host = inet.ip.to_string();
  if (inet.ip.is_v6()) host = "[" + host + "]";
  return host + ":" + std::to_string(inet.port);
}

}  // namespace conduit
