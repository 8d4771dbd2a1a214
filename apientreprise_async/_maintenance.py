"""Daily maintenance windows, which the catalogue gives in Europe/Paris time."""

from __future__ import annotations

import datetime as dt
import functools

from ._catalogue import Maintenance

__all__ = ["maintenance_remaining", "paris_time"]


@functools.cache
def _paris_zone() -> dt.tzinfo | None:
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo("Europe/Paris")
    except Exception:  # no tz database on this machine (no tzdata): use the fixed rule
        return None


def _last_sunday(year: int, month: int) -> dt.date:
    day = dt.date(year, month, 31)
    return day - dt.timedelta(days=(day.weekday() + 1) % 7)


def paris_time(utc_now: dt.datetime) -> dt.datetime:
    """Convert an aware UTC instant to Paris local time (naive)."""
    zone = _paris_zone()
    if zone is not None:
        return utc_now.astimezone(zone).replace(tzinfo=None)
    # EU rule: summer time from 01:00 UTC on March's last Sunday to October's.
    year = utc_now.year
    start = dt.datetime.combine(_last_sunday(year, 3), dt.time(1), dt.UTC)
    end = dt.datetime.combine(_last_sunday(year, 10), dt.time(1), dt.UTC)
    offset = 2 if start <= utc_now < end else 1
    return (utc_now + dt.timedelta(hours=offset)).replace(tzinfo=None)


def maintenance_remaining(window: Maintenance, utc_now: dt.datetime) -> float | None:
    """Seconds until ``window`` ends if ``utc_now`` falls inside it, else ``None``."""
    local = paris_time(utc_now)
    if not window.contains(local.time()):
        return None
    end = local.replace(
        hour=window.to_hour.hour, minute=window.to_hour.minute, second=0, microsecond=0
    )
    if end <= local:
        end += dt.timedelta(days=1)
    return (end - local).total_seconds()
