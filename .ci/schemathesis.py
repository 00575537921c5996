#!/usr/bin/env python3
"""Schemathesis against every service of the platform, each on its own SQLite files.

Runs the `gateway` binary on config/platform.toml (every port replaced by a free one, data
in a temporary folder), makes an admin (register, then restart with bootstrap_admin), and
runs `schemathesis run` on each service's own /openapi.json with the admin's bearer token
and the checks the contract promises. Usage: .ci/schemathesis.py [path/to/gateway]
Prints, per service, the operations and test cases schemathesis reports; exits non-zero
when any check fails.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/gateway"))
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
ADMIN = "admin@example.com"
PASSWORD = "correct horse battery staple"
# (service, extra arguments). Logging out or revoking a session ends the admin's session,
# after which the user service answers 401 to the rest: those two run last, apart.
ENDS_SESSION = ["--include-operation-id", "logout", "--include-operation-id", "revokeSession"]
RUNS = [
    ("user", ["--exclude-operation-id", "logout", "--exclude-operation-id", "revokeSession"]),
    ("product", []),
    ("payment", []),
    ("order", []),
    ("notification", []),
    ("analytics", []),
    ("user", ENDS_SESSION),
]


def free_port():
    """A port nothing listens on, below Linux's ephemeral range (32768-60999), so no
    outgoing connection's local port takes it before the gateway binds it."""
    import random
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def config(bootstrap, ports):
    text = open(os.path.join(ROOT, "config/platform.toml")).read()
    # One pass: replacing port by port would rewrite a new port that starts with a later
    # fixed one (30034 after 3003 → "283834"), and the gateway refuses the config.
    text = re.sub(r"127\.0\.0\.1:(\d+)\b",
                  lambda m: f"127.0.0.1:{ports.get(m.group(1), m.group(1))}", text)
    if bootstrap:
        text = text.replace('# bootstrap_admin = "you@example.com"', f'bootstrap_admin = "{ADMIN}"')
    return text


def section_port(text, service):
    m = re.search(rf"\[platform\.{service}\]\nlisten = \"127\.0\.0\.1:(\d+)\"", text)
    return int(m.group(1))


def call(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def start(workdir, text):
    path = os.path.join(workdir, "platform.toml")
    open(path, "w").write(text)
    log = open(os.path.join(workdir, "gateway.log"), "a")
    proc = subprocess.Popen([GATEWAY, "run", "--config", path], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    user = section_port(text, "user")
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{user}/health", timeout=1)
            return proc
        except Exception:
            if proc.poll() is not None:
                sys.exit(f"the gateway exited: see {log.name}")
            time.sleep(0.1)
    sys.exit("the platform did not come up")


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)


def main():
    fixed = ["8080", "9090", "3001", "3002", "3003", "3004", "3005", "3006", "3009"]
    ports = {}
    while len(set(ports.values())) < len(fixed):  # two picks may draw one number
        ports = {f: free_port() for f in fixed}
    failed = []
    with tempfile.TemporaryDirectory() as workdir:
        text = config(False, ports)
        user = f"http://127.0.0.1:{section_port(text, 'user')}"
        proc = start(workdir, text)
        status, body = call("POST", f"{user}/users", {"email": ADMIN, "password": PASSWORD})
        assert status == 201, (status, body)
        stop(proc)
        text = config(True, ports)
        proc = start(workdir, text)
        try:
            status, tokens = call("POST", f"{user}/auth/login", {"email": ADMIN, "password": PASSWORD})
            assert status == 200, (status, tokens)
            token = tokens["access_token"]
            totals = []
            for service, extra in RUNS:
                base = f"http://127.0.0.1:{section_port(text, service)}"
                print(f"\n== schemathesis: {service} service ({base}) {' '.join(extra)}", flush=True)
                run = subprocess.run(
                    ["schemathesis", "run", f"{base}/openapi.json",
                     "--header", f"Authorization: Bearer {token}",
                     "--checks", CHECKS,
                     "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"),
                     "--seed", "1",
                     "--workers", "1", *extra],
                    cwd=workdir, capture_output=True, text=True)
                out = run.stdout + run.stderr
                print(out[-6000:], flush=True)
                tested = re.search(r"Tested: (\d+)", out)
                cases = re.search(r"(\d+) generated", out)
                totals.append((service, tested and tested.group(1), cases and cases.group(1)))
                if run.returncode != 0:
                    failed.append(service)
            print("\n== schemathesis totals (service, operations, test cases)")
            for row in totals:
                print(*row)
        finally:
            stop(proc)
    if failed:
        sys.exit(f"schemathesis failed for: {', '.join(failed)}")


if __name__ == "__main__":
    main()
