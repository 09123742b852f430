"""Ingest store (P0): ingest jobs and the documents they bring in, deduplicated by content hash per tenant.

A job's counts are recomputed from its documents in the same transaction as every document change, so
they are always exact. A document whose hash the tenant already has is refused with DuplicateError.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

# Each store module declares its tables from the same pieces (SQLAlchemy's, base.py's mixins and column
# helpers), so these import lists repeat by design: one store, one self-contained module.
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKeyConstraint,
    Index,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from dualwrite.demo.app.base import Base, Stamped, StampedRow, TenantKeyed, TenantKeyedRow, core_tables
from dualwrite.demo.app.columns import ref_column, stamp_column, tenant_fk
from dualwrite.demo.app.common import TenantStore, check_choice, check_id, check_limit, check_text
from dualwrite.demo.app.errors import DuplicateError, StateError, ValidationError
from dualwrite.types import JSONType, OrderedString

if TYPE_CHECKING:
    from dualwrite.adapter import WriteTx

JOB_STATUSES = ("running", "succeeded", "failed")
DOC_STATUSES = ("pending", "processed", "failed")


class IngestJob(TenantKeyed, Base):
    __tablename__ = "ingest_jobs"
    __table_args__ = (
        UniqueConstraint("id", "tenant_id"),
        Index(None, "tenant_id", "status", "id"),
        CheckConstraint(f"status IN {JOB_STATUSES}", name="status"),
    )
    source: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default="running")
    documents_total: Mapped[int] = mapped_column(BigInteger, default=0)
    documents_processed: Mapped[int] = mapped_column(BigInteger, default=0)
    documents_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime] = stamp_column()
    finished_at: Mapped[datetime | None] = stamp_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text)


class IngestDocument(TenantKeyed, Stamped, Base):
    __tablename__ = "ingest_documents"
    __table_args__ = (
        UniqueConstraint("tenant_id", "content_hash"),
        ForeignKeyConstraint(*tenant_fk("job_id", "ingest_jobs")),
        Index(None, "tenant_id", "job_id", "status"),
        CheckConstraint(f"status IN {DOC_STATUSES}", name="status"),
    )
    job_id: Mapped[int] = ref_column()
    content_hash: Mapped[str] = mapped_column(OrderedString(128))
    title: Mapped[str | None] = mapped_column(String(500))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)


ingest_jobs, ingest_documents = core_tables(IngestJob, IngestDocument)


class IngestJobRow(TenantKeyedRow):
    source: str
    status: str
    documents_total: int
    documents_processed: int
    documents_failed: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None


class IngestDocumentRow(TenantKeyedRow, StampedRow):
    job_id: int
    content_hash: str
    title: str | None
    content: str
    status: str
    error: str | None
    metadata: dict[str, Any]


def content_hash(content: str) -> str:
    """The default document hash: SHA-256 of the UTF-8 content, hex."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


class IngestStore(TenantStore):
    store = "ingest"

    def start_job(self, source: str) -> IngestJobRow:
        check_text(source, "ingest_jobs.source", 500, empty=False)
        values = {
            "source": source,
            "status": "running",
            "documents_total": 0,
            "documents_processed": 0,
            "documents_failed": 0,
            "started_at": self.now(),
        }
        with self.write() as tx:
            return cast(IngestJobRow, self.insert(tx, ingest_jobs, values))

    def add_document(
        self,
        job_id: int,
        content: str,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        digest: str | None = None,
    ) -> IngestDocumentRow:
        """Add a pending document to a running job; DuplicateError if the tenant has its hash already
        (`digest` defaults to content_hash(content))."""
        check_text(content, "ingest_documents.content")
        if digest is None:
            digest = content_hash(content)
        check_text(digest, "ingest_documents.content_hash", 128, empty=False)
        # a values dict like graph.py's and marketplace.py's inserts: each store its own columns
        values = {
            "job_id": job_id,
            "content_hash": digest,
            "title": title,
            "content": content,
            "status": "pending",
            "metadata": {} if metadata is None else metadata,
        }
        with self.write() as tx:
            job = self.owned(tx, ingest_jobs, job_id, "ingest_documents.job_id", lock=True)
            if job["status"] != "running":
                raise StateError(f"ingest_jobs: job {job_id} is {job['status']}; documents go to a running job")
            dup = tx.connection.execute(
                select(ingest_documents.c.id).where(
                    self.mine(ingest_documents), ingest_documents.c.content_hash == digest
                )
            ).scalar()
            if dup is not None:
                raise DuplicateError(
                    f"ingest_documents.content_hash: {digest[:16]}... already ingested for this tenant (document {dup})"
                )
            row = self.insert(tx, ingest_documents, values)
            self._recount(tx, job_id)
        return cast(IngestDocumentRow, row)

    def mark_document(self, document_id: int, status: str, *, error: str | None = None) -> IngestDocumentRow:
        """Set a document's status (pending, processed, failed) and error; the job's counts follow."""
        check_choice(status, "ingest_documents.status", DOC_STATUSES)
        if error is not None and status != "failed":
            raise ValidationError("ingest_documents.error: only a failed document carries an error")
        with self.write() as tx:
            doc = self.owned(tx, ingest_documents, document_id, "ingest_documents.id")
            row = self.update_by_id(tx, ingest_documents, document_id, {"status": status, "error": error})
            self._recount(tx, doc["job_id"])
        return cast(IngestDocumentRow, row)

    def finish_job(self, job_id: int, *, error: str | None = None) -> IngestJobRow:
        """Close a running job: succeeded, or failed with `error`."""
        with self.write() as tx:
            job = self.owned(tx, ingest_jobs, job_id, "ingest_jobs.id", lock=True)
            if job["status"] != "running":
                raise StateError(f"ingest_jobs: job {job_id} is already {job['status']}")
            values = {"status": "failed" if error else "succeeded", "finished_at": self.now(), "error": error}
            return cast(IngestJobRow, self.update_by_id(tx, ingest_jobs, job_id, values))

    def get_job(self, job_id: int) -> IngestJobRow | None:
        return cast(IngestJobRow | None, self.get_row("get_job", ingest_jobs, job_id))

    def get_document(self, document_id: int) -> IngestDocumentRow | None:
        return cast(IngestDocumentRow | None, self.get_row("get_document", ingest_documents, document_id))

    def by_hash(self, digest: str) -> IngestDocumentRow | None:
        stmt = select(ingest_documents).where(self.mine(ingest_documents), ingest_documents.c.content_hash == digest)
        return cast(IngestDocumentRow | None, self.first("by_hash", stmt, content_hash=digest))

    def jobs(self, status: str | None = None, limit: int = 100) -> JobList:
        conds = [self.mine(ingest_jobs)]
        if status is not None:
            conds.append(ingest_jobs.c.status == check_choice(status, "status", JOB_STATUSES))
        stmt = select(ingest_jobs).where(*conds).order_by(ingest_jobs.c.id).limit(check_limit(limit))
        return cast(JobList, self.rows("jobs", stmt, status=status, limit=limit))

    def documents(self, job_id: int, status: str | None = None) -> DocumentList:
        """The job's documents in the order they were added."""
        conds = [self.mine(ingest_documents), ingest_documents.c.job_id == check_id(job_id, "job_id")]
        if status is not None:
            conds.append(ingest_documents.c.status == check_choice(status, "status", DOC_STATUSES))
        stmt = select(ingest_documents).where(*conds).order_by(ingest_documents.c.id)
        return cast(DocumentList, self.rows("documents", stmt, job_id=job_id, status=status))

    def _recount(self, tx: WriteTx, job_id: int) -> None:
        def count(*conds: Any) -> Any:
            return (
                select(func.count())
                .where(ingest_documents.c.tenant_id == self.tenant_id, ingest_documents.c.job_id == job_id, *conds)
                .scalar_subquery()
            )

        tx.execute(
            update(ingest_jobs)
            .where(ingest_jobs.c.id == job_id, self.mine(ingest_jobs))
            .values(
                documents_total=count(),
                documents_processed=count(ingest_documents.c.status == "processed"),
                documents_failed=count(ingest_documents.c.status == "failed"),
            )
        )


JobList = list[IngestJobRow]
DocumentList = list[IngestDocumentRow]
