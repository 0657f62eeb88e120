package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// ErrStalled is wrapped by the error of a NAR download the upstream sent
// nothing for during its Timeout (with store.ErrUnavailable).
var ErrStalled = errors.New("upstream sent nothing within the timeout")

// ErrNARURL is wrapped by OpenNAR's refusal of a narinfo URL that is not
// on the upstream's own scheme and host (or not a URL).
var ErrNARURL = errors.New("unusable NAR URL")

// OpenNAR starts the download of an answer's NAR file (URL relative to
// its upstream). The body's Read fails when the upstream sends nothing
// for the Timeout; it is not checked here (the caller verifies it).
//
// A 404 or 410 wraps store.ErrNotFound, any other failure
// store.ErrUnavailable; errors of the body's Read wrap
// store.ErrUnavailable and what the transport said (io.ErrUnexpectedEOF
// for a body cut short, ErrStalled for a stall).
func (s *Set) OpenNAR(ctx context.Context, a *Answer) (io.ReadCloser, error) {
	u := a.Upstream
	target, err := u.resolve(a.NarInfo.URL)
	if err != nil {
		u.m.badAnswer(ReasonForeignURL)
		return nil, fmt.Errorf("upstream %s: %w: %v", u.Name, ErrNARURL, err)
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	b := &narBody{u: u, url: target, cancel: cancel, start: time.Now()}
	b.timer = time.AfterFunc(u.Timeout, b.stall) // the wait for headers
	resp, err := s.sendNAR(ctx, u, target)
	b.timer.Stop()
	if err != nil {
		cancel()
		var ne net.Error
		if b.stalled.Load() || errors.As(err, &ne) && ne.Timeout() && parent.Err() == nil {
			err = fmt.Errorf("%w (%v): %v", ErrStalled, u.Timeout, err)
		}
		u.m.nar[resultError].Inc()
		return nil, &unavailableError{u.Name, fmt.Errorf("GET %s: %w", target.Redacted(), err)}
	}
	if resp.StatusCode != http.StatusOK {
		closeBody(resp.Body)
		cancel()
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone {
			u.m.nar[resultMiss].Inc()
			return nil, fmt.Errorf("upstream %s: GET %s: %s: %w", u.Name, target.Redacted(), resp.Status, store.ErrNotFound)
		}
		u.m.nar[resultError].Inc()
		return nil, &unavailableError{u.Name, fmt.Errorf("GET %s: %s", target.Redacted(), resp.Status)}
	}
	b.body = resp.Body
	return b, nil
}

func (s *Set) sendNAR(ctx context.Context, u *Upstream, target *url.URL) (*http.Response, error) {
	req, err := u.newRequest(ctx, target.String())
	if err != nil {
		return nil, err
	}
	return u.client.Do(req)
}

// narBody is a NAR download with a stall watchdog: the timer runs only
// while a Read waits for the upstream, so a slow consumer is not taken
// for a stalled upstream.
type narBody struct {
	u       *Upstream
	url     *url.URL
	body    io.ReadCloser
	cancel  context.CancelFunc
	timer   *time.Timer
	stalled atomic.Bool
	start   time.Time
	once    sync.Once
}

// stall is the watchdog firing: it cancels the request, which ends the
// Read waiting on it.
func (b *narBody) stall() {
	b.stalled.Store(true)
	b.cancel()
}

func (b *narBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.u.Timeout)
	n, err := b.body.Read(p)
	b.timer.Stop()
	if n > 0 {
		b.u.m.bytes.Add(float64(n))
	}
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		b.finish(resultHit)
		return n, err
	case b.stalled.Load():
		err = fmt.Errorf("%w (%v)", ErrStalled, b.u.Timeout)
	}
	b.finish(resultError)
	return n, &unavailableError{b.u.Name, fmt.Errorf("NAR %s: %w", b.url.Redacted(), err)}
}

// Close ends the download; one closed before its end still counts as
// answered (the caller stopped, not the upstream).
func (b *narBody) Close() error {
	b.timer.Stop()
	err := b.body.Close()
	b.cancel()
	b.finish(resultHit)
	return err
}

func (b *narBody) finish(result string) {
	b.once.Do(func() {
		b.u.m.nar[result].Inc()
		b.u.m.narS.Observe(time.Since(b.start).Seconds())
	})
}

// Bad records a bad NAR from u: a metric (reason, one of the Reason
// constants, is its label) and a log line naming the upstream, the path
// and err. A NAR whose content is wrong (another hash or size, no valid
// NAR, a compression nobody can read) is deterministic: the path's answer
// from u is then remembered as a miss for u's NegativeTTL, so the next
// Lookup tries the next upstream rather than the same NAR. A cut or
// stalled download is not: the next request may well succeed, and the
// reader's error stays the one request's.
func (s *Set) Bad(u *Upstream, storePath, reason string, err error) {
	u.m.badAnswer(reason)
	s.log.Warn("upstream: refused a NAR", "upstream", u.Name, "path", storePath, "reason", reason, "err", err)
	if reason == ReasonTruncated {
		return
	}
	if _, h, _, err := narinfo.ParseStorePath(storePath); err == nil {
		s.cache.put(cacheKey{u, h}, nil, s.opts.Now().Add(u.NegativeTTL))
	}
}
