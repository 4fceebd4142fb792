#include <conduit/service/remote.hpp>

#include "remote_session.hpp"
#include "sessions.hpp"

#include <conduit/detail/write_flow_control.hpp>

#include <string>

namespace conduit::service {

namespace {

/// A DatagramTransport whose socket is on the service's host.
class RemoteDatagram final : public DatagramTransport {
 public:
  RemoteDatagram(EventLoop& loop, std::shared_ptr<DatagramProtocol> protocol,
                 std::function<void(std::exception_ptr)> done)
      : loop_(loop), done_(std::move(done)) {
    protocol_.set(std::move(protocol));
  }

  void start(const RemoteOptions& remote, v1::OpenDatagramEndpoint open) {
    v1::ClientMessage first;
    *first.mutable_open_datagram_endpoint() = std::move(open);
    auto self = std::shared_ptr<RemoteDatagram>(shared_from_this(), this);
    stream_ = SessionStream::start(loop_, remote, std::move(first),
                                   {[self](const v1::Event& e) { self->on_event(e); },
                                    [self](std::uint64_t) {
                                      if (self->protocol_ && self->flow_.should_resume(self->get_write_buffer_size())) {
                                        self->protocol_.resume_writing();
                                      }
                                    },
                                    [self](const grpc::Status& s) { self->on_finished(s); }});
  }

  bool is_closing() const override { return closing_; }
  void close() override {
    if (closing_) return;
    closing_ = true;
    stream_->command(make_command([](v1::Command& c) { c.mutable_close(); }));
  }
  void abort() override {
    closing_ = true;
    stream_->command(make_command([](v1::Command& c) { c.mutable_abort(); }));
  }
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override { protocol_.set(std::move(protocol)); }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_.get(); }
  using DatagramTransport::sendto;
  void sendto(std::span<const std::byte> data, const std::optional<SocketAddress>& addr) override {
    if (closing_) return;
    stream_->command(make_command([&](v1::Command& c) {
      c.mutable_sendto()->set_data(std::string(as_string_view(data)));
      if (addr) {
        c.mutable_sendto()->mutable_addr()->set_host(addr->ip().to_string());
        c.mutable_sendto()->mutable_addr()->set_port(addr->port());
      }
    }));
    if (flow_.should_pause(get_write_buffer_size())) protocol_.pause_writing();
  }
  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override {
    flow_.set_limits(high, low);
  }
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return flow_.limits(); }
  std::size_t get_write_buffer_size() const override { return stream_ ? stream_->queued_bytes() : 0; }

 protected:
  std::any extra_info(std::string_view name) const override { return addresses_.lookup(name); }

 private:
  /// A protocol callback that throws is reported, and the endpoint stays
  /// open, as a local one (SPEC D8, RS6).
  void on_event(const v1::Event& event) {
    if (!protocol_) return;
    switch (event.kind_case()) {
      case v1::Event::kConnectionMade:
        addresses_.set(event.connection_made());
        protocol_.connection_made();
        if (done_) std::exchange(done_, nullptr)(nullptr);
        break;
      case v1::Event::kDatagramReceived:
        protocol_.datagram_received(as_bytes(event.datagram_received().data()),
                                    parse_address(event.datagram_received().addr()).value_or(SocketAddress()));
        break;
      case v1::Event::kErrorReceived: protocol_.error_received(exception_of(event.error_received().error())); break;
      case v1::Event::kConnectionLost:
        ending_.lost = true;
        if (event.connection_lost().has_error()) ending_.lost_error = exception_of(event.connection_lost().error());
        break;
      case v1::Event::kOpenFailed: ending_.lost_error = exception_of(event.open_failed().error()); break;
      default: break;
    }
  }

  void on_finished(const grpc::Status& status) {
    closing_ = true;
    if (done_)
      std::exchange(done_, nullptr)(ending_.for_status(status));
    else if (protocol_)
      protocol_.connection_lost(ending_.lost ? ending_.lost_error : broken_error(status));
    protocol_.reset();
  }

  EventLoop& loop_;
  detail::ProtocolGuard protocol_{loop_, *this, detail::ProtocolGuard::datagram, "a remote datagram endpoint"};
  std::function<void(std::exception_ptr)> done_;
  std::shared_ptr<SessionStream> stream_;
  bool closing_ = false;
  detail::WriteFlowControl flow_{DatagramTransport::default_high_water};
  ReportedAddresses addresses_;
  Ending ending_;
};

}  // namespace

std::shared_ptr<DatagramTransport> open_datagram_session(EventLoop& loop, const RemoteOptions& remote,
                                                         v1::OpenDatagramEndpoint open,
                                                         std::shared_ptr<DatagramProtocol> protocol,
                                                         std::function<void(std::exception_ptr)> done) {
  auto transport = std::make_shared<RemoteDatagram>(loop, std::move(protocol), std::move(done));
  transport->start(remote, std::move(open));
  return transport;
}

}  // namespace conduit::service
