// SPEC T1-T6 and R4: TLS transports with certificates made at test time,
// against each other and against openssl s_server.
#include "support/child_process.hpp"
#include "support/recording_protocol.hpp"
#include "support/test_certificates.hpp"

#include <openssl/ssl.h>

namespace conduit::testing {
namespace {

const TestCertificates& certs() { return test_certificates(); }

/// An echo protocol for the server side.
class TlsEcho : public Protocol {
 public:
  void connection_made(std::shared_ptr<Transport> t) override { transport = std::move(t); }
  void data_received(std::span<const std::byte> data) override { transport->write(data); }
  void connection_lost(std::exception_ptr) override { transport.reset(); }
  std::shared_ptr<Transport> transport;
};

std::shared_ptr<Server> tls_server(EventLoop& loop, std::shared_ptr<asio::ssl::context> context,
                                   std::function<std::shared_ptr<BaseProtocol>()> factory = nullptr) {
  if (!factory) factory = [] { return std::make_shared<TlsEcho>(); };
  ServerOptions options;
  options.tls = TlsOptions{std::move(context)};
  std::shared_ptr<Server> server;
  std::exception_ptr error;
  loop.create_server(factory, {"127.0.0.1"}, 0, options, [&](std::exception_ptr e, std::shared_ptr<Server> s) {
    error = e;
    server = std::move(s);
  });
  run_until(loop, [&] { return server || error; });
  if (error) std::rethrow_exception(error);
  return server;
}

std::uint16_t port_of(const std::shared_ptr<Server>& server) { return server->sockets().at(0).port(); }

struct ClientResult {
  std::exception_ptr error;
  std::shared_ptr<RecordingProtocol> protocol;
  bool done = false;
  int factory_calls = 0;
};

std::shared_ptr<ClientResult> tls_connect(EventLoop& loop, std::uint16_t port, TlsOptions tls,
                                          std::string host = "localhost") {
  auto result = std::make_shared<ClientResult>();
  ConnectOptions options;
  options.tls = std::move(tls);
  loop.create_connection(
      [result] {
        ++result->factory_calls;
        return std::make_shared<RecordingProtocol>();
      },
      host, port, options,
      [result](std::exception_ptr e, std::shared_ptr<Transport>, std::shared_ptr<RecordingProtocol> p) {
        result->error = e;
        result->protocol = std::move(p);
        result->done = true;
      });
  run_until(loop, [&] { return result->done; });
  return result;
}

std::string what(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  }
}

TEST(Tls, EchoWithExtraInfo_T4) {
  EventLoop loop;
  auto server = tls_server(loop, tls::server_context(certs().server_cert, certs().server_key));
  auto context = tls::client_context(certs().ca);
  auto client = tls_connect(loop, port_of(server), TlsOptions{context});
  ASSERT_FALSE(client->error) << what(client->error);
  auto& p = *client->protocol;
  ASSERT_TRUE(run_until(loop, [&] { return p.rec.made == 1; }));
  const std::string big(300000, 'z');
  p.rec.transport->write("hello over TLS ");
  p.rec.transport->write(big);
  ASSERT_TRUE(run_until(loop, [&] { return p.rec.data.size() == 15 + big.size(); }));
  EXPECT_EQ(p.rec.data, "hello over TLS " + big);

  auto& t = *p.rec.transport;
  auto cert = t.get_extra_info_as<CertificateInfo>("peercert");
  ASSERT_TRUE(cert);
  EXPECT_NE(cert->subject.find("CN = localhost"), std::string::npos) << cert->subject;
  EXPECT_NE(cert->issuer.find("Conduit-Test-CA"), std::string::npos) << cert->issuer;
  EXPECT_NE(std::find(cert->subject_alt_names.begin(), cert->subject_alt_names.end(), "DNS:localhost"),
            cert->subject_alt_names.end())
      << ::testing::PrintToString(cert->subject_alt_names);
  auto cipher = t.get_extra_info_as<CipherInfo>("cipher");
  ASSERT_TRUE(cipher);
  EXPECT_EQ(cipher->protocol, "TLSv1.3");
  EXPECT_GT(cipher->secret_bits, 0);
  auto compression = t.get_extra_info_as<std::optional<std::string>>("compression");
  EXPECT_TRUE(compression.has_value() && !compression->has_value()) << "present, and none";
  EXPECT_NE(t.get_extra_info_as<SSL*>("ssl_object").value_or(nullptr), nullptr);
  EXPECT_EQ(t.get_extra_info_as<std::shared_ptr<asio::ssl::context>>("sslcontext"), context);
  EXPECT_TRUE(t.get_extra_info_as<SocketAddress>("peername"));
  EXPECT_TRUE(t.get_extra_info_as<int>("socket"));

  t.close();
  ASSERT_TRUE(run_until(loop, [&] { return p.rec.is_lost(); }));
  EXPECT_FALSE(p.rec.lost_error) << what(p.rec.lost_error);
  run_until(loop, [&] { return server->active_connections() == 0; });
}

TEST(Tls, T1_WrongHostnameFailsAndTheProtocolIsNeverMade_T2) {
  EventLoop loop;
  auto server = tls_server(loop, tls::server_context(certs().server_cert, certs().server_key));
  TlsOptions tls{tls::client_context(certs().ca)};
  tls.server_hostname = "not-localhost.example";
  auto client = tls_connect(loop, port_of(server), tls);
  ASSERT_TRUE(client->error);
  EXPECT_NE(what(client->error).find("hostname mismatch"), std::string::npos) << what(client->error);
  EXPECT_EQ(client->factory_calls, 0);
}

TEST(Tls, T1_HostDefaultsToTheServerHostnameAndAnIpAddressWorksToo) {
  EventLoop loop;
  auto server = tls_server(loop, tls::server_context(certs().server_cert, certs().server_key));
  auto by_ip = tls_connect(loop, port_of(server), TlsOptions{tls::client_context(certs().ca)}, "127.0.0.1");
  EXPECT_FALSE(by_ip->error) << what(by_ip->error);
}

TEST(Tls, T2_UnknownCaFailsVerification) {
  EventLoop loop;
  auto server = tls_server(loop, tls::server_context(certs().server_cert, certs().server_key));
  auto client = tls_connect(loop, port_of(server), TlsOptions{tls::client_context(certs().other_ca)});
  ASSERT_TRUE(client->error);
  EXPECT_NE(what(client->error).find("certificate verify failed"), std::string::npos) << what(client->error);
  auto insecure = tls_connect(loop, port_of(server), TlsOptions{tls::insecure_client_context()});
  EXPECT_FALSE(insecure->error) << "--insecure skips verification: " << what(insecure->error);
}

TEST(Tls, T2_HandshakeTimeoutAndBadTimeouts) {
  EventLoop loop;
  // A TCP listener that never speaks TLS.
  asio::ip::tcp::acceptor silent(loop.context(), {asio::ip::make_address("127.0.0.1"), 0});
  TlsOptions tls{tls::client_context(certs().ca)};
  tls.handshake_timeout = std::chrono::milliseconds(200);
  auto client = tls_connect(loop, silent.local_endpoint().port(), tls);
  ASSERT_TRUE(client->error);
  EXPECT_NE(what(client->error).find("SSL handshake is taking longer than 0.2 seconds"), std::string::npos)
      << what(client->error);
  EXPECT_EQ(client->factory_calls, 0);

  tls.handshake_timeout = std::chrono::milliseconds(0);
  auto bad = tls_connect(loop, silent.local_endpoint().port(), tls);
  ASSERT_TRUE(bad->error);
  EXPECT_NE(what(bad->error).find("must be positive"), std::string::npos) << what(bad->error);
}

TEST(Tls, T3_NoHalfCloseAndEofReceivedTrueOnlyWarns) {
  EventLoop loop;
  LoopRecorder recorder(loop);
  std::shared_ptr<RecordingProtocol> server_side;
  auto server = tls_server(loop, tls::server_context(certs().server_cert, certs().server_key), [&] {
    server_side = std::make_shared<RecordingProtocol>();
    server_side->keep_open_on_eof = true;
    return server_side;
  });
  auto client = tls_connect(loop, port_of(server), TlsOptions{tls::client_context(certs().ca)});
  ASSERT_FALSE(client->error) << what(client->error);
  auto& t = *client->protocol->rec.transport;
  EXPECT_FALSE(t.can_write_eof());
  EXPECT_THROW(t.write_eof(), std::logic_error);
  t.close();  // close_notify: the server sees EOF
  ASSERT_TRUE(
      run_until(loop, [&] { return server_side && server_side->rec.is_lost() && client->protocol->rec.is_lost(); }));
  EXPECT_EQ(server_side->rec.eofs, 1);
  EXPECT_EQ(recorder.warnings_containing("returning true from eof_received() has no effect when using ssl"), 1);
}

TEST(Tls, T5_FlowControlPausesAtTheHighWatermarkInclusive) {
  EventLoop loop;
  auto server = tls_server(loop, tls::server_context(certs().server_cert, certs().server_key));
  auto client = tls_connect(loop, port_of(server), TlsOptions{tls::client_context(certs().ca)});
  ASSERT_FALSE(client->error) << what(client->error);
  auto& p = *client->protocol;
  auto& t = *p.rec.transport;
  EXPECT_EQ(t.get_write_buffer_limits(), (std::pair<std::size_t, std::size_t>{128 * 1024, 512 * 1024}));
  t.set_write_buffer_limits(1000);
  t.write(std::string(1000, 'a'));
  EXPECT_EQ(p.rec.pauses, 1) << "exactly the high watermark pauses a TLS transport";
  ASSERT_TRUE(run_until(loop, [&] { return p.rec.resumes == 1 && p.rec.data.size() == 1000; }));
  EXPECT_EQ(t.get_write_buffer_size(), 0u);
  // Paused reading holds data back; resuming delivers it.
  t.pause_reading();
  t.pause_reading();
  EXPECT_FALSE(t.is_reading());
  t.write("more");
  run_until(loop, [&] { return t.get_write_buffer_size() == 0; });
  run_ready(loop);
  EXPECT_EQ(p.rec.data.size(), 1000u) << "nothing delivered while paused";
  t.resume_reading();
  ASSERT_TRUE(run_until(loop, [&] { return p.rec.data.size() == 1004; }));
}

TEST(Tls, MutualTlsRequiresAClientCertificate) {
  EventLoop loop;
  std::optional<CertificateInfo> seen;
  class CertRecorder : public TlsEcho {
   public:
    explicit CertRecorder(std::optional<CertificateInfo>& out) : out_(out) {}
    void connection_made(std::shared_ptr<Transport> t) override {
      out_ = t->get_extra_info_as<CertificateInfo>("peercert");
      TlsEcho::connection_made(std::move(t));
    }
    std::optional<CertificateInfo>& out_;
  };
  auto server = tls_server(loop, tls::server_context(certs().server_cert, certs().server_key, certs().ca),
                           [&] { return std::make_shared<CertRecorder>(seen); });
  // Without a certificate: TLS 1.3 reports the refusal after the handshake,
  // on the first read.
  auto anonymous = tls_connect(loop, port_of(server), TlsOptions{tls::client_context(certs().ca)});
  if (!anonymous->error) {
    auto& p = *anonymous->protocol;
    p.rec.transport->write("x");
    ASSERT_TRUE(run_until(loop, [&] { return p.rec.is_lost(); }));
    EXPECT_TRUE(p.rec.lost_error);
    EXPECT_EQ(p.rec.data, "");
  }
  EXPECT_FALSE(seen) << "the server never made a protocol for it";

  auto context = tls::client_context(certs().ca);
  context->use_certificate_chain_file(certs().client_cert);
  context->use_private_key_file(certs().client_key, asio::ssl::context::pem);
  auto client = tls_connect(loop, port_of(server), TlsOptions{context});
  ASSERT_FALSE(client->error) << what(client->error);
  client->protocol->rec.transport->write("ping");
  ASSERT_TRUE(run_until(loop, [&] { return client->protocol->rec.data == "ping"; }));
  ASSERT_TRUE(seen);
  EXPECT_NE(seen->subject.find("conduit-test-client"), std::string::npos) << seen->subject;
}

/// Speaks plain text until "STARTTLS", answers "OK", then upgrades.
class StartTlsServer : public Protocol {
 public:
  StartTlsServer(EventLoop& loop, std::shared_ptr<asio::ssl::context> context)
      : loop_(loop), context_(std::move(context)) {}
  void connection_made(std::shared_ptr<Transport> t) override {
    ++made;
    transport = std::move(t);
  }
  void data_received(std::span<const std::byte> data) override {
    const std::string text(as_string_view(data));
    if (text == "STARTTLS") {
      transport->write("OK");
      // Let "OK" leave in plain text first: the write went to the kernel.
      loop_.start_tls(transport, shared_from_this_protocol(), TlsOptions{context_}, true,
                      [this](std::exception_ptr e, std::shared_ptr<Transport> t) {
                        upgrade_error = e;
                        transport = std::move(t);
                      });
      return;
    }
    received += text;
    transport->write("secure:" + text);
  }
  void connection_lost(std::exception_ptr) override { transport.reset(); }
  std::shared_ptr<BaseProtocol> shared_from_this_protocol() { return self.lock(); }

  std::weak_ptr<StartTlsServer> self;
  std::shared_ptr<Transport> transport;
  std::exception_ptr upgrade_error;
  std::string received;
  int made = 0;

 private:
  EventLoop& loop_;
  std::shared_ptr<asio::ssl::context> context_;
};

TEST(Tls, T6_StartTlsUpgradesAConnectionInPlace) {
  EventLoop loop;
  std::shared_ptr<StartTlsServer> server_protocol;
  std::shared_ptr<Server> server;
  auto server_context = tls::server_context(certs().server_cert, certs().server_key);
  loop.create_server(
      [&] {
        server_protocol = std::make_shared<StartTlsServer>(loop, server_context);
        server_protocol->self = server_protocol;
        return server_protocol;
      },
      {"127.0.0.1"}, 0, ServerOptions{}, [&](std::exception_ptr, std::shared_ptr<Server> s) { server = std::move(s); });
  ASSERT_TRUE(run_until(loop, [&] { return server != nullptr; }));

  auto client = std::make_shared<RecordingProtocol>();
  std::shared_ptr<Transport> plain;
  loop.create_connection([&] { return client; }, "127.0.0.1", port_of(server), {},
                         [&](std::exception_ptr, std::shared_ptr<Transport> t, auto) { plain = std::move(t); });
  ASSERT_TRUE(run_until(loop, [&] { return plain != nullptr; }));
  plain->write("STARTTLS");
  ASSERT_TRUE(run_until(loop, [&] { return client->rec.data == "OK"; }));

  TlsOptions tls{tls::client_context(certs().ca)};
  tls.server_hostname = "localhost";
  std::shared_ptr<Transport> secure;
  std::exception_ptr error;
  loop.start_tls(plain, client, tls, false, [&](std::exception_ptr e, std::shared_ptr<Transport> t) {
    error = e;
    secure = std::move(t);
  });
  ASSERT_TRUE(run_until(loop, [&] { return secure || error; }));
  ASSERT_FALSE(error) << what(error);
  EXPECT_TRUE(plain->is_closing()) << "the old transport is done";
  EXPECT_TRUE(secure->get_extra_info_as<CipherInfo>("cipher"));
  secure->write("hello");
  ASSERT_TRUE(run_until(loop, [&] { return client->rec.data == "OKsecure:hello"; }));
  EXPECT_EQ(client->rec.made, 1) << "no second connection_made";
  EXPECT_EQ(server_protocol->made, 1);
  EXPECT_FALSE(server_protocol->upgrade_error);
  secure->close();
  ASSERT_TRUE(run_until(loop, [&] { return client->rec.is_lost(); }));
}

TEST(Tls, InteropWithOpensslSServer_R4) {
  // s_server -rev answers each line reversed; it ends connections without
  // close_notify when it quits (R4: reported as a clean EOF).
  const std::string port = [] {
    asio::io_context ctx;
    asio::ip::tcp::acceptor a(ctx, {asio::ip::make_address("127.0.0.1"), 0});
    return std::to_string(a.local_endpoint().port());
  }();
  ChildProcess s_server({"openssl", "s_server", "-accept", "127.0.0.1:" + port, "-cert", certs().server_cert, "-key",
                         certs().server_key, "-rev", "-naccept", "1", "-quiet"});
  EventLoop loop;
  std::shared_ptr<ClientResult> client;
  // s_server needs a moment to listen: retry a refused connect, boundedly.
  for (int attempt = 0; attempt < 200; ++attempt) {
    client =
        tls_connect(loop, static_cast<std::uint16_t>(std::stoi(port)), TlsOptions{tls::client_context(certs().ca)});
    if (!client->error || error_code_of(client->error) != std::errc::connection_refused) break;
    asio::steady_timer pause(loop.context(), std::chrono::milliseconds(25));
    pause.wait();
  }
  ASSERT_FALSE(client->error) << what(client->error);
  auto& p = *client->protocol;
  p.rec.transport->write("conduit\n");
  ASSERT_TRUE(run_until(loop, [&] { return p.rec.data.find("tiudnoc") != std::string::npos; })) << p.rec.data;
  p.rec.transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return p.rec.is_lost(); }));
  s_server.signal(SIGTERM);
  s_server.wait(std::chrono::seconds(10));
}

}  // namespace
}  // namespace conduit::testing
