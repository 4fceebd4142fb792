#include <conduit/service/unix_listener.hpp>

#include <grpcpp/server_posix.h>

#include <boost/asio/post.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <future>
#include <system_error>

namespace conduit::service {

namespace {

/// A pause after accept() runs out of descriptors, as asyncio's (and the
/// core server's): the connection waits in the backlog meanwhile.
constexpr auto accept_retry_delay = std::chrono::milliseconds(100);

void throw_in_use(const std::string& why) {
  throw std::system_error(std::make_error_code(std::errc::address_in_use), why);
}

}  // namespace

bool unix_socket_is_live(asio::io_context& context, const std::string& path) {
  asio::local::stream_protocol::socket probe(context);
  boost::system::error_code ec;
  probe.open(asio::local::stream_protocol(), ec);
  if (ec) return false;
  probe.non_blocking(true, ec);
  probe.connect(asio::local::stream_protocol::endpoint(path), ec);
  return !ec || ec == asio::error::would_block || ec == asio::error::try_again;
}

UnixListener::UnixListener(ConduitService& service, std::string path)
    : service_(service),
      path_(std::move(path)),
      acceptor_(service.loop().context()),
      backoff_(service.loop().context()) {
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw_in_use(path_ + " exists and is not a socket");
    if (unix_socket_is_live(service.loop().context(), path_)) throw_in_use("another server listens on " + path_);
    ::unlink(path_.c_str());  // stale: nobody listens
  }
  acceptor_.open(asio::local::stream_protocol());
  acceptor_.bind(asio::local::stream_protocol::endpoint(path_));
  acceptor_.listen(asio::socket_base::max_listen_connections);
}

UnixListener::~UnixListener() = default;

void UnixListener::start(grpc::Server& server) {
  asio::post(service_.loop().get_executor(), [self = shared_from_this(), &server] {
    self->server_ = &server;
    self->accept_next();
  });
}

void UnixListener::accept_next() {
  acceptor_.async_accept([self = shared_from_this()](const boost::system::error_code& ec,
                                                     asio::local::stream_protocol::socket socket) {
    if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
    if (ec) {
      self->service_.loop().log(LogLevel::warning, "accept on " + self->path_ + ": " + ec.message() + " (retrying)");
      self->backoff_.expires_after(accept_retry_delay);
      self->backoff_.async_wait([self](const boost::system::error_code& wait_ec) {
        if (!wait_ec) self->accept_next();
      });
      return;
    }
    ucred credentials{};
    socklen_t size = sizeof credentials;
    std::string peer = "unix:";
    if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &credentials, &size) == 0) {
      peer = "unix:pid=" + std::to_string(credentials.pid) + ",uid=" + std::to_string(credentials.uid) +
             ",gid=" + std::to_string(credentials.gid);
    }
    // gRPC reads and writes the descriptor as it finds it: it must not block.
    boost::system::error_code nb_ec;
    socket.non_blocking(true, nb_ec);
    const int fd = socket.release();
    self->service_.name_peer(fd, std::move(peer));
    grpc::AddInsecureChannelFromFd(self->server_, fd);
    self->accept_next();
  });
}

void UnixListener::close() {
  std::promise<void> closed;
  auto done = closed.get_future();
  asio::post(service_.loop().get_executor(), [self = shared_from_this(), &closed] {
    boost::system::error_code ignored;
    self->acceptor_.close(ignored);
    self->backoff_.cancel();
    ::unlink(self->path_.c_str());
    closed.set_value();
  });
  done.wait();
}

}  // namespace conduit::service
