#include "session_open.hpp"

#include "session_kind.hpp"
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
    if (unix_socket_is_live(service.loop().context(), canonical))
      return taken("a server already listens on " + canonical);
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

}  // namespace

grpc::Status validate_buffer_limits(const std::string& message, std::uint32_t high, std::uint32_t low) {
  if (low != 0 && high == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message + ".write_buffer_low needs write_buffer_high");
  }
  if (low > high) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message + ".write_buffer_low exceeds write_buffer_high");
  }
  return grpc::Status::OK;
}

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
  if (const SessionKind* kind = session_kind_of(message)) return kind->validate(message, options);
  if (message.has_command()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first message must open the session (" + open_field_list() + "), not a command");
  }
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty message: set " + open_field_list());
}

void open_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& open) {
  const SessionKind& kind = *session_kind_of(open);
  auto& descriptors = link->service().descriptors();
  if (!descriptors.allows(kind.descriptors_to_open)) {
    return refuse_open(link, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                          "the service's descriptor budget is spent: " + descriptors.describe()));
  }
  // Whatever a request makes fail here (a CA or key OpenSSL will not take,
  // say) is that session's failed open, never an exception out of the loop.
  try {
    kind.open(link, open);
  } catch (const std::exception&) {
    fail_open(link, std::current_exception());
  }
}

}  // namespace conduit::service
