package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSharedBackendConfig(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "s3")
	os.WriteFile(secret, []byte("secret\n"), 0o600)
	head := "state_dir = \"" + dir + "\"\n"
	s3 := `[upload.s3]
endpoint = "http://127.0.0.1:9000"
bucket = "concordia"
access_key_id = "ci"
secret_access_key_file = "` + secret + `"
`
	db := `[upload.database]
url = "postgres://concordia@/concordia?host=/run/postgresql"
`
	base := head + s3 + db
	cfg := parseConfig(t, base)
	if !cfg.Upload.Shared() || cfg.Upload.Dir != filepath.Join(dir, "upload") {
		t.Fatalf("shared %v, dir %q: want shared with local files in the state dir", cfg.Upload.Shared(), cfg.Upload.Dir)
	}
	if s := cfg.Upload.S3; s.PartSize != DefaultS3PartSize || s.Region != "us-east-1" || s.RedirectTTL == 0 {
		t.Fatalf("defaults: %+v", s)
	}
	for _, tc := range []struct{ name, edit, want string }{
		{"s3 alone", head + s3, "upload.s3: needs [upload.database]"},
		{"database alone", head + db, "upload.database: needs [upload.s3]"},
		{"endpoint with a path", strings.Replace(base, `9000"`, `9000/bucket"`, 1), "upload.s3.endpoint"},
		{"no bucket", strings.Replace(base, `bucket = "concordia"`, "", 1), "upload.s3.bucket"},
		{"no secret", strings.Replace(base, `secret_access_key_file = "`+secret+`"`, "", 1), "secret_access_key_file"},
		{"small parts", strings.Replace(base, `bucket = "concordia"`, "bucket = \"concordia\"\npart_size = \"1M\"", 1), "upload.s3.part_size"},
		{"not postgres", strings.Replace(base, "postgres://concordia@", "mysql://u:hunter2@", 1), "upload.database.url"},
		{"two passwords", strings.Replace(base, "postgres://concordia@", "postgres://concordia:pw@", 1) + "password_file = \"/run/pg\"\n", "password_file and a password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfigErr(tc.edit)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one naming %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
}

func parseConfigErr(s string) (*Config, error) { return Parse([]byte(s)) }

func parseConfig(t *testing.T, s string) *Config {
	t.Helper()
	cfg, err := parseConfigErr(s)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
