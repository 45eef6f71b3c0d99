-- Hotline queue: what a notification is about, retry back-off for its delivery, and queue-scan indexes.

-- 'family' (a call exists for your relative) or 'escalation' (a supervisor must look at an unanswered call).
ALTER TABLE notifications ADD COLUMN kind text NOT NULL DEFAULT 'family'
    CHECK (kind IN ('family', 'escalation'));
-- Failed deliveries are retried with back-off; NULL means "now".
ALTER TABLE notifications ADD COLUMN next_attempt_at timestamptz;

-- The escalation sweep and the claim-timeout sweep scan only a handful of open calls.
CREATE INDEX calls_escalation_due ON calls (next_escalation_at) WHERE status = 'queued';
CREATE INDEX calls_claimed_idle ON calls (last_action_at) WHERE status = 'claimed';
