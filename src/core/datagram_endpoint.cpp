#include "datagram_endpoint.hpp"

#include "completion.hpp"
#include "socket_setup.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>

#include <sys/socket.h>

#include <stdexcept>
#include <system_error>

namespace conduit {

namespace {

std::exception_ptr make_system_error(const boost::system::error_code& ec, const char* what) {
  return std::make_exception_ptr(std::system_error(ec, what));
}

}  // namespace

template <class Socket>
DatagramEndpoint<Socket>::DatagramEndpoint(EventLoop& loop, Socket socket, std::optional<SocketAddress> peer)
    : loop_(loop), socket_(std::move(socket)), peer_(std::move(peer)) {
  socket_.non_blocking(true);
  boost::system::error_code ec;
  auto local = socket_.local_endpoint(ec);
  if (!ec) sockname_ = SocketAddress(local);
  detail::LoopInternals::track(loop_, this);
}

template <class Socket>
DatagramEndpoint<Socket>::~DatagramEndpoint() {
  if (state_ != State::closed) {
    loop_.log(LogLevel::warning, "unclosed datagram transport: closing its socket");
    detail::LoopInternals::untrack(loop_, this);
  }
}

template <class Socket>
void DatagramEndpoint<Socket>::on_loop_destroyed() {
  const auto keep = self();  // the protocol let go below may hold the last reference
  state_ = State::closed;
  release();
}

template <class Socket>
void DatagramEndpoint<Socket>::release() {
  boost::system::error_code ignored;
  socket_.close(ignored);  // completes pending waits with operation_aborted
  queue_.clear();
  queued_bytes_ = 0;
  protocol_.reset();
}

template <class Socket>
std::shared_ptr<DatagramEndpoint<Socket>> DatagramEndpoint<Socket>::self() {
  return std::shared_ptr<DatagramEndpoint>(shared_from_this(), this);
}

template <class Socket>
void DatagramEndpoint<Socket>::start(std::shared_ptr<DatagramProtocol> protocol) {
  set_protocol(std::move(protocol));
  asio::post(socket_.get_executor(), [this, keep = self()] {
    if (state_ == State::closed) return;
    protocol_.connection_made();
    if (is_reading()) reads_.start();
  });
}

// ---- reading --------------------------------------------------------------

template <class Socket>
void DatagramEndpoint<Socket>::on_read_wait_error(const boost::system::error_code& ec) {
  report_error(ec, "recvfrom");
  if (is_reading()) reads_.start();
}

template <class Socket>
detail::ReadOutcome DatagramEndpoint<Socket>::read_once() {
  const std::span<std::byte> buffer = detail::LoopInternals::read_buffer(loop_);
  Endpoint sender;
  boost::system::error_code ec;
  std::size_t n = socket_.receive_from(asio::buffer(buffer.data(), buffer.size()), sender, 0, ec);
  if (ec == asio::error::would_block || ec == asio::error::interrupted) return detail::ReadOutcome::would_block;
  if (ec) {
    // E.g. ECONNREFUSED from an ICMP port unreachable (SPEC D4).
    report_error(ec, "recvfrom");
    return detail::ReadOutcome::data;  // the next datagram may be fine
  }
  // A connected socket may report no sender address; it is the peer.
  const SocketAddress from = (peer_ && sender == Endpoint()) ? *peer_ : SocketAddress(sender);
  protocol_.datagram_received(buffer.first(n), from);
  return detail::ReadOutcome::data;
}

template <class Socket>
void DatagramEndpoint<Socket>::report_error(const boost::system::error_code& ec, const char* what) {
  protocol_.error_received(make_system_error(ec, what));
}

// ---- writing --------------------------------------------------------------

template <class Socket>
auto DatagramEndpoint<Socket>::endpoint_of(const SocketAddress& addr) const -> Endpoint {
  if constexpr (std::is_same_v<Socket, asio::ip::udp::socket>) {
    if (!addr.is_inet())
      throw std::invalid_argument("sendto: a UDP endpoint needs an IP address, not " + addr.to_string());
    return addr.udp_endpoint();
  } else {
    if (!addr.is_unix())
      throw std::invalid_argument("sendto: a Unix datagram endpoint needs a path, not " + addr.to_string());
    return Endpoint(addr.path());
  }
}

template <class Socket>
void DatagramEndpoint<Socket>::sendto(std::span<const std::byte> data, const std::optional<SocketAddress>& addr) {
  std::optional<Endpoint> to;
  if (peer_) {
    if (addr && *addr != *peer_) {
      throw std::invalid_argument("Invalid address: must be omitted or " + peer_->to_string());
    }
  } else {
    if (!addr) throw std::invalid_argument("sendto: an address is needed on an unconnected endpoint");
    to = endpoint_of(*addr);
  }
  if (state_ >= State::lost) return late_writes_.drop(loop_, "socket.send() raised exception.");
  if (queue_.empty() && send_one(data, to)) return;
  queue_.push_back({std::vector<std::byte>(data.begin(), data.end()), std::move(to)});
  queued_bytes_ += data.size() + datagram_overhead;
  arm_write();
  if (flow_.should_pause(queued_bytes_)) protocol_.pause_writing();
}

template <class Socket>
bool DatagramEndpoint<Socket>::send_one(std::span<const std::byte> data, const std::optional<Endpoint>& to) {
  boost::system::error_code ec;
  auto buffer = asio::buffer(data.data(), data.size());
  if (to)
    socket_.send_to(buffer, *to, 0, ec);
  else
    socket_.send(buffer, 0, ec);
  if (ec == asio::error::would_block || ec == asio::error::interrupted) return false;
  if (ec) report_error(ec, "sendto");  // the datagram is dropped (SPEC D3)
  return true;
}

template <class Socket>
void DatagramEndpoint<Socket>::arm_write() {
  if (write_armed_) return;
  write_armed_ = true;
  socket_.async_wait(Socket::wait_write,
                     [this, keep = self()](const boost::system::error_code& ec) { on_writable(ec); });
}

template <class Socket>
void DatagramEndpoint<Socket>::on_writable(const boost::system::error_code& ec) {
  write_armed_ = false;
  if (state_ >= State::lost || ec == asio::error::operation_aborted) return;
  while (!queue_.empty()) {
    Datagram& next = queue_.front();
    if (!send_one(next.data, next.to)) break;
    // The overhead counted when queuing leaves with the datagram (SPEC D5).
    queued_bytes_ -= next.data.size() + datagram_overhead;
    queue_.pop_front();
    if (state_ >= State::lost) return;  // error_received aborted us
  }
  if (flow_.should_resume(queued_bytes_)) {
    protocol_.resume_writing();
    if (state_ >= State::lost) return;
  }
  if (!queue_.empty()) return arm_write();
  if (state_ == State::closing) post_connection_lost();
}

template <class Socket>
void DatagramEndpoint<Socket>::set_write_buffer_limits(std::optional<std::int64_t> high,
                                                       std::optional<std::int64_t> low) {
  flow_.set_limits(high, low);
  if (flow_.should_pause(queued_bytes_)) protocol_.pause_writing();
}

// ---- closing --------------------------------------------------------------

template <class Socket>
void DatagramEndpoint<Socket>::close() {
  if (state_ != State::open) return;
  state_ = State::closing;
  reads_.stop();
  if (queue_.empty()) post_connection_lost();
}

template <class Socket>
void DatagramEndpoint<Socket>::abort() {
  force_close();
}

template <class Socket>
void DatagramEndpoint<Socket>::force_close() {
  if (state_ >= State::lost) return;
  queue_.clear();
  queued_bytes_ = 0;
  reads_.stop();
  post_connection_lost();
}

template <class Socket>
void DatagramEndpoint<Socket>::post_connection_lost() {
  state_ = State::lost;
  asio::post(socket_.get_executor(), [this, keep = self()] { call_connection_lost(); });
}

template <class Socket>
void DatagramEndpoint<Socket>::call_connection_lost() {
  state_ = State::closed;
  detail::LoopInternals::untrack(loop_, this);
  protocol_.connection_lost(nullptr);
  release();
}

template <class Socket>
std::any DatagramEndpoint<Socket>::extra_info(std::string_view name) const {
  if (name == "peername" && peer_) return *peer_;
  if (name == "sockname" && sockname_) return *sockname_;
  if (name == "socket" && state_ != State::closed) {
    return static_cast<int>(const_cast<Socket&>(socket_).native_handle());
  }
  return {};
}

template class DatagramEndpoint<asio::ip::udp::socket>;
template class DatagramEndpoint<asio::local::datagram_protocol::socket>;

// ---- the loop's methods -----------------------------------------------------

namespace {

using udp = asio::ip::udp;
using unix_datagram = asio::local::datagram_protocol;
using Endpoint = std::pair<std::shared_ptr<DatagramTransport>, std::shared_ptr<BaseProtocol>>;

template <class Socket>
Endpoint make_endpoint(EventLoop& loop, const ProtocolFactory& factory, Socket socket,
                       std::optional<SocketAddress> peer) {
  std::shared_ptr<BaseProtocol> protocol = factory();
  auto typed = std::dynamic_pointer_cast<DatagramProtocol>(protocol);
  if (!typed) throw std::invalid_argument("the protocol factory must make a DatagramProtocol");
  auto transport = std::make_shared<DatagramEndpoint<Socket>>(loop, std::move(socket), std::move(peer));
  transport->start(std::move(typed));
  return {std::move(transport), std::move(protocol)};
}

void set_bool_option(int fd, int level, int name, const char* what) {
  int on = 1;
  if (::setsockopt(fd, level, name, &on, sizeof on) != 0) {
    throw std::system_error(errno, std::generic_category(), std::string("setsockopt(") + what + ")");
  }
}

bool family_allowed(AddressFamily family, const udp::endpoint& endpoint) {
  switch (family) {
    case AddressFamily::ipv4: return endpoint.address().is_v4();
    case AddressFamily::ipv6: return endpoint.address().is_v6();
    case AddressFamily::unspecified: return true;
  }
  return true;
}

// One candidate socket: a family, with the local and remote address of that
// family (asyncio's addr_pairs_info).
struct Candidate {
  udp protocol;
  std::optional<udp::endpoint> local;
  std::optional<udp::endpoint> remote;
};

asio::awaitable<std::vector<Candidate>> udp_candidates(asio::io_context& context, const DatagramOptions& options) {
  if (!options.local_addr && !options.remote_addr) {
    switch (options.family) {
      case AddressFamily::ipv4: co_return std::vector<Candidate>{{udp::v4(), {}, {}}};
      case AddressFamily::ipv6: co_return std::vector<Candidate>{{udp::v6(), {}, {}}};
      case AddressFamily::unspecified:
        throw std::invalid_argument("unexpected address family: give local_addr, remote_addr or family");
    }
  }
  udp::resolver resolver(context);
  std::vector<Candidate> candidates;
  auto add = [&](const udp::endpoint& endpoint, bool is_local) {
    if (!family_allowed(options.family, endpoint)) return;
    auto it = std::find_if(candidates.begin(), candidates.end(),
                           [&](const Candidate& c) { return c.protocol == endpoint.protocol(); });
    if (it == candidates.end()) it = candidates.insert(candidates.end(), Candidate{endpoint.protocol(), {}, {}});
    auto& slot = is_local ? it->local : it->remote;
    if (!slot) slot = endpoint;  // the first address of each family
  };
  if (options.local_addr) {
    auto results = co_await detail::resolve(resolver, options.local_addr->first, options.local_addr->second,
                                            udp::resolver::passive);
    for (const auto& endpoint : results) {
      if (options.check_local_address) options.check_local_address(SocketAddress(endpoint));
      add(endpoint, true);
    }
  }
  if (options.remote_addr) {
    auto results = co_await detail::resolve(resolver, options.remote_addr->first, options.remote_addr->second, {});
    for (const auto& endpoint : results) {
      if (options.check_remote_address) options.check_remote_address(SocketAddress(endpoint));
      add(endpoint, false);
    }
  }
  // Each given address needs a counterpart of the same family.
  std::erase_if(candidates, [&](const Candidate& c) {
    return (options.local_addr && !c.local) || (options.remote_addr && !c.remote);
  });
  if (candidates.empty()) throw std::invalid_argument("can not get address information");
  co_return candidates;
}

asio::awaitable<Endpoint> open_udp(EventLoop& loop, ProtocolFactory factory, DatagramOptions options) {
  if (options.reuse_address) {
    throw std::invalid_argument(
        "reuse_address is not supported for datagram endpoints: SO_REUSEADDR on UDP lets another "
        "process bind the same address and receive its datagrams; use reuse_port");
  }
  auto candidates = co_await udp_candidates(loop.context(), options);
  std::exception_ptr first_error;
  for (const auto& candidate : candidates) {
    try {
      udp::socket socket(loop.context(), candidate.protocol);
      if (options.reuse_port) set_bool_option(socket.native_handle(), SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT");
      if (options.allow_broadcast) socket.set_option(udp::socket::broadcast(true));
      boost::system::error_code ec;
      if (candidate.local) {
        socket.bind(*candidate.local, ec);
        if (ec)
          throw std::system_error(
              ec, "error while attempting to bind on address " + SocketAddress(*candidate.local).to_string());
      }
      std::optional<SocketAddress> peer;
      // With allow_broadcast the remote address is only the default target,
      // as in asyncio: the socket stays unconnected.
      if (candidate.remote && !options.allow_broadcast) {
        socket.connect(*candidate.remote, ec);
        if (ec) throw std::system_error(ec, "Connect call failed " + SocketAddress(*candidate.remote).to_string());
        peer = SocketAddress(*candidate.remote);
      }
      co_return make_endpoint(loop, factory, std::move(socket), std::move(peer));
    } catch (const std::system_error&) {
      if (!first_error) first_error = std::current_exception();
    } catch (const boost::system::system_error& e) {
      if (!first_error) first_error = std::make_exception_ptr(std::system_error(e.code(), "socket()"));
    }
  }
  std::rethrow_exception(first_error);
}

Endpoint open_unix_datagram(EventLoop& loop, const ProtocolFactory& factory, const UnixDatagramOptions& options) {
  unix_datagram::socket socket(loop.context(), unix_datagram());
  boost::system::error_code ec;
  if (options.local_path) {
    detail::remove_stale_socket(*options.local_path);
    socket.bind(unix_datagram::endpoint(*options.local_path), ec);
    if (ec) throw std::system_error(ec, "error while attempting to bind on address " + *options.local_path);
  }
  std::optional<SocketAddress> peer;
  if (options.remote_path) {
    socket.connect(unix_datagram::endpoint(*options.remote_path), ec);
    if (ec) throw std::system_error(ec, "Connect call failed " + *options.remote_path);
    peer = SocketAddress::unix_path(*options.remote_path);
  }
  return make_endpoint(loop, factory, std::move(socket), std::move(peer));
}

void complete(EventLoop& loop, detail::DatagramHandler handler, std::exception_ptr error, Endpoint endpoint) {
  detail::post_completion(loop, std::move(handler), error, std::move(endpoint.first), std::move(endpoint.second));
}

}  // namespace

void EventLoop::create_datagram_endpoint_impl(ProtocolFactory factory, DatagramOptions options,
                                              detail::DatagramHandler handler) {
  asio::co_spawn(context_, open_udp(*this, std::move(factory), std::move(options)),
                 [this, handler = std::move(handler)](std::exception_ptr error, Endpoint endpoint) mutable {
                   complete(*this, std::move(handler), error, std::move(endpoint));
                 });
}

void EventLoop::create_unix_datagram_endpoint_impl(ProtocolFactory factory, UnixDatagramOptions options,
                                                   detail::DatagramHandler handler) {
  Endpoint endpoint;
  std::exception_ptr error;
  try {
    endpoint = open_unix_datagram(*this, factory, options);
  } catch (const boost::system::system_error& e) {
    error = std::make_exception_ptr(std::system_error(e.code(), "socket(AF_UNIX, SOCK_DGRAM)"));
  } catch (...) {
    error = std::current_exception();
  }
  complete(*this, std::move(handler), error, std::move(endpoint));
}

}  // namespace conduit
