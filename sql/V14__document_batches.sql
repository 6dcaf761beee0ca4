-- V14: batches of documents (`POST /api/v1/documents:batch`). A batch's documents have
-- no streams of their own until their first change; this write-side table (like
-- `idempotency_keys`) says which batch reserved an id. An id is used once: by one batch,
-- or by one document's own stream. A reservation counts once its batch stream exists.
CREATE TABLE document_batch_ids (
    id          uuid        PRIMARY KEY,
    tenant_id   text        NOT NULL,
    batch_id    uuid        NOT NULL,
    reserved_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX document_batch_ids_batch ON document_batch_ids (batch_id);
