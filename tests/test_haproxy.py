"""Serving many users: three replicas (`python -m runtime --server`, the bundle's own
entry point; building the bundle three times over would add minutes and test nothing
more here) behind HAProxy with deploy/haproxy.cfg, all on loopback.

- 8 clients x 20 requests (half streamed): no failures.
- Under that load one replica gets SIGTERM: it drains, exits 0, HAProxy marks it down
  and sends it nothing more, and no request fails.
- Then one gets SIGKILL: the requests it had in flight may be lost (HAProxy retries a
  request whose connection closed before any answer), every other one succeeds.
"""

import os
import signal
import subprocess
import time

import pytest

from tests.models import smollm2
from tests.replicas import HAProxy, Load, haproxy_binary, start_replicas
from tests.server_process import REPO

pytestmark = pytest.mark.skipif(not haproxy_binary(),
                                reason="haproxy is not installed (scripts/setup.sh installs it)")

REPLICA_FLAGS = ("-c", "512", "-np", "2", "--queue", "8", "-t", "1", "--drain-timeout", "120")
N_PREDICT = 6


@pytest.fixture(scope="module")
def cluster():
    replicas = start_replicas(smollm2(), 3, *REPLICA_FLAGS)
    proxy = None
    try:
        proxy = HAProxy([r.port for r in replicas])
        yield replicas, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for r in replicas:
            r.stop()


def test_deploy_config_passes_haproxy_check():
    r = subprocess.run([haproxy_binary(), "-c", "-f", os.path.join(REPO, "deploy", "haproxy.cfg")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_load_through_haproxy_has_no_failures(cluster):
    replicas, proxy = cluster
    load = Load(proxy.port, clients=8, per_client=20, n_predict=N_PREDICT)
    results = load.wait()
    assert len(results) == 160
    assert load.failures() == []
    print(f"\n160 requests in {load.seconds:.1f} s through HAProxy, 3 replicas")
    # leastconn spread them: every replica served some
    for i in range(3):
        assert proxy.sessions(f"r{i + 1}") > 0


def test_sigterm_drains_a_replica_under_load_without_failures(cluster):
    replicas, proxy = cluster
    victim = replicas[0]
    load = Load(proxy.port, clients=8, per_client=8, n_predict=N_PREDICT)
    while load.done() < 8:
        time.sleep(0.05)
    t_term = time.monotonic()
    victim.proc.send_signal(signal.SIGTERM)
    while proxy.status("llamazip", "r1") != "DOWN" or proxy.status("ready", "r1") != "DOWN":
        assert time.monotonic() - t_term < 30, proxy.stats()[("ready", "r1")]
        time.sleep(0.1)
    t_down = time.monotonic() - t_term
    sent_when_down = proxy.sessions("r1")
    results = load.wait()
    assert victim.proc.wait(120) == 0, "".join(victim.log)
    assert len(results) == 64
    assert load.failures() == []
    assert proxy.sessions("r1") == sent_when_down     # nothing more once marked down
    print(f"\nSIGTERM: marked down after {t_down:.1f} s, 0 of 64 requests failed")


def test_sigkill_loses_at_most_the_requests_in_flight(cluster):
    replicas, proxy = cluster
    victim = replicas[1]
    load = Load(proxy.port, clients=8, per_client=8, n_predict=N_PREDICT)
    while load.done() < 8:
        time.sleep(0.05)
    in_flight = proxy.in_flight("r2")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(30)
    results = load.wait()
    assert len(results) == 64
    lost = load.failures()
    assert len(lost) <= in_flight, lost
    print(f"\nSIGKILL: {in_flight} requests in flight on the killed replica, "
          f"{len(lost)} of 64 lost")
