#include <conduit/service/remote.hpp>

#include "remote_common.hpp"

namespace conduit::service {

namespace {

/// A proxy session's client end.
///
///   opening --proxy_started--> serving --close()--> closing --stream ends--> closed
///      +--open_failed / refused--> done(error)
class RemoteProxySession final : public RemoteProxy, public std::enable_shared_from_this<RemoteProxySession> {
 public:
  RemoteProxySession(EventLoop& loop, RemoteProxyCallbacks callbacks,
                     std::function<void(std::exception_ptr, std::shared_ptr<RemoteProxy>)> done)
      : loop_(loop), callbacks_(std::move(callbacks)), done_(std::move(done)) {}

  void start(const RemoteOptions& remote, v1::OpenProxy open) {
    v1::ClientMessage first;
    *first.mutable_open_proxy() = std::move(open);
    auto self = shared_from_this();
    stream_ = SessionStream::start(loop_, remote, std::move(first),
                                   {[self](const v1::Event& e) { self->on_event(e); }, [](std::uint64_t) {},
                                    [self](const grpc::Status& s) { self->on_finished(s); }});
  }

  const std::vector<std::string>& sockets() const override { return sockets_; }
  void set_fault(const Fault& fault) override {
    send([&](v1::Command& c) { *c.mutable_set_fault() = spec_of(fault); });
  }
  void remove_fault(const std::string& name) override {
    send([&](v1::Command& c) { c.mutable_remove_fault()->set_name(name); });
  }
  void down() override { send([](v1::Command& c) { c.mutable_proxy_down(); }); }
  void up() override { send([](v1::Command& c) { c.mutable_proxy_up(); }); }
  void close() override {
    if (state_ != State::serving && state_ != State::opening) return;
    state_ = State::closing;
    send([](v1::Command& c) { c.mutable_close(); });
  }
  bool is_closed() const override { return state_ == State::closed; }
  void on_closed(std::function<void(std::exception_ptr)> handler) override { closed_handler_ = std::move(handler); }

 private:
  enum class State { opening, serving, closing, closed };

  template <class Fill>
  void send(Fill fill) {
    if (state_ == State::closed) return;
    stream_->command(make_command(fill));
  }

  static ProxyConnectionInfo info_of(const v1::Event& event, const v1::ProxyConnection& c) {
    ProxyConnectionInfo info;
    info.id = event.connection_id();
    info.client = parse_address(c.client());
    info.bytes_upstream = c.bytes_upstream();
    info.bytes_downstream = c.bytes_downstream();
    return info;
  }

  void on_event(const v1::Event& event) {
    switch (event.kind_case()) {
      case v1::Event::kProxyStarted:
        sockets_.assign(event.proxy_started().sockets().begin(), event.proxy_started().sockets().end());
        if (state_ == State::opening) state_ = State::serving;
        if (done_) std::exchange(done_, nullptr)(nullptr, shared_from_this());
        break;
      case v1::Event::kProxyAccepted:
        if (callbacks_.accepted) callbacks_.accepted(info_of(event, event.proxy_accepted()));
        break;
      case v1::Event::kProxyStats:
        if (callbacks_.stats) callbacks_.stats(info_of(event, event.proxy_stats()));
        break;
      case v1::Event::kProxyClosed:
        if (callbacks_.closed) {
          callbacks_.closed(info_of(event, event.proxy_closed()),
                            event.proxy_closed().has_error() ? exception_of(event.proxy_closed().error()) : nullptr);
        }
        break;
      case v1::Event::kProxyState:
        sockets_.assign(event.proxy_state().sockets().begin(), event.proxy_state().sockets().end());
        if (callbacks_.state) {
          callbacks_.state(event.proxy_state().up(),
                           event.proxy_state().has_error() ? exception_of(event.proxy_state().error()) : nullptr);
        }
        break;
      case v1::Event::kProxyChanged: {
        const auto& changed = event.proxy_changed();
        sockets_.assign(changed.state().sockets().begin(), changed.state().sockets().end());
        if (callbacks_.changed) callbacks_.changed(changed.by(), changed.command(), changed.state());
        break;
      }
      case v1::Event::kCommandFailed:
        if (callbacks_.command_failed) callbacks_.command_failed(event.command_failed().command(), event.command_failed().message());
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
    if (done_) return std::exchange(done_, nullptr)(ending_.for_status(status), nullptr);
    if (auto handler = std::exchange(closed_handler_, nullptr)) {
      if (asked && status.ok() && !ending_.lost_error) handler(nullptr);
      else if (ending_.lost_error) handler(ending_.lost_error);
      else if (status.ok()) handler(std::make_exception_ptr(std::runtime_error("the service closed the proxy session")));
      else handler(broken_error(status));
    }
  }

  EventLoop& loop_;
  RemoteProxyCallbacks callbacks_;
  std::function<void(std::exception_ptr, std::shared_ptr<RemoteProxy>)> done_;
  std::function<void(std::exception_ptr)> closed_handler_;
  std::shared_ptr<SessionStream> stream_;
  std::vector<std::string> sockets_;
  State state_ = State::opening;
  Ending ending_;
};

}  // namespace

void create_remote_proxy(EventLoop& loop, const RemoteOptions& remote, v1::OpenProxy open, RemoteProxyCallbacks callbacks,
                         std::function<void(std::exception_ptr, std::shared_ptr<RemoteProxy>)> done) {
  std::make_shared<RemoteProxySession>(loop, std::move(callbacks), std::move(done))->start(remote, std::move(open));
}

}  // namespace conduit::service
