"""The apply rule: how a change reaches the other database, whoever carries it (the inline dual write,
the stream's replayer, the backfill's chunks).

- rule.py        the one rule: newest event per key, claim `_dw_versions`, write the winners (a two-statement
                 delete, a one-statement upsert)
- statements.py  the rule's SQL, built once per (engine, table)
- ranges.py      chunk range versions: one version per copied key range instead of a row per key
- uniques.py     unique constraints other than the primary key, when events arrive out of the primary's order
"""
