package local_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/internal/store/storetest"
	"github.com/bos55/concordia/pkg/nar"
)

// nixSchema is Nix 2.8's schema.sql (schema version 10), for databases
// made without Nix: they let the suite and the fuzzer run where Nix is not
// installed, and cover rows Nix 2.8 no longer writes.
const nixSchema = `
CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
CREATE TABLE Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
CREATE INDEX IndexReferrer on Refs(referrer);
CREATE INDEX IndexReference on Refs(reference);
CREATE TABLE DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
PRAGMA journal_mode = wal;
`

type syntheticStore struct {
	dir, db, real string
	paths         []string
	fx            storetest.Fixture
}

// newSyntheticStore writes a store of three paths by hand: one whose hash
// column is base16 (what Nix writes), one in the nix32 form older Nix
// versions left behind, a directory referring to both and to itself.
func newSyntheticStore(t testing.TB) *syntheticStore {
	t.Helper()
	dir := t.TempDir()
	s := &syntheticStore{dir: dir, db: filepath.Join(dir, "db.sqlite"), real: filepath.Join(dir, "store")}
	must(t, os.Mkdir(s.real, 0o755))
	db, err := sql.Open("sqlite3", s.db)
	must(t, err)
	defer db.Close()
	_, err = db.Exec(nixSchema)
	must(t, err)

	p1 := "/nix/store/" + rand32(t) + "-hello"
	p2 := "/nix/store/" + rand32(t) + "-old-hash-form"
	p3 := "/nix/store/" + rand32(t) + "-dir"
	must(t, os.WriteFile(filepath.Join(s.real, filepath.Base(p1)), []byte("hello\n"), 0o444))
	must(t, os.WriteFile(filepath.Join(s.real, filepath.Base(p2)), []byte("old\n"), 0o555))
	d := filepath.Join(s.real, filepath.Base(p3))
	must(t, os.MkdirAll(filepath.Join(d, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(d, "sub", "ref"), []byte(p1+"\n"+p2+"\n"+p3+"\n"), 0o444))
	must(t, os.Symlink("sub/ref", filepath.Join(d, "link")))

	insert := func(p, form, sigs string, refs ...string) storetest.Path {
		var b bytes.Buffer
		if _, err := nar.DumpPath(&b, filepath.Join(s.real, filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b.Bytes())
		hash := "sha256:" + hex.EncodeToString(sum[:])
		if form == "nix32" {
			hash = "sha256:" + nixbase32.EncodeToString(sum[:])
		}
		res, err := db.Exec(`INSERT INTO ValidPaths (path, hash, registrationTime, deriver, narSize, sigs) VALUES (?, ?, 1700000000, ?, ?, ?)`,
			p, hash, p+".drv", b.Len(), sql.NullString{String: sigs, Valid: sigs != ""})
		must(t, err)
		id, _ := res.LastInsertId()
		for _, r := range refs {
			_, err := db.Exec(`INSERT INTO Refs (referrer, reference) VALUES (?, (SELECT id FROM ValidPaths WHERE path = ?))`, id, r)
			must(t, err)
		}
		s.paths = append(s.paths, p)
		var sigList []string
		if sigs != "" {
			sigList = strings.Fields(sigs)
		}
		return storetest.Path{StorePath: p, NAR: b.Bytes(), References: append([]string{}, refs...), Deriver: p + ".drv", Sigs: sigList}
	}
	s.fx.Paths = append(s.fx.Paths,
		insert(p1, "base16", ""),
		insert(p2, "nix32", "a:c2ln b:c2ln"),
	)
	// A self-reference needs the row first.
	dirPath := insert(p3, "base16", "", p2, p1)
	_, err = db.Exec(`INSERT INTO Refs (referrer, reference) SELECT id, id FROM ValidPaths WHERE path = ?`, p3)
	must(t, err)
	dirPath.References = append(dirPath.References, p3)
	s.fx.Paths = append(s.fx.Paths, dirPath)
	return s
}

func (s *syntheticStore) open(t testing.TB) *local.Store {
	t.Helper()
	st, err := local.Open(context.Background(), local.Options{DBPath: s.db, RealStoreDir: s.real, LogDir: filepath.Join(s.dir, "logs")})
	must(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

// TestSynthetic runs the suite without Nix, on rows in forms Nix 2.8 no
// longer writes, and on a database without the ca-derivations tables.
func TestSynthetic(t *testing.T) {
	s := newSyntheticStore(t)
	storetest.Run(t, func(t *testing.T) (store.Store, storetest.Fixture) {
		return s.open(t), s.fx
	})
	t.Run("NoRealisationsTable", func(t *testing.T) {
		id := "sha256:" + strings.Repeat("ab", 32) + "!out"
		if _, err := s.open(t).Realisation(context.Background(), id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Realisation without the table = %v, want ErrNotFound", err)
		}
	})
}

// FuzzLookups feeds request-controlled names to every lookup: no panic,
// nothing but ErrNotFound for what is not there, and only an exact hash
// part ever finds a path.
func FuzzLookups(f *testing.F) {
	s := newSyntheticStore(f)
	st := s.open(f)
	for _, p := range s.paths {
		base := filepath.Base(p)
		f.Add(base[:32])
		f.Add(base)
		f.Add(base + ".drv")
	}
	f.Add("")
	f.Add("../../../../etc/passwd")
	f.Add("sha256:" + strings.Repeat("0", 64) + "!out")
	f.Add("sha256-" + strings.Repeat("A", 43) + "=!out")
	f.Add("00000000000000000000000000000000")
	f.Fuzz(func(t *testing.T, s string) {
		ctx := context.Background()
		info, err := st.PathInfo(ctx, s)
		switch {
		case err == nil:
			if !strings.HasPrefix(info.StorePath, "/nix/store/"+s+"-") || len(s) != 32 {
				t.Errorf("PathInfo(%q) found %s", s, info.StorePath)
			}
		case !errors.Is(err, store.ErrNotFound):
			t.Errorf("PathInfo(%q) = %v", s, err)
		}
		if r, _, err := st.BuildLog(ctx, s); err == nil {
			r.Close()
			t.Errorf("BuildLog(%q) found a log in an empty log directory", s)
		} else if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("BuildLog(%q) = %v", s, err)
		}
		if _, err := st.Realisation(ctx, s); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Realisation(%q) = %v", s, err)
		}
	})
}
