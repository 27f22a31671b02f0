#!/usr/bin/env python3
"""Times whole commands, interleaved, and prints medians and ratios.

    python3 scripts/bench_interleaved.py SPEC.json

SPEC.json:

    {"title": "...", "runs": 15, "warmup": 1,
     "cases": [{"name": "router", "steps": [["model-router", "invoke", ...]],
                "env": {"RUST_LOG": "warn"}, "expect": "\\"statusCode\\": 200"}, ...],
     "ratios": [{"label": "router / baseline", "num": "router", "den": "baseline",
                 "at_most": 1.3}]}

Each case is one or more commands run one after the other (its time is their
sum, e.g. `openssl dgst` then a minimal ONNX Runtime program); a step's stdout
must contain the case's `expect` text (a wrong answer stops the benchmark).
Each round runs every case once, in an order that rotates from round to
round, so drift on a shared machine hits every case alike. Times are wall
clock from fork to exit, measured here (not by the programs themselves).

For each ratio, the median of `num` over the median of `den`, and whether it
meets the target (`at_most` or `at_least`): printed, never asserted, since
timings on a shared machine are for benchmarks, not tests.

Stdlib only. Prints a table; writes the raw samples as JSON to SPEC.json's
path with `.result.json` when `"save": true`.
"""

import json
import os
import statistics
import subprocess
import sys
import time


def run_case(case):
    env = dict(os.environ)
    env.update(case.get("env", {}))
    total = 0.0
    for step in case["steps"]:
        start = time.perf_counter()
        done = subprocess.run(step, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        total += time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{case['name']}: {' '.join(step)} exited {done.returncode}:\n"
                     f"{done.stderr.decode(errors='replace')[-2000:]}")
        if step is case["steps"][-1] and case.get("expect"):
            out = done.stdout.decode(errors="replace")
            if case["expect"] not in out:
                sys.exit(f"{case['name']}: the answer lacks {case['expect']!r}:\n{out[:2000]}")
    return total * 1e3


def main():
    spec_path = sys.argv[1]
    with open(spec_path) as f:
        spec = json.load(f)
    cases = spec["cases"]
    runs, warmup = spec.get("runs", 11), spec.get("warmup", 1)
    samples = {c["name"]: [] for c in cases}
    for _ in range(warmup):
        for case in cases:
            run_case(case)
    for round_ in range(runs):
        shift = round_ % len(cases)
        for case in cases[shift:] + cases[:shift]:
            samples[case["name"]].append(run_case(case))

    print(f"\n== {spec.get('title', spec_path)} ({runs} interleaved runs, {os.cpu_count()} CPUs) ==")
    width = max(len(name) for name in samples)
    for case in cases:
        values = sorted(samples[case["name"]])
        p10 = values[len(values) // 10]
        p90 = values[(len(values) * 9) // 10 - (1 if len(values) % 10 == 0 else 0)]
        print(f"  {case['name']:<{width}}  median {statistics.median(values):8.1f} ms"
              f"  [p10 {p10:7.1f}, p90 {p90:7.1f}]  {case.get('about', '')}")
    for ratio in spec.get("ratios", []):
        num = statistics.median(samples[ratio["num"]])
        den = statistics.median(samples[ratio["den"]])
        value = num / den
        verdict = ""
        if "at_most" in ratio:
            verdict = f"target <= {ratio['at_most']}: {'met' if value <= ratio['at_most'] else 'NOT met'}"
        elif "at_least" in ratio:
            verdict = f"target >= {ratio['at_least']}: {'met' if value >= ratio['at_least'] else 'NOT met'}"
        print(f"  ratio {ratio['label']}: {value:.2f}x  ({verdict})")
    if spec.get("save"):
        with open(spec_path.rsplit(".", 1)[0] + ".result.json", "w") as f:
            json.dump(samples, f)


if __name__ == "__main__":
    main()
