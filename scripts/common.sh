# Shared by the scripts in this directory: install missing Debian packages
# and configure + build one build tree.

# Everything the build, the tests and the demo need, from Debian 12.
CONDUIT_PACKAGES="cmake ninja-build g++ pkg-config libboost1.81-dev libcli11-dev libssl-dev
  libgtest-dev libgmock-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  python3-grpcio python3-grpc-tools grpc-proto python3-uvloop docker-compose socat openssl procps util-linux iproute2
  clang clang-format-14 libclang-rt-14-dev python3-pip python3-venv python3-setuptools
  python3-aiohttp python3-asyncpg python3-redis postgresql redis-server libpython3.11-testsuite"

install_missing_packages() {
  missing=
  extra=
  # The toxiproxy tests build toxiproxy's client and CLI with Go: Debian's
  # golang-go where the machine has no Go of its own (a Go installed in
  # /usr/local/go, as on the CI machines, is used as it is).
  command -v go > /dev/null || [ -x /usr/local/go/bin/go ] || extra=golang-go
  for p in $CONDUIT_PACKAGES $extra "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  echo "Installing:$missing"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: packages missing and not root; run as root or: apt-get install$missing" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
}

# build_tree DIR [cmake args...]: configure (once) and build DIR.
build_tree() {
  dir=$1
  shift
  cmake -S "$ROOT" -B "$dir" -G Ninja "$@"
  cmake --build "$dir"
}
