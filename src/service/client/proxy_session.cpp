#include <conduit/service/remote.hpp>

#include "remote_session.hpp"
#include "sessions.hpp"

#include <boost/asio/post.hpp>

#include <deque>
#include <map>
#include <stdexcept>

namespace conduit::service {

namespace {

/// A proxy session's client end, a Proxy as a local one is. What it knows
/// of the proxy (faults, up or down, connections) is what it asked for and
/// what the service reported: set_fault and remove_fault act on it at once
/// and go to the service in order; another caller's change (ControlProxy)
/// replaces it with the service's state.
///
///   opening --proxy_started--> serving --close()--> closing --stream ends--> closed
///      +--open_failed / refused--> done(error)          (stream ends from any: closed)
class RemoteProxySession final : public Proxy, public std::enable_shared_from_this<RemoteProxySession> {
 public:
  RemoteProxySession(EventLoop& loop, ProxyOptions options,
                     std::function<void(std::exception_ptr, std::shared_ptr<Proxy>)> done)
      : loop_(loop), options_(std::move(options)), done_(std::move(done)) {}

  void start(const RemoteOptions& remote, v1::OpenProxy open) {
    for (auto& fault : options_.faults) set_known_fault(std::move(fault));
    options_.faults.clear();
    v1::ClientMessage first;
    *first.mutable_open_proxy() = std::move(open);
    auto self = shared_from_this();
    stream_ = SessionStream::start(loop_, remote, std::move(first),
                                   {[self](const v1::Event& e) { self->on_event(e); }, [](std::uint64_t) {},
                                    [self](const grpc::Status& s) { self->on_finished(s); }});
  }

  std::vector<SocketAddress> sockets() const override { return up_ ? sockets_ : std::vector<SocketAddress>{}; }
  void set_fault(Fault fault) override {
    v1::FaultSpec spec = spec_of(fault);
    set_known_fault(std::move(fault));
    send([&](v1::Command& c) { *c.mutable_set_fault() = std::move(spec); });
  }
  bool remove_fault(const std::string& name) override {
    if (!faults_.remove(name)) return false;
    send([&](v1::Command& c) { c.mutable_remove_fault()->set_name(name); });
    return true;
  }
  const FaultList& faults() const override { return faults_; }
  void down() override {
    if (state_ != State::serving) return;
    up_ = false;
    connections_.clear();  // reset, as the service's proxy_closed events will say
    state_answers_.emplace_back();
    send([](v1::Command& c) { c.mutable_proxy_down(); });
  }
  void up(std::function<void(std::exception_ptr)> done) override {
    if (state_ != State::serving) {
      return asio::post(loop_.context(), [done = std::move(done)] {
        if (done) done(std::make_exception_ptr(std::logic_error("the proxy is closed")));
      });
    }
    state_answers_.push_back(std::move(done));
    send([](v1::Command& c) { c.mutable_proxy_up(); });
  }
  bool is_up() const override { return state_ == State::serving && up_; }
  void close() override {
    if (state_ != State::serving && state_ != State::opening) return;
    state_ = State::closing;
    send([](v1::Command& c) { c.mutable_close(); });
  }
  bool is_closed() const override { return state_ == State::closing || state_ == State::closed; }
  std::vector<ProxyConnectionInfo> connections() const override {
    std::vector<ProxyConnectionInfo> open;
    for (const auto& [id, info] : connections_) open.push_back(info);
    return open;
  }

 protected:
  void wait_closed_impl(asio::any_completion_handler<void()> handler) override {
    waiters_.add(std::move(handler));
    if (state_ == State::closed) waiters_.wake(loop_);
  }

 private:
  enum class State { opening, serving, closing, closed };

  /// The kinds this proxy carries out, checked here as a local proxy does.
  void set_known_fault(Fault fault) {
    fault.check_kind_for(options_.datagram);
    faults_.set(std::move(fault));
  }

  template <class Fill>
  void send(Fill fill) {
    if (state_ == State::closed) return;
    stream_->command(make_command(fill));
  }

  ProxyConnectionInfo& info_of(const v1::Event& event, const v1::ProxyConnection& c) {
    ProxyConnectionInfo& info = connections_[event.connection_id()];
    if (info.id == 0) {
      info.id = event.connection_id();
      info.client = parse_address(c.client());
      info.accepted = std::chrono::steady_clock::now();
    }
    info.bytes_upstream = c.bytes_upstream();
    info.bytes_downstream = c.bytes_downstream();
    return info;
  }

  void take_state(const v1::ProxyState& state) {
    up_ = state.up();
    sockets_.clear();
    for (const auto& text : state.sockets()) {
      if (auto address = parse_stream_address(text)) sockets_.push_back(*address);
    }
  }

  void on_event(const v1::Event& event) {
    switch (event.kind_case()) {
      case v1::Event::kProxyStarted:
        for (const auto& text : event.proxy_started().sockets()) {
          if (auto address = parse_stream_address(text)) sockets_.push_back(*address);
        }
        if (state_ == State::opening) state_ = State::serving;
        if (done_) std::exchange(done_, nullptr)(nullptr, shared_from_this());
        break;
      case v1::Event::kProxyAccepted: {
        const auto info = info_of(event, event.proxy_accepted());
        if (options_.on_accepted) options_.on_accepted(info);
        break;
      }
      case v1::Event::kProxyStats: info_of(event, event.proxy_stats()); break;
      case v1::Event::kProxyClosed: {
        const auto info = info_of(event, event.proxy_closed());
        connections_.erase(info.id);
        if (options_.on_closed) {
          options_.on_closed(info,
                             event.proxy_closed().has_error() ? exception_of(event.proxy_closed().error()) : nullptr);
        }
        break;
      }
      case v1::Event::kProxyState: {
        take_state(event.proxy_state());
        if (state_answers_.empty()) break;
        auto answer = std::move(state_answers_.front());
        state_answers_.pop_front();
        if (answer) answer(event.proxy_state().has_error() ? exception_of(event.proxy_state().error()) : nullptr);
        break;
      }
      case v1::Event::kProxyChanged: {
        const auto& changed = event.proxy_changed();
        take_state(changed.state());
        faults_ = FaultList();
        for (const auto& spec : changed.state().faults()) faults_.set(fault_of(spec));
        if (options_.on_changed) options_.on_changed(changed.by(), changed.command());
        break;
      }
      case v1::Event::kCommandFailed:
        loop_.log(LogLevel::warning, "remote proxy: the service could not carry out " +
                                         event.command_failed().command() + ": " + event.command_failed().message());
        break;
      case v1::Event::kOpenFailed: ending_.lost_error = exception_of(event.open_failed().error()); break;
      case v1::Event::kConnectionLost:
        ending_.lost = true;
        if (event.connection_lost().has_error()) ending_.lost_error = exception_of(event.connection_lost().error());
        break;
      default: break;
    }
  }

  void on_finished(const grpc::Status& status) {
    const bool asked = state_ == State::closing;
    state_ = State::closed;
    up_ = false;
    connections_.clear();
    for (auto& answer : std::exchange(state_answers_, {})) {
      if (answer) answer(std::make_exception_ptr(std::runtime_error("the proxy session ended")));
    }
    waiters_.wake(loop_);
    if (done_) return std::exchange(done_, nullptr)(ending_.for_status(status), nullptr);
    if (asked && status.ok() && !ending_.lost_error) return;
    // Nobody asked: as a local proxy's troubles, to the loop's handler.
    loop_.call_exception_handler(
        {"a remote proxy's session ended",
         ending_.lost_error ? ending_.lost_error
         : status.ok()      ? std::make_exception_ptr(std::runtime_error("the service closed the proxy session"))
                            : broken_error(status),
         nullptr, nullptr});
  }

  EventLoop& loop_;
  ProxyOptions options_;  // its callbacks and kind
  std::function<void(std::exception_ptr, std::shared_ptr<Proxy>)> done_;
  std::shared_ptr<SessionStream> stream_;
  std::vector<SocketAddress> sockets_;
  FaultList faults_;
  bool up_ = true;
  /// proxy_down's and proxy_up's answers (proxy_state events), in order.
  std::deque<std::function<void(std::exception_ptr)>> state_answers_;
  std::map<std::uint64_t, ProxyConnectionInfo> connections_;
  detail::Waiters waiters_;
  State state_ = State::opening;
  Ending ending_;
};

}  // namespace

void open_proxy_session(EventLoop& loop, const RemoteOptions& remote, v1::OpenProxy open, ProxyOptions options,
                        std::function<void(std::exception_ptr, std::shared_ptr<Proxy>)> done) {
  std::make_shared<RemoteProxySession>(loop, std::move(options), std::move(done))->start(remote, std::move(open));
}

}  // namespace conduit::service
