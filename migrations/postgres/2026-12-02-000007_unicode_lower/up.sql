-- The station search lowers names by Unicode's rules on both backends under one name: here
-- PostgreSQL's own lower(); on SQLite, whose lower() knows ASCII only, a Rust function that every
-- connection registers (db::unicode_lower).
CREATE FUNCTION swapcast_lower(text) RETURNS text LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT lower($1) $$;
