"""Ingest store on each backend alone: jobs, documents deduplicated by hash, exact counts, states."""

from __future__ import annotations

import pytest

from dualwrite.demo.app.errors import DuplicateError, StateError, ValidationError
from dualwrite.demo.app.ingest import IngestStore, content_hash


def test_job_lifecycle_with_exact_counts(dw, clock) -> None:  # type: ignore[no-untyped-def]
    ing = IngestStore(dw, "acme", clock=clock)
    job = ing.start_job("s3://bucket/drop")
    assert (job["status"], job["documents_total"], job["finished_at"]) == ("running", 0, None)
    d1 = ing.add_document(job["id"], "first text", title="One", metadata={"page": 1})
    d2 = ing.add_document(job["id"], "second text")
    d3 = ing.add_document(job["id"], "third", digest="custom-hash")
    assert d1["content_hash"] == content_hash("first text") and d3["content_hash"] == "custom-hash"
    assert d1["status"] == "pending" and d1["metadata"] == {"page": 1}
    assert ing.get_job(job["id"])["documents_total"] == 3  # type: ignore[index]

    clock.advance(1)
    done = ing.mark_document(d1["id"], "processed")
    assert done["status"] == "processed" and done["updated_at"] == clock.now
    ing.mark_document(d2["id"], "failed", error="parse error at line 3")
    ing.mark_document(d3["id"], "processed")
    ing.mark_document(d3["id"], "failed", error="late failure")  # counts follow transitions
    counted = ing.get_job(job["id"])
    assert counted is not None
    assert (counted["documents_total"], counted["documents_processed"], counted["documents_failed"]) == (3, 1, 2)

    assert [d["id"] for d in ing.documents(job["id"])] == [d1["id"], d2["id"], d3["id"]]
    assert [d["id"] for d in ing.documents(job["id"], "failed")] == [d2["id"], d3["id"]]
    assert ing.by_hash(content_hash("second text"))["error"] == "parse error at line 3"  # type: ignore[index]
    assert ing.get_document(d1["id"])["status"] == "processed"  # type: ignore[index]

    finished = ing.finish_job(job["id"])
    assert (finished["status"], finished["finished_at"]) == ("succeeded", clock.now)
    with pytest.raises(StateError, match=rf"ingest_jobs: job {job['id']} is already succeeded"):
        ing.finish_job(job["id"])
    with pytest.raises(StateError, match="documents go to a running job"):
        ing.add_document(job["id"], "late")
    failed = ing.finish_job(ing.start_job("feed")["id"], error="source unreachable")
    assert (failed["status"], failed["error"]) == ("failed", "source unreachable")
    assert [j["status"] for j in ing.jobs()] == ["succeeded", "failed"]
    assert [j["id"] for j in ing.jobs("failed")] == [failed["id"]]


def test_duplicate_hash_is_refused_across_jobs_and_nothing_is_written(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    ing = IngestStore(dw, "acme", clock=clock)
    job1, job2 = ing.start_job("a"), ing.start_job("b")
    doc = ing.add_document(job1["id"], "same text")
    before = counts(dw)
    with pytest.raises(
        DuplicateError, match=rf"content_hash: .* already ingested for this tenant \(document {doc['id']}\)"
    ):
        ing.add_document(job2["id"], "same text")
    assert counts(dw) == before
    assert ing.get_job(job2["id"])["documents_total"] == 0  # type: ignore[index]
    # the same content in another tenant is that tenant's own document
    IngestStore(dw, "other", clock=clock).add_document(IngestStore(dw, "other").start_job("x")["id"], "same text")


def test_document_values_are_checked(dw, clock) -> None:  # type: ignore[no-untyped-def]
    ing = IngestStore(dw, "acme", clock=clock)
    job = ing.start_job("src")
    doc = ing.add_document(job["id"], "text")
    with pytest.raises(ValidationError, match="ingest_documents.status: 'done' is not one of"):
        ing.mark_document(doc["id"], "done")
    with pytest.raises(ValidationError, match="only a failed document carries an error"):
        ing.mark_document(doc["id"], "processed", error="x")
    with pytest.raises(ValidationError, match="ingest_documents.title: 501 characters"):
        ing.add_document(job["id"], "other", title="t" * 501)
    with pytest.raises(ValidationError, match="ingest_jobs.source: must not be empty"):
        ing.start_job("")
