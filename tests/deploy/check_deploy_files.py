#!/usr/bin/python3
"""Checks the deployment examples in deploy/ (CTest unit.deploy_files).

- deploy/systemd/pgferry.service: `systemd-analyze verify` on a temp copy whose ExecStart
  points at the built binary passes with no warning; Restart=on-failure, the environment
  file and the hardening options are there; every option of its ExecStart is one the
  binary knows.
- deploy/kubernetes/pgferry.yaml: parses; a Deployment with one replica and the Recreate
  strategy, the liveness probe on /status and the readiness probe on /ready (200 only
  while a session streams) at the port of --metrics-listen,
  Prometheus scrape annotations for that port, and the conninfo from a Secret that the
  file defines.
Usage: check_deploy_files.py BINARY DEPLOY_DIR
"""
import configparser
import os
import re
import shlex
import subprocess
import sys
import tempfile

import yaml

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def known_options(binary):
    text = ""
    for args in (["--help"], ["run", "--help"]):
        text += subprocess.run([binary, *args], capture_output=True, text=True).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]*", text))


def check_options(binary, args, where):
    known = known_options(binary)
    for arg in args:
        if arg.startswith("--"):
            check(arg.split("=")[0] in known, f"{where}: pgferry has no option {arg}")


def check_systemd(binary, path):
    with open(path) as f:
        text = f.read()
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str
    unit.read_string(text)
    service = unit["Service"]
    check(service.get("Restart") == "on-failure", "systemd: Restart=on-failure missing")
    check(service.get("EnvironmentFile", "").startswith("/etc/pgferry/"),
          "systemd: EnvironmentFile for the conninfo missing")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": ""}.items():
        check(service.get(key) == value, f"systemd: {key}={value} missing")
    check(service.get("KillSignal") == "SIGTERM", "systemd: KillSignal=SIGTERM missing")
    exec_start = shlex.split(service["ExecStart"])
    check(exec_start[0] == "/usr/local/bin/pgferry", "systemd: ExecStart is not the binary")
    check("run" in exec_start and "--metrics-listen" in exec_start,
          "systemd: ExecStart does not run the agent with --metrics-listen")
    check_options(binary, exec_start[1:], "systemd ExecStart")

    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "pgferry.service")
        with open(copy, "w") as f:
            f.write(text.replace("/usr/local/bin/pgferry", os.path.abspath(binary)))
        done = subprocess.run(["systemd-analyze", "verify", copy], capture_output=True,
                              text=True)
        output = (done.stdout + done.stderr).strip()
        # Warnings about our file (unknown keys, bad values) fail the check too; lines
        # about the host's own units do not.
        ours = [line for line in output.splitlines() if "pgferry" in line]
        check(done.returncode == 0 and not ours,
              f"systemd-analyze verify: exit {done.returncode}: {output}")


def check_kubernetes(binary, path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = {d["kind"]: d for d in docs}
    if "Deployment" not in kinds or "Secret" not in kinds:
        check(False, "kubernetes: Deployment or Secret missing")
        return
    deployment, secret = kinds["Deployment"], kinds["Secret"]
    spec = deployment["spec"]
    check(spec.get("replicas") == 1, "kubernetes: replicas is not 1")
    check(spec.get("strategy", {}).get("type") == "Recreate", "kubernetes: strategy not Recreate")
    template = spec["template"]
    containers = template["spec"]["containers"]
    check(len(containers) == 1, "kubernetes: expected one container")
    container = containers[0]
    args = container["args"]
    check("run" in args and "--metrics-listen" in args, "kubernetes: args do not run the agent")
    check_options(binary, args, "kubernetes args")
    if "--metrics-listen" not in args:
        return
    listen = args[args.index("--metrics-listen") + 1]
    port = int(listen.rsplit(":", 1)[1])
    check(not listen.startswith("127.") and not listen.startswith(":"),
          "kubernetes: --metrics-listen must bind beyond localhost for probes and scraping")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for probe, path in (("livenessProbe", "/status"), ("readinessProbe", "/ready")):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path, f"kubernetes: {probe} not on {path}")
        probe_port = get.get("port")
        check(ports.get(probe_port, probe_port) == port,
              f"kubernetes: {probe} port is not the --metrics-listen port {port}")
    annotations = template["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/scrape") == "true", "kubernetes: scrape annotation")
    check(annotations.get("prometheus.io/port") == str(port), "kubernetes: scrape port")
    check(annotations.get("prometheus.io/path") == "/metrics", "kubernetes: scrape path")
    env = {e["name"]: e for e in container.get("env", [])}
    for name in ("PGFERRY_SOURCE", "PGFERRY_TARGET"):
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
        check(ref.get("name") == secret["metadata"]["name"],
              f"kubernetes: {name} does not come from the Secret")
        check(ref.get("key") in secret.get("stringData", {}),
              f"kubernetes: the Secret has no key {ref.get('key')}")


def main():
    binary, deploy = sys.argv[1], sys.argv[2]
    check_systemd(binary, os.path.join(deploy, "systemd", "pgferry.service"))
    check_kubernetes(binary, os.path.join(deploy, "kubernetes", "pgferry.yaml"))
    for failure in failures:
        print("FAIL:", failure)
    print("deploy files:", "ok" if not failures else f"{len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
