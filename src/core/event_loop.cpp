#include "conduit/event_loop.hpp"

#include "completion.hpp"
#include "conduit/errors.hpp"
#include "conduit/server.hpp"
#include "loop_internals.hpp"
#include "socket_setup.hpp"
#include "stream_transport.hpp"
#include "tls_transport.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cxxabi.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <typeinfo>

namespace conduit {

namespace {

using asio::use_awaitable;
using tcp = asio::ip::tcp;
using unix_stream = asio::local::stream_protocol;

std::string demangled_type(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name ? name.get() : type.name();
}

void fail(EventLoop& loop, detail::ConnectionHandler handler, std::exception_ptr error) {
  detail::post_completion(loop, std::move(handler), error, std::shared_ptr<Transport>{},
                          std::shared_ptr<BaseProtocol>{});
}

using Connection = std::pair<std::shared_ptr<Transport>, std::shared_ptr<BaseProtocol>>;

// Make the protocol and transport for a connected socket. The transport
// posts connection_made first, so a completion posted after this runs
// after connection_made (SPEC S1).
template <class Socket>
Connection make_connection(EventLoop& loop, const ProtocolFactory& factory, Socket socket) {
  std::shared_ptr<BaseProtocol> protocol = factory();
  if (!protocol) throw std::invalid_argument("the protocol factory returned a null protocol");
  auto transport = std::make_shared<StreamTransport<Socket>>(loop, std::move(socket), nullptr);
  transport->start(protocol);
  return {std::move(transport), std::move(protocol)};
}

void complete_connection(EventLoop& loop, detail::ConnectionHandler handler, std::exception_ptr error,
                         Connection connection) {
  detail::post_completion(loop, std::move(handler), error, std::move(connection.first), std::move(connection.second));
}

template <class Socket>
void finish_connection(EventLoop& loop, const ProtocolFactory& factory, Socket socket,
                       detail::ConnectionHandler handler) {
  try {
    complete_connection(loop, std::move(handler), nullptr, make_connection(loop, factory, std::move(socket)));
  } catch (...) {
    fail(loop, std::move(handler), std::current_exception());
  }
}

[[noreturn]] void throw_connect_errors(std::vector<std::system_error> errors) {
  if (errors.empty())
    throw std::system_error(boost::system::error_code(asio::error::host_not_found),
                            "getaddrinfo() returned empty list");
  for (const auto& e : errors) {
    if (std::string_view(e.what()) != errors.front().what()) throw MultipleErrors(std::move(errors));
  }
  throw errors.front();
}

// The client side of TLS over a connected socket: handshake, then the
// protocol (so a failed handshake never reaches it, SPEC T2).
asio::awaitable<Connection> tls_connection(EventLoop& loop, const ProtocolFactory& factory, tcp::socket socket,
                                           TlsOptions tls) {
  auto transport = std::make_shared<TlsTransport>(loop, std::move(socket), std::move(tls), false, nullptr);
  co_await transport->handshake();
  std::shared_ptr<BaseProtocol> protocol = factory();
  if (!protocol) throw std::invalid_argument("the protocol factory returned a null protocol");
  transport->start(protocol, true);
  co_return Connection{std::move(transport), std::move(protocol)};
}

asio::awaitable<Connection> connect_tcp(EventLoop& loop, ProtocolFactory factory, std::string host, std::uint16_t port,
                                        ConnectOptions options) {
  asio::io_context& context = loop.context();
  tcp::resolver resolver(context);
  auto remotes = co_await detail::resolve(resolver, host, port, {});
  if (options.check_remote_address) {
    for (const auto& remote : remotes) options.check_remote_address(SocketAddress(remote));
  }
  std::vector<tcp::endpoint> locals;
  if (options.local_addr) {
    locals = co_await detail::resolve(resolver, options.local_addr->first, options.local_addr->second,
                                      tcp::resolver::passive);
  }

  std::vector<std::system_error> errors;
  for (const tcp::endpoint& remote : remotes) {
    tcp::socket socket(context);
    boost::system::error_code ec;
    socket.open(remote.protocol(), ec);
    if (ec) {
      errors.emplace_back(ec, "socket() for " + SocketAddress(remote).to_string());
      continue;
    }
    if (options.local_addr) {
      bool bound = false, family_seen = false;
      for (const auto& local : locals) {
        if (local.protocol() != remote.protocol()) continue;
        family_seen = true;
        socket.bind(local, ec);
        if (!ec) {
          bound = true;
          break;
        }
        errors.emplace_back(ec, "error while attempting to bind on address " + SocketAddress(local).to_string());
      }
      if (!family_seen) {
        errors.emplace_back(boost::system::error_code(asio::error::address_family_not_supported),
                            "no matching local address for " + SocketAddress(remote).to_string());
      }
      if (!bound) continue;
    }
    co_await socket.async_connect(remote, asio::redirect_error(use_awaitable, ec));
    if (!ec && options.tls) co_return co_await tls_connection(loop, factory, std::move(socket), *options.tls);
    if (!ec) co_return make_connection(loop, factory, std::move(socket));
    errors.emplace_back(ec, "Connect call failed " + SocketAddress(remote).to_string());
  }
  throw_connect_errors(std::move(errors));
}

asio::awaitable<Connection> connect_unix(EventLoop& loop, ProtocolFactory factory, std::string path) {
  unix_stream::socket socket(loop.context());
  boost::system::error_code ec;
  co_await socket.async_connect(unix_stream::endpoint(path), asio::redirect_error(use_awaitable, ec));
  if (ec) throw std::system_error(ec, "Connect call failed " + path);
  co_return make_connection(loop, factory, std::move(socket));
}

template <class Acceptor>
void bind_listener(Acceptor& acceptor, const typename Acceptor::endpoint_type& endpoint) {
  boost::system::error_code ec;
  acceptor.bind(endpoint, ec);
  if (ec) {
    std::string where = SocketAddress(typename Acceptor::protocol_type::endpoint(endpoint)).to_string();
    throw std::system_error(ec, "error while attempting to bind on address " + where);
  }
}

asio::awaitable<std::vector<detail::ServerListener>> bind_tcp(asio::io_context& context, std::vector<std::string> hosts,
                                                              std::uint16_t port, ServerOptions options) {
  std::vector<tcp::endpoint> endpoints;
  if (hosts.empty()) {
    endpoints = {tcp::endpoint(tcp::v4(), port), tcp::endpoint(tcp::v6(), port)};
  } else {
    tcp::resolver resolver(context);
    for (const auto& host : hosts) {
      for (const auto& endpoint : co_await detail::resolve(resolver, host, port, tcp::resolver::passive)) {
        if (std::find(endpoints.begin(), endpoints.end(), endpoint) == endpoints.end()) endpoints.push_back(endpoint);
      }
    }
  }
  if (options.check_local_address) {
    for (const auto& endpoint : endpoints) options.check_local_address(SocketAddress(endpoint));
  }

  std::vector<detail::ServerListener> listeners;
  for (auto endpoint : endpoints) {
    // With port 0, later sockets take the port the first one got, so that
    // "all interfaces" is one port on IPv4 and IPv6.
    if (port == 0 && !listeners.empty()) {
      endpoint.port(std::get<tcp::acceptor>(listeners.front()).local_endpoint().port());
    }
    tcp::acceptor acceptor(context);
    boost::system::error_code ec;
    acceptor.open(endpoint.protocol(), ec);
    if (ec == asio::error::address_family_not_supported && hosts.empty()) continue;  // no IPv6 here
    if (ec) throw std::system_error(ec, "socket() for " + SocketAddress(endpoint).to_string());
    if (options.reuse_address) acceptor.set_option(tcp::acceptor::reuse_address(true));
    if (options.reuse_port) {
      int on = 1;
      if (::setsockopt(acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
        throw std::system_error(errno, std::generic_category(), "setsockopt(SO_REUSEPORT)");
      }
    }
    // One socket per family: the IPv6 one must not also claim IPv4.
    if (endpoint.address().is_v6()) acceptor.set_option(asio::ip::v6_only(true));
    bind_listener(acceptor, endpoint);
    listeners.emplace_back(std::move(acceptor));
  }
  if (listeners.empty())
    throw std::system_error(boost::system::error_code(asio::error::address_family_not_supported),
                            "no address to listen on");
  co_return listeners;
}

// asyncio removes a stale socket file before binding a Unix server (SPEC
// L4); anything else at that path is the user's and is left alone.
}  // namespace

// ---- the loop itself --------------------------------------------------------

EventLoop::EventLoop() : read_buffer_(new std::byte[read_size]) {
  // Here, not in the initializer list: context_ is constructed last.
  next_turn_ = std::make_unique<detail::NextTurn>(context_.get_executor());
  // Writing to a pipe whose reader is gone must not kill the process; Asio
  // sends with MSG_NOSIGNAL but plain write() on a descriptor does not (R1).
  ::signal(SIGPIPE, SIG_IGN);
}

EventLoop::~EventLoop() {
  // Open transports and their protocols hold each other; only the loop
  // knows them all. Callbacks are over: release them silently.
  while (!resources_.empty()) {
    detail::LoopResource* resource = *resources_.begin();
    resources_.erase(resources_.begin());
    resource->on_loop_destroyed();
  }
  // What waits for the next turn holds transports: let them go while the
  // io_context they belong to still exists.
  next_turn_->clear();
}

void detail::track(EventLoop& loop, LoopResource* resource) { LoopInternals::track(loop, resource); }
void detail::untrack(EventLoop& loop, LoopResource* resource) { LoopInternals::untrack(loop, resource); }

void EventLoop::run_forever() {
  context_.restart();
  auto work = asio::make_work_guard(context_);
  // One run() rather than a run_one() a callback: each run_one() call sets
  // the scheduler's thread state up again and takes its lock once more.
  context_.run();
}

// io_context::stop() lets the callback running finish, runs no other, and
// wakes a run() that waits: what asyncio's stop() does. It is thread-safe.
void EventLoop::stop() { context_.stop(); }

bool EventLoop::run_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  context_.restart();
  auto work = asio::make_work_guard(context_);
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    if (context_.stopped()) context_.restart();  // stop() ends run_forever() only
    context_.run_one_until(deadline);
  }
  return true;
}

void EventLoop::call_soon(std::function<void()> fn) { asio::post(context_, std::move(fn)); }

void EventLoop::call_exception_handler(const ExceptionContext& context) {
  try {
    if (exception_handler_)
      exception_handler_(*this, context);
    else
      default_exception_handler(context);
  } catch (const std::exception& e) {
    log(LogLevel::error, std::string("Unhandled error in exception handler: ") + e.what());
    default_exception_handler(context);
  } catch (...) {
    log(LogLevel::error, "Unhandled error in exception handler");
    default_exception_handler(context);
  }
}

void EventLoop::default_exception_handler(const ExceptionContext& context) {
  std::string text = context.message.empty() ? "Unhandled exception in event loop" : context.message;
  if (context.exception) {
    try {
      std::rethrow_exception(context.exception);
    } catch (const std::exception& e) {
      text += "\n  exception: " + demangled_type(typeid(e)) + ": " + e.what();
    } catch (...) {
      text += "\n  exception: (not a std::exception)";
    }
  }
  if (context.transport) {
    const BaseTransport& transport = *context.transport;
    text += "\n  transport: " + demangled_type(typeid(transport));
  }
  if (context.protocol) {
    const BaseProtocol& protocol = *context.protocol;
    text += "\n  protocol: " + demangled_type(typeid(protocol));
  }
  log(LogLevel::error, text);
}

void EventLoop::log(LogLevel level, std::string_view message) {
  if (log_handler_) return log_handler_(level, message);
  if (level < LogLevel::warning) return;
  static constexpr const char* names[] = {"debug", "info", "warning", "error"};
  std::cerr << "conduit " << names[static_cast<int>(level)] << ": " << message << '\n';
}

// ---- making connections and servers ----------------------------------------

void EventLoop::create_connection_impl(ProtocolFactory factory, std::string host, std::uint16_t port,
                                       ConnectOptions options, detail::ConnectionHandler handler) {
  if (options.tls) {
    if (!options.tls->context) {
      return fail(*this, std::move(handler),
                  std::make_exception_ptr(std::invalid_argument("tls: no SSL context given")));
    }
    // SNI and hostname checks use the host unless told otherwise (SPEC T1).
    if (!options.tls->server_hostname) options.tls->server_hostname = host;
  }
  asio::co_spawn(context_, connect_tcp(*this, std::move(factory), std::move(host), port, std::move(options)),
                 [this, handler = std::move(handler)](std::exception_ptr error, Connection connection) mutable {
                   complete_connection(*this, std::move(handler), error, std::move(connection));
                 });
}

void EventLoop::create_unix_connection_impl(ProtocolFactory factory, std::string path,
                                            detail::ConnectionHandler handler) {
  asio::co_spawn(context_, connect_unix(*this, std::move(factory), std::move(path)),
                 [this, handler = std::move(handler)](std::exception_ptr error, Connection connection) mutable {
                   complete_connection(*this, std::move(handler), error, std::move(connection));
                 });
}

void EventLoop::wrap_socket_impl(ProtocolFactory factory, tcp::socket socket, detail::ConnectionHandler handler) {
  if (!socket.is_open()) {
    return fail(*this, std::move(handler), std::make_exception_ptr(std::invalid_argument("the socket is not open")));
  }
  finish_connection(*this, factory, std::move(socket), std::move(handler));
}

void EventLoop::wrap_socket_impl(ProtocolFactory factory, unix_stream::socket socket,
                                 detail::ConnectionHandler handler) {
  if (!socket.is_open()) {
    return fail(*this, std::move(handler), std::make_exception_ptr(std::invalid_argument("the socket is not open")));
  }
  finish_connection(*this, factory, std::move(socket), std::move(handler));
}

void EventLoop::connect_accepted_socket_impl(ProtocolFactory factory, int fd, detail::ConnectionHandler handler) {
  int type = 0, domain = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    return fail(*this, std::move(handler),
                std::make_exception_ptr(
                    std::system_error(errno, std::generic_category(), "connect_accepted_socket: not a socket")));
  }
  if (type != SOCK_STREAM) {
    return fail(*this, std::move(handler),
                std::make_exception_ptr(std::invalid_argument(
                    "connect_accepted_socket: a stream socket was expected, got socket type " + std::to_string(type))));
  }
  len = sizeof domain;
  ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  boost::system::error_code ec;
  if (domain == AF_INET || domain == AF_INET6) {
    tcp::socket socket(context_);
    socket.assign(domain == AF_INET ? tcp::v4() : tcp::v6(), fd, ec);
    if (!ec) return finish_connection(*this, factory, std::move(socket), std::move(handler));
  } else if (domain == AF_UNIX) {
    unix_stream::socket socket(context_);
    socket.assign(unix_stream(), fd, ec);
    if (!ec) return finish_connection(*this, factory, std::move(socket), std::move(handler));
  } else {
    ec = asio::error::address_family_not_supported;
  }
  fail(*this, std::move(handler), std::make_exception_ptr(std::system_error(ec, "connect_accepted_socket")));
}

void EventLoop::create_server_impl(ProtocolFactory factory, std::vector<std::string> hosts, std::uint16_t port,
                                   ServerOptions options, detail::ServerHandler handler) {
  asio::co_spawn(
      context_, bind_tcp(context_, std::move(hosts), port, options),
      [this, factory = std::move(factory), options, handler = std::move(handler)](
          std::exception_ptr error, std::vector<detail::ServerListener> listeners) mutable {
        std::shared_ptr<Server> server;
        if (!error) {
          server.reset(new Server(*this, std::move(factory), std::move(listeners), options.backlog, "", options.tls));
          if (options.start_serving) {
            try {
              server->start_serving();
            } catch (...) {
              error = std::current_exception();
              server.reset();
            }
          }
        }
        detail::post_completion(*this, std::move(handler), error, std::move(server));
      });
}

void EventLoop::create_unix_server_impl(ProtocolFactory factory, std::string path, ServerOptions options,
                                        detail::ServerHandler handler) {
  std::exception_ptr error;
  std::shared_ptr<Server> server;
  try {
    if (path.empty()) throw std::invalid_argument("create_unix_server: the path is empty");
    detail::remove_stale_socket(path);
    unix_stream::acceptor acceptor(context_, unix_stream());
    bind_listener(acceptor, unix_stream::endpoint(path));
    std::vector<detail::ServerListener> listeners;
    listeners.emplace_back(std::move(acceptor));
    const bool named = path.front() != '\0';
    server.reset(new Server(*this, std::move(factory), std::move(listeners), options.backlog,
                            options.cleanup_socket && named ? path : ""));
    if (options.start_serving) server->start_serving();
  } catch (...) {
    error = std::current_exception();
    server.reset();
  }
  detail::post_completion(*this, std::move(handler), error, std::move(server));
}

}  // namespace conduit
