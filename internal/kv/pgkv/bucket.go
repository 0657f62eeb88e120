package pgkv

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/bos55/concordia/internal/kv"
)

// pageSize is how many keys ForEach reads at once: it bounds memory and
// lets fn query the same connection between pages.
const pageSize = 1000

type bucket struct {
	tx   *tx
	name []byte
}

var _ kv.Bucket = (*bucket)(nil)

func (b *bucket) Get(k []byte) []byte {
	if b.tx.check() != nil {
		return nil
	}
	ctx, cancel := b.tx.db.op()
	defer cancel()
	var v []byte
	err := b.tx.queryRow(ctx, "SELECT value FROM kv WHERE bucket=$1 AND key=$2", []any{b.name, k}, &v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		b.tx.fail(fmt.Errorf("pgkv: get %q/%q: %w", b.name, k, err))
		return nil
	}
	if v == nil {
		v = []byte{} // present but empty, unlike absent
	}
	return v
}

func (b *bucket) Put(k, v []byte) error {
	if err := b.tx.check(); err != nil {
		return err
	}
	if len(k) == 0 {
		return errors.New("pgkv: key required")
	}
	if v == nil {
		v = []byte{}
	}
	ctx, cancel := b.tx.db.op()
	defer cancel()
	_, err := b.tx.exec(ctx, `INSERT INTO kv(bucket, key, value) VALUES($1, $2, $3)
		ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value`, b.name, k, v)
	if err != nil {
		return b.tx.fail(fmt.Errorf("pgkv: put %q/%q: %w", b.name, k, err))
	}
	return nil
}

func (b *bucket) Delete(k []byte) error {
	if err := b.tx.check(); err != nil {
		return err
	}
	ctx, cancel := b.tx.db.op()
	defer cancel()
	if _, err := b.tx.exec(ctx, "DELETE FROM kv WHERE bucket=$1 AND key=$2", b.name, k); err != nil {
		return b.tx.fail(fmt.Errorf("pgkv: delete %q/%q: %w", b.name, k, err))
	}
	return nil
}

// ForEach pages through the keys in order, reading a page completely
// before calling fn on it, so no result is open while fn uses the
// transaction's connection.
func (b *bucket) ForEach(fn func(k, v []byte) error) error {
	after := []byte{}
	for {
		if err := b.tx.check(); err != nil {
			return err
		}
		keys, vals, err := b.page(after)
		if err != nil {
			return b.tx.fail(err)
		}
		for i := range keys {
			if err := fn(keys[i], vals[i]); err != nil {
				return err
			}
		}
		if len(keys) < pageSize {
			return nil
		}
		after = keys[len(keys)-1]
	}
}

func (b *bucket) page(after []byte) (keys, vals [][]byte, err error) {
	ctx, cancel := b.tx.db.op()
	defer cancel()
	rows, err := b.tx.query(ctx, "SELECT key, value FROM kv WHERE bucket=$1 AND key > $2 ORDER BY key LIMIT $3",
		b.name, after, pageSize)
	if err != nil {
		return nil, nil, fmt.Errorf("pgkv: foreach %q: %w", b.name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var k, v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return nil, nil, fmt.Errorf("pgkv: foreach %q: %w", b.name, err)
		}
		if v == nil {
			v = []byte{}
		}
		keys, vals = append(keys, k), append(vals, v)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("pgkv: foreach %q: %w", b.name, err)
	}
	return keys, vals, nil
}

func (b *bucket) KeyN() int {
	if b.tx.check() != nil {
		return 0
	}
	ctx, cancel := b.tx.db.op()
	defer cancel()
	var n int
	if err := b.tx.queryRow(ctx, "SELECT count(*) FROM kv WHERE bucket=$1", []any{b.name}, &n); err != nil {
		b.tx.fail(fmt.Errorf("pgkv: keyn %q: %w", b.name, err))
		return 0
	}
	return n
}
