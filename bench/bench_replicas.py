"""Throughput of 1 replica vs 3 behind HAProxy (deploy/haproxy.cfg) on this machine:
8 clients x 10 requests each (half streamed chat, half /completion), 16 tokens per
request. On 2 cores three replicas are not expected to be faster than one that
batches its slots: this prints what it is. Every replica runs one kernel thread
(-t 1): on a shared, loaded 2-core machine a server's two spinning threads ran many
times slower than one.

    python bench/bench_replicas.py [clients] [requests_per_client] [n_predict]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.models import smollm2  # noqa: E402
from tests.replicas import HAProxy, Load, haproxy_binary, start_replicas  # noqa: E402

SETUPS = {1: ("-t", "1", "-np", "4"), 3: ("-t", "1", "-np", "2")}


def run(n_replicas, clients, per_client, n_predict):
    flags = ("-c", "512", "--queue", "16") + SETUPS[n_replicas]
    replicas = start_replicas(smollm2(), n_replicas, *flags)
    proxy = None
    try:
        proxy = HAProxy([r.port for r in replicas])
        Load(proxy.port, 2, 1, n_predict).wait()       # warm the path
        t0 = time.monotonic()
        load = Load(proxy.port, clients, per_client, n_predict)
        results = load.wait()
        seconds = time.monotonic() - t0
    finally:
        if proxy is not None:
            proxy.stop()
        for r in replicas:
            r.stop()
    ok = [r for r in results if r[0]]
    tokens = sum(r[2] for r in ok)
    print(f"{n_replicas} replica{'s' if n_replicas > 1 else ' '} ({' '.join(flags)}): "
          f"{len(ok)}/{len(results)} ok in {seconds:.1f} s: {len(ok) / seconds:.2f} requests/s, "
          f"{tokens / seconds:.1f} tokens/s", flush=True)
    return len(ok) / seconds


def main():
    if not haproxy_binary():
        sys.exit("haproxy is not installed (scripts/setup.sh installs it)")
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    per_client = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    n_predict = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    print(f"{clients} clients x {per_client} requests, {n_predict} tokens each, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rates = {n: run(n, clients, per_client, n_predict) for n in (1, 3)}
    print(f"3 replicas / 1 replica: {rates[3] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
