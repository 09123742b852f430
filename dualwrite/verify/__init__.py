"""Verify: prove that Postgres holds what SQLite holds, row for row, and fix what differs.

    from dualwrite.verify.verifier import verify_backends
    report = verify_backends(dw.backends, tables.tables())            # full: every row
    report = verify_backends(dw.backends, tables.tables(), incremental_from_last=True)

- verifier.py       TableVerifier: range checksums on both sides at once, bisection to the row, a recheck
                    of suspects after a delay; verify_tables / verify_backends (the result kept for the gate)
- sql_checksums.py  the in-database range checksums (one query per range and side)
- sql_render.py     the per-type SQL renderings they hash (equal data, equal bytes on both sides)
- row_checksums.py  the Python pass for column types the databases cannot render alike; key ranges
- incremental.py    the keys the change log touched since the last clean verify (ghostferry's reverify)
- fix.py            `--fix`: the plan shown before anything changes, then the apply rule on what differs
- report.py         TableReport / VerifyReport, the `--report` and `--json` document
- last.py           the last result in Redis (`{ns}:verify:last`) and the shadow window a clean one opens
"""
