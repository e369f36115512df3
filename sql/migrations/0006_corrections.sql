-- Corrections (what a user fixes on the page becomes a label): users who write, each correction, and the labels
-- and frames it leaves. Labels are change events (CDC), so a correction is counted by the marts and learned from by
-- the next model like any label; undo deletes the correction, and the delete flows through CDC the same way.

-- A person (or a client) with a write token of their own. Only the token's SHA-256 is kept. A disowned user's
-- token is refused and their corrections are deleted.
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    name          text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    token_sha256  text        NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    disowned_at   timestamptz
);

-- A frame the user kept from the page or the OpenCV client is an image of origin 'user'.
ALTER TABLE images DROP CONSTRAINT images_origin_check;
ALTER TABLE images ADD CONSTRAINT images_origin_check CHECK (origin IN ('crawl', 'upload', 'user'));

-- One correction: what the user did, on which frame, against which answer, with which credential.
--   confirm      the shown detection is right           -> a 'user-box' label (its sight and box)
--   wrong-sight  the shown box is another sight, X       -> a 'user-box' label (X, the shown box): a hard example
--   box          a box drawn or adjusted for a sight     -> a 'user-box' label
--   no-sight     nothing of the city is in this frame    -> a 'user-negative' label
--   keep         keep the frame as a photo of the city  -> the image only (the labeller labels it as any image)
CREATE TABLE corrections (
    id             bigserial   PRIMARY KEY,
    city_id        bigint      NOT NULL REFERENCES cities (id) ON DELETE CASCADE,
    image_id       bigint      NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    user_id        bigint      REFERENCES users (id) ON DELETE CASCADE,   -- NULL: the operator's SIGHTSCAN_API_TOKEN
    action         text        NOT NULL CHECK (action IN ('confirm', 'wrong-sight', 'box', 'no-sight', 'keep')),
    model_version  integer     CHECK (model_version > 0),                  -- the model whose answer was shown
    shown          jsonb       NOT NULL DEFAULT '[]'::jsonb,               -- the detections shown, as sent
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX corrections_city_idx ON corrections (city_id);
CREATE INDEX corrections_user_idx ON corrections (user_id);

-- A label's kind: what the labeller wrote ('labeller', as every label so far), or a user's true box or negative.
ALTER TABLE labels ADD COLUMN kind text NOT NULL DEFAULT 'labeller'
    CHECK (kind IN ('labeller', 'user-box', 'user-negative'));
ALTER TABLE labels ADD COLUMN correction_id bigint REFERENCES corrections (id) ON DELETE CASCADE;
ALTER TABLE labels ADD CONSTRAINT labels_kind_shape CHECK (
    (kind = 'labeller' AND correction_id IS NULL)
    OR (kind = 'user-box' AND correction_id IS NOT NULL AND sight_id IS NOT NULL AND x_min IS NOT NULL AND NOT weak)
    OR (kind = 'user-negative' AND correction_id IS NOT NULL AND sight_id IS NULL AND x_min IS NULL AND NOT weak));
CREATE INDEX labels_correction_idx ON labels (correction_id);

-- The marts count corrections by kind (streams/).
ALTER TABLE city_marts ADD COLUMN user_boxes integer NOT NULL DEFAULT 0;
ALTER TABLE city_marts ADD COLUMN user_negatives integer NOT NULL DEFAULT 0;
ALTER TABLE sight_marts ADD COLUMN user_boxes integer NOT NULL DEFAULT 0;
