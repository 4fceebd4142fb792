// Connection sessions (open_connection), and the connections of server
// sessions: a stream transport's callbacks as events, commands onto it.
#pragma once

#include "side_events.hpp"

#include <conduit/transports.hpp>

#include <memory>
#include <optional>

namespace conduit::service {

/// Who owns a server session's connection: told when it is gone.
class ConnectionOwner {
 public:
  virtual ~ConnectionOwner() = default;
  virtual void connection_gone(std::uint64_t id) = 0;
};

/// Write buffer limits from an open message (0: keep the defaults).
/// What an open message says about each connection it makes.
struct ConnectionOptions {
  std::uint32_t high = 0, low = 0;  // write buffer limits; 0: the defaults
  bool close_at_peer_eof = false;   // else the client closes after the peer's EOF (RS1)
  bool start_paused = false;        // no data_received until resume_reading (RS2)

  template <class Open>
  static ConnectionOptions of(const Open& open) {
    return {open.write_buffer_high(), open.write_buffer_low(), open.close_at_peer_eof(), open.start_paused()};
  }
  void apply_limits(Transport& transport) const {
    if (high) transport.set_write_buffer_limits(high, low ? std::optional<std::int64_t>(low) : std::nullopt);
  }
};

/// Events from a stream transport's callbacks; commands onto it.
///
/// The connection session's own transport, or one connection of a server
/// session (`server` set): then its events carry its id, it starts with
/// connection_accepted, and its end goes to the server side, not the call.
class ConnectionSide final : public Protocol, public SideEvents {
 public:
  explicit ConnectionSide(std::shared_ptr<Link> link, ConnectionOptions options, std::uint64_t connection_id = 0,
                          std::weak_ptr<ConnectionOwner> server = {}, bool reading = true)
      : SideEvents(std::move(link), connection_id),
        options_(options),
        server_(std::move(server)),
        reading_(reading),
        client_paused_(options.start_paused) {}

  void connection_made(std::shared_ptr<Transport> transport) override;
  void data_received(std::span<const std::byte> data) override {
    link_->record()->bytes_in += data.size();
    for (std::size_t at = 0; at < data.size(); at += max_event_data) {
      auto chunk = data.subspan(at, std::min(max_event_data, data.size() - at));
      v1::Event event;
      event.mutable_data_received()->set_data(std::string(as_string_view(chunk)));
      emit(std::move(event));
    }
  }
  bool eof_received() override {
    v1::Event event;
    event.mutable_eof_received();
    emit(std::move(event));
    peer_eof_ = true;
    // Open until the client closes (SPEC RS1): only the client knows when
    // its replies to what came before the EOF have all been sent. Unless
    // it asked for close_at_peer_eof, or its stream has ended (nothing more
    // can come from it): then close now, flushing. TLS has no half-open
    // state and closes whatever we return (asyncio warns if we return true).
    return !options_.close_at_peer_eof && !stream_done_ && transport_->can_write_eof();
  }
  void pause_writing() override;
  void resume_writing() override;
  void connection_lost(std::exception_ptr exc) override;

  void command(const v1::Command& c) override {
    if (!transport_) return failed(c, "the transport is closed");
    // asyncio raises at a write after write_eof(); a remote caller hears it.
    if (client_done_ && (c.has_write() || c.has_writelines())) {
      return failed(c, "cannot write after write_eof (the connection is half-closed)");
    }
    try {
      switch (c.kind_case()) {
        case v1::Command::kWrite:
          link_->record()->bytes_out += c.write().size();
          transport_->write(c.write());
          check_backlog(c);
          break;
        case v1::Command::kWritelines: {
          std::vector<std::span<const std::byte>> buffers;
          for (const auto& d : c.writelines().data()) {
            link_->record()->bytes_out += d.size();
            buffers.push_back(as_bytes(d));
          }
          transport_->writelines(buffers);
          check_backlog(c);
          break;
        }
        case v1::Command::kWriteEof:
          if (!transport_->can_write_eof()) return failed(c, "write_eof: a TLS connection cannot half-close");
          write_eof();
          break;
        case v1::Command::kClose: transport_->close(); break;
        case v1::Command::kAbort: transport_->abort(); break;
        case v1::Command::kPauseReading:
          client_paused_ = true;
          transport_->pause_reading();
          break;
        case v1::Command::kResumeReading:
          client_paused_ = false;
          if (reading_) transport_->resume_reading();
          break;
        case v1::Command::kSetWriteBufferLimits: {
          const auto& l = c.set_write_buffer_limits();
          if (l.high() == 0 && !transport_->can_write_eof()) {
            // asyncio's SSL rule pauses at size >= high: with 0, at once and for good.
            return failed(c, "set_write_buffer_limits.high must be at least 1 on a TLS connection");
          }
          transport_->set_write_buffer_limits(l.high(), l.low() ? std::optional<std::int64_t>(l.low()) : std::nullopt);
          break;
        }
        case v1::Command::kGetExtraInfo: extra_info(c.get_extra_info().name()); break;
        case v1::Command::kSetSocketOption: {
          if (auto why = set_socket_option(c.set_socket_option())) return failed(c, *why);
          break;
        }
        default: failed(c, "not a command for a connection session");
      }
    } catch (const std::exception& e) {
      failed(c, e.what());
    }
  }
  /// The client's stream ended: write_eof, or a close once the peer's EOF
  /// came too (the client can no longer send one).
  void client_done_writing() override {
    stream_done_ = true;
    if (transport_ && peer_eof_) return transport_->close();
    write_eof();
  }
  void abort() override {
    if (transport_)
      transport_->abort();
    else
      ending_ = End::abort;  // not made yet
  }
  /// close(): flush, then connection_lost.
  void close() {
    if (transport_)
      transport_->close();
    else if (!ending_)
      ending_ = End::close;
  }
  void set_reading(bool reading) override {
    reading_ = reading;
    if (!transport_) return;
    if (!reading)
      transport_->pause_reading();
    else if (!client_paused_)
      transport_->resume_reading();
  }

 private:
  void write_eof() {
    if (!transport_ || client_done_) return;
    client_done_ = true;
    if (!transport_->can_write_eof())
      transport_->close();  // TLS has no half-close
    else
      transport_->write_eof();
  }

  /// get_extra_info's name for the transport's write buffer size.
  static constexpr std::string_view write_buffer_probe = "conduit:write_buffer_size";

  void extra_info(const std::string& name) {
    v1::Event event;
    auto* info = event.mutable_extra_info();
    info->set_name(name);
    if (name == write_buffer_probe) {
      // Answered after every write before it: a client's flow control
      // learns where the buffer stands once its own queue has drained.
      info->set_value(std::to_string(transport_->get_write_buffer_size()));
      info->set_found(true);
      return emit(std::move(event));
    }
    std::any value = transport_->get_extra_info(name);
    if (auto* address = std::any_cast<SocketAddress>(&value))
      info->set_value(address->to_string());
    else if (auto* fd = std::any_cast<int>(&value))
      info->set_value(std::to_string(*fd));
    else if (auto* cipher = std::any_cast<CipherInfo>(&value))
      info->set_value(cipher->name + " " + cipher->protocol);
    else if (auto* cert = std::any_cast<CertificateInfo>(&value))
      info->set_value(cert->subject);
    info->set_found(value.has_value());
    emit(std::move(event));
  }

  void writing_paused_changed(bool paused);
  /// setsockopt for the options SocketOption lists; why not, if it failed.
  std::optional<std::string> set_socket_option(const v1::SocketOption& option);

  /// The client is told to stop writing by pause_writing, not held back
  /// by the stream; one that writes on regardless is aborted.
  void check_backlog(const v1::Command& c) {
    if (!transport_) return;
    const std::string what = connection_id_ ? "connection " + std::to_string(connection_id_) : "the connection";
    if (over_cap(c, transport_->get_write_buffer_size(), what)) transport_->abort();
  }

  enum class End { close, abort };

  std::shared_ptr<Transport> transport_;
  ConnectionOptions options_;
  std::weak_ptr<ConnectionOwner> server_;  // set for a server session's connection
  std::optional<End> ending_;              // asked to end before connection_made
  bool reading_ = true;                    // the service's backpressure allows reading
  bool client_paused_ = false;             // the client asked for pause_reading
  bool client_done_ = false;               // the client half-closed (write_eof)
  bool stream_done_ = false;               // the client's stream ended: no command can come
  bool peer_eof_ = false;                  // eof_received was sent
};

}  // namespace conduit::service
