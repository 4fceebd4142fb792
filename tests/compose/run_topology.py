#!/usr/bin/python3
"""Run docker-compose.yml's topology for real, without a container engine.

usage: run_topology.py CONDUIT_BIN [COMPOSE_FILE]     (root: network namespaces)

Each compose service becomes a "host": its own network namespace on a
bridge this script creates (veth pairs, 10.77.0.0/24), with the bridge in a
namespace of its own (a "switch"), whose empty firewall forwards everything
whatever the host's (Docker's daemon sets the host's FORWARD policy to DROP
and turns bridge netfilter on), and the host itself on it as 10.77.0.1; with
/etc/netns/NAME/hosts mapping every service name to its address, so the
names resolve as they do under compose (a name only on the networks the
two services share; one bridge carries them all, so a network keeps names
apart here, not packets). Each service runs the command the
compose file gives it (read from the file, not duplicated here), with the
image's `conduit` entry point replaced by CONDUIT_BIN, compose secrets
mounted at /run/secrets, named volumes bind-mounted from a directory per
volume, and the repository at /opt/conduit (where the tests image keeps
the Python client), all in a private mount namespace. The script waits for
each service's healthcheck, runs the `tests` service, and exits with its
status. Everything it made (processes by PID, namespaces, links, files) is
removed at the end, also on failure.
"""
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "service"))
from harness import rss_kib  # noqa: E402

CONDUIT = os.path.abspath(sys.argv[1])
COMPOSE = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else
                          os.path.join(os.path.dirname(__file__), "..", "..", "docker-compose.yml"))
PREFIX = f"cdt{os.getpid() % 10000}"  # names of our namespaces and links (short: IFNAMSIZ)
BRIDGE = f"{PREFIX}br"
SWITCH = f"{PREFIX}sw"  # the namespace that holds the bridge
SUBNET = "10.77.{}.{}"
HEALTH_TIMEOUT = 60  # seconds a service may take to become healthy
TEST_TIMEOUT = 300
REPO_ROOT = os.path.dirname(COMPOSE)


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Topology:
    def __init__(self, compose):
        self.compose = compose
        self.services = list(compose["services"])
        self.index = {name: i + 2 for i, name in enumerate(self.services)}  # .2, .3, ...
        self.work = tempfile.mkdtemp(prefix="conduit-topology-")
        self.processes = {}  # name -> Popen
        self.netns = []
        self.secrets_dir = os.path.join(self.work, "secrets")
        self.made_dirs = []  # mount points this script had to create on the host

    def ns(self, name):
        return f"{PREFIX}{self.index[name]}"

    def address(self, name):
        return SUBNET.format(0, self.index[name])

    def networks(self, name):
        """The compose networks the service is on (`default` unless it says)."""
        networks = self.compose["services"][name].get("networks") or ["default"]
        return set(networks)

    # ---- setup ----------------------------------------------------------------

    def up_network(self):
        # The bridge lives in the switch namespace: frames between hosts are
        # forwarded by its netfilter (empty, ACCEPT), never by the host's.
        sh("ip", "netns", "add", SWITCH)
        self.netns.append(SWITCH)
        sh("ip", "-n", SWITCH, "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "-n", SWITCH, "link", "set", BRIDGE, "up")
        # The host on the switch, for the fault test's client.
        host_end, switch_end = f"{PREFIX}h", f"{PREFIX}hs"
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", switch_end)
        sh("ip", "link", "set", switch_end, "netns", SWITCH)
        sh("ip", "-n", SWITCH, "link", "set", switch_end, "master", BRIDGE, "up")
        sh("ip", "addr", "add", SUBNET.format(0, 1) + "/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        for name in self.services:
            ns = self.ns(name)
            sh("ip", "netns", "add", ns)
            self.netns.append(ns)
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            # A name resolves where compose resolves it: on the networks the
            # two services share.
            hosts = "127.0.0.1 localhost\n::1 localhost\n" + "".join(
                f"{self.address(n)} {n}\n" for n in self.services if self.networks(n) & self.networks(name))
            with open(f"/etc/netns/{ns}/hosts", "w") as f:
                f.write(hosts)
            outer, inner = f"{ns}o", f"{ns}i"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", outer, "netns", SWITCH)
            sh("ip", "-n", SWITCH, "link", "set", outer, "master", BRIDGE, "up")
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", self.address(name) + "/24", "dev", inner)
            sh("ip", "-n", ns, "link", "set", inner, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def write_secrets(self):
        os.makedirs(self.secrets_dir)
        compose_dir = os.path.dirname(COMPOSE)
        for name, spec in (self.compose.get("secrets") or {}).items():
            source = os.path.join(compose_dir, spec["file"])
            target = os.path.join(self.secrets_dir, name)
            if os.path.exists(source):
                shutil.copy(source, target)
            else:  # a throwaway token for this run
                with open(target, "w") as f:
                    f.write(os.urandom(16).hex() + "\n")

    # ---- services -------------------------------------------------------------

    def argv_of(self, name):
        """The service's command line, as the image would run it."""
        spec = self.compose["services"][name]
        entrypoint = spec.get("entrypoint", ["conduit"])
        command = spec.get("command", [])
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
        command = shlex.split(command) if isinstance(command, str) else list(command)
        argv = [CONDUIT if a == "conduit" else a for a in entrypoint] + command
        # Compose turns $$ into $; inside sh -c commands, `conduit` is our binary.
        return [a.replace("$$", "$") for a in argv]

    def in_namespace(self, name, argv):
        """argv run in the service's network namespace, with /run/secrets and
        `conduit` on PATH provided by a private mount namespace."""
        bindir = os.path.join(self.work, "bin")
        os.makedirs(bindir, exist_ok=True)
        link = os.path.join(bindir, "conduit")
        if not os.path.exists(link):
            os.symlink(CONDUIT, link)
        python = os.path.join(bindir, "python3")  # Debian's, which has grpcio
        if not os.path.exists(python):
            os.symlink("/usr/bin/python3", python)
        mounts = [(self.secrets_dir, "/run/secrets"), (REPO_ROOT, "/opt/conduit")]
        for volume in self.compose["services"][name].get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                # A file of this tree, bind-mounted where this tree is here already.
                assert target == os.path.join("/opt/conduit", os.path.normpath(source)), volume
                continue
            mounts.append((self.volume_dir(source), target))
        setup = ""
        for source, target in mounts:
            if not os.path.exists(target):
                os.makedirs(target)
                self.made_dirs.append(target)
            setup += f"mount --bind {shlex.quote(source)} {shlex.quote(target)} && "
        # The tests image has the Python client installed; here it is the tree's.
        setup += (f'PATH={shlex.quote(bindir)}:$PATH PYTHONPATH=/opt/conduit/clients/python '
                  f'exec "$@"')

        return ["ip", "netns", "exec", self.ns(name), "unshare", "-m", "--propagation", "private",
                "sh", "-c", setup, "sh"] + argv

    def volume_dir(self, volume):
        path = os.path.join(self.work, "volumes", volume)
        os.makedirs(path, exist_ok=True)
        return path

    def start(self, name):
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        self.processes[name] = subprocess.Popen(self.in_namespace(name, self.argv_of(name)),
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy(self, name):
        spec = self.compose["services"][name].get("healthcheck")
        if spec and spec.get("disable"):
            return True  # as Docker: no check, so it counts as started
        if name == "conduit" and not spec:
            test = ["conduit", "health", "--via", "127.0.0.1:50051"]
        elif spec:
            test = spec["test"][1:] if spec["test"][0] in ("CMD", "CMD-SHELL") else spec["test"]
        else:
            return True
        argv = [CONDUIT if a == "conduit" else a for a in test]
        try:
            return subprocess.run(self.in_namespace(name, argv), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, name):
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{self.log(name)}")
            if self.healthy(name):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not healthy after {HEALTH_TIMEOUT} s:\n{self.log(name)}")

    def service_pid(self, name):
        """The PID of the service's own process: the deepest descendant of
        the ip-netns-exec / unshare / sh chain we started."""
        pid = self.processes[name].pid
        while True:
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    children = f.read().split()
            except FileNotFoundError:
                return pid
            if not children:
                return pid
            pid = int(children[0])

    def log(self, name):
        with open(os.path.join(self.work, f"{name}.log")) as f:
            return f.read()

    # ---- teardown -------------------------------------------------------------

    def down(self):
        for name, process in self.processes.items():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for ns in self.netns:
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        sh("ip", "link", "del", f"{PREFIX}h", check=False)  # gone with the switch already, normally
        shutil.rmtree(self.work, ignore_errors=True)
        for path in reversed(self.made_dirs):
            try:
                os.rmdir(path)
            except OSError:
                pass


def fault_test(topology, repo_root):
    """faults.py's steps, the hosts cut off this runner's way; and the
    service's memory must not grow with the failures."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import faults  # noqa: E402

    with open(os.path.join(topology.secrets_dir, "conduit-token")) as f:
        token = f.read().strip()
    service_pid = topology.service_pid("conduit")
    cuts = {
        # the host's cable pulled: nothing more arrives from it, not even a RST
        "link down": lambda: sh("ip", "-n", SWITCH, "link", "set", f"{topology.ns('echo-tls')}o", "down"),
        # the host's process gone: its kernel resets the connection
        "process killed": lambda: os.killpg(topology.processes["echo-tcp"].pid, signal.SIGKILL),
    }
    rss_before = rss_kib(service_pid)
    faults.run(f"{topology.address('conduit')}:50051", token, cuts, repo_root)
    rss_after = rss_kib(service_pid)
    print(f"fault: RSS {rss_before} -> {rss_after} KiB", flush=True)
    if rss_after > rss_before + 32 * 1024:
        raise RuntimeError(f"the service's RSS grew by {rss_after - rss_before} KiB")


def main():
    if os.geteuid() != 0:
        print("run_topology.py needs root (network namespaces)", file=sys.stderr)
        return 77  # CTest's "skipped" when SKIP_RETURN_CODE is 77
    with open(COMPOSE) as f:
        compose = yaml.safe_load(f)
    topology = Topology(compose)
    probe = sh("ip", "netns", "add", f"{PREFIX}probe", check=False)
    if probe.returncode != 0:
        print(f"cannot create network namespaces here ({probe.stderr.strip()}): skipped", file=sys.stderr)
        return 77
    sh("ip", "netns", "del", f"{PREFIX}probe", check=False)
    try:
        topology.up_network()
        topology.write_secrets()
        services = [n for n in topology.services if n != "tests"]
        for name in services:
            topology.start(name)
        for name in services:
            topology.wait_healthy(name)
            print(f"{name}: healthy at {topology.address(name)}", flush=True)
        topology.start("tests")
        try:
            status = topology.processes["tests"].wait(TEST_TIMEOUT)
        except subprocess.TimeoutExpired:
            status = 124
        print(topology.log("tests"), end="")
        if status != 0:
            print(f"tests exited with {status}; the service's log:\n{topology.log('conduit')}", file=sys.stderr)
            return status
        fault_test(topology, os.path.join(os.path.dirname(COMPOSE)))
        return 0
    finally:
        topology.down()


if __name__ == "__main__":
    sys.exit(main())
