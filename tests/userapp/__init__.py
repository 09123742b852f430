"""An application dualwrite did not write, and the harness that drives it: for tests that must behave as a
user's application would (several processes, ORM and Core, every key and column kind, traffic across the
cutover), and then prove that nothing was lost.

- models.py    its own SQLAlchemy 2.0 models (Base, Tables via writer.tables(): `--metadata
               tests.userapp.writer:tables`): integer, UUID, text and composite keys; a self-reference with
               ON DELETE CASCADE, SET NULL, a two-level cascade; Numeric(12,2), tz-aware DateTime, Date,
               Boolean, JSON, LargeBinary, Enum, unicode; 1 MB text + 300 KB blob documents; a ledger row
               per committed transaction
- workload.py  its transactions (ORM and Core inserts, updates, deletes; reads through dw.read), each
               logged as the changes it intends
- reads.py     its reads, module-level functions (they pickle: a comparator process can run them)
- writer.py    a writer process: `python -m tests.userapp.writer --name w1 --index 1 --log w1.jsonl
               --stats w1.json <connection flags> --rate 20 [--reads 0.3 --shadow 100 --comparator process
               --apis orm,core --population 60 --documents 1.0 --duration S --max-tx N]`, until SIGTERM
- plain.py     the application before dualwrite: its own engine on the SQLite file (`writer --plain`)
- fleet.py     Fleet: start N writers (per source: several SQLite files each get their own), wait for
               progress, stop them, their errors, and the expected state of their logs
- state.py     the expected rows, rebuilt from the logs alone (referential actions from the models; a
               transaction in doubt looked up by its ledger row)
- operator.py  the operator's side: `dualwrite` commands in processes of their own, the backfill/replay
               daemon (`dualwrite backfill run --daemon`), the next steps an output names
- compare.py   exact row-for-row comparison of a database with the expected rows (Decimal text,
               timestamps to the microsecond, JSON, bytes)

    with Fleet(tmp_path) as fleet:
        fleet.start(settings, count=3, rate=100, apis="core")          # a few hundred writes per second
        fleet.wait_committed(200)
        ... flips, kills, restarts from the CLI in other processes ...
        fleet.stop()
        assert fleet.errors() == {}
        fleet.assert_agree({"sqlite": sqlite_engine, "postgres": pg_engine}, truth=pg_engine)
"""
