package upload

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Pins are GC roots: a pinned path and its closure are never collected.
// The deployer pins each host's running system.

// Pin makes a path (and so its closure) a GC root. pathOrHash is a full
// store path or a bare hash part (the HTTP pin API names paths by hash).
// The path need not be uploaded yet: an operator may pin a system before
// pushing it (over HTTP only an admin may, see the server's pin route).
// The pin has no owner (see PinAs).
func (s *Store) Pin(ctx context.Context, pathOrHash, note string) error {
	_, err := s.PinAs(ctx, pathOrHash, note, "")
	return err
}

// PinAs pins like Pin, recording owner. A path pinned already under
// another owner keeps that pin unchanged (it is pinned, which is what the
// caller wants, and a pin must not change hands: its new owner could
// unpin it); existing reports that. The same owner pinning again
// refreshes the note and time.
func (s *Store) PinAs(ctx context.Context, pathOrHash, note, owner string) (existing *Pin, err error) {
	return s.PinWith(ctx, pathOrHash, note, owner, 0)
}

// PinWith is PinAs for an owner that may hold at most maxPins pins (0: no
// bound): a new pin past that is ErrTooManyPins and changes nothing, in
// the same transaction as the count. Re-pinning one of its own paths, or
// one another owner pinned, makes no new pin and is never refused.
func (s *Store) PinWith(ctx context.Context, pathOrHash, note, owner string, maxPins int) (existing *Pin, err error) {
	hp, storePath := pathOrHash, ""
	if strings.Contains(pathOrHash, "/") {
		dir, h, _, err := narinfo.ParseStorePath(pathOrHash)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", store.ErrInvalid, err)
		}
		if dir != s.storeDir {
			return nil, invalidf("%s is not in %s", pathOrHash, s.storeDir)
		}
		hp, storePath = h, pathOrHash
	}
	if !narinfo.ValidHashPart(hp) {
		return nil, invalidf("%q is neither a store path nor a hash part", pathOrHash)
	}
	if len(note) > 1024 {
		return nil, invalidf("pin note longer than 1024 bytes")
	}
	err = mapErr(s.db.Update(func(tx kv.Tx) error {
		if data := tx.Bucket(bPins).Get([]byte(hp)); data != nil {
			// A record that does not parse belongs to nobody (admin only).
			var old Pin
			_ = json.Unmarshal(data, &old)
			if old.Owner != owner || old.StorePath == "" {
				existing = &old
				return nil
			}
		}
		if maxPins > 0 && tx.Bucket(bPins).Get([]byte(hp)) == nil {
			n := 0
			err := tx.Bucket(bPins).ForEach(func(_, v []byte) error {
				var p Pin
				if json.Unmarshal(v, &p) == nil && p.Owner == owner {
					n++
				}
				return nil
			})
			if err != nil {
				return err
			}
			if n >= maxPins {
				return fmt.Errorf("%w: token %q holds %d pins, the most one token may (limits.max_pins_per_token = %d): unpin systems no host runs any more",
					ErrTooManyPins, owner, n, maxPins)
			}
		}
		if storePath == "" {
			storePath = storePathOf(tx, hp) // the hash when not uploaded yet
		}
		return putJSON(tx.Bucket(bPins), []byte(hp), Pin{StorePath: storePath, Note: note, Owner: owner, Created: s.now().UTC()})
	}))
	return existing, err
}

// Unpin removes the pin of a store path (or bare hash part), whoever made
// it. ErrNotFound when there was none.
func (s *Store) Unpin(ctx context.Context, pathOrHash string) error {
	return s.UnpinAs(ctx, pathOrHash, "", true)
}

// UnpinAs removes a pin if owner made it, or any pin when anyOwner (an
// admin). ErrNotFound when there was none, ErrNotOwner when another token
// made it; either way nothing changes. The check and the removal are one
// transaction.
func (s *Store) UnpinAs(ctx context.Context, pathOrHash, owner string, anyOwner bool) error {
	hp := pathOrHash
	if strings.Contains(pathOrHash, "/") {
		_, h, _, err := narinfo.ParseStorePath(pathOrHash)
		if err != nil {
			return fmt.Errorf("%w: %v", store.ErrInvalid, err)
		}
		hp = h
	} else if len(hp) > narinfo.HashPartLen {
		hp = hp[:narinfo.HashPartLen]
	}
	if !narinfo.ValidHashPart(hp) {
		return invalidf("%q is neither a store path nor a hash part", pathOrHash)
	}
	return mapErr(s.db.Update(func(tx kv.Tx) error {
		data := tx.Bucket(bPins).Get([]byte(hp))
		if data == nil {
			return store.ErrNotFound
		}
		if !anyOwner {
			var old Pin
			if json.Unmarshal(data, &old) != nil || old.StorePath == "" || old.Owner != owner {
				return ErrNotOwner
			}
		}
		return tx.Bucket(bPins).Delete([]byte(hp))
	}))
}

// Pins lists the GC roots, sorted by store path.
func (s *Store) Pins(ctx context.Context) ([]Pin, error) {
	var out []Pin
	err := s.db.View(func(tx kv.Tx) error {
		return tx.Bucket(bPins).ForEach(func(k, v []byte) error {
			var p Pin
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			out = append(out, p)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b Pin) int { return strings.Compare(a.StorePath, b.StorePath) })
	return out, err
}
