"""Erasure: the erasures log and its envelopes, the message-author index, and on
PostgreSQL the functions `recorder erase` runs through.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types spelled out rather than imported from recorder.schema (see 0001).
UTC_TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

# The same expression as recorder.schema.message_author, per engine.
MESSAGE_AUTHOR = {
    "postgresql": "COALESCE(envelope #>> '{payload,message,user}', "
    "envelope #>> '{payload,event,attachments,0,author_id}')",
    "sqlite": "COALESCE(json_extract(envelope, '$.payload.message.user'), "
    "json_extract(envelope, '$.payload.event.attachments[0].author_id'))",
}

# -- PostgreSQL: erasure as database-side functions, owned by the schema owner.
#
# SECURITY DEFINER with every name schema-qualified and search_path pinned
# (pg_catalog, then pg_temp last), so a caller's own objects cannot stand in
# for ours. EXECUTE is revoked from PUBLIC; `recorder db grant --eraser`
# grants the four entry points (start, plan, step, resume; never the internal
# apply, record, is_held, check_user) to the eraser,
# which gets no privilege on envelopes: it can erase only what an erasures row
# it started names, and every change it makes is logged by the same function.
# The tombstone and the scrub are built exactly as recorder.tombstone builds
# them (a test compares the two).

#: Transaction-level advisory lock that serialises erasure steps ("rece"),
#: recorder.erasure.ERASE_LOCK_KEY.
ERASE_LOCK_KEY = 0x72656365
_DEFINER = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp"

_FUNCTIONS = r"""
CREATE FUNCTION {s}.recorder_erasure_is_held(p_team_id text, p_channel_id text,
                                             p_user_id text, p_received_at timestamptz)
RETURNS text[] LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(h.name ORDER BY h.name), '{{}}')
    FROM {s}.legal_holds h
    WHERE h.released_at IS NULL
      AND (h.team_id IS NULL OR h.team_id = p_team_id)
      AND (h.channel_id IS NULL OR h.channel_id = p_channel_id)
      AND (h.user_id IS NULL OR h.user_id = p_user_id)
      AND (h.since IS NULL OR p_received_at >= h.since)
      AND (h.until IS NULL OR p_received_at < h.until)
$$;

CREATE FUNCTION {s}.recorder_erasure_check_user(p_user_id text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_user_id IS NULL OR p_user_id !~ '^[UW][A-Z0-9]{{2,31}}$' THEN
        RAISE EXCEPTION 'not a Slack user id: %', p_user_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION {s}.recorder_erasure_start(
    p_user_id text, p_team_id text, p_reason text, p_actor text,
    p_subject_action text, p_mention_action text
) RETURNS integer {definer} AS $$
DECLARE
    new_id integer;
BEGIN
    PERFORM {s}.recorder_erasure_check_user(p_user_id);
    IF coalesce(btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'an erasure needs a reason' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO {s}.erasures (requested_at, status, user_id, team_id, reason, actor, db_user,
                              subject_action, mention_action)
    VALUES (now(), 'running', p_user_id, p_team_id, p_reason, p_actor, session_user::text,
            p_subject_action, p_mention_action)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

CREATE FUNCTION {s}.recorder_erasure_plan(p_user_id text, p_team_id text,
                                          p_subjects boolean, p_mentions boolean)
RETURNS TABLE (kind text, channel_id text, envelopes bigint, held bigint) {definer} AS $$
BEGIN
    PERFORM {s}.recorder_erasure_check_user(p_user_id);
    RETURN QUERY
    WITH subjects AS (
        SELECT 'subject'::text AS kind, x.channel_id, x.team_id, x.user_id, x.received_at
        FROM {s}.envelopes x
        WHERE p_subjects
          AND (x.user_id = p_user_id OR {author} = p_user_id)
          AND (p_team_id IS NULL OR x.team_id = p_team_id)
    ), mentioning AS (
        SELECT 'mention'::text AS kind, x.channel_id, x.team_id, x.user_id, x.received_at
        FROM {s}.envelopes x
        WHERE p_mentions
          -- CASE fixes the order: the planner would run the regex on every text first.
          AND CASE WHEN strpos(x.envelope_text, p_user_id) > 0
                   THEN x.envelope_text ~ ('<@' || p_user_id || '(\|[^>]*)?>|"' || p_user_id || '"')
                        AND x.user_id IS DISTINCT FROM p_user_id
                        AND {author} IS DISTINCT FROM p_user_id
                   ELSE false END
          AND (p_team_id IS NULL OR x.team_id = p_team_id)
    )
    SELECT c.kind, c.channel_id, count(*),
           count(*) FILTER (WHERE cardinality({s}.recorder_erasure_is_held(
               c.team_id, c.channel_id, c.user_id, c.received_at)) > 0)
    FROM (SELECT * FROM subjects UNION ALL SELECT * FROM mentioning) c
    GROUP BY c.kind, c.channel_id
    ORDER BY c.kind DESC, c.channel_id NULLS LAST;
END
$$;

-- Internal: erase or scrub one locked envelope; returns the new text's digest.
CREATE FUNCTION {s}.recorder_erasure_apply(p_erasure_id integer, p_envelope_id text,
                                           p_action text, p_user_id text)
RETURNS text {definer} AS $$
DECLARE
    e record;
    cur_sha text;
    new_text text;
    new_json jsonb;
BEGIN
    SELECT x.* INTO STRICT e FROM {s}.envelopes x WHERE x.envelope_id = p_envelope_id;
    cur_sha := encode(sha256(convert_to(e.envelope_text, 'UTF8')), 'hex');
    IF p_action = 'erase' THEN
        new_text := '{{"envelope_id":' || to_json(e.envelope_id)::text
            || ',"type":' || coalesce(to_json(e.envelope_type)::text, 'null')
            || ',"recorder_erasure":{{"erasure_id":' || p_erasure_id::text
            || ',"original_sha256":"' || cur_sha || '"}}'
            || ',"columns":{{"team_id":' || coalesce(to_json(e.team_id)::text, 'null')
            || ',"enterprise_id":' || coalesce(to_json(e.enterprise_id)::text, 'null')
            || ',"api_app_id":' || coalesce(to_json(e.api_app_id)::text, 'null')
            || ',"event_id":' || coalesce(to_json(e.event_id)::text, 'null')
            || ',"event_type":' || coalesce(to_json(e.event_type)::text, 'null')
            || ',"channel_id":' || coalesce(to_json(e.channel_id)::text, 'null')
            || ',"retry_attempt":' || coalesce(e.retry_attempt::text, 'null')
            || ',"retry_reason":' || coalesce(to_json(e.retry_reason)::text, 'null')
            || '}}}}';
        new_json := new_text::jsonb;
        UPDATE {s}.envelopes
        SET envelope_text = new_text, envelope = new_json, user_id = NULL,
            status = 'done', completed_at = coalesce(completed_at, now())
        WHERE envelope_id = p_envelope_id;
    ELSIF p_action = 'scrub' THEN
        new_text := replace(
            regexp_replace(e.envelope_text, '<@' || p_user_id || '(\|[^>]*)?>', '<@[erased]>', 'g'),
            '"' || p_user_id || '"', '"[erased]"');
        -- The queryable copy gets the same replacements: it cannot be cast from
        -- a text with escapes jsonb refuses, and it is already jsonb-safe.
        new_json := replace(
            regexp_replace(e.envelope::text, '<@' || p_user_id || '(\|[^>]*)?>', '<@[erased]>', 'g'),
            '"' || p_user_id || '"', '"[erased]"')::jsonb;
        UPDATE {s}.envelopes SET envelope_text = new_text, envelope = new_json
        WHERE envelope_id = p_envelope_id;
    ELSE
        RAISE EXCEPTION 'unknown erasure action %', p_action;
    END IF;
    RETURN encode(sha256(convert_to(new_text, 'UTF8')), 'hex');
END
$$;

CREATE FUNCTION {s}.recorder_erasure_record(
    p_erasure_id integer, p_envelope_id text, p_kind text, p_action text, p_user_id text
) RETURNS text {definer} AS $$
-- Internal: erase, scrub or defer one envelope, and log it; returns the new state.
DECLARE
    e record;
    holds text[];
    cur_sha text;
    new_sha text;
BEGIN
    -- Lock the row, then read it: a prune may have removed it meanwhile.
    SELECT x.envelope_text, x.team_id, x.channel_id, x.user_id, x.received_at INTO e
    FROM {s}.envelopes x WHERE x.envelope_id = p_envelope_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'absent';
    END IF;
    cur_sha := encode(sha256(convert_to(e.envelope_text, 'UTF8')), 'hex');
    holds := {s}.recorder_erasure_is_held(e.team_id, e.channel_id, e.user_id, e.received_at);
    IF cardinality(holds) > 0 THEN
        INSERT INTO {s}.erased_envelopes AS d (erasure_id, envelope_id, received_at, kind, action,
                                               state, held_by, original_sha256)
        VALUES (p_erasure_id, p_envelope_id, e.received_at, p_kind, p_action, 'deferred',
                to_jsonb(holds), cur_sha)
        ON CONFLICT (erasure_id, envelope_id) DO UPDATE SET held_by = excluded.held_by;
        RETURN 'deferred';
    END IF;
    new_sha := {s}.recorder_erasure_apply(p_erasure_id, p_envelope_id, p_action, p_user_id);
    INSERT INTO {s}.erased_envelopes AS d (erasure_id, envelope_id, received_at, kind, action,
                                           state, original_sha256, replacement_sha256, erased_at)
    VALUES (p_erasure_id, p_envelope_id, e.received_at, p_kind, p_action, 'done', cur_sha,
            new_sha, now())
    ON CONFLICT (erasure_id, envelope_id) DO UPDATE
        SET state = 'done', original_sha256 = excluded.original_sha256,
            replacement_sha256 = excluded.replacement_sha256, erased_at = excluded.erased_at;
    RETURN p_action;
END
$$;

CREATE FUNCTION {s}.recorder_erasure_step(p_erasure_id integer, p_limit integer)
RETURNS TABLE (erased integer, scrubbed integer, deferred integer, examined integer,
               status text) {definer} AS $$
DECLARE
    er record;
    c record;
    outcome text;
BEGIN
    erased := 0; scrubbed := 0; deferred := 0; examined := 0;
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'the batch size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock({lock_key});
    SELECT * INTO er FROM {s}.erasures r WHERE r.id = p_erasure_id FOR UPDATE;
    IF NOT FOUND OR er.status <> 'running' THEN
        RAISE EXCEPTION 'erasure % is not running', p_erasure_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR c IN
        (SELECT x.envelope_id, 'subject'::text AS kind, 'erase'::text AS action
         FROM {s}.envelopes x
         WHERE er.subject_action = 'erase'
           AND (x.user_id = er.user_id OR {author} = er.user_id)
           AND (er.team_id IS NULL OR x.team_id = er.team_id)
           AND NOT EXISTS (SELECT 1 FROM {s}.erased_envelopes d
                           WHERE d.erasure_id = p_erasure_id AND d.envelope_id = x.envelope_id)
         LIMIT p_limit)
        UNION ALL
        (SELECT x.envelope_id, 'mention'::text, er.mention_action
         FROM {s}.envelopes x
         WHERE er.mention_action <> 'skip'
           -- CASE fixes the order: the planner would run the regex on every text first.
           AND CASE WHEN strpos(x.envelope_text, er.user_id) > 0
                    THEN x.envelope_text ~ ('<@' || er.user_id || '(\|[^>]*)?>|"' || er.user_id || '"')
                         AND x.user_id IS DISTINCT FROM er.user_id
                         AND {author} IS DISTINCT FROM er.user_id
                    ELSE false END
           AND (er.team_id IS NULL OR x.team_id = er.team_id)
           AND NOT EXISTS (SELECT 1 FROM {s}.erased_envelopes d
                           WHERE d.erasure_id = p_erasure_id AND d.envelope_id = x.envelope_id)
         LIMIT p_limit)
        LIMIT p_limit
    LOOP
        examined := examined + 1;
        outcome := {s}.recorder_erasure_record(p_erasure_id, c.envelope_id, c.kind, c.action,
                                               er.user_id);
        IF outcome = 'erase' THEN
            erased := erased + 1;
        ELSIF outcome = 'scrub' THEN
            scrubbed := scrubbed + 1;
        ELSIF outcome = 'deferred' THEN
            deferred := deferred + 1;
        END IF;
    END LOOP;
    status := 'running';
    IF examined < p_limit THEN
        -- Nothing left to find: the run is over, whole or waiting for holds.
        UPDATE {s}.erasures r
        SET status = CASE WHEN EXISTS (SELECT 1 FROM {s}.erased_envelopes d
                                       WHERE d.erasure_id = p_erasure_id AND d.state = 'deferred')
                          THEN 'deferred' ELSE 'completed' END,
            finished_at = now()
        WHERE r.id = p_erasure_id
        RETURNING r.status INTO status;
        IF status = 'deferred' THEN
            UPDATE {s}.erasures r SET finished_at = NULL WHERE r.id = p_erasure_id;
        END IF;
    END IF;
    RETURN NEXT;
END
$$;

-- An envelope erased (or deferred) in a spool file, not yet in the database.
CREATE FUNCTION {s}.recorder_erasure_log_spooled(
    p_erasure_id integer, p_envelope_id text, p_received_at timestamptz, p_kind text,
    p_action text, p_state text, p_held_by jsonb, p_original text, p_replacement text
) RETURNS void {definer} AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {s}.erasures r WHERE r.id = p_erasure_id AND r.status = 'running') THEN
        RAISE EXCEPTION 'erasure % is not running', p_erasure_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_state NOT IN ('spooled', 'deferred') THEN
        RAISE EXCEPTION 'a spooled envelope is spooled or deferred, not %', p_state
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Only envelopes the database does not hold: one that drained meanwhile is
    -- erased and logged by the step, which runs after the spool's.
    IF EXISTS (SELECT 1 FROM {s}.envelopes x WHERE x.envelope_id = p_envelope_id) THEN
        RETURN;
    END IF;
    INSERT INTO {s}.erased_envelopes (erasure_id, envelope_id, received_at, kind, action, state,
                                      held_by, original_sha256, replacement_sha256, erased_at)
    VALUES (p_erasure_id, p_envelope_id, p_received_at, p_kind, p_action, p_state, p_held_by,
            p_original, p_replacement, CASE WHEN p_state = 'spooled' THEN now() END)
    ON CONFLICT (erasure_id, envelope_id) DO NOTHING;
END
$$;

-- Envelopes erased in an archive file (recorder prune --archive): pruned from the
-- database, so the log row is all the database keeps; the manifest gets the
-- rewritten file's size and digest (its members digest does not change: each
-- row keeps its envelope_sha256).
CREATE FUNCTION {s}.recorder_erasure_log_archived(
    p_erasure_id integer, p_archive_id text, p_file_name text, p_file_bytes bigint,
    p_file_sha256 text, p_entries jsonb
) RETURNS integer {definer} AS $$
DECLARE
    n integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {s}.erasures r WHERE r.id = p_erasure_id AND r.status = 'running') THEN
        RAISE EXCEPTION 'erasure % is not running', p_erasure_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (
        SELECT 1 FROM jsonb_to_recordset(p_entries) AS j(envelope_id text)
        WHERE EXISTS (SELECT 1 FROM {s}.envelopes x WHERE x.envelope_id = j.envelope_id)
           OR NOT EXISTS (SELECT 1 FROM {s}.pruned_envelopes p WHERE p.envelope_id = j.envelope_id)
    ) THEN
        RAISE EXCEPTION 'only archived envelopes (pruned, logged) can be logged as archived'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- The manifest's digest changes only with the envelopes the rewrite erased
    -- in that file (pruned at the time they name, inside the file's range):
    -- otherwise the eraser could re-digest any file it had altered.
    IF jsonb_array_length(p_entries) = 0 OR EXISTS (
        SELECT 1 FROM jsonb_to_recordset(p_entries) AS j(envelope_id text, received_at timestamptz)
        WHERE NOT EXISTS (
            SELECT 1 FROM {s}.pruned_envelopes p, {s}.archive_files f
            WHERE p.envelope_id = j.envelope_id AND p.received_at = j.received_at
              AND f.archive_id = p_archive_id AND f.file_name = p_file_name
              AND j.received_at BETWEEN f.first_received_at AND f.last_received_at)
    ) THEN
        RAISE EXCEPTION 'archive file % is rewritten only for the archived envelopes erased in it',
            p_file_name USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE {s}.archive_files f SET file_bytes = p_file_bytes, file_sha256 = p_file_sha256
    WHERE f.archive_id = p_archive_id AND f.file_name = p_file_name AND f.state = 'complete';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no complete archive file % in archive %', p_file_name, p_archive_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO {s}.erased_envelopes (erasure_id, envelope_id, received_at, kind, action, state,
                                      original_sha256, replacement_sha256, erased_at)
    SELECT p_erasure_id, j.envelope_id, j.received_at, j.kind, j.action, 'archived',
           j.original_sha256, j.replacement_sha256, now()
    FROM jsonb_to_recordset(p_entries) AS j(envelope_id text, received_at timestamptz, kind text,
                                            action text, original_sha256 text,
                                            replacement_sha256 text)
    ON CONFLICT (erasure_id, envelope_id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE FUNCTION {s}.recorder_erasure_resume(p_limit integer, p_after_erasure integer,
                                            p_after_envelope text)
RETURNS TABLE (erased integer, scrubbed integer, deferred integer, gone integer,
               examined integer, last_erasure integer, last_envelope text) {definer} AS $$
DECLARE
    d record;
    outcome text;
BEGIN
    erased := 0; scrubbed := 0; deferred := 0; gone := 0; examined := 0;
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'the batch size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock({lock_key});
    FOR d IN
        SELECT q.erasure_id, q.envelope_id, q.kind, q.action, r.user_id
        FROM {s}.erased_envelopes q JOIN {s}.erasures r ON r.id = q.erasure_id
        WHERE q.state = 'deferred'
          AND (p_after_erasure IS NULL
               OR (q.erasure_id, q.envelope_id COLLATE "C") > (p_after_erasure, p_after_envelope))
        ORDER BY q.erasure_id, q.envelope_id COLLATE "C"
        LIMIT p_limit
    LOOP
        examined := examined + 1;
        last_erasure := d.erasure_id;
        last_envelope := d.envelope_id;
        outcome := {s}.recorder_erasure_record(d.erasure_id, d.envelope_id, d.kind, d.action,
                                               d.user_id);
        IF outcome = 'erase' THEN
            erased := erased + 1;
        ELSIF outcome = 'scrub' THEN
            scrubbed := scrubbed + 1;
        ELSIF outcome = 'deferred' THEN
            deferred := deferred + 1;
        ELSIF EXISTS (SELECT 1 FROM {s}.pruned_envelopes p WHERE p.envelope_id = d.envelope_id) THEN
            UPDATE {s}.erased_envelopes q SET state = 'gone', erased_at = now()
            WHERE q.erasure_id = d.erasure_id AND q.envelope_id = d.envelope_id;
            gone := gone + 1;
        ELSE
            deferred := deferred + 1;  -- not here yet: still in a spool, to be drained
        END IF;
    END LOOP;
    UPDATE {s}.erasures r SET status = 'completed', finished_at = now()
    WHERE r.status = 'deferred'
      AND NOT EXISTS (SELECT 1 FROM {s}.erased_envelopes q
                      WHERE q.erasure_id = r.id AND q.state = 'deferred');
    RETURN NEXT;
END
$$;
"""

_REVOKE = [
    "recorder_erasure_is_held(text, text, text, timestamptz)",
    "recorder_erasure_check_user(text)",
    "recorder_erasure_start(text, text, text, text, text, text)",
    "recorder_erasure_plan(text, text, boolean, boolean)",
    "recorder_erasure_apply(integer, text, text, text)",
    "recorder_erasure_record(integer, text, text, text, text)",
    "recorder_erasure_step(integer, integer)",
    "recorder_erasure_log_spooled(integer, text, timestamptz, text, text, text, jsonb, text, text)",
    "recorder_erasure_log_archived(integer, text, text, bigint, text, jsonb)",
    "recorder_erasure_resume(integer, integer, text)",
]


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("requested_at", UTC_TIMESTAMP, nullable=False),
        sa.Column(
            "finished_at",
            UTC_TIMESTAMP,
            comment="when the last envelope was done (NULL while deferred)",
        ),
        sa.Column(
            "status",
            sa.Text(),
            nullable=False,
            comment="running; deferred: some envelopes wait for legal holds; completed",
        ),
        sa.Column(
            "user_id", sa.Text(), nullable=False, comment="the Slack user whose data was erased"
        ),
        sa.Column("team_id", sa.Text(), comment="only envelopes of this team; NULL: every team"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "actor", sa.Text(), nullable=False, comment="who asked for it, as given (--actor)"
        ),
        sa.Column("db_user", sa.Text(), nullable=False, comment="the database role that ran it"),
        sa.Column(
            "subject_action",
            sa.Text(),
            nullable=False,
            comment="what was done to the user's envelopes",
        ),
        sa.Column(
            "mention_action",
            sa.Text(),
            nullable=False,
            comment="what was done to envelopes mentioning them",
        ),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'deferred')", name=op.f("ck_erasures_status")
        ),
        sa.CheckConstraint(
            "subject_action IN ('erase', 'skip')", name=op.f("ck_erasures_subject_action")
        ),
        sa.CheckConstraint(
            "mention_action IN ('erase', 'scrub', 'skip')",
            name=op.f("ck_erasures_mention_action"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
        comment="one row per `recorder erase`: who asked, why, whose data",
    )
    op.create_index("ix_erasures_user_id", "erasures", ["user_id"])
    op.create_table(
        "erased_envelopes",
        sa.Column(
            "erasure_id", sa.Integer(), autoincrement=False, nullable=False, comment="erasures.id"
        ),
        sa.Column("envelope_id", sa.Text(), nullable=False),
        sa.Column("received_at", UTC_TIMESTAMP, nullable=False),
        sa.Column(
            "kind",
            sa.Text(),
            nullable=False,
            comment="subject: the user's own; mention: mentions them",
        ),
        sa.Column(
            "action",
            sa.Text(),
            nullable=False,
            comment="erase: tombstone; scrub: mentions replaced",
        ),
        sa.Column(
            "state",
            sa.Text(),
            nullable=False,
            comment="done; deferred under held_by; gone: pruned first; "
            "spooled: done in a spool file; archived: done in an archive file",
        ),
        sa.Column("held_by", JSON_DOCUMENT, comment="names of the legal holds that deferred it"),
        sa.Column(
            "original_sha256", sa.Text(), nullable=False, comment="digest of the text it replaced"
        ),
        sa.Column(
            "replacement_sha256",
            sa.Text(),
            comment="digest of the text it wrote (NULL until done)",
        ),
        sa.Column("erased_at", UTC_TIMESTAMP, comment="NULL until done"),
        sa.CheckConstraint("kind IN ('subject', 'mention')", name=op.f("ck_erased_envelopes_kind")),
        sa.CheckConstraint("action IN ('erase', 'scrub')", name=op.f("ck_erased_envelopes_action")),
        sa.CheckConstraint(
            "state IN ('done', 'deferred', 'gone', 'spooled', 'archived')",
            name=op.f("ck_erased_envelopes_state"),
        ),
        sa.PrimaryKeyConstraint("erasure_id", "envelope_id", name=op.f("pk_erased_envelopes")),
        comment="every envelope an erasure changed or deferred, with the digests `verify` checks",
    )
    op.create_index("ix_erased_envelopes_envelope_id", "erased_envelopes", ["envelope_id"])
    op.create_index(
        "ix_erased_envelopes_deferred",
        "erased_envelopes",
        ["erasure_id"],
        postgresql_where=sa.text("state = 'deferred'"),
        sqlite_where=sa.text("state = 'deferred'"),
    )
    dialect = op.get_bind().dialect.name
    author = MESSAGE_AUTHOR[dialect]
    op.execute(
        f"CREATE INDEX ix_envelopes_message_author ON envelopes ({author}) "
        f"WHERE {author} IS NOT NULL"
    )
    if dialect == "postgresql":
        _create_functions()


def _schema() -> str:
    name = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    return '"' + str(name).replace('"', '""') + '"'


def _create_functions() -> None:
    s = _schema()
    author = MESSAGE_AUTHOR["postgresql"].replace("envelope #>>", "x.envelope #>>")
    # The DB-API cursor: '%' in the bodies is PL/pgSQL's placeholder, not the driver's.
    cursor = op.get_bind().connection.cursor()
    try:
        cursor.execute(
            _FUNCTIONS.format(s=s, definer=_DEFINER, author=author, lock_key=ERASE_LOCK_KEY)
        )
        for signature in _REVOKE:
            cursor.execute(f"REVOKE ALL ON FUNCTION {s}.{signature} FROM PUBLIC")
    finally:
        cursor.close()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        s = _schema()
        for signature in reversed(_REVOKE):
            op.execute(f"DROP FUNCTION IF EXISTS {s}.{signature}")
    op.drop_index("ix_envelopes_message_author", table_name="envelopes")
    op.drop_table("erased_envelopes")
    op.drop_table("erasures")
