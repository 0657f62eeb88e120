package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

type uploadCache struct {
	srv   *server
	state string
	netrc string
}

// startUploadCache runs Concordia with only an upload store (no local
// store, which already has every path and would make uploads no-ops) and
// a write token handed to Nix through a netrc file.
func (b *bench) startUploadCache(ctx context.Context, bin string) (*uploadCache, error) {
	return b.startUploadCacheWith(ctx, bin, "")
}

// startUploadCacheWith is startUploadCache with extra top-level config
// lines (e.g. TLS).
func (b *bench) startUploadCacheWith(ctx context.Context, bin, extra string) (*uploadCache, error) {
	return b.startUploadServer(ctx, bin, "concordia upload", "zstd", filepath.Join(b.work, "state-upload"), extra, "")
}

// startUploadServer runs Concordia with only an upload store in state:
// on disk under state when backend is "", or on the [upload.s3] and
// [upload.database] tables backend holds.
func (b *bench) startUploadServer(ctx context.Context, bin, name, compression, state, extra, backend string) (*uploadCache, error) {
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	token := hex.EncodeToString(tok)
	sum := sha256.Sum256([]byte(token))
	tokens := filepath.Join(state, "tokens")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf("bench:read,write:%x\n", sum)), 0o600); err != nil {
		return nil, err
	}
	cfg := filepath.Join(state, "cache.toml")
	conf := fmt.Sprintf("%snix_db_path = %q\n[upload]\ntokens_file = %q\n", extra, filepath.Join(state, "no-local-store.sqlite"), tokens)
	if backend == "" {
		conf += fmt.Sprintf("dir = %q\n", filepath.Join(state, "upload"))
	} else {
		conf += backend
	}
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	srv, err := b.startConcordiaBin(ctx, bin, name, compression, state, "--config", cfg)
	if err != nil {
		return nil, err
	}
	netrc := filepath.Join(state, "netrc")
	if err := os.WriteFile(netrc, []byte(fmt.Sprintf("machine 127.0.0.1 login bench password %s\n", token)), 0o600); err != nil {
		return nil, err
	}
	return &uploadCache{srv: srv, state: state, netrc: netrc}, nil
}

// uploadSink is the floor of `nix copy --to http://`: a server that keeps
// nothing, checks nothing and answers every lookup "absent", so the time
// is Nix's own HTTP client work.
func uploadSink(args []string) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/nix-cache-info" && r.Method != http.MethodPut:
			w.Header().Set("Content-Type", "text/x-nix-cache-info")
			_, _ = io.WriteString(w, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
		case r.Method == http.MethodPut:
			_, _ = io.Copy(io.Discard, r.Body)
		default:
			http.NotFound(w, r)
		}
	})
	srv := &http.Server{Addr: args[0], Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		panic(err)
	}
}

// startUploadSink runs uploadSink in a child process.
func (b *bench) startUploadSink(ctx context.Context) (*server, error) {
	return b.startSelf(ctx, "upload sink (client floor)", "upload-sink")
}
