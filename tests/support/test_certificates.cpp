#include "support/test_certificates.hpp"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace conduit::testing {

namespace {

void run(const std::string& command) {
  if (std::system((command + " >/dev/null 2>&1").c_str()) != 0) {
    throw std::runtime_error("certificate generation failed: " + command);
  }
}

TestCertificates make() {
  TestCertificates c;
  c.dir = (std::filesystem::temp_directory_path() / ("conduit-certs-" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(c.dir);
  const std::string d = c.dir + "/";
  c.ca = d + "ca.pem";
  c.server_cert = d + "server.pem";
  c.server_key = d + "server.key";
  c.client_cert = d + "client.pem";
  c.client_key = d + "client.key";
  c.other_ca = d + "other-ca.pem";
  const std::string key = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes ";
  run(key + "-x509 -days 2 -subj /CN=Conduit-Test-CA -keyout " + d + "ca.key -out " + c.ca);
  run(key + "-x509 -days 2 -subj /CN=Other-CA -keyout " + d + "other-ca.key -out " + c.other_ca);
  run(key + "-subj /CN=localhost -keyout " + c.server_key + " -out " + d + "server.csr");
  std::ofstream(d + "server.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n";
  run("openssl x509 -req -days 2 -in " + d + "server.csr -CA " + c.ca + " -CAkey " + d +
      "ca.key -CAcreateserial -extfile " + d + "server.ext -out " + c.server_cert);
  run(key + "-subj /CN=conduit-test-client -keyout " + c.client_key + " -out " + d + "client.csr");
  run("openssl x509 -req -days 2 -in " + d + "client.csr -CA " + c.ca + " -CAkey " + d +
      "ca.key -CAcreateserial -out " + c.client_cert);
  return c;
}

struct Owner {
  TestCertificates certs = make();
  ~Owner() {
    std::error_code ignored;
    std::filesystem::remove_all(certs.dir, ignored);
  }
};

}  // namespace

const TestCertificates& test_certificates() {
  static Owner owner;
  return owner.certs;
}

}  // namespace conduit::testing
