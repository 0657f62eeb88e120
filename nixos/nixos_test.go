// Package nixos holds no Go code: its tests check the Nix side of Concordia
// (modules, flake, fleet logic) on a machine without nixpkgs, by parsing
// every .nix file and evaluating the plain-Nix functions of nixos/lib.
package nixos

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/host"
)

func nixEnv(t *testing.T) []string {
	home := t.TempDir()
	return append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, "cache"))
}

func needNix(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		t.Skip("nix-instantiate not installed")
	}
}

// TestEveryNixFileParses runs nix-instantiate --parse on every .nix file of
// the repository, so a syntax error in a module fails CI even though the
// modules cannot be evaluated against nixpkgs here.
func TestEveryNixFileParses(t *testing.T) {
	needNix(t)
	var files []string
	err := filepath.WalkDir("..", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), "result")) {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".nix") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found only %d .nix files: %v", len(files), files)
	}
	for _, f := range files {
		cmd := exec.Command("nix-instantiate", "--parse", f)
		cmd.Env = nixEnv(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s does not parse: %v\n%s", f, err, out)
		}
	}
}

type schema struct {
	Deploy struct {
		MagicRollback  bool                       `json:"magicRollback"`
		ConfirmTimeout int                        `json:"confirmTimeout"`
		Nodes          map[string]json.RawMessage `json:"nodes"`
	} `json:"deploy"`
	Rollout json.RawMessage `json:"rollout"`
	Hosts   []string        `json:"hosts"`
	Agent   struct {
		Socket  map[string]any    `json:"socket"`
		Service map[string]string `json:"service"`
	} `json:"agent"`
	Trust    map[string]bool            `json:"trust"`
	Health   string                     `json:"health"`
	Key      string                     `json:"key"`
	Client   map[string][]string        `json:"client"`
	TOML     string                     `json:"toml"`
	Branches map[string]json.RawMessage `json:"branches"`
	Cache    struct {
		Uploads, PrivateUploads, PrivateLocalOnly, PublicLocalOnly string
		Upstreams                                                  string
		OK, PrivateWithoutTokens, UploadsWithoutTokens             []string
		TokensInStore, TokensRelative, TokensInHome                []string
		Shared                                                     struct {
			LoadCredential []string `json:"loadCredential"`
			TOML           string   `json:"toml"`
		}
		SharedLocal   string
		LocalDatabase struct {
			URL        string `json:"url"`
			PostgreSQL struct {
				Enable          bool     `json:"enable"`
				EnsureDatabases []string `json:"ensureDatabases"`
				EnsureUsers     []struct {
					Name              string `json:"name"`
					EnsureDBOwnership bool   `json:"ensureDBOwnership"`
				} `json:"ensureUsers"`
			} `json:"postgresql"`
			Unit map[string][]string `json:"unit"`
		}
		SharedOK, SharedLocalOK                                  []string
		S3WithoutDatabase, DatabaseWithoutS3, DatabaseWithoutURL []string
		S3SecretInStore, S3SecretNixPath, PasswordRelative       []string
	} `json:"cache"`
}

func evalSchema(t *testing.T) schema {
	t.Helper()
	needNix(t)
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "tests/deploy-schema.nix")
	cmd.Env = nixEnv(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("evaluating tests/deploy-schema.nix: %v", err)
	}
	var s schema
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDeployNodes checks lib.deployNodes against the fake fleet: exactly the
// hosts with homelab.deploy.enable, in deploy-rs's schema, settings carried
// over only when set, defaults at the top level.
func TestDeployNodes(t *testing.T) {
	s := evalSchema(t)
	if !s.Deploy.MagicRollback || s.Deploy.ConfirmTimeout != 30 {
		t.Errorf("top-level defaults lost: %+v", s.Deploy)
	}
	want := map[string]string{
		"devbox":  `{"autoRollback":false,"confirmTimeout":60,"hostname":"192.0.2.20","profiles":{"system":{"path":"/nix/store/00000000000000000000000000000000-nixos-system-devbox","user":"root"}},"sshUser":"deploy","user":"root"}`,
		"ingress": `{"hostname":"ingress.example.org","profiles":{"system":{"path":"/nix/store/00000000000000000000000000000000-nixos-system-ingress","user":"root"}},"sshUser":"deploy","tags":["edge","prod"],"user":"root"}`,
		"prod":    `{"healthChecks":[{"url":"https://prod.example.org/health"}],"hostname":"prod.example.org","profiles":{"system":{"path":"/nix/store/00000000000000000000000000000000-nixos-system-prod","user":"root"}},"sshUser":"deploy","tags":["prod"],"user":"root"}`,
		"testbox": `{"hostname":"testbox.example.org","profiles":{"system":{"path":"/nix/store/00000000000000000000000000000000-nixos-system-testbox","user":"root"}},"sshUser":"ci-deploy","user":"root"}`,
	}
	if len(s.Deploy.Nodes) != len(want) {
		t.Errorf("nodes = %d, want %d (laptop is disabled, printer has no homelab.deploy)", len(s.Deploy.Nodes), len(want))
	}
	for name, w := range want {
		got, ok := s.Deploy.Nodes[name]
		if !ok {
			t.Errorf("node %s missing", name)
			continue
		}
		if string(got) != w {
			t.Errorf("node %s:\n got %s\nwant %s", name, got, w)
		}
	}
	if !reflect.DeepEqual(s.Hosts, []string{"devbox", "ingress", "prod", "testbox"}) {
		t.Errorf("hostsToBuild = %v", s.Hosts)
	}
}

// TestDeployNodesRollout: homelab.deploy.canary and .wave reach the nodes
// (only when set), the fleet-wide limits the deploy attribute, and the
// deployer reads them as the rollout's order and limits.
func TestDeployNodesRollout(t *testing.T) {
	s := evalSchema(t)
	var got struct {
		MaxUnavailable any                        `json:"maxUnavailable"`
		MaxFailures    any                        `json:"maxFailures"`
		Nodes          map[string]json.RawMessage `json:"nodes"`
	}
	if err := json.Unmarshal(s.Rollout, &got); err != nil {
		t.Fatal(err)
	}
	if got.MaxUnavailable != "25%" || got.MaxFailures != 1.0 {
		t.Errorf("fleet limits %v %v", got.MaxUnavailable, got.MaxFailures)
	}
	want := map[string]string{
		"web1": `{"canary":true,"hostname":"web1.example.org","profiles":{"system":{"path":"/nix/store/00000000000000000000000000000000-nixos-system-web1","user":"root"}},"sshUser":"deploy","user":"root"}`,
		"web2": `{"hostname":"web2.example.org","profiles":{"system":{"path":"/nix/store/00000000000000000000000000000000-nixos-system-web2","user":"root"}},"sshUser":"deploy","user":"root","wave":1}`,
		"db1":  `{"hostname":"db1.example.org","profiles":{"system":{"path":"/nix/store/00000000000000000000000000000000-nixos-system-db1","user":"root"}},"sshUser":"deploy","user":"root","wave":2}`,
	}
	for name, w := range want {
		if string(got.Nodes[name]) != w {
			t.Errorf("node %s:\n got %s\nwant %s", name, got.Nodes[name], w)
		}
	}
	nodes, err := deploy.Parse(s.Rollout, nil)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, n := range nodes {
		st := n.Settings
		order = append(order, fmt.Sprintf("%s canary=%v wave=%d max=%s failures=%d", n.Name, st.Canary, st.Wave, st.MaxUnavailable, st.MaxFailures))
	}
	if w := "db1 canary=false wave=2 max=25% failures=1, web1 canary=true wave=0 max=25% failures=1, web2 canary=false wave=1 max=25% failures=1"; strings.Join(order, ", ") != w {
		t.Errorf("parsed\n %s\nwant\n %s", strings.Join(order, ", "), w)
	}
}

// TestAgentAndGate: the deploy user reaches root only through the agent's
// socket (root and its group, one agent per connection, which checks the
// caller again), and its keys are forced through the gate.
func TestAgentAndGate(t *testing.T) {
	s := evalSchema(t)
	want := map[string]any{"ListenStream": "/run/deployer-agent.sock", "SocketUser": "root", "SocketGroup": "deploy",
		"SocketMode": "0660", "Accept": true, "MaxConnections": float64(64)}
	if !reflect.DeepEqual(s.Agent.Socket, want) {
		t.Errorf("socket = %v, want %v", s.Agent.Socket, want)
	}
	if got := s.Agent.Service["ExecStart"]; got != "/run/current-system/sw/bin/deployer agent --allow-user deploy --state-dir /run/concordia" {
		t.Errorf("ExecStart = %q", got)
	}
	if s.Key != `command="/run/current-system/sw/bin/deployer gate",restrict ssh-ed25519 AAAAC3Nza ci@forge` {
		t.Errorf("authorized key line = %q", s.Key)
	}
}

// TestTrustsUser: the module's assertion sees trust granted by name, by
// group and by "*".
func TestTrustsUser(t *testing.T) {
	s := evalSchema(t)
	want := map[string]bool{"plain": false, "named": true, "group": true, "star": true, "otherGroup": false}
	if !reflect.DeepEqual(s.Trust, want) {
		t.Errorf("trustsUser = %v, want %v", s.Trust, want)
	}
}

// TestHealthChecksFile: what the module ships for the health verb is what
// the host side reads (host.HealthChecks, unknown fields refused).
func TestHealthChecksFile(t *testing.T) {
	s := evalSchema(t)
	var hc host.HealthChecks
	dec := json.NewDecoder(strings.NewReader(s.Health))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&hc); err != nil {
		t.Fatalf("%s: %v", s.Health, err)
	}
	want := []host.HealthCheck{
		{Name: "check-1", Exec: "/nix/store/00000000000000000000000000000000-concordia-health-check-1"},
		{Name: "db", Exec: "/nix/store/00000000000000000000000000000000-concordia-health-db", Timeout: 5},
	}
	if !reflect.DeepEqual(hc.Checks, want) {
		t.Errorf("checks = %+v, want %+v (URL checks stay with the push side)", hc.Checks, want)
	}
}

// TestRenderedTOMLLoads: what the cache module renders is exactly what the
// server's config parser accepts (no unknown keys, values as meant).
func TestRenderedTOMLLoads(t *testing.T) {
	s := evalSchema(t)
	want := "bind = \"127.0.0.1:5000\"\nenable_compression = true\npriority = 30\nsign_key_paths = [\"/run/credentials/concordia-cache.service/sign-key-0\"]\n\n[upload]\ndir = \"/var/lib/concordia-cache/upload\"\nprivate = false\ntokens_file = \"/run/credentials/x/\\\"tokens\\\"\"\n\n[zstd]\nlevel = 3\n"
	if s.TOML != want {
		t.Errorf("toTOML:\n%s\nwant:\n%s", s.TOML, want)
	}
	cfg, err := config.Parse([]byte(s.TOML))
	if err != nil {
		t.Fatalf("the server refuses the module's TOML: %v", err)
	}
	if cfg.Bind != "127.0.0.1:5000" || cfg.Priority != 30 {
		t.Errorf("config read back wrong: bind %q priority %d", cfg.Bind, cfg.Priority)
	}
}

// TestCacheModuleUpstreams: the module's upstreams render as [[upstream]]
// tables the server reads in order, with the upload store turned on for
// the pull-through one's kept paths.
func TestCacheModuleUpstreams(t *testing.T) {
	s := evalSchema(t)
	cfg, err := config.Parse([]byte(s.Cache.Upstreams))
	if err != nil {
		t.Fatalf("the server refuses the module's TOML: %v\n%s", err, s.Cache.Upstreams)
	}
	if len(cfg.Upstreams) != 2 {
		t.Fatalf("upstreams = %+v\n%s", cfg.Upstreams, s.Cache.Upstreams)
	}
	nixos, private := cfg.Upstreams[0], cfg.Upstreams[1]
	if nixos.URL != "https://cache.nixos.org" || nixos.Name != "cache.nixos.org" || !nixos.Pulls() || len(nixos.Keys()) != 1 {
		t.Errorf("first upstream = %+v", nixos)
	}
	if private.Name != "private" || private.Pulls() || private.NetrcFile != "/run/secrets/netrc" ||
		time.Duration(private.Timeout) != 2*time.Second || time.Duration(private.NegativeTTL) != 30*time.Second {
		t.Errorf("second upstream = %+v", private)
	}
	if cfg.Upload.Dir != "/var/lib/concordia-cache/upload" {
		t.Errorf("pulled paths have no upload dir: %q", cfg.Upload.Dir)
	}
}

// TestCacheModuleSettings: what the cache module renders passes the tokens
// file by its own path (reread by the server, not a one-shot credential
// copy), works for a private cache without uploads, and parses in the
// server's config; its assertions refuse a private cache without tokens
// and a tokens file the service could not reread.
func TestCacheModuleSettings(t *testing.T) {
	s := evalSchema(t)
	const secret = "/run/secrets/concordia-tokens"
	for name, tc := range map[string]struct {
		toml            string
		dir             bool
		tokens, private bool
	}{
		"uploads":            {s.Cache.Uploads, true, true, false},
		"private uploads":    {s.Cache.PrivateUploads, true, true, true},
		"private local only": {s.Cache.PrivateLocalOnly, false, true, true},
		"public local only":  {s.Cache.PublicLocalOnly, false, false, false},
	} {
		cfg, err := config.Parse([]byte(tc.toml))
		if err != nil {
			t.Errorf("%s: the server refuses the module's TOML: %v\n%s", name, err, tc.toml)
			continue
		}
		if (cfg.Upload.Dir != "") != tc.dir || cfg.Upload.Private != tc.private || (cfg.Upload.TokensFile == secret) != tc.tokens {
			t.Errorf("%s: upload %+v\n%s", name, cfg.Upload, tc.toml)
		}
		if strings.Contains(tc.toml, "/run/credentials/concordia-cache.service/tokens") {
			t.Errorf("%s: the tokens file is a one-shot credential copy:\n%s", name, tc.toml)
		}
	}
	if len(s.Cache.OK) != 0 {
		t.Errorf("a good configuration fails assertions: %v", s.Cache.OK)
	}
	for name, tc := range map[string]struct {
		msgs []string
		want string
	}{
		"private without tokens": {s.Cache.PrivateWithoutTokens, "private needs"},
		"uploads without tokens": {s.Cache.UploadsWithoutTokens, "tokensFile must be set"},
		"tokens in the store":    {s.Cache.TokensInStore, "must not be in the Nix store"},
		"relative tokens file":   {s.Cache.TokensRelative, "absolute path"},
		"tokens under /home":     {s.Cache.TokensInHome, "ProtectHome"},
	} {
		if len(tc.msgs) != 1 || !strings.Contains(tc.msgs[0], tc.want) {
			t.Errorf("%s: failing assertions %q, want one saying %q", name, tc.msgs, tc.want)
		}
	}
}

// TestCacheModuleSharedStore: upload.s3 and upload.database render as the
// [upload.s3] and [upload.database] tables the server reads, with the
// secrets passed as credentials (the TOML names the credential, never the
// secret's own file) and the host's own store off for replicas;
// createLocally defaults the URL to the socket of a PostgreSQL whose role
// and database are the service user's (peer authentication), and the
// assertions refuse one table without the other as the server does.
func TestCacheModuleSharedStore(t *testing.T) {
	s := evalSchema(t)
	const cred = "/run/credentials/concordia-cache.service/"
	wantCreds := []string{"sign-key-0:/run/secrets/sign-key", "s3-secret-key:/run/secrets/concordia-s3", "database-password:/run/secrets/concordia-pg"}
	if !reflect.DeepEqual(s.Cache.Shared.LoadCredential, wantCreds) {
		t.Errorf("LoadCredential = %q, want %q", s.Cache.Shared.LoadCredential, wantCreds)
	}
	cfg, err := config.Parse([]byte(s.Cache.Shared.TOML))
	if err != nil {
		t.Fatalf("the server refuses the module's TOML: %v\n%s", err, s.Cache.Shared.TOML)
	}
	u := cfg.Upload
	if !u.Shared() || u.S3 == nil || u.Database == nil {
		t.Fatalf("not a shared store: %+v\n%s", u, s.Cache.Shared.TOML)
	}
	if s3 := *u.S3; s3.Endpoint != "http://127.0.0.1:9000" || s3.Bucket != "concordia" || s3.Region != "us-east-1" ||
		s3.Prefix != "cache-a/" || s3.AccessKeyID != "concordia" || s3.SecretAccessKeyFile != cred+"s3-secret-key" ||
		s3.PartSize != 32<<20 || !s3.Redirect || time.Duration(s3.RedirectTTL) != 10*time.Minute {
		t.Errorf("[upload.s3] read back as %+v", s3)
	}
	if d := *u.Database; d.URL != "postgres://concordia@db.example.org/concordia?sslmode=verify-full" || d.PasswordFile != cred+"database-password" {
		t.Errorf("[upload.database] read back as %+v", d)
	}
	if u.Dir != "/var/lib/concordia-cache/upload" || u.TokensFile != "/run/secrets/concordia-tokens" {
		t.Errorf("upload = %+v", u)
	}
	if cfg.NixDBPath != "" || cfg.LocalStoreEnabled() {
		t.Errorf("a replica serves its own store too (nix_db_path %q)", cfg.NixDBPath)
	}
	for _, secret := range []string{"/run/secrets/concordia-s3", "/run/secrets/concordia-pg"} {
		if strings.Contains(s.Cache.Shared.TOML, secret) {
			t.Errorf("the TOML names the secret file %s instead of its credential:\n%s", secret, s.Cache.Shared.TOML)
		}
	}

	local, err := config.Parse([]byte(s.Cache.SharedLocal))
	if err != nil {
		t.Fatalf("the server refuses the module's TOML: %v\n%s", err, s.Cache.SharedLocal)
	}
	const socket = "postgres://concordia-cache@/concordia-cache?host=/run/postgresql"
	if local.Upload.Database == nil || local.Upload.Database.URL != socket || local.Upload.Database.PasswordFile != "" {
		t.Errorf("createLocally: [upload.database] = %+v, want url %s", local.Upload.Database, socket)
	}
	if local.NixDBPath == "" {
		t.Error("the host's own store is off without localStore = false")
	}
	db := s.Cache.LocalDatabase
	if db.URL != socket || !db.PostgreSQL.Enable || !reflect.DeepEqual(db.PostgreSQL.EnsureDatabases, []string{"concordia-cache"}) ||
		len(db.PostgreSQL.EnsureUsers) != 1 || db.PostgreSQL.EnsureUsers[0].Name != "concordia-cache" || !db.PostgreSQL.EnsureUsers[0].EnsureDBOwnership {
		t.Errorf("createLocally wiring = %+v", db)
	}
	if !reflect.DeepEqual(db.Unit["requires"], []string{"postgresql.service"}) ||
		!reflect.DeepEqual(db.Unit["after"], []string{"postgresql.service", "postgresql-setup.service"}) {
		t.Errorf("the service is not ordered after PostgreSQL: %v", db.Unit)
	}

	if len(s.Cache.SharedOK) != 0 || len(s.Cache.SharedLocalOK) != 0 {
		t.Errorf("a good shared configuration fails assertions: %q %q", s.Cache.SharedOK, s.Cache.SharedLocalOK)
	}
	for name, tc := range map[string]struct {
		msgs []string
		want string
	}{
		"s3 without database":     {s.Cache.S3WithoutDatabase, "upload.s3 needs services.concordia-cache.upload.database"},
		"database without s3":     {s.Cache.DatabaseWithoutS3, "upload.database needs services.concordia-cache.upload.s3"},
		"database without url":    {s.Cache.DatabaseWithoutURL, "database.url must be set"},
		"s3 secret in the store":  {s.Cache.S3SecretInStore, "secretAccessKeyFile must not be in the Nix store"},
		"s3 secret as a Nix path": {s.Cache.S3SecretNixPath, "not a Nix path"},
		"relative password file":  {s.Cache.PasswordRelative, "passwordFile must be an absolute path"},
	} {
		if len(tc.msgs) != 1 || !strings.Contains(tc.msgs[0], tc.want) {
			t.Errorf("%s: failing assertions %q, want one saying %q", name, tc.msgs, tc.want)
		}
	}
}

// TestCacheModuleReloads: the unit reloads with SIGHUP (which the server
// turns into a reread of the tokens file) and no longer copies the tokens
// file as a credential.
func TestCacheModuleReloads(t *testing.T) {
	b, err := os.ReadFile("modules/cache.nix")
	if err != nil {
		t.Fatal(err)
	}
	mod := string(b)
	if !strings.Contains(mod, `ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";`) {
		t.Error("cache.nix: ExecReload does not send SIGHUP")
	}
	if strings.Contains(mod, `"tokens:${`) {
		t.Error("cache.nix still passes the tokens file through LoadCredential (copied once at start)")
	}
}

func TestClientSettingsAndBranches(t *testing.T) {
	s := evalSchema(t)
	if !reflect.DeepEqual(s.Client["substituters"], []string{"https://cache.example.org?priority=10"}) ||
		!reflect.DeepEqual(s.Client["trusted-public-keys"], []string{"cache.example.org-1:AAAA"}) {
		t.Errorf("client settings = %v", s.Client)
	}
	want := map[string]string{
		"main":    `{"hosts":["devbox","ingress","prod","testbox"],"mode":"switch"}`,
		"test":    `{"hosts":["devbox"],"mode":"test"}`,
		"feature": `{"hosts":[],"mode":null}`,
	}
	for k, w := range want {
		if string(s.Branches[k]) != w {
			t.Errorf("branch %s: %s, want %s", k, s.Branches[k], w)
		}
	}
}

// TestWorkflowsLint runs actionlint (with shellcheck on the run: scripts
// when it is installed) over the example fleet's Forgejo workflows.
func TestWorkflowsLint(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads actionlint through the Go module proxy")
	}
	files, _ := filepath.Glob("examples/.forgejo/workflows/*.yml")
	if len(files) != 3 {
		t.Fatalf("want check.yml, build.yml and deploy.yml, found %v", files)
	}
	args := append([]string{"run", "github.com/rhysd/actionlint/cmd/actionlint@v1.7.12",
		"-config-file", "examples/.forgejo/actionlint.yaml"}, files...)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("actionlint: %v\n%s", err, out)
	}
}

// TestRenovateConfig: minor and patch updates merge themselves once checks pass.
func TestRenovateConfig(t *testing.T) {
	b, err := os.ReadFile("examples/renovate.json")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		PackageRules []struct {
			MatchUpdateTypes []string `json:"matchUpdateTypes"`
			Automerge        bool     `json:"automerge"`
		} `json:"packageRules"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	ok := false
	for _, r := range cfg.PackageRules {
		if r.Automerge && reflect.DeepEqual(r.MatchUpdateTypes[:2], []string{"minor", "patch"}) {
			ok = true
		}
	}
	if !ok {
		t.Error("renovate.json does not auto-merge minor/patch updates")
	}
}

// TestVendorHash recomputes buildGoModule's vendorHash (the NAR hash of
// what `go mod vendor` writes) and compares it with nixos/package.nix.
func TestVendorHash(t *testing.T) {
	needNix(t)
	dir := t.TempDir()
	cmd := exec.Command("go", "mod", "vendor", "-o", filepath.Join(dir, "vendor"))
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	hash := exec.Command("nix", "--extra-experimental-features", "nix-command", "hash", "path", filepath.Join(dir, "vendor"))
	hash.Env = nixEnv(t)
	out, err := hash.Output()
	if err != nil {
		t.Fatalf("nix hash path: %v", err)
	}
	want := strings.TrimSpace(string(out))
	pkg, err := os.ReadFile("package.nix")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pkg), `vendorHash = "`+want+`";`) {
		t.Errorf("nixos/package.nix: vendorHash is stale, set it to %q", want)
	}
}

// TestWorkflowCredentialsSeparate: the example workflows keep the upload
// token and the deploy key in different jobs, the deploy job in a
// protected environment. Together they can deploy anything (SECURITY.md).
func TestWorkflowCredentialsSeparate(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("examples/.forgejo/workflows", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	build, deploy := read("build.yml"), read("deploy.yml")
	if !strings.Contains(build, "secrets.CACHE_NETRC") || strings.Contains(build, "DEPLOY_SSH_KEY") || strings.Contains(build, "CACHE_PIN") {
		t.Error("build.yml must hold the upload token and nothing of the deploy job")
	}
	if !strings.Contains(deploy, "secrets.DEPLOY_SSH_KEY") || strings.Contains(deploy, "secrets.CACHE_NETRC") {
		t.Error("deploy.yml must hold the deploy key and never the upload token")
	}
	if !strings.Contains(deploy, "environment: production") {
		t.Error("the deploy job must run in a protected environment")
	}
}
