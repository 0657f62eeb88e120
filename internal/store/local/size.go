package local

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"github.com/bos55/concordia/internal/store"
)

var (
	_ store.Sizer     = (*Store)(nil)
	_ store.Referrers = (*Store)(nil)
)

// querySize counts in one pass of ValidPaths: the page that asks keeps
// the answer, so its cost (a table scan, milliseconds for a large store)
// is paid once every few seconds at most.
const querySize = `SELECT count(*), coalesce(sum(narSize), 0), coalesce(sum(registrationTime >= ?), 0) FROM ValidPaths`

// Size counts the paths of the Nix database and their NAR bytes.
func (s *Store) Size(ctx context.Context, since time.Time) (store.StoreSize, error) {
	var sz store.StoreSize
	err := s.db.QueryRowContext(ctx, querySize, since.Unix()).Scan(&sz.Paths, &sz.NarBytes, &sz.Since)
	if err != nil {
		return sz, fmt.Errorf("local store: count paths: %w", err)
	}
	return sz, nil
}

// queryReferrers uses Nix's IndexReference (Refs(reference)); one row
// past the limit tells whether there are more.
const queryReferrers = `SELECT r.path FROM ValidPaths t JOIN Refs ON Refs.reference = t.id JOIN ValidPaths r ON r.id = Refs.referrer
WHERE t.path = ? AND r.id != t.id ORDER BY r.path LIMIT ?`

// Referrers lists the valid paths whose references name storePath.
func (s *Store) Referrers(ctx context.Context, storePath string, limit int) ([]string, bool, error) {
	if limit < 1 {
		return nil, false, nil
	}
	rows, err := s.db.QueryContext(ctx, queryReferrers, storePath, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("local store: referrers of %s: %w", storePath, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var p sql.NullString
		if err := rows.Scan(&p); err != nil {
			return nil, false, fmt.Errorf("local store: referrers of %s: %w", storePath, err)
		}
		out = append(out, p.String)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("local store: referrers of %s: %w", storePath, err)
	}
	more := len(out) > limit
	if more {
		out = out[:limit]
	}
	slices.Sort(out)
	return out, more, nil
}
