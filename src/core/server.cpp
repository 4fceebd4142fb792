#include "conduit/server.hpp"

#include "completion.hpp"
#include "loop_internals.hpp"
#include "stream_transport.hpp"
#include "tls_transport.hpp"

#include <boost/asio/co_spawn.hpp>

#include <boost/asio/cancellation_type.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <system_error>

namespace conduit {

namespace {

// asyncio's pause after accept() runs out of descriptors or memory (SPEC
// L2, R3): long enough not to spin, short enough to recover quickly.
constexpr auto accept_retry_delay = std::chrono::seconds(1);

bool is_resource_exhaustion(const boost::system::error_code& ec) {
  namespace errc = boost::system::errc;
  return ec == errc::too_many_files_open || ec == errc::too_many_files_open_in_system || ec == errc::no_buffer_space ||
         ec == errc::not_enough_memory;
}

}  // namespace

Server::Server(EventLoop& loop, ProtocolFactory factory, std::vector<Listener> listeners, int backlog,
               std::string unix_path_to_remove, std::optional<TlsOptions> tls)
    : loop_(loop),
      factory_(std::move(factory)),
      tls_(std::move(tls)),
      listeners_(std::move(listeners)),
      backlog_(backlog),
      unix_path_to_remove_(std::move(unix_path_to_remove)),
      accept_backoff_(loop.context()) {}

Server::~Server() {
  for (auto& listener : listeners_) {
    std::visit(
        [](auto& acceptor) {
          boost::system::error_code ignored;
          acceptor.close(ignored);
        },
        listener);
  }
}

std::vector<SocketAddress> Server::sockets() const {
  std::vector<SocketAddress> out;
  if (closed_) return out;
  for (const auto& listener : listeners_) {
    std::visit(
        [&](const auto& acceptor) {
          boost::system::error_code ec;
          auto ep = acceptor.local_endpoint(ec);
          if (!ec) out.emplace_back(ep);
        },
        listener);
  }
  return out;
}

void Server::start_serving() {
  if (serving_ || closed_) return;
  serving_ = true;
  for (std::size_t i = 0; i < listeners_.size(); ++i) {
    std::visit([&](auto& acceptor) { acceptor.listen(backlog_); }, listeners_[i]);
    accept_next(i);
  }
}

void Server::accept_next(std::size_t index) {
  std::visit(
      [&](auto& acceptor) {
        acceptor.async_accept([self = shared_from_this(), index](const boost::system::error_code& ec, auto socket) {
          self->on_accepted(index, ec, std::move(socket));
        });
      },
      listeners_[index]);
}

template <class Socket>
void Server::on_accepted(std::size_t index, const boost::system::error_code& ec, Socket socket) {
  if (!serving_) return;  // closed while the accept was pending
  if (ec) {
    if (ec == asio::error::operation_aborted) return;
    if (is_resource_exhaustion(ec)) {
      loop_.call_exception_handler({"socket.accept() out of system resource",
                                    std::make_exception_ptr(std::system_error(ec, "accept")), nullptr, nullptr});
      // Back off instead of spinning on a listening socket that stays readable.
      accept_backoff_.expires_after(accept_retry_delay);
      accept_backoff_.async_wait([this, self = shared_from_this(), index](const boost::system::error_code& wait_ec) {
        if (!wait_ec && serving_) accept_next(index);
      });
      return;
    }
    // ECONNABORTED and kin: that one connection is gone; keep accepting.
    return accept_next(index);
  }
  if constexpr (std::is_same_v<Socket, asio::ip::tcp::socket>) {
    if (tls_) {
      start_tls_connection(std::move(socket));
      return accept_next(index);
    }
  }
  if (auto protocol = make_protocol()) {
    start_connection(std::make_shared<StreamTransport<Socket>>(loop_, std::move(socket), shared_from_this()),
                     std::move(protocol));
  }
  accept_next(index);
}

// A new connection's protocol, from the factory; a factory that throws
// costs that connection only.
std::shared_ptr<BaseProtocol> Server::make_protocol() {
  try {
    auto protocol = factory_();
    if (!protocol) throw std::invalid_argument("the protocol factory returned a null protocol");
    return protocol;
  } catch (...) {
    loop_.call_exception_handler(
        {"Error on transport creation for incoming connection", std::current_exception(), nullptr, nullptr});
    return nullptr;
  }
}

template <class Transport>
void Server::start_connection(const std::shared_ptr<Transport>& transport, std::shared_ptr<BaseProtocol> protocol) {
  try {
    transport->start(std::move(protocol));
  } catch (...) {
    transport->abort();
    loop_.call_exception_handler(
        {"Error on transport creation for incoming connection", std::current_exception(), transport, nullptr});
  }
}

void Server::start_tls_connection(asio::ip::tcp::socket socket) {
  auto transport = std::make_shared<TlsTransport>(loop_, std::move(socket), *tls_, true, shared_from_this());
  asio::co_spawn(
      loop_.context(), transport->handshake(), [this, self = shared_from_this(), transport](std::exception_ptr error) {
        if (!error) {
          if (auto protocol = make_protocol()) return start_connection(transport, std::move(protocol));
          return transport->discard();
        }
        // A client that fails the handshake is its own problem
        // (asyncio logs it at debug level too).
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          loop_.log(LogLevel::debug, std::string("SSL handshake failed on incoming connection: ") + e.what());
        }
      });
}

void Server::close() {
  if (closed_) return;
  closed_ = true;
  serving_ = false;
  accept_backoff_.cancel();
  for (auto& listener : listeners_) {
    std::visit(
        [](auto& acceptor) {
          boost::system::error_code ignored;
          acceptor.close(ignored);
        },
        listener);
  }
  if (!unix_path_to_remove_.empty()) {
    ::unlink(unix_path_to_remove_.c_str());
  }
  if (serve_forever_) {
    // asyncio cancels serve_forever() on close(); it then finishes once the
    // connections are gone, as a cancelled serve_forever() does.
    auto handler = std::move(*serve_forever_);
    serve_forever_.reset();
    wait_closed_impl([h = std::move(handler)]() mutable {
      std::move(h)(std::make_exception_ptr(
          std::system_error(std::make_error_code(std::errc::operation_canceled), "serve_forever() cancelled")));
    });
  }
  wake_waiters_if_done();
}

void Server::close_clients() {
  // close() may detach synchronously later; iterate over a copy.
  for (Transport* t : std::vector<Transport*>(connections_.begin(), connections_.end())) t->close();
}

void Server::abort_clients() {
  for (Transport* t : std::vector<Transport*>(connections_.begin(), connections_.end())) t->abort();
}

void Server::detach(Transport* transport) {
  connections_.erase(transport);
  wake_waiters_if_done();
}

void Server::wait_closed_impl(asio::any_completion_handler<void()> handler) {
  closed_waiters_.add(std::move(handler));
  wake_waiters_if_done();
}

void Server::wake_waiters_if_done() {
  if (closed_ && connections_.empty()) closed_waiters_.wake(loop_);
}

void Server::serve_forever_impl(asio::any_completion_handler<void(std::exception_ptr)> handler) {
  auto fail = [&](const char* why) {
    detail::post_completion(loop_, std::move(handler), std::make_exception_ptr(std::logic_error(why)));
  };
  if (serve_forever_) return fail("server is already being awaited on serve_forever()");
  if (closed_) return fail("server is closed");
  auto slot = asio::get_associated_cancellation_slot(handler);
  if (slot.is_connected()) {
    slot.assign([weak = weak_from_this()](asio::cancellation_type) {
      if (auto server = weak.lock()) server->close();
    });
  }
  serve_forever_ = std::move(handler);
  start_serving();
}

}  // namespace conduit
