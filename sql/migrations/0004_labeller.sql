-- The labeller (consumers/): what the cost ledger counts, and the Vision landmark ids matched to sights.

-- calls_spent counts IMAGES sent to Google Vision (the units Google bills: one image x one feature), reserved
-- before each request, so it never exceeds MAX_GOOGLE_VISION_CALLS_PER_NEW_CITY. The original system counted
-- requests; those are kept in vision_requests for comparison.
COMMENT ON COLUMN labelling_costs.calls_spent IS
    'images sent to Google Vision (billed units), reserved before each request; capped by MAX_GOOGLE_VISION_CALLS_PER_NEW_CITY';
ALTER TABLE labelling_costs
    ADD COLUMN vision_requests     integer NOT NULL DEFAULT 0 CHECK (vision_requests >= 0),
    ADD COLUMN images_over_budget  integer NOT NULL DEFAULT 0 CHECK (images_over_budget >= 0);
COMMENT ON COLUMN labelling_costs.vision_requests IS 'HTTP requests made to Google Vision (each up to 16 images)';
COMMENT ON COLUMN labelling_costs.images_over_budget IS
    'images that found the budget spent: given the offline weak label, or left unlabelled when they have no query sight';

-- A Vision landmark id (Knowledge Graph mid) once matched to a sight of a city: later answers with the same mid
-- go to the same sight whatever their spelling or language.
CREATE TABLE vision_landmarks (
    city_id      bigint      NOT NULL REFERENCES cities (id) ON DELETE CASCADE,
    mid          text        NOT NULL CHECK (mid <> ''),
    sight_id     bigint      NOT NULL REFERENCES sights (id) ON DELETE CASCADE,
    description  text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (city_id, mid)
);
