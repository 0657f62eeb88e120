package server_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/server"
)

// TestPinFlooding plays a leaked pin token trying to keep GC from ever
// freeing space: a pin of a path the cache does not have is 404 (an admin
// may pin one before it is uploaded), a pin naming another path under a
// hash the cache has is 404, and past limits.max_pins_per_token a new pin
// is 403 naming the key, with nothing changed. Re-pinning its own paths,
// or one an admin pinned, stays possible at the limit; unpinning frees a
// place. Admins are not bounded.
func TestPinFlooding(t *testing.T) {
	const max = 4
	e := newUpEnvWith(t, t.TempDir(), false, nil, true, func(o *server.Options) {
		o.Limits = limits.Default()
		o.Limits.MaxPinsPerToken = max
	})
	var ps []*upPath
	for i := range max + 2 {
		p := newUpPath(t, fmt.Sprint("flood-", i), []byte(fmt.Sprint("system ", i)))
		e.upload(t, p)
		ps = append(ps, p)
	}
	absent := newUpPath(t, "flood-absent", []byte("never uploaded"))
	before := e.state(t, ps...)
	for _, body := range []string{"", `{"storePath":"` + absent.info.StorePath + `"}`} {
		code, msg := e.do(t, "POST", "/api/pins/"+absent.hash, e.pinTok, []byte(body))
		if code != 404 || !strings.Contains(msg, "does not have") {
			t.Fatalf("pin token, absent path (body %q): %d %q", body, code, msg)
		}
	}
	renamed := `{"storePath":"/nix/store/` + ps[0].hash + `-flood-other-name"}`
	if code, msg := e.do(t, "POST", "/api/pins/"+ps[0].hash, e.pinTok, []byte(renamed)); code != 404 {
		t.Fatalf("pin token, another name for a present hash: %d %q", code, msg)
	}
	if now := e.state(t, ps...); !reflect.DeepEqual(now, before) {
		t.Fatalf("refused pins changed the cache:\n%+v\n%+v", before, now)
	}
	if code, msg := e.do(t, "POST", "/api/pins/"+absent.hash, e.adminTok, nil); code != 200 {
		t.Fatalf("admin, absent path: %d %q", code, msg)
	}
	if code, msg := e.do(t, "POST", "/api/pins/"+ps[max+1].hash, e.adminTok, nil); code != 200 {
		t.Fatalf("admin pin: %d %q", code, msg)
	}
	for i := range max {
		if code, msg := e.do(t, "POST", "/api/pins/"+ps[i].hash, e.pinTok, nil); code != 200 {
			t.Fatalf("pin %d: %d %q", i, code, msg)
		}
	}
	atLimit := e.state(t, ps...)
	code, msg := e.do(t, "POST", "/api/pins/"+ps[max].hash, e.pinTok, nil)
	if code != 403 || !strings.Contains(msg, limits.KeyPinsPerToken) || strings.Contains(msg, "/var/") {
		t.Fatalf("pin %d, past the limit: %d %q, want 403 naming %s", max, code, msg, limits.KeyPinsPerToken)
	}
	if now := e.state(t, ps...); !reflect.DeepEqual(now, atLimit) {
		t.Fatalf("the refused pin changed the cache:\n%+v\n%+v", atLimit, now)
	}
	// At the limit: its own paths again, and the admin's, are fine.
	for _, hash := range []string{ps[0].hash, ps[max+1].hash} {
		if code, msg := e.do(t, "POST", "/api/pins/"+hash, e.pinTok, nil); code != 200 {
			t.Fatalf("re-pin at the limit: %d %q", code, msg)
		}
	}
	if code, _ := e.do(t, "DELETE", "/api/pins/"+ps[0].hash, e.pinTok, nil); code != 204 {
		t.Fatal("unpin")
	}
	if code, msg := e.do(t, "POST", "/api/pins/"+ps[max].hash, e.pinTok, nil); code != 200 {
		t.Fatalf("pin after freeing a place: %d %q", code, msg)
	}
	code, body := e.do(t, "GET", "/api/pins", e.adminTok, nil)
	var pins []struct{ Owner string }
	if code != 200 || json.Unmarshal([]byte(body), &pins) != nil {
		t.Fatalf("pin list: %d %s", code, body)
	}
	n := 0
	for _, p := range pins {
		if p.Owner == "deploy" {
			n++
		}
	}
	if n != max || len(pins) != max+2 {
		t.Fatalf("pins %s", body)
	}
	for _, p := range ps {
		if code, _ := e.do(t, "GET", "/"+p.hash+".narinfo", "", nil); code != 200 {
			t.Fatalf("%s not served", p.base)
		}
	}
}
