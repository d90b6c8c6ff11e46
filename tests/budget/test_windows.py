"""Window arithmetic: alignment in UTC, calendar months, Retry-After."""

from datetime import UTC, datetime, timedelta

import pytest

from modelroute_sidecar.budget.windows import (
    parse_rfc3339,
    parse_window,
    retry_after,
    rfc3339,
    window_end,
    window_start,
)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


@pytest.mark.parametrize(("window", "now", "start", "end"), [
    ("1m", utc(2026, 11, 29, 23, 15, 42), utc(2026, 11, 29, 23, 15), utc(2026, 11, 29, 23, 16)),
    ("15m", utc(2026, 11, 29, 23, 59, 59), utc(2026, 11, 29, 23, 45), utc(2026, 11, 30)),
    ("1h", utc(2026, 11, 29, 23, 0, 0), utc(2026, 11, 29, 23), utc(2026, 11, 30)),
    ("1d", utc(2026, 11, 29, 0, 0, 1), utc(2026, 11, 29), utc(2026, 11, 30)),
    ("7d", utc(1970, 1, 8, 12), utc(1970, 1, 8), utc(1970, 1, 15)),  # the epoch was a Thursday
    ("month", utc(2026, 11, 29, 23, 15), utc(2026, 11, 1), utc(2026, 12, 1)),
    ("month", utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 1), utc(2027, 1, 1)),  # year wraps
    ("month", utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 2, 1)),  # the first instant is in
    ("month", utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),  # leap February
    ("month", utc(2027, 2, 28, 23, 59, 59), utc(2027, 2, 1), utc(2027, 3, 1)),
    ("month", utc(2026, 4, 30, 23, 59, 59), utc(2026, 4, 1), utc(2026, 5, 1)),  # 30-day month
])
def test_bounds(window: str, now: datetime, start: datetime, end: datetime) -> None:
    assert window_start(window, now) == start
    assert window_end(window, now) == end
    assert window_start(window, now) <= now < window_end(window, now)


def test_month_is_utc_not_local_time() -> None:
    # 23:30 on Nov 30 at UTC-5 is already December in UTC
    now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC) + timedelta(hours=5)
    local = now.astimezone(datetime.now().astimezone().tzinfo)
    assert window_start("month", local) == utc(2026, 12, 1)


def test_consecutive_months_tile_the_year() -> None:
    t = utc(2026, 1, 15).timestamp()
    w = parse_window("month")
    starts = []
    for _ in range(13):
        starts.append(w.start(t))
        t = w.end(t)
    assert [datetime.fromtimestamp(s, UTC).month for s in starts] == [*range(1, 13), 1]
    assert datetime.fromtimestamp(starts[-1], UTC).year == 2027


@pytest.mark.parametrize(("window", "now", "expected"), [
    ("1h", utc(2026, 11, 29, 23, 15, 0), 45 * 60),
    ("1m", utc(2026, 11, 29, 23, 15, 59, 500_000), 1),  # half a second rounds up
    ("1m", utc(2026, 11, 29, 23, 15, 0), 60),  # at the start: the whole window
    ("month", utc(2026, 11, 30, 23, 0, 0), 3600),
    ("month", utc(2026, 12, 31, 23, 59, 58, 1), 2),
])
def test_retry_after_rounds_up(window: str, now: datetime, expected: int) -> None:
    assert retry_after(window, now) == expected


@pytest.mark.parametrize("bad", ["", "0m", "1w", "1.5h", "h", "Month", "1 h", "-1d", "1000000m", "monthly"])
def test_bad_windows_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_window(bad)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        window_start("1h", datetime(2026, 1, 1))


def test_rfc3339_round_trip() -> None:
    ts = utc(2026, 11, 1).timestamp()
    assert rfc3339(ts) == "2026-11-01T00:00:00Z"
    assert parse_rfc3339("2026-11-01T00:00:00Z") == ts
    assert parse_rfc3339("2026-11-01T01:00:00+01:00") == ts
    with pytest.raises(ValueError):
        parse_rfc3339("2026-11-01T00:00:00")
