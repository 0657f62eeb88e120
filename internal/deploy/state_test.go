package deploy

import "testing"

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"id":"d-1","mode":"switch","requestedMode":"switch","path":"/nix/store/x","state":"awaiting-confirm","exitCode":0,"rolledBack":false}` + "\n"))
	f.Add([]byte("{\"fetched\":[\"/nix/store/x\"]}\n{\"error\":\"boom\",\"exitCode\":4}\n"))
	f.Add([]byte("{\"state\":1}\n{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseState(b)
	})
}

func TestParseState(t *testing.T) {
	st := parseState([]byte("noise\n{\"state\":\"activating\"}\n{\"state\":\"rolled-back\",\"mode\":\"test\",\"reason\":\"confirm timeout\",\"rolledBack\":true,\"rebootRequired\":true}\n"))
	if st.State != "rolled-back" || st.Mode != "test" || st.Message != "confirm timeout" || !st.RolledBack || !st.RebootRequired {
		t.Fatalf("%+v", st)
	}
	if st := parseState([]byte(`{"error":"no such deploy","exitCode":4}`)); st.State != "" || st.Message != "no such deploy" {
		t.Fatalf("%+v", st)
	}
}
