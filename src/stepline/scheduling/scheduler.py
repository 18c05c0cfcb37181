"""The scheduler: turns cron schedules into instances, one leader at a time.

Exactly once per fire time rests on two things. The database refuses a second instance for
the same (batch, scheduled_for) — so two schedulers that both believe they lead still
create one instance. And a lease row (held against the database clock, renewed each tick)
elects one leader, so while any scheduler is alive one of them fires every schedule; when
the leader dies, another takes over within ``lease_seconds`` and creates the fire times the
gap left behind, per the batch's misfire policy.

A paused batch (``stepline pause``) gets no instance; when it is resumed, the fire times
that passed while it was paused are misfires like any other.

Misfires (fire times older than ``misfire_grace`` when they are noticed, e.g. while no
scheduler ran): ``misfire: once`` (default) creates one instance, for the latest missed
time; ``all`` creates each, at most ``misfire_cap`` (default 100, the most recent);
``skip`` creates none and logs them. Fire times within the grace window (default 60 s)
are never misfires: a failover or a slow tick still fires them, late.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from stepline.core.definition import BatchDefinition
from stepline.core.durations import parse_duration
from stepline.errors import SteplineError
from stepline.scheduling.cron import CronSchedule

if TYPE_CHECKING:
    from stepline.service import Stepline

log = structlog.get_logger("stepline.scheduler")

LEASE = "scheduler"
MISFIRE_POLICIES = ("once", "all", "skip")


@dataclass(frozen=True)
class MisfirePolicy:
    policy: str = "once"
    grace: timedelta = timedelta(seconds=60)
    cap: int = 100

    @classmethod
    def of(cls, definition: BatchDefinition) -> MisfirePolicy:
        extra = definition.extra
        policy = str(extra.get("misfire", "once"))
        if policy not in MISFIRE_POLICIES:
            raise ValueError(f"misfire {policy!r} is not one of {', '.join(MISFIRE_POLICIES)}")
        grace = parse_duration(extra.get("misfire_grace", 60))
        cap = int(extra.get("misfire_cap", 100))
        return cls(policy, grace, max(cap, 1))

    def select(self, due: list[datetime], now: datetime) -> tuple[list[datetime], list[datetime]]:
        """Split due fire times into (to create, skipped as misfired)."""
        on_time = [f for f in due if now - f <= self.grace]
        missed = [f for f in due if now - f > self.grace]
        if not missed or self.policy == "all":
            kept = (missed + on_time)[-self.cap :] if self.policy == "all" else on_time
            return kept, [f for f in missed if f not in kept]
        if self.policy == "once" and not on_time:
            return [missed[-1]], missed[:-1]
        return on_time, missed


class Scheduler:
    """Run :meth:`run` in a thread; every tick, the leader creates the due instances."""

    def __init__(
        self,
        service: Stepline,
        *,
        holder: str,
        lease_seconds: float = 30.0,
        tick_seconds: float = 0.5,
        on_lag: Callable[[float], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.service = service
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.tick_seconds = tick_seconds
        self.on_lag = on_lag
        self.clock = clock
        self.epoch: int | None = None
        self._last: dict[str, datetime] = {}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except SteplineError as exc:
                log.warning("scheduler tick failed", error=str(exc))
            except Exception as exc:  # keep scheduling: one bad batch must not stop the rest
                log.exception("scheduler tick failed", error=f"{type(exc).__name__}: {exc}")
            stop.wait(self.tick_seconds)
        if self.epoch is not None:
            self.service.store.release_lease(LEASE, self.holder)

    def tick(self) -> int:
        """Renew or take the lease; if leading, create every due instance. Returns how many."""
        store = self.service.store
        epoch = store.acquire_lease(LEASE, self.holder, self.lease_seconds)
        if epoch != self.epoch:
            if epoch is not None:
                log.info("scheduler leads", holder=self.holder, epoch=epoch)
            self._last.clear()  # a new term: catch up from what the database says
            self.epoch = epoch
        if epoch is None:
            return 0
        now = self.clock()
        created = 0
        for stored in store.definitions():
            definition = stored.definition
            if not definition.cron or stored.paused:
                # A paused batch's fire times pass unrecorded: on resume they are due, and
                # its misfire policy decides which of them run.
                continue
            try:
                created += self._fire(stored.id, definition, now, epoch)
            except (ValueError, SteplineError) as exc:
                log.warning("batch not scheduled", batch=definition.name, error=str(exc))
        return created

    def _fire(
        self, definition_id: int, definition: BatchDefinition, now: datetime, epoch: int
    ) -> int:
        name = definition.name
        timezone = definition.timezone or self.service.settings.timezone
        schedule = CronSchedule.parse(definition.cron or "", timezone)
        last = self._last.get(name)
        if last is None:
            last = self.service.store.last_scheduled(definition_id) or now
        due = list(schedule.fire_times_between(last, now))
        if not due:
            self._last[name] = now
            return 0
        create, skipped = MisfirePolicy.of(definition).select(due, now)
        if skipped:
            log.warning(
                "misfired fire times skipped",
                batch=name,
                count=len(skipped),
                first=skipped[0].isoformat(),
                last=skipped[-1].isoformat(),
            )
        created = 0
        for fire in create:
            # Fence a stale leader: after losing the lease it must not act on old beliefs.
            if not self.service.store.lease_valid(LEASE, self.holder, epoch):
                self._last.pop(name, None)
                return created
            instance, new = self.service.trigger(name, {}, "cron", scheduled_for=fire, limited=True)
            if new:
                created += 1
                lag = (self.clock() - fire).total_seconds()
                if self.on_lag is not None:
                    self.on_lag(lag)
                log.info(
                    "fired",
                    batch=name,
                    instance_id=instance.id,
                    scheduled_for=fire.isoformat(),
                    lag_seconds=round(lag, 3),
                )
        # Only now: if creating failed part-way, the next tick tries the same fire times
        # again (the unique constraint makes the ones already created a no-op).
        self._last[name] = now
        if created:
            self.service.wake()
        return created
