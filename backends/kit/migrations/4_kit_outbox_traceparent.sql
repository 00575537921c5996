-- The W3C traceparent of the work that recorded the event (NULL outside traced work): the
-- relay puts it on the envelope so the consumers' spans join the producer's trace.
ALTER TABLE kit_outbox ADD COLUMN traceparent TEXT;
