#include "tls_transport.hpp"

#include "completion.hpp"
#include "conduit/server.hpp"
#include "stream_transport.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <stdexcept>
#include <system_error>

namespace conduit {

namespace {

namespace ssl = asio::ssl;

// One TLS record carries at most 16 KiB of plaintext; a read returns at most one.
constexpr std::size_t tls_read_size = 16 * 1024;

std::exception_ptr make_system_error(const boost::system::error_code& ec, const std::string& what) {
  return std::make_exception_ptr(std::system_error(ec, what));
}

// ---- X509 to CertificateInfo -------------------------------------------------

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

std::string name_text(const X509_NAME* name) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
  return bio_text(bio.get());
}

std::string time_text(const ASN1_TIME* time) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  ASN1_TIME_print(bio.get(), time);
  return bio_text(bio.get());
}

CertificateInfo certificate_info(X509* cert) {
  CertificateInfo info;
  info.subject = name_text(X509_get_subject_name(cert));
  info.issuer = name_text(X509_get_issuer_name(cert));
  info.not_before = time_text(X509_get0_notBefore(cert));
  info.not_after = time_text(X509_get0_notAfter(cert));
  if (BIGNUM* serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr)) {
    char* hex = BN_bn2hex(serial);
    info.serial_number = hex ? hex : "";
    OPENSSL_free(hex);
    BN_free(serial);
  }
  if (auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr))) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
      GENERAL_NAME_print(bio.get(), sk_GENERAL_NAME_value(names, i));
      info.subject_alt_names.push_back(bio_text(bio.get()));
    }
    GENERAL_NAMES_free(names);
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  PEM_write_bio_X509(bio.get(), cert);
  info.pem = bio_text(bio.get());
  return info;
}

}  // namespace

// ==== contexts =================================================================

namespace tls {

namespace {

/// What every context here starts from: TLS 1.2 at least.
std::shared_ptr<ssl::context> new_context(ssl::context::method method) {
  auto context = std::make_shared<ssl::context>(method);
  SSL_CTX_set_min_proto_version(context->native_handle(), TLS1_2_VERSION);
  return context;
}

}  // namespace

std::shared_ptr<ssl::context> client_context(const std::optional<std::string>& cafile) {
  auto context = new_context(ssl::context::tls_client);
  if (cafile)
    context->load_verify_file(*cafile);
  else
    context->set_default_verify_paths();
  context->set_verify_mode(ssl::verify_peer);
  return context;
}

std::shared_ptr<ssl::context> client_context_from_pem(std::string_view ca_pem) {
  auto context = new_context(ssl::context::tls_client);
  context->add_certificate_authority(asio::buffer(ca_pem));
  context->set_verify_mode(ssl::verify_peer);
  return context;
}

std::shared_ptr<ssl::context> insecure_client_context() {
  auto context = new_context(ssl::context::tls_client);
  context->set_verify_mode(ssl::verify_none);
  return context;
}

std::shared_ptr<ssl::context> server_context(const std::string& certfile, const std::string& keyfile,
                                             const std::optional<std::string>& client_cafile) {
  auto context = new_context(ssl::context::tls_server);
  context->use_certificate_chain_file(certfile);
  context->use_private_key_file(keyfile, ssl::context::pem);
  if (client_cafile) {
    context->load_verify_file(*client_cafile);
    context->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return context;
}

std::shared_ptr<ssl::context> server_context_from_pem(std::string_view cert_pem, std::string_view key_pem,
                                                      std::string_view client_ca_pem) {
  auto context = new_context(ssl::context::tls_server);
  context->use_certificate_chain(asio::buffer(cert_pem));
  context->use_private_key(asio::buffer(key_pem), ssl::context::pem);
  if (!client_ca_pem.empty()) {
    context->add_certificate_authority(asio::buffer(client_ca_pem));
    context->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return context;
}

TlsOptions client_options(TlsPem pem) {
  TlsOptions options(!pem.verify      ? insecure_client_context()
                     : pem.ca.empty() ? client_context(std::nullopt)
                                      : client_context_from_pem(pem.ca));
  if (!pem.cert.empty()) {
    options.context->use_certificate_chain(asio::buffer(pem.cert));
    options.context->use_private_key(asio::buffer(pem.key.empty() ? pem.cert : pem.key), ssl::context::pem);
  }
  options.pem = std::move(pem);
  return options;
}

TlsOptions server_options(TlsPem pem) {
  TlsOptions options(server_context_from_pem(pem.cert, pem.key, pem.ca));
  options.pem = std::move(pem);
  return options;
}

}  // namespace tls

// ==== TlsTransport ============================================================

TlsTransport::TlsTransport(EventLoop& loop, asio::ip::tcp::socket socket, TlsOptions options, bool server_side,
                           std::shared_ptr<Server> server)
    : loop_(loop),
      options_(std::move(options)),
      stream_(std::move(socket), *options_.context),
      server_side_(server_side),
      server_(std::move(server)),
      timer_(loop.context()) {
  auto& socket_ = stream_.next_layer();
  boost::system::error_code ec;
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  auto remote = socket_.remote_endpoint(ec);
  if (!ec) peername_ = SocketAddress(remote);
  auto local = socket_.local_endpoint(ec);
  if (!ec) sockname_ = SocketAddress(local);
  if (!server_side_ && options_.server_hostname && !options_.server_hostname->empty()) {
    // The name the certificate must match, checked by OpenSSL itself when
    // the context verifies peers ("hostname mismatch" otherwise); and SNI,
    // which RFC 6066 allows for DNS names only.
    const std::string& name = *options_.server_hostname;
    SSL* handle = stream_.native_handle();
    boost::system::error_code not_ip;
    asio::ip::make_address(name, not_ip);
    if (!not_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(handle), name.c_str());
    } else {
      SSL_set1_host(handle, name.c_str());
      // SSL_set_tlsext_host_name, without the macro's C cast.
      SSL_ctrl(handle, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, const_cast<char*>(name.c_str()));
    }
  }
  if (server_) detail::ServerConnections::attach(*server_, this);
  detail::LoopInternals::track(loop_, this);
}

TlsTransport::~TlsTransport() {
  if (state_ != State::closed && state_ != State::handshaking) {
    loop_.log(LogLevel::warning, "unclosed TLS transport " + (peername_ ? peername_->to_string() : std::string()) +
                                     ": closing its socket");
  }
  if (server_) detail::ServerConnections::detach(*server_, this);
  if (state_ != State::closed) detail::LoopInternals::untrack(loop_, this);
}

void TlsTransport::on_loop_destroyed() {
  const auto keep = self();  // the protocol let go below may hold the last reference
  state_ = State::closed;
  release();
}

void TlsTransport::release() {
  boost::system::error_code ignored;
  timer_.cancel();
  stream_.next_layer().close(ignored);
  if (server_) {
    detail::ServerConnections::detach(*server_, this);
    server_.reset();
  }
  protocol_.reset();  // last: the protocol may hold the last reference to this transport
}

std::shared_ptr<TlsTransport> TlsTransport::self() { return std::shared_ptr<TlsTransport>(shared_from_this(), this); }

asio::awaitable<void> TlsTransport::handshake() {
  if (options_.handshake_timeout.count() <= 0 || options_.shutdown_timeout.count() <= 0) {
    throw std::invalid_argument("TLS handshake and shutdown timeouts must be positive");
  }
  timer_.expires_after(options_.handshake_timeout);
  timer_.async_wait([this, keep = self()](const boost::system::error_code& ec) {
    if (ec || state_ != State::handshaking) return;
    handshake_timed_out_ = true;
    boost::system::error_code ignored;
    stream_.next_layer().close(ignored);  // fails the handshake in progress
  });
  boost::system::error_code ec;
  co_await stream_.async_handshake(server_side_ ? ssl::stream_base::server : ssl::stream_base::client,
                                   asio::redirect_error(asio::use_awaitable, ec));
  timer_.cancel();
  if (!handshake_timed_out_ && !ec) {
    state_ = State::open;
    co_return;
  }
  // Failed: the protocol never hears of this connection (SPEC T2).
  std::string reason = ec.message();
  if (const long verify = SSL_get_verify_result(stream_.native_handle()); verify != X509_V_OK) {
    reason += " (" + std::string(X509_verify_cert_error_string(verify)) + ")";
  }
  discard();
  if (handshake_timed_out_) {
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%g", static_cast<double>(options_.handshake_timeout.count()) / 1000);
    throw std::system_error(
        std::make_error_code(std::errc::timed_out),
        std::string("SSL handshake is taking longer than ") + seconds + " seconds: aborting the connection");
  }
  throw std::system_error(
      ec, "TLS handshake with " + (peername_ ? peername_->to_string() : std::string("peer")) + " failed: " + reason);
}

void TlsTransport::discard() {
  if (state_ == State::closed) return;
  state_ = State::closed;
  detail::LoopInternals::untrack(loop_, this);
  release();
}

void TlsTransport::start(std::shared_ptr<BaseProtocol> protocol, bool call_connection_made) {
  set_protocol(std::move(protocol));
  asio::post(loop_.get_executor(), [this, keep = self(), call_connection_made] {
    if (state_ == State::closed) return;
    if (call_connection_made) protocol_.connection_made();
    read_next();
  });
}

// ---- reading --------------------------------------------------------------

void TlsTransport::read_next() {
  if (read_in_flight_ || held_ || !is_reading()) return;
  if (protocol_.is_buffered()) {
    read_target_ = protocol_.get_buffer(tls_read_size);
    if (read_target_.empty()) return;  // it threw: the transport is closed
  } else {
    if (read_buffer_.empty()) read_buffer_.resize(tls_read_size);
    read_target_ = read_buffer_;
  }
  read_in_flight_ = true;
  stream_.async_read_some(
      asio::buffer(read_target_.data(), read_target_.size()),
      asio::bind_cancellation_slot(read_cancel_.slot(), [this, keep = self()](const boost::system::error_code& ec,
                                                                              std::size_t n) { on_read(ec, n); }));
}

void TlsTransport::on_read(const boost::system::error_code& ec, std::size_t n) {
  read_in_flight_ = false;
  if (state_ >= State::lost) return;
  if (state_ != State::open) return shutdown_when_idle();  // closing: the read was cancelled or is moot
  // A close_notify (eof) and a peer that just closed TCP (stream_truncated,
  // OpenSSL 3's "unexpected eof") both end the stream as EOF, as asyncio
  // does when nothing is pending (SPEC R4).
  if (ec == asio::error::eof || ec == ssl::error::stream_truncated) return on_eof();
  if (ec == asio::error::operation_aborted) return read_next();  // cancelled by a pause; resumed since
  if (ec) return fatal_error(ec, "Fatal read error on TLS transport");
  if (read_state_ == ReadState::paused) {
    held_ = n;  // delivered by resume_reading()
    return;
  }
  deliver(n);
  read_next();
}

void TlsTransport::deliver(std::size_t n) {
  if (n == 0) return;
  if (protocol_.is_buffered())
    protocol_.buffer_updated(n);
  else
    protocol_.data_received(read_target_.first(n));
}

void TlsTransport::on_eof() {
  read_state_ = ReadState::at_eof;
  const std::optional<bool> keep_open = protocol_.eof_received();
  if (!keep_open) return;  // it threw: the transport is closed
  // TLS cannot stay half-open (SPEC T3).
  if (*keep_open) loop_.log(LogLevel::warning, "returning true from eof_received() has no effect when using ssl");
  close();
}

void TlsTransport::pause_reading() {
  if (!is_reading()) return;
  read_state_ = ReadState::paused;
  // The read in flight may still complete: its data is held, not lost.
}

void TlsTransport::resume_reading() {
  if (state_ != State::open || read_state_ != ReadState::paused) return;
  read_state_ = ReadState::reading;
  if (held_) {
    const std::size_t n = *held_;
    held_.reset();
    deliver(n);
  }
  read_next();
}

// ---- writing --------------------------------------------------------------

void TlsTransport::write(std::span<const std::byte> data) { writelines({data}); }

void TlsTransport::writelines(std::span<const std::span<const std::byte>> buffers) {
  std::size_t total = 0;
  for (auto b : buffers) total += b.size();
  if (total == 0) return;
  // After close() a TLS transport takes nothing more (sslproto).
  if (state_ != State::open) return late_writes_.drop(loop_, "SSL connection is closed");
  for (auto b : buffers) queued_.append(b);
  write_next();
  maybe_pause_protocol();
}

void TlsTransport::write_next() {
  if (write_in_flight_) return;
  if (in_flight_.empty()) {
    if (queued_.empty()) return;
    std::swap(in_flight_, queued_);
  }
  write_in_flight_ = true;
  asio::async_write(stream_, in_flight_.gather(),
                    [this, keep = self()](const boost::system::error_code& ec, std::size_t n) { on_written(ec, n); });
}

void TlsTransport::on_written(const boost::system::error_code& ec, std::size_t n) {
  write_in_flight_ = false;
  if (state_ >= State::lost) return;
  if (ec) return fatal_error(ec, "Fatal write error on TLS transport");
  in_flight_.consume(n);
  maybe_resume_protocol();
  if (state_ >= State::lost) return;
  if (!in_flight_.empty() || !queued_.empty()) return write_next();
  if (state_ == State::closing) shutdown_when_idle();
}

void TlsTransport::write_eof() {
  throw std::logic_error("write_eof: TLS transports do not support half-closed connections");
}

void TlsTransport::set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) {
  flow_.set_limits(high, low);
  maybe_pause_protocol();
}

void TlsTransport::maybe_pause_protocol() {
  if (flow_.should_pause(get_write_buffer_size())) protocol_.pause_writing();
}

void TlsTransport::maybe_resume_protocol() {
  if (flow_.should_resume(get_write_buffer_size())) protocol_.resume_writing();
}

// ---- closing --------------------------------------------------------------

void TlsTransport::close() {
  if (state_ != State::open) return;
  state_ = State::closing;
  if (read_in_flight_) read_cancel_.emit(asio::cancellation_type::terminal);
  shutdown_when_idle();
}

void TlsTransport::shutdown_when_idle() {
  // close_notify goes out after the queued data, and once no read is in
  // flight (asio::ssl allows one read and one write at a time).
  if (state_ != State::closing || read_in_flight_ || write_in_flight_ || !queued_.empty() || !in_flight_.empty()) {
    return;
  }
  state_ = State::shutting_down;
  timer_.expires_after(options_.shutdown_timeout);
  timer_.async_wait([this, keep = self()](const boost::system::error_code& ec) {
    if (ec || state_ != State::shutting_down) return;
    loop_.log(LogLevel::warning, "SSL shutdown timed out: closing the connection");
    boost::system::error_code ignored;
    stream_.next_layer().close(ignored);  // fails the exchange below
  });
  stream_.async_shutdown([this, keep = self()](const boost::system::error_code&) {
    // Whatever came back (the peer's close_notify, its plain close, the
    // timeout), the connection is done; a clean close is a clean close.
    timer_.cancel();
    if (state_ == State::shutting_down) post_connection_lost(nullptr);
  });
}

void TlsTransport::abort() { force_close(nullptr); }

void TlsTransport::fatal_error(const boost::system::error_code& ec, const char* message) {
  loop_.log(LogLevel::debug, std::string(message) + ": " + ec.message());
  force_close(make_system_error(ec, message));
}

void TlsTransport::force_close(std::exception_ptr exc) {
  if (state_ >= State::lost) return;
  queued_.clear();
  boost::system::error_code ignored;
  stream_.next_layer().close(ignored);  // cancels every operation in flight
  post_connection_lost(std::move(exc));
}

void TlsTransport::post_connection_lost(std::exception_ptr exc) {
  state_ = State::lost;
  asio::post(loop_.get_executor(), [this, keep = self(), exc = std::move(exc)] { call_connection_lost(exc); });
}

void TlsTransport::call_connection_lost(std::exception_ptr exc) {
  state_ = State::closed;
  detail::LoopInternals::untrack(loop_, this);
  protocol_.connection_lost(exc);
  release();
}

std::any TlsTransport::extra_info(std::string_view name) const {
  SSL* ssl_handle = const_cast<Stream&>(stream_).native_handle();
  if (name == "peername" && peername_) return *peername_;
  if (name == "sockname" && sockname_) return *sockname_;
  if (state_ == State::closed) return {};
  if (name == "socket") return static_cast<int>(const_cast<Stream&>(stream_).next_layer().native_handle());
  if (name == "ssl_object") return ssl_handle;
  if (name == "sslcontext") return options_.context;
  if (name == "peercert") {
    X509* cert = SSL_get1_peer_certificate(ssl_handle);
    if (!cert) return {};
    CertificateInfo info = certificate_info(cert);
    X509_free(cert);
    return info;
  }
  if (name == "cipher") {
    const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_handle);
    if (!cipher) return {};
    return CipherInfo{SSL_CIPHER_get_name(cipher), SSL_CIPHER_get_version(cipher),
                      SSL_CIPHER_get_bits(cipher, nullptr)};
  }
  // OpenSSL 3 builds without TLS compression: asyncio's None.
  if (name == "compression") return std::optional<std::string>();
  return {};
}

// ==== start_tls ================================================================

void EventLoop::start_tls_impl(
    std::shared_ptr<Transport> transport, std::shared_ptr<BaseProtocol> protocol, TlsOptions options, bool server_side,
    asio::any_completion_handler<void(std::exception_ptr, std::shared_ptr<Transport>)> handler) {
  auto fail = [&](std::exception_ptr error) {
    detail::post_completion(*this, std::move(handler), error, std::shared_ptr<Transport>{});
  };
  auto* plain = dynamic_cast<TcpTransport*>(transport.get());
  if (!plain)
    return fail(std::make_exception_ptr(std::invalid_argument("start_tls: a TCP transport of this loop is needed")));
  if (!options.context) return fail(std::make_exception_ptr(std::invalid_argument("start_tls: no SSL context given")));
  if (!protocol) return fail(std::make_exception_ptr(std::invalid_argument("start_tls: no protocol given")));
  std::shared_ptr<TlsTransport> tls;
  try {
    auto [socket, server] = plain->hand_over();
    tls = std::make_shared<TlsTransport>(*this, std::move(socket), std::move(options), server_side, std::move(server));
  } catch (...) {
    return fail(std::current_exception());
  }
  asio::co_spawn(
      context_, tls->handshake(),
      [this, tls, protocol = std::move(protocol), handler = std::move(handler)](std::exception_ptr error) mutable {
        if (!error) tls->start(std::move(protocol), false);  // already connected: no connection_made
        detail::post_completion(*this, std::move(handler), error,
                                error ? std::shared_ptr<Transport>{} : std::shared_ptr<Transport>(tls));
      });
}

}  // namespace conduit
