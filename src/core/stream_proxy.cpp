#include "conduit/stream_proxy.hpp"

#include "conduit/server.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/socket.h>

#include <deque>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace conduit {

namespace detail {

namespace {

using Clock = std::chrono::steady_clock;

/// Make the next close of `transport` a reset (RST): SO_LINGER with a zero
/// timeout, then abort().
void reset(Transport& transport) {
  if (auto fd = transport.get_extra_info_as<int>("socket")) {
    ::linger no_linger{1, 0};
    ::setsockopt(*fd, SOL_SOCKET, SO_LINGER, &no_linger, sizeof no_linger);
  }
  transport.abort();
}

std::exception_ptr fault_error(const std::string& what) { return std::make_exception_ptr(std::runtime_error(what)); }

}  // namespace

/// A client the proxy's admit hook turned away: closed as soon as made.
class TurnedAway final : public Protocol {
 public:
  void connection_made(std::shared_ptr<Transport> transport) override { transport->abort(); }
};

/// One relayed connection: the client's transport, the upstream's, and one
/// Relay for each direction (what the faults hold back, and when it goes).
///
///   connecting --upstream connected--> relaying --both ends passed on,
///       |                                  |      a fault, a loss-->  ending --both lost--> ended
///       +--upstream failed or client lost--+-------------------------^
class ProxyConnection : public std::enable_shared_from_this<ProxyConnection> {
 public:
  enum class Side { client, upstream };

  ProxyConnection(EventLoop& loop, StreamProxy& proxy, std::uint64_t id, std::uint64_t seed)
      : loop_(loop),
        proxy_(&proxy),
        faults_(seed ^ 0x2545f4914f6cdd1dULL, Clock::now()),
        window_timer_(loop.context()),
        to_upstream_(loop, FaultDirection::upstream, seed),
        to_client_(loop, FaultDirection::downstream, seed ^ 0x9e3779b97f4a7c15ULL) {
    info_.id = id;
    info_.accepted = Clock::now();
    faults_.update(proxy.faults_);
  }

  const ProxyConnectionInfo& info() {
    info_.bytes_upstream = to_upstream_.forwarded;
    info_.bytes_downstream = to_client_.forwarded;
    info_.received_upstream = to_upstream_.received;
    info_.received_downstream = to_client_.received;
    return info_;
  }

  /// The proxy is going away: act on no fault from now on.
  void detach() {
    proxy_ = nullptr;
    faults_.update(FaultList());
  }

  // ---- from the two sides' protocols ----

  void made(Side side, std::shared_ptr<Transport> transport) {
    if (side == Side::client) {
      client_ = std::move(transport);
      info_.client = client_->get_extra_info_as<SocketAddress>("peername");
      if (info_.client && info_.client->is_inet()) faults_.set_client(info_.client->ip());
      client_->pause_reading();  // until the upstream is there
      // Ended before its client was made (the proxy went down or closed
      // meanwhile, and may be gone): that client goes at once.
      if (!proxy_ || state_ != State::connecting) return client_->abort();
      if (proxy_->options_.on_accepted) proxy_->options_.on_accepted(info());
      connect_upstream();
    } else {
      upstream_ = std::move(transport);
      upstream_pending_ = false;
      if (state_ != State::connecting) return upstream_->close();  // the client left meanwhile
      state_ = State::relaying;
      arm_window();
      apply_timed_faults();
      update_source(to_upstream_);
      update_source(to_client_);
    }
  }

  void data(Side side, std::span<const std::byte> bytes) {
    Relay& r = from(side);
    // A fault whose window opens or closes after so many bytes takes the
    // bytes from there on: the chunk is taken in pieces split there.
    while (!bytes.empty()) {
      std::size_t n = bytes.size();
      if (const auto left = faults_.bytes_to_change(r.direction); left && *left < n)
        n = static_cast<std::size_t>(*left);
      r.received += n;
      faults_.carried(r.direction, n);
      take(r, bytes.first(n));
      bytes = bytes.subspan(n);
      if (faults_.refresh()) windows_changed();
    }
  }

  void eof(Side side) {
    Relay& r = from(side);
    if (r.ended) return;
    r.ended = true;
    if (faults().find<fault::Blackhole>(r.direction)) return;  // nothing passes, not even the end
    push(r, {r.schedule.plan_end(faults(), r.direction, Clock::now()), {}, Action::eof});
    release(r);
  }

  void writing_paused(Side side, bool paused) {
    Relay& r = into(side);
    r.sink_paused = paused;
    if (!paused) release(r);
    update_source(r);
  }

  void lost(Side side, std::exception_ptr error) {
    (side == Side::client ? client_ : upstream_).reset();
    if (error && !error_) error_ = error;
    Relay& dead = into(side);  // nothing can be written there any more
    dead.clear();
    if (state_ == State::connecting && side == Side::client) {
      state_ = State::ending;  // made() closes the upstream when it comes
      upstream_pending_ = true;
    }
    if (auto other = side == Side::client ? upstream_ : client_) {
      if (error) {
        reset(*other);  // a reset (or any failure) is carried on as a reset
      } else {
        // Closed cleanly: what it sent still goes, then the other end closes.
        Relay& r = from(side);
        if (!r.ended) {
          r.ended = true;
          push(r, {r.schedule.plan_end(faults(), r.direction, Clock::now()), {}, Action::close});
        }
        release(r);
      }
    }
    finish_if_done();
  }

  /// The upstream could not be reached: the client's connection is closed.
  void upstream_failed(std::exception_ptr error) {
    if (state_ == State::ended) return;
    if (!error_) error_ = error;
    state_ = State::ending;
    if (client_) client_->close();
    finish_if_done();
  }

  // ---- from the proxy ----

  /// A fault was set or removed: act on those that act on the connection
  /// as a whole (a reset, a blackhole's close), and release what waits.
  void faults_changed() {
    if (proxy_) faults_.update(proxy_->faults_);
    windows_changed();
  }

  /// The faults acting now changed (set, removed, or a window opened or
  /// closed): act on the new ones and wait for the next window.
  void windows_changed() {
    arm_window();
    if (state_ != State::relaying) return;
    apply_timed_faults();
    release(to_upstream_);
    release(to_client_);
  }

  /// Wake when a fault's time window next opens or closes.
  void arm_window() {
    const auto next = faults_.next_change();
    if (next == window_at_) return;
    window_at_ = next;
    window_timer_.cancel();
    if (!next) return;
    window_timer_.expires_at(*next);
    window_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec) return;
      self->window_at_.reset();
      self->faults_.refresh();
      self->windows_changed();
    });
  }

  void reset_now(const std::string& why) {
    if (state_ == State::ended) return;
    if (!end_reason_) end_reason_ = why;
    state_ = State::ending;
    to_upstream_.clear();
    to_client_.clear();
    if (client_) reset(*client_);
    if (upstream_) reset(*upstream_);
    finish_if_done();
  }

  void close_now() {
    if (state_ == State::ended) return;
    state_ = State::ending;
    if (client_) client_->close();
    if (upstream_) upstream_->close();
    finish_if_done();
  }

 private:
  enum class State { connecting, relaying, ending, ended };
  enum class Action { none, eof, close, reset };

  /// What one direction holds back, and when each piece goes.
  struct Relay {
    struct Item {
      Clock::time_point at;
      std::vector<std::byte> bytes;
      Action action = Action::none;
    };
    Relay(EventLoop& loop, FaultDirection d, std::uint64_t seed)
        : direction(d), schedule(seed), timer(loop.context()) {}
    void clear() {
      queue.clear();
      queued = 0;
      timer.cancel();
    }

    FaultDirection direction;
    StreamSchedule schedule;
    std::deque<Item> queue;
    std::size_t queued = 0;  // bytes in queue
    asio::steady_timer timer;
    std::optional<Clock::time_point> armed_for;
    bool sink_paused = false;    // the receiving transport said pause_writing
    bool source_paused = false;  // we paused the sending transport's reading
    bool ended = false;          // an end (EOF, close, reset) is queued: nothing more is taken
    bool eof_passed = false;
    std::uint64_t received = 0;   // bytes read from the sender, whatever the faults do with them
    std::uint64_t accepted = 0;   // bytes taken in, for limit_data and reset
    std::uint64_t forwarded = 0;  // bytes written to the receiver
  };

  /// The proxy's faults that act on this connection (toxicity drawn).
  const FaultList& faults() const { return faults_.get(); }
  Relay& from(Side side) { return side == Side::client ? to_upstream_ : to_client_; }
  Relay& into(Side side) { return side == Side::client ? to_client_ : to_upstream_; }
  Transport* source(const Relay& r) const { return (&r == &to_upstream_ ? client_ : upstream_).get(); }
  Transport* sink(const Relay& r) const { return (&r == &to_upstream_ ? upstream_ : client_).get(); }

  /// Relay `bytes` from the sender of `r` under the faults acting now.
  void take(Relay& r, std::span<const std::byte> bytes) {
    if (r.ended || state_ != State::relaying || !sink(r)) return;
    if (faults().find<fault::Blackhole>(r.direction)) return;  // dropped
    std::size_t n = bytes.size();
    Action end = Action::none;
    if (const auto* limit = faults().find<fault::LimitData>(r.direction)) {
      const std::uint64_t left = limit->bytes > r.accepted ? limit->bytes - r.accepted : 0;
      if (left <= n) {
        n = static_cast<std::size_t>(left);
        end = Action::close;
        end_reason_ = "the limit_data fault closed the connection";
      }
    }
    if (const auto* reset = faults().find<fault::Reset>(r.direction); reset && reset->after_bytes) {
      const std::uint64_t left = *reset->after_bytes > r.accepted ? *reset->after_bytes - r.accepted : 0;
      if (left <= n) {
        n = static_cast<std::size_t>(left);
        end = Action::reset;
      }
    }
    r.accepted += n;
    if (n > 0) enqueue(r, bytes.first(n));
    if (end != Action::none) {
      r.ended = true;
      const auto now = Clock::now();
      push(r, {end == Action::close ? r.schedule.plan_end(faults(), r.direction, now) : r.schedule.after_last(now),
               {},
               end});
    }
    release(r);
  }

  void connect_upstream() {
    const ProxyEndpoint& up = proxy_->options_.upstream;
    auto self = shared_from_this();
    auto factory = [self] { return std::make_shared<SideProtocol>(self, Side::upstream); };
    auto done = [self](std::exception_ptr error, std::shared_ptr<Transport>, auto) {
      self->upstream_pending_ = false;
      if (error) self->upstream_failed(error);
    };
    if (up.unix_path) {
      loop_.create_unix_connection(factory, *up.unix_path, done);
    } else {
      ConnectOptions options;
      options.tls = up.tls;
      options.check_remote_address = proxy_->options_.check_upstream_address;
      loop_.create_connection(factory, up.host, up.port, std::move(options), done);
    }
  }

  /// Take `bytes` into `r`: straight to the receiver when nothing is held
  /// and no fault times them, else queued as the schedule says.
  void enqueue(Relay& r, std::span<const std::byte> bytes) {
    const FaultList& f = faults();
    const bool timed = f.find<fault::Latency>(r.direction) || f.find<fault::Bandwidth>(r.direction) ||
                       f.find<fault::Slicer>(r.direction);
    if (!timed && r.queue.empty() && !r.sink_paused) {
      sink(r)->write(bytes);
      r.forwarded += bytes.size();
      return;
    }
    std::size_t at = 0;
    for (const auto& piece : r.schedule.plan(f, r.direction, bytes.size(), Clock::now())) {
      push(r, {piece.at,
               std::vector<std::byte>(bytes.begin() + static_cast<std::ptrdiff_t>(at),
                                      bytes.begin() + static_cast<std::ptrdiff_t>(at + piece.size)),
               Action::none});
      at += piece.size;
    }
  }

  void push(Relay& r, Relay::Item item) {
    r.queued += item.bytes.size();
    r.queue.push_back(std::move(item));
  }

  /// Pass on what is due, and wait for the next.
  void release(Relay& r) {
    const auto now = Clock::now();
    while (!r.queue.empty() && r.queue.front().at <= now && !r.sink_paused && sink(r)) {
      Relay::Item item = std::move(r.queue.front());
      r.queue.pop_front();
      r.queued -= item.bytes.size();
      switch (item.action) {
        case Action::none:
          sink(r)->write(item.bytes);
          r.forwarded += item.bytes.size();
          break;
        case Action::eof: pass_eof(r); break;
        case Action::close: return close_now();
        case Action::reset: return reset_now("the reset fault reset the connection");
      }
    }
    if (!r.queue.empty() && !r.sink_paused && sink(r)) arm(r, r.queue.front().at);
    update_source(r);
  }

  void arm(Relay& r, Clock::time_point at) {
    if (r.armed_for && *r.armed_for <= at) return;  // an earlier wake-up comes first and re-arms
    r.armed_for = at;
    r.timer.expires_at(at);
    r.timer.async_wait([self = shared_from_this(), &r](const boost::system::error_code& ec) {
      r.armed_for.reset();
      if (!ec) self->release(r);
    });
  }

  void pass_eof(Relay& r) {
    Transport* to = sink(r);
    // TLS has no half-close: the connection ends with its sender's end.
    if (!to->can_write_eof()) return close_now();
    to->write_eof();
    r.eof_passed = true;
    if (to_upstream_.eof_passed && to_client_.eof_passed) close_now();
  }

  /// The sender reads while its direction holds less than the buffer and
  /// the receiver takes more; it resumes below half the buffer.
  void update_source(Relay& r) {
    Transport* from = source(r);
    if (!from || state_ != State::relaying) return;
    const std::size_t limit = proxy_ ? proxy_->options_.buffer : 1 << 20;
    const bool hold = r.sink_paused || r.queued > limit;
    if (hold && !r.source_paused) {
      r.source_paused = true;
      from->pause_reading();
    } else if (!hold && r.source_paused && r.queued <= limit / 2) {
      r.source_paused = false;
      from->resume_reading();
    } else if (!hold && !r.source_paused && !from->is_reading()) {
      from->resume_reading();  // paused while the upstream was connecting
    }
  }

  /// Faults on the whole connection: a reset with no byte count (now, or
  /// after its delay) and a blackhole's close, timed from when they took
  /// hold. A fault removed or changed takes its timer with it.
  void apply_timed_faults() {
    std::map<std::string, std::shared_ptr<asio::steady_timer>> kept;
    for (const auto& f : faults().all()) {
      std::optional<fault::Duration> after;
      bool is_reset = false;
      if (const auto* reset = std::get_if<fault::Reset>(&f.kind); reset && !reset->after_bytes) {
        if (!reset->after) return reset_now("the reset fault '" + f.name + "' reset the connection");
        after = reset->after;
        is_reset = true;
      } else if (const auto* hole = std::get_if<fault::Blackhole>(&f.kind); hole && hole->close_after) {
        after = hole->close_after;
      } else {
        continue;
      }
      const std::string key = f.name + '\n' + fault::kind_name(f.kind) + '\n' + std::to_string(after->count());
      if (auto it = timers_.find(key); it != timers_.end()) {
        kept.insert(*it);
        continue;
      }
      auto timer = std::make_shared<asio::steady_timer>(loop_.context(), *after);
      timer->async_wait([self = shared_from_this(), is_reset, name = f.name](const boost::system::error_code& ec) {
        if (ec || self->state_ != State::relaying) return;
        if (is_reset) return self->reset_now("the reset fault '" + name + "' reset the connection");
        self->end_reason_ = "the blackhole fault '" + name + "' closed the connection";
        self->close_now();
      });
      kept.emplace(key, std::move(timer));
    }
    for (auto& [key, timer] : timers_) {
      if (!kept.contains(key)) timer->cancel();
    }
    timers_ = std::move(kept);
  }

  void finish_if_done() {
    if (state_ == State::ended || client_ || upstream_) return;
    // The upstream's connect is still on its way: its end comes through here.
    if (state_ == State::connecting || upstream_pending_) return;
    state_ = State::ended;
    to_upstream_.clear();
    to_client_.clear();
    for (auto& [key, timer] : timers_) timer->cancel();
    timers_.clear();
    window_timer_.cancel();
    std::exception_ptr why = error_;
    if (!why && end_reason_) why = fault_error(*end_reason_);
    // No longer the proxy's connection: the proxy may go before our last
    // callback does (and ended() may drop our last reference).
    if (StreamProxy* proxy = std::exchange(proxy_, nullptr)) {
      if (proxy->options_.on_closed) proxy->options_.on_closed(info(), why);
      proxy->ended(info_.id);
    }
  }

  /// A side's protocol: forwards its transport's callbacks.
  class SideProtocol final : public Protocol {
   public:
    SideProtocol(std::shared_ptr<ProxyConnection> owner, Side side) : owner_(std::move(owner)), side_(side) {}
    void connection_made(std::shared_ptr<Transport> t) override { owner_->made(side_, std::move(t)); }
    void data_received(std::span<const std::byte> data) override { owner_->data(side_, data); }
    bool eof_received() override {
      owner_->eof(side_);
      return true;  // the other direction may go on
    }
    void pause_writing() override { owner_->writing_paused(side_, true); }
    void resume_writing() override { owner_->writing_paused(side_, false); }
    void connection_lost(std::exception_ptr error) override {
      auto owner = std::move(owner_);  // break the cycle through the transport
      owner->lost(side_, error);
    }

   private:
    std::shared_ptr<ProxyConnection> owner_;
    Side side_;
  };

 public:
  static std::shared_ptr<Protocol> client_protocol(std::shared_ptr<ProxyConnection> connection) {
    return std::make_shared<SideProtocol>(std::move(connection), Side::client);
  }

 private:
  EventLoop& loop_;
  StreamProxy* proxy_;
  ConnectionFaults faults_;          // the proxy's that act on this connection
  asio::steady_timer window_timer_;  // the next time a fault's window opens or closes
  std::optional<Clock::time_point> window_at_;
  ProxyConnectionInfo info_;
  State state_ = State::connecting;
  std::shared_ptr<Transport> client_, upstream_;
  Relay to_upstream_, to_client_;
  std::map<std::string, std::shared_ptr<asio::steady_timer>> timers_;
  bool upstream_pending_ = false;          // the client left while the upstream's connect was on its way
  std::exception_ptr error_;               // the first failure seen
  std::optional<std::string> end_reason_;  // a fault that ended it
};

}  // namespace detail

// ==== StreamProxy ===============================================================

StreamProxy::StreamProxy(EventLoop& loop, StreamProxyOptions options) : loop_(loop), options_(std::move(options)) {}

StreamProxy::~StreamProxy() {
  for (auto& [id, connection] : connections_) connection->detach();
}

void StreamProxy::create(EventLoop& loop, StreamProxyOptions options,
                         std::function<void(std::exception_ptr, std::shared_ptr<StreamProxy>)> done) {
  std::shared_ptr<StreamProxy> proxy;
  try {
    if (options.listen.unix_path && options.listen.tls) {
      throw std::invalid_argument("proxy: TLS is for TCP listeners only");
    }
    if (options.upstream.unix_path && options.upstream.tls) {
      throw std::invalid_argument("proxy: TLS is for TCP upstreams only");
    }
    if (!options.upstream.unix_path && options.upstream.port == 0) {
      throw std::invalid_argument("proxy: the upstream needs a port");
    }
    if (options.buffer == 0) throw std::invalid_argument("proxy: the buffer must be above 0");
    auto initial = std::move(options.faults);
    proxy.reset(new StreamProxy(loop, std::move(options)));
    for (auto& f : initial) proxy->set_fault(std::move(f));
  } catch (...) {
    asio::post(loop.get_executor(),
               [done = std::move(done), error = std::current_exception()] { done(error, nullptr); });
    return;
  }
  proxy->listen([proxy, done = std::move(done)](std::exception_ptr error) { done(error, error ? nullptr : proxy); });
}

void StreamProxy::listen(std::function<void(std::exception_ptr)> done) {
  auto self = shared_from_this();
  auto factory = [weak = weak_from_this()]() -> std::shared_ptr<BaseProtocol> {
    auto proxy = weak.lock();
    if (!proxy || proxy->state_ == State::down || proxy->state_ == State::closed) {
      throw std::runtime_error("the proxy is down");
    }
    // Turned away by the owner's own limits: not an error of the loop's.
    if (proxy->options_.admit && !proxy->options_.admit()) return std::make_shared<detail::TurnedAway>();
    const std::uint64_t id = proxy->next_id_++;
    auto connection = std::make_shared<detail::ProxyConnection>(proxy->loop_, *proxy, id, proxy->options_.seed + id);
    proxy->connections_.emplace(id, connection);
    return detail::ProxyConnection::client_protocol(connection);
  };
  auto listening = [self, done = std::move(done)](std::exception_ptr error, std::shared_ptr<Server> server) {
    if (error) return done(error);
    if (self->state_ == State::closed) {
      server->close();
      return done(std::make_exception_ptr(std::runtime_error("the proxy was closed")));
    }
    self->server_ = std::move(server);
    self->state_ = State::up;
    if (!self->options_.listen.unix_path) {
      if (auto s = self->server_->sockets(); !s.empty()) self->bound_port_ = s.front().port();
    }
    done(nullptr);
  };
  ServerOptions server_options;
  server_options.tls = options_.listen.tls;
  server_options.check_local_address = options_.check_listen_address;
  if (options_.listen.unix_path) {
    loop_.create_unix_server(factory, *options_.listen.unix_path, server_options, listening);
  } else {
    std::vector<std::string> hosts;
    if (!options_.listen.host.empty()) hosts.push_back(options_.listen.host);
    const std::uint16_t port = bound_port_ ? bound_port_ : options_.listen.port;
    loop_.create_server(factory, hosts, port, server_options, listening);
  }
}

std::vector<SocketAddress> StreamProxy::sockets() const {
  return state_ == State::up && server_ ? server_->sockets() : std::vector<SocketAddress>{};
}

void StreamProxy::set_fault(Fault fault) {
  fault.check_kind_for(false);
  faults_.set(std::move(fault));
  auto open = connections_;  // a fault may end connections as it applies
  for (auto& [id, connection] : open) connection->faults_changed();
}

bool StreamProxy::remove_fault(const std::string& name) {
  if (!faults_.remove(name)) return false;
  auto open = connections_;
  for (auto& [id, connection] : open) connection->faults_changed();
  return true;
}

void StreamProxy::ended(std::uint64_t id) {
  connections_.erase(id);
  wake_closed_waiters();
}

void StreamProxy::wait_closed_impl(asio::any_completion_handler<void()> handler) {
  closed_waiters_.add(std::move(handler));
  wake_closed_waiters();
}

void StreamProxy::wake_closed_waiters() {
  if (state_ == State::closed && connections_.empty()) closed_waiters_.wake(loop_);
}

std::vector<ProxyConnectionInfo> StreamProxy::connections() const {
  std::vector<ProxyConnectionInfo> out;
  for (const auto& [id, connection] : connections_) out.push_back(connection->info());
  return out;
}

void StreamProxy::down() {
  if (state_ != State::up) return;
  state_ = State::down;
  if (server_) server_->close();
  server_.reset();
  auto open = connections_;
  for (auto& [id, connection] : open) connection->reset_now("the proxy went down");
}

void StreamProxy::up(std::function<void(std::exception_ptr)> done) {
  if (state_ == State::up) {
    asio::post(loop_.get_executor(), [done = std::move(done)] { done(nullptr); });
    return;
  }
  if (state_ == State::closed) {
    asio::post(loop_.get_executor(),
               [done = std::move(done)] { done(std::make_exception_ptr(std::logic_error("the proxy is closed"))); });
    return;
  }
  state_ = State::starting;
  listen(std::move(done));
}

void StreamProxy::close() {
  if (state_ == State::closed) return;
  state_ = State::closed;
  if (server_) server_->close();
  server_.reset();
  auto open = connections_;
  for (auto& [id, connection] : open) connection->close_now();
  wake_closed_waiters();
}

}  // namespace conduit
