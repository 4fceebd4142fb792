// Datagram sessions (open_datagram_endpoint): a UDP endpoint's callbacks as
// events; sendto and close onto it.
#include "session_kind.hpp"

#include "session_open.hpp"
#include "side_events.hpp"

#include <boost/asio/ip/address.hpp>

namespace conduit::service {

namespace {

/// Events from a datagram endpoint; sendto and close onto it. While the
/// client reads events too slowly, datagrams are dropped (counted), as the
/// kernel would drop them: UDP has no backpressure to carry.
class DatagramSide final : public DatagramProtocol, public SideEvents {
 public:
  explicit DatagramSide(std::shared_ptr<Link> link) : SideEvents(std::move(link)) {}

  /// The policy's host names as resolved at the open, for checking sendto.
  void set_rule_names(std::shared_ptr<const ResolvedNames> names) { rule_names_ = std::move(names); }

  void connection_made(std::shared_ptr<DatagramTransport> transport) override {
    transport_ = std::move(transport);
    if (aborted_) return transport_->abort();  // the client left while it opened
    v1::Event event;
    auto* made = event.mutable_connection_made();
    made->set_session_id(link_->record()->id);
    if (auto peer = transport_->get_extra_info_as<SocketAddress>("peername")) made->set_peername(peer->to_string());
    if (auto name = transport_->get_extra_info_as<SocketAddress>("sockname")) made->set_sockname(name->to_string());
    link_->emit(std::move(event));
    opened();
  }
  void datagram_received(std::span<const std::byte> data, const SocketAddress& addr) override {
    if (!reading_) {
      ++dropped_;
      return;
    }
    link_->record()->bytes_in += data.size();
    v1::Event event;
    event.mutable_datagram_received()->set_data(std::string(as_string_view(data)));
    event.mutable_datagram_received()->set_addr(addr.to_string());
    link_->emit(std::move(event));
  }
  void error_received(std::exception_ptr exc) override {
    v1::Event event;
    *event.mutable_error_received()->mutable_error() = error_of(exc);
    link_->emit(std::move(event));
  }
  void pause_writing() override { report_writing_paused(true, transport_->get_write_buffer_size()); }
  void resume_writing() override { report_writing_paused(false, transport_->get_write_buffer_size()); }
  void connection_lost(std::exception_ptr exc) override {
    lost(exc);
    transport_.reset();
  }

  void command(const v1::Command& c) override {
    if (!transport_) return failed(c, "the endpoint is closed");
    try {
      switch (c.kind_case()) {
        case v1::Command::kSendto: {
          std::optional<SocketAddress> to;
          if (c.sendto().has_addr()) {
            boost::system::error_code ec;
            auto ip = asio::ip::make_address(c.sendto().addr().host(), ec);
            if (ec) return failed(c, "sendto.addr.host must be an IP address, not '" + c.sendto().addr().host() + "'");
            if (c.sendto().addr().port() == 0 || c.sendto().addr().port() > 65535) {
              return failed(c, "sendto.addr.port must be 1 to 65535");
            }
            to = SocketAddress(ip, static_cast<std::uint16_t>(c.sendto().addr().port()));
            const auto& policy = link_->service().options().policy;
            if (auto why = policy.check_connect("sendto " + to->to_string(), {ip}, to->port(),
                                                rule_names_ ? *rule_names_ : ResolvedNames{})) {
              link_->service().refuse(link_->record()->peer, "/conduit.v1.Conduit/Session (sendto)",
                                      grpc::Status(grpc::StatusCode::PERMISSION_DENIED, *why));
              return failed(c, "PERMISSION_DENIED: " + *why);
            }
          }
          link_->record()->bytes_out += c.sendto().data().size();
          transport_->sendto(as_bytes(c.sendto().data()), to);
          if (over_cap(c, transport_->get_write_buffer_size(), "the endpoint")) transport_->abort();
          break;
        }
        case v1::Command::kClose: transport_->close(); break;
        case v1::Command::kAbort: transport_->abort(); break;
        case v1::Command::kSetWriteBufferLimits: {
          const auto& l = c.set_write_buffer_limits();
          transport_->set_write_buffer_limits(l.high(), l.low() ? std::optional<std::int64_t>(l.low()) : std::nullopt);
          break;
        }
        default: failed(c, "not a command for a datagram session");
      }
    } catch (const std::exception& e) {
      failed(c, e.what());
    }
  }
  void client_done_writing() override {
    if (transport_) transport_->close();
  }
  void abort() override {
    if (transport_)
      transport_->abort();
    else
      aborted_ = true;
  }
  void set_reading(bool reading) override { reading_ = reading; }

 private:
  std::shared_ptr<DatagramTransport> transport_;
  std::shared_ptr<const ResolvedNames> rule_names_;
  bool aborted_ = false;  // before connection_made
  bool reading_ = true;
  std::uint64_t dropped_ = 0;
};

}  // namespace

static void open_datagram_endpoint(const std::shared_ptr<Link>& link, const v1::OpenDatagramEndpoint& open) {
  EventLoop& loop = link->service().loop();
  const Policy& policy = link->service().options().policy;
  DatagramOptions options;
  if (open.has_local_addr())
    options.local_addr = std::pair{open.local_addr().host(), static_cast<std::uint16_t>(open.local_addr().port())};
  if (open.has_remote_addr())
    options.remote_addr = std::pair{open.remote_addr().host(), static_cast<std::uint16_t>(open.remote_addr().port())};
  options.reuse_port = open.reuse_port();
  options.allow_broadcast = open.allow_broadcast();
  // Binding is listening and sending is connecting, as far as the policy
  // goes; each sendto is checked too, against the names resolved now.
  auto rule_names = policy.listen_names();
  for (auto& name : policy.connect_names()) rule_names.push_back(std::move(name));
  auto side = std::make_shared<DatagramSide>(link);
  link->set_loop_side(side);
  with_rule_names(
      loop, std::move(rule_names), [link, side, &loop, &policy, options = std::move(options)](auto names) mutable {
        side->set_rule_names(names);
        if (options.local_addr) {
          options.check_local_address = policy_check(
              policy, AddressUse::listen,
              "open_datagram_endpoint on " + host_port(options.local_addr->first, options.local_addr->second), names);
        }
        if (options.remote_addr) {
          options.check_remote_address = policy_check(
              policy, AddressUse::connect,
              "open_datagram_endpoint to " + host_port(options.remote_addr->first, options.remote_addr->second), names);
        }
        loop.create_datagram_endpoint([side] { return side; }, std::move(options),
                                      [link](std::exception_ptr error, auto, auto) { finish_open(link, error); });
      });
}

namespace {

grpc::Status validate_datagram(const v1::ClientMessage& message, const ServiceOptions&) {
  using grpc::Status;
  using grpc::StatusCode;
  const auto& open = message.open_datagram_endpoint();
  if (!open.has_local_addr() && !open.has_remote_addr()) {
    return Status(StatusCode::INVALID_ARGUMENT, "open_datagram_endpoint: set local_addr, remote_addr or both");
  }
  if (open.has_local_addr() && (open.local_addr().host().empty() || open.local_addr().port() > 65535)) {
    return Status(StatusCode::INVALID_ARGUMENT, "open_datagram_endpoint.local_addr needs a host and a port 0 to 65535");
  }
  if (open.has_remote_addr() &&
      (open.remote_addr().host().empty() || open.remote_addr().port() == 0 || open.remote_addr().port() > 65535)) {
    return Status(StatusCode::INVALID_ARGUMENT,
                  "open_datagram_endpoint.remote_addr needs a host and a port 1 to 65535");
  }
  return Status::OK;
}

void describe_datagram(const v1::ClientMessage& message, SessionRecord& record) {
  const auto& d = message.open_datagram_endpoint();
  const auto& a = d.has_remote_addr() ? d.remote_addr() : d.local_addr();
  record.target = "udp://" + a.host() + ":" + std::to_string(a.port());
}

void open_datagram_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& message) {
  open_datagram_endpoint(link, message.open_datagram_endpoint());
}

}  // namespace

const SessionKind datagram_session_kind{v1::ClientMessage::kOpenDatagramEndpoint,
                                        "open_datagram_endpoint",
                                        "datagram",
                                        1,
                                        validate_datagram,
                                        describe_datagram,
                                        open_datagram_session};

}  // namespace conduit::service
