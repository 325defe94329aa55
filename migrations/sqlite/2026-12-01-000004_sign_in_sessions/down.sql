DROP INDEX refresh_tokens_session;
ALTER TABLE refresh_tokens DROP COLUMN used_at;
ALTER TABLE refresh_tokens DROP COLUMN session_id;
DROP TABLE sign_in_sessions;
