#include "conduit/detail/protocol_guard.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

namespace conduit::detail {

namespace {

std::string kinds_text(unsigned kinds) {
  std::string text;
  auto add = [&](unsigned kind, const char* name) {
    if (!(kinds & kind)) return;
    if (!text.empty()) text += " or ";
    text += name;
  };
  add(ProtocolGuard::stream, "a Protocol");
  add(ProtocolGuard::buffered, "a BufferedProtocol");
  add(ProtocolGuard::datagram, "a DatagramProtocol");
  add(ProtocolGuard::subprocess, "a SubprocessProtocol");
  return text;
}

}  // namespace

ProtocolGuard::ProtocolGuard(EventLoop& loop, BaseTransport& transport, unsigned accepted, const char* name,
                             std::function<void(std::exception_ptr)> on_fatal)
    : loop_(loop), transport_(transport), accepted_(accepted), name_(name), on_fatal_(std::move(on_fatal)) {}

void ProtocolGuard::set(std::shared_ptr<BaseProtocol> protocol) {
  BaseProtocol* p = protocol.get();
  // Protocol first: a class deriving from both is used as a Protocol.
  auto* as_stream = accepted_ & stream ? dynamic_cast<Protocol*>(p) : nullptr;
  auto* as_buffered = !as_stream && (accepted_ & buffered) ? dynamic_cast<BufferedProtocol*>(p) : nullptr;
  auto* as_datagram = accepted_ & datagram ? dynamic_cast<DatagramProtocol*>(p) : nullptr;
  auto* as_subprocess = accepted_ & subprocess ? dynamic_cast<SubprocessProtocol*>(p) : nullptr;
  if (!as_stream && !as_buffered && !as_datagram && !as_subprocess) {
    throw std::invalid_argument(std::string("set_protocol: ") + name_ + " needs " + kinds_text(accepted_));
  }
  protocol_ = std::move(protocol);
  stream_ = as_stream;
  buffered_ = as_buffered;
  datagram_ = as_datagram;
  subprocess_ = as_subprocess;
}

void ProtocolGuard::reset() {
  stream_ = nullptr;
  buffered_ = nullptr;
  datagram_ = nullptr;
  subprocess_ = nullptr;
  // Last, and without touching this guard after: the protocol may hold the
  // last reference to the transport that owns it.
  const std::shared_ptr<BaseProtocol> dropped = std::move(protocol_);
}

std::exception_ptr ProtocolGuard::report(const char* failure, std::exception_ptr exc) {
  loop_.call_exception_handler({failure, exc, transport_.weak_from_this().lock(), protocol_});
  return exc;
}

void ProtocolGuard::connection_made() {
  call("Exception in callback protocol.connection_made()", [&] {
    std::shared_ptr<BaseTransport> self = transport_.shared_from_this();
    if (stream_)
      stream_->connection_made(std::dynamic_pointer_cast<Transport>(self));
    else if (buffered_)
      buffered_->connection_made(std::dynamic_pointer_cast<Transport>(self));
    else if (datagram_)
      datagram_->connection_made(std::dynamic_pointer_cast<DatagramTransport>(self));
    else if (subprocess_)
      subprocess_->connection_made(std::dynamic_pointer_cast<SubprocessTransport>(self));
  });
}

void ProtocolGuard::pause_writing() {
  call("protocol.pause_writing() failed", [&] { protocol_->pause_writing(); });
}

void ProtocolGuard::resume_writing() {
  call("protocol.resume_writing() failed", [&] { protocol_->resume_writing(); });
}

void ProtocolGuard::connection_lost(std::exception_ptr exc) {
  call("Exception in callback protocol.connection_lost()", [&] { protocol_->connection_lost(exc); });
}

bool ProtocolGuard::copy_into_buffers(std::span<const std::byte> data) {
  while (!data.empty()) {
    const std::span<std::byte> buffer = get_buffer(data.size());
    if (buffer.empty()) return false;
    const std::size_t n = std::min(buffer.size(), data.size());
    std::memcpy(buffer.data(), data.data(), n);
    if (!buffer_updated(n)) return false;
    data = data.subspan(n);
  }
  return true;
}

std::span<std::byte> ProtocolGuard::get_buffer(std::size_t sizehint) {
  std::span<std::byte> buffer;
  call_fatal("Fatal error: protocol.get_buffer() call failed.", [&] {
    buffer = buffered_->get_buffer(sizehint);
    if (buffer.empty()) throw std::runtime_error("get_buffer() returned an empty buffer");
  });
  return buffer;
}

bool ProtocolGuard::buffer_updated(std::size_t nbytes) {
  return call_fatal("Fatal error: protocol.buffer_updated() call failed.", [&] { buffered_->buffer_updated(nbytes); });
}

std::optional<bool> ProtocolGuard::eof_received() {
  bool keep_open = false;
  if (!call_fatal("Fatal error: protocol.eof_received() call failed.",
                  [&] { keep_open = stream_ ? stream_->eof_received() : buffered_->eof_received(); })) {
    return std::nullopt;
  }
  return keep_open;
}

void ProtocolGuard::datagram_received(std::span<const std::byte> data, const SocketAddress& addr) {
  call("Exception in callback protocol.datagram_received()", [&] { datagram_->datagram_received(data, addr); });
}

void ProtocolGuard::error_received(std::exception_ptr exc) {
  call("Exception in callback protocol.error_received()", [&] { datagram_->error_received(exc); });
}

void ProtocolGuard::pipe_data_received(int fd, std::span<const std::byte> data) {
  call("Exception in callback protocol.pipe_data_received()", [&] { subprocess_->pipe_data_received(fd, data); });
}

void ProtocolGuard::pipe_connection_lost(int fd, std::exception_ptr exc) {
  call("Exception in callback protocol.pipe_connection_lost()", [&] { subprocess_->pipe_connection_lost(fd, exc); });
}

void ProtocolGuard::process_exited() {
  call("Exception in callback protocol.process_exited()", [&] { subprocess_->process_exited(); });
}

}  // namespace conduit::detail
