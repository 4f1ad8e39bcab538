#!/usr/bin/env python3
"""Hand-off cost and cluster throughput (issue 13), in one run.

1. Per message, one client, sequential 1 KiB messages: server CPU (user+sys
   of mailsink, plus nats-server for the hand-off) and latency from the end
   of DATA to the 250, p50/p99, for --discard, --maildir (fsync) and --nats,
   beside Postfix's smtp-sink and ../shared/floor-sink (if FLOOR_SINK_BIN is
   set, as benches/load/run.sh does), with CPU as a ratio to smtp-sink.
2. msgs/s of smtp-source (30 sessions, 6000 x 1 KiB) through HAProxy to three
   --nats instances, beside one --nats instance directly and smtp-sink.

Usage: benches/load/cluster_bench.py [BIN_DIR]   (default target/release/examples)
Needs nats-server, redis-server (unused here), haproxy, smtp-source, smtp-sink.
"""
import os, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/examples")
TICK = os.sysconf("SC_CLK_TCK")
N = int(os.environ.get("N", "2000"))
procs = []


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing on {port}")


def spawn(args, env=None):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    procs.append(p); return p


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def reply(f):
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


def latency_run(port, pids):
    s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
    reply(f); s.sendall(b"EHLO bench.test\r\n"); reply(f)
    body = b"Subject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12 + b".\r\n"
    lat = []; before = sum(cpu(p) for p in pids)
    for _ in range(N):
        s.sendall(b"MAIL FROM:<a@bench.test>\r\n"); reply(f)
        s.sendall(b"RCPT TO:<b@bench.test>\r\n"); reply(f)
        s.sendall(b"DATA\r\n"); reply(f)
        t = time.perf_counter(); s.sendall(body); code = reply(f)
        lat.append(time.perf_counter() - t)
        assert code == 250, code
    used = sum(cpu(p) for p in pids) - before
    s.sendall(b"QUIT\r\n"); s.close(); lat.sort()
    return used / N * 1e6, lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


def mailsink(port, *extra):
    p = spawn([f"{BIN}/mailsink", "--listen", f"127.0.0.1:{port}", "--threads", "1", *extra],
              env={**os.environ, "RUST_LOG": "warn"})
    wait_port(port); return p


def smtp_sink(port):
    user = ["-u", "postfix"] if os.geteuid() == 0 else []
    p = spawn(["/usr/sbin/smtp-sink", *user, "-m", "200", f"127.0.0.1:{port}", "8192"])
    wait_port(port); return p


def floor_sink(port):
    p = spawn([os.environ["FLOOR_SINK_BIN"], f"127.0.0.1:{port}"])
    wait_port(port); return p


def smtp_source(port):
    t = time.perf_counter()
    subprocess.run(["/usr/sbin/smtp-source", "-s", "30", "-m", "6000", "-l", "1024", "-d",
                    "-f", "a@bench.test", "-t", "b@bench.test", f"127.0.0.1:{port}"], check=True)
    return 6000 / (time.perf_counter() - t)


def main():
    tmp = tempfile.mkdtemp()
    nport = free_port()
    conf = os.path.join(tmp, "nats.conf")
    open(conf, "w").write(f'listen: 127.0.0.1:{nport}\nmax_payload: 32MB\n'
                          f'jetstream {{ store_dir: "{tmp}/js" }}\n')
    nats = spawn(["nats-server", "-c", conf]); wait_port(nport)
    nurl = f"nats://127.0.0.1:{nport}"
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}")
    print(f"\n1. per message, {N} sequential 1 KiB messages, mailsink --threads 1")
    print("| server | CPU us/msg | CPU / smtp-sink | p50 us | p99 us |\n|---|---:|---:|---:|---:|")
    runs = [("Postfix smtp-sink", smtp_sink, False)]
    if os.environ.get("FLOOR_SINK_BIN"):
        runs.append(("floor-sink", floor_sink, False))
    for name, extra, with_nats in [("mailsink --discard", ["--discard"], False),
                                   ("mailsink --maildir (fsync)", ["--maildir", f"{tmp}/md"], False),
                                   ("mailsink --nats (JetStream file storage)", ["--nats", nurl], True)]:
        runs.append((name, lambda port, extra=extra: mailsink(port, *extra), with_nats))
    sink_cpu = None
    for name, start, with_nats in runs:
        port = free_port(); p = start(port)
        pids = [p.pid] + ([nats.pid] if with_nats else [])
        c, p50, p99 = latency_run(port, pids)
        sink_cpu = sink_cpu or c
        note = " (mailsink + nats-server)" if with_nats else ""
        print(f"| {name} | {c:.0f}{note} | {c / sink_cpu:.2f}x | {p50:.0f} | {p99:.0f} |")
        p.terminate(); p.wait()

    print("\n2. smtp-source -s 30 -m 6000 -l 1024 -d, every instance --nats")
    ports = [free_port() for _ in range(3)]
    inst = [mailsink(pt, "--nats", nurl, "--proxy-protocol", "127.0.0.1", "--hostname", f"mx{i}")
            for i, pt in enumerate(ports)]
    hport = free_port()
    env = {**os.environ, "CLUSTER_BIND": f"127.0.0.1:{hport}", "CLUSTER_RUN": tmp,
           "MX1": f"127.0.0.1:{ports[0]}", "MX2": f"127.0.0.1:{ports[1]}", "MX3": f"127.0.0.1:{ports[2]}"}
    spawn(["haproxy", "-db", "-f", os.path.join(ROOT, "deploy/cluster/haproxy.cfg")], env=env)
    wait_port(hport); time.sleep(1.5)  # health checks mark the instances up
    via = smtp_source(hport)
    dport = free_port(); direct = mailsink(dport, "--nats", nurl)
    one = smtp_source(dport)
    sport = free_port(); smtp_sink(sport)
    sink = smtp_source(sport)
    print(f"| path | msgs/s |\n|---|---:|\n| HAProxy -> 3 instances | {via:.0f} |\n"
          f"| 1 instance direct | {one:.0f} |\n| Postfix smtp-sink direct (discards) | {sink:.0f} |\n"
          f"| HAProxy / direct | {via / one:.2f}x |")


try:
    main()
finally:
    for p in procs:
        p.kill(); p.wait()
