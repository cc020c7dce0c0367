"""Stateful sandboxes: long-lived containers with persistent interpreters, each hosted by one worker.

The API side (Sandboxes) owns the rules: who may see a sandbox, its cap, its end and why; it reaches
the hosting worker through the channel. The worker side (SandboxHost) starts each sandbox's hub,
passes calls to it and events back, pauses idle sandboxes and ends those whose time is up.
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
from ..repository.sandboxes import SandboxRow, SandboxStore
from ..repository.usage import Usage
from ..sandbox.egress import Egress, Session
from ..sandbox.engine import Engine, SandboxError
from ..sandbox.options import LABEL
from ..sandbox.pool import WarmPool
from ..sandbox.stateful import Hub, HubGone, Spec
from ..sandbox_requests import SandboxLimits, SandboxRequest
from .admission import Admission

log = logging.getLogger(__name__)
PLACE_TIMEOUT_S = 60  # for a worker to take a new sandbox and start it
REPLY_WAIT_MS = 1000
CHECK_S = 5  # a call with no word from its worker looks at the sandbox again this often
SWEEP_S = 1  # the worker's look at its sandboxes' idleness
REFRESH_S = 2  # and at their rows (ended or extended elsewhere)
KILLED = 128 + 9
GONE_WAIT_S = 5  # for the reason a sandbox whose container is gone ended
METER_S = 10  # a running sandbox's CPU is counted in its owner's usage this often, and as it pauses or ends
PAUSE_TRIES, PAUSE_RETRY_S = 3, 0.5  # an asked-for pause whose freeze fails
CHARGED_OPS = ("run", "command")  # calls that start work: charged to the owner's rate, refused once the quota is spent


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
        reply = self.channel.new_reply()
        await self.channel.place(self.queue, {"sandbox": str(row.id), "reply": reply})
        try:
            found = await self._first(reply, PLACE_TIMEOUT_S)
        finally:
            await self.channel.forget(reply)
        if found is None:
            await self.store.end(row.id, "not_placed")
            raise Unavailable(f"No worker started the sandbox within {PLACE_TIMEOUT_S} s; try again shortly.")
        if found.body.get("error"):
            raise Unavailable(f"The sandbox could not start: {found.body['error']['message']}")
        return await self.store.get(row.id) or row

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

    async def pause(self, user_id: int, sandbox_id: str) -> None:
        """Freezes it now, as an idle one is: 409 if it is paused already, or busy with a call."""
        row = await self.find(user_id, sandbox_id)
        if row.state == "paused":
            raise Conflict("The sandbox is paused already.")
        async for _ in self.call(user_id, sandbox_id, {"op": "pause"}, row=row):
            pass

    async def resume(self, user_id: int, sandbox_id: str) -> SandboxRow:
        """Thaws it if paused (any call would); the row as it is then."""
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
        if row.worker_id is None or row.state == "starting":
            raise Conflict("The sandbox is still starting.")
        if op["op"] in CHARGED_OPS:
            await self.admission.charge(user_id)
        if op["op"] in ("run", "context_create") and not op.get("context") and not op.get("language"):
            op = {**op, "language": row.language}  # the sandbox's own language's context
        reply = self.channel.new_reply()
        await self.channel.open(reply)
        ended = False
        try:
            await self.channel.call(row.worker_id, {"sandbox": str(row.id), "reply": reply, "op": op}, data)
            async for message in self._replies(reply, row, client_gone):
                ended = message.body.get("type") == "end"
                if ended and (code := (message.body.get("error") or {}).get("code")):
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
        after, quiet_s, interrupted = START, 0.0, False
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
                await self.find(row.user_id, str(row.id))

    async def _interrupt(self, row: SandboxRow, reply: str) -> None:
        await self.channel.call(row.worker_id, {"sandbox": str(row.id), "reply": "", "target": reply,
                                                "op": {"op": "interrupt"}})


REFUSALS: dict[str, type[AppError]] = {"busy": Conflict, "no_context": NotFound, "not_found": NotFound,
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
                 egress: Egress | None = None) -> None:
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
        await asyncio.gather(self._placing(), self._serving(), self._sweeping(), self.pool.run())

    async def close(self, reason: str = "worker_stopped") -> None:
        await self.pool.close()
        for task in list(self._tasks):
            task.cancel()
        for hosted in list(self.hosted.values()):
            await self._end(hosted, reason)

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
        egress = None
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
        except (SandboxError, KeyError, UnsupportedLanguage) as e:  # the last: a deployment without that plugin
            log.warning("sandbox %s: could not start: %s", row.id, e)
            if egress is not None:
                await self.egress.close(egress)
            await self.store.end(row.id, "start_failed")
            await self.channel.reply(reply, {"type": "end", "error": {"code": "start_failed", "message": str(e)}})
            return
        hosted = Hosted(row, hub, egress=egress)
        self.hosted[row.id] = hosted
        if not await self.store.started(row.id, hub.box.id):
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

    async def _end(self, hosted: Hosted, reason: str | None) -> None:
        """Removes its container; records the reason (None: recorded already, elsewhere)."""
        if self.hosted.pop(hosted.row.id, None) is None:
            return
        with contextlib.suppress(Unavailable):
            await self._meter(hosted)
        self.engine.discard(hosted.hub.box)
        if hosted.egress is not None and self.egress is not None:
            await self.egress.close(hosted.egress)
        if reason is not None:
            with contextlib.suppress(Unavailable):
                await self.store.end(hosted.row.id, reason)
        log.info("sandbox %s ended: %s", hosted.row.id, reason or "ended elsewhere")

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
        hosted = self.hosted.get(uuid.UUID(body["sandbox"]))
        if hosted is None:
            if reply:
                await self.channel.reply(reply, {"type": "end", "error": {"code": "gone", "message": "no such sandbox here"}},
                                         opened=True)
            return
        if op["op"] == "close":
            await self._end(hosted, None)
            return
        if op["op"] == "network":
            if hosted.egress is not None and self.egress is not None:
                self.egress.replace(hosted.egress, NetworkPolicy(tuple(op["allow"])))
            if reply:
                await self.channel.reply(reply, {"type": "end"})
            return
        if op["op"] == "pause":
            end: dict[str, Any] = {"type": "end"}
            for _ in range(PAUSE_TRIES):  # a freeze may fail while a process is in the kernel's hands
                if await self._pause(hosted):
                    break
                if hosted.busy:
                    end["error"] = {"code": "busy", "message": "the sandbox is busy with a call; pause it once that ends"}
                    break
                await asyncio.sleep(PAUSE_RETRY_S)
            else:
                end["error"] = {"code": "pause_failed", "message": "the sandbox could not be paused; try again"}
            if reply:
                await self.channel.reply(reply, end)
            return
        if op["op"] == "interrupt":
            op = {**op, "target": hosted.runs.get(body.get("target", ""), "")}
        if op["op"] == "write":
            op = {**op, "data": base64.b64encode(message.data).decode()}
        hosted.busy += 1
        try:
            await self._resume(hosted)
            async for event in hosted.hub.call(op, on_id=lambda rid: hosted.runs.__setitem__(reply, rid)):
                data = base64.b64decode(event.pop("data")) if event.get("type") == "chunk" else b""
                if reply:
                    await self.channel.reply(reply, event, data, opened=True)
        except (HubGone, SandboxError) as e:
            if reply:
                await self.channel.reply(reply, {"type": "end", "error": {"code": "gone", "message": str(e)}}, opened=True)
        finally:
            hosted.runs.pop(reply, None)
            hosted.busy -= 1
            hosted.last_used = time.monotonic()

    async def _resume(self, hosted: Hosted) -> None:
        async with hosted.lock:
            if hosted.paused:
                await self.engine.unpause(hosted.hub.box.id)
                hosted.paused = False
                await self.store.set_state(hosted.row.id, "running")

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
                    await self._pause(hosted)
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

    async def _pause(self, hosted: Hosted) -> bool:
        """Whether it is paused now: not while a call to it runs."""
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
            if row.state == "ended":
                await self._end(hosted, None)
            elif row.expires_at <= now:
                await self._end(hosted, "expired")
            else:
                hosted.row = row
