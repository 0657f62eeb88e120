package signkey_test

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bos55/concordia/internal/signkey"
	"github.com/bos55/concordia/pkg/narinfo"
)

func TestLoadGivenKeys(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"a-1", "b-1"} {
		sec, _, _ := narinfo.GenerateKey(name)
		p := filepath.Join(dir, name+".sec")
		os.WriteFile(p, []byte(sec.String()+"\n"), 0o600)
		paths = append(paths, p)
	}
	state := filepath.Join(dir, "state")
	keys, generated, err := signkey.Load(paths, state)
	if err != nil || generated || len(keys) != 2 || keys[0].Name() != "a-1" || keys[1].Name() != "b-1" {
		t.Fatalf("Load = %v, %v, %v", keys, generated, err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("given keys, the state dir was touched: %v", err)
	}
	_, _, err = signkey.Load(append(paths, filepath.Join(dir, "missing.sec")), state)
	if err == nil || !strings.Contains(err.Error(), "missing.sec") {
		t.Errorf("a missing key file: %v", err)
	}
	bad := filepath.Join(dir, "bad.sec")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	if _, _, err := signkey.Load([]string{bad}, state); err == nil || !strings.Contains(err.Error(), "bad.sec") {
		t.Errorf("a malformed key file: %v", err)
	}
}

// TestStateKey: with no keys given, the first start creates the state
// key (secret 0600, public beside it) and later starts load the same one.
func TestStateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	keys, generated, err := signkey.Load(nil, dir)
	if err != nil || !generated || len(keys) != 1 {
		t.Fatalf("first start: %v %v %v", keys, generated, err)
	}
	host, _ := os.Hostname()
	if host != "" && keys[0].Name() != host+"-1" {
		t.Errorf("key name %q, want %s-1", keys[0].Name(), host)
	}
	st, err := os.Stat(filepath.Join(dir, signkey.SecretFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret key file: %v %v", st, err)
	}
	pub, err := narinfo.LoadPublicKeyFile(filepath.Join(dir, signkey.PublicFile))
	if err != nil || pub.String() != keys[0].Public().String() {
		t.Fatalf("public key file: %v %v", pub, err)
	}
	again, generated, err := signkey.Load(nil, dir)
	if err != nil || generated || again[0].String() != keys[0].String() {
		t.Fatalf("second start: %v %v", generated, err)
	}
}

// TestStateKeyRace: servers starting at once agree on one key.
func TestStateKeyRace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	var wg sync.WaitGroup
	keys := make([]narinfo.SecretKey, 8)
	errs := make([]error, len(keys))
	for i := range keys {
		wg.Go(func() { keys[i], _, errs[i] = signkey.State(dir) })
	}
	wg.Wait()
	for i := range keys {
		if errs[i] != nil || keys[i].String() != keys[0].String() {
			t.Errorf("start %d: %v, key differs: %t", i, errs[i], keys[i].String() != keys[0].String())
		}
	}
}

func TestStateKeyUnreadable(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, signkey.SecretFile), []byte("garbage"), 0o600)
	if _, _, err := signkey.State(dir); err == nil || !strings.Contains(err.Error(), signkey.SecretFile) {
		t.Errorf("a damaged state key must not be replaced: %v", err)
	}
}
