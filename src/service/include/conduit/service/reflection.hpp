// Server reflection (grpc.reflection.v1 and v1alpha), for grpcurl and the
// like, behind the service's authentication.
//
// gRPC's reflection plugin cannot be authenticated on a plaintext port: its
// service is registered by the plugin, and a server interceptor in gRPC 1.51
// can neither refuse a call nor set its status. So the service answers
// reflection itself, from protobuf's generated descriptor pool, and asks
// ConduitService::authenticate first, as every other call does.
#pragma once

#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

namespace conduit::service {

class ConduitService;

class ReflectionService {
 public:
  explicit ReflectionService(ConduitService& service);
  ~ReflectionService();
  ReflectionService(const ReflectionService&) = delete;
  ReflectionService& operator=(const ReflectionService&) = delete;

  /// Register both versions with `builder` (before BuildAndStart).
  void register_with(grpc::ServerBuilder& builder);

 private:
  class V1;
  class V1Alpha;
  std::unique_ptr<V1> v1_;
  std::unique_ptr<V1Alpha> v1alpha_;
};

}  // namespace conduit::service
