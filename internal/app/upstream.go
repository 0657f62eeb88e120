package app

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/pullthrough"
	"github.com/bos55/concordia/internal/upstream"
)

// pullDirName is where, in the upload directory, downloads from an
// upstream are written while they run (on the disk they are kept on).
const pullDirName = "pulling"

// openUpstreams builds the [[upstream]] set, reading the credentials of
// private upstreams from their files; nil without upstreams.
func (a *App) openUpstreams(cfg *config.Config) (*upstream.Set, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, nil
	}
	ups := make([]upstream.Config, len(cfg.Upstreams))
	for i, u := range cfg.Upstreams {
		uc := upstream.Config{
			Name: u.Name, URL: strings.TrimRight(u.URL, "/"), Keys: u.Keys(),
			Timeout: time.Duration(u.Timeout), NegativeTTL: time.Duration(u.NegativeTTL),
			PullThrough: u.Pulls(),
		}
		switch {
		case u.TokenFile != "":
			b, err := os.ReadFile(u.TokenFile)
			if err != nil {
				return nil, fmt.Errorf("upstream %s: token_file: %w", u.Name, err)
			}
			uc.Token = strings.TrimSpace(string(b))
		case u.NetrcFile != "":
			login, password, err := cacheapi.NetrcLogin(u.NetrcFile, u.URL)
			if err != nil {
				return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
			}
			uc.User, uc.Password = login, password
		}
		ups[i] = uc
	}
	return upstream.New(upstream.Options{
		Upstreams: ups, StoreDir: cfg.VirtualNixStore, Limits: cfg.Limits.Values(),
		Logger: a.logger, Registry: a.Registry,
	})
}

// openPullThrough is the pull-through store over the upload store, when
// an upstream serves readers.
func (a *App) openPullThrough(cfg *config.Config, set *upstream.Set) error {
	if set == nil || !set.PullThrough() || a.Upload == nil {
		return nil
	}
	into, ok := any(a.Upload).(store.Adopter)
	if !ok {
		return errors.New("pull-through: the upload store cannot keep pulled paths")
	}
	p, err := pullthrough.New(pullthrough.Options{
		Upstreams: set, Into: into, TempDir: filepath.Join(cfg.Upload.Dir, pullDirName),
		Limits: cfg.Limits.Values(), Logger: a.logger, Registry: a.Registry,
	})
	if err != nil {
		return err
	}
	a.closers = append(a.closers, p.Close)
	a.Pull = p
	return nil
}

// upstreamOptions are what the server gets of the upstreams.
func (a *App) upstreamOptions(cfg *config.Config, opts *server.Options) {
	if a.upstreams == nil {
		return
	}
	if a.Pull != nil {
		opts.Upstream = a.Pull
	}
	opts.UpstreamCheck = pullthrough.Checker(a.upstreams, cfg.VirtualNixStore)
	for _, u := range cfg.Upstreams {
		opts.Upstreams = append(opts.Upstreams, server.UpstreamInfo{
			Name: u.Name, URL: u.URL, Keys: u.PublicKeys, PullThrough: u.Pulls(),
		})
	}
}
