// Each kind's session, opened from its open message: what RemoteOpener
// (remote_opener.cpp) calls once it has turned the caller's options into
// one. Each is in the *_session.cpp of its kind's name; `done` runs on the
// loop once the session opened (after connection_made) or failed to.
#pragma once

#include "conduit/v1/conduit.pb.h"

#include <conduit/service/remote.hpp>

#include <exception>
#include <functional>
#include <memory>

namespace conduit::service {

std::shared_ptr<Transport> open_connection_session(EventLoop& loop, const RemoteOptions& remote,
                                                   v1::OpenConnection open, std::shared_ptr<BaseProtocol> protocol,
                                                   std::function<void(std::exception_ptr)> done);

void open_server_session(EventLoop& loop, const RemoteOptions& remote, v1::OpenServer open, ProtocolFactory factory,
                         std::function<void(std::exception_ptr, std::shared_ptr<AbstractServer>)> done);

std::shared_ptr<DatagramTransport> open_datagram_session(EventLoop& loop, const RemoteOptions& remote,
                                                         v1::OpenDatagramEndpoint open,
                                                         std::shared_ptr<DatagramProtocol> protocol,
                                                         std::function<void(std::exception_ptr)> done);

/// Stdout and stderr have no local pipe transports: get_pipe_transport(0)
/// writes to the child's stdin.
std::shared_ptr<SubprocessTransport> open_subprocess_session(EventLoop& loop, const RemoteOptions& remote,
                                                             v1::OpenSubprocess open,
                                                             std::shared_ptr<SubprocessProtocol> protocol,
                                                             std::function<void(std::exception_ptr)> done);

/// `options` gives the proxy's kind and callbacks (its faults: the
/// ones it starts with, for faults()).
void open_proxy_session(EventLoop& loop, const RemoteOptions& remote, v1::OpenProxy open, ProxyOptions options,
                        std::function<void(std::exception_ptr, std::shared_ptr<Proxy>)> done);

}  // namespace conduit::service
