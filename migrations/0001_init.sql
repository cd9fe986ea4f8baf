-- regmirror index, version 1. Times are milliseconds since the Unix epoch.
-- Objects (blobs and manifests) live in the content-addressed store; these
-- tables say what they are, who references them and when they were used.

CREATE TABLE upstreams (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE            -- "docker.io", "ghcr.io", ...
);

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    upstream_id INTEGER NOT NULL REFERENCES upstreams(id),
    name        TEXT NOT NULL,           -- "library/alpine"
    UNIQUE (upstream_id, name)
);

CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,        -- "sha256:<hex>"
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    last_access INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE manifests (
    digest      TEXT PRIMARY KEY,
    media_type  TEXT NOT NULL,
    size        INTEGER NOT NULL,
    is_index    INTEGER NOT NULL,        -- 1: references child manifests
    created_at  INTEGER NOT NULL,
    last_access INTEGER NOT NULL
) WITHOUT ROWID;

-- What a manifest references: its config and layers (kind 'blob') or, for
-- an index, its platform manifests (kind 'manifest'). Children may not be
-- stored (yet): a platform nobody pulled.
CREATE TABLE manifest_refs (
    manifest_digest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
    child_digest    TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
    PRIMARY KEY (manifest_digest, child_digest)
) WITHOUT ROWID;
CREATE INDEX manifest_refs_child ON manifest_refs (child_digest);

-- Which repositories a manifest was pulled through.
CREATE TABLE repository_manifests (
    repository_id   INTEGER NOT NULL REFERENCES repositories(id),
    manifest_digest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
    PRIMARY KEY (repository_id, manifest_digest)
) WITHOUT ROWID;

CREATE TABLE tags (
    repository_id   INTEGER NOT NULL REFERENCES repositories(id),
    name            TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    fetched_at      INTEGER NOT NULL,    -- last confirmed by the upstream
    PRIMARY KEY (repository_id, name)
) WITHOUT ROWID;
