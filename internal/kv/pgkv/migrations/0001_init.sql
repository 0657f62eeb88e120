-- Buckets and their keys: bbolt's shape in two tables. Keys are bytea so
-- they order bytewise (bytea compares as unsigned bytes, like bbolt).
CREATE TABLE buckets (
	name bytea PRIMARY KEY
);
CREATE TABLE kv (
	bucket bytea NOT NULL REFERENCES buckets(name) ON DELETE CASCADE,
	key bytea NOT NULL,
	value bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
