#include "conduit/datagram_proxy.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <deque>
#include <stdexcept>

namespace conduit {

namespace detail {

using Clock = std::chrono::steady_clock;

/// The listening endpoint's protocol: hands each datagram to the proxy.
class DatagramListener final : public DatagramProtocol {
 public:
  explicit DatagramListener(DatagramProxy* proxy) : proxy_(proxy) {}
  void detach() { proxy_ = nullptr; }
  void datagram_received(std::span<const std::byte> data, const SocketAddress& from) override {
    if (proxy_) proxy_->from_client(data, from);
  }
  // An ICMP error about some client's address: nothing to pass on.
  void error_received(std::exception_ptr) override {}

 private:
  DatagramProxy* proxy_;
};

/// One client: its own socket to the upstream (this is that endpoint's
/// protocol), and the datagrams each direction's faults hold back.
class DatagramFlow final : public DatagramProtocol, public std::enable_shared_from_this<DatagramFlow> {
 public:
  DatagramFlow(EventLoop& loop, DatagramProxy& proxy, SocketAddress client, std::uint64_t id, std::uint64_t seed)
      : loop_(loop),
        proxy_(&proxy),
        faults_(seed ^ 0x2545f4914f6cdd1dULL, Clock::now()),
        client_(std::move(client)),
        to_upstream_(loop, FaultDirection::upstream, seed),
        to_client_(loop, FaultDirection::downstream, seed ^ 0x9e3779b97f4a7c15ULL),
        idle_(loop.context()) {
    info_.id = id;
    info_.client = client_;
    info_.accepted = Clock::now();
    if (client_.is_inet()) faults_.set_client(client_.ip());
    faults_.update(proxy.faults_);
  }

  /// A fault was set or removed.
  void faults_changed() { faults_.update(proxy_ ? proxy_->faults_ : FaultList()); }

  const ProxyConnectionInfo& info() {
    info_.bytes_upstream = info_.received_upstream = to_upstream_.forwarded;
    info_.bytes_downstream = info_.received_downstream = to_client_.forwarded;
    return info_;
  }
  void detach() {
    proxy_ = nullptr;
    faults_.update(FaultList());
  }

  void start() {
    DatagramOptions options;
    options.remote_addr = {proxy_->options_.upstream_host, proxy_->options_.upstream_port};
    options.check_remote_address = proxy_->options_.check_upstream_address;
    auto self = shared_from_this();
    loop_.create_datagram_endpoint([self] { return self; }, std::move(options),
                                   [self](std::exception_ptr error, auto, auto) {
                                     if (error) self->end(error);
                                   });
    watch_idle();
  }

  void from_client(std::span<const std::byte> data) {
    last_activity_ = Clock::now();
    if (!upstream_) {
      // The upstream socket is on its way: a few datagrams wait for it.
      if (early_.size() < 64) early_.emplace_back(data.begin(), data.end());
      return;
    }
    relay(to_upstream_, data);
  }

  /// End the flow: `error` null when it went idle or the proxy closed.
  void end(std::exception_ptr error) {
    if (ended_) return;
    ended_ = true;
    idle_.cancel();
    to_upstream_.timer.cancel();
    to_client_.timer.cancel();
    if (upstream_) upstream_->abort();
    if (proxy_) {
      if (proxy_->options_.on_closed) proxy_->options_.on_closed(info(), error);
      proxy_->ended(client_);
    }
  }

  // ---- the upstream endpoint's protocol ----
  void connection_made(std::shared_ptr<DatagramTransport> transport) override {
    upstream_ = std::move(transport);
    if (ended_) return upstream_->abort();
    for (auto& datagram : early_) relay(to_upstream_, datagram);
    early_.clear();
  }
  void datagram_received(std::span<const std::byte> data, const SocketAddress&) override {
    last_activity_ = Clock::now();
    relay(to_client_, data);
  }
  // ECONNREFUSED when nothing listens upstream: UDP carries no such news back.
  void error_received(std::exception_ptr) override {}
  void connection_lost(std::exception_ptr) override { upstream_.reset(); }

 private:
  struct Direction {
    Direction(EventLoop& loop, FaultDirection d, std::uint64_t seed)
        : direction(d), schedule(seed), timer(loop.context()) {}
    FaultDirection direction;
    DatagramSchedule schedule;
    std::multimap<Clock::time_point, std::vector<std::byte>> held;  // by when each leaves
    std::size_t held_bytes = 0;
    asio::steady_timer timer;
    std::optional<Clock::time_point> armed_for;
    std::uint64_t forwarded = 0;
  };

  /// The proxy's faults that act on this connection (toxicity drawn).
  const FaultList& faults() const { return faults_.get(); }

  void relay(Direction& d, std::span<const std::byte> data) {
    if (ended_) return;
    const auto now = Clock::now();
    // A datagram is judged whole, by the faults acting as it came (a
    // scope's byte count is of the datagrams before it).
    faults_.refresh(now);
    faults_.carried(d.direction, data.size());
    for (const auto at : d.schedule.plan(faults(), d.direction, data.size(), now)) {
      if (at <= now && d.held.empty()) {
        deliver(d, data);
        continue;
      }
      if (d.held_bytes + data.size() > buffer()) continue;  // a full queue drops
      d.held_bytes += data.size();
      d.held.emplace(at, std::vector<std::byte>(data.begin(), data.end()));
    }
    release(d);
  }

  void release(Direction& d) {
    const auto now = Clock::now();
    while (!d.held.empty() && d.held.begin()->first <= now && !ended_) {
      auto node = d.held.extract(d.held.begin());
      d.held_bytes -= node.mapped().size();
      deliver(d, node.mapped());
    }
    if (d.held.empty() || ended_) return;
    const auto next = d.held.begin()->first;
    if (d.armed_for && *d.armed_for <= next) return;
    d.armed_for = next;
    d.timer.expires_at(next);
    d.timer.async_wait([self = shared_from_this(), &d](const boost::system::error_code& ec) {
      d.armed_for.reset();
      if (!ec) self->release(d);
    });
  }

  void deliver(Direction& d, std::span<const std::byte> data) {
    d.forwarded += data.size();
    if (&d == &to_upstream_) {
      if (upstream_) upstream_->sendto(data);
    } else if (proxy_) {
      proxy_->to_client(data, client_);
    }
  }

  std::size_t buffer() const { return proxy_ ? proxy_->options_.buffer : 1 << 20; }

  void watch_idle() {
    if (!proxy_) return;
    idle_.expires_after(proxy_->options_.idle_timeout);
    idle_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->ended_ || !self->proxy_) return;
      if (Clock::now() - self->last_activity_ >= self->proxy_->options_.idle_timeout) return self->end(nullptr);
      self->watch_idle();
    });
  }

  EventLoop& loop_;
  DatagramProxy* proxy_;
  ConnectionFaults faults_;  // the proxy's that act on this client
  SocketAddress client_;
  ProxyConnectionInfo info_;
  std::shared_ptr<DatagramTransport> upstream_;
  std::vector<std::vector<std::byte>> early_;
  Direction to_upstream_, to_client_;
  asio::steady_timer idle_;
  Clock::time_point last_activity_ = Clock::now();
  bool ended_ = false;
};

}  // namespace detail

// ==== DatagramProxy ===============================================================

DatagramProxy::DatagramProxy(EventLoop& loop, DatagramProxyOptions options)
    : loop_(loop), options_(std::move(options)) {}

DatagramProxy::~DatagramProxy() {
  if (listener_protocol_) listener_protocol_->detach();
  if (listener_) listener_->abort();
  for (auto& [endpoint, flow] : flows_) flow->detach();
}

void DatagramProxy::create(EventLoop& loop, DatagramProxyOptions options,
                           std::function<void(std::exception_ptr, std::shared_ptr<DatagramProxy>)> done) {
  std::shared_ptr<DatagramProxy> proxy;
  try {
    if (options.upstream_port == 0) throw std::invalid_argument("proxy: the upstream needs a port");
    if (options.upstream_host.empty()) throw std::invalid_argument("proxy: the upstream needs a host");
    if (options.idle_timeout.count() <= 0) throw std::invalid_argument("proxy: the idle timeout must be above 0");
    if (options.max_clients == 0 || options.buffer == 0) {
      throw std::invalid_argument("proxy: max_clients and buffer must be above 0");
    }
    auto initial = std::move(options.faults);
    proxy.reset(new DatagramProxy(loop, std::move(options)));
    for (auto& f : initial) proxy->set_fault(std::move(f));
  } catch (...) {
    asio::post(loop.get_executor(),
               [done = std::move(done), error = std::current_exception()] { done(error, nullptr); });
    return;
  }
  proxy->listen([proxy, done = std::move(done)](std::exception_ptr error) { done(error, error ? nullptr : proxy); });
}

void DatagramProxy::listen(std::function<void(std::exception_ptr)> done) {
  DatagramOptions options;
  options.local_addr = {options_.listen_host.empty() ? std::string("0.0.0.0") : options_.listen_host,
                        bound_port_ ? bound_port_ : options_.listen_port};
  options.check_local_address = options_.check_listen_address;
  listener_protocol_ = std::make_shared<detail::DatagramListener>(this);
  auto self = shared_from_this();
  loop_.create_datagram_endpoint(
      [protocol = listener_protocol_] { return protocol; }, std::move(options),
      [self, done = std::move(done)](std::exception_ptr error, std::shared_ptr<DatagramTransport> transport, auto) {
        if (error) return done(error);
        if (self->state_ == State::closed) {
          transport->abort();
          return done(std::make_exception_ptr(std::runtime_error("the proxy was closed")));
        }
        self->listener_ = std::move(transport);
        self->state_ = State::up;
        if (auto where = self->listener_->get_extra_info_as<SocketAddress>("sockname"))
          self->bound_port_ = where->port();
        done(nullptr);
      });
}

std::vector<SocketAddress> DatagramProxy::sockets() const {
  if (state_ != State::up || !listener_) return {};
  if (auto where = listener_->get_extra_info_as<SocketAddress>("sockname")) return {*where};
  return {};
}

void DatagramProxy::set_fault(Fault fault) {
  fault.check_kind_for(true);
  faults_.set(std::move(fault));
  for (auto& [endpoint, flow] : flows_) flow->faults_changed();
}

bool DatagramProxy::remove_fault(const std::string& name) {
  if (!faults_.remove(name)) return false;
  for (auto& [endpoint, flow] : flows_) flow->faults_changed();
  return true;
}

void DatagramProxy::from_client(std::span<const std::byte> data, const SocketAddress& client) {
  if (state_ != State::up || !client.is_inet()) return;
  const auto key = client.udp_endpoint();
  auto it = flows_.find(key);
  if (it == flows_.end()) {
    if (flows_.size() >= options_.max_clients) return;  // dropped: too many clients
    if (options_.admit && !options_.admit(client)) return;
    const std::uint64_t id = next_id_++;
    auto flow = std::make_shared<detail::DatagramFlow>(loop_, *this, client, id, options_.seed + id);
    it = flows_.emplace(key, flow).first;
    if (options_.on_accepted) options_.on_accepted(flow->info());
    flow->start();
  }
  auto flow = it->second;  // a callback may end it
  flow->from_client(data);
}

void DatagramProxy::to_client(std::span<const std::byte> data, const SocketAddress& client) {
  if (state_ == State::up && listener_) listener_->sendto(data, client);
}

void DatagramProxy::ended(const SocketAddress& client) {
  flows_.erase(client.udp_endpoint());
  wake_closed_waiters();
}

void DatagramProxy::wait_closed_impl(asio::any_completion_handler<void()> handler) {
  closed_waiters_.add(std::move(handler));
  wake_closed_waiters();
}

void DatagramProxy::wake_closed_waiters() {
  if (state_ == State::closed && flows_.empty()) closed_waiters_.wake(loop_);
}

std::vector<ProxyConnectionInfo> DatagramProxy::connections() const {
  std::vector<ProxyConnectionInfo> out;
  for (const auto& [endpoint, flow] : flows_) out.push_back(flow->info());
  return out;
}

void DatagramProxy::forget_all() {
  auto flows = flows_;
  for (auto& [endpoint, flow] : flows) flow->end(nullptr);
  if (listener_protocol_) listener_protocol_->detach();
  if (listener_) listener_->abort();
  listener_.reset();
}

void DatagramProxy::down() {
  if (state_ != State::up) return;
  state_ = State::down;
  forget_all();
}

void DatagramProxy::up(std::function<void(std::exception_ptr)> done) {
  if (state_ == State::up || state_ == State::closed) {
    const bool closed = state_ == State::closed;
    asio::post(loop_.get_executor(), [done = std::move(done), closed] {
      done(closed ? std::make_exception_ptr(std::logic_error("the proxy is closed")) : nullptr);
    });
    return;
  }
  state_ = State::starting;
  listen(std::move(done));
}

void DatagramProxy::close() {
  if (state_ == State::closed) return;
  state_ = State::closed;
  forget_all();
  wake_closed_waiters();
}

}  // namespace conduit
