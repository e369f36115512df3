-- The SightScan warehouse: cities, sights, images, labels, models, data marts and the labelling cost ledger.
-- Images and models keep their bytes here; change events carry metadata only (see connectors/).

CREATE TABLE cities (
    id            bigserial PRIMARY KEY,
    name          text        NOT NULL CHECK (btrim(name) <> ''),
    status        text        NOT NULL DEFAULT 'requested'
                              CHECK (status IN ('requested', 'crawling', 'labelling', 'training', 'live', 'failed')),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- One row per city however it is typed: case, outer and repeated blanks do not make a new city.
-- (An expression index rather than a generated column: PostgreSQL 18 refuses updates of tables whose
-- REPLICA IDENTITY FULL holds unpublished generated columns.)
CREATE FUNCTION name_key(text) RETURNS text IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql
    AS $$ SELECT lower(regexp_replace(btrim($1), '\s+', ' ', 'g')) $$;
CREATE UNIQUE INDEX cities_name_key ON cities (name_key(name));

CREATE TABLE sights (
    id          bigserial PRIMARY KEY,
    city_id     bigint      NOT NULL REFERENCES cities (id) ON DELETE CASCADE,
    name        text        NOT NULL CHECK (btrim(name) <> ''),
    source      text        NOT NULL DEFAULT 'unknown',   -- wikidata, maps, vision, upload…
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX sights_name_key ON sights (city_id, name_key(name));

CREATE TABLE images (
    id          bigserial PRIMARY KEY,
    city_id     bigint      NOT NULL REFERENCES cities (id) ON DELETE CASCADE,
    sight_id    bigint      REFERENCES sights (id) ON DELETE SET NULL,  -- the sight it was crawled for
    data        bytea       NOT NULL,                                   -- encoded (JPEG/PNG/WebP), never raw pixels
    mime_type   text        NOT NULL,
    sha256      text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    width       integer     NOT NULL CHECK (width > 0),
    height      integer     NOT NULL CHECK (height > 0),
    source_url  text,
    licence     text,
    author      text,
    origin      text        NOT NULL CHECK (origin IN ('crawl', 'upload')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (city_id, sha256)
);
CREATE INDEX images_city_idx ON images (city_id);

-- One row per labelling outcome. sight_id NULL with no box = the labeller found no landmark.
CREATE TABLE labels (
    id          bigserial PRIMARY KEY,
    image_id    bigint      NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    city_id     bigint      NOT NULL REFERENCES cities (id) ON DELETE CASCADE,
    sight_id    bigint      REFERENCES sights (id) ON DELETE CASCADE,
    score       real        CHECK (score BETWEEN 0 AND 1),
    x_min       real, y_min real, x_max real, y_max real,               -- box normalised to 0..1
    labeller    text        NOT NULL,                                   -- google-vision, weak-query, manual…
    weak        boolean     NOT NULL DEFAULT false,                     -- true for the offline crawl-query label
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((x_min IS NULL) = (y_min IS NULL) AND (x_min IS NULL) = (x_max IS NULL) AND (x_min IS NULL) = (y_max IS NULL)),
    CHECK (x_min IS NULL OR (0 <= x_min AND x_min < x_max AND x_max <= 1 AND 0 <= y_min AND y_min < y_max AND y_max <= 1)),
    CHECK (sight_id IS NOT NULL OR x_min IS NULL)
);
CREATE INDEX labels_image_idx ON labels (image_id);
CREATE INDEX labels_city_idx ON labels (city_id);

CREATE TABLE models (
    id          bigserial PRIMARY KEY,
    city_id     bigint      NOT NULL REFERENCES cities (id) ON DELETE CASCADE,
    version     integer     NOT NULL CHECK (version > 0),
    onnx        bytea       NOT NULL,
    classes     jsonb       NOT NULL,   -- ["sight name", …] in output order
    input_size  integer     NOT NULL CHECK (input_size > 0),
    metrics     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (city_id, version)
);

-- Data marts, written by the stream agents (streams/) with idempotent upserts.
CREATE TABLE city_marts (
    city_id              bigint PRIMARY KEY REFERENCES cities (id) ON DELETE CASCADE,
    images               integer NOT NULL DEFAULT 0,
    labelled_images      integer NOT NULL DEFAULT 0,
    no_landmark_images   integer NOT NULL DEFAULT 0,
    models               integer NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sight_marts (
    sight_id         bigint PRIMARY KEY REFERENCES sights (id) ON DELETE CASCADE,
    city_id          bigint NOT NULL REFERENCES cities (id) ON DELETE CASCADE,
    labelled_images  integer NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The labelling cost ledger: Vision calls spent per city, kept against MAX_GOOGLE_VISION_CALLS_PER_NEW_CITY.
CREATE TABLE labelling_costs (
    city_id      bigint PRIMARY KEY REFERENCES cities (id) ON DELETE CASCADE,
    calls_spent  integer NOT NULL DEFAULT 0 CHECK (calls_spent >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
