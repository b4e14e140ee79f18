#!/usr/bin/env python3
"""Measure a running `edge-run serve`: aggregate decode tok/s with 1, 2, 4 and 8 concurrent streams (all on
the base, and each stream on its own adapter), time to first token alone and while 3 other streams decode.
Standard library only; talks to the server over loopback.

    edge-run serve -m MODEL --port 8080 --parallel 8 --adapter a=A.gguf --adapter b=B.gguf ...
    python3 scripts/serve_bench.py --url http://127.0.0.1:8080 --adapters a,b,c,d [--tokens 64]
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request


def stream(url, body):
    """POST a streaming completion: (seconds to the first text chunk, completion tokens, total seconds)."""
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if first is None and ev["choices"] and ev["choices"][0].get("text"):
                first = time.perf_counter() - t0
            if "usage" in ev:
                tokens = ev["usage"]["completion_tokens"]
    return first or 0.0, tokens, time.perf_counter() - t0


def run(url, n, models, tokens, prompt):
    """n concurrent streams; aggregate tok/s and the time-to-first-token list."""
    out = [None] * n

    def one(i):
        body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                "stream": True}
        if models[i % len(models)]:
            body["model"] = models[i % len(models)]
        out[i] = stream(url, body)

    t0 = time.perf_counter()
    ths = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    return sum(o[1] for o in out) / wall, [o[0] for o in out]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--adapters", default="", help="comma-separated adapter names loaded in the server")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", default="1,2,4,8")
    args = ap.parse_args()
    base = json.load(urllib.request.urlopen(args.url + "/v1/models"))["data"][0]["id"]
    names = [a for a in args.adapters.split(",") if a]
    prompt = "Write a long story about a lighthouse keeper and the sea."
    results = {}
    for n in [int(x) for x in args.streams.split(",")]:
        tps, ttft = run(args.url, n, [None], args.tokens, prompt)
        row = {"base_tps": round(tps, 1), "ttft_p50_ms": round(pct(ttft, 50) * 1e3),
               "ttft_p95_ms": round(pct(ttft, 95) * 1e3)}
        if names:
            tps_a, _ = run(args.url, n, [f"{base}:{a}" for a in names], args.tokens, prompt)
            row["adapters_tps"] = round(tps_a, 1)
        results[n] = row
        print(f"{n} streams: {row}", flush=True)
    # A 32-token prompt's first token, alone and while 3 streams decode.
    short = " ".join(["word"] * 31)
    alone = statistics.median(stream(args.url, {"prompt": short, "max_tokens": 2, "temperature": 0, "ignore_eos": True,
                                                "stream": True})[0] for _ in range(3))
    bg = [threading.Thread(target=run, args=(args.url, 1, [None], args.tokens * 4, prompt)) for _ in range(3)]
    for t in bg:
        t.start()
    time.sleep(1.0)
    busy = stream(args.url, {"prompt": short, "max_tokens": 2, "temperature": 0, "ignore_eos": True, "stream": True})[0]
    for t in bg:
        t.join()
    print(f"ttft 32-token prompt: alone {alone * 1e3:.0f} ms, with 3 streams decoding {busy * 1e3:.0f} ms")
    print(json.dumps({"streams": results, "ttft_alone_ms": round(alone * 1e3),
                      "ttft_busy_ms": round(busy * 1e3)}))


if __name__ == "__main__":
    main()
