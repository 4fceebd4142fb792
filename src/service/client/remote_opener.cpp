// RemoteOpener: the core's options turned into open messages, each kind's
// session opened (sessions.hpp), and its completion given the local
// Opener's shape. What the service cannot be handed is refused here, before
// anything is sent, with std::invalid_argument naming the option.
#include <conduit/service/remote.hpp>

#include "codec.hpp"
#include "sessions.hpp"

#include <boost/asio/post.hpp>

#include <stdexcept>

namespace conduit::service {

namespace {

/// Complete `handler` with `error` (and nulls), posted as every completion is.
template <class Handler>
void fail(EventLoop& loop, Handler handler, std::exception_ptr error) {
  asio::post(loop.context(), [handler = std::move(handler), error]() mutable {
    if constexpr (std::is_invocable_v<Handler, std::exception_ptr, std::nullptr_t>) {
      std::move(handler)(error, nullptr);
    } else {
      std::move(handler)(error, nullptr, nullptr);
    }
  });
}

std::invalid_argument refused(const std::string& what) { return std::invalid_argument("a remote " + what); }

v1::HostPort host_port(const std::string& host, std::uint16_t port) {
  v1::HostPort out;
  out.set_host(host);
  out.set_port(port);
  return out;
}

/// A client's TLS as the service takes it: the PEM the context was made of.
v1::TlsClient tls_client(const TlsOptions& tls, const char* what) {
  if (!tls.pem) {
    throw refused(std::string(what) +
                  " needs TLS options made from PEM text (tls::client_options): an OpenSSL "
                  "context cannot be sent to the service");
  }
  v1::TlsClient out;
  out.set_enabled(true);
  if (tls.server_hostname) out.set_server_hostname(*tls.server_hostname);
  out.set_ca_pem(tls.pem->ca);
  out.set_insecure(!tls.pem->verify);
  return out;
}

v1::TlsServer tls_server(const TlsOptions& tls, const char* what) {
  if (!tls.pem) {
    throw refused(std::string(what) +
                  " needs TLS options made from PEM text (tls::server_options): an OpenSSL "
                  "context cannot be sent to the service");
  }
  v1::TlsServer out;
  out.set_enabled(true);
  out.set_cert_pem(tls.pem->cert);
  out.set_key_pem(tls.pem->key);
  out.set_client_ca_pem(tls.pem->ca);
  return out;
}

v1::OpenServer server_request(const ServerOptions& options) {
  if (!options.start_serving) throw refused("server listens at once (start_serving = false is for local servers)");
  if (!options.reuse_address) throw refused("server always sets SO_REUSEADDR (reuse_address = false)");
  if (!options.cleanup_socket) throw refused("server removes its socket file as it closes (cleanup_socket = false)");
  if (options.check_local_address) {
    throw refused("server's addresses are checked by the service's policy (check_local_address is for local servers)");
  }
  v1::OpenServer open;
  if (options.tls) *open.mutable_tls() = tls_server(*options.tls, "TLS server");
  open.set_backlog(static_cast<std::uint32_t>(std::max(options.backlog, 1)));
  open.set_reuse_port(options.reuse_port);
  return open;
}

v1::ProxyEndpoint proxy_endpoint(const ProxyEndpoint& endpoint, bool datagram, bool listening) {
  v1::ProxyEndpoint out;
  if (endpoint.unix_path) {
    out.set_unix_path(*endpoint.unix_path);
  } else if (datagram) {
    *out.mutable_udp() = host_port(endpoint.host, endpoint.port);
  } else {
    *out.mutable_tcp() = host_port(endpoint.host, endpoint.port);
  }
  if (endpoint.tls && listening) *out.mutable_tls_server() = tls_server(*endpoint.tls, "proxy's TLS listener");
  if (endpoint.tls && !listening) *out.mutable_tls_client() = tls_client(*endpoint.tls, "proxy's TLS upstream");
  return out;
}

/// The protocol a factory made, as the kind a session needs.
template <class P>
std::shared_ptr<P> protocol_as(const ProtocolFactory& factory, const char* kind) {
  auto protocol = std::dynamic_pointer_cast<P>(factory());
  if (!protocol) throw std::invalid_argument(std::string("the protocol factory must make a ") + kind);
  return protocol;
}

/// The transport's completion, once the session opened: the transport is
/// the session's (kept by its stream until then), the protocol ours.
template <class T, class Handler>
auto completion(std::shared_ptr<std::weak_ptr<T>> slot, std::shared_ptr<BaseProtocol> protocol, Handler handler) {
  return [slot = std::move(slot), protocol = std::move(protocol),
          handler = std::make_shared<Handler>(std::move(handler))](std::exception_ptr error) {
    if (error) return std::move(*handler)(error, nullptr, nullptr);
    std::move (*handler)(nullptr, slot->lock(), protocol);
  };
}

/// A server session, its completion the Opener's (copyable for the session).
void start_server(EventLoop& loop, const RemoteOptions& remote, v1::OpenServer open, ProtocolFactory factory,
                  detail::AbstractServerHandler handler) {
  auto shared = std::make_shared<detail::AbstractServerHandler>(std::move(handler));
  open_server_session(loop, remote, std::move(open), std::move(factory),
                      [shared](std::exception_ptr error, std::shared_ptr<AbstractServer> server) {
                        std::move (*shared)(error, std::move(server));
                      });
}

}  // namespace

void RemoteOpener::open_connection(ProtocolFactory factory, std::string host, std::uint16_t port,
                                   ConnectOptions options, detail::ConnectionHandler handler) {
  v1::OpenConnection open;
  std::shared_ptr<BaseProtocol> protocol;
  try {
    if (options.check_remote_address) {
      throw refused(
          "connection's addresses are checked by the service's policy (check_remote_address is for "
          "local connections)");
    }
    *open.mutable_tcp() = host_port(host, port);
    if (options.local_addr)
      *open.mutable_local_addr() = host_port(options.local_addr->first, options.local_addr->second);
    if (options.tls) *open.mutable_tls() = tls_client(*options.tls, "TLS connection");
    protocol = factory();
  } catch (const std::exception&) {
    return fail(loop_, std::move(handler), std::current_exception());
  }
  auto slot = std::make_shared<std::weak_ptr<Transport>>();
  *slot = open_connection_session(loop_, remote_, std::move(open), protocol,
                                  completion(slot, protocol, std::move(handler)));
}

void RemoteOpener::open_unix_connection(ProtocolFactory factory, std::string path, detail::ConnectionHandler handler) {
  v1::OpenConnection open;
  open.set_unix_path(std::move(path));
  std::shared_ptr<BaseProtocol> protocol;
  try {
    protocol = factory();
  } catch (const std::exception&) {
    return fail(loop_, std::move(handler), std::current_exception());
  }
  auto slot = std::make_shared<std::weak_ptr<Transport>>();
  *slot = open_connection_session(loop_, remote_, std::move(open), protocol,
                                  completion(slot, protocol, std::move(handler)));
}

void RemoteOpener::open_server(ProtocolFactory factory, std::vector<std::string> hosts, std::uint16_t port,
                               ServerOptions options, detail::AbstractServerHandler handler) {
  v1::OpenServer open;
  try {
    if (hosts.size() > 1) throw refused("server listens on one host, or on every interface (no hosts)");
    open = server_request(options);
    *open.mutable_tcp() = host_port(hosts.empty() ? std::string() : hosts.front(), port);
  } catch (const std::exception&) {
    return fail(loop_, std::move(handler), std::current_exception());
  }
  start_server(loop_, remote_, std::move(open), std::move(factory), std::move(handler));
}

void RemoteOpener::open_unix_server(ProtocolFactory factory, std::string path, ServerOptions options,
                                    detail::AbstractServerHandler handler) {
  v1::OpenServer open;
  try {
    if (options.tls) throw refused("Unix server cannot speak TLS");
    open = server_request(options);
    open.set_unix_path(std::move(path));
  } catch (const std::exception&) {
    return fail(loop_, std::move(handler), std::current_exception());
  }
  start_server(loop_, remote_, std::move(open), std::move(factory), std::move(handler));
}

void RemoteOpener::open_datagram_endpoint(ProtocolFactory factory, DatagramOptions options,
                                          detail::DatagramHandler handler) {
  v1::OpenDatagramEndpoint open;
  std::shared_ptr<DatagramProtocol> protocol;
  try {
    if (options.reuse_address) {
      throw std::invalid_argument("reuse_address is refused for UDP: another process could take the datagrams");
    }
    if (options.family != AddressFamily::unspecified) {
      throw refused("datagram endpoint takes its family from its addresses (family is for local endpoints)");
    }
    if (options.check_local_address || options.check_remote_address) {
      throw refused("datagram endpoint's addresses are checked by the service's policy");
    }
    if (options.local_addr)
      *open.mutable_local_addr() = host_port(options.local_addr->first, options.local_addr->second);
    if (options.remote_addr) {
      *open.mutable_remote_addr() = host_port(options.remote_addr->first, options.remote_addr->second);
    }
    open.set_reuse_port(options.reuse_port);
    open.set_allow_broadcast(options.allow_broadcast);
    protocol = protocol_as<DatagramProtocol>(factory, "DatagramProtocol");
  } catch (const std::exception&) {
    return fail(loop_, std::move(handler), std::current_exception());
  }
  auto slot = std::make_shared<std::weak_ptr<DatagramTransport>>();
  *slot = open_datagram_session(loop_, remote_, std::move(open), protocol,
                                completion(slot, std::shared_ptr<BaseProtocol>(protocol), std::move(handler)));
}

void RemoteOpener::open_subprocess(ProtocolFactory factory, std::vector<std::string> argv, SubprocessOptions options,
                                   detail::SubprocessHandler handler) {
  v1::OpenSubprocess open;
  std::shared_ptr<SubprocessProtocol> protocol;
  try {
    for (const Stdio* stdio : {&options.stdin_stream, &options.stdout_stream, &options.stderr_stream}) {
      if (stdio->kind() != Stdio::Kind::pipe) throw refused("child's stdin, stdout and stderr are pipes");
    }
    if (!options.new_process_group) throw refused("child always runs in a process group of its own");
    for (auto& arg : argv) open.add_argv(std::move(arg));
    if (options.cwd) open.set_cwd(*options.cwd);
    if (options.env) {
      if (options.env->empty()) throw refused("child's environment cannot be empty: give one variable at least");
      for (const auto& entry : *options.env) {
        const auto equals = entry.find('=');
        if (equals == std::string::npos || equals == 0) {
          throw std::invalid_argument("SubprocessOptions::env: '" + entry + "' is not NAME=value");
        }
        (*open.mutable_env())[entry.substr(0, equals)] = entry.substr(equals + 1);
      }
    }
    protocol = protocol_as<SubprocessProtocol>(factory, "SubprocessProtocol");
  } catch (const std::exception&) {
    return fail(loop_, std::move(handler), std::current_exception());
  }
  auto slot = std::make_shared<std::weak_ptr<SubprocessTransport>>();
  *slot = open_subprocess_session(loop_, remote_, std::move(open), protocol,
                                  completion(slot, std::shared_ptr<BaseProtocol>(protocol), std::move(handler)));
}

void RemoteOpener::open_proxy(ProxyOptions options, detail::ProxyHandler handler) {
  v1::OpenProxy open;
  try {
    if (options.datagram &&
        (options.listen.unix_path || options.upstream.unix_path || options.listen.tls || options.upstream.tls)) {
      throw std::invalid_argument("a datagram proxy listens and relays on UDP host and port: no Unix path, no TLS");
    }
    *open.mutable_listen() = proxy_endpoint(options.listen, options.datagram, true);
    *open.mutable_upstream() = proxy_endpoint(options.upstream, options.datagram, false);
    for (const auto& fault : options.faults) {
      fault.check_kind_for(options.datagram);
      *open.add_faults() = spec_of(fault);
    }
    open.set_idle_timeout_ms(static_cast<std::uint32_t>(options.idle_timeout.count()));
    open.set_name(options.name);
  } catch (const std::exception&) {
    return fail(loop_, std::move(handler), std::current_exception());
  }
  auto shared = std::make_shared<detail::ProxyHandler>(std::move(handler));
  open_proxy_session(loop_, remote_, std::move(open), std::move(options),
                     [shared](std::exception_ptr error, std::shared_ptr<Proxy> proxy) {
                       std::move (*shared)(error, std::move(proxy));
                     });
}

}  // namespace conduit::service
