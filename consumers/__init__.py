"""The labeller: consumes labelling requests and writes labels (Google Vision landmarks, or offline weak labels)."""
