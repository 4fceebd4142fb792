// Helpers the loop's socket-making methods share: name resolution with
// asyncio's errors, and replacing a stale Unix socket file.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstdint>
#include <string>
#include <system_error>
#include <vector>

namespace conduit::detail {

/// Resolve like asyncio's getaddrinfo(), failing with a std::system_error
/// naming the host (Asio throws boost::system::system_error, which is not
/// one). A numeric address is taken as it is, as asyncio's _ipaddr_info
/// does: no getaddrinfo() call, so no resolver thread either (a second
/// thread makes every libc socket call pay for pthread cancellation).
template <class Resolver>
boost::asio::awaitable<std::vector<typename Resolver::endpoint_type>> resolve(Resolver& resolver,
                                                                              const std::string& host,
                                                                              std::uint16_t port,
                                                                              typename Resolver::flags flags) {
  using Endpoint = typename Resolver::endpoint_type;
  boost::system::error_code ec;
  const auto numeric = boost::asio::ip::make_address(host, ec);
  if (!ec) co_return std::vector<Endpoint>{Endpoint(numeric, port)};
  auto results = co_await resolver.async_resolve(host, std::to_string(port), flags,
                                                 boost::asio::redirect_error(boost::asio::use_awaitable, ec));
  if (ec) throw std::system_error(ec, "getaddrinfo(" + host + ")");
  std::vector<Endpoint> endpoints;
  for (const auto& entry : results) endpoints.push_back(entry.endpoint());
  co_return endpoints;
}

/// Before binding a Unix socket at `path`: remove a socket file left there
/// by an earlier process; throw if something else is in the way. Abstract
/// (leading NUL) and empty paths are left alone.
void remove_stale_socket(const std::string& path);

}  // namespace conduit::detail
