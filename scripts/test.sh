#!/usr/bin/env bash
# Runs Concordia's whole test suite on a fresh Debian machine, installing
# what the tests need first (Nix, OpenSSH, sudo, nginx, promtool, Chromium, every compressor a Nix client may upload with).
# Needs root (the simulated fleet uses mount namespaces); run as: sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

need=()
for pair in wrk:wrk shellcheck:shellcheck nix-store:nix-bin sshd:openssh-server sudo:sudo nginx:nginx zstd:zstd xz:xz-utils bzip2:bzip2 brotli:brotli lz4:lz4 lzip:lzip pigz:pigz unshare:util-linux flock:util-linux ip:iproute2 systemd-socket-activate:systemd systemctl:systemd /usr/lib/postgresql/15/bin/initdb:postgresql promtool:prometheus chromium:chromium; do
  bin=${pair%%:*} pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || [ -x "$bin" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's nginx package starts a server on port 80; the tests start their own.
command -v nginx >/dev/null 2>&1 && { nginx -s stop >/dev/null 2>&1 || true; }
# Debian's postgresql package makes a cluster on port 5432; the tests run their own
# throwaway clusters on unix sockets (as the postgres user) and leave it alone.
# The S3 tests run a real MinIO server, built once from the Go module proxy (a few
# minutes) and kept outside the checkout.
export CONCORDIA_PG_BIN=/usr/lib/postgresql/15/bin
export CONCORDIA_MINIO="${CONCORDIA_MINIO:-/var/cache/concordia-test/minio}"
if [ ! -x "$CONCORDIA_MINIO" ]; then
  echo "building minio (once) into $CONCORDIA_MINIO"
  mkdir -p "$(dirname "$CONCORDIA_MINIO")"
  gobin=$(mktemp -d)
  (cd "$gobin" && GOBIN="$gobin" GOFLAGS=-mod=mod go install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c)
  mv "$gobin/minio" "$CONCORDIA_MINIO"
  rm -rf "$gobin"
fi
# With these set, a test that needs PostgreSQL or MinIO fails instead of skipping.
export CONCORDIA_REQUIRE_SERVERS=1
[ -e /nix/var/nix/db/db.sqlite ] || nix-store --init
# The tests build derivations; without this Nix would ask cache.nixos.org for
# every output first. Tests that want a substituter pass their own (--option).
grep -q '^substituters' /etc/nix/nix.conf 2>/dev/null || printf '\nsubstituters =\n' >> /etc/nix/nix.conf

go vet ./...
go test -race -count=1 -timeout 40m ./... 2>&1 | tee /tmp/concordia-test.log
# The upload store's own tests and the store contract once more, on S3 (MinIO)
# and PostgreSQL instead of a directory and bbolt.
CONCORDIA_UPLOAD_BACKEND=shared go test -count=1 -timeout 15m ./internal/store/upload/ 2>&1 | tee -a /tmp/concordia-test.log
# Short fuzz runs of every network parser (crashers are kept in testdata/fuzz/).
# fuzz_once TARGET PKG: 0 when the run passed, or when it failed only with
# a bare "context deadline exceeded" at the -fuzztime boundary, wrote no
# crasher, and the corpus then replays clean: that is a race in Go 1.26's
# fuzzing coordinator (go.dev/issue/75804, fixed in Go 1.27), not a finding.
fuzz_once() {
  local target=$1 pkg=$2 before after
  before=$(ls "${pkg}/testdata/fuzz/${target}" 2>/dev/null | wc -l || true)
  if go test -run='^$' -fuzz="^${target}\$" -fuzztime=10s "${pkg}" >/tmp/concordia-fuzz.log 2>&1; then
    return 0
  fi
  after=$(ls "${pkg}/testdata/fuzz/${target}" 2>/dev/null | wc -l || true)
  if [ "$before" = "$after" ] && grep -q '^    context deadline exceeded$' /tmp/concordia-fuzz.log &&
    ! grep -qE 'panic:|Failing input|failure while testing seed corpus' /tmp/concordia-fuzz.log &&
    go test -count=1 -run="^${target}\$" "${pkg}" >/tmp/concordia-fuzz-replay.log 2>&1; then
    echo "fuzz ${target}: the coordinator's deadline race (no crasher, corpus replays clean)"
    return 0
  fi
  return 1
}
for target in $(grep -rhoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's/^func //' | sort -u); do
  pkg=$(grep -rlE "^func ${target}\(" --include='*_test.go' . | head -1 | xargs dirname)
  echo "fuzz ${pkg} ${target}"
  # A crasher is written to testdata/fuzz/ and replayed first by the next
  # run, so a real failure fails twice; a failure of the fuzzing machinery
  # itself on a loaded machine passes the retry.
  if ! fuzz_once "$target" "$pkg"; then
    tail -n 30 /tmp/concordia-fuzz.log
    echo "fuzz ${target} failed; running it once more"
    if ! fuzz_once "$target" "$pkg"; then
      tail -n 60 /tmp/concordia-fuzz.log
      exit 1
    fi
  fi
done
# Benchmark smoke run: fails on wrong bytes from any system, never on timings.
go run ./bench --quick
echo "all tests passed"
