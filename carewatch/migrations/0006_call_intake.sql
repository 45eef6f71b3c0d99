-- Alerts become calls inside the database: one statement per raise, so the alert engine can send it with
-- the state write-back and COMMIT and read nothing in between. A fall is two round trips (lock the
-- resident's state, then write everything and commit), not three; and a dozen statements fewer for the
-- engine's client to build and parse on the emergency path.

-- The fields of a call that anybody allowed to see the call may see (family included): no notes, no log.
-- One definition for the API's reads, the queue list and the live feed's payloads.
CREATE VIEW call_summaries AS
SELECT c.id, c.resident_id, r.name AS resident_name, c.priority, c.status, c.title, c.reason, c.event_at,
       c.late, c.cancelled_by_wearer, c.created_at, c.target_at, c.claimed_by, u.username AS claimed_by_name,
       c.claimed_at, c.first_claimed_at, c.last_action_at, c.resolved_at, c.outcome, c.escalation_level,
       c.escalated_at, c.next_escalation_at, c.version
  FROM calls c
  JOIN residents r ON r.id = c.resident_id
  LEFT JOIN users u ON u.id = c.claimed_by;

-- The live_events row for a change to a call (its trigger NOTIFYs on commit); the payload is the summary.
-- (PL/pgSQL, not SQL: PostgreSQL before 18 plans a SQL function's body on every call.)
CREATE FUNCTION queue_live(p_call bigint, p_kind text, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO live_events (at, kind, call_id, resident_id, payload)
    SELECT p_at, p_kind, s.id, s.resident_id, to_jsonb(s) FROM call_summaries s WHERE s.id = p_call;
END $$;

-- Open a call for an alert, or attach the alert to the resident's open call (raising its priority).
-- One open call per resident (calls_one_open_per_resident): two engine workers racing on one resident
-- both end on the same call; the loser's INSERT ... ON CONFLICT DO NOTHING waits for the winner's commit
-- and then finds the committed row. Family members are notified once per call when its priority is in
-- p_family_priorities (the hotline's policy, passed in so it is written down once, in Python).
CREATE FUNCTION open_or_attach_call(
    p_resident bigint, p_alert bigint, p_priority int, p_rule text, p_title text, p_event_at timestamptz,
    p_late boolean, p_now timestamptz, p_answer_target_s int, p_family_priorities int[],
    OUT call_id bigint, OUT created boolean, OUT priority int)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    c calls%ROWTYPE;
    target timestamptz := p_now + make_interval(secs => p_answer_target_s);
BEGIN
    created := false;
    FOR attempt IN 1..5 LOOP  -- bounded: a concurrent resolve between insert and re-select is rare
        INSERT INTO calls (resident_id, priority, status, title, reason, event_at, late, created_at, target_at,
                           next_escalation_at, last_action_at)
        VALUES (p_resident, p_priority, 'queued', p_title, p_rule, p_event_at, p_late, p_now, target, target,
                p_now)
        ON CONFLICT (resident_id) WHERE status <> 'resolved' DO NOTHING
        RETURNING * INTO c;
        IF FOUND THEN
            created := true;
            EXIT;
        END IF;
        SELECT * INTO c FROM calls WHERE resident_id = p_resident AND status <> 'resolved' FOR UPDATE;
        EXIT WHEN FOUND;
    END LOOP;
    IF c.id IS NULL THEN
        RAISE EXCEPTION 'could not open or find a call for resident %', p_resident;
    END IF;
    call_id := c.id;
    priority := c.priority;

    IF created THEN
        UPDATE alerts SET call_id = c.id WHERE id = p_alert;
        INSERT INTO call_log (call_id, at, actor, action, to_status, detail)
        VALUES (c.id, p_now, 'system:alerts', 'created', 'queued',
                jsonb_build_object('alert_id', p_alert, 'rule', p_rule, 'priority', p_priority, 'late', p_late));
        PERFORM queue_live(c.id, 'call.created', p_now);
    ELSE
        IF EXISTS (SELECT 1 FROM alerts a WHERE a.id = p_alert AND a.call_id = c.id) THEN
            RETURN;  -- redelivered alert: already on this call, nothing changed
        END IF;
        UPDATE alerts SET call_id = c.id WHERE id = p_alert;
        INSERT INTO call_log (call_id, at, actor, action, from_status, to_status, detail)
        VALUES (c.id, p_now, 'system:alerts', 'attached', c.status, c.status,
                jsonb_build_object('alert_id', p_alert, 'rule', p_rule, 'priority', p_priority));
        IF p_priority < c.priority THEN  -- P1 is the most urgent: a smaller number wins
            -- The answer clock for the new priority starts from this alert, but never later than before.
            UPDATE calls SET priority = p_priority, title = p_title, reason = p_rule,
                   target_at = LEAST(target_at, target),
                   next_escalation_at = CASE WHEN status = 'queued'
                       THEN LEAST(COALESCE(next_escalation_at, target), target) ELSE next_escalation_at END,
                   version = version + 1
             WHERE id = c.id;
            INSERT INTO call_log (call_id, at, actor, action, from_status, to_status, detail)
            VALUES (c.id, p_now, 'system:alerts', 'priority_changed', c.status, c.status,
                    jsonb_build_object('from_priority', c.priority, 'to_priority', p_priority,
                                       'alert_id', p_alert));
            priority := p_priority;
        ELSE
            UPDATE calls SET version = version + 1 WHERE id = c.id;
        END IF;
        PERFORM queue_live(c.id, 'call.updated', p_now);
    END IF;

    IF priority = ANY (p_family_priorities) THEN  -- once per recipient per call (UNIQUE(call_id, recipient))
        INSERT INTO notifications (call_id, recipient, channel, kind, created_at)
        SELECT c.id, 'contact:' || k.id, 'webhook', 'family', p_now
          FROM contacts k WHERE k.resident_id = p_resident AND k.notify
        UNION ALL
        SELECT c.id, 'user:' || u.id, 'webhook', 'family', p_now
          FROM family_links f JOIN users u ON u.id = f.user_id
         WHERE f.resident_id = p_resident AND u.role = 'family' AND NOT u.disabled
        ON CONFLICT (call_id, recipient) DO NOTHING;
    END IF;
END $$;

-- An alert raised by the rules: opens the (resident, rule) alert, or counts a repeat on the open one
-- (alerts_one_open decides), and makes sure it is on an open call. Returns the call's id.
CREATE FUNCTION raise_alert(
    p_resident bigint, p_device text, p_rule text, p_priority int, p_event_at timestamptz, p_now timestamptz,
    p_late boolean, p_title text, p_details jsonb, p_answer_target_s int, p_family_priorities int[])
RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_alert bigint;
    open_alert record;
    result record;
BEGIN
    FOR attempt IN 1..2 LOOP  -- the open alert may be closed between the INSERT and the SELECT: try again
        INSERT INTO alerts (resident_id, device_id, rule, priority, opened_at, raised_at, last_seen_at, late,
                            title, details)
        VALUES (p_resident, p_device, p_rule, p_priority, p_event_at, p_now, p_event_at, p_late, p_title,
                p_details)
        ON CONFLICT (resident_id, rule) WHERE status = 'open' DO NOTHING
        RETURNING id INTO new_alert;
        IF FOUND THEN
            INSERT INTO alert_log (alert_id, from_status, to_status, reason)
            VALUES (new_alert, NULL, 'open', p_rule || ' raised' || CASE WHEN p_late THEN ' (late)' ELSE '' END);
            SELECT * INTO result FROM open_or_attach_call(p_resident, new_alert, p_priority, p_rule, p_title,
                p_event_at, p_late, p_now, p_answer_target_s, p_family_priorities);
            RETURN result.call_id;
        END IF;
        SELECT a.id, a.call_id, k.status AS call_status INTO open_alert
          FROM alerts a LEFT JOIN calls k ON k.id = a.call_id
         WHERE a.resident_id = p_resident AND a.rule = p_rule AND a.status = 'open'
           FOR UPDATE OF a;
        IF FOUND THEN
            UPDATE alerts SET count = count + 1, last_seen_at = GREATEST(last_seen_at, p_event_at),
                   details = details || p_details || jsonb_build_object('last_device', p_device),
                   late = late OR p_late
             WHERE id = open_alert.id;
            IF open_alert.call_id IS NOT NULL AND open_alert.call_status <> 'resolved' THEN
                RETURN open_alert.call_id;  -- a repeat while its call is open: counted, nothing else
            END IF;
            SELECT * INTO result FROM open_or_attach_call(p_resident, open_alert.id, p_priority, p_rule,
                p_title, p_event_at, p_late, p_now, p_answer_target_s, p_family_priorities);
            RETURN result.call_id;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'resident %: alert % neither open nor insertable', p_resident, p_rule;
END $$;
