package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"

	"github.com/bos55/concordia/pkg/narinfo"
)

// pathInfo is what Nix itself says about a store path; the runner checks
// every downloaded NAR against NarHash.
type pathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    int64    `json:"narSize"`
	References []string `json:"references"`
}

func (p pathInfo) hashPart() string {
	return strings.SplitN(filepath.Base(p.Path), "-", 2)[0]
}

// digest returns the raw sha256 of the NAR, in whatever form Nix printed
// it (nix path-info --json gives SRI on 2.8).
func (p pathInfo) digest() ([]byte, error) {
	h, err := narinfo.ParseHash(p.NarHash)
	if err != nil {
		return nil, err
	}
	return h.Digest, nil
}

// workloads are built with real Nix so anyone can reproduce them.
type workloads struct {
	big     pathInfo   // the Go toolchain tree (or a slice of it with --quick)
	closure []pathInfo // ~200 small paths with references between them
	small   pathInfo   // tens of thousands of files under 4 KiB
}

func (w workloads) all() []pathInfo {
	out := []pathInfo{w.big, w.small}
	return append(out, w.closure...)
}

func (b *bench) buildWorkloads(ctx context.Context) (workloads, error) {
	var w workloads
	goroot, err := b.runCmd(ctx, nil, "go", "env", "GOROOT")
	if err != nil {
		return w, err
	}
	bigSrc := strings.TrimSpace(goroot)
	if b.o.quick {
		bigSrc = filepath.Join(bigSrc, "src", "net")
	}
	b.log.Info("adding the big path to the store", "src", bigSrc)
	out, err := b.runCmd(ctx, nil, "nix-store", "--add", bigSrc)
	if err != nil {
		return w, err
	}
	bigPath := strings.TrimSpace(out)

	nFiles, nPaths := 20000, 200
	if b.o.quick {
		nFiles, nPaths = 1000, 20
	}
	smallDir := filepath.Join(b.work, fmt.Sprintf("small-files-%d", nFiles))
	if err := makeSmallFiles(smallDir, nFiles); err != nil {
		return w, err
	}
	b.log.Info("adding the many-small-files tree", "files", nFiles)
	out, err = b.runCmd(ctx, nil, "nix-store", "--add", smallDir)
	if err != nil {
		return w, err
	}
	smallPath := strings.TrimSpace(out)

	b.log.Info("building the closure", "paths", nPaths)
	closureTop, err := b.buildClosure(ctx, "concordia-bench", nPaths, false)
	if err != nil {
		return w, err
	}
	out, err = b.runCmd(ctx, nil, "nix-store", "-qR", closureTop)
	if err != nil {
		return w, err
	}
	closurePaths := strings.Fields(out)

	infos, err := b.pathInfos(ctx, append([]string{bigPath, smallPath}, closurePaths...))
	if err != nil {
		return w, err
	}
	w.big, w.small, w.closure = infos[0], infos[1], infos[2:]
	return w, nil
}

func (b *bench) pathInfos(ctx context.Context, paths []string) ([]pathInfo, error) {
	args := append([]string{"--extra-experimental-features", "nix-command", "path-info", "--json"}, paths...)
	out, err := b.runCmd(ctx, nil, "nix", args...)
	if err != nil {
		return nil, err
	}
	var infos []pathInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		return nil, fmt.Errorf("nix path-info: %w", err)
	}
	byPath := map[string]pathInfo{}
	for _, i := range infos {
		byPath[i.Path] = i
	}
	res := make([]pathInfo, len(paths))
	for k, p := range paths {
		i, ok := byPath[p]
		if !ok {
			return nil, fmt.Errorf("nix path-info did not describe %s", p)
		}
		res[k] = i
	}
	return res, nil
}

// makeSmallFiles writes n files of 100 B to 4 KiB in folders of 100, with
// deterministic content so the store path is the same on every run.
func makeSmallFiles(dir string, n int) error {
	if _, err := os.Stat(filepath.Join(dir, ".done")); err == nil {
		return nil
	}
	rng := rand.New(rand.NewSource(42))
	buf := make([]byte, 4096)
	for i := 0; i < n; i++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", i/100))
		if i%100 == 0 {
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return err
			}
		}
		size := 100 + rng.Intn(len(buf)-100) // under 4 KiB
		for j := 0; j < size; j++ {
			buf[j] = "abcdefghijklmnopqrstuvwxyz0123456789 \n"[rng.Intn(38)]
		}
		mode := os.FileMode(0o644)
		if i%17 == 0 {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%05d.txt", i)), buf[:size], mode); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, ".done"), nil, 0o644)
}

// buildClosure builds a closure of n small paths whose names start with
// prefix (paths of different prefixes are disjoint) and returns its top.
func (b *bench) buildClosure(ctx context.Context, prefix string, n int, wide bool) (string, error) {
	expr := filepath.Join(b.work, fmt.Sprintf("closure-%s-%d.nix", prefix, n))
	if err := os.WriteFile(expr, []byte(closureExprNamed(prefix, n, wide)), 0o644); err != nil {
		return "", err
	}
	out, err := b.runCmd(ctx, nil, "nix-build", "--no-out-link", "--max-jobs", "4", expr)
	if err != nil {
		return "", err
	}
	top := strings.Fields(out)
	if len(top) != 1 {
		return "", fmt.Errorf("closure build printed %d paths, want 1", len(top))
	}
	return top[0], nil
}

// closureExprNamed is a Nix expression for n small paths where each refers
// to up to three earlier ones, topped by one path that refers to all of
// them. Their names start with prefix. Path i refers to i-1, i/2 and i/3:
// a chain, which Nix uploads one path after another. A wide closure drops
// the i-1: path i's references are all below i/2, so the second half of
// the paths is ready to upload at once, as in a real system's closure,
// where most paths are leaves or near them.
func closureExprNamed(prefix string, n int, wide bool) string {
	var sb strings.Builder
	sb.WriteString("let\n  mk = name: deps: derivation {\n    inherit name;\n    system = builtins.currentSystem;\n    builder = \"/bin/sh\";\n")
	sb.WriteString("    args = [ \"-c\" ''\n      /bin/mkdir $out\n      for d in ${toString deps}; do echo $d >> $out/deps; done\n")
	sb.WriteString("      i=0; while [ $i -lt 200 ]; do echo \"$name line $i of padding to make a realistic small file\"; i=$((i+1)); done > $out/data\n")
	sb.WriteString("      echo '#!/bin/sh' > $out/run; /bin/chmod +x $out/run\n    '' ];\n  };\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sb, "  p%d = mk \"%s-p%d\" [", i, prefix, i)
		for k, d := range []int{i - 1, i / 2, i / 3} {
			if d >= 0 && d < i && !(wide && k == 0 && i > 1) {
				fmt.Fprintf(&sb, " p%d", d)
			}
		}
		sb.WriteString(" ];\n")
	}
	fmt.Fprintf(&sb, "in mk \"%s-top\" [", prefix)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sb, " p%d", i)
	}
	sb.WriteString(" ]\n")
	return sb.String()
}
