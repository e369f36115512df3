-- The review queue (docs/corrections.md, "Review queue"): frames of live webcam streams on which the model was
-- unsure, kept for a person to accept or fix, in the cities whose operator opted in. Neither table is in the CDC
-- publication (0002_cdc.sql names its tables), so these frames and their bytes never reach a Kafka topic; a
-- reviewed frame becomes a correction (0006_corrections.sql), whose frame and label are captured as any.

-- A city's opt-in, set by the operator (PUT /api/cities/{city}/review). No row, or sample = false: nothing kept.
CREATE TABLE review_settings (
    city_id     bigint      PRIMARY KEY REFERENCES cities (id) ON DELETE CASCADE,
    sample      boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One kept frame and how it was chosen:
--   near-threshold  the top score lies within GATEWAY_REVIEW_THRESHOLD_MARGIN of the threshold
--   close-sights    the top two sights' scores lie within GATEWAY_REVIEW_CLOSE_MARGIN of each other
-- Once reviewed (a correction of the same bytes, or dismissed) the bytes are dropped and the row stays: it says
-- what became of the frame, and the caps per minute and per day count it.
CREATE TABLE review_frames (
    id             bigserial   PRIMARY KEY,
    city_id        bigint      NOT NULL REFERENCES cities (id) ON DELETE CASCADE,
    reason         text        NOT NULL CHECK (reason IN ('near-threshold', 'close-sights')),
    model_version  integer     NOT NULL CHECK (model_version > 0),
    threshold      real        NOT NULL CHECK (threshold BETWEEN 0 AND 1),  -- the one the rule compared with
    shown          jsonb       NOT NULL DEFAULT '[]'::jsonb,                -- the detections answered
    data           bytea,                                                   -- the frame as sent; NULL once reviewed
    mime_type      text        NOT NULL CHECK (mime_type IN ('image/jpeg', 'image/webp', 'image/png')),
    sha256         text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    width          integer     NOT NULL CHECK (width > 0),
    height         integer     NOT NULL CHECK (height > 0),
    kept_at        timestamptz NOT NULL DEFAULT now(),
    reviewed_at    timestamptz,
    outcome        text        CHECK (outcome IN ('corrected', 'dismissed')),
    correction_id  bigint      REFERENCES corrections (id) ON DELETE SET NULL,  -- outcome 'corrected': which one
    CHECK ((reviewed_at IS NULL) = (outcome IS NULL)),
    CHECK (reviewed_at IS NOT NULL OR data IS NOT NULL)
);
CREATE INDEX review_frames_city_kept_idx ON review_frames (city_id, kept_at);
-- A frame waits in the queue once: the same bytes kept again (a still camera) are not kept twice.
CREATE UNIQUE INDEX review_frames_pending_key ON review_frames (city_id, sha256) WHERE reviewed_at IS NULL;
