#!/usr/bin/env python3
"""Hold many idle SMTP connections open against a loopback server.

Each connection reads the greeting, sends EHLO, reads the full EHLO reply and
then sits idle.  Once every connection is in that state the script prints one
line to stdout:

    READY <connections> <setup-seconds>

and then holds the connections until its stdin is closed (or reaches EOF) or
until --hold seconds pass, whichever comes first; then it closes them all and
exits 0.  If not all connections get past EHLO within --setup-timeout it
prints `FAILED <connected> <reason>` and exits 1.

Safety bounds (this is a load tool, so it must stop by itself):
  * the target must be a loopback address (127.0.0.0/8);
  * at most MAX_CONNECTIONS connections;
  * the whole run is bounded by --setup-timeout + --hold seconds.
"""

import argparse
import asyncio
import ipaddress
import os
import resource
import sys
import time

MAX_CONNECTIONS = 50_000
MAX_HOLD_SECONDS = 1800
MAX_REPLY_LINES = 64
MAX_LINE_BYTES = 4096


def loopback_host(text):
    """argparse type: accept only an IPv4 loopback address."""
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address")
    if not addr.is_loopback:
        raise argparse.ArgumentTypeError(f"{text} is not a loopback address")
    return str(addr)


def bounded_int(lo, hi):
    def parse(text):
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} not in [{lo}, {hi}]")
        return value

    return parse


async def read_reply(reader):
    """Read one (possibly multi-line) SMTP reply; return its code."""
    for _ in range(MAX_REPLY_LINES):
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if len(line) > MAX_LINE_BYTES or len(line) < 4:
            raise ConnectionError(f"malformed reply line {line[:40]!r}")
        if line[3:4] != b"-":
            return int(line[:3])
    raise ConnectionError("reply has too many lines")


async def open_idle(host, port, helo, gate):
    """Connect and get past EHLO; return the open writer (to close later)."""
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            code = await read_reply(reader)
            if code != 220:
                raise ConnectionError(f"greeting code {code}")
            writer.write(b"EHLO " + helo + b"\r\n")
            await writer.drain()
            code = await read_reply(reader)
            if code != 250:
                raise ConnectionError(f"EHLO reply code {code}")
        except BaseException:
            writer.close()
            raise
        return writer


async def wait_for_stdin_eof(hold):
    """Return when stdin reaches EOF, or after `hold` seconds."""
    loop = asyncio.get_running_loop()
    eof = asyncio.Event()
    fd = sys.stdin.fileno()

    def on_readable():
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            eof.set()

    try:
        loop.add_reader(fd, on_readable)
    except (OSError, ValueError, PermissionError):
        # stdin is not pollable (a regular file or /dev/null): only the timer ends the hold.
        await asyncio.sleep(hold)
        return
    try:
        await asyncio.wait_for(eof.wait(), timeout=hold)
    except asyncio.TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)


async def run(args):
    gate = asyncio.Semaphore(args.concurrency)
    helo = args.helo.encode("ascii")
    started = time.monotonic()
    tasks = [
        asyncio.ensure_future(open_idle(args.host, args.port, helo, gate))
        for _ in range(args.count)
    ]
    done, pending = await asyncio.wait(tasks, timeout=args.setup_timeout)
    for task in pending:
        task.cancel()
    writers, errors = [], []
    for task in done:
        if task.exception() is None:
            writers.append(task.result())
        else:
            errors.append(task.exception())
    setup = time.monotonic() - started
    try:
        if len(writers) != args.count:
            reason = f"timeout after {args.setup_timeout}s" if pending else ""
            if errors:
                reason = f"{len(errors)} errors, first: {errors[0]!r}"
            print(f"FAILED {len(writers)} {reason}", flush=True)
            return 1
        print(f"READY {len(writers)} {setup:.3f}", flush=True)
        await wait_for_stdin_eof(args.hold)
        return 0
    finally:
        for writer in writers:
            writer.close()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", type=loopback_host, default="127.0.0.1")
    parser.add_argument("--port", type=bounded_int(1, 65535), required=True)
    parser.add_argument("--count", type=bounded_int(1, MAX_CONNECTIONS), default=5000)
    parser.add_argument(
        "--concurrency",
        type=bounded_int(1, 4096),
        default=256,
        help="connections being set up at once (stays under the listen backlog)",
    )
    parser.add_argument("--setup-timeout", type=bounded_int(1, 600), default=120)
    parser.add_argument(
        "--hold",
        type=bounded_int(1, MAX_HOLD_SECONDS),
        default=120,
        help="maximum seconds to hold the connections if stdin stays open",
    )
    parser.add_argument("--helo", default="idle.bench.invalid")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.count + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            parser.error(f"RLIMIT_NOFILE hard limit {hard} < {need} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
