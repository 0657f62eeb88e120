package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// ErrDown is wrapped by the error of an upstream skipped because it
// failed recently (it is in backoff).
var ErrDown = errors.New("down after a recent failure, not asked")

// unavailableError is one upstream's failure to answer (network, timeout,
// 5xx, 429, backoff): store.ErrUnavailable, with what happened.
type unavailableError struct {
	upstream string
	err      error
}

func (e *unavailableError) Error() string   { return "upstream " + e.upstream + ": " + e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{store.ErrUnavailable, e.err} }

// lookupError is a Lookup that found nothing while some upstreams could
// not be asked: store.ErrUnavailable, naming each and why.
type lookupError struct {
	hashPart string
	errs     []error
}

func (e *lookupError) Error() string {
	msgs := make([]string, len(e.errs))
	for i, err := range e.errs {
		msgs[i] = err.Error()
	}
	return "upstream lookup of " + e.hashPart + ": " + strings.Join(msgs, "; ")
}

func (e *lookupError) Unwrap() []error { return append([]error{store.ErrUnavailable}, e.errs...) }

// badAnswer is an answer refused (malformed, about another path, not
// signed by the upstream's keys): a miss for this upstream, counted and
// logged, so it is store.ErrNotFound.
type badAnswer struct {
	reason string
	err    error
}

func (e *badAnswer) Error() string   { return "bad answer (" + e.reason + "): " + e.err.Error() }
func (e *badAnswer) Unwrap() []error { return []error{store.ErrNotFound, e.err} }

// Lookup asks the upstreams in order for hashPart's narinfo (only those
// with PullThrough when readers is set) and returns the first good
// answer. store.ErrNotFound when every one asked answered a miss (or a
// bad answer, which is counted and logged); store.ErrUnavailable when
// none had it and at least one could not be asked (down, timed out, 5xx),
// so a caller that must not mistake "cannot tell" for "absent" (an upload
// check) can refuse.
func (s *Set) Lookup(ctx context.Context, hashPart string, readers bool) (*Answer, error) {
	if !narinfo.ValidHashPart(hashPart) {
		return nil, fmt.Errorf("upstream lookup %q: %w", hashPart, store.ErrNotFound)
	}
	var failed []error
	for _, u := range s.ups {
		if readers && !u.PullThrough {
			continue
		}
		var a *Answer
		err := ctx.Err() // a caller gone before starts nothing
		if err == nil {
			a, err = s.lookupOne(ctx, u, hashPart)
		}
		switch {
		case err == nil:
			return a, nil
		case errors.Is(err, store.ErrNotFound):
			continue
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%w: upstream lookup of %s: %w", store.ErrUnavailable, hashPart, ctx.Err())
		}
		failed = append(failed, err)
	}
	if len(failed) > 0 {
		return nil, &lookupError{hashPart, failed}
	}
	return nil, fmt.Errorf("upstream lookup of %s: %w", hashPart, store.ErrNotFound)
}

// lookupOne asks one upstream, from memory when it answered lately. The
// request runs detached from ctx, bounded by the upstream's Timeout, so a
// caller that gives up neither cancels it for the others waiting on it
// nor leaves a cancellation cached as the answer.
func (s *Set) lookupOne(ctx context.Context, u *Upstream, hashPart string) (*Answer, error) {
	k := cacheKey{u, hashPart}
	if a, err := s.remembered(k); a != nil || err != nil {
		s.m.cacheHit.Inc()
		return a, err
	}
	s.m.cacheMiss.Inc()
	detached := context.WithoutCancel(ctx)
	c := s.flight.start(k, func() (*Answer, error) {
		// A fetch that ended between the look above and this one
		// has left its answer: no second request.
		if a, err := s.remembered(k); a != nil || err != nil {
			return a, err
		}
		return s.fetch(detached, u, hashPart)
	})
	select {
	case <-c.done:
		return c.a, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// remembered is the answer kept for k: an Answer, or a miss
// (store.ErrNotFound); nil, nil when nothing is kept.
func (s *Set) remembered(k cacheKey) (*Answer, error) {
	a, ok := s.cache.get(k, s.opts.Now())
	if ok && a == nil {
		return nil, fmt.Errorf("upstream %s: %w (remembered)", k.up.Name, store.ErrNotFound)
	}
	return a, nil
}

// fetch asks u for hashPart's narinfo unless u is in backoff, and
// settles the outcome: cache, health, metrics, log.
func (s *Set) fetch(ctx context.Context, u *Upstream, hashPart string) (*Answer, error) {
	if !u.health.admit(s.opts.Now()) {
		return nil, &unavailableError{u.Name, ErrDown}
	}
	ctx, cancel := context.WithTimeout(ctx, u.Timeout)
	defer cancel()
	start := time.Now()
	a, err := s.request(ctx, u, hashPart)
	u.m.narinfoS.Observe(time.Since(start).Seconds())
	return s.settle(u, hashPart, a, err)
}

// request GETs <URL>/<hashPart>.narinfo: an Answer, store.ErrNotFound
// for a miss, a *badAnswer, or any other error for "could not ask".
func (s *Set) request(ctx context.Context, u *Upstream, hashPart string) (*Answer, error) {
	req, err := u.newRequest(ctx, u.URL+"/"+hashPart+".narinfo")
	if err != nil {
		return nil, err
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer closeBody(resp.Body)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusGone, http.StatusUnauthorized, http.StatusForbidden:
		// Absent, as Nix reads them: a private cache answers 401/403
		// for paths the token may not see.
		return nil, fmt.Errorf("upstream %s: %s: %w", u.Name, resp.Status, store.ErrNotFound)
	default:
		return nil, fmt.Errorf("GET %s.narinfo: %s", hashPart, resp.Status)
	}
	limit := s.opts.Limits.MaxNarinfoSize
	if resp.ContentLength > limit {
		return nil, &badAnswer{ReasonOversize, fmt.Errorf("%d bytes, more than %d", resp.ContentLength, limit)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s.narinfo: %w", hashPart, err)
	}
	if int64(len(body)) > limit {
		return nil, &badAnswer{ReasonOversize, fmt.Errorf("more than %d bytes", limit)}
	}
	return s.check(u, hashPart, body)
}

// closeBody reads a little of what is left, so a short error page does
// not cost the connection, and closes.
func closeBody(b io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, b, 4096)
	_ = b.Close()
}

// settle records what one request to u found.
func (s *Set) settle(u *Upstream, hashPart string, a *Answer, err error) (*Answer, error) {
	k := cacheKey{u, hashPart}
	now := s.opts.Now()
	var bad *badAnswer
	switch {
	case err == nil:
		s.up(u)
		u.m.narinfo[resultHit].Inc()
		s.cache.put(k, a, now.Add(s.opts.PositiveTTL))
		return a, nil
	case errors.As(err, &bad):
		s.up(u)
		u.m.narinfo[resultBad].Inc()
		u.m.badAnswer(bad.reason)
		s.log.Warn("upstream: refused a narinfo", "upstream", u.Name, "hash", hashPart, "reason", bad.reason, "err", bad.err)
		s.cache.put(k, nil, now.Add(u.NegativeTTL))
		return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
	case errors.Is(err, store.ErrNotFound):
		s.up(u)
		u.m.narinfo[resultMiss].Inc()
		s.cache.put(k, nil, now.Add(u.NegativeTTL))
		return nil, err
	}
	u.m.narinfo[resultError].Inc()
	s.down(u, err)
	return nil, &unavailableError{u.Name, err}
}

// up records that u answered, and logs its return after a backoff.
func (s *Set) up(u *Upstream) {
	if u.health.ok() {
		u.m.up.Set(1)
		s.log.Info("upstream: back up", "upstream", u.Name)
	}
}

// down puts u in backoff after err, logging when it goes down.
func (s *Set) down(u *Upstream, err error) {
	delay, wasUp := u.health.failed(s.opts.Now(), u.Timeout)
	u.m.up.Set(0)
	if wasUp {
		s.log.Warn("upstream: down, skipped for a while", "upstream", u.Name, "err", err, "retry_in", delay)
		return
	}
	s.log.Debug("upstream: still down", "upstream", u.Name, "err", err, "retry_in", delay)
}
