"""deploy/ without a cluster: the Kubernetes manifests against the API's schema
(kubernetes-validate, strict: unknown fields are errors) and the fields that make
draining and probing work; the systemd unit's command line through our own parser;
the HAProxy settings the README promises (test_haproxy.py runs the file for real)."""

import configparser
import os
import re
import shlex
import shutil
import subprocess

import pytest

from runtime.cli import build_parser
from tests.server_process import REPO

yaml = pytest.importorskip("yaml")
DEPLOY = os.path.join(REPO, "deploy")


def manifests():
    with open(os.path.join(DEPLOY, "kubernetes.yaml")) as f:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(f) if doc}


def server_flags(argv):
    """Our parser's view of a replica's command line: it must accept every flag."""
    args = build_parser().parse_args(argv)
    assert args.server
    return args


@pytest.mark.parametrize("version", ["1.27.0", "1.30.0", "1.33.0"])
def test_kubernetes_manifests_match_the_api_schema(version):
    kv = pytest.importorskip("kubernetes_validate")
    for doc in manifests().values():
        kv.validate(doc, version, strict=True)


def test_kubernetes_schema_check_catches_a_wrong_field():
    kv = pytest.importorskip("kubernetes_validate")
    doc = manifests()["Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, "1.30.0", strict=True)


def test_kubernetes_deployment_probes_and_drain():
    docs = manifests()
    deploy, service = docs["Deployment"], docs["Service"]
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = server_flags(container["args"])
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert args.port == port and args.host == "0.0.0.0" and args.metrics
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert container[probe]["httpGet"]["port"] in ("http", port)
    # preStop's wait plus the drain fit in the grace period, or the drain is cut by SIGKILL
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert int(pre_stop[1]) + args.drain_timeout < pod["spec"]["terminationGracePeriodSeconds"]
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # the Service reaches the pods
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ("http", port)


def read_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    with open(os.path.join(DEPLOY, "llamazip@.service")) as f:
        # systemd continues lines with a trailing backslash
        unit.read_string(re.sub(r"\\\n\s*", " ", f.read()))
    return unit


def test_systemd_unit_drains_within_its_stop_timeout():
    service = read_unit()["Service"]
    argv = shlex.split(service["ExecStart"].replace("%i", "8081"))
    args = server_flags(argv[1:])
    assert args.port == 8081 and args.host == "127.0.0.1"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) > args.drain_timeout
    assert int(service["LimitNOFILE"]) >= 16384


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_finds_nothing_but_the_missing_bundle(tmp_path):
    unit = tmp_path / "llamazip@8081.service"
    shutil.copyfile(os.path.join(DEPLOY, "llamazip@.service"), unit)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line.strip() and "/opt/llamazip/model.llamafile" not in line]
    assert problems == []


def test_haproxy_config_has_the_balancer_settings():
    with open(os.path.join(DEPLOY, "haproxy.cfg")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    text = "\n".join(line for line in lines if line)
    assert "option httpchk GET /health?fail_on_no_slot=1" in text
    assert "option httpchk GET /health\n" in text
    assert re.search(r"^option redispatch", text, re.M)
    assert re.search(r"^retries [1-9]", text, re.M)
    assert re.search(r"^retry-on .*conn-failure", text, re.M)
    for timeout in ("client", "server"):     # streams may run for minutes
        assert re.search(rf"^timeout {timeout} (\d+)m$", text, re.M)
