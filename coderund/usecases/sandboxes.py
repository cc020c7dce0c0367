"""Stateful sandboxes: long-lived containers with persistent interpreters, each hosted by one worker
while it runs, and stored (its files persisted in PostgreSQL) while it is paused.

The API side (Sandboxes) owns the rules: who may see a sandbox, its cap, its end and why; it reaches
the hosting worker through the channel, and places a stored sandbox again, on any worker, at its next
call. The worker side (SandboxHost) starts each sandbox's hub (restoring its files if it has some),
passes calls to it and events back, stores idle sandboxes and ends those whose time is up; as it stops,
it stores every sandbox it hosts.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, UTC
from typing import Any

from ..access import cpu_quota_left
from ..errors import (AppError, Conflict, NotFound, PayloadTooLarge, SandboxEnded, Unauthorized, Unavailable,
                      UnsupportedLanguage, ValidationFailed)
from ..network import NetworkPolicy
from ..plugins import Plugins
from ..repository.sandbox_channel import START, Message, SandboxChannel
from ..repository.sandboxes import SandboxRow, SandboxStore, StateTooLarge
from ..repository.usage import Usage
from ..sandbox.egress import Egress, Session
from ..sandbox.engine import Engine, SandboxError
from ..sandbox.options import LABEL
from ..sandbox.pool import WarmPool
from ..sandbox.state_tar import BadState, TarCheck
from ..sandbox.stateful import Hub, HubGone, Spec
from ..sandbox_requests import SandboxLimits, SandboxRequest, StateLimits
from .admission import Admission

log = logging.getLogger(__name__)
PLACE_TIMEOUT_S = 60  # for a worker to take a new sandbox and start it
REPLY_WAIT_MS = 1000
CHECK_S = 1  # a call with no word from its worker looks at the sandbox and the worker's liveness this often
ALIVE_S, ALIVE_TTL_S = 1, 4  # a worker says it serves its sandboxes this often; its key lapses after
STOP_STORE_S = 60  # a stopping worker stores its sandboxes within this; those left end as worker_stopped
NOBODY = "65534:65534"  # a sandbox's files are read and restored as its user, inside its container
SCRIPTS = "tmp/.coderund-hub"  # the hub's own (root's, unreadable to nobody): not a sandbox's state
STATE_CHUNK = 1024 * 1024  # of the persisted tar, one row each
SWEEP_S = 1  # the worker's look at its sandboxes' idleness
REFRESH_S = 2  # and at their rows (ended or extended elsewhere)
KILLED = 128 + 9
PROBE_S = 2  # for a worker whose liveness key lapsed to answer, before its sandboxes are taken back
MOVE_WAIT_S = 5  # for a sandbox's row to say where it went, once its worker said it is not there
GONE_WAIT_S = 5  # for the reason a sandbox whose container is gone ended
METER_S = 10  # a running sandbox's CPU is counted in its owner's usage this often, and as it pauses or ends
CHARGED_OPS = ("run", "command")  # calls that start work: charged to the owner's rate, refused once the quota is spent
NOT_HERE = "not_here"  # a worker's answer for a sandbox it no longer hosts (stored, or moved): the call is tried again


class Sandboxes:
    """The API side."""

    def __init__(self, store: SandboxStore, channel: SandboxChannel, admission: Admission, *, queue: str, cap: int,
                 limits: SandboxLimits) -> None:
        self.admission = admission
        self.limits = limits
        self.store = store
        self.channel = channel
        self.queue = queue
        self.cap = cap

    async def create(self, user_id: int, request: SandboxRequest) -> SandboxRow:
        request = dataclasses.replace(request, network=self.admission.network(request.network))
        await self.admission.charge(user_id)
        row = await self.store.add(user_id, request, self.cap)
        await self._place(row)
        return await self.store.get(row.id) or row

    async def fork(self, user_id: int, sandbox_id: str) -> SandboxRow:
        """A new sandbox of the user's, with the source's limits, from a copy of its files as they are
        now (a running source is persisted first); the two share nothing after."""
        source = await self.find(user_id, sandbox_id)
        network = self.admission.network(source.network)  # within the operator's widest as it is now
        await self.admission.charge(user_id)
        if not source.stored:
            async for _ in self.call(user_id, sandbox_id, {"op": "snapshot"}, row=source):
                pass
        left_s = max(1, int((source.expires_at - datetime.now(UTC)).total_seconds()))
        row = await self.store.add(user_id, SandboxRequest(
            source.language, source.memory_mb, source.cpus, source.disk_mb, left_s, source.idle_timeout_s, source.env,
            source.metadata, source.work_folder, network), self.cap)
        if not await self.store.copy_state(source.id, row.id):
            await self.store.end(row.id, "not_placed")
            raise SandboxEnded((await self.store.get(source.id)).end_reason or "ended")
        await self._place(row)
        return await self.store.get(row.id) or row

    async def _place(self, row: SandboxRow) -> None:
        """A worker takes the sandbox and starts it (restoring its files, if it has some)."""
        reply = self.channel.new_reply()
        await self.channel.place(self.queue, {"sandbox": str(row.id), "reply": reply})
        try:
            found = await self._first(reply, PLACE_TIMEOUT_S)
        finally:
            await self.channel.forget(reply)
        if found is None:
            if row.state_generation:
                await self.store.unwake(row.id)
            else:
                await self.store.end(row.id, "not_placed")
            raise Unavailable(f"No worker started the sandbox within {PLACE_TIMEOUT_S} s; try again shortly.")
        if found.body.get("error"):
            raise Unavailable(f"The sandbox could not start: {found.body['error']['message']}")

    async def _ready(self, row: SandboxRow) -> SandboxRow:
        """The sandbox on a live worker: a stored one placed again first, and one whose worker is gone
        taken back to its last persisted point (410 worker_lost where it has none), at once."""
        deadline = time.monotonic() + PLACE_TIMEOUT_S
        while True:
            if row.worker_id is not None and row.state in ("running", "paused"):
                if await self._alive(row):
                    return row
                if await self.store.lost(row.id, row.worker_id):
                    log.warning("sandbox %s: its worker %s is gone", row.id, row.worker_id)
            elif row.stored:
                if await self.store.wake(row.id):
                    await self._place(await self.store.get(row.id) or row)
            elif time.monotonic() > deadline:
                raise Unavailable(f"The sandbox did not start within {PLACE_TIMEOUT_S} s; try again shortly.")
            else:
                await asyncio.sleep(0.2)  # starting: its create, or another call's wake, places it
            row = await self.find(row.user_id, str(row.id))

    async def find(self, user_id: int, sandbox_id: str) -> SandboxRow:
        """The user's live sandbox; 404 for anyone else's, 410 with the reason once it has ended."""
        try:
            key = uuid.UUID(sandbox_id)
        except ValueError:
            raise NotFound("No such sandbox.") from None
        row = await self.store.get(key)
        if row is None or row.user_id != user_id:
            raise NotFound("No such sandbox.")
        if row.state != "ended" and row.expires_at <= datetime.now(UTC):
            row = await self.store.end(key, "expired") or await self.store.get(key)
            self._tell_host(row)
        if row.state == "ended":
            raise SandboxEnded(row.end_reason or "ended")
        return row

    async def of_user(self, user_id: int, metadata: dict[str, str]) -> list[SandboxRow]:
        now = datetime.now(UTC)
        return [row for row in await self.store.of_user(user_id, metadata) if row.expires_at > now]

    async def by_token(self, sandbox_id: str, token: str) -> SandboxRow:
        """The live sandbox a call made inside it names (E2B's envd calls), if the token is its own:
        Unauthorized otherwise, an unknown sandbox alike; 410 once it has ended."""
        try:
            row = await self.store.get(uuid.UUID(sandbox_id))
        except ValueError:
            row = None
        if row is None or not hmac.compare_digest(row.access_token.encode(), token.encode()):
            raise Unauthorized("The sandbox's access token is missing or wrong.")
        return await self.find(row.user_id, sandbox_id)

    async def by_signature(self, sandbox_id: str, check: Callable[[str], None]) -> SandboxRow:
        """The live sandbox a signed URL (E2B's download_url, upload_url) names, if check(its token)
        passes: check raises Unauthorized otherwise; an unknown sandbox is refused as a bad signature."""
        try:
            row = await self.store.get(uuid.UUID(sandbox_id))
        except ValueError:
            row = None
        if row is None:
            raise Unauthorized("invalid signature")
        check(row.access_token)
        return await self.find(row.user_id, sandbox_id)

    async def extend(self, user_id: int, sandbox_id: str, timeout_s: int, only_longer: bool = False) -> SandboxRow:
        row = await self.find(user_id, sandbox_id)
        extended = await self.store.extend(row.id, timeout_s, self.limits.max_lifetime_s, only_longer)
        if extended is None:
            raise SandboxEnded("expired")
        return extended

    async def pause(self, user_id: int, sandbox_id: str) -> SandboxRow:
        """Stores it now, as an idle one is: its files persisted, its container released. 409 if it is
        stored already, or busy with a call; 413 if its files are over the bounds."""
        row = await self.find(user_id, sandbox_id)
        if row.stored:
            raise Conflict("The sandbox is paused already.")
        async for _ in self.call(user_id, sandbox_id, {"op": "pause"}, row=row):
            pass
        return await self.find(user_id, sandbox_id)

    async def state_bytes(self, user_id: int) -> int:
        return await self.store.state_bytes(user_id)

    async def resume(self, user_id: int, sandbox_id: str) -> SandboxRow:
        """Brings it back if paused (any call would): restored from its files if it was stored; the row
        as it is then."""
        row = await self.find(user_id, sandbox_id)
        if row.state == "paused":
            async for _ in self.call(user_id, sandbox_id, {"op": "ping"}, row=row):
                pass
        return await self.find(user_id, sandbox_id)

    async def set_network(self, user_id: int, sandbox_id: str, policy: NetworkPolicy) -> SandboxRow:
        """Replaces its network policy, in force once this returns: new connections are judged by
        it, and open ones to hosts outside it are closed. 409 for a sandbox made without
        one (its container has no way out to open)."""
        policy = self.admission.network(policy)
        assert policy is not None
        row = await self.find(user_id, sandbox_id)
        if row.network is None:
            raise Conflict("The sandbox was created without a network policy; create one with 'network' to reach hosts.")
        if row.worker_id is None or row.state == "starting":
            raise Conflict("The sandbox is still starting.")
        updated = await self.store.set_network(row.id, policy) or await self.find(user_id, sandbox_id)
        async for _ in self.call(user_id, sandbox_id, {"op": "network", "allow": list(policy.allow)}, row=row):
            pass
        return updated

    async def delete(self, user_id: int, sandbox_id: str) -> None:
        row = await self.find(user_id, sandbox_id)
        ended = await self.store.end(row.id, "deleted")
        if ended is None:
            raise SandboxEnded((await self.store.get(row.id)).end_reason or "ended")
        self._tell_host(ended)

    def _tell_host(self, row: SandboxRow | None) -> None:
        """Its worker removes it at once (it would at its next look at the rows anyway)."""
        if row is not None and row.worker_id:
            asyncio.ensure_future(self._close(row))

    async def _close(self, row: SandboxRow) -> None:
        with contextlib.suppress(Unavailable):
            await self.channel.call(row.worker_id, {"sandbox": str(row.id), "reply": "", "op": {"op": "close"}})

    async def call(self, user_id: int, sandbox_id: str, op: dict[str, Any], data: bytes = b"",
                   row: SandboxRow | None = None, client_gone: Callable[[], bool] | None = None) -> AsyncIterator[Message]:
        """The events of one call to the sandbox, its end last; a refusal (no such file, disk full...)
        as its error. 410 if the sandbox ends meanwhile. A run whose client_gone() turns true is interrupted."""
        row = row or await self.find(user_id, sandbox_id)
        if op["op"] in CHARGED_OPS:
            await self.admission.charge(user_id)
        if op["op"] in ("run", "context_create") and not op.get("context") and not op.get("language"):
            op = {**op, "language": row.language}  # the sandbox's own language's context
        for tries_left in (1, 0):
            row = await self._ready(row)
            answered = False
            try:
                async for message in self._call(row, op, data, client_gone):
                    answered = True
                    yield message
                return
            except Moved:
                if answered or not tries_left:  # tried again only where nothing of it was done
                    raise Unavailable("The sandbox moved between workers during the call; call it again.") from None
                row = await self._moved(row)

    async def _moved(self, row: SandboxRow) -> SandboxRow:
        """The sandbox once its row says where it went (its worker lets go of it a moment after it stops
        serving it there), or as it is after MOVE_WAIT_S."""
        deadline = time.monotonic() + MOVE_WAIT_S
        while True:
            now = await self.find(row.user_id, str(row.id))
            if (now.worker_id, now.state) != (row.worker_id, row.state) or time.monotonic() > deadline:
                return now
            await asyncio.sleep(0.1)

    async def _call(self, row: SandboxRow, op: dict[str, Any], data: bytes,
                    client_gone: Callable[[], bool] | None) -> AsyncIterator[Message]:
        user_id, sandbox_id = row.user_id, str(row.id)
        reply = self.channel.new_reply()
        await self.channel.open(reply)
        ended = False
        try:
            await self.channel.call(row.worker_id, {"sandbox": str(row.id), "reply": reply, "op": op}, data)
            async for message in self._replies(reply, row, client_gone):
                ended = message.body.get("type") == "end"
                if ended and (code := (message.body.get("error") or {}).get("code")):
                    if code == NOT_HERE:
                        raise Moved()
                    if code == "gone":
                        await self._ended(user_id, sandbox_id)
                    raise refusal(code, message.body["error"].get("message", code), row)
                yield message
                if ended:
                    return
        finally:
            if not ended and op["op"] == "run":  # its caller stopped reading: its client went
                with contextlib.suppress(Unavailable):
                    await self._interrupt(row, reply)
            await self.channel.forget(reply)

    async def _ended(self, user_id: int, sandbox_id: str) -> None:
        """410 with the reason its worker records, once it has: a moment after the container is gone."""
        deadline = time.monotonic() + GONE_WAIT_S
        while time.monotonic() < deadline:
            await self.find(user_id, sandbox_id)
            await asyncio.sleep(0.2)
        raise SandboxEnded("its container is gone")

    async def _first(self, reply: str, timeout_s: float) -> Message | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if messages := await self.channel.replies(reply, START, REPLY_WAIT_MS):
                return messages[0]
        return None

    async def _replies(self, reply: str, row: SandboxRow,
                       client_gone: Callable[[], bool] | None) -> AsyncIterator[Message]:
        """Messages on the reply stream until the caller stops, while the sandbox lives."""
        after, quiet_s, interrupted, moved = START, 0.0, False, False
        while True:
            if client_gone is not None and not interrupted and client_gone():
                interrupted = True
                await self._interrupt(row, reply)
            messages = await self.channel.replies(reply, after, REPLY_WAIT_MS)
            for message in messages:
                after = message.id
                yield message
            quiet_s = 0.0 if messages else quiet_s + REPLY_WAIT_MS / 1000
            if quiet_s >= CHECK_S:
                quiet_s = 0.0
                if not await self._still_there(row):
                    if moved:
                        raise Moved()
                    moved = True  # its worker lets go of it as a pause's own end: that end may be on its way

    async def _still_there(self, row: SandboxRow) -> bool:
        """Whether the call may still be answered; raises once it cannot: the sandbox ended (410), or its
        worker is gone (the sandbox back at its last persisted point, or 410 worker_lost). False: it moved."""
        now = await self.find(row.user_id, str(row.id))
        if now.worker_id == row.worker_id and await self._alive(row):
            return True
        if now.worker_id == row.worker_id and await self.store.lost(row.id, row.worker_id or ""):
            await self.find(row.user_id, str(row.id))  # 410 worker_lost where it had no persisted point
            raise Unavailable("The sandbox's worker was lost during the call: the sandbox is back as it was when last"
                              " paused; call it again.")
        return False

    async def _alive(self, row: SandboxRow) -> bool:
        """Whether the sandbox's worker serves: its liveness key is there, or, where it has lapsed (a
        worker stalled for seconds), it answers a probe within PROBE_S. A dead worker is told in seconds."""
        if await self.channel.is_alive(row.worker_id or ""):
            return True
        reply = self.channel.new_reply()
        await self.channel.open(reply)
        try:
            await self.channel.call(row.worker_id or "", {"sandbox": str(row.id), "reply": reply, "op": {"op": "alive"}})
            return bool(await self.channel.replies(reply, START, PROBE_S * 1000))
        finally:
            await self.channel.forget(reply)

    async def _interrupt(self, row: SandboxRow, reply: str) -> None:
        await self.channel.call(row.worker_id, {"sandbox": str(row.id), "reply": "", "target": reply,
                                                "op": {"op": "interrupt"}})


async def checked(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A persisted state's chunks, each passed once TarCheck has seen it: SandboxError at a bad member."""
    check = TarCheck()
    async for chunk in chunks:
        try:
            check.feed(chunk)
        except BadState as e:
            raise SandboxError(f"the sandbox's persisted state was refused: {e}") from None
        yield chunk


class Moved(Exception):
    """The sandbox is no longer on the worker the call went to."""


REFUSALS: dict[str, type[AppError]] = {"state_too_large": PayloadTooLarge, "busy": Conflict, "no_context": NotFound, "not_found": NotFound,
                                       "is_folder": Conflict, "disk_quota": PayloadTooLarge, "exists": Conflict,
                                       "no_stdin": Conflict, "pause_failed": Unavailable, "too_many": Conflict,
                                       "exhausted": Conflict, "tmp_full": Conflict}


def refusal(code: str, message: str, row: SandboxRow) -> AppError:
    """The hub's refusal as the error to answer with (its code kept as `refusal`, for the foreign
    APIs that tell them apart): the disk's is named with its quota."""
    if code == "disk_quota":
        message = f"{message}: its disk quota is {row.disk_mb} MiB."
    error = REFUSALS.get(code, ValidationFailed)(message[:1].upper() + message[1:])
    error.refusal = code
    return error


@dataclass(eq=False)
class Hosted:
    row: SandboxRow
    hub: Hub
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0
    paused: bool = False
    metered_cpu_ms: int = 0  # the container's CPU time at the last count
    metered_at: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runs: dict[str, str] = field(default_factory=dict)  # a run's reply key → the hub's request id
    egress: Session | None = None  # its way out, with a network policy


class SandboxHost:
    """The worker side: the sandboxes this worker hosts."""

    def __init__(self, store: SandboxStore, channel: SandboxChannel, engine: Engine, plugins: Plugins, usage: Usage, *,
                 worker_id: str, queue: str, max_sandboxes: int, pool: WarmPool, cpu_s_per_day: int = 0,
                 egress: Egress | None = None, state: StateLimits = StateLimits()) -> None:
        self.state = state  # the bounds of a sandbox's persisted files, and of a user's together
        self.usage = usage
        self.egress = egress  # None: egress is off
        self.cpu_s_per_day = cpu_s_per_day  # the default daily quota; a user's own replaces it
        self.pool = pool  # sandboxes started ahead of their creates, of the default spec (and those in demand)
        self.store = store
        self.channel = channel
        self.engine = engine
        self.plugins = plugins
        self.worker_id = worker_id
        self.queue = queue
        self.max_sandboxes = max_sandboxes
        self.hosted: dict[uuid.UUID, Hosted] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        await asyncio.gather(self._beating(), self._placing(), self._serving(), self._sweeping(), self.pool.run())

    async def close(self, reason: str = "worker_stopped") -> None:
        """Stores every sandbox it hosts (within STOP_STORE_S; those left end, with the reason), so
        that any other worker takes them up at their next call."""
        await self.pool.close()
        for task in list(self._tasks):
            task.cancel()
        deadline = time.monotonic() + STOP_STORE_S
        with contextlib.suppress(Unavailable):  # alive while it stores: calls wait rather than take it for lost
            await self.channel.alive(self.worker_id, STOP_STORE_S + ALIVE_TTL_S)
        for hosted in list(self.hosted.values()):
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                    await self._store(hosted, wait=True)
            except (TimeoutError, StateTooLarge, SandboxError, Unavailable) as e:
                log.warning("sandbox %s: not stored as its worker stops: %s", hosted.row.id, e)
                await self._end(hosted, reason)
        with contextlib.suppress(Unavailable):
            await self.channel.gone(self.worker_id)

    async def _beating(self) -> None:
        async def step() -> None:
            await self.channel.alive(self.worker_id, ALIVE_TTL_S)
            await asyncio.sleep(ALIVE_S)

        await self._forever(step, ALIVE_S)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forever(self, step: Any, pause_s: float) -> None:
        """A loop that outlives outages of Redis or PostgreSQL."""
        while True:
            try:
                await step()
            except Unavailable as e:
                log.warning("sandboxes: %s", e.message)
                await asyncio.sleep(pause_s)
            except Exception:
                log.exception("sandboxes: unexpected failure")
                await asyncio.sleep(pause_s)

    async def _placing(self) -> None:
        async def step() -> None:
            if len(self.hosted) >= self.max_sandboxes:
                await asyncio.sleep(SWEEP_S)
                return
            message = await self.channel.take_placement(self.queue, 1)
            if message is not None:
                self._spawn(self._start(uuid.UUID(message["sandbox"]), message["reply"]))

        await self._forever(step, SWEEP_S)

    async def _start(self, sandbox_id: uuid.UUID, reply: str) -> None:
        row = await self.store.claim(sandbox_id, self.worker_id)
        if row is None:
            return  # it ended before any worker took it: its creator has given up
        egress = hub = None
        try:
            plugin = self.plugins.get(row.language)
            if row.network is not None:
                if self.egress is None:
                    raise SandboxError("it has a network policy and this worker's egress is off")
                egress = await self.egress.open(row.id.hex, row.network)
            spec = Spec(plugin.image, row.memory_mb, row.cpus, row.disk_mb, tuple(sorted(row.env.items())), row.work_folder,
                        egress and str(egress.folder))
            hub = (None if egress else self.pool.take(spec)) or await Hub.start(self.engine, spec, {f"{LABEL}.sandbox": str(row.id)})
            self.pool.wake()  # a sandbox runs nothing until asked: its replacement may start at once
            if row.state_generation:
                await self._restore(row, hub)
        except (SandboxError, KeyError, UnsupportedLanguage) as e:  # the last: a deployment without that plugin
            log.warning("sandbox %s: could not start: %s", row.id, e)
            if egress is not None:
                await self.egress.close(egress)
            if hub is not None:
                self.engine.discard(hub.box)
            if row.state_generation:  # its files stay, for another try
                await self.store.unwake(row.id)
            else:
                await self.store.end(row.id, "start_failed")
            await self.channel.reply(reply, {"type": "end", "error": {"code": "start_failed", "message": str(e)}})
            return
        hosted = Hosted(row, hub, egress=egress)
        self.hosted[row.id] = hosted
        # Interpreter memory is never carried over (docs/internals.md says why): a restore is of files.
        if not await self.store.started(row.id, hub.box.id, "files" if row.state_generation else None):
            await self._end(hosted, None)
            return
        self._spawn(self._watch(hosted))
        await self.channel.reply(reply, {"type": "end"})

    async def _watch(self, hosted: Hosted) -> None:
        """A container that ends by itself: the hub died (out of memory, killed). Its reason recorded."""
        await hosted.hub.wait_closed()
        if self.hosted.get(hosted.row.id) is not hosted:
            return
        reason = "crashed"
        with contextlib.suppress(SandboxError):
            state = await self.engine.state(hosted.hub.box.id)
            if state.get("OOMKilled") or state.get("ExitCode") == KILLED:
                reason = "out_of_memory"
            else:
                reason = f"crashed (exit {state.get('ExitCode')})"
        await self._end(hosted, reason)

    async def _end(self, hosted: Hosted, reason: str | None, stored: bool = False) -> None:
        """Removes its container; records the reason (None: recorded already, elsewhere), or with stored
        lets go of the sandbox, its files persisted, for any worker to take up."""
        if self.hosted.pop(hosted.row.id, None) is None:
            return
        if stored:  # first: a call that finds it gone from here finds it stored a moment later
            await self.store.release(hosted.row.id, self.worker_id)
        with contextlib.suppress(Unavailable):
            await self._meter(hosted)
        self.engine.discard(hosted.hub.box)
        if hosted.egress is not None and self.egress is not None:
            await self.egress.close(hosted.egress)
        if not stored and reason is not None:
            with contextlib.suppress(Unavailable):
                await self.store.end(hosted.row.id, reason)
        log.info("sandbox %s %s", hosted.row.id, "stored" if stored else f"ended: {reason or 'ended elsewhere'}")

    def _folders(self, row: SandboxRow) -> list[str]:
        """What a sandbox's state is: its work folder (its home too: pip's --user installs) and /tmp."""
        return [row.work_folder.strip("/"), "tmp"]

    async def _tar(self, hosted: Hosted) -> AsyncIterator[bytes]:
        """Its files as a tar made inside it, as its user (what that user cannot read is not taken)."""
        buffer = bytearray()
        # What is in the folders, not the folders themselves: their owner (root) and mode are the container's.
        async for data in self.engine.exec_stream(hosted.hub.box.id, [
                "sh", "-c", f'cd / && find "$@" -mindepth 1 -maxdepth 1 ! -path {SCRIPTS} -print0'
                " | tar -cf - --null --ignore-failed-read -T -", "sh", *self._folders(hosted.row)],
                NOBODY, ok=(0, 1)):  # 1: a file changed as it was read
            buffer += data
            while len(buffer) >= STATE_CHUNK:
                yield bytes(buffer[:STATE_CHUNK])
                del buffer[:STATE_CHUNK]
        if buffer:
            yield bytes(buffer)

    async def _restore(self, row: SandboxRow, hub: Hub) -> None:
        """The sandbox's own persisted tar, unpacked inside its new container as its user: nothing it
        holds can reach past what that user's own code can: tar drops leading slashes and refuses `..`,
        and nobody owns no file of root's and writes nothing on the read-only root (a member there
        fails the restore); what a symlink in it reaches, that user reaches anyway. And checked on its
        way: a device or a FIFO fails it too."""
        async for _ in self.engine.exec_stream(hub.box.id, ["tar", "-C", "/", "-xf", "-"], NOBODY,
                                               stdin=checked(self.store.load_state(row.id, row.state_generation))):
            pass

    async def _persist(self, hosted: Hosted, *, wait: bool = False) -> str | None:
        """Its files as its new persisted point; the refusal's code if it cannot be now (busy with a call,
        unless wait: a stopping worker's calls are cancelled)."""
        async with hosted.lock:
            if hosted.busy and not wait:
                return "busy"
            if self.hosted.get(hosted.row.id) is not hosted:
                return NOT_HERE
            if hosted.paused:  # frozen: nothing runs in it, nor would the tar
                await self.engine.unpause(hosted.hub.box.id)
                hosted.paused = False
                await self.store.set_state(hosted.row.id, "running")
            size = await self.store.save_state(hosted.row.id, self._tar(hosted), max_bytes=self.state.max_bytes,
                                               user_max_bytes=self.state.user_max_bytes)
            log.info("sandbox %s: %d bytes of files persisted", hosted.row.id, size)
            return None

    async def _store(self, hosted: Hosted, *, wait: bool = False) -> str | None:
        """Persists it and lets it go (its container released); the refusal's code if not."""
        refused = await self._persist(hosted, wait=wait)
        if refused is None:
            await self._end(hosted, None, stored=True)
        return refused

    async def _serving(self) -> None:
        after = START

        async def step() -> None:
            nonlocal after
            for message in await self.channel.calls(self.worker_id, after, REPLY_WAIT_MS):
                after = message.id
                self._spawn(self._serve(message))

        await self._forever(step, SWEEP_S)

    async def _serve(self, message: Message) -> None:
        body, reply = message.body, message.body.get("reply", "")
        op = body["op"]
        if op["op"] == "alive":  # an API process's probe: any answer will do
            await self.channel.reply(reply, {"type": "end"}, opened=True)
            return
        hosted = self.hosted.get(uuid.UUID(body["sandbox"]))
        if hosted is None:
            if reply:
                await self.channel.reply(reply, {"type": "end", "error": {"code": NOT_HERE, "message": "no such sandbox here"}},
                                         opened=True)
            return
        if op["op"] == "close":
            await self._end(hosted, None)
            return
        if op["op"] == "network":
            if hosted.egress is not None and self.egress is not None:
                self.egress.replace(hosted.egress, NetworkPolicy(tuple(op["allow"])))
            if reply:
                await self.channel.reply(reply, {"type": "end"}, opened=True)
            return
        if op["op"] in ("pause", "snapshot"):
            await self.channel.reply(reply, await self._persisted(hosted, op["op"] == "pause"), opened=True)
            return
        if op["op"] == "interrupt":
            op = {**op, "target": hosted.runs.get(body.get("target", ""), "")}
        if op["op"] == "write":
            op = {**op, "data": base64.b64encode(message.data).decode()}
        hosted.busy += 1
        try:
            if not await self._resume(hosted):
                raise Moved()
            async for event in hosted.hub.call(op, on_id=lambda rid: hosted.runs.__setitem__(reply, rid)):
                data = base64.b64decode(event.pop("data")) if event.get("type") == "chunk" else b""
                if reply:
                    await self.channel.reply(reply, event, data, opened=True)
        except (HubGone, SandboxError) as e:
            if reply:
                await self.channel.reply(reply, {"type": "end", "error": {"code": "gone", "message": str(e)}}, opened=True)
        except Moved:  # stored while the call waited for it
            if reply:
                await self.channel.reply(reply, {"type": "end", "error": {"code": NOT_HERE, "message": "stored meanwhile"}},
                                         opened=True)
        finally:
            hosted.runs.pop(reply, None)
            hosted.busy -= 1
            hosted.last_used = time.monotonic()

    async def _persisted(self, hosted: Hosted, release: bool) -> dict[str, Any]:
        """A pause's (release) or a fork's snapshot's end event."""
        try:
            refused = await (self._store(hosted) if release else self._persist(hosted))
        except StateTooLarge as e:
            return {"type": "end", "error": {"code": "state_too_large", "message": f"the sandbox was not paused: {e}"}}
        except (SandboxError, Unavailable) as e:
            return {"type": "end", "error": {"code": "pause_failed", "message": f"its files could not be persisted: {e}"}}
        if refused == "busy":
            return {"type": "end", "error": {"code": "busy", "message": "the sandbox is busy with a call; pause it once that ends"}}
        return {"type": "end", "error": {"code": refused, "message": "stored meanwhile"}} if refused else {"type": "end"}

    async def _resume(self, hosted: Hosted) -> bool:
        """Thawed if frozen; False if it is no longer hosted here (stored meanwhile)."""
        async with hosted.lock:
            if self.hosted.get(hosted.row.id) is not hosted:
                return False
            if hosted.paused:
                await self.engine.unpause(hosted.hub.box.id)
                hosted.paused = False
                await self.store.set_state(hosted.row.id, "running")
            return True

    async def _sweeping(self) -> None:
        refreshed = 0.0

        async def step() -> None:
            nonlocal refreshed
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for hosted in list(self.hosted.values()):
                if not hosted.paused and now - hosted.metered_at >= METER_S and not await self._meter(hosted):
                    await self._pause(hosted)
                elif not hosted.paused and not hosted.busy and now - hosted.last_used >= hosted.row.idle_timeout_s:
                    self._spawn(self._idle(hosted))
            if now - refreshed >= REFRESH_S and self.hosted:
                refreshed = now
                await self._refresh()

        await self._forever(step, SWEEP_S)

    async def _meter(self, hosted: Hosted) -> bool:
        """Counts what the sandbox spent since the last count in its owner's usage; False once the
        owner's daily CPU quota is spent (the sandbox is then paused: background work stops, and a
        call to it is refused until the quota renews)."""
        now = time.monotonic()
        try:
            cpu_ms = await self.engine.cpu_ms(hosted.hub.box.id)
        except SandboxError:
            return True  # its container is gone: its watch ends it
        spent, hosted.metered_cpu_ms = max(cpu_ms - hosted.metered_cpu_ms, 0), cpu_ms
        wall_ms, hosted.metered_at = (0 if hosted.paused else int((now - hosted.metered_at) * 1000)), now
        user_id = hosted.row.user_id
        if spent or wall_ms:
            await self.usage.add(user_id, hosted.row.language, spent, wall_ms)
        quota, used_ms = await self.usage.quota(user_id, datetime.now(UTC).date())
        return cpu_quota_left(used_ms, self.cpu_s_per_day if quota.cpu_s_per_day is None else quota.cpu_s_per_day)

    async def _idle(self, hosted: Hosted) -> None:
        """Stored as it idles; frozen where it cannot be (its files over the bounds, the engine failing)."""
        hosted.last_used = time.monotonic()  # one try per idle spell
        try:
            if await self._store(hosted) is None:
                return
        except (StateTooLarge, SandboxError, Unavailable) as e:
            log.warning("sandbox %s: not stored as it idles, frozen instead: %s", hosted.row.id, e)
        await self._pause(hosted)

    async def _pause(self, hosted: Hosted) -> bool:
        """Freezes it (no CPU, memory kept), as it is when its owner's CPU quota is spent. Whether it
        is paused now: not while a call to it runs."""
        async with hosted.lock:
            if hosted.paused:
                return True
            if hosted.busy or self.hosted.get(hosted.row.id) is not hosted:
                return False
            await self._meter(hosted)
            try:
                await self.engine.pause(hosted.hub.box.id)
            except SandboxError as e:
                log.warning("sandbox %s: could not pause: %s", hosted.row.id, e)
                return False
            hosted.paused = True
            await self.store.set_state(hosted.row.id, "paused")
            return True

    async def _refresh(self) -> None:
        """Ends what ended elsewhere (DELETE) or whose lifetime is over; takes in extensions."""
        now = datetime.now(UTC)
        for row in await self.store.rows(list(self.hosted)):
            hosted = self.hosted.get(row.id)
            if hosted is None:
                continue
            if row.state == "ended" or row.worker_id != self.worker_id:  # or taken for lost, and moved
                await self._end(hosted, None)
            elif row.expires_at <= now:
                await self._end(hosted, "expired")
            else:
                hosted.row = row
