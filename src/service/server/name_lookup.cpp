#include "name_lookup.hpp"

#include <boost/asio/post.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <memory>

namespace conduit::service {

NameLookups::NameLookups(std::size_t threads, std::size_t max_pending) : pool_(threads), max_pending_(max_pending) {}

NameLookups::~NameLookups() { pool_.join(); }

bool NameLookups::submit(std::function<void()> lookup) {
  if (pending_.fetch_add(1) >= max_pending_) {
    pending_.fetch_sub(1);
    return false;
  }
  boost::asio::post(pool_, [this, lookup = std::move(lookup)] {
    lookup();
    pending_.fetch_sub(1);
  });
  return true;
}

void NameLookups::getaddrinfo(const v1::GetAddrInfoRequest& request, v1::GetAddrInfoResponse& response) {
  addrinfo hints{};
  hints.ai_family = request.family();
  hints.ai_socktype = request.type();
  hints.ai_protocol = request.protocol();
  hints.ai_flags = request.flags();
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(request.has_host() ? request.host().c_str() : nullptr,
                               request.has_port() ? request.port().c_str() : nullptr, &hints, &found);
  if (rc != 0) {
    response.set_gai_error(rc);
    response.set_message(rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc));
    return;
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owned(found, &::freeaddrinfo);
  for (const addrinfo* at = found; at != nullptr; at = at->ai_next) {
    auto* info = response.add_addresses();
    info->set_family(at->ai_family);
    info->set_type(at->ai_socktype);
    info->set_protocol(at->ai_protocol);
    if (at->ai_canonname != nullptr) info->set_canonname(at->ai_canonname);
    char text[INET6_ADDRSTRLEN] = {};
    if (at->ai_family == AF_INET) {
      const auto* v4 = reinterpret_cast<const sockaddr_in*>(at->ai_addr);
      ::inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text);
      info->set_port(ntohs(v4->sin_port));
    } else if (at->ai_family == AF_INET6) {
      const auto* v6 = reinterpret_cast<const sockaddr_in6*>(at->ai_addr);
      ::inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof text);
      info->set_port(ntohs(v6->sin6_port));
      info->set_flowinfo(ntohl(v6->sin6_flowinfo));
      info->set_scope_id(v6->sin6_scope_id);
    }
    info->set_host(text);
  }
}

void NameLookups::getnameinfo(const v1::GetNameInfoRequest& request, v1::GetNameInfoResponse& response) {
  sockaddr_storage address{};
  socklen_t length = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address);
  if (::inet_pton(AF_INET, request.host().c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<std::uint16_t>(request.port()));
    length = sizeof *v4;
  } else if (::inet_pton(AF_INET6, request.host().c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<std::uint16_t>(request.port()));
    v6->sin6_flowinfo = htonl(request.flowinfo());
    v6->sin6_scope_id = request.scope_id();
    length = sizeof *v6;
  } else {
    // As getnameinfo answers a host it cannot parse (Python gives the
    // same for a name: the address must be numeric).
    response.set_gai_error(EAI_NONAME);
    response.set_message(gai_strerror(EAI_NONAME));
    return;
  }
  char host[NI_MAXHOST] = {};
  char service[NI_MAXSERV] = {};
  const int rc = ::getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, host, sizeof host, service,
                               sizeof service, request.flags());
  if (rc != 0) {
    response.set_gai_error(rc);
    response.set_message(rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc));
    return;
  }
  response.set_host(host);
  response.set_service(service);
}

}  // namespace conduit::service
