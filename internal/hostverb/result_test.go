package hostverb_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

func TestDecodeReply(t *testing.T) {
	// The last JSON line counts; noise before it is skipped.
	r, err := hostverb.DecodeReply([]byte("noise\n{\"state\":\"activating\"}\n{\"state\":\"rolled-back\",\"mode\":\"test\",\"reason\":\"confirm timeout\",\"rolledBack\":true,\"rebootRequired\":true,\"exitCode\":6}\n"))
	if err != nil || r.Record == nil {
		t.Fatalf("%+v %v", r, err)
	}
	if rec := r.Record; rec.State != hostverb.RolledBack || rec.Mode != hostverb.Test || rec.Reason != "confirm timeout" || !rec.RolledBack || !rec.RebootRequired || rec.ExitCode != 6 {
		t.Fatalf("%+v", rec)
	}
	if !errors.Is(r.Err(), hostverb.ErrRolledBack) || r.Err().Error() != "confirm timeout" {
		t.Fatalf("Err = %v", r.Err())
	}
	r, err = hostverb.DecodeReply([]byte(`{"error":"no such deploy","exitCode":4}`))
	if err != nil || r.Record != nil || r.Error != "no such deploy" || !errors.Is(r.Err(), hostverb.ErrInvalid) || r.Contract != 0 {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := hostverb.DecodeReply([]byte("sh: deployer: not found\n")); !errors.Is(err, hostverb.ErrNoReply) {
		t.Fatalf("no JSON: %v", err)
	}
}

// Each result type survives the trip through one reply line, with the
// contract marker, and only its own part is set on the way back.
func TestReplyRoundTrip(t *testing.T) {
	replies := []*hostverb.Reply{
		{Record: &hostverb.Record{ID: "d-1", State: hostverb.AwaitingConfirm, Mode: hostverb.Switch, Path: p, ExitCode: 0}},
		{ExitCode: 100, Record: &hostverb.Record{ID: "d-1", State: hostverb.Confirmed, RebootRequired: true, ActivationExit: 100, ExitCode: 100}},
		{Status: &hostverb.Status{Current: hostverb.System{Path: p, Generation: 3}, Lock: &hostverb.Holder{ID: "d-2", Mode: hostverb.Test}}},
		{Fetched: &hostverb.Fetched{Paths: []string{p}, Seconds: 1.5}},
		{Health: &hostverb.Health{OK: false, System: p, Checks: []hostverb.CheckResult{{Name: "web", Exit: 7, Attempts: 3}}}, ExitCode: 1, Error: "health check failed"},
		{VersionInfo: &hostverb.VersionInfo{Version: "1.2.3"}},
		{Rebooting: &hostverb.Rebooting{BootIDBefore: "0f9b5a1e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", RebootAt: time.Date(2026, 12, 2, 15, 0, 0, 0, time.UTC)}},
		{Status: &hostverb.Status{Booted: hostverb.System{Path: p, Generation: 2}, BootID: "0f9b5a1e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"}},
		{ExitCode: 126, Error: "refused by the deployer gate: no"},
	}
	for _, want := range replies {
		line := want.MarshalLine()
		got, err := hostverb.DecodeReply(line)
		if err != nil {
			t.Fatal(err)
		}
		if got.Contract != hostverb.Contract {
			t.Errorf("%s: contract %d", line, got.Contract)
		}
		a, _ := json.Marshal(want)
		b, _ := json.Marshal(got)
		if string(a) != string(b) {
			t.Errorf("round trip\n got %s\nwant %s", b, a)
		}
		parts := 0
		for _, set := range []bool{got.Record != nil, got.Status != nil, got.Fetched != nil, got.Health != nil, got.VersionInfo != nil, got.Rebooting != nil} {
			if set {
				parts++
			}
		}
		if parts > 1 {
			t.Errorf("%s decoded into %d results", line, parts)
		}
	}
}

// Contract 1 hosts printed a status and a fetch result at top level, as
// the reply embeds them.
func TestDecodeContract1(t *testing.T) {
	st, err := hostverb.DecodeReply([]byte(`{"current":{"path":"` + p + `","generation":3},"generations":[{"number":3,"link":"/nix/var/nix/profiles/system-3-link","path":"` + p + `"}],"testActive":false,"lock":{"id":"d-1","mode":"switch"}}`))
	if err != nil || st.Status == nil || st.Status.Current.Generation != 3 || st.Status.Lock.ID != "d-1" || st.Record != nil {
		t.Fatalf("%+v %v", st, err)
	}
	f, err := hostverb.DecodeReply([]byte(`{"fetched":["` + p + `"],"seconds":0.2}`))
	if err != nil || f.Fetched == nil || f.Fetched.Paths[0] != p || f.Contract != 0 {
		t.Fatalf("%+v %v", f, err)
	}
}

// A host's answers arrive over ssh: whatever a broken or hostile host
// prints must not crash the deployer.
func FuzzDecodeReply(f *testing.F) {
	f.Add([]byte(`{"id":"d-1","mode":"switch","requestedMode":"switch","path":"/nix/store/x","state":"awaiting-confirm","exitCode":0,"rolledBack":false}` + "\n"))
	f.Add([]byte("{\"fetched\":[\"/nix/store/x\"]}\n{\"error\":\"boom\",\"exitCode\":4}\n"))
	f.Add([]byte("{\"state\":1}\n{"))
	f.Add([]byte(`{"contract":2,"current":{"path":"/nix/store/a"},"generations":[{"number":1,"path":"/nix/store/a"},{"number":2,"path":"/nix/store/b"},{"number":3,"path":"/nix/store/c"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := hostverb.DecodeReply(b)
		if err != nil {
			return
		}
		r.Err()
		if r.Status != nil {
			r.Status.BeforePrevious("/nix/store/c")
		}
		if r.Record != nil {
			r.Record.Err()
		}
	})
}

// The results are inline in one Reply: a JSON name two of them share is
// silently dropped by encoding/json on both sides. Only Record's exitCode
// is shadowed on purpose (Reply's is the same value).
func TestReplyFieldsDistinct(t *testing.T) {
	seen := map[string]string{"contract": "Reply", "exitCode": "Reply", "error": "Reply"}
	for _, v := range []any{hostverb.Record{}, hostverb.Status{}, hostverb.Fetched{}, hostverb.Health{}, hostverb.VersionInfo{}, hostverb.Rebooting{}} {
		typ := reflect.TypeOf(v)
		for i := 0; i < typ.NumField(); i++ {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if name == "" || name == "-" {
				name = typ.Field(i).Name
			}
			if prev, dup := seen[name]; dup && !(typ.Name() == "Record" && name == "exitCode") {
				t.Errorf("%s.%s and %s both use the JSON name %q", typ.Name(), typ.Field(i).Name, prev, name)
			}
			seen[name] = typ.Name()
		}
	}
}
