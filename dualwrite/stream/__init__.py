"""The change stream: the outbox published to Redis, and replayed from it into Postgres.

- protocol.py     key names, entry ids, group lag (Redis 6.2 and 7), reply shapes
- relay.py        outbox -> stream in seq order, off the request path (the Lua cursor, foreign entries moved)
- replay.py       stream -> the apply rule through a consumer group (at least once, idempotent)
- replay_lines.py the replay's status lines: applied, backlog, lag, ETA
- deadletters.py  the dead-letter stream: write, list, redrive
- retention.py    the stream trimmed to what every group acknowledged (plus a window), the outbox pruned
"""
