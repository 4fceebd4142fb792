#include "session_open.hpp"

#include "connection_session.hpp"
#include "datagram_session.hpp"
#include "proxy_session.hpp"
#include "server_session.hpp"
#include "subprocess_session.hpp"
#include "side_events.hpp"

#include <conduit/service/unix_listener.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/stat.h>

#include <filesystem>
#include <system_error>

namespace conduit::service {

void fail_open(const std::shared_ptr<Link>& link, std::exception_ptr error) {
  v1::Event event;
  *event.mutable_open_failed()->mutable_error() = error_of(error);
  const std::string why = event.open_failed().error().message();
  {
    auto held = link->hold_for_end();
    link->emit(std::move(event));
    if (auto side = link->loop_side()) side->failed_to_open(why);
    link->finish(grpc::Status::OK);
  }
  link->set_loop_side(nullptr);
}

void refuse_open(const std::shared_ptr<Link>& link, const std::string& why) {
  refuse_open(link, grpc::Status(grpc::StatusCode::PERMISSION_DENIED, why));
}

void refuse_open(const std::shared_ptr<Link>& link, const grpc::Status& status) {
  link->service().refuse(link->record()->peer, "/conduit.v1.Conduit/Session", status);
  link->finish(status);
  link->set_loop_side(nullptr);
}

void log_session_refusal(Link& link, grpc::StatusCode code, const std::string& why) {
  link.service().refuse(link.record()->peer, "/conduit.v1.Conduit/Session",
                        grpc::Status(code, "session " + link.record()->id + ": " + why));
}

void finish_open(const std::shared_ptr<Link>& link, std::exception_ptr error) {
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const PolicyRefusal& refusal) {
      return refuse_open(link, refusal.what());
    } catch (...) {
    }
  }
  link->service().log_session_opened(*link->record());
  if (error) fail_open(link, error);
}

std::optional<std::string> claim_unix_listen_path(const std::shared_ptr<Link>& link, const std::string& what,
                                                  const std::string& path) {
  ConduitService& service = link->service();
  if (auto why = service.options().policy.check_unix(what, path, true)) {
    refuse_open(link, *why);
    return std::nullopt;
  }
  // The policy resolved the folder already; bind where it resolved, so a
  // link swapped in afterwards cannot move the socket elsewhere.
  std::error_code ec;
  const std::string canonical = resolved_socket_path(path, ec).string();
  if (ec) {
    refuse_open(link, what + ": the folder of " + path + " cannot be resolved (" + ec.message() + ")");
    return std::nullopt;
  }
  if (auto why = service.check_not_own_address(0, canonical)) {
    refuse_open(link, what + ": " + *why);
    return std::nullopt;
  }
  // Taken: the core replaces a socket file at the path, as asyncio does; a
  // remote caller must not take one over from a program listening there,
  // nor have anything else replaced.
  auto taken = [&](const std::string& why) {
    service.log_session_opened(*link->record());
    fail_open(link, std::make_exception_ptr(std::system_error(EADDRINUSE, std::generic_category(), what + ": " + why)));
    return std::nullopt;
  };
  struct stat st {};
  if (::lstat(canonical.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return taken(canonical + " exists and is not a socket");
    if (unix_socket_is_live(service.loop().context(), canonical)) return taken("a server already listens on " + canonical);
  }
  return canonical;
}

namespace {

asio::awaitable<ResolvedNames> resolve_rule_names(std::vector<std::string> names) {
  asio::ip::tcp::resolver resolver(co_await asio::this_coro::executor);
  ResolvedNames resolved;
  for (const auto& name : names) {
    boost::system::error_code ec;
    auto results = co_await resolver.async_resolve(name, "", asio::redirect_error(asio::use_awaitable, ec));
    auto& addresses = resolved[name];
    if (!ec) {
      for (const auto& entry : results) addresses.push_back(entry.endpoint().address());
    }
  }
  co_return resolved;
}

/// write_buffer_high / write_buffer_low of an open message (0: default).
grpc::Status validate_buffer_limits(const std::string& message, std::uint32_t high, std::uint32_t low) {
  if (low != 0 && high == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message + ".write_buffer_low needs write_buffer_high");
  }
  if (low > high) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message + ".write_buffer_low exceeds write_buffer_high");
  }
  return grpc::Status::OK;
}

}  // namespace

void with_rule_names(EventLoop& loop, std::vector<std::string> names,
                     std::function<void(std::shared_ptr<const ResolvedNames>)> then) {
  if (names.empty()) return then(std::make_shared<const ResolvedNames>());
  asio::co_spawn(loop.context(), resolve_rule_names(std::move(names)),
                 [then = std::move(then)](std::exception_ptr, ResolvedNames resolved) {
                   then(std::make_shared<const ResolvedNames>(std::move(resolved)));
                 });
}

AddressCheck policy_check(const Policy& policy, AddressUse use, std::string what,
                          std::shared_ptr<const ResolvedNames> names) {
  return [&policy, use, what = std::move(what), names = std::move(names)](const SocketAddress& address) {
    const std::vector<asio::ip::address> addresses{address.ip()};
    auto why = use == AddressUse::listen ? policy.check_listen(what, addresses, address.port(), *names)
                                         : policy.check_connect(what, addresses, address.port(), *names);
    if (why) throw PolicyRefusal(*why);
  };
}

std::string host_port(const std::string& host, std::uint32_t port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

grpc::Status validate_open(const v1::ClientMessage& message, const ServiceOptions& options) {
  using grpc::Status;
  using grpc::StatusCode;
  switch (message.kind_case()) {
    case v1::ClientMessage::kOpenConnection: {
      const auto& open = message.open_connection();
      if (open.has_tcp()) {
        if (open.tcp().host().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tcp.host is empty");
        if (open.tcp().port() == 0 || open.tcp().port() > 65535) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tcp.port must be 1 to 65535");
        }
        if (open.has_local_addr()) {
          boost::system::error_code ec;
          boost::asio::ip::make_address(open.local_addr().host(), ec);
          if (ec || open.local_addr().port() > 65535) {
            return Status(StatusCode::INVALID_ARGUMENT,
                          "open_connection.local_addr needs a numeric host and a port 0 to 65535");
          }
        }
      } else if (open.target_case() == v1::OpenConnection::kUnixPath) {
        if (open.unix_path().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.unix_path is empty");
        if (open.unix_path().find('\0') != std::string::npos) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_connection.unix_path holds a NUL byte (abstract sockets are not supported)");
        }
        if (open.tls().enabled()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tls: TLS needs tcp");
        if (open.has_local_addr()) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_connection.local_addr: a local address needs tcp");
        }
      } else {
        return Status(StatusCode::INVALID_ARGUMENT, "open_connection: set tcp or unix_path");
      }
      return validate_buffer_limits("open_connection", open.write_buffer_high(), open.write_buffer_low());
    }
    case v1::ClientMessage::kOpenSubprocess: {
      const auto& open = message.open_subprocess();
      if (open.argv().empty() == open.shell().empty()) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess: set exactly one of argv and shell");
      }
      if (!open.argv().empty() && open.argv(0).empty()) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.argv[0] (the program) is empty");
      }
      for (int i = 0; i < open.argv_size(); ++i) {
        if (open.argv(i).find('\0') != std::string::npos) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.argv[" + std::to_string(i) + "] holds a NUL byte");
        }
      }
      if (open.shell().find('\0') != std::string::npos || open.cwd().find('\0') != std::string::npos) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess: shell and cwd may not hold NUL bytes");
      }
      for (const auto& [name, value] : open.env()) {
        if (name.empty() || name.find('=') != std::string::npos || name.find('\0') != std::string::npos ||
            value.find('\0') != std::string::npos) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.env: '" + name +
                                                          "' is not a variable name (empty, or holds '=' or NUL), "
                                                          "or its value holds NUL");
        }
      }
      const bool shell = !open.shell().empty();
      if (auto why = options.policy.check_exec(shell ? std::string() : open.argv(0), shell)) {
        return Status(StatusCode::PERMISSION_DENIED, *why);
      }
      // The caller's environment replaces the child's: LD_PRELOAD and the
      // like would make any allowed program run any code.
      for (const auto& [name, value] : open.env()) {
        if (auto why = options.policy.check_env(name)) return Status(StatusCode::PERMISSION_DENIED, *why);
      }
      return Status::OK;
    }
    case v1::ClientMessage::kOpenDatagramEndpoint: {
      const auto& open = message.open_datagram_endpoint();
      if (!open.has_local_addr() && !open.has_remote_addr()) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_datagram_endpoint: set local_addr, remote_addr or both");
      }
      if (open.has_local_addr() && (open.local_addr().host().empty() || open.local_addr().port() > 65535)) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_datagram_endpoint.local_addr needs a host and a port 0 to 65535");
      }
      if (open.has_remote_addr() &&
          (open.remote_addr().host().empty() || open.remote_addr().port() == 0 || open.remote_addr().port() > 65535)) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_datagram_endpoint.remote_addr needs a host and a port 1 to 65535");
      }
      return Status::OK;
    }
    case v1::ClientMessage::kOpenServer: {
      const auto& open = message.open_server();
      if (open.has_tcp()) {
        if (open.tcp().port() > 65535) return Status(StatusCode::INVALID_ARGUMENT, "open_server.tcp.port must be 0 to 65535");
      } else if (open.target_case() == v1::OpenServer::kUnixPath) {
        if (open.unix_path().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_server.unix_path is empty");
        if (open.unix_path().find('\0') != std::string::npos) {
          return Status(StatusCode::INVALID_ARGUMENT, "open_server.unix_path holds a NUL byte (abstract sockets are not supported)");
        }
        if (open.tls().enabled()) return Status(StatusCode::INVALID_ARGUMENT, "open_server.tls: TLS needs tcp");
      } else {
        return Status(StatusCode::INVALID_ARGUMENT, "open_server: set tcp or unix_path");
      }
      if (open.tls().enabled() && (open.tls().cert_pem().empty() || open.tls().key_pem().empty())) {
        return Status(StatusCode::INVALID_ARGUMENT, "open_server.tls needs cert_pem and key_pem");
      }
      return validate_buffer_limits("open_server", open.write_buffer_high(), open.write_buffer_low());
    }
    case v1::ClientMessage::kOpenProxy: return validate_open_proxy(message.open_proxy());
    case v1::ClientMessage::kCommand:
      return Status(StatusCode::INVALID_ARGUMENT,
                    "the first message must open the session (open_connection, open_server, open_datagram_endpoint, "
                    "open_subprocess or open_proxy), not a command");
    default:
      return Status(StatusCode::INVALID_ARGUMENT,
                    "empty message: set open_connection, open_server, open_datagram_endpoint, open_subprocess or "
                    "open_proxy");
  }
}

namespace {

/// The descriptors a session takes as it opens: its socket (two listeners
/// for a dual-stack server or proxy), or a child's three pipes and pidfd.
/// What it takes later (accepted connections, a proxy's upstreams) is
/// checked as it comes.
std::size_t descriptors_to_open(const v1::ClientMessage& open) {
  if (open.has_open_subprocess()) return 4;
  if (open.has_open_server() || open.has_open_proxy()) return 2;
  return 1;
}

}  // namespace

void open_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& open) {
  auto& descriptors = link->service().descriptors();
  if (!descriptors.allows(descriptors_to_open(open))) {
    return refuse_open(link, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                          "the service's descriptor budget is spent: " + descriptors.describe()));
  }
  // Whatever a request makes fail here (a CA or key OpenSSL will not take,
  // say) is that session's failed open, never an exception out of the loop.
  try {
    if (open.has_open_connection()) open_connection(link, open.open_connection());
    else if (open.has_open_server()) open_server(link, open.open_server());
    else if (open.has_open_datagram_endpoint()) open_datagram_endpoint(link, open.open_datagram_endpoint());
    else if (open.has_open_proxy()) open_proxy(link, open.open_proxy());
    else open_subprocess(link, open.open_subprocess());
  } catch (const std::exception&) {
    fail_open(link, std::current_exception());
  }
}

}  // namespace conduit::service
