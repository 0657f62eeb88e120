package local

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Nix 2.8's statements (local-store.cc QueryRealisedOutput and
// QueryRealisationReferences): a realisation row is keyed by the drv hash in
// "sha256:<base16>" form and the output name.
const (
	queryRealisation = `SELECT r.id, v.path, r.signatures FROM Realisations r
  JOIN ValidPaths v ON v.id = r.outputPath WHERE r.drvPath = ? AND r.outputName = ?`
	queryRealisationDeps = `SELECT r.drvPath, r.outputName, v.path FROM RealisationsRefs x
  JOIN Realisations r ON r.id = x.realisationReference
  JOIN ValidPaths v ON v.id = r.outputPath WHERE x.referrer = ?`
)

// realisationDoc is Realisation::toJSON of Nix 2.8 on. nlohmann::json keeps
// object keys sorted, so the fields are in that order here; outPath and
// the values of dependentRealisations are base names, and signatures is a
// sorted set.
type realisationDoc struct {
	DependentRealisations map[string]string `json:"dependentRealisations"`
	ID                    string            `json:"id"`
	OutPath               string            `json:"outPath"`
	Signatures            []string          `json:"signatures"`
}

// Realisation answers realisations/<id>.doi from the Realisations table,
// which only exists once ca-derivations has been enabled on this store.
// id is "<algo>:<hash>!<output>"; any hash encoding Nix accepts is
// understood, the database keys on base16.
func (s *Store) Realisation(ctx context.Context, id string) ([]byte, error) {
	hashStr, output, ok := strings.Cut(id, "!")
	if !ok || output == "" || len(output) > 256 || strings.ContainsAny(output, "/\x00!") {
		return nil, store.ErrNotFound
	}
	h, err := narinfo.ParseHash(hashStr)
	if err != nil {
		return nil, store.ErrNotFound
	}
	key := h.Algo + ":" + hex.EncodeToString(h.Digest)
	if ok, err := s.realisationsTable(ctx); err != nil || !ok {
		if err == nil {
			err = store.ErrNotFound
		}
		return nil, err
	}
	var (
		rowID int64
		out   string
		sigs  sql.NullString
	)
	err = s.db.QueryRowContext(ctx, queryRealisation, key, output).Scan(&rowID, &out, &sigs)
	if err == sql.ErrNoRows {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("local store: realisation %s: %w", id, err)
	}
	doc := realisationDoc{
		DependentRealisations: map[string]string{},
		ID:                    key + "!" + output,
		OutPath:               path.Base(out),
		Signatures:            strings.Fields(sigs.String),
	}
	rows, err := s.db.QueryContext(ctx, queryRealisationDeps, rowID)
	if err != nil {
		return nil, fmt.Errorf("local store: realisation %s: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var drv, name, p string
		if err := rows.Scan(&drv, &name, &p); err != nil {
			return nil, fmt.Errorf("local store: realisation %s: %w", id, err)
		}
		doc.DependentRealisations[drv+"!"+name] = path.Base(p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("local store: realisation %s: %w", id, err)
	}
	return marshalRealisation(doc)
}

func marshalRealisation(doc realisationDoc) ([]byte, error) {
	if doc.Signatures == nil {
		doc.Signatures = []string{}
	}
	slices.Sort(doc.Signatures)
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // nlohmann does not escape <, >, &
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func (s *Store) realisationsTable(ctx context.Context) (bool, error) {
	if s.hasRealisations.Load() {
		return true, nil
	}
	var n int
	err := s.db.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('Realisations', 'RealisationsRefs')`).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("local store: realisations: %w", err)
	}
	if n == 2 {
		s.hasRealisations.Store(true)
	}
	return n == 2, nil
}
