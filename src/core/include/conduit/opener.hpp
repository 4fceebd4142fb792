// Where transports are opened: on this host (LocalOpener: an EventLoop's
// own sockets, children and proxies) or on a service's host
// (conduit::service::RemoteOpener, conduit/service/remote.hpp). Both take
// the EventLoop's calls with the same options, completion signatures and
// results, and run the protocols on the same loop, so that code written
// against an Opener chooses local or remote once, where it makes one:
//
//   std::unique_ptr<Opener> opener = via ? make_remote(loop, ...) : std::make_unique<LocalOpener>(loop);
//   opener->create_connection(factory, "db", 5432, {}, [](auto error, auto transport, auto protocol) {...});
//
// Only what a service can carry is here: connections (TCP, TLS, Unix),
// servers, UDP endpoints, children and proxies; an EventLoop has more
// (wrapping sockets and pipes of this process, start_tls, sendfile).
#pragma once

#include "conduit/event_loop.hpp"
#include "conduit/proxy.hpp"
#include "conduit/server.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace conduit {

namespace detail {
using AbstractServerHandler = asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<AbstractServer>)>;
using ProxyHandler = asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<Proxy>)>;
}  // namespace detail

class Opener {
 public:
  virtual ~Opener() = default;

  /// The loop the protocols and completions run on.
  virtual EventLoop& loop() = 0;

  /// As EventLoop::create_connection: (error, Transport, protocol).
  template <class Factory, class Token>
  auto create_connection(Factory factory, std::string host, std::uint16_t port, ConnectOptions options, Token&& token) {
    return detail::initiate_connection<Factory>(
        std::forward<Token>(token), [this, f = detail::erase_factory(std::move(factory)), host = std::move(host), port,
                                     options = std::move(options)](detail::ConnectionHandler h) mutable {
          open_connection(std::move(f), std::move(host), port, std::move(options), std::move(h));
        });
  }

  /// As EventLoop::create_unix_connection.
  template <class Factory, class Token>
  auto create_unix_connection(Factory factory, std::string path, Token&& token) {
    return detail::initiate_connection<Factory>(std::forward<Token>(token),
                                                [this, f = detail::erase_factory(std::move(factory)),
                                                 path = std::move(path)](detail::ConnectionHandler h) mutable {
                                                  open_unix_connection(std::move(f), std::move(path), std::move(h));
                                                });
  }

  /// As EventLoop::create_server: (error, AbstractServer).
  template <class Factory, class Token>
  auto create_server(Factory factory, std::vector<std::string> hosts, std::uint16_t port, ServerOptions options,
                     Token&& token) {
    return asio::async_initiate<Token, void(std::exception_ptr, std::shared_ptr<AbstractServer>)>(
        [this](auto handler, ProtocolFactory f, std::vector<std::string> h, std::uint16_t p, ServerOptions o) {
          open_server(std::move(f), std::move(h), p, std::move(o), detail::AbstractServerHandler(std::move(handler)));
        },
        token, detail::erase_factory(std::move(factory)), std::move(hosts), port, std::move(options));
  }

  /// As EventLoop::create_unix_server.
  template <class Factory, class Token>
  auto create_unix_server(Factory factory, std::string path, ServerOptions options, Token&& token) {
    return asio::async_initiate<Token, void(std::exception_ptr, std::shared_ptr<AbstractServer>)>(
        [this](auto handler, ProtocolFactory f, std::string p, ServerOptions o) {
          open_unix_server(std::move(f), std::move(p), std::move(o), detail::AbstractServerHandler(std::move(handler)));
        },
        token, detail::erase_factory(std::move(factory)), std::move(path), std::move(options));
  }

  /// As EventLoop::create_datagram_endpoint: (error, DatagramTransport, protocol).
  template <class Factory, class Token>
  auto create_datagram_endpoint(Factory factory, DatagramOptions options, Token&& token) {
    return detail::initiate_datagram<Factory>(std::forward<Token>(token),
                                              [this, f = detail::erase_factory(std::move(factory)),
                                               options = std::move(options)](detail::DatagramHandler h) mutable {
                                                open_datagram_endpoint(std::move(f), std::move(options), std::move(h));
                                              });
  }

  /// As EventLoop::subprocess_exec: (error, SubprocessTransport, protocol).
  template <class Factory, class Token>
  auto subprocess_exec(Factory factory, std::string program, std::vector<std::string> args, SubprocessOptions options,
                       Token&& token) {
    args.insert(args.begin(), std::move(program));
    return detail::initiate_subprocess<Factory>(
        std::forward<Token>(token), [this, f = detail::erase_factory(std::move(factory)), argv = std::move(args),
                                     options = std::move(options)](detail::SubprocessHandler h) mutable {
          open_subprocess(std::move(f), std::move(argv), std::move(options), std::move(h));
        });
  }

  /// As EventLoop::subprocess_shell.
  template <class Factory, class Token>
  auto subprocess_shell(Factory factory, std::string command, SubprocessOptions options, Token&& token) {
    return subprocess_exec(std::move(factory), "/bin/sh", {"-c", std::move(command)}, std::move(options),
                           std::forward<Token>(token));
  }

  /// A proxy as `options` say (create_proxy): (error, Proxy).
  template <class Token>
  auto create_proxy(ProxyOptions options, Token&& token) {
    return asio::async_initiate<Token, void(std::exception_ptr, std::shared_ptr<Proxy>)>(
        [this](auto handler, ProxyOptions o) { open_proxy(std::move(o), detail::ProxyHandler(std::move(handler))); },
        token, std::move(options));
  }

 protected:
  virtual void open_connection(ProtocolFactory factory, std::string host, std::uint16_t port, ConnectOptions options,
                               detail::ConnectionHandler handler) = 0;
  virtual void open_unix_connection(ProtocolFactory factory, std::string path, detail::ConnectionHandler handler) = 0;
  virtual void open_server(ProtocolFactory factory, std::vector<std::string> hosts, std::uint16_t port,
                           ServerOptions options, detail::AbstractServerHandler handler) = 0;
  virtual void open_unix_server(ProtocolFactory factory, std::string path, ServerOptions options,
                                detail::AbstractServerHandler handler) = 0;
  virtual void open_datagram_endpoint(ProtocolFactory factory, DatagramOptions options,
                                      detail::DatagramHandler handler) = 0;
  virtual void open_subprocess(ProtocolFactory factory, std::vector<std::string> argv, SubprocessOptions options,
                               detail::SubprocessHandler handler) = 0;
  virtual void open_proxy(ProxyOptions options, detail::ProxyHandler handler) = 0;
};

/// This host: each call is the EventLoop's own (or create_proxy's).
class LocalOpener final : public Opener {
 public:
  explicit LocalOpener(EventLoop& loop) : loop_(loop) {}
  EventLoop& loop() override { return loop_; }

 protected:
  void open_connection(ProtocolFactory factory, std::string host, std::uint16_t port, ConnectOptions options,
                       detail::ConnectionHandler handler) override;
  void open_unix_connection(ProtocolFactory factory, std::string path, detail::ConnectionHandler handler) override;
  void open_server(ProtocolFactory factory, std::vector<std::string> hosts, std::uint16_t port, ServerOptions options,
                   detail::AbstractServerHandler handler) override;
  void open_unix_server(ProtocolFactory factory, std::string path, ServerOptions options,
                        detail::AbstractServerHandler handler) override;
  void open_datagram_endpoint(ProtocolFactory factory, DatagramOptions options,
                              detail::DatagramHandler handler) override;
  void open_subprocess(ProtocolFactory factory, std::vector<std::string> argv, SubprocessOptions options,
                       detail::SubprocessHandler handler) override;
  void open_proxy(ProxyOptions options, detail::ProxyHandler handler) override;

 private:
  EventLoop& loop_;
};

}  // namespace conduit
