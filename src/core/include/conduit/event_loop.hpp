// The event loop: one asio::io_context run on one thread, like asyncio's loop,
// with asyncio's connection-making methods.
//
// Each asynchronous method takes an Asio completion token, so it works with a
// callback, `asio::use_awaitable` in a C++20 coroutine, or any other token:
//
//   loop.create_connection(factory, "example.org", 80, {},
//       [](std::exception_ptr err, std::shared_ptr<Transport> t,
//          std::shared_ptr<MyProtocol> p) { ... });
//   auto [t, p] = co_await loop.create_connection(factory, host, port, {},
//                                                 asio::use_awaitable);
//
// A failure completes with a non-null exception_ptr (std::system_error for
// OS errors, std::invalid_argument for bad arguments); a coroutine sees it
// thrown.
#pragma once

#include "conduit/protocols.hpp"
#include "conduit/socket_address.hpp"
#include "conduit/tls.hpp"
#include "conduit/transports.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/associator.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace conduit {

namespace asio = boost::asio;

class EventLoop;
class Server;

/// What the exception handler is told (asyncio's context dict).
struct ExceptionContext {
  std::string message;                       ///< What failed, e.g. "Fatal error: protocol.data_received() call failed."
  std::exception_ptr exception;              ///< The exception, if any.
  std::shared_ptr<BaseTransport> transport;  ///< The transport involved, if any.
  std::shared_ptr<BaseProtocol> protocol;    ///< The protocol involved, if any.
};

/// Receives every error nobody else can handle.
using ExceptionHandler = std::function<void(EventLoop&, const ExceptionContext&)>;

enum class LogLevel { debug, info, warning, error };

/// Receives the loop's log lines (default: stderr for warning and above).
using LogHandler = std::function<void(LogLevel, std::string_view)>;

/// Makes one protocol per connection.
using ProtocolFactory = std::function<std::shared_ptr<BaseProtocol>()>;

/// Vets an address before any socket uses it (not in asyncio): called with
/// every address a host resolved to, before the first socket is made; an
/// exception it throws fails the whole call with that exception. A policy
/// that must hold for a name checks here what the name really gave.
using AddressCheck = std::function<void(const SocketAddress&)>;

/// Options of create_connection beyond the peer.
struct ConnectOptions {
  /// Bind the socket to this (host, port) before connecting.
  std::optional<std::pair<std::string, std::uint16_t>> local_addr;
  /// Speak TLS: the handshake completes before the protocol is made, and a
  /// failed one fails the call (the protocol never sees the connection).
  std::optional<TlsOptions> tls;
  /// Called with every address the host resolved to (see AddressCheck).
  AddressCheck check_remote_address;
};

/// Options of create_server / create_unix_server.
struct ServerOptions {
  int backlog = 100;           ///< listen() backlog.
  bool reuse_address = true;   ///< SO_REUSEADDR (TCP only).
  bool reuse_port = false;     ///< SO_REUSEPORT (TCP only).
  bool start_serving = true;   ///< Listen at once; else bound only, until start_serving().
  bool cleanup_socket = true;  ///< Unix: remove the socket file when the server closes.
  /// TCP only: speak TLS; a client whose handshake fails is dropped (and
  /// logged at debug level) before any protocol is made for it.
  std::optional<TlsOptions> tls;
  /// TCP: called with every address to bind, the wildcard ones of "every
  /// interface" included (see AddressCheck).
  AddressCheck check_local_address;
};

/// An address family for create_datagram_endpoint.
enum class AddressFamily { unspecified, ipv4, ipv6 };

/// Options of create_datagram_endpoint (asyncio's keyword arguments).
struct DatagramOptions {
  /// Bind to this (host, port); port 0 picks a free one.
  std::optional<std::pair<std::string, std::uint16_t>> local_addr;
  /// Connect to this (host, port): sendto() then needs no address, and
  /// only this peer's datagrams arrive.
  std::optional<std::pair<std::string, std::uint16_t>> remote_addr;
  /// Needed when neither address is given; else restricts resolution.
  AddressFamily family = AddressFamily::unspecified;
  /// Refused (an error when true), as in asyncio 3.13: SO_REUSEADDR on UDP
  /// lets another process bind the same port and take the datagrams.
  bool reuse_address = false;
  bool reuse_port = false;       ///< SO_REUSEPORT.
  bool allow_broadcast = false;  ///< SO_BROADCAST; remote_addr is then not connected to.
  /// Called with every address local_addr resolved to (see AddressCheck).
  AddressCheck check_local_address;
  /// Called with every address remote_addr resolved to (see AddressCheck).
  AddressCheck check_remote_address;
};

/// Options of create_unix_datagram_endpoint.
struct UnixDatagramOptions {
  /// Bind to this path (a stale socket file there is replaced).
  std::optional<std::string> local_path;
  /// Connect to this path.
  std::optional<std::string> remote_path;
};

/// Where a child's stdin, stdout or stderr goes.
class Stdio {
 public:
  enum class Kind { pipe, devnull, fd, stdout_ };
  /// A pipe to the loop (the default): a pipe transport, and for stdout and
  /// stderr pipe_data_received.
  static Stdio pipe() { return Stdio(Kind::pipe, -1); }
  /// /dev/null.
  static Stdio devnull() { return Stdio(Kind::devnull, -1); }
  /// An open descriptor of this process, e.g. 1 to share our stdout.
  static Stdio fd(int descriptor) { return Stdio(Kind::fd, descriptor); }
  /// For stderr only: wherever stdout goes.
  static Stdio to_stdout() { return Stdio(Kind::stdout_, -1); }

  Kind kind() const { return kind_; }
  int descriptor() const { return fd_; }

 private:
  Stdio(Kind kind, int fd) : kind_(kind), fd_(fd) {}
  Kind kind_;
  int fd_;
};

/// Options of subprocess_exec / subprocess_shell.
struct SubprocessOptions {
  Stdio stdin_stream = Stdio::pipe();
  Stdio stdout_stream = Stdio::pipe();
  Stdio stderr_stream = Stdio::pipe();
  /// Working directory of the child (default: ours).
  std::optional<std::string> cwd;
  /// The child's whole environment, as "NAME=value" entries (default: ours).
  std::optional<std::vector<std::string>> env;
  /// Start the child in a process group of its own, so that close() ends
  /// its descendants too (SPEC R5), and a Ctrl-C at our terminal reaches
  /// only us. Descriptors other than 0-2 are never inherited.
  bool new_process_group = true;
};

namespace detail {

/// Completion of the type-erased connection makers.
using ConnectionHandler =
    asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<Transport>, std::shared_ptr<BaseProtocol>)>;
using DatagramHandler = asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<DatagramTransport>,
                                                          std::shared_ptr<BaseProtocol>)>;
using SubprocessHandler = asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<SubprocessTransport>,
                                                            std::shared_ptr<BaseProtocol>)>;
using ServerHandler = asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<Server>)>;

/// Hands the caller its protocol with the type its factory made.
template <class P, class Handler>
struct ProtocolCast {
  Handler handler;
  template <class T>
  void operator()(std::exception_ptr err, std::shared_ptr<T> transport, std::shared_ptr<BaseProtocol> protocol) {
    std::move(handler)(std::move(err), std::move(transport), std::static_pointer_cast<P>(std::move(protocol)));
  }
};

class LoopResource;   // loop_internals.hpp (the core's own)
class LoopInternals;  // likewise
class NextTurn;       // next_turn.hpp (the core's own)

template <class Factory>
using factory_protocol_t = typename std::invoke_result_t<Factory&>::element_type;

template <class Factory>
ProtocolFactory erase_factory(Factory factory) {
  return [f = std::move(factory)]() mutable -> std::shared_ptr<BaseProtocol> { return f(); };
}

/// Start an operation completing with (error, T, protocol), T a transport
/// type, the protocol with the type `Factory` makes: `start` gets the
/// type-erased handler. Shared by EventLoop and the openers (opener.hpp).
template <class Factory, class T, class Token, class Start>
auto initiate_open(Token&& token, Start start) {
  using P = detail::factory_protocol_t<Factory>;
  using Signature = void(std::exception_ptr, std::shared_ptr<T>, std::shared_ptr<P>);
  using Erased =
      asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<T>, std::shared_ptr<BaseProtocol>)>;
  return asio::async_initiate<Token, Signature>(
      [start = std::move(start)](auto handler) mutable {
        start(Erased(detail::ProtocolCast<P, std::decay_t<decltype(handler)>>{std::move(handler)}));
      },
      token);
}

template <class Factory, class Token, class Start>
auto initiate_connection(Token&& token, Start start) {
  return initiate_open<Factory, Transport>(std::forward<Token>(token), std::move(start));
}

template <class Factory, class Token, class Start>
auto initiate_datagram(Token&& token, Start start) {
  return initiate_open<Factory, DatagramTransport>(std::forward<Token>(token), std::move(start));
}

template <class Factory, class Token, class Start>
auto initiate_subprocess(Token&& token, Start start) {
  return initiate_open<Factory, SubprocessTransport>(std::forward<Token>(token), std::move(start));
}

}  // namespace detail

/// A single-threaded event loop over one io_context.
class EventLoop {
 public:
  using executor_type = asio::io_context::executor_type;

  /// Bytes read from a socket per read call (asyncio's max_size, SPEC S4).
  static constexpr std::size_t read_size = 256 * 1024;

  EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;
  ~EventLoop();

  /// The io_context everything runs on.
  asio::io_context& context() { return context_; }
  executor_type get_executor() { return context_.get_executor(); }

  /// Run until stop() is called.
  void run_forever();
  /// Run until no work is left.
  void run() { context_.run(); }
  /// Make run_forever() return after the current callback.
  void stop();
  /// Run `task` to completion on this loop and return its result (or rethrow).
  template <class T>
  T run_until_complete(asio::awaitable<T> task);
  /// Run until `done()` holds or `timeout` passes; returns done(). done()
  /// is checked after each callback the loop runs.
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds timeout);

  /// Call `fn` from the loop soon, after the callbacks already queued.
  void call_soon(std::function<void()> fn);

  /// Replace the exception handler; an empty one restores the default.
  void set_exception_handler(ExceptionHandler handler) { exception_handler_ = std::move(handler); }
  /// Report an error to the exception handler (which must not throw).
  void call_exception_handler(const ExceptionContext& context);
  /// The default handler: logs the context at error level.
  void default_exception_handler(const ExceptionContext& context);

  /// Replace the log sink; an empty one restores the default (stderr).
  void set_log_handler(LogHandler handler) { log_handler_ = std::move(handler); }
  /// Log one line through the log sink.
  void log(LogLevel level, std::string_view message);

  /// Connect to `host`:`port`, trying every resolved address in turn.
  template <class Factory, class Token>
  auto create_connection(Factory factory, std::string host, std::uint16_t port, ConnectOptions options, Token&& token);

  /// Wrap an already connected TCP socket.
  template <class Factory, class Token>
  auto create_connection(Factory factory, asio::ip::tcp::socket socket, Token&& token);

  /// Connect to the Unix socket at `path`.
  template <class Factory, class Token>
  auto create_unix_connection(Factory factory, std::string path, Token&& token);

  /// Wrap an already connected Unix stream socket.
  template <class Factory, class Token>
  auto create_unix_connection(Factory factory, asio::local::stream_protocol::socket socket, Token&& token);

  /// Wrap a stream socket accepted elsewhere (any family), given by its
  /// descriptor, which the transport then owns. A datagram socket is refused.
  template <class Factory, class Token>
  auto connect_accepted_socket(Factory factory, int fd, Token&& token);

  /// Listen on `port` of each of `hosts` (empty: every interface, IPv4 and
  /// IPv6). Port 0 picks a free port (see Server::sockets()).
  template <class Factory, class Token>
  auto create_server(Factory factory, std::vector<std::string> hosts, std::uint16_t port, ServerOptions options,
                     Token&& token);

  /// Listen on a Unix socket at `path`; a stale socket file there is replaced.
  template <class Factory, class Token>
  auto create_unix_server(Factory factory, std::string path, ServerOptions options, Token&& token);

  /// Upgrade the plain TCP `transport` (made by this loop, with nothing
  /// left to write) to TLS in place: `protocol` stays connected (no second
  /// connection_made) and receives the TLS transport's callbacks. Completes
  /// with (error, new transport); the old transport must not be used again
  /// (SPEC T6).
  template <class Token>
  auto start_tls(std::shared_ptr<Transport> transport, std::shared_ptr<BaseProtocol> protocol, TlsOptions options,
                 bool server_side, Token&& token) {
    return asio::async_initiate<Token, void(std::exception_ptr, std::shared_ptr<Transport>)>(
        [this](auto handler, std::shared_ptr<Transport> t, std::shared_ptr<BaseProtocol> p, TlsOptions o, bool server) {
          start_tls_impl(
              std::move(t), std::move(p), std::move(o), server,
              asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<Transport>)>(std::move(handler)));
        },
        token, std::move(transport), std::move(protocol), std::move(options), server_side);
  }

  /// Send `count` bytes (nullopt: to end of file) of the open file `file`
  /// from `offset` over `transport`, and complete with (error, bytes sent);
  /// the file's position ends after what was sent. TCP and Unix transports
  /// use the kernel's sendfile(2) once their write buffer is empty; others
  /// (TLS, pipes), or files sendfile(2) cannot read, go through read() and
  /// write() with the transport's flow control, unless `fallback` is false
  /// (an errc::operation_not_supported error then). Reading is paused
  /// meanwhile, and write() is refused on a TCP/Unix transport.
  template <class Token>
  auto sendfile(std::shared_ptr<Transport> transport, int file, std::uint64_t offset,
                std::optional<std::uint64_t> count, bool fallback, Token&& token) {
    return asio::async_initiate<Token, void(std::exception_ptr, std::uint64_t)>(
        [this](auto handler, std::shared_ptr<Transport> t, int f, std::uint64_t o, std::optional<std::uint64_t> c,
               bool fb) {
          sendfile_impl(std::move(t), f, o, c, fb,
                        asio::any_completion_handler<void(std::exception_ptr, std::uint64_t)>(std::move(handler)));
        },
        token, std::move(transport), file, offset, count, fallback);
  }

  /// Read from the pipe, FIFO, socket or character device `fd` through a
  /// Protocol; the transport owns `fd` from then on (on failure it stays
  /// the caller's). A regular file is refused (std::invalid_argument).
  template <class Factory, class Token>
  auto connect_read_pipe(Factory factory, int fd, Token&& token);

  /// Write to the pipe, FIFO, socket or character device `fd`; the protocol
  /// (a Protocol) gets connection_made, pause/resume_writing and
  /// connection_lost. The transport owns `fd` from then on.
  template <class Factory, class Token>
  auto connect_write_pipe(Factory factory, int fd, Token&& token);

  /// Run `program` with `args` (argv[1...]; `program` is searched in PATH
  /// when it has no '/'), its stdio as `options` say. Completes once it
  /// runs, with (error, SubprocessTransport, protocol); a program that
  /// cannot be started is a std::system_error naming it.
  template <class Factory, class Token>
  auto subprocess_exec(Factory factory, std::string program, std::vector<std::string> args, SubprocessOptions options,
                       Token&& token);

  /// Run `command` through /bin/sh -c.
  template <class Factory, class Token>
  auto subprocess_shell(Factory factory, std::string command, SubprocessOptions options, Token&& token);

  /// A UDP endpoint: bound to options.local_addr and/or connected to
  /// options.remote_addr, trying each address family both resolve to.
  /// Completes with (error, DatagramTransport, protocol).
  template <class Factory, class Token>
  auto create_datagram_endpoint(Factory factory, DatagramOptions options, Token&& token);

  /// A Unix datagram endpoint, bound and/or connected to paths.
  template <class Factory, class Token>
  auto create_unix_datagram_endpoint(Factory factory, UnixDatagramOptions options, Token&& token);

 private:
  friend class detail::LoopInternals;

  void create_connection_impl(ProtocolFactory factory, std::string host, std::uint16_t port, ConnectOptions options,
                              detail::ConnectionHandler handler);
  void create_unix_connection_impl(ProtocolFactory factory, std::string path, detail::ConnectionHandler handler);
  void wrap_socket_impl(ProtocolFactory factory, asio::ip::tcp::socket socket, detail::ConnectionHandler handler);
  void wrap_socket_impl(ProtocolFactory factory, asio::local::stream_protocol::socket socket,
                        detail::ConnectionHandler handler);
  void connect_accepted_socket_impl(ProtocolFactory factory, int fd, detail::ConnectionHandler handler);
  void create_server_impl(ProtocolFactory factory, std::vector<std::string> hosts, std::uint16_t port,
                          ServerOptions options, detail::ServerHandler handler);
  void create_unix_server_impl(ProtocolFactory factory, std::string path, ServerOptions options,
                               detail::ServerHandler handler);
  void start_tls_impl(std::shared_ptr<Transport> transport, std::shared_ptr<BaseProtocol> protocol, TlsOptions options,
                      bool server_side,
                      asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<Transport>)> handler);
  void sendfile_impl(std::shared_ptr<Transport> transport, int file, std::uint64_t offset,
                     std::optional<std::uint64_t> count, bool fallback,
                     asio::any_completion_handler<void(std::exception_ptr, std::uint64_t)> handler);
  void connect_read_pipe_impl(ProtocolFactory factory, int fd, detail::ConnectionHandler handler);
  void connect_write_pipe_impl(ProtocolFactory factory, int fd, detail::ConnectionHandler handler);
  void subprocess_exec_impl(ProtocolFactory factory, std::vector<std::string> argv, SubprocessOptions options,
                            detail::SubprocessHandler handler);
  void create_datagram_endpoint_impl(ProtocolFactory factory, DatagramOptions options, detail::DatagramHandler handler);
  void create_unix_datagram_endpoint_impl(ProtocolFactory factory, UnixDatagramOptions options,
                                          detail::DatagramHandler handler);

  std::unique_ptr<std::byte[]> read_buffer_;
  std::unique_ptr<detail::NextTurn> next_turn_;
  std::set<detail::LoopResource*> resources_;
  ExceptionHandler exception_handler_;
  LogHandler log_handler_;
  // Last, so it is destroyed first: pending handlers own transports, whose
  // destructors may still log through the members above. One thread runs
  // it, so the reactor's per-descriptor locks are switched off; posting
  // from other threads stays safe (the scheduler keeps its lock).
  asio::io_context context_{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
};

namespace detail {

/// Completions waiting for something that happens once (a server or a
/// proxy closed, its last connection gone): each posted when it has.
class Waiters {
 public:
  void add(asio::any_completion_handler<void()> handler) { waiting_.push_back(std::move(handler)); }
  void wake(EventLoop& loop) {
    for (auto& handler : std::exchange(waiting_, {})) asio::post(loop.get_executor(), std::move(handler));
  }

 private:
  std::vector<asio::any_completion_handler<void()>> waiting_;
};

}  // namespace detail

// ---- template definitions -------------------------------------------------

template <class Factory, class Token>
auto EventLoop::connect_read_pipe(Factory factory, int fd, Token&& token) {
  return detail::initiate_connection<Factory>(
      std::forward<Token>(token),
      [this, f = detail::erase_factory(std::move(factory)), fd](detail::ConnectionHandler h) mutable {
        connect_read_pipe_impl(std::move(f), fd, std::move(h));
      });
}

template <class Factory, class Token>
auto EventLoop::connect_write_pipe(Factory factory, int fd, Token&& token) {
  return detail::initiate_connection<Factory>(
      std::forward<Token>(token),
      [this, f = detail::erase_factory(std::move(factory)), fd](detail::ConnectionHandler h) mutable {
        connect_write_pipe_impl(std::move(f), fd, std::move(h));
      });
}

template <class Factory, class Token>
auto EventLoop::subprocess_exec(Factory factory, std::string program, std::vector<std::string> args,
                                SubprocessOptions options, Token&& token) {
  args.insert(args.begin(), std::move(program));
  return detail::initiate_subprocess<Factory>(
      std::forward<Token>(token), [this, f = detail::erase_factory(std::move(factory)), argv = std::move(args),
                                   options = std::move(options)](detail::SubprocessHandler h) mutable {
        subprocess_exec_impl(std::move(f), std::move(argv), std::move(options), std::move(h));
      });
}

template <class Factory, class Token>
auto EventLoop::subprocess_shell(Factory factory, std::string command, SubprocessOptions options, Token&& token) {
  return subprocess_exec(std::move(factory), "/bin/sh", {"-c", std::move(command)}, std::move(options),
                         std::forward<Token>(token));
}

template <class Factory, class Token>
auto EventLoop::create_datagram_endpoint(Factory factory, DatagramOptions options, Token&& token) {
  return detail::initiate_datagram<Factory>(
      std::forward<Token>(token), [this, f = detail::erase_factory(std::move(factory)),
                                   options = std::move(options)](detail::DatagramHandler h) mutable {
        create_datagram_endpoint_impl(std::move(f), std::move(options), std::move(h));
      });
}

template <class Factory, class Token>
auto EventLoop::create_unix_datagram_endpoint(Factory factory, UnixDatagramOptions options, Token&& token) {
  return detail::initiate_datagram<Factory>(
      std::forward<Token>(token), [this, f = detail::erase_factory(std::move(factory)),
                                   options = std::move(options)](detail::DatagramHandler h) mutable {
        create_unix_datagram_endpoint_impl(std::move(f), std::move(options), std::move(h));
      });
}

template <class Factory, class Token>
auto EventLoop::create_connection(Factory factory, std::string host, std::uint16_t port, ConnectOptions options,
                                  Token&& token) {
  return detail::initiate_connection<Factory>(
      std::forward<Token>(token), [this, f = detail::erase_factory(std::move(factory)), host = std::move(host), port,
                                   options = std::move(options)](detail::ConnectionHandler h) mutable {
        create_connection_impl(std::move(f), std::move(host), port, std::move(options), std::move(h));
      });
}

template <class Factory, class Token>
auto EventLoop::create_connection(Factory factory, asio::ip::tcp::socket socket, Token&& token) {
  return detail::initiate_connection<Factory>(
      std::forward<Token>(token),
      [this, f = detail::erase_factory(std::move(factory)), s = std::move(socket)](
          detail::ConnectionHandler h) mutable { wrap_socket_impl(std::move(f), std::move(s), std::move(h)); });
}

template <class Factory, class Token>
auto EventLoop::create_unix_connection(Factory factory, std::string path, Token&& token) {
  return detail::initiate_connection<Factory>(
      std::forward<Token>(token), [this, f = detail::erase_factory(std::move(factory)),
                                   path = std::move(path)](detail::ConnectionHandler h) mutable {
        create_unix_connection_impl(std::move(f), std::move(path), std::move(h));
      });
}

template <class Factory, class Token>
auto EventLoop::create_unix_connection(Factory factory, asio::local::stream_protocol::socket socket, Token&& token) {
  return detail::initiate_connection<Factory>(
      std::forward<Token>(token),
      [this, f = detail::erase_factory(std::move(factory)), s = std::move(socket)](
          detail::ConnectionHandler h) mutable { wrap_socket_impl(std::move(f), std::move(s), std::move(h)); });
}

template <class Factory, class Token>
auto EventLoop::connect_accepted_socket(Factory factory, int fd, Token&& token) {
  return detail::initiate_connection<Factory>(
      std::forward<Token>(token),
      [this, f = detail::erase_factory(std::move(factory)), fd](detail::ConnectionHandler h) mutable {
        connect_accepted_socket_impl(std::move(f), fd, std::move(h));
      });
}

template <class Factory, class Token>
auto EventLoop::create_server(Factory factory, std::vector<std::string> hosts, std::uint16_t port,
                              ServerOptions options, Token&& token) {
  return asio::async_initiate<Token, void(std::exception_ptr, std::shared_ptr<Server>)>(
      [this](auto handler, ProtocolFactory f, std::vector<std::string> h, std::uint16_t p, ServerOptions o) {
        create_server_impl(std::move(f), std::move(h), p, o, detail::ServerHandler(std::move(handler)));
      },
      token, detail::erase_factory(std::move(factory)), std::move(hosts), port, options);
}

template <class Factory, class Token>
auto EventLoop::create_unix_server(Factory factory, std::string path, ServerOptions options, Token&& token) {
  return asio::async_initiate<Token, void(std::exception_ptr, std::shared_ptr<Server>)>(
      [this](auto handler, ProtocolFactory f, std::string p, ServerOptions o) {
        create_unix_server_impl(std::move(f), std::move(p), o, detail::ServerHandler(std::move(handler)));
      },
      token, detail::erase_factory(std::move(factory)), std::move(path), options);
}

template <class T>
T EventLoop::run_until_complete(asio::awaitable<T> task) {
  std::exception_ptr error;
  std::optional<std::conditional_t<std::is_void_v<T>, bool, T>> result;
  bool done = false;
  if constexpr (std::is_void_v<T>) {
    asio::co_spawn(context_, std::move(task), [&](std::exception_ptr e) {
      error = e;
      done = true;
    });
  } else {
    asio::co_spawn(context_, std::move(task), [&](std::exception_ptr e, T value) {
      error = e;
      if (!e) result.emplace(std::move(value));
      done = true;
    });
  }
  context_.restart();
  while (!done && context_.run_one() > 0) {
  }
  if (error) std::rethrow_exception(error);
  // As asyncio: stop() ends it too ("Event loop stopped before Future completed").
  if (!done) throw std::logic_error("run_until_complete: the loop stopped or ran out of work first");
  if constexpr (!std::is_void_v<T>) return std::move(*result);
}

}  // namespace conduit

// Let the Asio machinery see through ProtocolCast to the caller's handler
// (its executor, allocator and cancellation slot).
template <template <class, class> class Associator, class P, class Handler, class Default>
struct boost::asio::associator<Associator, conduit::detail::ProtocolCast<P, Handler>, Default>
    : Associator<Handler, Default> {
  static typename Associator<Handler, Default>::type get(const conduit::detail::ProtocolCast<P, Handler>& h) noexcept {
    return Associator<Handler, Default>::get(h.handler);
  }
  static auto get(const conduit::detail::ProtocolCast<P, Handler>& h, const Default& d) noexcept {
    return Associator<Handler, Default>::get(h.handler, d);
  }
};
