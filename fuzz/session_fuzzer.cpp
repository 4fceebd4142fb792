// The service's open validation and command handling, as a remote caller
// drives them: the input is a sequence of ClientMessages (each a 2-byte
// big-endian length and that many bytes of protobuf), sent down one
// Session() call to a real ConduitService through gRPC's in-process
// channel, and every event read back until the call ends.
//
// What the messages may reach is kept on this host and quick: host names
// become 127.0.0.1 (no DNS), most TCP ports become a local echo server's,
// listeners (servers, proxies) take any free port, Unix paths go to a
// scratch folder, and the policy allows /bin/cat only. Every open kind has
// its case in tame(), which the compiler checks.
#include <conduit/service/service.hpp>

#include <conduit/event_loop.hpp>
#include <conduit/server.hpp>

#include <grpcpp/grpcpp.h>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

namespace {

using namespace conduit;

class Echo final : public Protocol {
 public:
  void connection_made(std::shared_ptr<Transport> transport) override { transport_ = std::move(transport); }
  void data_received(std::span<const std::byte> data) override { transport_->write(data); }
  void connection_lost(std::exception_ptr) override { transport_.reset(); }

 private:
  std::shared_ptr<Transport> transport_;
};

/// Everything the iterations share, made once.
struct World {
  EventLoop echo_loop;
  std::shared_ptr<Server> echo_server;
  std::uint16_t echo_port = 0;
  std::thread echo_thread;
  std::string scratch;
  std::unique_ptr<service::ConduitService> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::Conduit::Stub> stub;

  World() {
    bool started = false;
    echo_loop.create_server([] { return std::make_shared<Echo>(); }, {"127.0.0.1"}, 0, {},
                            [&](std::exception_ptr error, std::shared_ptr<Server> s) {
                              if (error) std::abort();
                              echo_server = std::move(s);
                              started = true;
                            });
    echo_loop.run_until([&] { return started; }, std::chrono::seconds(10));
    echo_port = echo_server->sockets().at(0).port();
    echo_thread = std::thread([this] { echo_loop.run_forever(); });

    char folder[] = "/tmp/conduit-fuzz-XXXXXX";
    if (!::mkdtemp(folder)) std::abort();
    scratch = folder;

    service::ServiceOptions options;
    options.quiet = true;
    static std::ofstream nowhere("/dev/null");
    if (!std::getenv("CONDUIT_FUZZ_VERBOSE")) options.log_stream = &nowhere;
    options.policy.set_connect_rules({"127.0.0.1:" + std::to_string(echo_port), "127.0.0.1:9"});
    options.policy.set_unix_dirs({scratch});
    options.policy.set_exec({"/bin/cat"}, false);
    options.policy.set_env_patterns({"LC_*"});
    options.max_sessions = 64;
    service = std::make_unique<service::ConduitService>(std::move(options));
    grpc::ServerBuilder builder;
    builder.RegisterService(service.get());
    server = builder.BuildAndStart();
    service->set_own_address(0, "");
    stub = v1::Conduit::NewStub(server->InProcessChannel(grpc::ChannelArguments()));
  }
};

World& world() {
  static World* w = new World();  // never destroyed: threads run until the process exits
  return *w;
}

/// Keep what a message can reach local and fast.
void tame(World& w, v1::ClientMessage& message) {
  auto tame_host = [](std::string* host) {
    boost::system::error_code ec;
    boost::asio::ip::make_address(*host, ec);
    if (ec && !host->empty() && *host != "*") *host = "127.0.0.1";
  };
  auto tame_path = [&](std::string* path) {
    std::string name = std::filesystem::path(*path).filename().string();
    if (name.empty() || name == "." || name == "..") name = "s";
    if (name.size() > 40) name.resize(40);
    *path = w.scratch + "/" + name;
  };
  // A switch without a default: a kind added to the proto and not tamed
  // here fails the build (-Wswitch), so every kind is fuzzed.
  switch (message.kind_case()) {
    case v1::ClientMessage::kOpenConnection: {
      auto* open = message.mutable_open_connection();
      if (open->has_tcp()) {
        tame_host(open->mutable_tcp()->mutable_host());
        if (open->tcp().port() % 4 != 0) open->mutable_tcp()->set_port(w.echo_port);
        if (open->has_local_addr()) {  // an ephemeral port: a fixed one could be anything's
          tame_host(open->mutable_local_addr()->mutable_host());
          open->mutable_local_addr()->set_port(0);
        }
      } else if (open->target_case() == v1::OpenConnection::kUnixPath) {
        tame_path(open->mutable_unix_path());
      }
      return;
    }
    case v1::ClientMessage::kOpenServer: {
      auto* open = message.mutable_open_server();
      if (open->has_tcp()) {
        tame_host(open->mutable_tcp()->mutable_host());
        open->mutable_tcp()->set_port(0);
      } else if (open->target_case() == v1::OpenServer::kUnixPath) {
        tame_path(open->mutable_unix_path());
      }
      return;
    }
    case v1::ClientMessage::kOpenDatagramEndpoint: {
      auto* open = message.mutable_open_datagram_endpoint();
      if (open->has_local_addr()) {
        tame_host(open->mutable_local_addr()->mutable_host());
        open->mutable_local_addr()->set_port(0);
      }
      if (open->has_remote_addr()) tame_host(open->mutable_remote_addr()->mutable_host());
      return;
    }
    case v1::ClientMessage::kOpenProxy: {
      // Listens on loopback or in the scratch folder; relays to the echo
      // server (or its scratch path) with whatever faults the input holds.
      auto tame_endpoint = [&](v1::ProxyEndpoint* e, bool listening) {
        if (e->has_tcp() || e->has_udp()) {
          auto* hp = e->has_tcp() ? e->mutable_tcp() : e->mutable_udp();
          tame_host(hp->mutable_host());
          if (listening)
            hp->set_port(0);
          else if (hp->port() % 4 != 0)
            hp->set_port(w.echo_port);
        } else if (e->target_case() == v1::ProxyEndpoint::kUnixPath) {
          tame_path(e->mutable_unix_path());
        }
      };
      auto* open = message.mutable_open_proxy();
      tame_endpoint(open->mutable_listen(), true);
      tame_endpoint(open->mutable_upstream(), false);
      return;
    }
    case v1::ClientMessage::kOpenSubprocess: {
      auto* open = message.mutable_open_subprocess();
      if (open->argv_size() > 0 && open->argv(0).size() % 2 == 0) *open->mutable_argv(0) = "/bin/cat";
      if (open->cwd().size() % 2 == 0) open->clear_cwd();
      return;
    }
    case v1::ClientMessage::kCommand:
    case v1::ClientMessage::KIND_NOT_SET: return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  World& w = world();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  auto stream = w.stub->Session(&context);
  std::size_t at = 0;
  for (int sent = 0; at + 2 <= size && sent < 64; ++sent) {
    const std::size_t length = (std::size_t{data[at]} << 8) | data[at + 1];
    at += 2;
    if (length > size - at) break;
    v1::ClientMessage message;
    if (message.ParseFromArray(data + at, static_cast<int>(length))) {
      tame(w, message);
      if (!stream->Write(message)) break;
    }
    at += length;
  }
  stream->WritesDone();
  // CONDUIT_FUZZ_VERBOSE=1 prints what each input did.
  static const bool verbose = std::getenv("CONDUIT_FUZZ_VERBOSE") != nullptr;
  v1::Event event;
  int read = 0;
  for (; read < 10000 && stream->Read(&event); ++read) {
    if (verbose) std::fprintf(stderr, "event %s\n", event.ShortDebugString().substr(0, 160).c_str());
  }
  if (read == 10000) context.TryCancel();  // a session still going ends with the call
  const grpc::Status status = stream->Finish();
  if (verbose) std::fprintf(stderr, "status %d %s\n", status.error_code(), status.error_message().c_str());
  return 0;
}
