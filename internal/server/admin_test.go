package server_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/store/upload"
)

// cacheState is everything an admin action could change: the pins, the
// store's counts, which paths are served, and the NAR files on disk.
type cacheState struct {
	Pins   []upload.Pin
	Stats  upload.Stats
	Served map[string]int
	Blobs  []string
}

func (e *upEnv) state(t *testing.T, paths ...*upPath) cacheState {
	t.Helper()
	ctx := context.Background()
	var st cacheState
	var err error
	if st.Pins, err = e.up.Pins(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Stats, err = e.up.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	st.Served = map[string]int{}
	for _, p := range paths {
		st.Served[p.base], _ = e.do(t, "GET", "/"+p.hash+".narinfo", "", nil)
	}
	ents, _ := os.ReadDir(filepath.Join(e.dir, "blobs"))
	for _, en := range ents {
		st.Blobs = append(st.Blobs, en.Name())
	}
	sort.Strings(st.Blobs)
	return st
}

// TestWriteTokenIsNotAdmin plays a stolen CI upload token (and a read
// token, and nobody) against the admin API of a public cache: garbage
// collection (of everything, with max-age=1ns), unpinning the deployed
// systems, pinning, verify and repair, and the pin list (an index of every
// deployed system) are all refused, and nothing changes. A pin token pins
// and unpins its own pins only; an admin can do everything.
func TestWriteTokenIsNotAdmin(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	dep := newUpPath(t, "admin-dep", []byte("dep"))
	sys := newUpPath(t, "nixos-system-web1", []byte("system"), dep.base)
	other := newUpPath(t, "nixos-system-db1", []byte("other system"))
	loose := newUpPath(t, "loose", []byte("loose"))
	all := []*upPath{dep, sys, other, loose}
	for _, p := range all {
		e.upload(t, p)
	}
	// The deployer pinned web1; an admin pinned db1.
	if code, msg := e.do(t, "POST", "/api/pins/"+sys.hash, e.pinTok, nil); code != 200 {
		t.Fatalf("deployer pin: %d %s", code, msg)
	}
	if code, msg := e.do(t, "POST", "/api/pins/"+other.hash, e.adminTok, nil); code != 200 {
		t.Fatalf("admin pin: %d %s", code, msg)
	}
	before := e.state(t, all...)
	if len(before.Pins) != 2 {
		t.Fatalf("pins %+v", before.Pins)
	}
	attacks := []struct{ method, path string }{
		{"POST", "/api/gc?max-age=1ns"},
		{"POST", "/api/gc?max-size=1"},
		{"POST", "/api/gc"},
		{"POST", "/api/gc?dry-run=true"},
		{"DELETE", "/api/pins/" + sys.hash},
		{"DELETE", "/api/pins/" + other.hash},
		{"POST", "/api/pins/" + loose.hash},
		{"PUT", "/api/pins/" + loose.hash},
		{"POST", "/api/verify"},
		{"POST", "/api/verify?repair=true"},
		{"GET", "/api/pins"},
		{"DELETE", "/api/tombstones/" + loose.hash},
	}
	for _, who := range []struct{ name, tok string }{{"write token", e.writeTok}, {"read token", e.readTok}, {"nobody", ""}} {
		for _, a := range attacks {
			code, body := e.do(t, a.method, a.path, who.tok, nil)
			want := 403
			if who.tok == "" {
				want = 401
			}
			if code != want {
				t.Errorf("%s: %s %s = %d %q, want %d", who.name, a.method, a.path, code, body, want)
			}
			if strings.Contains(body, sys.base) || strings.Contains(body, other.base) {
				t.Errorf("%s: %s %s answer names a pinned system: %q", who.name, a.method, a.path, body)
			}
			if now := e.state(t, all...); !reflect.DeepEqual(now, before) {
				t.Fatalf("%s: %s %s changed the cache:\n%+v\n%+v", who.name, a.method, a.path, before, now)
			}
		}
	}
	// With GC and unpin refused, the write token cannot make the cache
	// forget a deployed system and upload other bytes under its path.
	twin := twinOf(t, sys.info.StorePath, []byte("backdoored system"))
	if code, msg := e.putPath(t, twin); code != 409 {
		t.Fatalf("replacing the deployed system: %d %s", code, msg)
	}
	if now := e.state(t, all...); !reflect.DeepEqual(now.Pins, before.Pins) || !reflect.DeepEqual(now.Served, before.Served) {
		t.Fatalf("the refused twin changed pins or what is served")
	}
	before = e.state(t, all...) // the twin's NAR file waits, unclaimed

	// The deployer's pin token: its own pins only, nothing else.
	for _, a := range []struct{ method, path string }{
		{"DELETE", "/api/pins/" + other.hash}, // the admin's
		{"POST", "/api/gc?max-age=1ns"},
		{"POST", "/api/verify?repair=true"},
		{"GET", "/api/pins"},
	} {
		if code, body := e.do(t, a.method, a.path, e.pinTok, nil); code != 403 {
			t.Errorf("pin token: %s %s = %d %q, want 403", a.method, a.path, code, body)
		}
		if now := e.state(t, all...); !reflect.DeepEqual(now, before) {
			t.Fatalf("pin token: %s %s changed the cache", a.method, a.path)
		}
	}
	// Pinning a path someone else pinned keeps their pin (it must not
	// change hands, or the pin token could then remove it).
	if code, msg := e.do(t, "POST", "/api/pins/"+other.hash, e.pinTok, nil); code != 200 || !strings.Contains(msg, "another token") {
		t.Fatalf("pin over the admin's pin: %d %s", code, msg)
	}
	if now := e.state(t, all...); !reflect.DeepEqual(now.Pins, before.Pins) {
		t.Fatalf("the admin's pin changed hands:\n%+v\n%+v", before.Pins, now.Pins)
	}
	if code, msg := e.do(t, "DELETE", "/api/pins/"+other.hash, e.pinTok, nil); code != 403 {
		t.Fatalf("unpin the admin's pin after re-pinning it: %d %s", code, msg)
	}
	if code, msg := e.do(t, "POST", "/api/pins/"+loose.hash, e.pinTok, nil); code != 200 {
		t.Fatalf("pin token pins: %d %s", code, msg)
	}
	if code, msg := e.do(t, "DELETE", "/api/pins/"+loose.hash, e.pinTok, nil); code != 204 {
		t.Fatalf("pin token unpins its own pin: %d %s", code, msg)
	}

	// The admin sees every pin with its owner, unpins anyone's, collects
	// and verifies.
	code, body := e.do(t, "GET", "/api/pins", e.adminTok, nil)
	var pins []upload.Pin
	if code != 200 || json.Unmarshal([]byte(body), &pins) != nil || len(pins) != 2 {
		t.Fatalf("admin pin list: %d %s", code, body)
	}
	owners := map[string]string{}
	for _, p := range pins {
		owners[p.StorePath] = p.Owner
	}
	if owners[sys.info.StorePath] != "deploy" || owners[other.info.StorePath] != "ops" {
		t.Fatalf("owners %v", owners)
	}
	if code, msg := e.do(t, "DELETE", "/api/pins/"+sys.hash, e.adminTok, nil); code != 204 {
		t.Fatalf("admin unpins the deployer's pin: %d %s", code, msg)
	}
	if code, body := e.do(t, "POST", "/api/verify", e.adminTok, nil); code != 200 || !strings.Contains(body, "checked 5 NAR files") { // the twin's file included
		t.Fatalf("admin verify: %d %s", code, body)
	}
	code, body = e.do(t, "POST", "/api/gc?max-size=1", e.adminTok, nil)
	if code != 200 || !strings.Contains(body, sys.info.StorePath) || strings.Contains(body, other.info.StorePath) {
		t.Fatalf("admin GC (db1 still pinned): %d %s", code, body)
	}
	if code, _ := e.do(t, "GET", "/"+sys.hash+".narinfo", "", nil); code != 404 {
		t.Fatalf("collected path served: %d", code)
	}
}
