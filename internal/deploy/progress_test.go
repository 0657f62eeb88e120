package deploy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/syncbuf"

	"github.com/bos55/concordia/internal/deploy"
)

func TestLive(t *testing.T) {
	var buf syncbuf.Buffer
	l := deploy.NewLive(&buf, []string{"web2", "web1"}, time.Millisecond)
	l.Step("web1", "activate")
	l.Step("web2", "fetch")
	for !strings.Contains(buf.String(), "activate") {
		time.Sleep(time.Millisecond)
	}
	l.Done(deploy.HostReport{Node: "web1", Result: deploy.OK, Duration: 1500 * time.Millisecond})
	l.Done(deploy.HostReport{Node: "web2", Result: deploy.RolledBack, Error: "not confirmed\nmore"})
	l.Close()
	out := buf.String()
	// The last frame: cursor back up over both rows, one line per host in
	// name order, finished hosts show their result.
	last := out[strings.LastIndex(out, "\x1b[2A"):]
	rows := strings.Split(strings.TrimSuffix(last, "\n"), "\n")
	if len(rows) != 2 || !strings.Contains(rows[0], "web1") || !strings.Contains(rows[0], "ok in 1.5s") ||
		!strings.Contains(rows[1], "web2") || !strings.Contains(rows[1], "ROLLED-BACK") || strings.Contains(last, "more") {
		t.Fatalf("last frame %q", last)
	}
}
