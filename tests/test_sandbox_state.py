"""Sandboxes that outlive their worker, under runc and gVisor: a pause persists a sandbox's files and
releases its container; the next call restores it on any worker; a worker that stops stores what it
hosts; one killed outright is noticed at once; a fork is a sandbox of its own; and a sandbox's state
is its own, and stays inside its folders."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import docker
import psycopg
import pytest

from tests.conftest import RUNTIMES, api_of, free_port, gvisor_missing, own_server
from tests.test_sandboxes import command, container_exists, container_of_sandbox, create, run, wait_for

pytestmark = pytest.mark.timeout(600)
PYTHON_IMAGE = "coderund/python:bookworm"
SITE = ".local/lib/python3.11/site-packages"  # pip install --user's, under the home (the work folder)


@pytest.fixture(scope="module")
async def owner(runtime_api):
    return await runtime_api.user("durable")


async def sandbox(api, token, box):
    status, found, _ = await api.call("GET", f"/sandboxes/{box['id']}", token=token)
    assert status == 200, found
    return found


async def pause(api, token, box):
    status, found, _ = await api.call("POST", f"/sandboxes/{box['id']}/pause", token=token)
    assert status == 200, found
    assert found["state"] == "paused" and found["stored"] and found["persisted_bytes"] > 0, found
    return found


async def leave_files(api, token, box):
    """Files in each folder a sandbox's state holds, and a variable in its interpreter's memory."""
    status, _, _ = await api.call("PUT", f"/sandboxes/{box['id']}/files/data/in.txt", token=token, data=b"work folder\n")
    assert status == 201
    await command(api, token, box, f"echo in tmp > /tmp/t.txt && mkdir -p ~/{SITE} && echo 'X = 7' > ~/{SITE}/mine.py")
    await run(api, token, box, "kept_in_memory = 1")


async def files_are_back(api, token, box):
    found = await command(api, token, box, "cat data/in.txt /tmp/t.txt; python3 -c 'import mine; print(mine.X)'")
    assert found["stdout"] == "work folder\nin tmp\n7\n", found
    lost = await run(api, token, box, "kept_in_memory")
    assert lost["error"]["name"] == "NameError"  # files came back, the interpreter is fresh: and said so
    assert (await sandbox(api, token, box))["restored"] == "files"


async def test_pause_persists_files_releases_the_container_and_a_call_restores_them(runtime_api, owner):
    box = await create(runtime_api, owner)
    try:
        await leave_files(runtime_api, owner, box)
        container = await container_of_sandbox(runtime_api.settings, box["id"])
        started = time.monotonic()
        paused = await pause(runtime_api, owner, box)
        assert time.monotonic() - started < 30 and paused["restored"] is None
        await wait_for(lambda: not container_exists(container), 15)
        status, body, _ = await runtime_api.call("POST", f"/sandboxes/{box['id']}/pause", token=owner)
        assert status == 409, body
        status, usage, _ = await runtime_api.call("GET", "/account/usage", token=owner)
        assert status == 200 and usage["sandbox_state_bytes"] >= paused["persisted_bytes"]
        await files_are_back(runtime_api, owner, box)
        assert await container_of_sandbox(runtime_api.settings, box["id"]) != container
        listed = (await runtime_api.call("GET", f"/sandboxes/{box['id']}/files?path=data", token=owner))[1]
        assert [e["name"] for e in listed["entries"]] == ["in.txt"]
    finally:
        await runtime_api.call("DELETE", f"/sandboxes/{box['id']}", token=owner)
    async with await psycopg.AsyncConnection.connect(runtime_api.settings.database_url) as conn:
        left = await (await conn.execute("SELECT count(*) FROM sandbox_state WHERE sandbox_id = %s", (box["id"],))).fetchone()
    assert left[0] == 0  # deleted with the sandbox


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    if request.param == "runsc" and (missing := gvisor_missing()):
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI runs every test under both runtimes")
        pytest.skip(missing)
    return request.param


@contextlib.asynccontextmanager
async def deployment(settings, spawn, name, runtime, worker=None, **changes):
    """An API and a worker (with the worker's own changes) as processes of their own, on a queue of their
    own; its settings, the worker's process, a client and a user."""
    s = dataclasses.replace(settings, queue=f"{settings.queue}.{name}.{runtime}", port=free_port(), runtime=runtime,
                            **changes)
    spawn(s, "--role", "api")
    process = spawn(dataclasses.replace(s, **(worker or {})), "--role", "worker")
    async with api_of(s) as api:
        yield s, process, api, await api.user(name)


async def test_a_graceful_stop_stores_live_and_paused_sandboxes_for_the_next_worker(settings, spawn, runtime):
    async with deployment(settings, spawn, "stop", runtime) as (s, first, api, token):
        paused, live = await create(api, token), await create(api, token)
        for box in (paused, live):
            await leave_files(api, token, box)
        await pause(api, token, paused)
        first.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait, 90) == 0  # (never blocking the loop: this process serves runtime_api)
        found = await sandbox(api, token, live)
        assert found["state"] == "paused" and found["stored"], found  # stored as its worker stopped, not ended
        spawn(s, "--role", "worker")
        for box in (paused, live):
            await files_are_back(api, token, box)


async def test_a_killed_worker_s_sandboxes_come_back_from_their_last_persisted_point(settings, spawn, runtime):
    async with deployment(settings, spawn, "kill", runtime) as (s, doomed, api, token):
        kept, never = await create(api, token), await create(api, token)
        await leave_files(api, token, kept)
        await pause(api, token, kept)
        await command(api, token, kept, "echo after the pause > later.txt")  # back on the worker, then lost with it
        doomed.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait)
        started = time.monotonic()
        status, body, _ = await api.call("POST", f"/sandboxes/{never['id']}/run", token=token, json={"code": "1"})
        assert status == 410 and "worker_lost" in body["message"], body  # no persisted point: lost, said at once
        assert time.monotonic() - started < 10
        spawn(s, "--role", "worker")
        await files_are_back(api, token, kept)
        assert (await command(api, token, kept, "ls later.txt"))["exit_code"] != 0  # what changed since is lost


async def test_a_fork_is_a_sandbox_of_its_own(runtime_api, owner):
    source = await create(runtime_api, owner, memory_mb=512, metadata={"case": "fork"})
    forks = []
    try:
        await leave_files(runtime_api, owner, source)
        status, fork, _ = await runtime_api.call("POST", f"/sandboxes/{source['id']}/fork", token=owner)
        assert status == 201, fork
        forks.append(fork)
        assert fork["id"] != source["id"] and fork["memory_mb"] == 512 and fork["metadata"] == {"case": "fork"}
        assert fork["state"] == "running" and fork["restored"] == "files"
        await files_are_back(runtime_api, owner, fork)
        await command(runtime_api, owner, fork, "echo fork > data/in.txt && echo mine > fork.txt")
        await command(runtime_api, owner, source, "echo source > source.txt")
        assert (await command(runtime_api, owner, source, "cat data/in.txt; ls"))["stdout"].split() == [
            "work", "folder", "data", "source.txt"]
        assert (await command(runtime_api, owner, fork, "cat data/in.txt; ls"))["stdout"].split() == ["fork", "data", "fork.txt"]
        await pause(runtime_api, owner, source)  # a stored source forks too, without waking
        status, second, _ = await runtime_api.call("POST", f"/sandboxes/{source['id']}/fork", token=owner)
        assert status == 201, second
        forks.append(second)
        assert (await command(runtime_api, owner, second, "ls"))["stdout"].split() == ["data", "source.txt"]
        assert (await sandbox(runtime_api, owner, source))["stored"]
    finally:
        for box in (source, *forks):
            await runtime_api.call("DELETE", f"/sandboxes/{box['id']}", token=owner)


def crafted(*members):
    """A tar as a hostile store would hold it: (TarInfo fields, data) each."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def swap_state(settings, box, data):
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await conn.execute("DELETE FROM sandbox_state WHERE sandbox_id = %s AND seq > 0", (box["id"],))
        await conn.execute("UPDATE sandbox_state SET data = %s WHERE sandbox_id = %s", (data, box["id"]))


class TestHostile:
    async def test_anothers_sandbox_cannot_be_paused_resumed_forked_or_read(self, runtime_api, owner):
        box = await create(runtime_api, owner)
        stranger = await runtime_api.user("stranger")
        try:
            await leave_files(runtime_api, owner, box)
            await pause(runtime_api, owner, box)
            for method, path in (("POST", "/pause"), ("POST", "/resume"), ("POST", "/fork"), ("GET", ""),
                                 ("GET", "/files/data/in.txt"), ("POST", "/run")):
                status, body, _ = await runtime_api.call(method, f"/sandboxes/{box['id']}{path}", token=stranger,
                                                         json={"code": "1"})
                assert status == 404, (method, path, body)
            assert (await sandbox(runtime_api, owner, box))["stored"]  # untouched by any of it
            await files_are_back(runtime_api, owner, box)
        finally:
            await runtime_api.call("DELETE", f"/sandboxes/{box['id']}", token=owner)

    async def test_a_tampered_state_stays_inside_its_sandbox(self, runtime_api, owner):
        """The restore unpacks as the sandbox's user inside its new container: a leading slash is dropped,
        and `..`, a symlink to climb out of, a device or a path outside its folders fails the restore
        (the state is kept)."""
        box = await create(runtime_api, owner)
        try:
            await pause(runtime_api, owner, box)
            await swap_state(runtime_api.settings, box, crafted(({"name": "/box/abs.txt"}, b"a")))
            listed = await command(runtime_api, owner, box, "ls")  # (gVisor 20221219: `ls /box` is EINVAL)
            assert listed["stdout"].split() == ["abs.txt"], listed  # the leading slash dropped: inside, as it was
            for members in ([({"name": "../../box/dots.txt"}, b"d")],
                            [({"name": "box/out", "type": tarfile.SYMTYPE, "linkname": "/etc"}, b""),
                             ({"name": "box/out/evil.txt"}, b"x")],
                            [({"name": "box/dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, b"")],
                            [({"name": "etc/evil.txt"}, b"x")]):
                if not (await sandbox(runtime_api, owner, box))["stored"]:
                    await pause(runtime_api, owner, box)
                await swap_state(runtime_api.settings, box, crafted(*members))
                status, body, _ = await runtime_api.call("POST", f"/sandboxes/{box['id']}/run", token=owner,
                                                         json={"code": "1"})
                assert status == 503 and "could not start" in body["message"], (members, body)
                assert (await sandbox(runtime_api, owner, box))["stored"]  # refused whole, and kept for the owner
        finally:
            await runtime_api.call("DELETE", f"/sandboxes/{box['id']}", token=owner)

    async def test_a_state_over_its_bound_is_refused_and_nothing_kept(self, runtime_api, owner):
        async with own_server(runtime_api.settings, sandbox_state_max_mb=1, queue=f"{runtime_api.settings.queue}.bounded") as small:
            token = await small.user("bounded")
            box = await create(small, token)
            try:
                await command(small, token, box, "head -c 2000000 /dev/urandom > big.bin")
                status, body, _ = await small.call("POST", f"/sandboxes/{box['id']}/pause", token=token)
                assert status == 413 and "1 MiB" in body["message"], body
                found = await sandbox(small, token, box)
                assert not found["stored"] and found["persisted_bytes"] == 0
                assert (await command(small, token, box, "wc -c < big.bin"))["stdout"] == "2000000\n"
            finally:
                await small.call("DELETE", f"/sandboxes/{box['id']}", token=token)


def test_the_tar_check_passes_what_tar_writes_and_refuses_devices_fifos_and_garbage():
    """Fed in chunks of every size, as rows of a store may hold it."""
    from coderund.sandbox.state_tar import BadState, TarCheck

    plain = crafted(({"name": "box/" + "long" * 40}, b"x" * 1000), ({"name": "box/d", "type": tarfile.DIRTYPE}, b""),
                    ({"name": "box/l", "type": tarfile.SYMTYPE, "linkname": "/etc"}, b""))
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("box/é" * 60)
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    for good in (plain, pax.getvalue()):
        for size in (1, 7, 512, 100_000):
            check = TarCheck()
            for at in range(0, len(good), size):
                check.feed(good[at:at + size])
    for bad in (crafted(({"name": "box/dev", "type": tarfile.CHRTYPE}, b"")),
                crafted(({"name": "box/blk", "type": tarfile.BLKTYPE}, b"")),
                crafted(({"name": "box/fifo", "type": tarfile.FIFOTYPE}, b"")),
                crafted(({"name": "box/a"}, b"y" * 600), ({"name": "box/dev", "type": tarfile.CHRTYPE}, b"")),
                b"not a tar at all" * 64):
        with pytest.raises(BadState):
            TarCheck().feed(bad)


ENGINE2 = Path("/tmp/coderund-engine2")  # kept between runs: the python image is loaded into it once


@pytest.fixture
def engine2():
    """A second Docker engine, a second "host": its own data root, exec root and unix socket, no bridge,
    no iptables, no registry (the python image comes from the system engine by docker save | load)."""
    socket_path = ENGINE2 / "docker.sock"
    url = f"unix://{socket_path}"
    ENGINE2.mkdir(exist_ok=True)
    (ENGINE2 / "daemon.json").write_text(json.dumps({"runtimes": {"runsc": {"path": "/usr/bin/runsc",
                                                                             "runtimeArgs": ["--network=none"]}}}))
    with open(ENGINE2 / "dockerd.log", "ab") as log:
        dockerd = subprocess.Popen(["dockerd", "--data-root", str(ENGINE2 / "data"), "--exec-root", str(ENGINE2 / "exec"),
                                    "--pidfile", str(ENGINE2 / "docker.pid"), "-H", url, "--config-file",
                                    str(ENGINE2 / "daemon.json"), "--bridge=none", "--iptables=false",
                                    "--ip6tables=false"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=url)
                break
            except docker.errors.DockerException:
                assert time.monotonic() < deadline and dockerd.poll() is None, (ENGINE2 / "dockerd.log").read_text()[-2000:]
                time.sleep(0.5)
        for leftover in client.api.containers(all=True, quiet=True):
            client.api.remove_container(leftover["Id"], force=True)
        if not client.api.images(name=PYTHON_IMAGE):
            subprocess.run(f"docker save {PYTHON_IMAGE} | docker -H {url} load -q", shell=True, check=True)
        client.close()
        yield dockerd, url
    finally:
        if dockerd.poll() is None:
            dockerd.terminate()
            dockerd.wait(60)


async def test_two_hosts_one_stops_and_its_sandboxes_go_on_on_the_other(settings, spawn, runtime, engine2):
    dockerd, url = engine2
    async with deployment(settings, spawn, "hosts", runtime, {"docker_url": url}, warm_max=0, warm_sandboxes=0) \
            as (s, host_a, api, token):
        paused, live = await create(api, token), await create(api, token)
        on_a = {c["Id"] for c in docker.DockerClient(base_url=url).api.containers(quiet=True)}
        assert await container_of_sandbox(s, live["id"]) in on_a  # made on the second engine
        for box in (paused, live):
            await leave_files(api, token, box)
        await pause(api, token, paused)
        host_a.send_signal(signal.SIGTERM)  # host A goes: its worker, then its engine
        assert await asyncio.to_thread(host_a.wait, 90) == 0
        dockerd.terminate()
        await asyncio.to_thread(dockerd.wait, 60)
        spawn(s, "--role", "worker")  # host B: the system engine
        for box in (paused, live):
            await files_are_back(api, token, box)
            assert await container_of_sandbox(s, box["id"]) not in on_a
