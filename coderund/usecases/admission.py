"""The one admission step every way of running code passes (tasks, live runs, Judge0, Jobe, Piston,
sandboxes): the request held to the rules of coderund/admission.py, the user's quota and rate charged,
a callback's address checked."""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from ..access import cpu_quota_left, seconds_to_next_day
from ..admission import Admitted, Ceiling, admit_network, admit_task
from ..domain import TaskRequest
from ..errors import QuotaExceeded, RateLimited, ValidationFailed
from ..network import NetworkPolicy
from ..plugins import Plugins
from ..repository.callbacks import AddressRefused, check
from ..repository.rates import Rates
from ..repository.usage import Quota, Usage
from .keys import utcnow


class Admission:
    def __init__(self, plugins: Plugins, rates: Rates, usage: Usage, ceiling: Ceiling, *, cpu_s_per_day: int = 0,
                 allow_private_callbacks: bool = False, clock: Callable[[], datetime] = utcnow) -> None:
        self.plugins = plugins
        self.rates = rates
        self.usage = usage
        self.ceiling = ceiling
        self.cpu_s_per_day = cpu_s_per_day  # the default quota; a user's own replaces it
        self.allow_private_callbacks = allow_private_callbacks
        self.clock = clock

    async def task(self, user_id: int, request: TaskRequest) -> tuple[Admitted, Quota]:
        """The request as it will run, and the user's quotas, once the rules passed and the rate was charged."""
        admitted = admit_task(request, self.plugins, self.ceiling)
        if request.callback_url:
            await self._check_callback(request.callback_url)
        return admitted, await self.charge(user_id)

    def network(self, policy: NetworkPolicy | None) -> NetworkPolicy | None:
        """A sandbox's network policy (at its create, or replacing its own) within the operator's widest."""
        return admit_network(policy, self.ceiling)

    async def charge(self, user_id: int) -> Quota:
        """The user's quotas, once one start of work is charged to their rate: QuotaExceeded when the
        day's CPU is spent, RateLimited past the rate."""
        quota = await self.within_quota(user_id)
        per_minute = self.rates.per_minute if quota.per_minute is None else quota.per_minute
        if wait_s := await self.rates.take(user_id, per_minute):
            raise RateLimited(f"More than {per_minute} submissions a minute; try again in {wait_s} s.", wait_s)
        return quota

    async def within_quota(self, user_id: int) -> Quota:
        """The user's quotas; QuotaExceeded once the day's CPU quota is spent, until the next UTC day."""
        now = self.clock()
        quota, used_ms = await self.usage.quota(user_id, now.astimezone(UTC).date())
        cpu_s = self.cpu_s_per_day if quota.cpu_s_per_day is None else quota.cpu_s_per_day
        if not cpu_quota_left(used_ms, cpu_s):
            raise QuotaExceeded(f"Your quota of {cpu_s} CPU seconds a day is spent ({used_ms / 1000:.1f} s used today);"
                                " it renews at 00:00 UTC.", seconds_to_next_day(now))
        return quota

    async def _check_callback(self, url: str) -> None:
        try:
            await check(url, self.allow_private_callbacks)
        except AddressRefused as e:
            raise ValidationFailed(f"'callback_url' may not point there: {e}.") from None
        except OSError:
            raise ValidationFailed("'callback_url' names a host that does not resolve.") from None
