-- V16: a document's embedding, kept whatever the database has installed. Where pgvector
-- is, the server builds an HNSW index on `embedding::vector(N)` at start
-- (`documents::vector`, N = CLOUDLENS_EMBEDDING_DIMENSIONS).
ALTER TABLE documents ADD COLUMN embedding real[];
