-- Sign-in sessions (CONTRACT §3 v2): a login starts one, refreshing continues it, access tokens
-- name it (`sid`). Ending it refuses its access tokens and closes its live connections.
CREATE TABLE sign_in_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX sign_in_sessions_user ON sign_in_sessions (user_id);
-- Every refresh token issued before sessions existed becomes a session of its own.
INSERT INTO sign_in_sessions (id, user_id, created_at) SELECT id, user_id, created_at FROM refresh_tokens;
-- A rotated refresh token is kept, marked used, until it expires: presented again, it ends its session.
ALTER TABLE refresh_tokens ADD COLUMN session_id BIGINT REFERENCES sign_in_sessions (id);
ALTER TABLE refresh_tokens ADD COLUMN used_at BIGINT;
UPDATE refresh_tokens SET session_id = id;
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
