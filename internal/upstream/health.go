package upstream

import (
	"sync"
	"time"
)

// maxBackoff caps how long a failing upstream is skipped, so one that
// comes back is asked again within half a minute.
const maxBackoff = 30 * time.Second

// health is an upstream's backoff state: after a failure it is skipped
// until a deadline, so an unreachable upstream costs one timeout per
// backoff period rather than one per request. When the deadline passes,
// one request (the probe) is let through; the others still skip it
// until the probe has answered.
type health struct {
	mu        sync.Mutex
	delay     time.Duration // 0: up
	downUntil time.Time
	probing   bool
}

// admit reports whether a request may be sent at now.
func (h *health) admit(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.delay == 0 {
		return true
	}
	if now.Before(h.downUntil) || h.probing {
		return false
	}
	h.probing = true
	return true
}

// failed records a failure at now and returns the backoff started and
// whether the upstream was up before (so the caller logs the change once).
func (h *health) failed(now time.Time, timeout time.Duration) (delay time.Duration, wasUp bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	wasUp = h.delay == 0
	if !wasUp && !h.probing && now.Before(h.downUntil) {
		return h.delay, false // a request sent before it went down: already counted
	}
	if wasUp {
		h.delay = min(2*timeout, maxBackoff)
	} else {
		h.delay = min(2*h.delay, maxBackoff)
	}
	h.downUntil = now.Add(h.delay)
	h.probing = false
	return h.delay, wasUp
}

// ok records an answer (any answer: a miss is the upstream working) and
// reports whether the upstream was down.
func (h *health) ok() (wasDown bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	wasDown = h.delay != 0
	h.delay, h.probing, h.downUntil = 0, false, time.Time{}
	return wasDown
}
