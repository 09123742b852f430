"""The replay's status lines (gh-ost's each-interval line): rate and ETA from the events processed since
the last line, "caught up" said once when the backlog reaches zero, silence while idle."""

from __future__ import annotations

from dualwrite.stream.replay_lines import ReplayLines


def test_lines_rate_eta_and_caught_up() -> None:
    now = [100.0]
    lines = ReplayLines(every_s=10, clock=lambda: now[0])
    now[0] += 4
    assert lines.line(400, 0, 1000, 3.0) is None  # the interval has not passed
    now[0] += 6
    assert lines.line(1000, 0, 2000, 2.5) == (
        "replay: applied 1000 (+1000 in 10s, 100 events/s), backlog 2000, lag 2.5s, ETA 20s"
    )
    now[0] += 2  # the backlog reaching zero is said at once, not at the next interval
    assert lines.line(3000, 2, 0, 0.0) == (
        "replay: applied 2998 (+2000 in 2.0s, 1,000 events/s), dead-lettered 2, backlog 0, lag 0.0s: caught up"
    )
    now[0] += 60
    assert lines.line(3000, 2, 0, 0.0) is None  # idle and caught up: nothing new to say
    assert lines.line(3000, 2, 0, 0.0, force=True) is None  # not even as the run's last line
    now[0] += 10
    assert lines.line(3001, 2, 5, 1.0).endswith("backlog 5, lag 1.0s, ETA 50s")  # type: ignore[union-attr]
