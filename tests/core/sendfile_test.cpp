// loop.sendfile: sendfile(2) over TCP, and the read/write fallback over TLS,
// pipes and files sendfile(2) cannot read.
#include "support/recording_protocol.hpp"
#include "support/test_certificates.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace conduit::testing {
namespace {

/// A temporary file of `size` patterned bytes, open for reading.
struct TempFile {
  std::filesystem::path path;
  std::string content;
  int fd = -1;
  explicit TempFile(std::size_t size)
      : path(std::filesystem::temp_directory_path() / ("conduit-sendfile-" + std::to_string(::getpid()))) {
    content.resize(size);
    for (std::size_t i = 0; i < size; ++i) content[i] = static_cast<char>((i * 2654435761u) >> 24);
    std::ofstream(path, std::ios::binary) << content;
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  ~TempFile() {
    ::close(fd);
    std::filesystem::remove(path);
  }
};

struct Result {
  std::exception_ptr error;
  std::uint64_t sent = 0;
  bool done = false;
};

std::shared_ptr<Result> send(EventLoop& loop, std::shared_ptr<Transport> t, int fd, std::uint64_t offset,
                             std::optional<std::uint64_t> count, bool fallback = true) {
  auto r = std::make_shared<Result>();
  loop.sendfile(std::move(t), fd, offset, count, fallback, [r](std::exception_ptr e, std::uint64_t n) {
    r->error = e;
    r->sent = n;
    r->done = true;
  });
  return r;
}

TEST(Sendfile, TcpUsesSendfileFromAnOffsetToEndOfFile) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  TempFile file(5 << 20);
  auto t = c.protocol->rec.transport;
  t->write("header:");  // buffered data goes first
  auto r = send(loop, t, file.fd, 100, std::nullopt);
  EXPECT_THROW(t->write("x"), std::logic_error) << "no writes while sendfile runs";
  EXPECT_FALSE(t->is_reading());
  ASSERT_TRUE(run_until(loop, [&] {
    c.peer->read_available();
    return r->done && c.peer->received().size() == 7 + file.content.size() - 100;
  }));
  ASSERT_FALSE(r->error);
  EXPECT_EQ(r->sent, file.content.size() - 100);
  EXPECT_TRUE(c.peer->received() == "header:" + file.content.substr(100));
  EXPECT_EQ(::lseek(file.fd, 0, SEEK_CUR), static_cast<off_t>(file.content.size())) << "position after what was sent";
  EXPECT_TRUE(t->is_reading()) << "reading resumes";
  t->write("after");
  ASSERT_TRUE(c.peer->receive(loop, 7 + file.content.size() - 100 + 5));
}

TEST(Sendfile, CountLimitsTheBytes) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  TempFile file(100000);
  auto r = send(loop, c.protocol->rec.transport, file.fd, 10, 1000);
  ASSERT_TRUE(run_until(loop, [&] { return r->done; }));
  EXPECT_EQ(r->sent, 1000u);
  ASSERT_TRUE(c.peer->receive(loop, 1000));
  EXPECT_EQ(c.peer->received(), file.content.substr(10, 1000));
}

TEST(Sendfile, APipeAsSourceFallsBackToReadAndWrite) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ASSERT_EQ(::write(fds[1], "from a pipe", 11), 11);
  ::close(fds[1]);
  auto r = send(loop, c.protocol->rec.transport, fds[0], 0, std::nullopt);
  ASSERT_TRUE(run_until(loop, [&] { return r->done; }));
  ::close(fds[0]);
  ASSERT_FALSE(r->error);
  EXPECT_EQ(r->sent, 11u);
  ASSERT_TRUE(c.peer->receive(loop, 11));
  EXPECT_EQ(c.peer->received(), "from a pipe");
}

TEST(Sendfile, TlsUsesTheFallbackWithFlowControl) {
  const auto& certs = test_certificates();
  EventLoop loop;
  std::shared_ptr<RecordingProtocol> server_side;
  ServerOptions options;
  options.tls = TlsOptions(tls::server_context(certs.server_cert, certs.server_key));
  std::shared_ptr<Server> server;
  loop.create_server([&] { return server_side = std::make_shared<RecordingProtocol>(); }, {"127.0.0.1"}, 0, options,
                     [&](std::exception_ptr, std::shared_ptr<Server> s) { server = std::move(s); });
  ASSERT_TRUE(run_until(loop, [&] { return server != nullptr; }));
  ConnectOptions connect;
  connect.tls = TlsOptions(tls::client_context(certs.ca));
  auto client = std::make_shared<RecordingProtocol>();
  std::shared_ptr<Transport> t;
  loop.create_connection([&] { return client; }, "localhost", server->sockets().at(0).port(), connect,
                         [&](std::exception_ptr, std::shared_ptr<Transport> tr, auto) { t = std::move(tr); });
  ASSERT_TRUE(run_until(loop, [&] { return t && client->rec.made == 1; }));
  t->set_write_buffer_limits(64 * 1024);
  TempFile file(3 << 20);
  auto r = send(loop, t, file.fd, 0, std::nullopt);
  ASSERT_TRUE(
      run_until(loop, [&] { return r->done && server_side && server_side->rec.data.size() == file.content.size(); }));
  ASSERT_FALSE(r->error);
  EXPECT_EQ(r->sent, file.content.size());
  EXPECT_TRUE(server_side->rec.data == file.content);
  EXPECT_EQ(t->get_protocol(), client) << "the protocol is given back";
  EXPECT_EQ(client->rec.pauses, 0) << "the fallback took the flow-control callbacks meanwhile";

  auto no_fallback = send(loop, t, file.fd, 0, 10, false);
  ASSERT_TRUE(run_until(loop, [&] { return no_fallback->done; }));
  EXPECT_EQ(error_code_of(no_fallback->error), std::errc::operation_not_supported);
}

TEST(Sendfile, BadArgumentsAreErrors) {
  EventLoop loop;
  auto c = connect_pair(loop, std::make_shared<RecordingProtocol>());
  auto bad_fd = send(loop, c.protocol->rec.transport, 9999, 0, std::nullopt);
  ASSERT_TRUE(run_until(loop, [&] { return bad_fd->done; }));
  EXPECT_TRUE(bad_fd->error);
  c.protocol->rec.transport->close();
  TempFile file(10);
  auto closing = send(loop, c.protocol->rec.transport, file.fd, 0, std::nullopt);
  ASSERT_TRUE(run_until(loop, [&] { return closing->done; }));
  EXPECT_TRUE(closing->error);
}

}  // namespace
}  // namespace conduit::testing
