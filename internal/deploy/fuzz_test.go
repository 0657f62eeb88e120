package deploy_test

import (
	"testing"

	"github.com/bos55/concordia/internal/deploy"
)

// The host's answers arrive over ssh: whatever a broken or hostile host
// prints must not crash the deployer.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte(`{"current":{"path":"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-a","generation":3},"booted":{"path":"","generation":0},"profile":{"path":"","generation":0},"generations":[{"number":1,"link":"/nix/var/nix/profiles/system-1-link","path":"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-a"}],"testActive":false,"rebootPending":false}` + "\n"))
	f.Add([]byte("not json\n{\"lock\":{\"id\":\"d-1\",\"mode\":\"switch\"}}"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := deploy.ParseStatus(b)
		if err == nil {
			st.BeforePrevious("/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-a")
			deploy.PrintStatus(discard{}, []deploy.StatusResult{{Node: "n", Status: st}})
		}
	})
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(fleetJSON))
	f.Add([]byte(`{"nodes":{"a":{"hostname":"h","profiles":{"system":{"path":"x"}}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		nodes, err := deploy.Parse(b, nil)
		if err == nil {
			deploy.Select(nodes, "@a,b*,c")
			deploy.ForBranch(nodes, "test-a")
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
