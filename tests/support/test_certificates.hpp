// Certificates made at test time with the openssl command: a CA, a server
// certificate for localhost / 127.0.0.1 / ::1, a client certificate, and an
// unrelated CA, in a temporary directory removed at exit.
#pragma once

#include <string>

namespace conduit::testing {

struct TestCertificates {
  std::string dir;
  std::string ca;           ///< CA certificate (PEM) that signed server and client
  std::string server_cert;  ///< CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1
  std::string server_key;
  std::string client_cert;  ///< CN=conduit-test-client
  std::string client_key;
  std::string other_ca;  ///< A CA that signed nothing here
};

/// Made once per process; fails the test run if openssl fails.
const TestCertificates& test_certificates();

}  // namespace conduit::testing
