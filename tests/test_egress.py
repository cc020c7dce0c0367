"""Network egress on real services, under both runtimes: tasks and sandboxes reach exactly what their
policy allows, through the worker's proxy, and nothing else.

Safety: the server resolves only the static names below, all to loopback addresses of upstreams this
test starts (127.0.0.1, and 127.0.0.2 for a private address that stays refused); the containers have no
network, and the probes of that send nothing (a UDP connect only picks a route). Whatever fails, nothing
here can reach beyond loopback.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import errno
import hashlib
import io
import json
import ssl
import zipfile
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coderund.sandbox.options import WORKDIR
from tests.conftest import RUNTIMES, free_port, gvisor_missing, own_server
from tests.test_live import connect, start, until_result

pytestmark = pytest.mark.timeout(600)
MAX_MB = 6
MAX_CONNECTIONS = 40
POLICY = {"allow": ["allowed.test", "*.wild.test", "private.test", "secure.test", "mirror.test"]}


def certificate(name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for name, and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def demo_wheel() -> bytes:
    """A one-module wheel, egress_demo 0.1, made here."""
    files = {"egress_demo/__init__.py": b"ANSWER = 'installed through the policy'\n",
             "egress_demo-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: egress-demo\nVersion: 0.1\n",
             "egress_demo-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
                     for name, data in files.items()) + "egress_demo-0.1.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in {**files, "egress_demo-0.1.dist-info/RECORD": record.encode()}.items():
            wheel.writestr(name, data)
    return buffer.getvalue()


def upstream(tag: str, wheel: bytes) -> web.Application:
    """What the sandboxes reach: a greeting naming this upstream and the Host asked, a download of any
    size, and a simple index with the demo wheel."""
    async def hello(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=f"{tag} {request.method} {request.host} {len(body)}")

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["mb"]) * 1024 * 1024
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            await response.write(chunk)
        return response

    async def index(request: web.Request) -> web.Response:
        digest = hashlib.sha256(wheel).hexdigest()
        return web.Response(text=f'<a href="/files/egress_demo-0.1-py3-none-any.whl#sha256={digest}">egress_demo-0.1-py3-none-any.whl</a>',
                            content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/hello", hello)
    app.router.add_get("/big", big)
    app.router.add_get("/simple/egress-demo/", index)
    async def wheel_file(request: web.Request) -> web.Response:
        return web.Response(body=wheel)

    app.router.add_get("/files/egress_demo-0.1-py3-none-any.whl", wheel_file)
    return app


@pytest.fixture(scope="module")
async def upstreams():
    """127.0.0.1 (allowed to the proxy), 127.0.0.2 (a private address that is not), and a TLS one."""
    cert, key = certificate("secure.test")
    folder = Path(__file__).parent.parent / ".cache"
    folder.mkdir(exist_ok=True)
    (cert_file := folder / "egress-test-cert.pem").write_bytes(cert)
    (key_file := folder / "egress-test-key.pem").write_bytes(key)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    wheel = demo_wheel()
    runners, ports = [], {}
    for name, host, context in (("open", "127.0.0.1", None), ("private", "127.0.0.2", None), ("tls", "127.0.0.1", tls)):
        runner = web.AppRunner(upstream(name, wheel))
        await runner.setup()
        ports[name] = free_port()
        await web.TCPSite(runner, host, ports[name], ssl_context=context).start()
        runners.append(runner)
    yield {"ports": ports, "cert": cert.decode()}
    for runner in runners:
        await runner.cleanup()


@pytest.fixture(scope="module", params=RUNTIMES)
async def egress_api(request, server, settings, upstreams):
    """A coderund with egress on, names resolved only by its static table (to loopback), 127.0.0.1
    the only non-global address it may reach."""
    if request.param == "runsc" and (missing := gvisor_missing()):
        pytest.skip(missing)
    hosts = ",".join(f"{name}=127.0.0.1" for name in ("allowed.test", "other.test", "a.wild.test", "wild.test",
                                                       "secure.test", "mirror.test"))
    async with own_server(settings, runtime=request.param, queue=f"{settings.queue}.egress.{request.param}",
                          egress="on", egress_resolve="static", egress_hosts=f"{hosts},private.test=127.0.0.2",
                          egress_ports=",".join(map(str, upstreams["ports"].values())),
                          egress_allow_private="127.0.0.1/32", egress_max_mb=MAX_MB,
                          egress_max_connections=MAX_CONNECTIONS) as api:
        api.token = await api.user("egress")
        yield api


PROBES = r'''
import json, socket, ssl, sys, urllib.request
P, P2, PT = (int(a) for a in sys.argv[1:4])
out = {}
def get(url, **kw):
    try:
        with urllib.request.urlopen(url, timeout=20, **kw) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
    except Exception as e:
        return [type(e).__name__, str(e)[:200]]
def raw(data):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(data)
    answer = s.recv(200).decode(errors="replace").split("\r\n")[0]
    s.close()
    return answer
out["allowed"] = get(f"http://allowed.test:{P}/hello")
out["post"] = get(urllib.request.Request(f"http://allowed.test:{P}/hello", data=b"12345"))
out["other"] = get(f"http://other.test:{P}/hello")
out["wild"] = get(f"http://a.wild.test:{P}/hello")
out["apex"] = get(f"http://wild.test:{P}/hello")
out["private"] = get(f"http://private.test:{P2}/hello")
out["literal"] = raw(b"GET http://127.0.0.1:%d/hello HTTP/1.1\r\n\r\n" % P)
out["literal_direct"] = get(f"http://127.0.0.1:{P}/hello")  # NO_PROXY: straight, to no route
out["tls"] = get(f"https://secure.test:{PT}/hello", context=ssl.create_default_context(cafile="ca.pem"))
out["connect_literal"] = raw(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % P)
out["connect_other"] = raw(b"CONNECT other.test:%d HTTP/1.1\r\n\r\n" % P)
out["userinfo"] = raw(b"GET http://x:y@allowed.test:%d/hello HTTP/1.1\r\n\r\n" % P)
out["host_mismatch"] = raw(b"GET http://allowed.test:%d/hello HTTP/1.1\r\nHost: other.test\r\n\r\n" % P)
out["huge"] = raw(b"GET http://allowed.test:%d/hello HTTP/1.1\r\nX: %s\r\n\r\n" % (P, b"a" * 20000))
try:  # straight to the upstream's port: the container's own loopback has nothing there
    socket.create_connection(("127.0.0.1", P), timeout=5).close()
    out["direct"] = "connected"
except OSError as e:
    out["direct"] = type(e).__name__
try:  # a route anywhere (UDP connect sends nothing)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("192.0.2.1", 9))
    out["route"] = "a route"
except OSError as e:
    out["route"] = e.errno
print(json.dumps(out))
'''


async def run_task(api, code: str, *args: object, network: dict | None = POLICY, files=(), **extra) -> dict:
    """The program's JSON output; the result's network_usage, if any, under "usage"."""
    body = {"language": "python", "code": code, "args": [str(a) for a in args], "files": list(files),
            "limits": {"time_ms": 20000}, **extra}
    if network is not None:
        body["network"] = network
    result = await api.run(api.token, **body)
    assert result["verdict"] == "ok", result
    assert ("network_usage" in result) is (network is not None), result
    output = json.loads(result["stdout"])
    return {**output, "usage": result["network_usage"]} if network is not None and isinstance(output, dict) else output


async def test_a_task_reaches_what_its_policy_allows_and_nothing_else(egress_api, upstreams):
    ports = upstreams["ports"]
    out = await run_task(egress_api, PROBES, ports["open"], ports["private"], ports["tls"],
                         files=[{"name": "ca.pem", "content": upstreams["cert"]}])
    assert out["allowed"] == [200, f"open GET allowed.test:{ports['open']} 0"]
    assert out["post"] == [200, f"open POST allowed.test:{ports['open']} 5"]
    assert out["wild"][0] == 200 and out["tls"] == [200, f"tls GET secure.test:{ports['tls']} 0"]
    for refused in ("other", "apex"):
        assert out[refused][0] == 403, (refused, out[refused])
    assert out["literal"].startswith("HTTP/1.1 403") and out["literal_direct"][0] == "URLError"
    assert out["private"][0] == 403 and "no address that may be reached" in out["private"][1]
    assert out["connect_literal"].startswith("HTTP/1.1 403") and out["connect_other"].startswith("HTTP/1.1 403")
    assert out["userinfo"].startswith("HTTP/1.1 400") and out["host_mismatch"].startswith("HTTP/1.1 400")
    assert out["huge"].startswith("HTTP/1.1 431")
    assert out["direct"] == "ConnectionRefusedError"
    assert out["route"] in (errno.ENETUNREACH, errno.EHOSTUNREACH)  # no route of its own (runc, gVisor)
    # Counted for the task: 4 reached (allowed, post, wild, tls), 9 refused (the 403s, 400s and the 431).
    assert out["usage"]["allowed"] == 4 and out["usage"]["refused"] == 9 and out["usage"]["bytes"] > 0, out["usage"]
    status, metrics, _ = await egress_api.call("GET", "/metrics")
    counted = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line.startswith("coderund_egress")}
    assert counted['coderund_egress_connections_total{outcome="allowed"}'] >= 4
    assert counted['coderund_egress_connections_total{outcome="refused"}'] >= 9
    assert counted['coderund_egress_bytes_total{direction="in"}'] > 0 and counted['coderund_egress_bytes_total{direction="out"}'] > 0


async def test_a_policy_is_refused_where_egress_is_off_and_when_malformed(api, egress_api):
    token = await api.user("egress")
    for where, body in ((api, {"network": {"allow": ["pypi.org"]}}), (egress_api, {"network": {"allow": ["10.0.0.1"]}}),
                        (egress_api, {"network": ["pypi.org"]})):
        status, answer, _ = await where.call("POST", "/task", token=token if where is api else where.token,
                                             json={"language": "python", "code": "1", **body})
        assert status == 400 and "'network" in answer["message"], answer
    status, answer, _ = await api.call("POST", "/sandboxes", token=token, json={"network": {"allow": ["pypi.org"]}})
    assert status == 400 and "egress is off" in answer["message"], answer


async def test_without_a_policy_a_task_reaches_nothing(egress_api, upstreams):
    code = ("import json, os, urllib.request, sys\ntry:\n    urllib.request.urlopen(f'http://allowed.test:{sys.argv[1]}/hello', timeout=5)\n"
            "    r = 'reached'\nexcept Exception as e:\n    r = type(e).__name__\n"
            "print(json.dumps([r, sorted(k for k in os.environ if 'proxy' in k.lower() or k.startswith('CODERUND')),"
            " os.path.exists('/.coderund-egress')]))")
    assert await run_task(egress_api, code, upstreams["ports"]["open"], network=None) == ["URLError", [], False]


async def test_pip_installs_a_wheel_from_an_allowed_index(egress_api, upstreams):
    port = upstreams["ports"]["open"]
    code = f"""
import json, subprocess, sys
# The image's pip, unchanged: the root is read-only, so it installs into the user's home
done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                       "--index-url", "http://mirror.test:{port}/simple/", "--trusted-host", "mirror.test", "egress-demo"],
                      capture_output=True, text=True)
found = subprocess.run([sys.executable, "-c", "import egress_demo; print(egress_demo.ANSWER, egress_demo.__file__)"],
                       capture_output=True, text=True)
print(json.dumps([done.returncode, done.stderr[-300:], found.stdout.split()]))
"""
    returncode, errors, printed = await run_task(egress_api, code, limits={"time_ms": 20000, "memory_mb": 256})
    assert returncode == 0, errors
    assert " ".join(printed[:-1]) == "installed through the policy" and printed[-1].startswith(f"{WORKDIR}/.local/"), printed


async def test_the_byte_and_connection_caps_end_a_run_s_network(egress_api, upstreams):
    port = upstreams["ports"]["open"]
    download = f"""
import json, urllib.request
got = 0
try:
    with urllib.request.urlopen("http://allowed.test:{port}/big?mb={2 * MAX_MB}", timeout=20) as r:
        while chunk := r.read(65536):
            got += len(chunk)
except Exception as e:
    pass
try:
    status = urllib.request.urlopen("http://allowed.test:{port}/hello").status
except urllib.error.HTTPError as e:
    status = e.code
print(json.dumps([got, status]))
"""
    connections = f"""
import collections, json, socket
answers = collections.Counter()
for _ in range({MAX_CONNECTIONS + 5}):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(b"GET http://allowed.test:{port}/hello HTTP/1.1\\r\\n\\r\\n")
    answers[s.recv(100).decode().split(" ")[1]] += 1
    s.close()
print(json.dumps(answers))
"""
    got, then = await run_task(egress_api, download)
    assert 1024 * 1024 < got <= MAX_MB * 1024 * 1024 and then == 429  # cut at the cap; nothing more goes
    answers = await run_task(egress_api, connections)
    assert (answers.pop("usage")["allowed"], answers) == (MAX_CONNECTIONS, {"200": MAX_CONNECTIONS, "429": 5})


async def test_a_sandbox_reaches_its_policy_and_a_new_one_applies_at_once(egress_api, upstreams):
    api, port = egress_api, upstreams["ports"]["open"]
    status, made, _ = await api.call("POST", "/sandboxes", token=api.token, json={"network": {"allow": ["allowed.test"]}})
    assert status == 201 and made["network"] == {"allow": ["allowed.test"]}, made
    fetch = ("import urllib.request\ndef fetch(host):\n    try:\n        return urllib.request.urlopen(f'http://{host}:"
             f"{port}/hello', timeout=20).read().decode()\n    except urllib.error.HTTPError as e:\n        return e.code\n")

    async def reach(*hosts: str) -> list:
        status, body, _ = await api.call("POST", f"/sandboxes/{made['id']}/run", token=api.token,
                                         json={"code": f"{fetch}[fetch(h) for h in {list(hosts)!r}]"})
        assert status == 200 and not body.get("error"), body
        return json.loads(body["results"][0]["text/plain"].replace("'", '"'))

    try:
        assert await reach("allowed.test", "other.test") == [f"open GET allowed.test:{port} 0", 403]
        # An agent's usual step: pip install by a command, then import it in the running Python context
        status, body, _ = await api.call("POST", f"/sandboxes/{made['id']}/run", token=api.token, json={"code": "1"})
        status, body, _ = await api.call("POST", f"/sandboxes/{made['id']}/commands", token=api.token, json={
            "cmd": ["python3", "-m", "pip", "install", "-q", "--index-url", f"http://allowed.test:{port}/simple/",
                    "--trusted-host", "allowed.test", "egress-demo"], "timeout_s": 60})
        assert status == 200 and body["exit_code"] == 0, body
        status, body, _ = await api.call("POST", f"/sandboxes/{made['id']}/run", token=api.token,
                                         json={"code": "import egress_demo\negress_demo.ANSWER"})
        assert body["results"] == [{"text/plain": "'installed through the policy'"}], body
        status, changed, _ = await api.call("PUT", f"/sandboxes/{made['id']}/network", token=api.token,
                                            json={"allow": ["other.test"]})
        assert status == 200 and changed["network"] == {"allow": ["other.test"]}, changed
        assert await reach("allowed.test", "other.test") == [403, f"open GET other.test:{port} 0"]
        # A program that kills every process of its user's kills the forwarder too: the sandbox gets it back.
        status, body, _ = await api.call("POST", f"/sandboxes/{made['id']}/commands", token=api.token,
                                         json={"cmd": ["python3", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"]})
        assert status == 200, body
        await asyncio.sleep(1.5)
        assert await reach("other.test") == [f"open GET other.test:{port} 0"]
        status, body, _ = await api.call("PUT", f"/sandboxes/{made['id']}/network", token=api.token, json={"allow": "x"})
        assert status == 400 and "'network.allow'" in body["message"], body
    finally:
        await api.call("DELETE", f"/sandboxes/{made['id']}", token=api.token)
    status, plain, _ = await api.call("POST", "/sandboxes", token=api.token, json={})
    try:
        assert plain["network"] is None
        status, body, _ = await api.call("PUT", f"/sandboxes/{plain['id']}/network", token=api.token,
                                         json={"allow": ["allowed.test"]})
        assert status == 409, body
    finally:
        await api.call("DELETE", f"/sandboxes/{plain['id']}", token=api.token)


async def test_each_test_case_has_the_policy(egress_api, upstreams):
    port = upstreams["ports"]["open"]
    code = f"import urllib.request\nprint(urllib.request.urlopen('http://allowed.test:{port}/hello').read().decode())"
    expected = f"open GET allowed.test:{port} 0"
    result = await egress_api.run(egress_api.token, language="python", code=code, network=POLICY,
                                  tests=[{"expected": expected}] * 3)
    assert [case["verdict"] for case in result["tests"]] == ["ok"] * 3, result


async def test_live_runs_and_batch_items_take_a_policy_too(egress_api, upstreams):
    port = upstreams["ports"]["open"]
    code = f"import urllib.request\nprint(urllib.request.urlopen('http://allowed.test:{port}/hello').read().decode())"
    ws = await connect(egress_api, egress_api.token)
    try:
        await start(ws, language="python", code=code, network=POLICY)
        _, message = await until_result(ws)
    finally:
        await ws.close()
    result = message["result"]
    assert result["verdict"] == "ok" and result["stdout"] == f"open GET allowed.test:{port} 0\n", result
    status, body, _ = await egress_api.call("POST", "/tasks", token=egress_api.token, json={"tasks": [
        {"language": "python", "code": code, "network": POLICY}, {"language": "python", "code": code},
        {"language": "python", "code": code, "network": {"allow": "allowed.test"}}]})
    assert status == 201 and "'network" in body["tasks"][2]["message"], body
    reached, sealed = [await egress_api.result(egress_api.token, item["task_id"]) for item in body["tasks"][:2]]
    assert reached["verdict"] == "ok" and sealed["verdict"] == "runtime_error" and "URLError" in sealed["stderr"]
