"""audit views and the read-only auditor role

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 09:00:00

Three views let an auditor with psql or a BI tool read decisions without knowing the
tables:

- ``audit_request_outcome``: one row per request: its job and tenant, prompt, status and
  error, the chosen candidate (model and text), the fused answer, the latest ranking's
  ranker, revision, strategy and the margin between its top two scores, the fuser and
  the candidates it read, and counts of candidates (ok / failed), comparisons and labels.
- ``audit_comparison``: one row per stored comparison, with both candidates' models and
  texts, the logit (A over B) and the ranker revision.
- ``audit_label``: one row per label a person recorded, with the candidates' models and
  texts and the ranker's own logit for that pair where one was stored.

``blendq_auditor`` is a NOLOGIN role that may SELECT from these views and nothing else
(the views run with their owner's rights, so no table grant is needed). Give a person
access with a login role that is a member of it::

    CREATE ROLE ana LOGIN PASSWORD '…' IN ROLE blendq_auditor;   -- or
    GRANT blendq_auditor TO ana;

Roles belong to the whole PostgreSQL cluster, so the role is created only if missing and
the downgrade leaves it in place (other blendq databases on the cluster may use it).

PostgreSQL only: the embedded run's SQLite file has no roles and needs no views, so this
revision does nothing there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "blendq_auditor"
VIEWS = ("audit_request_outcome", "audit_comparison", "audit_label")

REQUEST_OUTCOME = """
CREATE VIEW audit_request_outcome AS
SELECT r.id AS request_id, r.job_id, j.tenant, r.custom_id, r.line_no,
       r.instruction, r.input, r.status, r.error,
       r.chosen_candidate_id, chosen.model AS chosen_model, chosen.text AS chosen_text,
       r.fused_output,
       rk.ranker, rk.ranker_revision, rk.strategy, rk.aggregation,
       (rk.entries -> 0 ->> 'score')::float8 - (rk.entries -> 1 ->> 'score')::float8
           AS top_margin,
       f.fuser, f.fuser_revision, f.candidate_ids AS fusion_candidate_ids,
       (SELECT count(*) FROM candidate c WHERE c.request_id = r.id AND c.ok)
           AS candidates_ok,
       (SELECT count(*) FROM candidate c WHERE c.request_id = r.id AND NOT c.ok)
           AS candidates_failed,
       (SELECT count(*) FROM comparison cmp WHERE cmp.request_id = r.id) AS comparisons,
       (SELECT count(*) FROM label l WHERE l.request_id = r.id) AS labels,
       j.created_at AS job_created_at, r.completed_at
FROM request r
JOIN job j ON j.id = r.job_id
LEFT JOIN candidate chosen ON chosen.id = r.chosen_candidate_id
LEFT JOIN LATERAL (
    SELECT * FROM ranking x WHERE x.request_id = r.id ORDER BY x.id DESC LIMIT 1
) rk ON true
LEFT JOIN LATERAL (
    SELECT * FROM fusion y WHERE y.request_id = r.id ORDER BY y.id DESC LIMIT 1
) f ON true
"""

COMPARISON = """
CREATE VIEW audit_comparison AS
SELECT cmp.id AS comparison_id, cmp.request_id, r.job_id, r.custom_id,
       cmp.ranker_revision, cmp.logit,
       cmp.candidate_a_id, a.model AS model_a, a.text AS text_a,
       cmp.candidate_b_id, b.model AS model_b, b.text AS text_b,
       cmp.created_at
FROM comparison cmp
JOIN request r ON r.id = cmp.request_id
JOIN candidate a ON a.id = cmp.candidate_a_id
JOIN candidate b ON b.id = cmp.candidate_b_id
"""

LABEL = """
CREATE VIEW audit_label AS
SELECT l.id AS label_id, l.request_id, r.job_id, r.custom_id, l.verdict,
       l.candidate_a_id, a.model AS model_a, a.text AS text_a,
       l.candidate_b_id, b.model AS model_b, b.text AS text_b,
       l.ranking, l.comparison_id, cmp.logit AS ranker_logit,
       cmp.ranker_revision, l.author, l.note, l.created_at
FROM label l
JOIN request r ON r.id = l.request_id
LEFT JOIN candidate a ON a.id = l.candidate_a_id
LEFT JOIN candidate b ON b.id = l.candidate_b_id
LEFT JOIN comparison cmp ON cmp.id = l.comparison_id
"""


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgres():
        return
    for ddl in (REQUEST_OUTCOME, COMPARISON, LABEL):
        op.execute(ddl)
    # Two migrators on one cluster may race to create the role; the second one's error is
    # swallowed inside the block so its transaction goes on.
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                CREATE ROLE {ROLE} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END
        $$""")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {ROLE}")


def downgrade() -> None:
    if not _postgres():
        return
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                REVOKE USAGE ON SCHEMA public FROM {ROLE};
            END IF;
        END
        $$""")
