#include <conduit/service/reflection.hpp>

#include <conduit/service/service.hpp>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <set>

namespace conduit::service {

namespace {

namespace pb = google::protobuf;

/// The services this server has, as list_services answers.
const std::vector<std::string>& service_names() {
  static const std::vector<std::string> names = {"conduit.v1.Conduit", "grpc.health.v1.Health",
                                                 "grpc.reflection.v1.ServerReflection",
                                                 "grpc.reflection.v1alpha.ServerReflection"};
  return names;
}

/// One ServerReflectionInfo stream: each request gets one response, in
/// order. A file is sent with the files it imports, each file once per
/// stream (the client keeps what it was sent), as gRPC's own does.
/// Request and Response are one version's generated messages.
template <class Request, class Response>
class ReflectionReactor final : public grpc::ServerBidiReactor<Request, Response> {
 public:
  ReflectionReactor(ConduitService& service, grpc::CallbackServerContext* context) {
    if (auto status = service.authenticate(*context); !status.ok()) {
      this->Finish(service.refuse(*context, "/grpc.reflection.ServerReflection/ServerReflectionInfo", status));
      return;
    }
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return this->Finish(grpc::Status::OK);
    answer();
    this->StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return this->Finish(grpc::Status(grpc::StatusCode::UNKNOWN, "the reflection stream broke"));
    this->StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  void answer() {
    response_.Clear();
    response_.set_valid_host(request_.host());
    *response_.mutable_original_request() = request_;
    const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
    switch (request_.message_request_case()) {
      case Request::kListServices:
        for (const auto& name : service_names())
          response_.mutable_list_services_response()->add_service()->set_name(name);
        return;
      case Request::kFileByFilename:
        return send_file(pool->FindFileByName(request_.file_by_filename()), "file " + request_.file_by_filename());
      case Request::kFileContainingSymbol:
        return send_file(pool->FindFileContainingSymbol(request_.file_containing_symbol()),
                         "symbol " + request_.file_containing_symbol());
      case Request::kFileContainingExtension: {
        const auto& e = request_.file_containing_extension();
        const pb::Descriptor* type = pool->FindMessageTypeByName(e.containing_type());
        const pb::FieldDescriptor* extension = type ? pool->FindExtensionByNumber(type, e.extension_number()) : nullptr;
        return send_file(extension ? extension->file() : nullptr,
                         "extension " + std::to_string(e.extension_number()) + " of " + e.containing_type());
      }
      case Request::kAllExtensionNumbersOfType: {
        const pb::Descriptor* type = pool->FindMessageTypeByName(request_.all_extension_numbers_of_type());
        if (!type) return not_found("type " + request_.all_extension_numbers_of_type());
        std::vector<const pb::FieldDescriptor*> extensions;
        pool->FindAllExtensions(type, &extensions);
        auto* numbers = response_.mutable_all_extension_numbers_response();
        numbers->set_base_type_name(type->full_name());
        for (const auto* extension : extensions) numbers->add_extension_number(extension->number());
        return;
      }
      default:
        response_.mutable_error_response()->set_error_code(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
        response_.mutable_error_response()->set_error_message("the request asks nothing");
    }
  }

  void send_file(const pb::FileDescriptor* file, const std::string& what) {
    if (!file) return not_found(what);
    auto* files = response_.mutable_file_descriptor_response();
    std::vector<const pb::FileDescriptor*> pending{file};
    while (!pending.empty()) {
      const pb::FileDescriptor* next = pending.back();
      pending.pop_back();
      if (!sent_.insert(next->name()).second && next != file) continue;
      pb::FileDescriptorProto proto;
      next->CopyTo(&proto);
      files->add_file_descriptor_proto(proto.SerializeAsString());
      for (int i = 0; i < next->dependency_count(); ++i) pending.push_back(next->dependency(i));
    }
  }

  void not_found(const std::string& what) {
    response_.mutable_error_response()->set_error_code(static_cast<int>(grpc::StatusCode::NOT_FOUND));
    response_.mutable_error_response()->set_error_message(what + " not found");
  }

  Request request_;
  Response response_;
  std::set<std::string> sent_;
};

}  // namespace

class ReflectionService::V1 final : public grpc::reflection::v1::ServerReflection::CallbackService {
 public:
  explicit V1(ConduitService& service) : service_(service) {}
  grpc::ServerBidiReactor<grpc::reflection::v1::ServerReflectionRequest,
                          grpc::reflection::v1::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* context) override {
    return new ReflectionReactor<grpc::reflection::v1::ServerReflectionRequest,
                                 grpc::reflection::v1::ServerReflectionResponse>(service_, context);
  }

 private:
  ConduitService& service_;
};

class ReflectionService::V1Alpha final : public grpc::reflection::v1alpha::ServerReflection::CallbackService {
 public:
  explicit V1Alpha(ConduitService& service) : service_(service) {}
  grpc::ServerBidiReactor<grpc::reflection::v1alpha::ServerReflectionRequest,
                          grpc::reflection::v1alpha::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* context) override {
    return new ReflectionReactor<grpc::reflection::v1alpha::ServerReflectionRequest,
                                 grpc::reflection::v1alpha::ServerReflectionResponse>(service_, context);
  }

 private:
  ConduitService& service_;
};

ReflectionService::ReflectionService(ConduitService& service)
    : v1_(std::make_unique<V1>(service)), v1alpha_(std::make_unique<V1Alpha>(service)) {}

ReflectionService::~ReflectionService() = default;

void ReflectionService::register_with(grpc::ServerBuilder& builder) {
  builder.RegisterService(v1_.get());
  builder.RegisterService(v1alpha_.get());
}

}  // namespace conduit::service
