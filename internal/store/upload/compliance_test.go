package upload_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/storetest"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestCompliance runs the shared store suite on an upload store holding a
// closure with references, a log and a realisation.
func TestCompliance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, storetest.Fixture) {
		ctx := context.Background()
		sk, _, _ := narinfo.GenerateKey("compliance-1")
		s := openStore(t, t.TempDir(), upload.Options{SignKeys: []narinfo.SecretKey{sk}})
		var fx storetest.Fixture
		for _, p := range closure(t, "compliance") {
			if err := p.upload(ctx, s); err != nil {
				t.Fatal(err)
			}
			var refs []string
			for _, r := range p.info.References {
				refs = append(refs, "/nix/store/"+r)
			}
			fx.Paths = append(fx.Paths, storetest.Path{StorePath: p.info.StorePath, NAR: p.nar, References: refs})
		}
		drv := hashPart("compliance-drv") + "-compliance.drv"
		if err := s.PutLog(ctx, drv, strings.NewReader("log line\n")); err != nil {
			t.Fatal(err)
		}
		id := "sha256:" + strings.Repeat("0", 64) + "!out"
		if err := s.PutRealisation(ctx, id, strings.NewReader(`{"id":"x"}`)); err != nil {
			t.Fatal(err)
		}
		fx.Logs = map[string]string{drv: "log line\n"}
		fx.Realisations = map[string]string{id: `{"id":"x"}`}
		return s, fx
	})
}
