package nixcli

import (
	"context"
	"fmt"
)

// EvalJSON runs `nix eval --json <installable>` (flakes enabled for this
// call only) and returns its stdout. The push side uses it to read a
// flake's `deploy` output, so it runs on CI or a workstation, never on a
// host. (Added by the push-side helper; owned with the push side.)
func (e *Exec) EvalJSON(ctx context.Context, installable string) ([]byte, error) {
	out, err := e.run(ctx, e.tool("", "nix"),
		"--extra-experimental-features", "nix-command flakes",
		"eval", "--json", installable)
	if err != nil {
		return nil, fmt.Errorf("eval %s: %w", installable, err)
	}
	return out, nil
}
