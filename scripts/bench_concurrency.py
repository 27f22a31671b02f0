#!/usr/bin/env python3
"""Warm throughput under concurrency: model-router against Python onnxruntime
sessions called from threads, in one run (scripts/bench-concurrency.sh runs it).

For each scenario (one small model, one large model, two models at once) and
each concurrency (1, 2, 4, 16 by default):

- model-router `serve` with MODEL_SESSIONS=1 (one session per model: what a
  hot model had before the session pool) and with MODEL_SESSIONS=<pool>
  (default: the CPUs), ORT_INTRA_THREADS=1, driven over loopback HTTP by
  examples/load_client.rs (closed loop: C connections, one request in flight
  each). CPU used is the server process's utime+stime (/proc/PID/stat) over
  the wall time: 2.0 means two cores busy. "queued" is the mean time a
  request waited for a free session of its model (the server's
  model_router_queue_seconds, scraped from its admin listener): with one
  session it is where concurrent requests to one model serialise.
- Python: onnxruntime InferenceSession (intra_op_num_threads=1), one per
  model, shared by C threads each calling session.run in a loop (no HTTP, no
  JSON: the floor a Python server could reach). CPU used is the process's.

Prints requests/s, p50/p99 and CPU used for each, and the ratios: pool over
one session, model-router over Python, and each concurrency over 1.
Every run is bounded by --seconds and by --max-requests.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import onnxruntime as ort

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (11 and 12 after the name).
    return (int(fields[11]) + int(fields[12])) / TICKS


class Server:
    """`model-router serve` on 127.0.0.1:0, its address read from stdout."""

    def __init__(self, router, repo, staging, sessions, preload):
        env = dict(os.environ, MODEL_SESSIONS=str(sessions), ORT_INTRA_THREADS="1",
                   RUST_LOG="error", PRELOAD_MODELS=",".join(preload))
        self.process = subprocess.Popen(
            [router, "serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--repo", repo,
             "--staging-dir", staging, "--cache-bytes", "4Gi"],
            env=env, stdout=subprocess.PIPE, text=True)
        for line in self.process.stdout:
            admin = re.match(r"model-router admin listening on http://(\S+)", line)
            if admin:
                self.admin = admin.group(1)
            match = re.match(r"model-router listening on http://(\S+)", line)
            if match:
                self.addr = match.group(1)
                break
        else:
            raise SystemExit("bench-concurrency: the server did not start")

    def queued(self):
        """Seconds requests waited for a free session, and requests, from /metrics."""
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=30) as response:
            text = response.read().decode()
        total = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            match = re.match(r"model_router_queue_seconds_(sum|count)\{[^}]*\} (\S+)$", line)
            if match:
                total[match.group(1)] += float(match.group(2))
        return total["sum"], total["count"]

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def drive(client, server, targets, concurrency, seconds, max_requests):
    before = cpu_seconds(server.process.pid)
    queued_before = server.queued()
    started = time.monotonic()
    out = subprocess.run(
        [client, "--addr", server.addr, "--concurrency", str(concurrency), "--seconds", str(seconds),
         "--max-requests", str(max_requests)] + [a for t in targets for a in ("--target", t)],
        check=True, capture_output=True, text=True).stdout
    wall = time.monotonic() - started
    result = json.loads(out.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"bench-concurrency: {result['errors']} requests failed: {result}")
    result["cpus"] = (cpu_seconds(server.process.pid) - before) / wall
    waited, count = (after - before for after, before in zip(server.queued(), queued_before))
    result["queue_ms"] = waited / max(count, 1) * 1e3
    return result


def load_average():
    """The 1-minute load average (runnable processes competing for the CPUs),
    and whether the kernel shares CPU time per session group (autogroup), in
    which case this run's processes together get one group's share."""
    load = pathlib.Path("/proc/loadavg").read_text().split()[0]
    autogroup = pathlib.Path("/proc/sys/kernel/sched_autogroup_enabled")
    if autogroup.exists() and autogroup.read_text().strip() == "1":
        return f"{load}, sched_autogroup on"
    return load


def python_threads(sessions, feeds, concurrency, seconds, max_requests):
    """C threads, thread i calling sessions[i % n].run(feeds[i % n]) in a loop."""
    stop_at = time.monotonic() + seconds
    budget = -(-max_requests // concurrency)
    latencies = [[] for _ in range(concurrency)]

    def worker(i):
        session, feed, seen = sessions[i % len(sessions)], feeds[i % len(feeds)], latencies[i]
        while time.monotonic() < stop_at and len(seen) < budget:
            t = time.perf_counter()
            session.run(None, feed)
            seen.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    cpu, wall = time.process_time(), time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - wall
    cpu = time.process_time() - cpu
    every = sorted(x for seen in latencies for x in seen)
    pick = lambda p: every[max(0, min(len(every), int(np.ceil(len(every) * p))) - 1)] * 1e3
    return {"requests": len(every), "rps": len(every) / wall, "p50_ms": pick(0.5),
            "p99_ms": pick(0.99), "cpus": cpu / wall}


def check_answer(server, name, body, py_session, feed):
    """Stops the bench unless model-router answers what Python's session does."""
    request = urllib.request.Request(f"http://{server.addr}/models/{name}/1/predict", data=body.read_bytes(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)["outputs"]
    for output, expected in zip(py_session.get_outputs(), py_session.run(None, feed)):
        got = np.asarray(answer[output.name])
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            raise SystemExit(f"bench-concurrency: {name} output {output.name} differs from Python's")


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def row(label, result):
    queue = f"  queued {result['queue_ms']:.3f} ms/req" if "queue_ms" in result else ""
    return (f"  {label:<22} {result['rps']:>9.1f} req/s  p50 {result['p50_ms']:>8.3f} ms  "
            f"p99 {result['p99_ms']:>8.3f} ms  CPU {result['cpus']:.2f}{queue}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--small", required=True, help="small model (.ort)")
    parser.add_argument("--large", required=True, help="large model (.ort)")
    parser.add_argument("--concurrency", default="1,2,4,16")
    parser.add_argument("--pool", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-concurrency."))
    repo, staging = work / "repo", work / "staging"
    models = {"small": args.small, "small-b": args.small, "large": args.large}
    for name, path in models.items():
        subprocess.run([args.router, "publish", "--repo", repo, "--name", name, "--version", "1", path],
                       check=True, capture_output=True)

    # One request body per model: a single row of its one float input.
    bodies, feeds = {}, {}
    for name, path in models.items():
        probe = session(path)
        (inp,) = probe.get_inputs()
        width = inp.shape[-1]
        values = np.random.default_rng(7).standard_normal((1, width)).astype(np.float32)
        feeds[name] = {inp.name: values}
        bodies[name] = work / f"{name}.json"
        bodies[name].write_text(json.dumps({"inputs": {inp.name: values.tolist()}}))
    target = lambda name: f"/models/{name}/1/predict={bodies[name]}"
    scenarios = [
        ("small model (mlp.ort)", ["small"]),
        ("large model (make_big_model.py)", ["large"]),
        ("2 models at once (small + small-b)", ["small", "small-b"]),
    ]

    # Same answers first: model-router's prediction equals Python's.
    servers = {}
    try:
        for sessions in sorted({1, args.pool}):
            servers[sessions] = Server(args.router, repo, staging / str(sessions), sessions, [f"{m}/1" for m in models])
        py_sessions = {name: session(path) for name, path in models.items()}
        for server in servers.values():
            for name in models:
                check_answer(server, name, bodies[name], py_sessions[name], feeds[name])
        print(f"bench-concurrency: {os.cpu_count()} CPUs, pool of {args.pool} sessions per model, "
              f"ORT_INTRA_THREADS=1 and intra_op_num_threads=1, {args.seconds:g} s per point; "
              f"load average before: {load_average()}")
        summary = []
        for title, names in scenarios:
            print(f"\n{title}")
            base = {}
            for c in levels:
                print(f" concurrency {c}")
                results = {}
                for sessions, server in servers.items():
                    results[sessions] = drive(args.client, server, [target(n) for n in names], c,
                                              args.seconds, args.max_requests)
                    print(row(f"model-router x{sessions}", results[sessions]))
                results["python"] = python_threads([py_sessions[n] for n in names], [feeds[n] for n in names],
                                                   c, args.seconds, args.max_requests)
                print(row("python threads", results["python"]))
                if c == levels[0]:
                    base = results
                pool, one, py = results[args.pool]["rps"], results[1]["rps"], results["python"]["rps"]
                print(f"  ratios: pool/one-session {pool / one:.2f}x, model-router/python {pool / py:.2f}x, "
                      f"vs concurrency {levels[0]}: pool {pool / base[args.pool]['rps']:.2f}x, "
                      f"one-session {one / base[1]['rps']:.2f}x, python {py / base['python']['rps']:.2f}x")
                summary.append((title, c, results))
        busiest = max(r[args.pool]["cpus"] for _, _, r in summary)
        print(f"\nbench-concurrency: load average after: {load_average()} (other processes on these CPUs "
              "cap what any side can use)")
        print(f"bench-concurrency: the pooled server used up to {busiest:.2f} CPUs "
              f"(one session per model: up to {max(r[1]['cpus'] for _, _, r in summary):.2f})")
    finally:
        for server in servers.values():
            server.close()


if __name__ == "__main__":
    main()
