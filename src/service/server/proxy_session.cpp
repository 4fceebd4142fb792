// Proxy sessions (open_proxy): a stream or datagram proxy of the core,
// listening on the service's host, its connections and faults reported and
// driven over the session (and by ControlProxy).
#include "session_kind.hpp"

#include "codec.hpp"
#include "session_open.hpp"
#include "side_events.hpp"

#include <conduit/datagram_proxy.hpp>
#include <conduit/stream_proxy.hpp>
#include <conduit/tls.hpp>

#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <cctype>
#include <map>

namespace conduit::service {

namespace {

/// A connection's client and byte counts, as proxy_stats and proxy_closed
/// both carry them.
template <class Message>
void set_counts(Message& message, const ProxyConnectionInfo& info) {
  message.set_client(info.client ? info.client->to_string() : "");
  message.set_bytes_upstream(info.bytes_upstream);
  message.set_bytes_downstream(info.bytes_downstream);
}

using grpc::Status;
using grpc::StatusCode;

std::string endpoint_text(const v1::ProxyEndpoint& e) {
  switch (e.target_case()) {
    case v1::ProxyEndpoint::kTcp:
      return std::string(e.tls_server().enabled() || e.tls_client().enabled() ? "tls://" : "tcp://") +
             host_port(e.tcp().host().empty() ? "*" : e.tcp().host(), e.tcp().port());
    case v1::ProxyEndpoint::kUdp:
      return "udp://" + host_port(e.udp().host().empty() ? "*" : e.udp().host(), e.udp().port());
    case v1::ProxyEndpoint::kUnixPath: return "unix://" + e.unix_path();
    default: return "?";
  }
}

Status check_endpoint(const v1::ProxyEndpoint& e, const std::string& field, bool listening) {
  switch (e.target_case()) {
    case v1::ProxyEndpoint::kTcp:
    case v1::ProxyEndpoint::kUdp: {
      const auto& hp = e.has_tcp() ? e.tcp() : e.udp();
      if (hp.port() > 65535 || (!listening && hp.port() == 0)) {
        return Status(StatusCode::INVALID_ARGUMENT, field + ".port must be " + (listening ? "0" : "1") + " to 65535");
      }
      if (!listening && hp.host().empty()) return Status(StatusCode::INVALID_ARGUMENT, field + ".host is empty");
      break;
    }
    case v1::ProxyEndpoint::kUnixPath:
      if (e.unix_path().empty() || e.unix_path().find('\0') != std::string::npos) {
        return Status(StatusCode::INVALID_ARGUMENT, field + ".unix_path is empty or holds a NUL byte");
      }
      break;
    default: return Status(StatusCode::INVALID_ARGUMENT, field + ": set tcp, udp or unix_path");
  }
  const bool tls = e.tls_server().enabled() || e.tls_client().enabled();
  if (tls && !e.has_tcp()) return Status(StatusCode::INVALID_ARGUMENT, field + ": TLS needs tcp");
  if (listening && e.tls_client().enabled()) {
    return Status(StatusCode::INVALID_ARGUMENT, field + ".tls_client: a listener serves TLS (tls_server)");
  }
  if (!listening && e.tls_server().enabled()) {
    return Status(StatusCode::INVALID_ARGUMENT,
                  field + ".tls_server: the upstream speaks TLS as a client (tls_client)");
  }
  if (e.tls_server().enabled() && (e.tls_server().cert_pem().empty() || e.tls_server().key_pem().empty())) {
    return Status(StatusCode::INVALID_ARGUMENT, field + ".tls_server needs cert_pem and key_pem");
  }
  return Status::OK;
}

/// A proxy session's side on the loop: the proxy, its events and commands.
///
///   opening --started--> serving --close / abort / client done--> ending --last connection gone--> ended
///      +--close / abort / client done--> stopping --started-------^
class ProxySide final : public SideEvents, public std::enable_shared_from_this<ProxySide> {
 public:
  ProxySide(std::shared_ptr<Link> link, std::chrono::milliseconds stats_interval)
      : SideEvents(std::move(link)), stats_interval_(stats_interval), stats_timer_(link_->service().loop().context()) {}

  template <class P>
  void started(std::shared_ptr<P> proxy) {
    if constexpr (std::is_same_v<P, StreamProxy>)
      stream_ = proxy;
    else
      datagram_ = proxy;
    v1::Event event;
    event.mutable_proxy_started()->set_session_id(link_->record()->id);
    for (const auto& address : proxy->sockets()) event.mutable_proxy_started()->add_sockets(address.to_string());
    emit(std::move(event));
    if (state_ == State::stopping) return stop(stop_by_abort_);
    state_ = State::serving;
    watch_stats();
    opened();  // the commands that came meanwhile, in order
  }

  // ---- the proxy's callbacks ----
  void connection_accepted(const ProxyConnectionInfo& info) {
    v1::Event event;
    event.set_connection_id(info.id);
    event.mutable_proxy_accepted()->set_client(info.client ? info.client->to_string() : "");
    emit(std::move(event));
    reported_[info.id] = {0, 0};
  }
  void connection_closed(const ProxyConnectionInfo& info, std::exception_ptr error) {
    v1::Event event;
    event.set_connection_id(info.id);
    auto* closed = event.mutable_proxy_closed();
    set_counts(*closed, info);
    if (error) *closed->mutable_error() = error_of(error);
    emit(std::move(event));
    reported_.erase(info.id);
    link_->record()->bytes_out += info.bytes_upstream;
    link_->record()->bytes_in += info.bytes_downstream;
    // Its last callback may come from inside close(): end after it returns.
    if (state_ == State::ending) {
      asio::post(link_->service().loop().get_executor(), [self = shared_from_this()] { self->end_if_drained(); });
    }
  }

  // ---- LoopSide ----
  void command(const v1::Command& c) override {
    if (c.connection_id() != 0) return failed(c, "a proxy session's commands are for the proxy (connection_id 0)");
    switch (c.kind_case()) {
      case v1::Command::kClose: return stop(false);
      case v1::Command::kAbort: return stop(true);
      case v1::Command::kSetFault:
      case v1::Command::kRemoveFault:
      case v1::Command::kProxyDown:
      case v1::Command::kProxyUp: break;
      default: return failed(c, "a proxy session takes set_fault, remove_fault, proxy_down, proxy_up, close and abort");
    }
    carry_out(c, [self = shared_from_this(), c](const std::string* why, std::exception_ptr up_error) {
      if (why) return self->failed(c, *why);
      v1::Event event;
      *event.mutable_proxy_state() = self->state(up_error);
      self->emit(std::move(event));
    });
  }

  /// From another caller (ControlProxy): answered through `answer`, and
  /// this session's own client hears proxy_changed.
  void control(const v1::Command& c, const std::string& by, SessionRecord::ControlAnswer answer) override {
    if (state_ != State::serving) {
      return answer(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                 state_ == State::opening ? "the proxy is not listening yet" : "the proxy is closing"),
                    {});
    }
    if (c.kind_case() == v1::Command::KIND_NOT_SET) return answer(grpc::Status::OK, state(nullptr));
    carry_out(c, [self = shared_from_this(), c, by, answer](const std::string* why, std::exception_ptr up_error) {
      if (why) return answer(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, *why), {});
      v1::ProxyState now = self->state(up_error);
      auto& record = *self->link_->record();
      const std::string fault = c.has_set_fault()      ? c.set_fault().name()
                                : c.has_remove_fault() ? c.remove_fault().name()
                                                       : "";
      std::vector<LogField> fields{field("session", record.id), field("peer", by), field("command", command_name(c))};
      if (!fault.empty()) fields.push_back(field("fault", fault));
      self->link_->service().audit().write(
          LogLevel::info, "proxy_controlled",
          "session " + record.id + ": " + command_name(c) + (fault.empty() ? "" : " '" + fault + "'") + " by " + by,
          fields);
      v1::Event event;
      auto* changed = event.mutable_proxy_changed();
      changed->set_by(by);
      changed->set_command(command_name(c));
      *changed->mutable_state() = now;
      self->emit(std::move(event));
      answer(grpc::Status::OK, std::move(now));
    });
  }

  void client_done_writing() override { stop(false); }
  void abort() override { stop(true); }
  void set_reading(bool) override {}  // its events are few and small

 private:
  enum class State {
    opening,   ///< binding; no proxy yet
    stopping,  ///< asked to stop while binding
    serving,
    ending,  ///< closed; waiting for its connections to end
    ended,   ///< connection_lost sent
  };

  /// One of the four commands that change the proxy; `done` hears why it
  /// failed (null: it did not) and, for proxy_up, the error of listening
  /// again.
  using Done = std::function<void(const std::string* why, std::exception_ptr up_error)>;
  void carry_out(const v1::Command& c, const Done& done) {
    auto fail = [&done](const std::string& why) { done(&why, nullptr); };
    if (!stream_ && !datagram_) return fail("the proxy is closed");
    switch (c.kind_case()) {
      case v1::Command::kSetFault: {
        try {
          Fault f = fault_of(c.set_fault());
          if (stream_)
            stream_->set_fault(std::move(f));
          else
            datagram_->set_fault(std::move(f));
        } catch (const std::exception& e) {
          return fail(e.what());
        }
        return done(nullptr, nullptr);
      }
      case v1::Command::kRemoveFault: {
        const bool removed =
            stream_ ? stream_->remove_fault(c.remove_fault().name()) : datagram_->remove_fault(c.remove_fault().name());
        if (!removed) return fail("no fault is named '" + c.remove_fault().name() + "'");
        return done(nullptr, nullptr);
      }
      case v1::Command::kProxyDown: {
        if (state_ != State::serving) return fail("the proxy is not serving");
        if (stream_)
          stream_->down();
        else
          datagram_->down();
        return done(nullptr, nullptr);
      }
      case v1::Command::kProxyUp: {
        if (state_ != State::serving) return fail("the proxy is not serving");
        // A close may come before the proxy listens again: then the proxy
        // is gone, and the command is answered as failed.
        auto up_done = [self = shared_from_this(), done](std::exception_ptr error) {
          if (!self->stream_ && !self->datagram_) {
            const std::string why = "the proxy was closed before it was up again";
            return done(&why, nullptr);
          }
          done(nullptr, error);
        };
        if (stream_)
          stream_->up(up_done);
        else
          datagram_->up(up_done);
        return;
      }
      default: return fail("not a command that changes the proxy");
    }
  }

  v1::ProxyState state(std::exception_ptr up_error) const {
    v1::ProxyState state;
    state.set_up(stream_ ? stream_->is_up() : datagram_->is_up());
    for (const auto& address : stream_ ? stream_->sockets() : datagram_->sockets())
      state.add_sockets(address.to_string());
    if (up_error) *state.mutable_error() = error_of(up_error);
    for (const auto& f : (stream_ ? stream_->faults() : datagram_->faults()).all()) *state.add_faults() = spec_of(f);
    return state;
  }

  void stop(bool abort) {
    // Still binding: stop once started() has the proxy (an abort wins over
    // a close asked for before it; a second request changes nothing else).
    if (state_ == State::opening || (state_ == State::stopping && !stream_ && !datagram_)) {
      state_ = State::stopping;
      stop_by_abort_ = stop_by_abort_ || abort;
      return;
    }
    if (state_ != State::serving && state_ != State::stopping) return;
    state_ = State::ending;
    stats_timer_.cancel();
    if (abort) {
      // Reset what runs, then close.
      if (stream_)
        stream_->down();
      else
        datagram_->down();
    }
    if (stream_)
      stream_->close();
    else
      datagram_->close();
    end_if_drained();
  }

  void end_if_drained() {
    if (state_ != State::ending) return;
    if (!(stream_ ? stream_->connections() : datagram_->connections()).empty()) return;
    state_ = State::ended;
    stream_.reset();
    datagram_.reset();
    lost(nullptr);
  }

  /// proxy_stats for each connection whose counts moved since the last.
  void watch_stats() {
    stats_timer_.expires_after(stats_interval_);
    stats_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
      auto self = weak.lock();
      if (ec || !self || self->state_ != State::serving) return;
      for (const auto& info : self->stream_ ? self->stream_->connections() : self->datagram_->connections()) {
        auto& last = self->reported_[info.id];
        if (last.first == info.bytes_upstream && last.second == info.bytes_downstream) continue;
        last = {info.bytes_upstream, info.bytes_downstream};
        v1::Event event;
        event.set_connection_id(info.id);
        set_counts(*event.mutable_proxy_stats(), info);
        self->emit(std::move(event));
      }
      self->watch_stats();
    });
  }

  std::chrono::milliseconds stats_interval_;
  asio::steady_timer stats_timer_;
  std::shared_ptr<StreamProxy> stream_;
  std::shared_ptr<DatagramProxy> datagram_;
  std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> reported_;
  State state_ = State::opening;
  bool stop_by_abort_ = false;
};

ProxyEndpoint core_endpoint(const v1::ProxyEndpoint& e) {
  ProxyEndpoint out;
  if (e.has_tcp()) {
    out.host = e.tcp().host() == "*" ? std::string() : e.tcp().host();
    out.port = static_cast<std::uint16_t>(e.tcp().port());
  } else if (e.target_case() == v1::ProxyEndpoint::kUnixPath) {
    out.unix_path = e.unix_path();
  }
  if (e.tls_server().enabled()) {
    out.tls = TlsOptions(tls::server_context_from_pem(e.tls_server().cert_pem(), e.tls_server().key_pem(),
                                                      e.tls_server().client_ca_pem()));
  } else if (e.tls_client().enabled()) {
    const auto& c = e.tls_client();
    out.tls = TlsOptions(c.insecure()         ? tls::insecure_client_context()
                         : c.ca_pem().empty() ? tls::client_context(std::nullopt)
                                              : tls::client_context_from_pem(c.ca_pem()));
    out.tls->server_hostname = c.server_hostname().empty() ? e.tcp().host() : c.server_hostname();
  }
  return out;
}

}  // namespace

static grpc::Status validate_open_proxy(const v1::OpenProxy& open) {
  const std::string& name = open.name();
  const bool name_ok = name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
                         return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
                       });
  if (!name_ok) {
    return Status(StatusCode::INVALID_ARGUMENT, "open_proxy.name: 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'");
  }
  if (auto s = check_endpoint(open.listen(), "open_proxy.listen", true); !s.ok()) return s;
  if (auto s = check_endpoint(open.upstream(), "open_proxy.upstream", false); !s.ok()) return s;
  const bool datagram = open.listen().has_udp();
  if (datagram != open.upstream().has_udp()) {
    return Status(StatusCode::INVALID_ARGUMENT, "open_proxy: udp listens and connects with udp only");
  }
  for (int i = 0; i < open.faults_size(); ++i) {
    const std::string field = "open_proxy.faults[" + std::to_string(i) + "]";
    try {
      const Fault f = fault_of(open.faults(i));
      if (datagram ? !fault::for_datagrams(f.kind) : !fault::for_streams(f.kind)) {
        return Status(StatusCode::INVALID_ARGUMENT, field + ": " + fault::kind_name(f.kind) + " is for " +
                                                        (datagram ? "stream" : "datagram") + " proxies");
      }
    } catch (const std::exception& e) {
      return Status(StatusCode::INVALID_ARGUMENT, field + ": " + e.what());
    }
  }
  return Status::OK;
}

static void open_proxy(const std::shared_ptr<Link>& link, const v1::OpenProxy& open) {
  EventLoop& loop = link->service().loop();
  const Policy& policy = link->service().options().policy;
  const auto& listen = open.listen();
  const auto& upstream = open.upstream();
  if (upstream.target_case() == v1::ProxyEndpoint::kUnixPath) {
    if (auto why = policy.check_unix("open_proxy upstream", upstream.unix_path(), false))
      return refuse_open(link, *why);
  }
  std::optional<std::string> listen_path;
  if (listen.target_case() == v1::ProxyEndpoint::kUnixPath) {
    listen_path = claim_unix_listen_path(link, "open_proxy listening", listen.unix_path());
    if (!listen_path) return;
  } else if (auto why = link->service().check_not_own_address(listen.has_tcp() ? listen.tcp().port() : 0, {})) {
    return refuse_open(link, "open_proxy: " + *why);
  }
  const auto interval = std::chrono::milliseconds(open.stats_interval_ms() ? open.stats_interval_ms() : 1000);
  auto side = std::make_shared<ProxySide>(link, interval);
  link->set_loop_side(side);
  std::vector<Fault> faults;
  for (const auto& spec : open.faults()) faults.push_back(fault_of(spec));  // validated already

  const std::string what = "open_proxy from " + endpoint_text(listen) + " to " + endpoint_text(upstream);
  std::vector<std::string> names = policy.listen_names();
  for (auto& n : policy.connect_names()) names.push_back(std::move(n));
  with_rule_names(
      loop, std::move(names),
      [link, side, open, what, faults = std::move(faults), &loop, &policy,
       listen_path = std::move(listen_path)](auto resolved) mutable {
        std::weak_ptr<ProxySide> weak = side;
        auto on_accepted = [weak](const ProxyConnectionInfo& info) {
          if (auto s = weak.lock()) s->connection_accepted(info);
        };
        auto on_closed = [weak](const ProxyConnectionInfo& info, std::exception_ptr error) {
          if (auto s = weak.lock()) s->connection_closed(info, error);
        };
        auto listen_check = policy_check(policy, AddressUse::listen, what, resolved);
        // The upstream is checked as each client's connection to it is made: a
        // refusal then ends that connection (proxy_closed says why) and is
        // logged as a refusal of the caller's, as an open's would be.
        std::weak_ptr<Link> weak_link = link;
        auto connect_check = [check = policy_check(policy, AddressUse::connect, what, resolved),
                              weak_link](const SocketAddress& address) {
          try {
            check(address);
          } catch (const PolicyRefusal& refusal) {
            if (auto l = weak_link.lock()) log_session_refusal(*l, grpc::StatusCode::PERMISSION_DENIED, refusal.what());
            throw;
          }
        };
        // A stream client is an accepted descriptor and its upstream's; a
        // datagram client, its upstream socket.
        auto admit = [weak_link](std::size_t descriptors_needed) {
          auto l = weak_link.lock();
          if (!l) return false;
          auto& descriptors = l->service().descriptors();
          if (descriptors.allows(descriptors_needed)) return true;
          log_session_refusal(*l, grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "turned a proxy client away: the descriptor budget is spent: " + descriptors.describe());
          return false;
        };
        if (open.listen().has_udp()) {
          DatagramProxyOptions options;
          options.listen_host = open.listen().udp().host() == "*" ? std::string() : open.listen().udp().host();
          options.listen_port = static_cast<std::uint16_t>(open.listen().udp().port());
          options.upstream_host = open.upstream().udp().host();
          options.upstream_port = static_cast<std::uint16_t>(open.upstream().udp().port());
          options.faults = std::move(faults);
          if (open.idle_timeout_ms()) options.idle_timeout = std::chrono::milliseconds(open.idle_timeout_ms());
          options.on_accepted = on_accepted;
          options.on_closed = on_closed;
          options.check_listen_address = listen_check;
          options.check_upstream_address = connect_check;
          options.admit = [admit](const SocketAddress&) { return admit(1); };
          return DatagramProxy::create(loop, std::move(options), [link, side](std::exception_ptr e, auto proxy) {
            finish_open(link, e);
            if (!e) side->started(proxy);
          });
        }
        StreamProxyOptions options;
        try {
          options.listen = core_endpoint(open.listen());
          if (listen_path) options.listen.unix_path = *listen_path;
          options.upstream = core_endpoint(open.upstream());
        } catch (const std::exception& e) {
          return finish_open(link,
                             std::make_exception_ptr(std::invalid_argument(
                                 std::string("open_proxy: cannot use the TLS certificate, key or CA: ") + e.what())));
        }
        options.faults = std::move(faults);
        options.on_accepted = on_accepted;
        options.on_closed = on_closed;
        options.check_listen_address = listen_check;
        options.check_upstream_address = connect_check;
        options.admit = [admit] { return admit(2); };
        StreamProxy::create(loop, std::move(options), [link, side](std::exception_ptr e, auto proxy) {
          finish_open(link, e);
          if (!e) side->started(proxy);
        });
      });
}

namespace {

grpc::Status validate_proxy(const v1::ClientMessage& message, const ServiceOptions&) {
  return validate_open_proxy(message.open_proxy());
}

void describe_proxy(const v1::ClientMessage& message, SessionRecord& record) {
  const auto& p = message.open_proxy();
  auto text = [](const v1::ProxyEndpoint& e) {
    if (e.has_tcp())
      return std::string(e.tls_server().enabled() || e.tls_client().enabled() ? "tls://" : "tcp://") + e.tcp().host() +
             ":" + std::to_string(e.tcp().port());
    if (e.has_udp()) return "udp://" + e.udp().host() + ":" + std::to_string(e.udp().port());
    return "unix://" + e.unix_path();
  };
  record.target = text(p.listen()) + " -> " + text(p.upstream());
  record.name = p.name();
}

void open_proxy_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& message) {
  open_proxy(link, message.open_proxy());
}

}  // namespace

const SessionKind proxy_session_kind{
    v1::ClientMessage::kOpenProxy, "open_proxy", "proxy", 2, validate_proxy, describe_proxy, open_proxy_session,
    /*controllable=*/true};

}  // namespace conduit::service
