#!/usr/bin/env python3
"""Load benchmark driver: smtpsrv's mailsink example versus Postfix's smtp-sink,
with ../shared/floor-sink (the kernel's and reactor's floor) as a third server.

Normally started by run.sh, which installs the Postfix tools, builds mailsink
and raises the file descriptor limit.  Configuration comes from the
environment (see benches/README.md); positional arguments select workloads.

For every repeat, workload and server a fresh server process is started on a
free 127.0.0.1 port, so that peak RSS (VmHWM) belongs to that workload alone.
"""

import datetime
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * 1024

# name: (parallel sessions, messages, payload bytes, reuse connections)
MESSAGE_WORKLOADS = {
    "W1": (50, 20000, 10 * KIB, True),
    "W2": (50, 5000, 10 * KIB, False),
    "W3": (4, 200, 2 * MIB, True),
    # Large messages at once (issue 12): 50 sessions, two 20 MiB messages each.
    "W5": (50, 100, 20 * MIB, True),
}
ALL_WORKLOADS = ["W1", "W2", "W3", "W4", "W5"]
DESCRIPTIONS = {
    "W1": "{s} sessions, {m} x {size}, connections reused (smtp-source -d)",
    "W2": "{s} sessions, {m} x {size}, new connection per message",
    "W3": "{s} sessions, {m} x {size}, connections reused (smtp-source -d)",
    "W4": "{n} idle connections held past EHLO; server RSS before and with them",
    "W5": "{s} sessions, {m} x {size}, connections reused (smtp-source -d)",
}

# (key, label, format) per workload kind; ratios are smtpsrv / smtp-sink.
MESSAGE_METRICS = [
    ("wall_s", "wall time s (lower is better)", "{:.2f}"),
    ("msgs_per_s", "msgs/s", "{:.0f}"),
    ("mib_per_s", "MiB/s payload", "{:.1f}"),
    ("cpu_s", "server CPU s (user+sys)", "{:.2f}"),
    ("cpu_us_per_msg", "server CPU µs/msg (lower is better)", "{:.1f}"),
    ("user_us_per_msg", "of which user space, µs/msg", "{:.1f}"),
    ("sys_us_per_msg", "of which kernel, µs/msg", "{:.1f}"),
    ("peak_rss_mib", "server peak RSS MiB (VmHWM)", "{:.1f}"),
]
IDLE_METRICS = [
    ("conns", "idle connections", "{:.0f}"),
    ("setup_s", "time to open all, s", "{:.2f}"),
    ("rss_before_mib", "server RSS before, MiB", "{:.1f}"),
    ("rss_with_mib", "server RSS with them, MiB", "{:.1f}"),
    ("kib_per_conn", "KiB per connection (lower is better)", "{:.1f}"),
    ("peak_rss_mib", "server peak RSS MiB (VmHWM)", "{:.1f}"),
]


# The column of METRICS=1 runs: smtpsrv with `--metrics`.
METRICS_SERVER = "smtpsrv+metrics"


class BenchError(Exception):
    """A run that cannot be measured (server died, generator failed, ...)."""


# ---------------------------------------------------------------- children

CHILDREN = []


def spawn(argv, cpus=None, **kwargs):
    """Start a child in its own process group so cleanup can kill all of it."""

    def pin():
        if cpus:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=pin, **kwargs)
    CHILDREN.append(proc)
    return proc


def stop(proc, grace=3.0):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    if proc in CHILDREN:
        CHILDREN.remove(proc)


def stop_all(*_):
    for proc in list(CHILDREN):
        stop(proc, grace=1.0)


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


# ---------------------------------------------------------------- /proc


def cpu_times(pid):
    """(utime, stime) of all threads of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"{key} missing from /proc/{pid}/status")


# ---------------------------------------------------------------- servers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_until_greeting(proc, port, log_path, timeout=15.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                greeting = s.makefile("rb").readline()
                if greeting.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = greeting
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise BenchError(f"server on port {port} not ready after {timeout}s ({last!r})")


class Server:
    """One server process under test, started from a command template."""

    def __init__(self, name, template, cfg, log_path):
        self.name = name
        self.port = free_port()
        values = {"port": self.port, "max_conns": cfg["max_conns"], "host": LOOPBACK}
        self.argv = [arg.format(**values) for arg in shlex.split(template)]
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.log.write(f"\n=== {' '.join(self.argv)}\n".encode())
        self.log.flush()
        self.proc = spawn(
            self.argv,
            cpus=cfg["server_cpus"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_greeting(self.proc, self.port, log_path)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self):
        return self.proc.pid

    def check_alive(self):
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
            )

    def close(self):
        stop(self.proc)
        self.log.close()


# ---------------------------------------------------------------- workloads


def run_messages(server, cfg, sessions, messages, size, reuse):
    argv = [cfg["smtp_source"], "-c", "-s", str(sessions), "-m", str(messages)]
    argv += ["-l", str(size)]
    if reuse:
        argv.append("-d")
    argv.append(f"{LOOPBACK}:{server.port}")
    user_before, sys_before = cpu_times(server.pid)
    started = time.monotonic()
    gen = spawn(argv, cpus=cfg["client_cpus"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = gen.communicate(timeout=cfg["run_timeout"])
    except subprocess.TimeoutExpired:
        stop(gen)
        raise BenchError(f"smtp-source did not finish in {cfg['run_timeout']}s")
    wall = time.monotonic() - started
    CHILDREN.remove(gen)
    time.sleep(0.2)  # let the server finish the last QUIT before reading its CPU
    server.check_alive()
    user_after, sys_after = cpu_times(server.pid)
    user, system = user_after - user_before, sys_after - sys_before
    cpu = user + system
    peak = status_kib(server.pid, "VmHWM")
    counters = [t for t in out.replace(b"\r", b"\n").split() if t.isdigit()]
    sent = int(counters[-1]) if counters else 0
    err_text = err.decode(errors="replace").strip()
    if gen.returncode != 0 or sent != messages:
        raise BenchError(
            f"smtp-source exit {gen.returncode}, sent {sent}/{messages}: {err_text[-500:]}"
        )
    return {
        "wall_s": wall,
        "msgs_per_s": messages / wall,
        "mib_per_s": messages * size / MIB / wall,
        "cpu_s": cpu,
        "cpu_us_per_msg": cpu * 1e6 / messages,
        "user_us_per_msg": user * 1e6 / messages,
        "sys_us_per_msg": system * 1e6 / messages,
        "peak_rss_mib": peak / KIB,
    }


def run_idle(server, cfg, conns):
    time.sleep(0.5)
    rss_before = status_kib(server.pid, "VmRSS")
    argv = [sys.executable, os.path.join(HERE, "idle_clients.py")]
    argv += ["--host", LOOPBACK, "--port", str(server.port), "--count", str(conns)]
    setup_timeout = min(300, 30 + conns // 100)  # 5000 take ~5 s; a stall must not hang us
    argv += ["--setup-timeout", str(setup_timeout), "--hold", "600"]
    client = spawn(
        argv,
        cpus=cfg["client_cpus"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = client.stdout.readline().decode(errors="replace").split()
        if len(line) < 3 or line[0] != "READY":
            stop(client)
            raise BenchError(
                f"idle client: {' '.join(line)} {client.stderr.read().decode()[-500:]}"
            )
        held, setup = int(line[1]), float(line[2])
        time.sleep(1.0)  # let the server settle after the last EHLO
        server.check_alive()
        rss_with = status_kib(server.pid, "VmRSS")
        peak = status_kib(server.pid, "VmHWM")
        client.stdin.close()  # tells the client to drop its connections and exit
        client.wait(timeout=60)
    finally:
        stop(client)
    if held != conns:
        raise BenchError(f"idle client held {held} of {conns} connections")
    return {
        "conns": held,
        "setup_s": setup,
        "rss_before_mib": rss_before / KIB,
        "rss_with_mib": rss_with / KIB,
        "kib_per_conn": (rss_with - rss_before) / held,
        "peak_rss_mib": peak / KIB,
    }


# ---------------------------------------------------------------- config


def env_float(name, default):
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"{name} must be a number")


def human_size(n):
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    if n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n} B"


def load_config(argv):
    selected = [w.upper() for w in argv] or list(ALL_WORKLOADS)
    unknown = [w for w in selected if w not in ALL_WORKLOADS]
    if unknown:
        sys.exit(f"unknown workload(s) {unknown}; choose from {ALL_WORKLOADS}")
    scale = env_float("SCALE", 1.0)
    if not 0 < scale <= 10:
        sys.exit("SCALE must be in (0, 10]")
    repeat = int(env_float("REPEAT", 1))
    if not 1 <= repeat <= 20:
        sys.exit("REPEAT must be in [1, 20]")
    w4_conns = max(1, round(env_float("W4_CONNS", 5000) * scale))
    if w4_conns > 45000:
        sys.exit("W4_CONNS * SCALE must be at most 45000")
    workloads = {}
    for name in selected:
        if name == "W4":
            workloads[name] = {"conns": w4_conns}
            continue
        sessions, messages, size, reuse = MESSAGE_WORKLOADS[name]
        messages = max(sessions, round(messages * scale))
        workloads[name] = {"sessions": sessions, "messages": messages, "size": size, "reuse": reuse}
    max_conns = w4_conns + 100
    pin = os.environ.get("PIN", "0") == "1" and os.cpu_count() >= 2
    all_cpus = sorted(os.sched_getaffinity(0))
    sink_user = " -u postfix" if os.geteuid() == 0 else ""
    default_sink = (
        f"{shlex.quote(os.environ.get('SMTP_SINK', '/usr/sbin/smtp-sink'))}{sink_user}"
        " -m {max_conns} -t 600 {host}:{port} 8192"
    )
    default_smtpsrv = (
        f"{shlex.quote(os.environ.get('MAILSINK_BIN', 'target/release/examples/mailsink'))}"
        " --listen {host}:{port} --discard --max-connections {max_conns}"
        " --max-connections-per-ip {max_conns}"
        + (" " + os.environ["MAILSINK_ARGS"] if os.environ.get("MAILSINK_ARGS") else "")
    )
    # The floor: an SMTP sink that only finds line ends and CRLF.CRLF (see
    # ../shared/floor-sink/README.md); run.sh builds it and sets FLOOR_SINK_BIN.
    floor_bin = os.environ.get("FLOOR_SINK_BIN", "")
    floor_cmd = os.environ.get("FLOOR_CMD") or (
        f"{shlex.quote(floor_bin)} {{host}}:{{port}}" if floor_bin else ""
    )
    servers = {
        "smtpsrv": os.environ.get("SMTPSRV_CMD") or default_smtpsrv,
        "smtp-sink": os.environ.get("SINK_CMD") or default_sink,
    }
    if floor_cmd:
        servers["floor-sink"] = floor_cmd
    # METRICS=1: the same smtpsrv command with Prometheus metrics on (the
    # connection observer and the message layer, endpoint on a free port),
    # interleaved with the others, to price the metrics per message.
    if os.environ.get("METRICS", "0") == "1":
        servers[METRICS_SERVER] = servers["smtpsrv"] + " --metrics {host}:0"
    # More columns, e.g. smtpsrv in another mode or a peer server:
    # EXTRA_SERVERS='buffered=CMD|mailin=CMD' (same {host}/{port}/{max_conns}).
    for entry in filter(None, os.environ.get("EXTRA_SERVERS", "").split("|")):
        name, sep, cmd = entry.partition("=")
        if not sep or not name.strip() or name.strip() in servers:
            sys.exit(f"EXTRA_SERVERS entry {entry!r}: want NAME=COMMAND with a new name")
        servers[name.strip()] = cmd.strip()
    out_dir = os.environ.get("BENCH_OUT_DIR", "target/bench")
    return {
        "workloads": workloads,
        "scale": scale,
        "repeat": repeat,
        "max_conns": max_conns,
        "pin": pin,
        "server_cpus": {all_cpus[0]} if pin else None,
        "client_cpus": set(all_cpus[1:]) if pin else None,
        "smtp_source": os.environ.get("SMTP_SOURCE", "/usr/sbin/smtp-source"),
        "run_timeout": int(env_float("RUN_TIMEOUT", 900)),
        "servers": servers,
        "smtpsrv_overridden": bool(os.environ.get("SMTPSRV_CMD")),
        "out_dir": out_dir,
    }


# ---------------------------------------------------------------- report


def machine_facts():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = 0.0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / MIB
    postfix = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "postfix"], capture_output=True, text=True
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_gib": round(mem_gib, 1),
        "postfix": postfix or "unknown",
        "smtpsrv_commit": commit or "unknown",
    }


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fmt(template, value):
    return "n/a" if value is None else template.format(value)


def render(cfg, facts, results, started_at):
    """results[workload][server] -> list of metric dicts (one per repeat)."""
    lines = [f"# smtpsrv load benchmark, {started_at}", ""]
    lines.append(
        f"Machine: {facts['nproc']} CPUs ({facts['cpu_model']}), "
        f"{facts['memory_gib']} GiB RAM, kernel {facts['kernel']}; "
        f"Postfix {facts['postfix']}; smtpsrv commit {facts['smtpsrv_commit']}."
    )
    lines.append(
        f"Runs: REPEAT={cfg['repeat']} (table shows the median), SCALE={cfg['scale']}, "
        f"CPU pinning {'on (server on one CPU, clients on the rest)' if cfg['pin'] else 'off'}; "
        "generator smtp-source, everything over 127.0.0.1."
    )
    lines.append(
        f"Load average (1/5/15 min) at start: {facts['loadavg_start']}, "
        f"at end: {facts['loadavg_end']}."
    )
    if float(facts["loadavg_start"].split()[0]) > 1.0:
        lines.append("WARNING: the machine was busy at the start; wall-time figures are noisy.")
    lines.append("")
    for name, server_cmd in cfg["servers"].items():
        lines.append(f"- {name}: `{server_cmd}`")
    if cfg["smtpsrv_overridden"]:
        lines.append("- NOTE: the smtpsrv column ran the SMTPSRV_CMD override above.")
    lines.append("")
    for name, w in cfg["workloads"].items():
        if name == "W4":
            desc = DESCRIPTIONS[name].format(n=w["conns"])
        else:
            desc = DESCRIPTIONS[name].format(
                s=w["sessions"], m=w["messages"], size=human_size(w["size"])
            )
        lines.append(f"- {name}: {desc}")
    floor = "floor-sink" in cfg["servers"]
    with_metrics = METRICS_SERVER in cfg["servers"]
    if with_metrics:
        return render_metrics(cfg, results, lines)
    if floor:
        lines += [
            "",
            "| workload | metric | smtpsrv | smtp-sink | floor-sink "
            "| ratio smtpsrv/smtp-sink | ratio smtpsrv/floor-sink |",
        ]
        lines.append("|---|---|---:|---:|---:|---:|---:|")
    else:
        lines += ["", "| workload | metric | smtpsrv | smtp-sink | ratio smtpsrv/smtp-sink |"]
        lines.append("|---|---|---:|---:|---:|")
    for name in cfg["workloads"]:
        metrics = IDLE_METRICS if name == "W4" else MESSAGE_METRICS
        per_server = results.get(name, {})
        for key, label, template in metrics:
            medians = {}
            for server in cfg["servers"]:
                runs = [r for r in per_server.get(server, []) if r is not None]
                medians[server] = statistics.median(r[key] for r in runs) if runs else None
            ours, theirs = medians["smtpsrv"], medians["smtp-sink"]
            ratio = f"{ours / theirs:.2f}" if ours is not None and theirs else "n/a"
            row = f"| {name} | {label} | {fmt(template, ours)} | {fmt(template, theirs)}"
            if floor:
                base = medians["floor-sink"]
                to_floor = f"{ours / base:.2f}" if ours is not None and base else "n/a"
                row += f" | {fmt(template, base)} | {ratio} | {to_floor} |"
            else:
                row += f" | {ratio} |"
            lines.append(row)
    extra = [s for s in cfg["servers"] if s not in ("smtpsrv", "smtp-sink", "floor-sink")]
    if extra:
        lines += ["", "Every server, and each one's ratio to smtp-sink:", ""]
        names = list(cfg["servers"])
        lines.append("| workload | metric | " + " | ".join(names) + " | "
                     + " | ".join(f"{n}/smtp-sink" for n in names if n != "smtp-sink") + " |")
        lines.append("|---|---|" + "---:|" * (2 * len(names) - 1))
        for name in cfg["workloads"]:
            metrics = IDLE_METRICS if name == "W4" else MESSAGE_METRICS
            per_server = results.get(name, {})
            for key, label, template in metrics:
                medians = {}
                for server in names:
                    runs = [r for r in per_server.get(server, []) if r is not None]
                    medians[server] = statistics.median(r[key] for r in runs) if runs else None
                sink = medians["smtp-sink"]
                cells = [fmt(template, medians[n]) for n in names]
                cells += [
                    f"{medians[n] / sink:.2f}" if medians[n] is not None and sink else "n/a"
                    for n in names if n != "smtp-sink"
                ]
                lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    if floor:
        lines += per_round_ratios(cfg, results)
    lines += ["", "Higher is better unless the metric says otherwise; MiB/s counts payload only."]
    return "\n".join(lines) + "\n"


def per_round_ratios(cfg, results):
    """Each server's CPU per message over floor-sink's in the same round.

    The servers of a round run back to back, so a ratio taken within the
    round cancels most of what moves a shared machine from one minute to the
    next; the median of those ratios is steadier than a ratio of medians.
    """
    names = [n for n in cfg["servers"] if n != "floor-sink"]
    if all(name == "W4" for name in cfg["workloads"]):
        return []
    lines = [
        "",
        "Server CPU per message over floor-sink's in the same round "
        "(median of the rounds, lowest and highest):",
        "",
        "| workload | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name in cfg["workloads"]:
        if name == "W4":
            continue
        per_server = results.get(name, {})
        cells = []
        for server in names:
            pairs = zip(per_server.get(server, []), per_server.get("floor-sink", []))
            ratios = [
                r["cpu_us_per_msg"] / f["cpu_us_per_msg"]
                for r, f in pairs
                if r is not None and f is not None and f["cpu_us_per_msg"] > 0
            ]
            cells.append(
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                if ratios
                else "n/a"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def medians_of(cfg, per_server, key):
    medians = {}
    for server in cfg["servers"]:
        runs = [r for r in per_server.get(server, []) if r is not None]
        medians[server] = statistics.median(r[key] for r in runs) if runs else None
    return medians


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def render_metrics(cfg, results, lines):
    """The METRICS=1 table: every server's column, then what metrics cost."""
    names = list(cfg["servers"])
    head = "| workload | metric | " + " | ".join(names)
    head += " | ratio smtpsrv/smtp-sink | ratio smtpsrv+metrics/smtpsrv | difference |"
    lines += ["", head, "|---|---|" + "---:|" * (len(names) + 3)]
    for name in cfg["workloads"]:
        metrics = IDLE_METRICS if name == "W4" else MESSAGE_METRICS
        for key, label, template in metrics:
            m = medians_of(cfg, results.get(name, {}), key)
            ours, with_metrics = m["smtpsrv"], m[METRICS_SERVER]
            diff = (
                template.format(with_metrics - ours)
                if ours is not None and with_metrics is not None
                else "n/a"
            )
            row = f"| {name} | {label} | " + " | ".join(fmt(template, m[n]) for n in names)
            row += f" | {ratio(ours, m['smtp-sink'])} | {ratio(with_metrics, ours)} | {diff} |"
            lines.append(row)
    lines += ["", "Higher is better unless the metric says otherwise; MiB/s counts payload only."]
    return "\n".join(lines) + "\n"


def render_raw(cfg, results, errors):
    lines = ["", "## Every run", "", "| workload | server | repeat | values |", "|---|---|---:|---|"]
    for name, per_server in results.items():
        for server, runs in per_server.items():
            for i, r in enumerate(runs, 1):
                values = "failed" if r is None else ", ".join(f"{k}={v:.4g}" for k, v in r.items())
                lines.append(f"| {name} | {server} | {i} | {values} |")
    if errors:
        lines += ["", "## Failures", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    cfg = load_config(sys.argv[1:])
    if cfg["client_cpus"]:
        # Pinned: the server's CPU is the server's alone. This harness wakes
        # for every counter line smtp-source prints; on the server's CPU
        # that costs the server context switches and cache (measured: W1
        # server CPU ~10% higher, more for a server with more state).
        os.sched_setaffinity(0, cfg["client_cpus"])
    os.makedirs(cfg["out_dir"], exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = os.path.join(cfg["out_dir"], f"load-{stamp}.servers.log")
    facts = machine_facts()
    facts["loadavg_start"] = load_average()
    print(
        f"machine: nproc={facts['nproc']} cpu='{facts['cpu_model']}' kernel={facts['kernel']} "
        f"loadavg={facts['loadavg_start']}",
        flush=True,
    )
    results = {name: {s: [] for s in cfg["servers"]} for name in cfg["workloads"]}
    errors = []
    try:
        for rep in range(1, cfg["repeat"] + 1):
            for name, w in cfg["workloads"].items():
                order = list(cfg["servers"])
                if rep % 2 == 0:
                    order.reverse()  # alternate who goes first to cancel drift
                for server_name in order:
                    label = f"[{rep}/{cfg['repeat']}] {name} {server_name}"
                    print(f"{label} ...", end=" ", flush=True)
                    server = None
                    try:
                        server = Server(server_name, cfg["servers"][server_name], cfg, log_path)
                        if name == "W4":
                            r = run_idle(server, cfg, w["conns"])
                            summary = f"{r['kib_per_conn']:.1f} KiB/conn"
                        else:
                            r = run_messages(
                                server, cfg, w["sessions"], w["messages"], w["size"], w["reuse"]
                            )
                            summary = f"{r['msgs_per_s']:.0f} msgs/s, {r['cpu_us_per_msg']:.1f} µs CPU/msg"
                        print(summary, flush=True)
                    except BenchError as e:
                        r = None
                        errors.append(f"{label}: {e}")
                        print(f"FAILED: {e}", flush=True)
                    finally:
                        if server is not None:
                            server.close()
                    results[name][server_name].append(r)
    finally:
        stop_all()
    facts["loadavg_end"] = load_average()
    table = render(cfg, facts, results, stamp)
    md_path = os.path.join(cfg["out_dir"], f"load-{stamp}.md")
    with open(md_path, "w") as f:
        f.write(table + render_raw(cfg, results, errors))
    with open(os.path.join(cfg["out_dir"], f"load-{stamp}.json"), "w") as f:
        json.dump({"config": {k: v for k, v in cfg.items() if "cpus" not in k},
                   "machine": facts, "results": results, "errors": errors}, f, indent=1)
    print()
    print(table)
    print(f"written: {md_path} (+ .json, server log {log_path})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
