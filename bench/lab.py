"""The lab: N+1 hosts as network namespaces on one Linux bridge, each link capped with tc htb.

Host 0 carries the tracker, the seeder, the HTTP server and the salt-master; hosts 1..N are the
peers. Every name the lab makes carries the run's prefix ``lssdb<pid>`` (namespaces
``lssdb-<pid>-<i>``, bridge ``lssdb<pid>``, host-side veth ends ``lssdb<pid>v<i>``), so
:func:`cleanup_stale` can remove what an earlier, killed run left without touching a run that is
still alive. Addresses are in 198.18.0.0/15 (RFC 2544 benchmarking range) on a bridge that has
no address and no uplink: nothing the lab sends can leave the machine.

Shaping: one htb class per direction, on the egress of both veth ends (the namespace's ``eth0``
egress is the host's upload, the bridge-side end's egress is its download). htb counts whole
Ethernet frames, so with a 1500-byte MTU at most 1448/1514 = 0.956 of the cap is TCP payload.
The leaf queue is a byte FIFO of ``queue_ms`` worth of the rate (at least 128 KiB): a switch
port's buffer, instead of htb's default 1000-packet FIFO, which with TSO-sized packets can hold
seconds of traffic and hides request latency behind bufferbloat (bench/README.md, "The lab",
says what shallower queues did).

The kernel keeps one ARP table for all namespaces, sized by the initial namespace's
``gc_thresh`` sysctls (1024 entries at most by default): a lab where every host talks to every
other needs about N^2 entries, so :meth:`Lab.up` raises the limits for the lab's lifetime and
:meth:`Lab.close` puts them back.
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import cluster

PREFIX = "lssdb"
CPUACCT = "/sys/fs/cgroup/cpuacct"
NET = "198.18.0.0/15"
NEIGH = "/proc/sys/net/ipv4/neigh/default/gc_thresh"


def framing(mtu=1500):
    """TCP payload per byte htb counts: a frame is MTU + 14 bytes of Ethernet header and carries
    MTU - 52 bytes of payload (IP 20, TCP 20, timestamps 12): 0.956 at MTU 1500."""
    return (mtu - 52) / (mtu + 14)


MTU_FRAMING = framing(1500)


def sh(*argv, check=True, capture=False, timeout=60):
    result = subprocess.run(
        [str(a) for a in argv],
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        text=True,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout if capture else result.returncode


def address(index):
    """198.18.0.1 for host 0, then upwards, 250 to a /24, through 198.19.255.250: every host is in
    the /15 the hosts are configured with, whatever N."""
    third, last = divmod(index, 250)
    if index < 0 or third >= 512:
        raise ValueError(f"host index {index} does not fit in {NET}")
    return f"198.{18 + third // 256}.{third % 256}.{last + 1}"


def check_environment():
    """None if the lab can be built here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], stdout=subprocess.DEVNULL).returncode != 0:
            return f"`{tool}` is not installed (iproute2)"
    name = f"{PREFIX}-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], stderr=subprocess.DEVNULL).returncode != 0:
        return "`ip netns add` does not work here (no CAP_SYS_ADMIN or no netns support)"
    subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
    return None


class Lab:
    def __init__(self, hosts, rate_mbit, seeder_rate_mbit=None, queue_ms=50.0, cc=None, mtu=1500, tag=None):
        """``hosts`` peers plus host 0; every link capped at ``rate_mbit`` both ways, host 0's at
        ``seeder_rate_mbit`` (default: the same)."""
        self.peers = hosts
        self.rate_mbit = float(rate_mbit)
        self.seeder_rate_mbit = float(seeder_rate_mbit or rate_mbit)
        self.queue_ms = queue_ms
        self.cc = cc  # TCP congestion control in every host (None: the machine's default)
        self.mtu = int(mtu)
        self.run_id = f"{os.getpid()}{tag or ''}"
        self.bridge = f"{PREFIX}{self.run_id}"
        self.namespaces = []
        self.up_done = False
        self.processes = []  # Popen objects started in the lab, stopped by close()
        # A cpuacct cgroup holding every process the lab starts: the CPU the lab itself used,
        # apart from whatever else runs on the machine (None where cgroup v1 cpuacct is absent).
        self.cgroup = None
        self.neigh_saved = None  # the gc_thresh values up() raised, put back by close()
        if len(self.veth(hosts)) > 15:
            raise ValueError(f"interface name {self.veth(hosts)!r} is longer than 15 characters")

    def ns(self, index):
        return f"{PREFIX}-{self.run_id}-{index}"

    def veth(self, index):
        return f"{PREFIX}{self.run_id}v{index}"

    def addr(self, index):
        return address(index)

    def rate(self, index):
        return self.seeder_rate_mbit if index == 0 else self.rate_mbit

    # -- build and tear down --

    def up(self):
        group = os.path.join(CPUACCT, self.bridge)
        try:
            os.makedirs(group, exist_ok=True)
            self.cgroup = group
        except OSError:
            self.cgroup = None
        self.raise_neigh_limits()
        sh("ip", "link", "add", "name", self.bridge, "type", "bridge")
        self.up_done = True
        _write(f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6", "1")
        sh("ip", "link", "set", self.bridge, "mtu", self.mtu, "up")
        for index in range(self.peers + 1):
            ns = self.ns(index)
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            veth = self.veth(index)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _write(f"/proc/sys/net/ipv6/conf/{veth}/disable_ipv6", "1")
            sh("ip", "link", "set", veth, "mtu", self.mtu, "master", self.bridge, "up")
            sysctls = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
            if self.cc:
                sysctls.append(f"net.ipv4.tcp_congestion_control={self.cc}")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", *sysctls)
            sh("ip", "-n", ns, "addr", "add", f"{self.addr(index)}/15", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "mtu", self.mtu, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            rate = self.rate(index)
            self._shape(["-n", ns], "eth0", rate)  # upload
            self._shape([], veth, rate)  # download
        self.wait_reachable()
        self.cc = sh("ip", "netns", "exec", self.ns(0), "sysctl", "-n", "net.ipv4.tcp_congestion_control",
                     capture=True).strip()

    def raise_neigh_limits(self):
        """Room in the kernel's one ARP table for every host to know every other, twice over."""
        hosts = self.peers + 1
        want = {1: hosts * hosts, 2: 2 * hosts * hosts, 3: 4 * hosts * hosts}
        saved = {}
        for level, value in want.items():
            try:
                with open(f"{NEIGH}{level}") as fh:
                    current = int(fh.read())
            except (OSError, ValueError):
                return
            if current < value:
                saved[level] = current
        if saved:
            # gc_thresh1 <= 2 <= 3 must hold at every step: raise the top one first.
            for level in sorted(saved, reverse=True):
                _write(f"{NEIGH}{level}", str(want[level]))
            self.neigh_saved = saved

    def restore_neigh_limits(self):
        for level in sorted(self.neigh_saved or {}):
            _write(f"{NEIGH}{level}", str(self.neigh_saved[level]))
        self.neigh_saved = None

    def _shape(self, where, dev, rate_mbit):
        # quantum: one class only, so any value works; set it to keep tc from warning.
        sh("tc", *where, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
        sh("tc", *where, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
           "rate", f"{rate_mbit}mbit", "ceil", f"{rate_mbit}mbit", "quantum", "60000")
        if self.queue_ms:
            limit = max(128 * 1024, int(rate_mbit * 1e6 / 8 * self.queue_ms / 1000))
            sh("tc", *where, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:",
               "bfifo", "limit", limit)

    def wait_reachable(self, timeout=30):
        """Until host 0 answers a ping from the last host (the bridge forwards after it learns)."""
        # No ping on this machine: a refused TCP connection (RST) proves the path works.
        cluster.wait_for(lambda: self.connect(self.peers, 0, 9) in ("open", "refused"), timeout,
                         "the lab hosts to reach host 0 over the bridge", interval=0.2)

    def connect(self, index, to, port):
        """Try a TCP connection from host ``index`` to host ``to``'s ``port``: ``open``,
        ``refused`` or ``unreachable``."""
        probe = ("import socket,sys\ns=socket.socket();s.settimeout(1)\n"
                 "try: s.connect((sys.argv[1],int(sys.argv[2])))\n"
                 "except ConnectionRefusedError: sys.exit(2)\n"
                 "except OSError: sys.exit(1)\n")
        code = sh(*self.exec_argv(index, [sys.executable, "-c", probe, self.addr(to), port]), check=False)
        return {0: "open", 2: "refused"}.get(code, "unreachable")

    def exec_argv(self, index, argv):
        return ["ip", "netns", "exec", self.ns(index), *[str(a) for a in argv]]

    def popen(self, index, argv, log=None, env=None):
        proc = cluster.start(self.exec_argv(index, argv), log, env=env,
                             preexec_fn=self._join_cgroup if self.cgroup else None)
        self.processes.append(proc)
        return proc

    def _join_cgroup(self):
        try:
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        except OSError:
            pass

    def cpu_seconds(self):
        """CPU seconds used so far by the processes the lab started (None if unknown)."""
        if not self.cgroup:
            return None
        try:
            with open(os.path.join(self.cgroup, "cpuacct.usage")) as fh:
                return int(fh.read()) / 1e9
        except (OSError, ValueError):
            return None

    def upload_bytes(self, index):
        """Bytes host ``index`` has sent so far (whole frames), from its htb class."""
        return _class_bytes(["-n", self.ns(index)], "eth0")

    def download_bytes(self, index):
        return _class_bytes([], self.veth(index))

    def kill_processes(self):
        cluster.stop(self.processes, timeout=5)
        self.processes = []
        # Whatever else lives in our namespaces (daemonised children) is ours too.
        for ns in self.namespaces:
            kill_namespace_pids(ns)

    def close(self):
        try:
            self.kill_processes()
        finally:
            # Deleting a veth end removes the pair at once; a namespace's own devices go only
            # when the kernel gets round to freeing it, and the next lab of this run (same
            # names) must not find them still there.
            for index in range(len(self.namespaces)):
                subprocess.run(["ip", "link", "del", self.veth(index)], stderr=subprocess.DEVNULL)
            for ns in self.namespaces:
                subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
            self.namespaces = []
            if self.up_done:
                subprocess.run(["ip", "link", "del", self.bridge], stderr=subprocess.DEVNULL)
                self.up_done = False
            if self.cgroup:
                _remove_cgroup(self.cgroup)
                self.cgroup = None
            self.restore_neigh_limits()


def _remove_cgroup(path):
    # Processes still in it (none should be) go back to the root group first.
    with contextlib.suppress(OSError):
        with open(os.path.join(path, "cgroup.procs")) as fh:
            pids = fh.read().split()
        for pid in pids:
            _write(os.path.join(os.path.dirname(path), "cgroup.procs"), pid)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _write(path, value):
    """Write a kernel setting; one this kernel lacks or refuses is left as it is."""
    with contextlib.suppress(OSError), open(path, "w") as fh:
        fh.write(value)


def _class_bytes(where, dev):
    out = sh("tc", *where, "-s", "class", "show", "dev", dev, capture=True, check=False)
    match = re.search(r"Sent (\d+) bytes", out or "")
    return int(match.group(1)) if match else 0


def namespace_pids(ns):
    out = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_namespace_pids(ns, grace=3.0):
    cluster.kill_all(lambda: namespace_pids(ns), grace)


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup_stale(all_runs=False, log=print):
    """Remove namespaces, bridges and processes of earlier lab runs whose bench process is gone
    (every run's, alive or not, with ``all_runs``). Returns how many objects were removed."""
    removed = 0
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
    mine = re.compile(rf"^{PREFIX}-(\d+)[a-z]*-\d+$")
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        match = mine.match(name)
        if not match or (not all_runs and _alive(int(match.group(1)))):
            continue
        kill_namespace_pids(name)
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        log(f"removed namespace {name}")
        removed += 1
    out = subprocess.run(["ip", "-o", "link", "show"], stdout=subprocess.PIPE, text=True).stdout
    link = re.compile(rf"^\d+: ({PREFIX}(\d+)[a-z]*(v\d+)?)[@:]")
    for line in out.splitlines():
        match = link.match(line)
        if not match or (not all_runs and _alive(int(match.group(2)))):
            continue
        subprocess.run(["ip", "link", "del", match.group(1)], stderr=subprocess.DEVNULL)
        log(f"removed link {match.group(1)}")
        removed += 1
    for parent in ("/dev/shm", "/var/tmp"):
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            match = re.match(rf"^{PREFIX}-(\d+)-", name)
            if not match or (not all_runs and _alive(int(match.group(1)))):
                continue
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            log(f"removed work directory {os.path.join(parent, name)}")
            removed += 1
    try:
        groups = os.listdir(CPUACCT)
    except OSError:
        groups = []
    for name in groups:
        match = re.match(rf"^{PREFIX}(\d+)[a-z]*$", name)
        if not match or (not all_runs and _alive(int(match.group(1)))):
            continue
        _remove_cgroup(os.path.join(CPUACCT, name))
        log(f"removed cgroup {name}")
        removed += 1
    return removed


class CpuSampler(threading.Thread):
    """Samples /proc/stat every ``period`` seconds: the fraction of all cores that was busy."""

    def __init__(self, period=0.5):
        super().__init__(daemon=True, name="cpu-sampler")
        self.period = period
        self.samples = []  # (wall time, busy jiffies, total jiffies, softirq jiffies)
        self._halt = threading.Event()

    @staticmethod
    def read():
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        total = sum(fields[:8])  # guest time is already inside user
        return total - idle, total, fields[6]

    def run(self):
        while not self._halt.is_set():
            self.samples.append((time.time(), *self.read()))
            self._halt.wait(self.period)

    def stop(self):
        self._halt.set()
        self.join(2)
        self.samples.append((time.time(), *self.read()))

    def between(self, start, end):
        """(average busy fraction, peak 1-second busy fraction, softirq fraction) in [start, end]."""
        inside = [s for s in self.samples if start - self.period <= s[0] <= end + self.period]
        if len(inside) < 2:
            return None, None, None
        first, last = inside[0], inside[-1]
        total = last[2] - first[2]
        avg = (last[1] - first[1]) / total if total else None
        soft = (last[3] - first[3]) / total if total else None
        peak = 0.0
        for a, b in zip(inside, inside[2:]):
            if b[2] > a[2]:
                peak = max(peak, (b[1] - a[1]) / (b[2] - a[2]))
        return avg, peak, soft
