package pullthrough

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// pullWorkers is how many paths of a closure PullClosure pulls at once.
const pullWorkers = 4

// PullClosure pulls every path of hashPart's closure that the upload
// store lacks and a pull-through upstream has, so that a pin of the path,
// which keeps its closure through GC, keeps all of it here: the fleet can
// then be rebuilt from the cache while the upstream is unreachable. It
// returns how many paths it pulled. A path neither has (one of this
// machine's own /nix/store) is not followed.
func (p *Store) PullClosure(ctx context.Context, hashPart string) (pulled int, err error) {
	var (
		mu    sync.Mutex
		seen  = map[string]bool{hashPart: true}
		queue = []string{hashPart}
		errs  []error
		busy  int
		cond  = sync.NewCond(&mu)
	)
	worker := func() {
		mu.Lock()
		defer mu.Unlock()
		for {
			for len(queue) == 0 && busy > 0 {
				cond.Wait()
			}
			if len(queue) == 0 || ctx.Err() != nil {
				cond.Broadcast()
				return
			}
			h := queue[len(queue)-1]
			queue = queue[:len(queue)-1]
			busy++
			mu.Unlock()
			refs, got, err := p.pullOne(ctx, h)
			mu.Lock()
			busy--
			if got {
				pulled++
			}
			if err != nil {
				errs = append(errs, err)
			}
			for _, r := range refs {
				if rh := narinfo.HashPartOf(r); !seen[rh] {
					seen[rh] = true
					queue = append(queue, rh)
				}
			}
			cond.Broadcast()
		}
	}
	var wg sync.WaitGroup
	for range pullWorkers {
		wg.Add(1)
		go func() { defer wg.Done(); worker() }()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return pulled, errors.Join(errs...)
}

// pullOne makes sure the upload store has hashPart when an upstream does,
// and returns its references; got reports that it was pulled now.
func (p *Store) pullOne(ctx context.Context, hashPart string) (refs []string, got bool, err error) {
	kept, err := p.into.PathInfo(ctx, hashPart)
	if err == nil {
		return kept.References, false, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, false, err
	}
	a, err := p.set.Lookup(ctx, hashPart, true)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("pull %s: %w", hashPart, err)
	}
	info := pathInfo(a, p.into.StoreDir())
	r, err := p.open(ctx, a, true)
	if err != nil {
		return nil, false, err
	}
	defer r.Close()
	if err := r.wait(); err != nil {
		return nil, false, err
	}
	return info.References, true, nil
}
